//! Two orchestrators, one cluster: two `strata serve` processes (their own
//! loopback ports and data directories, the same app specs) share one
//! real etcd for leases, locks and the deploy state, and deploy to this
//! machine's Docker engine.
//!
//! A deploy through A shows in B's status, history and dashboard. Then A
//! is killed with SIGKILL in the middle of a rolling redeploy (the first
//! instance done, the second's new container created), and B, with no
//! command from anyone, finishes the run once A's lock has expired:
//! every instance serves the run's version over HTTP from a container of
//! its image, on the IP it had, no stray container, and B's history says
//! `interrupted` then `recover`. Last, A is killed in the middle of a
//! hotfix: its backup is on A's disk, which B never sees, so B replaces
//! that instance's container (its files are a mix) and hotfixes the
//! other one: again one version everywhere, read back.

mod common;

use std::time::{Duration, Instant};

use common::deploy::*;
use common::serve::Serve;
use common::*;
use serde_json::{Value, json};

/// Pushes the stack's tag `v` to `srv` as `APP:v`.
fn push(srv: &Serve, app: &App, v: &str) {
    let s = stack().unwrap();
    let o = strata()
        .env("STRATA_STORE", &s.store)
        .env("STRATA_REGISTRY_AUTH", &srv.token)
        .arg("push")
        .arg(format!("oci:{}:{v}", s.layout.display()))
        .arg(format!("127.0.0.1:{}/{}:{v}", srv.port, app.name))
        .output()
        .unwrap();
    assert!(o.status.success(), "push {v}: {}", stderr(&o));
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()
        .unwrap()
}

fn get(srv: &Serve, path: &str) -> Value {
    let r = client()
        .get(srv.url(path))
        .bearer_auth(&srv.token)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{path}");
    r.json().unwrap()
}

/// POSTs a deploy of `APP:v` (`mode`: auto, redeploy).
fn deploy(srv: &Serve, app: &App, v: &str, mode: &str) -> reqwest::Result<reqwest::blocking::Response> {
    client()
        .post(srv.url(&format!("/strata/api/apps/{}/deploy", app.name)))
        .bearer_auth(&srv.token)
        .json(&json!({ "image": format!("{}:{v}", app.name), "mode": mode }))
        .send()
}

/// The history as `action outcome` strings.
fn outcomes(h: &Value) -> Vec<String> {
    h.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["action"].as_str().unwrap(),
                e["outcome"].as_str().unwrap()
            )
        })
        .collect()
}

/// Restarts A with `fault`, deploys `v` through it in the background,
/// waits for the fault's pause and kills A with SIGKILL; returns when.
fn kill_a_midway(
    a: &mut Serve,
    data: &std::path::Path,
    args: &[&str],
    fault: &str,
    app: &App,
    v: &str,
    mode: &str,
) -> Instant {
    a.kill();
    *a = Serve::start_env(data, args, &[("STRATA_FAULT", fault)]);
    let srv_port = a.port;
    let token = a.token.clone();
    let (name, v, mode) = (app.name.clone(), v.to_string(), mode.to_string());
    let call = std::thread::spawn(move || {
        // Cut off by the kill: no answer is expected.
        let _ = client()
            .post(format!(
                "http://127.0.0.1:{srv_port}/strata/api/apps/{name}/deploy"
            ))
            .bearer_auth(token)
            .json(&json!({ "image": format!("{name}:{v}"), "mode": mode }))
            .send();
    });
    let point = fault.trim_start_matches("pause-at:");
    let paused = wait_for(Duration::from_secs(180), || {
        a.logged("injected fault: pausing at").then_some(())
    });
    assert!(
        paused.is_some(),
        "A never reached {point}: {:?}",
        a.log.lock().unwrap()
    );
    a.kill(); // SIGKILL: no cleanup, the etcd lock lives on until its TTL
    let killed = Instant::now();
    call.join().unwrap();
    killed
}

/// Waits (reading only: the history API never recovers anything) until
/// B's history ends with a `recover` entry; how long it took.
fn wait_for_recovery(b: &Serve, app: &App, entries_before: usize, killed: Instant) -> Duration {
    let path = format!("/strata/api/apps/{}/history", app.name);
    let done = wait_for(Duration::from_secs(150), || {
        let h = get(b, &path);
        let a = h.as_array().unwrap();
        (a.len() >= entries_before + 2 && a.last().unwrap()["action"] == "recover").then_some(())
    });
    assert!(
        done.is_some(),
        "B did not finish the run A left: {}",
        get(b, &path)
    );
    killed.elapsed()
}

/// What a user checks: through B, every instance runs `APP:v`, serves
/// it, reads back without drift, on the IP it had; nothing unfinished;
/// the engine runs those containers from that image and nothing else.
fn assert_one_version(b: &Serve, app: &App, v: &str, ips: &[String]) -> Value {
    let st = get(b, &format!("/strata/api/apps/{}?verify=true", app.name));
    assert!(st["run"].is_null() && st["unfinished"].is_null(), "{st}");
    let inst = st["instances"].as_array().unwrap();
    assert_eq!(inst.len(), ips.len(), "{st}");
    let want = format!("{}:{v}", app.name);
    for (i, ip) in inst.iter().zip(ips) {
        let effective = if i["hotfix"].is_null() {
            &i["image"]
        } else {
            &i["hotfix"]
        };
        assert_eq!(effective["name"], want.as_str(), "{st}");
        assert_eq!(i["ip"], ip.as_str(), "the IP is kept: {st}");
        assert_eq!(i["health"], "healthy", "{st}");
        assert_eq!(i["drift"], json!([]), "no drift: {st}");
        assert!(i["tainted"].is_null(), "{st}");
        let served = http_get(&format!("{ip}:8080"), "/version.txt");
        assert_eq!(served.as_deref().map(str::trim), Some(v), "{ip} serves {v}");
        let c = i["container"].as_str().unwrap();
        assert_eq!(
            inspect(c, "{{.Image}}"),
            i["image"]["config"].as_str().unwrap(),
            "the engine runs the recorded image"
        );
        assert_eq!(inspect(c, "{{.State.Running}}"), "true");
    }
    assert_eq!(app.containers().len(), ips.len(), "stray containers: {st}");
    st
}

#[test]
fn two_servers_share_the_deploy_state_and_one_finishes_what_the_other_left() {
    let Some(_) = stack() else { return };
    if !have_tool("etcd") {
        return;
    }
    let app = App::new("duo", true, 21, 400);
    app.set_instances(2);
    let scratch = tempfile::tempdir().unwrap();
    let etcd = common::etcd::start(scratch.path());
    let spec = etcd.spec();
    let apps = app.dir.path().join("apps");
    let args = ["--apps", apps.to_str().unwrap(), "--leases", &spec];
    let (da, db) = (scratch.path().join("a"), scratch.path().join("b"));
    let mut a = Serve::start_with(&da, &args);
    let b = Serve::start_with(&db, &args);
    assert!(
        b.startup.join("\n").contains(&format!("deploy state in {spec}")),
        "{:?}",
        b.startup
    );
    // Each server deploys from its own registry: both get the images.
    for srv in [&a, &b] {
        for v in ["v1", "v2"] {
            push(srv, &app, v);
        }
    }

    // A deploy through A is B's to see: its list, status, history, dashboard.
    let r = deploy(&a, &app, "v1", "auto").unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    let list = get(&b, "/strata/api/apps");
    let mine = list
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == app.name.as_str())
        .unwrap()
        .clone();
    assert_eq!(mine["version"], 1, "{mine}");
    assert_eq!(mine["deployed"].as_array().unwrap().len(), 2, "{mine}");
    let st = get(&b, &format!("/strata/api/apps/{}", app.name));
    let ips: Vec<String> = st["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["ip"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ips.len(), 2, "{st}");
    assert_one_version(&b, &app, "v1", &ips);
    let h = get(&b, &format!("/strata/api/apps/{}/history", app.name));
    assert_eq!(outcomes(&h), ["deploy ok"], "{h}");
    assert_eq!(h[0]["by"], "tests (api)", "{h}");
    let login = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(b.url("/ui/login"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(form(&[("token", &b.token), ("next", "/ui/apps")]))
        .send()
        .unwrap();
    let cookie = login.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let page = client()
        .get(b.url(&format!("/ui/apps/{}", app.name)))
        .header("Cookie", cookie)
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        page.contains(&format!("{}:v1", app.name)) && page.contains(&ips[1]),
        "{page}"
    );

    // A dies (SIGKILL) in the middle of a rolling redeploy to v2: the
    // first instance is done, the second's new container is created.
    let before = app.containers();
    let killed = kill_a_midway(
        &mut a,
        &da,
        &args,
        "pause-at:redeploy-created#2",
        &app,
        "v2",
        "redeploy",
    );
    assert_eq!(
        app.containers().len(),
        3,
        "killed with the second new container made"
    );
    let took = wait_for_recovery(&b, &app, 1, killed);
    eprintln!(
        "B finished A's redeploy {:.1}s after A was killed",
        took.as_secs_f64()
    );
    assert_one_version(&b, &app, "v2", &ips);
    for c in app.containers() {
        assert!(!before.contains(&c), "every instance has a new container");
    }
    let h = get(&b, &format!("/strata/api/apps/{}/history", app.name));
    assert_eq!(
        outcomes(&h),
        ["deploy ok", "deploy interrupted", "recover ok"],
        "{h}"
    );
    let detail = h[1]["detail"].as_str().unwrap();
    assert!(
        detail.contains(" on ") && detail.contains("stopped before the deploy finished"),
        "{h}"
    );

    // A dies in the middle of a hotfix back to v1, its backup on its own
    // disk: B replaces instance 1's container and hotfixes instance 2.
    let before: Vec<String> = get(&b, &format!("/strata/api/apps/{}", app.name))["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["container"].as_str().unwrap().to_string())
        .collect();
    let killed = kill_a_midway(
        &mut a,
        &da,
        &args,
        "pause-at:hotfix-applied#1",
        &app,
        "v1",
        "auto",
    );
    let backups = da.join("apps").join(&app.name).join("hotfix");
    assert_eq!(
        std::fs::read_dir(&backups).map(|d| d.count()).unwrap_or(0),
        1,
        "A's backup is on A's disk"
    );
    // Both servers run on this machine's filesystem: A's disk goes away
    // (B's recovery waits for A's lock to expire, 15 s) as it would with
    // A's machine.
    let gone = scratch.path().join("a-disk-gone");
    std::fs::rename(&backups, &gone).unwrap();
    let took = wait_for_recovery(&b, &app, 3, killed);
    eprintln!(
        "B finished A's hotfix {:.1}s after A was killed",
        took.as_secs_f64()
    );
    let h = get(&b, &format!("/strata/api/apps/{}/history", app.name));
    assert_eq!(outcomes(&h)[3], "deploy interrupted", "{h}");
    assert_eq!(h[4]["action"], "recover", "{h}");
    // Finished forward (v1), or put back (v2) when the run failed: one
    // version everywhere either way, read back.
    let v = if h[4]["outcome"] == "ok" { "v1" } else { "v2" };
    let st = assert_one_version(&b, &app, v, &ips);
    let now: Vec<&str> = st["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["container"].as_str().unwrap())
        .collect();
    assert_ne!(
        now[0], before[0],
        "instance 1's files were unknown to B: a new container: {h}"
    );
    assert!(
        h[4]["detail"].as_str().unwrap_or("").is_empty() || v == "v2",
        "{h}"
    );
    if v == "v1" {
        assert_eq!(now[1], before[1], "instance 2 was hotfixed in place");
        assert_eq!(h[4]["mode"], "hotfix+redeploy", "{h}");
    }
    drop(etcd);
}
