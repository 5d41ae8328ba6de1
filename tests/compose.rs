//! The compose demo cluster (`deploy/compose/`): an image strata builds of
//! itself, a server and three agents in containers started by
//! docker-compose; the agents join with the server's token, a prewarm
//! (with an API token made in the server's container) reaches all three,
//! and this host's engine pulls the image through an agent and runs it.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// `docker-compose down -v` and the image, also when the test fails.
struct Cluster {
    project: String,
    env: Vec<(String, String)>,
    images: Vec<String>,
}

impl Cluster {
    fn compose(&self, args: &[&str]) -> std::process::Output {
        Command::new("docker-compose")
            .args(["-p", &self.project, "-f"])
            .arg(repo().join("deploy/compose/docker-compose.yml"))
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.compose(&["down", "-v", "--remove-orphans"]);
        for i in &self.images {
            let _ = Command::new("docker").args(["rmi", "-f", i]).output();
        }
    }
}

#[test]
fn the_compose_cluster_joins_prewarms_and_serves_the_host_engine() {
    if !have_docker() || !have_tool("docker-compose") {
        return;
    }
    let Some(_) = debs() else { return };
    let store = tempfile::tempdir().unwrap();
    let id = std::process::id();
    let image = format!("strata-test/node:c{id}");
    let o = Command::new("bash")
        .arg(repo().join("deploy/compose/build-image.sh"))
        .arg(&image)
        .env("STRATA_BIN", env!("CARGO_BIN_EXE_strata"))
        .env("STRATA_STORE", store.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "build-image.sh: {}", stderr(&o));
    let port = free_port();
    let mirror = free_port();
    let mirror2 = free_port();
    let env: Vec<(String, String)> = [
        ("STRATA_IMAGE", image.clone()),
        ("STRATA_PORT", port.to_string()),
        ("STRATA_SUBNET", format!("10.{}.{}", 180 + id % 20, id % 250)),
        ("STRATA_MIRROR_1", mirror.to_string()),
        ("STRATA_MIRROR_2", mirror2.to_string()),
        ("STRATA_MIRROR_3", free_port().to_string()),
        ("STRATA_METRICS_1", free_port().to_string()),
        ("STRATA_METRICS_2", free_port().to_string()),
        ("STRATA_METRICS_3", free_port().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let pulled = format!("127.0.0.1:{mirror}/tools:1");
    let loaded = format!("127.0.0.1:{mirror2}/tools:1");
    let cluster = Cluster {
        project: format!("strata-test-compose-{id}"),
        env,
        images: vec![image.clone(), pulled.clone(), loaded.clone()],
    };
    let o = cluster.compose(&["up", "-d"]);
    assert!(o.status.success(), "docker-compose up: {}", stderr(&o));
    let server = format!("http://127.0.0.1:{port}");
    // A token, made as the README says, in the server's container while
    // it runs: the API and the dashboard want one.
    let o = cluster.compose(&[
        "exec", "-T", "server", "strata", "token", "create", "tests", "--role", "deploy", "--data", "/data",
    ]);
    assert!(o.status.success(), "strata token create: {}", stderr(&o));
    let token = stdout(&o).trim().to_string();
    let http = reqwest::blocking::Client::new();
    assert_eq!(
        http.get(format!("{server}/strata/api/hosts"))
            .send()
            .unwrap()
            .status(),
        401,
        "no anonymous reads"
    );

    // The three agents join and register.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let hosts: Value = http
            .get(format!("{server}/strata/api/hosts"))
            .bearer_auth(&token)
            .send()
            .ok()
            .and_then(|r| r.json().ok())
            .unwrap_or(Value::Null);
        if hosts.as_array().is_some_and(|h| h.len() == 3) {
            break;
        }
        if Instant::now() > deadline {
            let logs = cluster.compose(&["logs", "--no-color"]);
            panic!("agents did not register: {hosts}\n{}", stdout(&logs));
        }
        std::thread::sleep(Duration::from_millis(300));
    }

    // An image in the server's registry, prewarmed onto every agent.
    let layout = store.path().join("oci");
    let o = strata()
        .env("STRATA_STORE", store.path())
        .args(["build", "-c"])
        .arg(repo().join("deploy/examples/offline.toml"))
        .args(["--tier", "tools", "--layout"])
        .arg(&layout)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let o = strata()
        .env("STRATA_STORE", store.path())
        .args(["push", "--gzip", &format!("oci:{}:tools", layout.display())])
        .arg(format!("127.0.0.1:{port}/tools:1"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let o = strata()
        .args([
            "prewarm",
            "tools:1",
            "--server",
            &server,
            "--json",
            "--timeout",
            "120",
        ])
        .env("STRATA_TOKEN", &token)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let job: Value = serde_json::from_slice(&o.stdout).unwrap();
    let hosts = job["hosts"].as_object().unwrap();
    assert_eq!(hosts.len(), 3, "{job}");
    assert!(hosts.values().all(|h| h["state"] == "done"), "{job}");

    // This host's engine pulls through agent-1 and runs the image.
    let o = Command::new("docker").args(["pull", &pulled]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_runs_with_the_timezone_fix(&pulled);
    // agent-2 loads it into this engine itself (through its published
    // pull-through port).
    let o = strata()
        .args([
            "prewarm", "tools:1", "--server", &server, "--hosts", "agent-2", "--load",
        ])
        .env("STRATA_TOKEN", &token)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let o = Command::new("docker")
        .args(["image", "inspect", &loaded])
        .output()
        .unwrap();
    assert!(o.status.success(), "not loaded: {}", stderr(&o));
    // The dashboard shows the hosts, after a login with the token.
    let no_redirects = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = no_redirects
        .post(format!("{server}/ui/login"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(form(&[("token", token.as_str()), ("next", "/ui/hosts")]))
        .send()
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/ui/hosts");
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let page = no_redirects
        .get(format!("{server}/ui/hosts"))
        .header("Cookie", cookie)
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(page.contains("agent-3") && page.contains("rack=b"), "{page}");
}
