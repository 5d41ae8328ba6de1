//! Shared helpers for integration tests: the strata binary, real tools,
//! and loud skips that turn into failures under `STRATA_TEST_STRICT=1`
//! (which `.ci/run` sets).

#![allow(dead_code)]

pub mod browser;
pub mod deploy;
pub mod etcd;
pub mod serve;
pub mod swarm;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// True when a missing tool must fail the test instead of skipping it.
pub fn strict() -> bool {
    std::env::var("STRATA_TEST_STRICT").is_ok_and(|v| v == "1")
}

/// Skips (returns false) or, in strict mode, panics when `what` is missing.
pub fn skip(what: &str) -> bool {
    if strict() {
        panic!("{what} is required (STRATA_TEST_STRICT=1)");
    }
    // Written to the process's stderr directly, not through `eprintln!`,
    // which the test harness captures: a skip shows in a plain
    // `cargo test` run, not only under --nocapture.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: {what} is not available on this machine (STRATA_TEST_STRICT=1 makes this a failure)"
    );
    false
}

pub fn have_tool(name: &str) -> bool {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false);
    found || skip(&format!("the `{name}` command"))
}

pub fn have_docker() -> bool {
    let ok = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .is_ok_and(|o| o.status.success());
    ok || skip("a running Docker engine")
}

/// The Debian packages of the offline stack (`base-images/fetch-debs.sh`).
pub fn debs() -> Option<PathBuf> {
    let dir = repo().join("base-images/debs");
    let ok = dir.join("generated/cacerts").is_file()
        && std::fs::read_dir(&dir).is_ok_and(|rd| {
            rd.flatten().any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("openjdk-17-jre-headless_")
            })
        });
    if ok {
        Some(dir)
    } else {
        skip("base-images/debs (run base-images/fetch-debs.sh)");
        None
    }
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn strata() -> Command {
    Command::new(env!("CARGO_BIN_EXE_strata"))
}

/// Runs strata with `args`, a private store and layout under `dir`.
pub fn run_in(dir: &Path, args: &[&str]) -> Output {
    strata()
        .current_dir(dir)
        .env("STRATA_STORE", dir.join("store"))
        .env_remove("SOURCE_DATE_EPOCH")
        .args(args)
        .output()
        .expect("the strata binary runs")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A unique, recognizable name for engine objects made by tests.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "strata-test-{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Removes a container and image by name when dropped, even on panic.
pub struct DockerCleanup {
    pub containers: Vec<String>,
    pub images: Vec<String>,
}

impl Drop for DockerCleanup {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = Command::new("docker").args(["rm", "-f", c]).output();
        }
        for i in &self.images {
            let _ = Command::new("docker").args(["rmi", "-f", i]).output();
        }
    }
}

/// Writes a file, creating parents.
pub fn write(path: &Path, body: impl AsRef<[u8]>) {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).unwrap();
    }
    std::fs::write(path, body).unwrap();
}

/// A tar archive (uncompressed) from (path, body) pairs; bodies may be
/// symlink targets when the path ends in `@`.
pub fn tar_of(entries: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, body) in entries {
        let mut h = tar::Header::new_gnu();
        if let Some(link) = path.strip_suffix('@') {
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            h.set_mode(0o777);
            // Write raw names so hostile ones survive.
            raw_name(&mut h, link);
            h.set_link_name(body).unwrap();
            h.set_cksum();
            b.append(&h, &[][..]).unwrap();
        } else {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(body.len() as u64);
            h.set_mode(0o644);
            raw_name(&mut h, path);
            h.set_cksum();
            b.append(&h, body.as_bytes()).unwrap();
        }
    }
    b.into_inner().unwrap()
}

fn raw_name(h: &mut tar::Header, name: &str) {
    let field = &mut h.as_old_mut().name;
    field.fill(0);
    field[..name.len()].copy_from_slice(name.as_bytes());
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    strata::digest::Digest::sha256_of(bytes).hex().to_string()
}

/// Incompressible bytes from a fixed seed (xorshift): layers and blobs that
/// do not shrink under zstd, so chunking and pieces really happen.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A loopback TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An `application/x-www-form-urlencoded` body of `pairs`.
pub fn form(pairs: &[(&str, &str)]) -> String {
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The value of one series (`name{labels}` exactly as exposed) in a
/// Prometheus text exposition.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// `GET URL/metrics` as text, with `token` (a server's `/metrics` needs
/// one unless it runs with `--public-read`; an agent's needs none).
pub fn scrape(base: &str, token: Option<&str>) -> String {
    let mut rq = reqwest::blocking::Client::new().get(format!("{base}/metrics"));
    if let Some(t) = token {
        rq = rq.bearer_auth(t);
    }
    let r = rq.send().unwrap();
    assert_eq!(r.status(), 200, "{base}/metrics");
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    r.text().unwrap()
}

/// Runs `image` (a tier built on the offline stack's tools tier) in the
/// engine and checks the timezone fix is in it: the image really arrived.
pub fn assert_runs_with_the_timezone_fix(image: &str) {
    let o = Command::new("docker")
        .args(["run", "--rm", "--entrypoint", "/bin/cat", image, "/etc/timezone"])
        .output()
        .unwrap();
    assert_eq!(stdout(&o), "Asia/Shanghai\n", "{image}: {}", stderr(&o));
}
