//! The P2P harness of the tests: a cluster CA and certificates, an origin
//! (`strata serve --p2p-listen`) holding one blob, agents as real
//! processes, in-process nodes to talk to them directly, and the offline
//! stack's tools tier built with content unique to the run and pushed.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use serde_json::Value;
use strata::digest::Digest;
use strata::p2p::node::{Node, NodeConfig};
use strata::p2p::tls::Identity;

use super::{noise, repo, stderr, stdout, strata, unique};

/// A child process whose stdout lines arrive on a channel; killed on drop.
pub struct Proc {
    pub child: Child,
    lines: Receiver<String>,
}

impl Proc {
    pub fn spawn(cmd: &mut Command) -> Proc {
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Proc { child, lines }
    }

    /// The next line starting with `prefix`, within `wait`.
    pub fn line(&self, prefix: &str, wait: Duration) -> Option<String> {
        let deadline = Instant::now() + wait;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return Some(l),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A cluster CA and certificates, an origin with one blob, agents.
pub struct Swarm {
    pub dir: PathBuf,
    pub origin: Proc,
    pub registry: u16,
    pub p2p: SocketAddr,
    pub blob: Vec<u8>,
    pub digest: Digest,
    /// A deploy token of the origin: its API reads (hosts, /metrics)
    /// and prewarms need one. (Pushes to it are open: `--open-push`.)
    pub token: String,
}

pub fn certs(dir: &Path, ca: &str, names: &[&str]) -> PathBuf {
    let out = dir.join(format!("{ca}-certs"));
    let o = strata()
        .args(["cluster", "init", "--dir"])
        .arg(dir.join(ca))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    for n in names {
        let o = strata()
            .args(["cluster", "issue", n, "--dir"])
            .arg(dir.join(ca))
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
    }
    out
}

impl Swarm {
    /// An origin whose P2P egress is capped at `origin_mbit`, holding a
    /// blob of `mib` MiB.
    pub fn start(dir: &Path, agents: usize, mib: usize, origin_mbit: f64) -> Swarm {
        Swarm::start_with(dir, agents, mib, origin_mbit, &[])
    }

    /// As `start`, with more arguments for `strata serve`.
    pub fn start_with(dir: &Path, agents: usize, mib: usize, origin_mbit: f64, extra: &[&str]) -> Swarm {
        let mut names = vec!["origin".to_string(), "probe".to_string(), "evil".to_string()];
        names.extend((0..agents).map(|i| format!("agent-{i}")));
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let certs = certs(dir, "ca", &refs);
        let o = strata()
            .args(["token", "create", "tests", "--data"])
            .arg(dir.join("origin"))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        let token = stdout(&o).trim().to_string();
        let origin = Proc::spawn(
            strata()
                .args(["serve", "--open-push", "--listen", "127.0.0.1:0", "--data"])
                .arg(dir.join("origin"))
                .args(["--p2p-listen", "127.0.0.1:0", "--p2p-certs"])
                .arg(&certs)
                .args(["--p2p-upload-mbit", &origin_mbit.to_string(), "--cluster-ca"])
                .arg(dir.join("ca"))
                .args(extra),
        );
        let http = origin
            .line("listening on", Duration::from_secs(20))
            .expect("registry");
        let registry: u16 = http.rsplit(':').next().unwrap().parse().unwrap();
        let p2p = origin
            .line("p2p listening on", Duration::from_secs(20))
            .expect("p2p");
        let p2p: SocketAddr = p2p.rsplit(' ').next().unwrap().parse().unwrap();
        let blob = noise(mib << 20, mib as u64);
        let digest = Digest::sha256_of(&blob);
        let r = reqwest::blocking::Client::new()
            .post(format!(
                "http://127.0.0.1:{registry}/v2/app/blobs/uploads/?digest={digest}"
            ))
            .body(blob.clone())
            .send()
            .unwrap();
        assert_eq!(r.status(), 201);
        Swarm {
            dir: dir.to_path_buf(),
            origin,
            registry,
            p2p,
            blob,
            digest,
            token,
        }
    }

    /// An origin (as `start`, with no agents) and an in-process `probe`
    /// node on a runtime of its own, to talk to the origin directly.
    pub fn with_probe(dir: &Path, mib: usize, origin_mbit: f64) -> (Swarm, tokio::runtime::Runtime, Node) {
        let s = Swarm::start(dir, 0, mib, origin_mbit);
        let rt = tokio::runtime::Runtime::new().unwrap();
        let probe = s.node(&rt, "probe");
        (s, rt, probe)
    }

    pub fn certs(&self) -> PathBuf {
        self.dir.join("ca-certs")
    }

    pub fn agent(&self, i: usize, upload_mbit: f64) -> Proc {
        self.agent_with(i, upload_mbit, &["--fetch", &self.digest.to_string()])
    }

    pub fn agent_with(&self, i: usize, upload_mbit: f64, extra: &[&str]) -> Proc {
        self.agent_listening(i, upload_mbit, extra).0
    }

    /// An agent, and the address its QUIC endpoint listens on. Odd
    /// agents run on one thread (`--threads 1`), even ones on one per
    /// core: every swarm of two or more mixes both.
    pub fn agent_listening(&self, i: usize, upload_mbit: f64, extra: &[&str]) -> (Proc, SocketAddr) {
        let name = format!("agent-{i}");
        let threads: &[&str] = if i % 2 == 1 { &["--threads", "1"] } else { &[] };
        let p = Proc::spawn(
            strata()
                .args(["agent", "--name", &name, "--certs"])
                .arg(self.certs())
                .args([
                    "--origin",
                    &self.p2p.to_string(),
                    "--listen",
                    "127.0.0.1:0",
                    "--data",
                ])
                .arg(self.dir.join(&name))
                .args([
                    "--upload-mbit",
                    &upload_mbit.to_string(),
                    "--zone",
                    &(i % 2).to_string(),
                ])
                .args(threads)
                .args(extra),
        );
        let listening = p
            .line("p2p listening on", Duration::from_secs(20))
            .unwrap_or_else(|| panic!("{name} did not start"));
        let addr = listening.rsplit(' ').next().unwrap().parse().unwrap();
        (p, addr)
    }

    /// The agent's report, once it completed.
    pub fn completed(&self, p: &Proc, wait: Duration) -> Value {
        let l = p
            .line("{\"complete\"", wait)
            .unwrap_or_else(|| panic!("no completion within {wait:?}"));
        let v: Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["complete"], self.digest.to_string());
        v["report"].clone()
    }

    pub fn assert_holds(&self, i: usize) {
        let path = self
            .dir
            .join(format!("agent-{i}/store/blobs/sha256/{}", self.digest.hex()));
        let got = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(got == self.blob, "agent-{i} holds different bytes");
    }

    /// Builds the offline stack's tools tier with a file unique to this
    /// run in its base layer (`/etc/strata-test-id`), so no engine already
    /// holds its layers (the README's demo builds the same tiers, byte for
    /// byte), and pushes it to the origin registry as `image` (REPO:TAG),
    /// with gzip layers when `gzip` (for Debian's Docker 20.10 without an
    /// agent in between). Returns the unique file's text.
    pub fn push_tools_tier(&self, image: &str, gzip: bool) -> String {
        let store = self.dir.join("store");
        let layout = self.dir.join("oci");
        let examples = repo().join("deploy/examples");
        let text = std::fs::read_to_string(examples.join("offline.toml")).unwrap();
        let base = repo().join("base-images");
        let id = format!(
            "{} {:?}",
            unique("p2p-layers"),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
        );
        let marker = format!("sources = [\n  {{ content = \"{id}\\n\", dest = \"/etc/strata-test-id\" }},");
        let text = text
            .replace("../../base-images", &base.to_string_lossy())
            .replacen("sources = [", &marker, 1);
        let config = self.dir.join("offline-unique.toml");
        std::fs::write(&config, text).unwrap();
        let o = strata()
            .env("STRATA_STORE", &store)
            .args(["build", "-c"])
            .arg(&config)
            .args(["--tier", "tools", "--layout"])
            .arg(&layout)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        self.push_built(image, gzip);
        id
    }

    /// Pushes the tools tier `push_tools_tier` built (again) as `image`.
    pub fn push_built(&self, image: &str, gzip: bool) {
        let o = strata()
            .env("STRATA_STORE", self.dir.join("store"))
            .arg("push")
            .args(gzip.then_some("--gzip"))
            .arg(format!("oci:{}:tools", self.dir.join("oci").display()))
            .arg(format!("127.0.0.1:{}/{image}", self.registry))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
    }

    /// An in-process node of this cluster (name `probe` or `evil`).
    pub fn node(&self, rt: &tokio::runtime::Runtime, name: &str) -> Node {
        let id = Identity::from_dir(&self.certs(), name).unwrap();
        rt.block_on(Node::start(NodeConfig {
            name: name.into(),
            zone: 0,
            listen: "127.0.0.1:0".parse().unwrap(),
            store: strata::store::Store::open(self.dir.join(format!("{name}-store"))).unwrap(),
            partial_dir: self.dir.join(format!("{name}-partial")),
            origin: false,
            identity: id,
            upload_rate: None,
            download_rate: None,
            cache: None,
            chain_max: 0,
            revoked: None,
            authority: None,
        }))
        .unwrap()
    }

    /// An in-process node with a certificate of its own for `name`
    /// (issued now with `strata cluster issue` if there is none yet): the
    /// tracker takes a node's name from its certificate only.
    pub fn member(&self, rt: &tokio::runtime::Runtime, name: &str) -> Node {
        if !self.certs().join(format!("{name}.pem")).is_file() {
            let o = strata()
                .args(["cluster", "issue", name, "--dir"])
                .arg(self.dir.join("ca"))
                .arg("--out")
                .arg(self.certs())
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", stderr(&o));
        }
        self.node(rt, name)
    }

    /// `GET path` on the origin with the swarm's token, as JSON (null
    /// when the answer is not JSON).
    pub fn api(&self, path: &str) -> Value {
        let body = reqwest::blocking::Client::new()
            .get(format!("http://127.0.0.1:{}{path}", self.registry))
            .bearer_auth(&self.token)
            .send()
            .unwrap()
            .bytes()
            .unwrap();
        serde_json::from_slice(&body).unwrap_or(Value::Null)
    }

    /// The hosts the origin knows, by name (`/strata/api/hosts`).
    pub fn hosts(&self) -> std::collections::BTreeMap<String, Value> {
        let v = self.api("/strata/api/hosts");
        v.as_array()
            .unwrap_or_else(|| panic!("no hosts in {v}"))
            .iter()
            .map(|h| (h["name"].as_str().unwrap().to_string(), h.clone()))
            .collect()
    }

    pub fn origin_bytes(&self, rt: &tokio::runtime::Runtime, probe: &Node) -> u64 {
        rt.block_on(probe.stats(self.p2p)).unwrap().0
    }
}
