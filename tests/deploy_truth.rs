//! Every report of the deploy path checked against what the running
//! containers serve and hold, on the real engine (fuse-overlayfs here):
//! a hotfix that deletes a file, spec changes, kill -9 in every journal
//! phase of a hotfix and a redeploy, a randomized fault run, the hotfix
//! health deadline and the lifecycle (remove, scale to 0, pool checks,
//! history).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::deploy::*;
use common::*;
use serde_json::Value;

const ROOT: &str = "/var/lib/tomcat10/webapps/ROOT";

fn exec(container: &str, script: &str) -> std::process::Output {
    Command::new("docker")
        .args(["exec", container, "sh", "-c", script])
        .output()
        .unwrap()
}

/// What a user would check after any run: every instance runs the
/// version the history's last successful entry names, serves it, reads
/// back without drift, kept its IP; nothing is left unfinished, on disk
/// or in the containers; no stray container.
fn assert_converged(app: &App, ips: &[String], why: &str) -> String {
    // `status` first: it finishes what a killed run left.
    let st = app.json(&["status", "--verify"]);
    let history = app.json(&["history"]);
    let h = history.as_array().unwrap();
    let last_ok = h
        .iter()
        .rev()
        .find(|e| e["outcome"] == "ok")
        .unwrap_or_else(|| panic!("{why}: no successful entry: {history}"));
    let version = last_ok["image"]["name"].as_str().unwrap().to_string();
    assert!(st["unfinished"].is_null() && st["run"].is_null(), "{why}: {st}");
    let inst = st["instances"].as_array().unwrap();
    assert_eq!(inst.len(), ips.len(), "{why}: {st}");
    for (i, want_ip) in inst.iter().zip(ips) {
        let effective = i["hotfix"]["name"]
            .as_str()
            .or(i["image"]["name"].as_str())
            .unwrap();
        assert_eq!(
            effective, version,
            "{why}: the state agrees with the history: {st}"
        );
        assert_eq!(i["ip"], want_ip.as_str(), "{why}: the IP is kept: {st}");
        assert_eq!(i["running"], true, "{why}: {st}");
        assert_eq!(i["health"], "healthy", "{why}: {st}");
        assert_eq!(i["drift"], Value::Array(vec![]), "{why}: no drift: {st}");
        let c = i["container"].as_str().unwrap();
        let served = http_get(&format!("{want_ip}:8080"), "/version.txt");
        assert_eq!(
            served.as_deref().map(str::trim),
            Some(version.as_str()),
            "{why}: {want_ip} serves {version}"
        );
        let left = exec(c, "ls -d /.strata-* 2>/dev/null | wc -l");
        assert_eq!(stdout(&left).trim(), "0", "{why}: staging left in {c}");
    }
    let hotfix_dir = app.data().join("apps").join(&app.name).join("hotfix");
    let left = std::fs::read_dir(&hotfix_dir).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "{why}: {} holds leftovers", hotfix_dir.display());
    assert_eq!(app.containers().len(), ips.len(), "{why}: stray containers");
    version
}

fn ips(app: &App) -> Vec<String> {
    app.json(&["status"])["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["ip"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_hotfix_that_deletes_a_file_leaves_it_gone_and_status_verifies_it() {
    let Some(_) = stack() else { return };
    let app = App::new("del", true, 11, 400);
    app.json(&["deploy"]);
    let c = app.container();
    let started = inspect(&c, "{{.State.StartedAt}}");
    let r = app.json(&["deploy", "--image", "v2"]);
    assert_eq!(r["instances"][0]["mode"], "hotfix", "{r}");
    // v3 deletes index.html, which v1 (the image's lower layer) has and v2
    // replaced: one `rm` would bring v1's copy back on this engine.
    let r = app.json(&["deploy", "--image", "v3"]);
    assert_eq!(r["instances"][0]["mode"], "hotfix", "{r}");
    assert_eq!(r["instances"][0]["outcome"], "ok", "{r}");
    let there = exec(
        &c,
        &format!("test -e {ROOT}/index.html || test -L {ROOT}/index.html"),
    );
    assert!(!there.status.success(), "index.html is gone from the container");
    assert_eq!(app.get("/index.html"), None, "and no longer served");
    assert_eq!(app.get("/version.txt").as_deref(), Some("v3\n"));
    assert_eq!(app.container(), c);
    assert_eq!(inspect(&c, "{{.State.StartedAt}}"), started, "no restart");
    let ip = app.ip();
    assert_converged(&app, std::slice::from_ref(&ip), "after v3");

    // Drift is found by reading the container, not the records.
    assert!(
        exec(&c, &format!("rm -f {ROOT}/extra/added.txt"))
            .status
            .success()
    );
    let o = app.run(&["status", "--verify"], &[]);
    assert!(!o.status.success(), "drift exits non-zero");
    assert!(
        stdout(&o).contains(&format!("DRIFT: {ROOT}/extra/added.txt is missing")),
        "{}",
        stdout(&o)
    );

    // A hotfix whose files do not read back is redeployed, never `ok`.
    let r = app.run(
        &["deploy", "--image", "v2", "--json"],
        &[("STRATA_FAULT", "hotfix-unverified")],
    );
    assert!(r.status.success(), "{}", stderr(&r));
    let r: Value = serde_json::from_slice(&r.stdout).unwrap();
    let i = &r["instances"][0];
    assert_eq!(i["mode"], "redeploy", "{r}");
    assert!(
        i["detail"].as_str().unwrap().contains("hotfix did not hold"),
        "{r}"
    );
    assert_ne!(app.container(), c, "a new container");
    assert_eq!(assert_converged(&app, &[ip], "after the fallback"), "v2");
}

#[test]
fn spec_changes_are_applied_by_a_redeploy_that_says_why() {
    let Some(_) = stack() else { return };
    let app = App::new("spec", true, 12, 400);
    app.json(&["deploy"]);
    let ip = app.ip();
    let vol = format!("{}-data", app.name);
    let cases: Vec<(&str, &str, &str, &str, &str)> = vec![
        // (from, to, reason in the report, inspect format, expected)
        (
            "-XX:TieredStopAtLevel=1\" }",
            "-XX:TieredStopAtLevel=1\", DV_MARKER = \"one\" }",
            "env DV_MARKER added",
            "{{range .Config.Env}}{{println .}}{{end}}",
            "DV_MARKER=one",
        ),
        (
            "memory_mib = 400",
            "memory_mib = 512",
            "memory 400 MiB → 512 MiB",
            "{{.HostConfig.Memory}}",
            "536870912",
        ),
        (
            "log_dir = \"/var/log/tomcat10\"",
            &*Box::leak(
                format!("log_dir = \"/var/log/tomcat10\"\nvolumes = [\"{vol}:/srv/data\"]").into_boxed_str(),
            ),
            "volume",
            "{{range .HostConfig.Binds}}{{println .}}{{end}}",
            &*Box::leak(format!("{vol}:/srv/data").into_boxed_str()),
        ),
        (
            "stop_grace = \"5s\"",
            "stop_grace = \"3s\"",
            "stop_grace 5s → 3s",
            "{{.Config.StopTimeout}}",
            "3",
        ),
        (
            "retries = 400",
            "retries = 399",
            "health ",
            "{{.State.Running}}",
            "true",
        ),
        (
            "log_dir = \"/var/log/tomcat10\"",
            "log_dir = \"/var/log/tomcat10/\"",
            "log_dir /var/log/tomcat10 → /var/log/tomcat10/",
            "{{.State.Running}}",
            "true",
        ),
    ];
    for (from, to, reason, format, want) in cases {
        let before = app.container();
        app.edit_spec(from, to);
        let r = app.json(&["deploy"]);
        let i = &r["instances"][0];
        assert_eq!(i["mode"], "redeploy", "{to}: {r}");
        assert!(i["detail"].as_str().unwrap().contains(reason), "{to}: {r}");
        assert_eq!(i["ip"], ip.as_str(), "{to}: {r}");
        let c = app.container();
        assert_ne!(c, before, "{to}: a new container");
        let got = inspect(&c, format);
        assert!(got.lines().any(|l| l.trim() == want), "{to}: {got}");
        // Deployed again with nothing changed: nothing to do.
        let r = app.json(&["deploy"]);
        assert_eq!(r["instances"][0]["mode"], "unchanged", "{to}: {r}");
    }
    assert_converged(&app, &[ip], "after the spec changes");
}

/// Kill points of both kinds of run, on the first or second of two
/// instances (`#2`): the next command must leave one version everywhere.
const KILL_POINTS: [(&str, bool); 13] = [
    ("hotfix-staging#1", false),
    ("hotfix-staging#2", false),
    ("hotfix-applying#2", false),
    ("hotfix-applied#1", false),
    ("hotfix-applied#2", false),
    ("redeploy-created#2", true),
    ("redeploy-warmed#1", true),
    ("redeploy-old-detached#1", true),
    ("redeploy-old-detached#2", true),
    ("redeploy-on-ip#1", true),
    ("redeploy-on-ip#2", true),
    ("redeploy-healthy#2", true),
    ("redeploy-old-removed#1", true),
];

#[test]
fn a_killed_run_is_finished_by_the_next_command_in_every_phase() {
    let Some(_) = stack() else { return };
    let app = App::new("kill", true, 13, 400);
    app.set_instances(2);
    app.json(&["deploy"]);
    let ips = ips(&app);
    let mut image = "v1";
    for (point, redeploy) in KILL_POINTS {
        let next = if image == "v1" { "v2" } else { "v1" };
        let mut args = vec!["deploy", "--image", next];
        if redeploy {
            args.push("--redeploy");
        }
        let fault = format!("crash-at:{point}");
        let o = app.run(&args, &[("STRATA_FAULT", &fault)]);
        assert!(
            !o.status.success() && stderr(&o).contains("injected fault: crashing at"),
            "{point}: {}",
            stderr(&o)
        );
        // `status` is the next command: it finishes the run.
        let v = assert_converged(&app, &ips, point);
        assert_eq!(v, next, "{point}: finished forward");
        let history = app.json(&["history"]);
        let h = history.as_array().unwrap();
        let tail: Vec<&str> = h[h.len() - 2..]
            .iter()
            .map(|e| e["outcome"].as_str().unwrap())
            .collect();
        assert_eq!(tail, ["interrupted", "ok"], "{point}: {history}");
        assert_eq!(h[h.len() - 1]["action"], "recover", "{point}");
        image = next;
    }
}

#[test]
fn fifty_random_runs_killed_at_random_moments_always_converge() {
    let Some(_) = stack() else { return };
    let app = App::new("rand", true, 14, 400);
    app.set_instances(2);
    app.json(&["deploy"]);
    let ips = ips(&app);
    let seed = std::env::var("STRATA_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("randomized fault test: STRATA_FAULT_SEED={seed}");
    let mut rng = seed | 1;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let s = stack().unwrap();
    let iterations = std::env::var("STRATA_FAULT_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let mut killed = 0;
    for round in 0..iterations {
        let image = ["v1", "v2", "v3"][next(3) as usize];
        let spec_change = next(3) == 0;
        if spec_change {
            let text = std::fs::read_to_string(app.spec_path()).unwrap();
            let kept: Vec<&str> = text.lines().filter(|l| !l.starts_with("env =")).collect();
            let env = format!(
                "env = {{ JAVA_OPTS = \"-Djava.awt.headless=true -Xss512k -XX:TieredStopAtLevel=1\", DV_ROUND = \"{round}\" }}"
            );
            std::fs::write(app.spec_path(), format!("{env}\n{}\n", kept.join("\n"))).unwrap();
        }
        let delay = Duration::from_millis(next(6000));
        let mut child = strata()
            .env("STRATA_STORE", &s.store)
            .env_remove("STRATA_FAULT")
            .args(["deploy", &app.name, "--image", image, "--apps"])
            .arg(app.dir.path().join("apps"))
            .arg("--data")
            .arg(app.data())
            .arg("--layout")
            .arg(&s.layout)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let t = Instant::now();
        let mut done = false;
        while t.elapsed() < delay {
            if child.try_wait().unwrap().is_some() {
                done = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if !done {
            child.kill().unwrap(); // SIGKILL
            killed += 1;
        }
        let _ = child.wait();
        let why = format!(
            "round {round} (seed {seed}): {image}{} killed after {delay:?}: {}",
            if spec_change { " + spec change" } else { "" },
            !done
        );
        assert_converged(&app, &ips, &why);
    }
    eprintln!("{iterations} rounds, {killed} killed mid-run");
}

#[test]
fn a_hotfix_that_breaks_the_app_is_undone_within_its_deadline() {
    let Some(_) = stack() else { return };
    // 400 probes of 150 ms would be 60 s for a fresh container; the
    // hotfix deadline is 2 s.
    let app = App::new("dead", true, 15, 400);
    app.edit_spec(
        "paths = [\"/var/lib/tomcat10/webapps/**\"]",
        "paths = [\"/var/lib/tomcat10/webapps/**\"]\nhealth_deadline = \"2s\"",
    );
    app.json(&["deploy"]);
    let c = app.container();
    let t = Instant::now();
    let o = app.run(&["hotfix", "--image", "bad"], &[]);
    let took = t.elapsed();
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("hotfix health deadline") && err.contains("the backup was restored"),
        "{err}"
    );
    assert!(took < Duration::from_secs(30), "undone after {took:?}");
    assert_eq!(app.container(), c);
    assert_eq!(app.get("/health.txt").as_deref(), Some("ok\n"));
    let ip = app.ip();
    assert_converged(&app, &[ip], "after the deadline");
}

#[test]
fn remove_scale_to_zero_pool_checks_and_an_honest_history() {
    let Some(_) = stack() else { return };
    let app = App::new("life", true, 16, 400);
    app.set_instances(2);
    // The history names who ran it: --actor, STRATA_ACTOR, else the user.
    let o = app.run(&["deploy", "--actor", "jenkins#42"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = app.run(&["deploy", "--image", "v2"], &[("STRATA_ACTOR", "ops-alice")]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut c = strata();
    c.env("STRATA_STORE", &stack().unwrap().store)
        .env_remove("USER")
        .env_remove("STRATA_ACTOR")
        .env_remove("STRATA_USER")
        .args(["deploy", &app.name, "--image", "v1", "--apps"])
        .arg(app.dir.path().join("apps"))
        .arg("--data")
        .arg(app.data())
        .arg("--layout")
        .arg(&stack().unwrap().layout);
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let h = app.json(&["history"]);
    assert_eq!(h[0]["by"], "jenkins#42", "{h}");
    assert_eq!(h[1]["by"], "ops-alice", "{h}");
    let by = h[2]["by"].as_str().unwrap();
    assert!(!by.starts_with("unknown"), "the user comes from the uid: {by}");
    let o = app.run(&["history"], &[]);
    assert!(stdout(&o).starts_with(" VER  AT"), "a header: {}", stdout(&o));

    // A version whose image left the store is refused as such, before
    // anything changes (the dashboard offers no button for it either).
    let hist = app.data().join("apps").join(&app.name).join("history.jsonl");
    let mut gone: Value = h[0].clone();
    gone["version"] = 99.into();
    gone["image"]["manifest"] = format!("sha256:{}", "0".repeat(64)).into();
    let mut text = std::fs::read_to_string(&hist).unwrap();
    text.push_str(&format!("{gone}\n"));
    std::fs::write(&hist, text).unwrap();
    let o = app.run(&["rollback", "--to", "99"], &[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no longer in this store"), "{}", stderr(&o));
    let lines = std::fs::read_to_string(&hist).unwrap().lines().count();
    assert_eq!(lines, 4, "nothing ran");

    // `lease list APP` reads the pool from the spec.
    let lease_list = || {
        strata()
            .args(["lease", "list", &app.name, "--apps"])
            .arg(app.dir.path().join("apps"))
            .arg("--data")
            .arg(app.data())
            .output()
            .unwrap()
    };
    let o = lease_list();
    assert!(o.status.success(), "{}", stderr(&o));
    let ips = ips(&app);
    for (n, ip) in ips.iter().enumerate() {
        assert!(
            stdout(&o).contains(&format!("{ip} {}-{}", app.name, n + 1)),
            "{}",
            stdout(&o)
        );
    }

    // Scale to 0: every instance goes, leases freed, history kept.
    app.set_instances(0);
    let r = app.json(&["deploy"]);
    let modes: Vec<&str> = r["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["mode"].as_str().unwrap())
        .collect();
    assert_eq!(modes, ["removed", "removed"], "{r}");
    assert!(app.containers().is_empty());
    let o = lease_list();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stdout(&o).contains(&app.name), "{}", stdout(&o));

    // A pool that cannot hold the instances is refused before any
    // container is touched: another owner holds 10 of its 11 addresses.
    app.set_instances(2);
    let pool_args = |verb: &str, owners: &[String]| {
        let mut c = strata();
        c.args(["lease", verb, &app.network, "--range"])
            .arg(format!("{}.10-{}.20", app.subnet, app.subnet))
            .arg("--data")
            .arg(app.data())
            .args(owners);
        c.output().unwrap()
    };
    let others: Vec<String> = (0..10).map(|i| format!("other-{i}")).collect();
    assert!(pool_args("take", &others).status.success());
    let o = app.run(&["deploy"], &[]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("has 1 free address(es) but the deploy needs 2 more; nothing was changed"),
        "{}",
        stderr(&o)
    );
    assert!(app.containers().is_empty(), "no container was created");
    let h = app.json(&["history"]);
    assert_eq!(h.as_array().unwrap().last().unwrap()["outcome"], "refused", "{h}");
    assert!(pool_args("release", &others).status.success());

    // Deployed again, then removed: instances, leases and (with --purge)
    // the logs volumes go; the history stays and says so.
    app.json(&["deploy"]);
    let o = app.run(&["remove", "--purge"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(app.containers().is_empty());
    let vols = Command::new("docker")
        .args([
            "volume",
            "ls",
            "-q",
            "--filter",
            &format!("name=strata-{}-", app.name),
        ])
        .output()
        .unwrap();
    assert_eq!(stdout(&vols).trim(), "", "the logs volumes were purged");
    let h = app.json(&["history"]);
    let last = h.as_array().unwrap().last().unwrap();
    assert_eq!(
        (last["action"].as_str(), last["outcome"].as_str()),
        (Some("remove --purge"), Some("ok")),
        "{h}"
    );
    let st = app.json(&["status"]);
    assert!(st["instances"].as_array().unwrap().is_empty(), "{st}");
    let o = app.run(&["remove"], &[]);
    assert!(
        !o.status.success() && stderr(&o).contains("no instances to remove"),
        "{}",
        stderr(&o)
    );
}

/// Clients opening a new connection every 10 ms during a warm redeploy
/// (the default detach swap): the IP moves in two engine calls and the
/// old container never closes its listener on the address, so no connect
/// is refused. (With `swap = "drain"`, the old order, Tomcat's shutdown
/// refuses a few dozen of them.) A connect whose SYN falls in the
/// handover window waits for its retransmit, and a request in flight on
/// the old container is cut; how long and how many, is what
/// benches/deploy.sh measures.
///
/// The app is alone on its network, so without the bridge anchor the
/// bridge would lose its last port during the handover and the kernel
/// would flush the host's ARP cache: every client on the host then waits
/// a second for the next ARP try (the entry sits INCOMPLETE). The host's
/// ARP entry for the IP is watched throughout and must never be.
#[test]
fn a_warm_redeploy_refuses_no_new_connection() {
    let Some(_) = stack() else { return };
    let app = App::new("gap", true, 17, 400);
    app.json(&["deploy"]);
    let ip = app.ip();
    let addr: std::net::SocketAddr = format!("{ip}:8080").parse().unwrap();
    for (round, image) in ["v2", "v1", "v2"].into_iter().enumerate() {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let results = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let client = {
            let (stop, results) = (stop.clone(), results.clone());
            std::thread::spawn(move || {
                let mut threads = Vec::new();
                let end = Instant::now() + Duration::from_secs(120);
                while !stop.load(std::sync::atomic::Ordering::SeqCst) && Instant::now() < end {
                    let results = results.clone();
                    threads.push(std::thread::spawn(move || {
                        let outcome = one_request(addr);
                        results.lock().unwrap().push(outcome);
                    }));
                    std::thread::sleep(Duration::from_millis(10));
                }
                for t in threads {
                    let _ = t.join();
                }
            })
        };
        let arp = {
            let (stop, ip) = (stop.clone(), ip.clone());
            std::thread::spawn(move || {
                let mut lost = Vec::new();
                let start = Instant::now();
                while !stop.load(std::sync::atomic::Ordering::SeqCst)
                    && start.elapsed() < Duration::from_secs(120)
                {
                    let o = Command::new("ip").args(["neigh", "show", &ip]).output().unwrap();
                    let line = stdout(&o);
                    if line.contains("INCOMPLETE") || line.contains("FAILED") {
                        lost.push(format!("{:.2}s {}", start.elapsed().as_secs_f64(), line.trim()));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                lost
            })
        };
        std::thread::sleep(Duration::from_millis(300));
        let r = app.json(&["deploy", "--redeploy", "--image", image]);
        assert_eq!(r["instances"][0]["ip"], ip.as_str(), "{r}");
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        client.join().unwrap();
        let lost = arp.join().unwrap();
        assert!(
            lost.is_empty(),
            "round {round}: the host lost the IP's ARP entry during the handover ({} samples): {:?}",
            lost.len(),
            &lost[..lost.len().min(3)]
        );
        assert_eq!(
            app.containers().len(),
            1,
            "round {round}: the bridge anchor is gone"
        );
        let results = results.lock().unwrap();
        let refused: Vec<&String> = results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .filter(|e| e.starts_with("refused"))
            .collect();
        let ok = results.iter().filter(|r| r.is_ok()).count();
        assert!(ok > 50, "round {round}: {ok} requests answered");
        assert!(
            refused.is_empty(),
            "round {round}: {} of {} connections refused during the redeploy",
            refused.len(),
            results.len()
        );
    }
}

/// One GET on a new connection: Ok, or what went wrong (`refused …` when
/// the connect itself was refused: nothing listened on the address).
fn one_request(addr: std::net::SocketAddr) -> Result<(), String> {
    use std::io::{ErrorKind, Read, Write};
    let kind = |e: std::io::Error| e.to_string();
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(|e| {
        if e.kind() == ErrorKind::ConnectionRefused {
            format!("refused: {e}")
        } else {
            e.to_string()
        }
    })?;
    s.set_read_timeout(Some(Duration::from_secs(3))).map_err(kind)?;
    s.write_all(b"GET /health.txt HTTP/1.0\r\n\r\n").map_err(kind)?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).map_err(kind)?;
    if head.ends_with(b"200") {
        Ok(())
    } else {
        Err(format!("answered {}", String::from_utf8_lossy(&head)))
    }
}
