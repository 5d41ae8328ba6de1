//! The orchestrator against the real Docker engine, with a Tomcat app
//! built by strata from Debian packages: 20 redeploys on one IP, a hotfix
//! of a static file and a JSP without a restart, injected hotfix failures
//! restored from the backup, a hostile archive refused, a failing health
//! check rolled back, and bad input refused with nothing changed.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::deploy::*;
use common::*;
use serde_json::Value;

#[test]
fn twenty_redeploys_keep_the_ip_and_pass_their_health_checks() {
    let Some(_) = stack() else { return };
    let app = App::new("ip", true, 1, 400);
    let first = app.json(&["deploy"]);
    assert_eq!(first["instances"][0]["mode"], "redeploy");
    let ip = app.ip();
    assert!(ip.starts_with(&app.subnet), "{ip} from the app's pool");
    let mut containers = vec![app.container()];
    for round in 0..20 {
        let image = if round % 2 == 0 { "v2" } else { "v1" };
        let r = app.json(&["deploy", "--redeploy", "--image", image]);
        let i = &r["instances"][0];
        assert_eq!(i["mode"], "redeploy", "round {round}: {r}");
        assert_eq!(i["outcome"], "ok", "round {round}: {r}");
        assert_eq!(i["ip"], ip.as_str(), "round {round}: the IP is kept");
        assert!(i["gap_seconds"].as_f64().is_some(), "{r}");
        let c = app.container();
        assert!(!containers.contains(&c), "round {round}: a new container");
        assert_eq!(inspect(&c, "{{.State.Running}}"), "true");
        let addrs = inspect(&c, "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}");
        assert_eq!(
            addrs.trim(),
            ip,
            "round {round}: the engine agrees on the address"
        );
        // The previous container is gone and the IP serves the new image.
        assert_eq!(inspect(containers.last().unwrap(), "{{.Id}}"), "");
        let want = if image == "v2" { "version two" } else { "strata" };
        let page = wait_for(Duration::from_secs(20), || {
            app.get("/").filter(|p| p.contains(want))
        });
        assert!(page.is_some(), "round {round}: {ip} serves {image}");
        containers.push(c);
    }
    // Java resolves its own hostname to the kept address.
    let info = app.get("/info.jsp").unwrap();
    assert!(info.contains(&format!("host={}-1/{ip}", app.name)), "{info}");
    let history = app.json(&["history"]);
    let h = history.as_array().unwrap();
    assert_eq!(h.len(), 21);
    assert!(
        h.iter().all(|e| e["outcome"] == "ok" && e["mode"] == "redeploy"),
        "{history}"
    );
    // The lease is held by the instance, once.
    let leases =
        std::fs::read_to_string(app.dir.path().join(format!("data/leases/{}.json", app.network))).unwrap();
    assert_eq!(leases.matches(&ip).count(), 1, "{leases}");
}

#[test]
fn hotfix_changes_static_files_and_a_jsp_without_a_restart() {
    let Some(_) = stack() else { return };
    let app = App::new("hot", true, 2, 400);
    app.json(&["deploy"]);
    let c = app.container();
    let started = inspect(&c, "{{.State.StartedAt}}");
    let pid = inspect(&c, "{{.State.Pid}}");
    let jvm_start = proc_start(&pid);
    assert!(!jvm_start.is_empty());
    let info = app.get("/info.jsp").expect("the JSP runs");
    assert!(!info.contains("jsp=two"));

    // v1 → v2 touches only the webapp: a hotfix, chosen automatically.
    let r = app.json(&["deploy", "--image", "v2"]);
    let i = &r["instances"][0];
    assert_eq!(i["mode"], "hotfix", "{r}");
    assert_eq!(i["outcome"], "ok", "{r}");
    assert!(app.serves("/", "version two"), "the static file changed");
    let jsp = wait_for(Duration::from_secs(20), || {
        app.get("/info.jsp").filter(|p| p.contains("jsp=two"))
    });
    assert!(jsp.is_some(), "the JSP was recompiled");
    assert_eq!(app.get("/extra/added.txt").as_deref(), Some("added by v2\n"));
    // No restart: the container, its PID 1 and the JVM are the same.
    assert_eq!(app.container(), c);
    assert_eq!(inspect(&c, "{{.State.StartedAt}}"), started);
    assert_eq!(inspect(&c, "{{.State.Pid}}"), pid);
    assert_eq!(proc_start(&pid), jvm_start, "the JVM is the same process");
    assert!(jsp.unwrap().contains("pid=1"), "the JVM is the container's PID 1");
    let st = app.status();
    assert!(
        st["hotfix"]["name"] == "v2" && st["image"]["name"] == "v1",
        "{st}"
    );

    // Injected failures halfway through the upload and through the moves:
    // the backup goes back, the container is unchanged.
    let before = webapp_sums(&c);
    for fault in ["hotfix-upload", "hotfix-move"] {
        let o = app.run(&["hotfix", "--image", "v1"], &[("STRATA_FAULT", fault)]);
        let err = stderr(&o);
        assert!(!o.status.success(), "{fault}: {err}");
        assert!(err.contains("the backup was restored"), "{fault}: {err}");
        assert!(err.contains("injected fault"), "{fault}: {err}");
        assert_eq!(webapp_sums(&c), before, "{fault}: files as before");
        assert_eq!(inspect(&c, "{{.State.StartedAt}}"), started);
        let leftovers = Command::new("docker")
            .args([
                "exec",
                &c,
                "sh",
                "-c",
                "ls -d /.strata-hotfix-* 2>/dev/null | wc -l",
            ])
            .output()
            .unwrap();
        assert_eq!(
            stdout(&leftovers).trim(),
            "0",
            "{fault}: no staging directory left"
        );
    }
    assert!(app.get("/").unwrap().contains("version two"));

    // A hostile archive (a symlink to /etc, then a file through it) is
    // refused before anything is written.
    let o = app.run(&["hotfix", "--image", "hostile"], &[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("under the symlink"), "{}", stderr(&o));
    let pwned = Command::new("docker")
        .args(["exec", &c, "test", "-e", "/etc/pwned"])
        .output()
        .unwrap();
    assert!(!pwned.status.success(), "nothing was written through the link");
    assert_eq!(webapp_sums(&c), before);

    // The orchestrator dies after moving the files (kill -9 as far as the
    // engine can tell): the next command (`status` here) restores the
    // backup, then finishes the interrupted hotfix, and says so.
    let o = app.run(
        &["hotfix", "--image", "v1"],
        &[("STRATA_FAULT", "crash-at:hotfix-applied")],
    );
    assert!(
        !o.status.success() && stderr(&o).contains("crashing at hotfix-applied"),
        "{}",
        stderr(&o)
    );
    assert_ne!(webapp_sums(&c), before, "the crash came after the moves");
    assert!(
        app.dir
            .path()
            .join("data/apps")
            .join(&app.name)
            .join("hotfix")
            .read_dir()
            .unwrap()
            .next()
            .is_some(),
        "the crashed hotfix left its backup for the recovery"
    );
    let st = app.json(&["status"]);
    assert!(st["recovery"].as_str().unwrap().contains("finished"), "{st}");
    assert!(st["unfinished"].is_null() && st["run"].is_null(), "{st}");
    assert_eq!(app.container(), c, "recovered in place");
    assert_eq!(inspect(&c, "{{.State.StartedAt}}"), started);
    assert!(app.serves("/version.txt", "v1"), "finished forward to v1");
    let r = app.json(&["deploy", "--image", "v2"]);
    assert_eq!(r["instances"][0]["mode"], "hotfix", "{r}");
    assert_eq!(webapp_sums(&c), before, "back on v2's files");
    assert!(app.json(&["status"])["unfinished"].is_null());
    let leftovers = std::fs::read_dir(app.dir.path().join("data/apps").join(&app.name).join("hotfix"))
        .unwrap()
        .count();
    assert_eq!(leftovers, 0, "no staging or backup left on disk");

    // Refused, restored and interrupted runs are in the history too.
    let history = app.json(&["history"]);
    let outcomes: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        [
            "ok",
            "ok",
            "restored",
            "restored",
            "refused",
            "interrupted",
            "ok",
            "ok"
        ],
        "{history}"
    );
    assert_eq!(history[6]["action"], "recover", "{history}");

    // A full redeploy converges the hotfixed instance to v2's own image.
    let r = app.json(&["deploy", "--image", "v2", "--redeploy"]);
    assert_eq!(r["instances"][0]["mode"], "redeploy");
    let st = app.status();
    assert!(st["hotfix"].is_null() && st["image"]["name"] == "v2", "{st}");
    assert!(app.get("/").unwrap().contains("version two"));

    // Logs of every instance, prefixed with its name.
    let o = app.run(&["logs", "--tail", "50"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains(&format!("{}-1 | ", app.name)) && stdout(&o).contains("Server startup"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn a_failing_health_check_rolls_back_and_keeps_the_ip() {
    let Some(_) = stack() else { return };
    // No dynamic range: the cold path (stop, then start on the same IP).
    let app = App::new("rb", false, 3, 200);
    app.json(&["deploy"]);
    let ip = app.ip();
    let old = app.container();

    // Meanwhile, a second deploy of the same app is refused.
    let mut first = strata();
    first
        .env("STRATA_STORE", &stack().unwrap().store)
        .args(["deploy", &app.name, "--redeploy", "--image", "bad", "--apps"])
        .arg(app.dir.path().join("apps"))
        .arg("--data")
        .arg(app.dir.path().join("data"))
        .arg("--layout")
        .arg(&stack().unwrap().layout)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = first.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let second = app.run(&["deploy", "--image", "v2"], &[]);
    assert!(!second.status.success());
    assert!(stderr(&second).contains("is locked by"), "{}", stderr(&second));

    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("rolled back") && err.contains(&ip), "{err}");
    assert!(
        err.contains("/health.txt"),
        "the reason names the failing probe: {err}"
    );
    let st = app.status();
    assert_eq!(st["ip"], ip.as_str());
    assert_eq!(st["container"], old.as_str(), "the old container serves again");
    assert_eq!(st["running"], true);
    assert_eq!(st["image"]["name"], "v1");
    assert!(wait_for(Duration::from_secs(20), || app.get("/health.txt")).is_some());
    let history = app.json(&["history"]);
    assert_eq!(history[1]["outcome"], "rolled-back", "{history}");
    let bad = Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=org.strata.app={}", app.name),
        ])
        .output()
        .unwrap();
    assert_eq!(
        stdout(&bad).split_whitespace().count(),
        1,
        "the failed container is gone"
    );

    // `rollback` returns to the last good version other than the current.
    app.json(&["deploy", "--image", "v2"]);
    let r = app.json(&["rollback"]);
    assert_eq!(r["action"], "rollback");
    assert!(r["image"].as_str().unwrap().starts_with("v1"), "{r}");
    assert!(
        wait_for(Duration::from_secs(20), || app
            .get("/")
            .filter(|p| !p.contains("version two")))
        .is_some()
    );

    // The orchestrator dies with the old container stopped and the new one
    // not started: the next command brings the old one back on the IP,
    // then finishes the redeploy.
    let o = app.run(
        &["deploy", "--redeploy", "--image", "v2"],
        &[("STRATA_FAULT", "crash-at:redeploy-old-stopped")],
    );
    assert!(
        !o.status.success() && stderr(&o).contains("crashing at redeploy-old-stopped"),
        "{}",
        stderr(&o)
    );
    // (Read from the state file: `status` would finish the redeploy.)
    let state: Value = serde_json::from_slice(
        &std::fs::read(
            app.dir
                .path()
                .join("data/apps")
                .join(&app.name)
                .join("state.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let c = state["instances"]["1"]["container"].as_str().unwrap().to_string();
    assert_eq!(inspect(&c, "{{.State.Running}}"), "false");
    assert_eq!(state["operation"]["phase"], "old-stopped", "{state}");
    let r = app.json(&["deploy", "--image", "v2"]);
    assert_eq!(r["instances"][0]["mode"], "unchanged", "recovery did it: {r}");
    assert_eq!(app.ip(), ip);
    assert!(app.serves("/", "version two"), "{ip} serves v2");
    let all = Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=org.strata.app={}", app.name),
        ])
        .output()
        .unwrap();
    assert_eq!(
        stdout(&all).split_whitespace().count(),
        1,
        "the half-made and the old container are gone"
    );
    let history = app.json(&["history"]);
    let h = history.as_array().unwrap();
    let tail: Vec<(&str, &str)> = h[h.len() - 3..]
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(
        tail,
        [("deploy", "interrupted"), ("recover", "ok"), ("deploy", "ok")],
        "{history}"
    );
}

#[test]
fn bad_input_is_a_clear_error_and_changes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let apps = d.path().join("apps");
    let spec = |name: &str, body: &str| write(&apps.join(format!("{name}.toml")), body);
    spec(
        "far",
        "name = \"far\"\nhosts = [\"tcp://127.0.0.1:1\"]\n[network]\nname = \"strata-test-far\"\nsubnet = \"10.250.0.0/24\"\npool = \"10.250.0.10-10.250.0.20\"\n",
    );
    spec(
        "outside",
        "name = \"outside\"\n[network]\nname = \"n\"\nsubnet = \"10.250.0.0/24\"\npool = \"10.251.0.10-10.251.0.20\"\n",
    );
    let run = |args: &[&str]| {
        strata()
            .env("STRATA_STORE", d.path().join("store"))
            .args(args)
            .arg("--apps")
            .arg(&apps)
            .arg("--data")
            .arg(d.path().join("data"))
            .output()
            .unwrap()
    };
    let o = run(&["deploy", "nosuch", "--image", "x"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("unknown app `nosuch`") && stderr(&o).contains("far, outside"),
        "{}",
        stderr(&o)
    );

    let o = run(&["status", "outside"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("outside.toml:5:8: `network.pool`")
            && stderr(&o).contains("not inside the subnet"),
        "{}",
        stderr(&o)
    );

    // An unreachable engine: refused before anything is leased or stored.
    let img = d.path().join("img");
    write(
        &d.path().join("layers.toml"),
        "[tiers.tiny]\nsources = [{ content = \"hi\\n\", dest = \"/hello\" }]\n",
    );
    let o = strata()
        .env("STRATA_STORE", d.path().join("store"))
        .args(["build", "-c"])
        .arg(d.path().join("layers.toml"))
        .arg("--layout")
        .arg(&img)
        .output()
        .unwrap();
    assert!(o.status.success(), "tiny build: {}", stderr(&o));
    let o = strata()
        .env("STRATA_STORE", d.path().join("store"))
        .args(["deploy", "far", "--image", "tiny", "--layout"])
        .arg(&img)
        .arg("--apps")
        .arg(&apps)
        .arg("--data")
        .arg(d.path().join("data"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("docker engine tcp://127.0.0.1:1: connect"),
        "{}",
        stderr(&o)
    );
    assert!(
        !d.path().join("data/leases/strata-test-far.json").exists(),
        "no lease taken"
    );
    // The refusal is recorded, with nothing else.
    let h = std::fs::read_to_string(d.path().join("data/apps/far/history.jsonl")).unwrap();
    assert_eq!(h.lines().count(), 1, "{h}");
    assert!(
        h.contains("\"outcome\":\"refused\"") && h.contains("nothing was changed"),
        "{h}"
    );
}

#[test]
fn release_builds_pushes_and_deploys_then_hotfixes_the_next_war() {
    let Some(s) = stack() else { return };
    let app = App::new("rel", true, 4, 400);
    let reg = tempfile::tempdir().unwrap();
    let serve = common::serve::Serve::start(reg.path());
    let layout = app.dir.path().join("oci");
    let war = app.dir.path().join("war");
    copy_dir(&repo().join("base-images/webapp"), &war);
    write(&war.join("health.txt"), "ok\n");
    let release = |tag: &str| {
        strata()
            .env("STRATA_STORE", &s.store)
            .env("STRATA_REGISTRY_AUTH", &serve.token)
            .args(["release", &app.name, "--json", "-c"])
            .arg(repo().join("deploy/examples/offline.toml"))
            .arg("--war")
            .arg(&war)
            .arg("--push")
            .arg(format!("127.0.0.1:{}/{}:{tag}", serve.port, app.name))
            .arg("--apps")
            .arg(app.dir.path().join("apps"))
            .arg("--data")
            .arg(app.dir.path().join("data"))
            .arg("--layout")
            .arg(&layout)
            .output()
            .unwrap()
    };
    let o = release("b1");
    assert!(o.status.success(), "{}", stderr(&o));
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["action"], "release");
    assert_eq!(r["instances"][0]["mode"], "redeploy", "{r}");
    assert!(app.get("/").unwrap().contains("strata"));
    // The registry has it.
    let tags = reqwest::blocking::Client::new()
        .get(format!(
            "http://127.0.0.1:{}/v2/{}/tags/list",
            serve.port, app.name
        ))
        .basic_auth("tests", Some(&serve.token))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(tags.contains("b1"), "{tags}");

    // The next build changes a page: the release hotfixes it in place.
    write(&war.join("index.html"), "<h1>build two</h1>\n");
    let o = release("b2");
    assert!(o.status.success(), "{}", stderr(&o));
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["instances"][0]["mode"], "hotfix", "{r}");
    assert!(app.serves("/", "build two"));

    // A WAR that does not exist: a clear error, nothing deployed.
    std::fs::remove_dir_all(&war).unwrap();
    let o = release("b3");
    assert!(!o.status.success());
    assert!(stderr(&o).contains("does not exist"), "{}", stderr(&o));
    assert_eq!(app.json(&["history"]).as_array().unwrap().len(), 2);

    // The registry timed the pushes; a server over the deploy data
    // directory exposes the two releases as deploy metrics.
    let m = common::scrape(&serve.url(""), Some(&serve.token));
    let puts = "strata_registry_request_seconds_count{op=\"manifest_put\"}";
    assert!(common::metric(&m, puts).unwrap() >= 2.0, "{m}");
    let over_deploys = common::serve::Serve::start(&app.dir.path().join("data"));
    let m = common::scrape(&over_deploys.url(""), Some(&over_deploys.token));
    let series = format!(
        "strata_deploy_seconds_count{{app=\"{}\",action=\"release\",outcome=\"ok\"}}",
        app.name
    );
    let released: f64 = m
        .lines()
        .filter(|l| l.starts_with(&series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(released, 2.0, "{m}");
}

/// A token with `role` in `data`'s credentials file.
fn token(data: &Path, name: &str, role: &str) -> String {
    let o = strata()
        .args(["token", "create", name, "--role", role, "--data"])
        .arg(data)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o).trim().to_string()
}

#[test]
fn the_api_and_the_dashboard_deploy_roll_back_and_audit_with_roles() {
    let Some(s) = stack() else { return };
    let app = App::new("ui", true, 5, 400);
    let data = app.dir.path().join("data");
    let reader = token(&data, "viewer", "read");
    let admin = token(&data, "ops", "admin");
    let apps = app.dir.path().join("apps");
    let serve = common::serve::Serve::start_with(&data, &["--apps", apps.to_str().unwrap()]);
    let base = format!("http://127.0.0.1:{}", serve.port);
    let http = reqwest::blocking::Client::new();
    let bearer = |t: &str| format!("Bearer {t}");

    // Two releases through the server's registry, with the server's data
    // directory as the deploy data directory: v1 redeploys, v2 hotfixes.
    let war = app.dir.path().join("war");
    copy_dir(&repo().join("base-images/webapp"), &war);
    write(&war.join("health.txt"), "ok\n");
    for (tag, page) in [("b1", "build one"), ("b2", "build two")] {
        write(&war.join("index.html"), format!("<h1>{page}</h1>\n"));
        let o = strata()
            .env("STRATA_STORE", &s.store)
            .env("STRATA_REGISTRY_AUTH", &serve.token)
            .args(["release", &app.name, "-c"])
            .arg(repo().join("deploy/examples/offline.toml"))
            .arg("--war")
            .arg(&war)
            .arg("--push")
            .arg(format!("127.0.0.1:{}/{}:{tag}", serve.port, app.name))
            .arg("--apps")
            .arg(&apps)
            .arg("--data")
            .arg(&data)
            .arg("--layout")
            .arg(app.dir.path().join("oci"))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
    }
    // The tomcat tier too, so the tier graph has a parent.
    let o = strata()
        .env("STRATA_STORE", &s.store)
        .env("STRATA_REGISTRY_AUTH", &serve.token)
        .arg("push")
        .arg(format!("oci:{}:tomcat", s.layout.display()))
        .arg(format!("127.0.0.1:{}/tomcat:1", serve.port))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(app.get("/").unwrap().contains("build two"));

    // The API: a reader reads (without a token: 401, see tests/api.rs).
    assert_eq!(serve.get("/strata/api/apps", None).status(), 401);
    let list: Value = http
        .get(format!("{base}/strata/api/apps"))
        .bearer_auth(&reader)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let mine = list
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == app.name.as_str())
        .unwrap();
    assert_eq!(mine["version"], 2, "{mine}");
    assert_eq!(mine["deployed"][0]["ip"], app.ip().as_str());
    let st: Value = http
        .get(format!("{base}/strata/api/apps/{}", app.name))
        .bearer_auth(&reader)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(st["instances"][0]["health"], "healthy", "{st}");
    let logs = http
        .get(format!("{base}/strata/api/apps/{}/logs?tail=20", app.name))
        .bearer_auth(&reader)
        .send()
        .unwrap();
    assert_eq!(logs.status(), 200);
    let logs = logs.text().unwrap();
    assert!(logs.contains(&format!("{}-1 | ", app.name)), "{logs:?}");
    let tiers: Value = http
        .get(format!("{base}/strata/api/tiers"))
        .bearer_auth(&reader)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let nodes = tiers.as_array().unwrap();
    let idx = |n: &str| {
        nodes
            .iter()
            .position(|x| x["names"].as_array().unwrap().iter().any(|m| m == n))
    };
    let tomcat = idx("tomcat:1").expect("tomcat in the graph");
    assert_eq!(
        nodes[idx(&format!("{}:b1", app.name)).unwrap()]["parent"],
        tomcat,
        "{tiers}"
    );
    assert_eq!(nodes[idx(&format!("{}:b2", app.name)).unwrap()]["parent"], tomcat);
    // Unknown app, bad image, wrong roles: clear errors, audited refusals.
    let r = http
        .get(format!("{base}/strata/api/apps/nope"))
        .bearer_auth(&reader)
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.text().unwrap().contains("unknown app `nope`"));
    let deploy = |who: Option<&str>, body: Value| {
        let mut rq = http
            .post(format!("{base}/strata/api/apps/{}/deploy", app.name))
            .json(&body);
        if let Some(t) = who {
            rq = rq.header("Authorization", bearer(t));
        }
        rq.send().unwrap()
    };
    assert_eq!(
        deploy(None, serde_json::json!({"image": format!("{}:b1", app.name)})).status(),
        401
    );
    let r = deploy(
        Some(&reader),
        serde_json::json!({"image": format!("{}:b1", app.name)}),
    );
    assert_eq!(r.status(), 403);
    assert!(r.text().unwrap().contains("`viewer` has the read role"));
    let r = deploy(
        Some(&serve.token),
        serde_json::json!({"image": format!("{}:nope", app.name)}),
    );
    assert_eq!(r.status(), 404, "{:?}", r.text());
    let r = deploy(
        Some(&serve.token),
        serde_json::json!({"image": "x", "mode": "sideways"}),
    );
    assert_eq!(r.status(), 400);
    let r = http
        .post(format!("{base}/strata/api/tokens"))
        .header("Authorization", bearer(&serve.token))
        .json(&serde_json::json!({"name": "more", "role": "read"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = http
        .post(format!("{base}/strata/api/tokens"))
        .header("Authorization", bearer(&admin))
        .json(&serde_json::json!({"name": "more", "role": "read"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let more: Value = r.json().unwrap();
    let r = http
        .get(format!("{base}/strata/api/audit"))
        .header("Authorization", bearer(more["token"].as_str().unwrap()))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "a token made through the API works at once");
    let audit: Value = r.json().unwrap();
    let refused = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["outcome"] == "refused" && e["who"] == "viewer")
        .count();
    assert_eq!(refused, 1, "{audit}");
    assert_eq!(
        app.json(&["history"]).as_array().unwrap().len(),
        2,
        "nothing deployed"
    );

    // CSRF: a session without the form's token changes nothing.
    let no_redirect = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = no_redirect
        .post(format!("{base}/ui/login"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(format!("token={}", serve.token))
        .send()
        .unwrap();
    assert_eq!(r.status(), 303);
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    assert!(r.headers()["set-cookie"].to_str().unwrap().contains("HttpOnly"));
    for form in ["", "csrf=forged"] {
        let r = no_redirect
            .post(format!("{base}/ui/apps/{}/rollback", app.name))
            .header("Cookie", &cookie)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .unwrap();
        assert_eq!(r.status(), 403);
    }
    assert_eq!(
        app.json(&["history"]).as_array().unwrap().len(),
        2,
        "nothing rolled back"
    );

    // The browser: a page asked for without a session shows the login
    // form (401) and comes back to it; a reader sees no action, a
    // deployer rolls back.
    let Some(mut b) = common::browser::Browser::start() else {
        return;
    };
    let shots =
        std::path::PathBuf::from(std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into()))
            .join("ui-screenshots");
    let submit = |b: &mut common::browser::Browser, t: &str| {
        b.navigate_by(&format!(
            "document.querySelector('input[name=token]').value = {}; document.querySelector('form[action=\"/ui/login\"]').submit()",
            serde_json::to_string(t).unwrap()
        ));
    };
    let logs_path = format!("/ui/apps/{}/logs?instance=1", app.name);
    b.goto(&format!("{base}{logs_path}"));
    let text = b.text();
    assert!(
        text.contains("Reading this server needs a token with the read role")
            && text.contains("strata token create NAME --role read")
            && text.contains("not logged in")
            && !text.contains(&app.ip()),
        "{text}"
    );
    b.screenshot(&shots.join("login.png"));
    submit(&mut b, &reader);
    assert_eq!(b.eval("location.pathname + location.search"), logs_path.as_str());
    assert!(b.text().contains("viewer (read)"), "{}", b.text());

    // The log: newest line at the bottom and in view, long lines wrapped,
    // and a refresh while following keeps the end in view. In a small
    // window the lines overflow the box (and wrap).
    let newest = http
        .get(format!(
            "{base}/strata/api/apps/{}/logs?instance=1&tail=1",
            app.name
        ))
        .bearer_auth(&reader)
        .send()
        .unwrap()
        .text()
        .unwrap();
    b.window(720, 520);
    b.goto(&format!("{base}{logs_path}"));
    let log_box = |b: &mut common::browser::Browser| {
        b.eval(
            "(() => { const box = document.getElementById('log'); const all = box.querySelector('.lines'); \
             const bx = box.getBoundingClientRect(), p = all.getBoundingClientRect(); \
             const probe = document.createElement('span'); probe.style.whiteSpace = 'pre'; \
             probe.textContent = 'x'.repeat(10); all.appendChild(probe); \
             const ch = probe.getBoundingClientRect().width / 10; probe.remove(); \
             const lines = [...all.querySelectorAll('.ln')]; const texts = lines.map(l => l.textContent); \
             const last = lines[lines.length - 1].getBoundingClientRect(); \
             return { overflows: box.scrollHeight > box.clientHeight + 1, \
               end_in_view: last.bottom <= bx.bottom + 1 && last.bottom >= bx.bottom - 20 && bx.bottom <= window.innerHeight, \
               start_hidden: p.top < bx.top - 1, \
               long_line: Math.max(...texts.map(l => l.length)) * ch > all.clientWidth, \
               wide: box.scrollWidth > box.clientWidth + 1 || lines.some(l => l.scrollWidth > l.clientWidth + 1), \
               last: texts[texts.length - 1], \
               follows: !!document.querySelector('meta[http-equiv=refresh]') }; })()",
        )
    };
    let v = log_box(&mut b);
    assert_eq!(v["overflows"], true, "{v}");
    assert_eq!(v["start_hidden"], true, "the oldest lines are above: {v}");
    assert_eq!(
        v["end_in_view"], true,
        "the newest line is at the bottom, in view: {v}"
    );
    assert_eq!(v["long_line"], true, "a line longer than the box: {v}");
    assert_eq!(v["wide"], false, "long lines wrap: {v}");
    assert_eq!(v["follows"], true, "{v}");
    assert_eq!(v["last"].as_str().unwrap(), newest.trim_end(), "{v}");
    b.screenshot(&shots.join("logs-narrow.png"));
    // Scrolled to the top, the next refresh brings the end back.
    b.eval("document.getElementById('log').scrollTop = -1e9; true");
    assert_eq!(log_box(&mut b)["end_in_view"], false);
    b.wait_reload();
    let v = log_box(&mut b);
    assert_eq!(v["end_in_view"], true, "after a refresh: {v}");
    // Paused: no refresh, still opened at the end.
    b.click("a", "Pause");
    let v = log_box(&mut b);
    assert!(b.text().contains("Paused"), "{}", b.text());
    assert_eq!(v["follows"], false, "{v}");
    assert_eq!(v["end_in_view"], true, "{v}");
    b.full_window();
    b.click("a", "Follow");
    assert!(b.text().contains("Following"), "{}", b.text());
    assert!(b.text().contains(&format!("{}-1 | ", app.name)));
    b.screenshot(&shots.join("logs.png"));

    b.goto(&format!("{base}/ui/apps"));
    assert!(b.text().contains(&app.name), "{}", b.text());
    b.screenshot(&shots.join("apps.png"));
    b.goto(&format!("{base}/ui/apps/{}", app.name));
    let text = b.text();
    assert!(
        text.contains("viewer (read)") && text.contains(&app.ip()),
        "{text}"
    );
    assert!(
        !text.contains("Roll back"),
        "a reader sees no rollback button: {text}"
    );
    b.screenshot(&shots.join("app-read-only.png"));
    b.click("button", "log out");
    assert!(b.text().contains("not logged in"), "{}", b.text());
    b.goto(&format!("{base}/ui/login"));
    submit(&mut b, &serve.token);
    b.goto(&format!("{base}/ui/apps/{}", app.name));
    assert!(b.text().contains("tests (deploy)"));
    b.screenshot(&shots.join("app.png"));
    b.click("button", "Roll back to v1");
    assert!(b.text().contains("Roll back"), "{}", b.text());
    b.screenshot(&shots.join("confirm.png"));
    b.click("button", "Yes, roll back");
    let text = b.text();
    assert!(text.contains("Rolled back to"), "{text}");
    b.screenshot(&shots.join("rolled-back.png"));
    assert!(app.serves("/", "build one"), "the old version is served again");
    let h = app.json(&["history"]);
    let last = h.as_array().unwrap().last().unwrap();
    assert_eq!(last["action"], "rollback");
    assert_eq!(last["by"], "tests (api)");
    for page in ["tiers", "prewarm", "hosts", "audit"] {
        b.goto(&format!("{base}/ui/{page}"));
        b.screenshot(&shots.join(format!("{page}.png")));
    }
    let text = b.text();
    assert!(text.contains("rollback") && text.contains("tests"), "{text}");
    eprintln!("screenshots in {}", shots.display());

    // The CLI through the server: a deploy back to b2 (a hotfix), the
    // status with live health, and a reader refused.
    let remote = |token: &str, args: &[&str]| {
        strata()
            .args(args)
            .args(["--server", &base, "--json"])
            .env("STRATA_TOKEN", token)
            .output()
            .unwrap()
    };
    let b2 = format!("{}:b2", app.name);
    let o = remote(&reader, &["deploy", &app.name, "--image", &b2]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("403") && stderr(&o).contains("read role"),
        "{}",
        stderr(&o)
    );
    let o = remote(&serve.token, &["deploy", &app.name, "--image", &b2]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["instances"][0]["mode"], "hotfix", "{r}");
    assert!(app.serves("/", "build two"));
    let o = remote(&reader, &["status", &app.name]);
    assert!(o.status.success(), "{}", stderr(&o));
    let st: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(st["instances"][0]["health"], "healthy", "{st}");
    let o = remote(&reader, &["history", &app.name]);
    assert!(o.status.success(), "{}", stderr(&o));
    let h: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(h.as_array().unwrap().len(), 4);

    // Deploy metrics come from the same history.
    let m = common::scrape(&base, Some(&reader));
    let rb = format!(
        "strata_deploy_seconds_count{{app=\"{}\",action=\"rollback\",outcome=\"ok\"}}",
        app.name
    );
    assert_eq!(common::metric(&m, &rb), Some(1.0), "{m}");
}
