//! The Tomcat tier stack built by strata from Debian packages, and one
//! deployed app per test, shared by the orchestrator's test binaries:
//! images v1, v2 (index.html and a JSP changed, a file added in a new
//! directory), v3 (v2 without index.html), bad (no /health.txt) and a
//! hand-made `hostile` one; each version serves `/version.txt`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::*;

/// The tier stack with app versions v1, v2 (index.html and a JSP changed,
/// a file added in a new directory) and bad (no /health.txt), plus a
/// hand-made `hostile` image, in one store and layout.
pub struct Stack {
    _dir: tempfile::TempDir,
    pub store: PathBuf,
    pub layout: PathBuf,
}

pub fn stack() -> Option<&'static Stack> {
    static STACK: OnceLock<Option<Stack>> = OnceLock::new();
    STACK
        .get_or_init(|| {
            if !have_docker() {
                return None;
            }
            debs()?;
            let dir = tempfile::tempdir().unwrap();
            let web = |name: &str| dir.path().join(format!("web-{name}"));
            let src = repo().join("base-images/webapp");
            for v in ["v1", "v2", "v3", "bad"] {
                copy_dir(&src, &web(v));
                if v != "bad" {
                    write(&web(v).join("health.txt"), "ok\n");
                }
                write(&web(v).join("version.txt"), format!("{v}\n"));
                // Tomcat serves a changed static file from its cache for up
                // to 5 s; tests read what the container has at once.
                write(
                    &web(v).join("META-INF/context.xml"),
                    "<Context><Resources cachingAllowed=\"false\"/></Context>\n",
                );
            }
            let jsp = std::fs::read_to_string(src.join("info.jsp")).unwrap();
            for v in ["v2", "v3"] {
                write(&web(v).join("index.html"), "<h1>version two</h1>\n");
                write(
                    &web(v).join("info.jsp"),
                    jsp.replace(
                        "out.println(\"pid=\"",
                        "out.println(\"jsp=two\");\nout.println(\"pid=\"",
                    ),
                );
                write(&web(v).join("extra/added.txt"), "added by v2\n");
            }
            // v3 deletes a file v1 has and v2 replaced.
            std::fs::remove_file(web("v3").join("index.html")).unwrap();
            let store = dir.path().join("store");
            let layout = dir.path().join("oci");
            let o = strata()
                .env("STRATA_STORE", &store)
                .arg("build")
                .arg("-c")
                .arg(repo().join("deploy/examples/offline.toml"))
                .arg("--layout")
                .arg(&layout)
                .args(["--tier", "v1", "--tier", "v2", "--tier", "v3", "--tier", "bad"])
                .arg("--war")
                .arg(format!("v1={}", web("v1").display()))
                .arg("--war")
                .arg(format!("v2={}", web("v2").display()))
                .arg("--war")
                .arg(format!("v3={}", web("v3").display()))
                .arg("--war")
                .arg(format!("bad={}", web("bad").display()))
                .output()
                .unwrap();
            assert!(o.status.success(), "build: {}", stderr(&o));
            add_hostile_image(&layout);
            Some(Stack {
                _dir: dir,
                store,
                layout,
            })
        })
        .as_ref()
}

pub fn copy_dir(from: &Path, to: &Path) {
    for e in walkdir::WalkDir::new(from) {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(from).unwrap();
        let dest = to.join(rel);
        if e.file_type().is_dir() {
            std::fs::create_dir_all(&dest).unwrap();
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

pub fn sha256(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// v1 plus a layer with `ROOT/lnk -> /etc` and `ROOT/lnk/pwned`: written
/// into a running container, the file would land in /etc.
pub fn add_hostile_image(layout: &Path) {
    let index_path = layout.join("index.json");
    let mut index: Value = serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let blob = |d: &str| layout.join("blobs/sha256").join(d.trim_start_matches("sha256:"));
    let v1 = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == "v1")
        .unwrap()
        .clone();
    let mut manifest: Value =
        serde_json::from_slice(&std::fs::read(blob(v1["digest"].as_str().unwrap())).unwrap()).unwrap();
    let mut config: Value =
        serde_json::from_slice(&std::fs::read(blob(manifest["config"]["digest"].as_str().unwrap())).unwrap())
            .unwrap();
    let tar = tar_of(&[
        ("var/lib/tomcat10/webapps/ROOT/lnk@", "/etc"),
        (
            "var/lib/tomcat10/webapps/ROOT/lnk/pwned",
            "written through a link\n",
        ),
    ]);
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    let gz = gz.finish().unwrap();
    let put = |bytes: &[u8]| -> String {
        let d = sha256(bytes);
        std::fs::write(layout.join("blobs/sha256").join(&d), bytes).unwrap();
        format!("sha256:{d}")
    };
    let layer = put(&gz);
    config["rootfs"]["diff_ids"]
        .as_array_mut()
        .unwrap()
        .push(format!("sha256:{}", sha256(&tar)).into());
    if let Some(h) = config["history"].as_array_mut() {
        h.push(serde_json::json!({ "created_by": "hostile layer" }));
    }
    let cfg = serde_json::to_vec(&config).unwrap();
    manifest["config"]["digest"] = put(&cfg).into();
    manifest["config"]["size"] = cfg.len().into();
    manifest["layers"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": layer,
            "size": gz.len(),
        }));
    let m = serde_json::to_vec(&manifest).unwrap();
    let mut entry = v1.clone();
    entry["digest"] = put(&m).into();
    entry["size"] = m.len().into();
    entry["annotations"]["org.opencontainers.image.ref.name"] = "hostile".into();
    index["manifests"].as_array_mut().unwrap().push(entry);
    std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
}

/// One app of a test: its spec, data directory and the engine objects to
/// remove afterwards (by label and name, also when the test fails).
pub struct App {
    pub name: String,
    pub dir: tempfile::TempDir,
    pub network: String,
    pub subnet: String,
}

impl App {
    /// `warm`: declare the engine's dynamic range (warm swap redeploys).
    pub fn new(tag: &str, warm: bool, third_octet: u8, retries: u32) -> App {
        let name = format!("t{tag}-{}", std::process::id() % 100_000);
        let network = format!("strata-test-{name}");
        let octet = 200 + (std::process::id() % 40) as u8;
        let subnet = format!("10.{octet}.{third_octet}");
        let dir = tempfile::tempdir().unwrap();
        let dynamic = if warm {
            format!("dynamic_range = \"{subnet}.128/25\"\n")
        } else {
            String::new()
        };
        write(
            &dir.path().join(format!("apps/{name}.toml")),
            format!(
                r#"name = "{name}"
image = "v1"
stop_grace = "5s"
memory_mib = 400
log_dir = "/var/log/tomcat10"
env = {{ JAVA_OPTS = "-Djava.awt.headless=true -Xss512k -XX:TieredStopAtLevel=1" }}
[network]
name = "{network}"
subnet = "{subnet}.0/24"
{dynamic}pool = "{subnet}.10-{subnet}.20"
[health]
kind = "http"
port = 8080
path = "/health.txt"
interval = "150ms"
timeout = "2s"
retries = {retries}
[hotfix]
paths = ["/var/lib/tomcat10/webapps/**"]
"#
            ),
        );
        App {
            name,
            dir,
            network,
            subnet,
        }
    }

    pub fn spec_path(&self) -> PathBuf {
        self.dir.path().join(format!("apps/{}.toml", self.name))
    }

    /// Replaces `from` with `to` in the app's spec (which must contain it).
    pub fn edit_spec(&self, from: &str, to: &str) {
        let p = self.spec_path();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains(from), "{from:?} not in {text}");
        std::fs::write(&p, text.replacen(from, to, 1)).unwrap();
    }

    pub fn set_instances(&self, n: u32) {
        let p = self.spec_path();
        let text = std::fs::read_to_string(&p).unwrap();
        let kept: Vec<&str> = text.lines().filter(|l| !l.starts_with("instances =")).collect();
        let mut out = format!("instances = {n}\n");
        out.push_str(&kept.join("\n"));
        out.push('\n');
        std::fs::write(&p, out).unwrap();
    }

    /// The app's data directory (state, history, leases).
    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let s = stack().expect("stack built");
        let mut c = strata();
        c.env("STRATA_STORE", &s.store)
            .env_remove("STRATA_FAULT")
            .args(args)
            .arg(&self.name)
            .arg("--apps")
            .arg(self.dir.path().join("apps"))
            .arg("--data")
            .arg(self.dir.path().join("data"))
            .arg("--layout")
            .arg(&s.layout);
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    }

    /// Runs a command that must succeed and print JSON.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        let o = self.run(&a, &[]);
        assert!(
            o.status.success(),
            "strata {args:?}: {}\n{}",
            stderr(&o),
            stdout(&o)
        );
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(&o)))
    }

    pub fn status(&self) -> Value {
        self.json(&["status"])["instances"][0].clone()
    }

    /// Every container the engine holds for the app (any state).
    pub fn containers(&self) -> Vec<String> {
        let o = Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--no-trunc",
                "--filter",
                &format!("label=org.strata.app={}", self.name),
            ])
            .output()
            .unwrap();
        stdout(&o).split_whitespace().map(str::to_string).collect()
    }

    pub fn container(&self) -> String {
        self.status()["container"].as_str().unwrap().to_string()
    }

    pub fn ip(&self) -> String {
        self.status()["ip"].as_str().unwrap().to_string()
    }

    pub fn get(&self, path: &str) -> Option<String> {
        http_get(&format!("{}:8080", self.ip()), path)
    }

    /// Whether `path` serves a page containing `text` within 20 s (Tomcat
    /// serves a changed static file once its resource cache expires).
    pub fn serves(&self, path: &str, text: &str) -> bool {
        wait_for(Duration::from_secs(20), || {
            self.get(path).filter(|p| p.contains(text))
        })
        .is_some()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let ids = Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--filter",
                &format!("label=org.strata.app={}", self.name),
            ])
            .output()
            .map(|o| stdout(&o))
            .unwrap_or_default();
        for id in ids.split_whitespace() {
            let _ = Command::new("docker").args(["rm", "-f", id]).output();
        }
        let _ = Command::new("docker")
            .args(["network", "rm", &self.network])
            .output();
        // Every volume the app's instances (or its test) made: their names
        // carry the app's name.
        let vols = Command::new("docker")
            .args(["volume", "ls", "-q", "--filter", &format!("name={}", self.name)])
            .output()
            .map(|o| stdout(&o))
            .unwrap_or_default();
        for v in vols.split_whitespace().filter(|v| v.contains(&self.name)) {
            let _ = Command::new("docker").args(["volume", "rm", "-f", v]).output();
        }
        let images = Command::new("docker")
            .args(["images", "-q", &format!("strata-deploy/{}", self.name)])
            .output()
            .map(|o| stdout(&o))
            .unwrap_or_default();
        for i in images.split_whitespace() {
            let _ = Command::new("docker").args(["rmi", "-f", i]).output();
        }
        let _ = &self.subnet;
    }
}

/// A plain HTTP/1.0 GET from this machine (the bridge is routed here).
pub fn http_get(addr: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    let (head, body) = body.split_once("\r\n\r\n")?;
    head.contains(" 200 ").then(|| body.to_string())
}

pub fn inspect(container: &str, format: &str) -> String {
    let o = Command::new("docker")
        .args(["inspect", "-f", format, container])
        .output()
        .unwrap();
    stdout(&o).trim().to_string()
}

/// The start time (clock ticks since boot) of a host process: a new
/// process with a reused PID would have another.
pub fn proc_start(pid: &str) -> String {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .nth(19)
        .unwrap_or("")
        .to_string()
}

/// sha256 of every file under the webapp, from inside the container.
pub fn webapp_sums(container: &str) -> String {
    let o = Command::new("docker")
        .args([
            "exec",
            container,
            "sh",
            "-c",
            "cd /var/lib/tomcat10/webapps/ROOT && find . -type f | sort | xargs sha256sum",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o)
}

pub fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}
