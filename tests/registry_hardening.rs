//! `strata serve` hardening (issue 16), over raw HTTP against a real
//! server: media types belong to a repository's manifest, manifests
//! reference only their repository's blobs, upload sessions are tied to
//! their repository, serialized, range-checked and expire, and a read-only
//! token is told it lacks the right, not the credential.

mod common;

use std::process::Command;
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
fn the_credentials_file_is_created_private() {
    if !have_tool("strace") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let trace = d.path().join("trace");
    let creds = d.path().join("credentials");
    let o = Command::new("strace")
        .args(["-f", "-e", "trace=open,openat,creat", "-o"])
        .arg(&trace)
        .arg(env!("CARGO_BIN_EXE_strata"))
        .args(["token", "create", "ci", "--credentials"])
        .arg(&creds)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&trace).unwrap();
    let open = text
        .lines()
        .find(|l| l.contains(creds.to_str().unwrap()) && l.contains("O_CREAT"))
        .unwrap_or_else(|| panic!("no creating open of the credentials file:\n{text}"));
    // The mode given to open(2) itself: never readable by others, not even
    // for a moment before a chmod.
    assert!(open.contains(", 0600)"), "{open}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&creds).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
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
