//! The offline stack (deploy/examples/offline.toml) built from Debian
//! packages and really run on this machine's Docker engine: Tomcat serves
//! the sample page and a JSP, the fixes hold, `docker stop` is a clean
//! SIGTERM shutdown, and two clean builds agree on every digest.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker").args(args).output().expect("docker runs")
}

fn ok(o: std::process::Output) -> String {
    assert!(o.status.success(), "docker failed: {}", stderr(&o));
    stdout(&o).trim().to_string()
}

/// Polls `f` until it returns Some, at most `limit`.
fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(v) = f() {
            return Some(v);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    None
}

/// Fetches a page from inside the container (busybox wget), so it also
/// works with `--network none`.
fn fetch_inside(container: &str, path: &str) -> Option<String> {
    let o = docker(&[
        "exec",
        container,
        "wget",
        "-qO-",
        &format!("http://127.0.0.1:8080{path}"),
    ]);
    o.status.success().then(|| stdout(&o))
}

#[test]
fn offline_stack_builds_runs_and_is_reproducible() {
    if !have_docker() {
        return;
    }
    let Some(_debs) = debs() else { return };
    let tag = unique("stack");
    let tiers = ["alpine", "tools", "jdk", "tomcat", "sample"];
    let mut cleanup = DockerCleanup {
        containers: vec![],
        images: tiers.iter().map(|t| format!("strata/{t}:{tag}")).collect(),
    };
    let work = tempfile::tempdir().unwrap();
    let config = repo().join("deploy/examples/offline.toml");
    let build = |store: &str, extra: &[&str]| -> Value {
        let mut args = vec!["build", "--json", "-c", config.to_str().unwrap(), "--tag", &tag];
        let layout = work.path().join(format!("{store}-oci"));
        args.extend(["--layout", layout.to_str().unwrap()]);
        args.extend_from_slice(extra);
        let out = strata()
            .env("STRATA_STORE", work.path().join(store))
            .args(&args)
            .output()
            .unwrap();
        assert!(out.status.success(), "build failed: {}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let first = build("a", &["--load"]);
    let second = build("b", &[]);
    let digests = |r: &Value| -> Vec<String> {
        r["tiers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["manifest"]["digest"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(digests(&first), digests(&second), "two clean builds must agree");
    assert_eq!(digests(&first).len(), 5);

    // Tomcat serves the sample page and compiles a JSP.
    let name = unique("tomcat");
    cleanup.containers.push(name.clone());
    let image = format!("strata/sample:{tag}");
    ok(docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "--hostname",
        "strata-app",
        "--memory",
        "512m",
        &image,
    ]));
    let page = wait_for(Duration::from_secs(60), || fetch_inside(&name, "/"))
        .unwrap_or_else(|| panic!("tomcat never answered: {}", stdout(&docker(&["logs", &name]))));
    assert!(page.contains("Hello from strata"), "{page}");
    let info = fetch_inside(&name, "/info.jsp").expect("the JSP compiles and runs");
    assert!(info.contains("file.encoding=UTF-8"), "{info}");
    assert!(info.contains("sun.jnu.encoding=UTF-8"), "{info}");
    assert!(info.contains("timezone=Asia/Shanghai"), "{info}");
    assert!(info.contains("unicode=你好"), "{info}");
    assert!(info.contains("host=strata-app/"), "{info}");
    assert!(info.contains("pid=1\n"), "Java must be PID 1: {info}");
    // The jvm fix: the heap follows the container's memory limit
    // (MaxRAMPercentage=75 of 512 MiB), not the host's 24 GiB.
    let max: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("max.memory="))
        .and_then(|v| v.trim().parse().ok())
        .expect("max.memory line");
    assert!(
        (300 << 20..=384 << 20).contains(&max),
        "heap {max} is not 75% of 512 MiB"
    );
    let user = ok(docker(&[
        "exec",
        &name,
        "sh",
        "-c",
        "ps -o user,pid | grep ' 1$'",
    ]));
    assert!(user.starts_with("tomcat"), "tomcat runs as its own user: {user}");

    // docker stop: SIGTERM reaches the JVM, which exits cleanly (143)
    // long before the 10 s kill timeout.
    let t = Instant::now();
    ok(docker(&["stop", &name]));
    let took = t.elapsed();
    let code = ok(docker(&["inspect", "-f", "{{.State.ExitCode}}", &name]));
    assert_eq!(code, "143", "exit by SIGTERM, not SIGKILL (137)");
    assert!(took < Duration::from_secs(5), "docker stop took {took:?}");
    let logs = stderr(&docker(&["logs", &name])) + &stdout(&docker(&["logs", &name]));
    assert!(logs.contains("Stopping service"), "Tomcat shut down in order");
}

#[test]
fn hostname_fix_makes_get_local_host_work() {
    if !have_docker() {
        return;
    }
    let Some(_debs) = debs() else { return };
    let tag = unique("host");
    let mut cleanup = DockerCleanup {
        containers: vec![],
        images: ["alpine", "tools", "jdk", "tomcat", "sample"]
            .iter()
            .map(|t| format!("strata/{t}:{tag}"))
            .collect(),
    };
    let work = tempfile::tempdir().unwrap();
    let config = repo().join("deploy/examples/offline.toml");
    let out = strata()
        .env("STRATA_STORE", work.path().join("store"))
        .args([
            "build",
            "-c",
            config.to_str().unwrap(),
            "--tag",
            &tag,
            "--load",
            "--tier",
            "sample",
        ])
        .arg("--layout")
        .arg(work.path().join("oci"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let image = format!("strata/sample:{tag}");
    // `--network none` gives a container whose /etc/hosts lacks its own
    // hostname: the bug the original team hit.
    let mut run = |fix: &str| -> String {
        let name = unique("nohosts");
        cleanup.containers.push(name.clone());
        ok(docker(&[
            "run",
            "-d",
            "--network",
            "none",
            "--hostname",
            "lonely-host",
            "-e",
            &format!("STRATA_HOSTNAME_FIX={fix}"),
            "--name",
            &name,
            &image,
        ]));
        wait_for(Duration::from_secs(60), || fetch_inside(&name, "/"))
            .unwrap_or_else(|| panic!("tomcat never answered: {}", stdout(&docker(&["logs", &name]))));
        let o = docker(&["exec", &name, "wget", "-qO-", "http://127.0.0.1:8080/info.jsp"]);
        let body = stdout(&o) + &stderr(&o);
        let hosts = ok(docker(&["exec", &name, "cat", "/etc/hosts"]));
        format!("{body}\n--- hosts\n{hosts}")
    };
    let broken = run("0");
    assert!(
        broken.contains("host-error=java.net.UnknownHostException: lonely-host"),
        "without the fix: {broken}"
    );
    assert!(!broken.contains("lonely-host\n"), "{broken}");
    let fixed = run("1");
    assert!(
        fixed.contains("host=lonely-host/127.0.0.1"),
        "with the fix: {fixed}"
    );
    drop(cleanup);
}
