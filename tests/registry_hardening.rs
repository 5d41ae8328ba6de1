//! `strata serve` hardening (issue 16), over raw HTTP against a real
//! server: media types belong to a repository's manifest, manifests
//! reference only their repository's blobs, upload sessions are tied to
//! their repository, serialized, range-checked and expire, and a read-only
//! token is told it lacks the right, not the credential.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Polls `f` every 20 ms for at most `limit`.
fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

#[test]
fn logs_to_a_file_carry_no_colour_codes() {
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("serve.log");
    let mut child = strata()
        .args(["serve", "--listen", "127.0.0.1:0", "--open-push", "--data"])
        .arg(d.path().join("data"))
        .env("STRATA_LOG", "trace")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let port = line.trim().rsplit(':').next().unwrap().to_string();
    let r = reqwest::blocking::get(format!("http://127.0.0.1:{port}/v2/")).unwrap();
    assert_eq!(r.status(), 200);
    let logged = eventually(Duration::from_secs(5), || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("TRACE"))
    });
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(logged, "nothing was logged: {text}");
    assert!(!text.contains('\u{1b}'), "{text:?}");
}
