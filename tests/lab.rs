//! A cluster on one machine (`deploy/lab/lab.sh`): four Docker hosts, each
//! a network namespace with its own dockerd reached only over TLS
//! (`tcp://HOST_IP:2376?tls=DIR`), on one shaped LAN. The app runs on a
//! macvlan network on the hosts' `eth0`; the orchestrator and the client
//! run in the lab's client namespace, as a machine on that LAN would.
//! A release, TLS mistakes, `strata drain` of a host (the gap a LAN client
//! sees while its instances move), and a host cut off the LAN: named by
//! `status`, refused by `deploy`, drained with `--force`, and its stale
//! containers removed once it answers again.
//! Needs root (namespaces), docker.io, openssl, iproute2 and curl; skips
//! loudly without them, which `.ci/run` turns into a failure.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use common::deploy::{copy_dir, stack};
use common::*;
use serde_json::Value;

const HOSTS: usize = 4;
const INSTANCES: usize = 8;

/// A lab of `HOSTS` hosts, taken down (namespaces, engines, containers,
/// its directory) when dropped, also when the test panics.
struct Lab {
    dir: PathBuf,
    prefix: String,
    _tmp: tempfile::TempDir,
}

fn lab_sh() -> PathBuf {
    repo().join("deploy/lab/lab.sh")
}

/// One lab at a time: each starts eight Tomcats on a 2-core machine.
static ONE_LAB: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Lab {
    /// A lab of `HOSTS` hosts; with `release_path`, an origin and an
    /// agent on every host too (`lab.sh up --strata`).
    fn up(release_path: bool) -> Option<Lab> {
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| stdout(&o).trim() == "0");
        if !root && !skip("root (the lab makes network namespaces)") {
            return None;
        }
        for tool in ["dockerd", "docker", "openssl", "nsenter", "ip", "tc", "curl"] {
            if !have_tool(tool) {
                return None;
            }
        }
        // The engines keep their images here: /var/tmp, not a tmpfs.
        let tmp = tempfile::Builder::new()
            .prefix("strata-lab-test-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let lab = Lab {
            dir: tmp.path().join("lab"),
            prefix: format!("slt{}", std::process::id() % 100_000),
            _tmp: tmp,
        };
        let t = Instant::now();
        let hosts = HOSTS.to_string();
        let mut args = vec!["up", "--hosts", &hosts, "--prefix", &lab.prefix];
        if release_path {
            args.extend(["--strata", env!("CARGO_BIN_EXE_strata")]);
        }
        let o = lab.sh(&args);
        assert!(o.status.success(), "lab.sh up: {}", stderr(&o));
        eprintln!("lab up in {:.1}s", t.elapsed().as_secs_f64());
        Some(lab)
    }

    fn sh(&self, args: &[&str]) -> Output {
        let (cmd, rest) = args.split_first().unwrap();
        Command::new(lab_sh())
            .arg(cmd)
            .arg("--dir")
            .arg(&self.dir)
            .args(rest)
            .output()
            .unwrap()
    }

    fn client_tls(&self) -> PathBuf {
        self.dir.join("tls/client")
    }

    fn endpoint(&self, host: usize, tls: &Path) -> String {
        format!("tcp://10.77.0.{}:2376?tls={}", 10 + host, tls.display())
    }

    /// `docker ARGS` against host `h` (from 1), over TLS, from the client.
    fn docker(&self, h: usize, args: &[&str]) -> String {
        let mut a = vec!["docker".to_string(), format!("h{h}")];
        a.extend(args.iter().map(|s| s.to_string()));
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let o = self.sh(&a);
        assert!(o.status.success(), "docker {args:?} on h{h}: {}", stderr(&o));
        stdout(&o).trim().to_string()
    }

    /// `GET http://IP:8080PATH` from the client namespace.
    fn get(&self, ip: &str, path: &str) -> Option<String> {
        let url = format!("http://{ip}:8080{path}");
        let o = self.sh(&["exec", "--", "curl", "-sf", "-m", "5", &url]);
        o.status.success().then(|| stdout(&o))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let o = self.sh(&["down"]);
        if !o.status.success() {
            eprintln!("lab.sh down: {}", stderr(&o));
        }
    }
}

/// The app: `instances` Tomcats on the lab's hosts, over TLS, on a
/// macvlan network on each host's eth0.
struct LabApp {
    dir: tempfile::TempDir,
    name: String,
}

impl LabApp {
    fn new(lab: &Lab) -> LabApp {
        let dir = tempfile::tempdir().unwrap();
        let name = "shop".to_string();
        let hosts: Vec<String> = (1..=HOSTS)
            .map(|h| format!("\"{}\"", lab.endpoint(h, &lab.client_tls())))
            .collect();
        write(
            &dir.path().join(format!("apps/{name}.toml")),
            format!(
                r#"name = "{name}"
image = "v1"
instances = {INSTANCES}
hosts = [{}]
stop_grace = "5s"
memory_mib = 400
env = {{ JAVA_OPTS = "-Djava.awt.headless=true -Xss512k -XX:TieredStopAtLevel=1" }}
[network]
name = "lan"
driver = "macvlan"
parent = "eth0"
subnet = "10.77.0.0/24"
dynamic_range = "10.77.0.160/27"
pool = "10.77.0.100-10.77.0.149"
[health]
kind = "http"
port = 8080
path = "/health.txt"
interval = "250ms"
timeout = "2s"
retries = 480
[hotfix]
paths = ["/var/lib/tomcat10/webapps/**"]
"#,
                hosts.join(", ")
            ),
        );
        LabApp { dir, name }
    }

    fn spec(&self) -> PathBuf {
        self.dir.path().join(format!("apps/{}.toml", self.name))
    }

    /// `strata ARGS --apps … --data … --layout …`, run on the LAN (in the
    /// client namespace).
    fn strata(&self, lab: &Lab, args: &[&str]) -> Output {
        let s = stack().expect("stack built");
        self.strata_with(lab, args, &s.layout, &[])
    }

    /// The same with another layout and more environment.
    fn strata_with(&self, lab: &Lab, args: &[&str], layout: &Path, env: &[(&str, &str)]) -> Output {
        let s = stack().expect("stack built");
        Command::new(lab_sh())
            .args(["exec", "--dir"])
            .arg(&lab.dir)
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_strata"))
            .args(args)
            .arg("--apps")
            .arg(self.dir.path().join("apps"))
            .arg("--data")
            .arg(self.dir.path().join("data"))
            .arg("--layout")
            .arg(layout)
            .env("STRATA_STORE", &s.store)
            .envs(env.iter().copied())
            .env_remove("STRATA_FAULT")
            .output()
            .unwrap()
    }

    /// `strata ARGS APP …` on the LAN.
    fn run(&self, lab: &Lab, args: &[&str]) -> Output {
        let mut a = args.to_vec();
        a.push(&self.name);
        self.strata(lab, &a)
    }

    /// `strata drain ARGS…` on the LAN, its JSON report (one app).
    fn drain(&self, lab: &Lab, args: &[&str]) -> Value {
        let mut a = vec!["drain"];
        a.extend_from_slice(args);
        let o = self.strata(lab, &a);
        assert!(
            o.status.success(),
            "strata drain {args:?}: {}\n{}",
            stderr(&o),
            stdout(&o)
        );
        eprintln!("{}", stderr(&o));
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(&o)))
    }

    fn json(&self, lab: &Lab, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        let o = self.run(lab, &a);
        assert!(
            o.status.success(),
            "strata {args:?}: {}\n{}",
            stderr(&o),
            stdout(&o)
        );
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(&o)))
    }
}

/// (instance, host index from 1, ip, container) of every instance.
fn instances(lab: &Lab, app: &LabApp) -> Vec<(String, usize, String, String)> {
    let st = app.json(lab, &["status"]);
    st["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let host = i["host"].as_str().unwrap();
            let h = (1..=HOSTS)
                .find(|h| host == lab.endpoint(*h, &lab.client_tls()))
                .unwrap_or_else(|| panic!("{host} is not a lab engine"));
            (
                i["name"].as_str().unwrap().to_string(),
                h,
                i["ip"].as_str().unwrap().to_string(),
                i["container"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn mac(lab: &Lab, h: usize, container: &str) -> String {
    lab.docker(
        h,
        &[
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.MacAddress}}{{end}}",
            container,
        ],
    )
}

/// A CA of another lab and a client certificate it signed, in `dir`.
fn other_ca(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let ssl = |args: &[&str]| {
        let o = Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "openssl {args:?}: {}", stderr(&o));
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut a = vec!["req", "-x509", "-subj", "/CN=another CA", "-days", "2"];
    a.extend(ec);
    a.extend(["-keyout", "ca-key.pem", "-out", "ca.pem"]);
    ssl(&a);
    let mut a = vec!["req", "-subj", "/CN=someone"];
    a.extend(ec);
    a.extend(["-keyout", "key.pem", "-out", "req.pem"]);
    ssl(&a);
    write(&dir.join("ext.cnf"), "extendedKeyUsage=clientAuth\n");
    ssl(&[
        "x509",
        "-req",
        "-in",
        "req.pem",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca-key.pem",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "cert.pem",
    ]);
}

#[test]
fn a_release_across_four_lab_hosts_over_tls_on_macvlan_then_a_drain() {
    let Some(_) = stack() else { return };
    let _one = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    let Some(lab) = Lab::up(false) else { return };
    let app = LabApp::new(&lab);

    // Round-robin: instance i on host ((i - 1) mod 4) + 1, two per host.
    let t = Instant::now();
    let r = app.json(&lab, &["deploy"]);
    eprintln!(
        "first deploy of {INSTANCES} instances in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(r["instances"].as_array().unwrap().len(), INSTANCES, "{r}");
    let before = instances(&lab, &app);
    assert_eq!(before.len(), INSTANCES);
    for (name, h, _, _) in &before {
        let i: usize = name.rsplit('-').next().unwrap().parse().unwrap();
        assert_eq!(*h, (i - 1) % HOSTS + 1, "{name} runs on h{h}");
    }
    for h in 1..=HOSTS {
        assert_eq!(before.iter().filter(|i| i.1 == h).count(), 2, "two per host");
        let running = lab.docker(h, &["ps", "-q", "--filter", "label=org.strata.app=shop"]);
        assert_eq!(running.lines().count(), 2, "h{h} runs two: {running}");
    }
    // Every instance answers a client on the LAN at its leased IP; its MAC
    // is the one Docker derives from the IP.
    let mut macs = Vec::new();
    for (name, h, ip, c) in &before {
        assert_eq!(
            lab.get(ip, "/version.txt").as_deref(),
            Some("v1\n"),
            "{name} at {ip}"
        );
        let m = mac(&lab, *h, c);
        assert_eq!(m, strata::deploy::host::mac_of(ip.parse().unwrap()), "{name}");
        macs.push(m);
    }

    // A release: every instance redeployed (warm), same host, same IP,
    // same MAC, a new container.
    let t = Instant::now();
    let r = app.json(&lab, &["deploy", "--redeploy", "--image", "v2"]);
    eprintln!(
        "redeploy of {INSTANCES} instances in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    for i in r["instances"].as_array().unwrap() {
        assert_eq!(i["mode"], "redeploy", "{r}");
        assert_eq!(i["outcome"], "ok", "{r}");
    }
    let after = instances(&lab, &app);
    for ((b, a), m) in before.iter().zip(&after).zip(&macs) {
        assert_eq!((&b.0, b.1, &b.2), (&a.0, a.1, &a.2), "same instance, host and IP");
        assert_ne!(b.3, a.3, "{}: a new container", a.0);
        assert_eq!(&mac(&lab, a.1, &a.3), m, "{}: the MAC is kept", a.0);
        assert_eq!(
            lab.get(&a.2, "/version.txt").as_deref(),
            Some("v2\n"),
            "{} at {}",
            a.0,
            a.2
        );
    }

    // TLS mistakes are refused before anything changes, naming the
    // engine and the reason: a whole directory from another CA, our CA
    // with a client certificate from another one, no client certificate.
    let spec = std::fs::read_to_string(app.spec()).unwrap();
    let good = lab.endpoint(1, &lab.client_tls());
    let other = app.dir.path().join("tls-other");
    other_ca(&other);
    let mixed = app.dir.path().join("tls-mixed");
    std::fs::create_dir_all(&mixed).unwrap();
    std::fs::copy(lab.client_tls().join("ca.pem"), mixed.join("ca.pem")).unwrap();
    for f in ["cert.pem", "key.pem"] {
        std::fs::copy(other.join(f), mixed.join(f)).unwrap();
    }
    let bare = app.dir.path().join("tls-bare");
    std::fs::create_dir_all(&bare).unwrap();
    std::fs::copy(lab.client_tls().join("ca.pem"), bare.join("ca.pem")).unwrap();
    let cases = [
        (&other, "is not signed by"),
        (&mixed, "refused the client certificate"),
        (&bare, "no cert.pem, key.pem in"),
    ];
    for (dir, reason) in cases {
        let bad = lab.endpoint(1, dir);
        std::fs::write(app.spec(), spec.replace(&good, &bad)).unwrap();
        let o = app.run(&lab, &["deploy", "--redeploy", "--image", "v1"]);
        let e = stderr(&o);
        assert!(!o.status.success(), "{bad}: {e}");
        assert!(
            e.contains(&format!("docker engine {bad}: connect: ")) && e.contains(reason),
            "{bad}: the message names the engine and says `{reason}`: {e}"
        );
        eprintln!("refused as expected: {}", e.trim());
    }
    std::fs::write(app.spec(), &spec).unwrap();
    assert_eq!(instances(&lab, &app), after, "nothing changed");
    for (name, _, ip, _) in &after {
        assert_eq!(
            lab.get(ip, "/version.txt").as_deref(),
            Some("v2\n"),
            "{name} at {ip}"
        );
    }

    // `strata drain` of h4 (named by its address): only its instances (4
    // and 8) move, to the least loaded hosts (h1, h2), keeping their IPs
    // and MACs, handed over warm.
    // A client on the LAN opens a new connection to each moving IP every
    // 10 ms throughout (benches/redeploy-gap.py).
    let stop = app.dir.path().join("gap-stop");
    let probes: Vec<_> = after
        .iter()
        .filter(|i| i.1 == 4)
        .map(|(name, _, ip, _)| {
            let probe = Command::new(lab_sh())
                .args(["exec", "--dir"])
                .arg(&lab.dir)
                .args(["--", "python3"])
                .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/redeploy-gap.py"))
                .args([ip.as_str(), "8080", "/health.txt"])
                .arg(&stop)
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            (name.clone(), probe)
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let t = Instant::now();
    let r = app.drain(&lab, &["10.77.0.14", "--json"]);
    eprintln!("drain of h4 in {:.1}s", t.elapsed().as_secs_f64());
    std::thread::sleep(std::time::Duration::from_secs(1));
    std::fs::write(&stop, "").unwrap();
    for (name, probe) in probes {
        let o = probe.wait_with_output().unwrap();
        let gap: Value = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("{name}: redeploy-gap.py: {e}: {}", stdout(&o)));
        eprintln!("{name} moved h4 → another host; a LAN client saw {gap}");
        // A moved instance announces its address (gratuitous ARP): without
        // it the switch kept sending to h4 until the entry expired (~50 s).
        let longest = gap["new"]["longest_without_200_s"].as_f64().unwrap();
        assert!(
            longest < 10.0,
            "{name}: a LAN client got no answer for {longest:.1}s while it moved: {gap}"
        );
    }
    let drained = instances(&lab, &app);
    for ((b, a), m) in after.iter().zip(&drained).zip(&macs) {
        let want = match b.0.as_str() {
            "shop-4" => 1,
            "shop-8" => 2,
            _ => b.1,
        };
        assert_eq!(
            (a.1, &a.2),
            (want, &b.2),
            "{}: host and IP after the drain: {r}",
            a.0
        );
        assert_eq!(&mac(&lab, a.1, &a.3), m, "{}: the MAC follows the IP", a.0);
        assert_eq!(
            lab.get(&a.2, "/version.txt").as_deref(),
            Some("v2\n"),
            "{} at {}",
            a.0,
            a.2
        );
    }
    for i in r["instances"].as_array().unwrap() {
        if let Some(g) = i["gap_seconds"].as_f64() {
            eprintln!("{} moved: strata's gap {g:.2}s", i["instance"]);
        }
    }
    assert_eq!(lab.docker(4, &["ps", "-aq"]), "", "nothing left on h4");
    let h = app.json(&lab, &["history"]);
    assert_eq!(
        h.as_array().unwrap().last().unwrap()["action"],
        format!("drain {}", lab.endpoint(4, &lab.client_tls())),
        "{h}"
    );

    // Host failure: h3 cut off the LAN (its engine and containers keep
    // running, unreachable). `status` names it within seconds…
    let h3 = lab.endpoint(3, &lab.client_tls());
    let on_h3: Vec<_> = drained.iter().filter(|i| i.1 == 3).cloned().collect();
    assert_eq!(on_h3.len(), 2, "{drained:?}");
    let o = lab.sh(&["link", "h3", "down"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let t = Instant::now();
    let o = app.run(&lab, &["status"]);
    let took = t.elapsed().as_secs_f64();
    let text = format!("{}{}", stdout(&o), stderr(&o));
    eprintln!("status with h3 cut off, in {took:.1}s:\n{text}");
    assert!(
        text.contains(&format!("engine unreachable: docker engine {h3}")),
        "status names h3: {text}"
    );
    assert!(took < 30.0, "status took {took:.1}s");
    // …a deploy refuses, naming the host and the way out, and changes
    // nothing (h3's containers may still serve their IPs)…
    let o = app.run(&lab, &["deploy", "--redeploy", "--image", "v1"]);
    let e = stderr(&o);
    assert!(!o.status.success(), "{e}");
    assert!(
        e.contains(&format!("runs on {h3}, which does not answer")) && e.contains("--force"),
        "{e}"
    );
    // …and a forced drain starts its instances on h1 and h2 with their
    // IPs, which a client on the LAN reaches.
    let t = Instant::now();
    app.drain(&lab, &["10.77.0.13", "--force", "--json"]);
    eprintln!("forced drain of h3 in {:.1}s", t.elapsed().as_secs_f64());
    let fenced = instances(&lab, &app);
    for (name, h, ip, _) in &on_h3 {
        let now = fenced.iter().find(|i| &i.0 == name).unwrap();
        assert_eq!(&now.2, ip, "{name} keeps its IP");
        assert!(
            now.1 == 1 || now.1 == 2,
            "{name} moved to h1 or h2: {now:?} (was h{h})"
        );
        assert_eq!(
            lab.get(ip, "/version.txt").as_deref(),
            Some("v2\n"),
            "{name} at {ip}"
        );
    }
    // h3 comes back still running the two old containers on those IPs:
    // the next command removes them before anything else.
    let o = lab.sh(&["link", "h3", "up"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let stale = lab.docker(3, &["ps", "-q", "--filter", "label=org.strata.app=shop"]);
    assert_eq!(
        stale.lines().count(),
        2,
        "h3 still runs its old containers: {stale}"
    );
    let o = app.run(&lab, &["status"]);
    assert!(o.status.success(), "{}", stderr(&o));
    eprintln!("status once h3 answers again:\n{}", stderr(&o));
    assert_eq!(
        lab.docker(3, &["ps", "-aq", "--filter", "label=org.strata.app=shop"]),
        "",
        "h3's stale containers are gone"
    );
    for (name, _, ip, _) in &on_h3 {
        assert_eq!(
            lab.get(ip, "/version.txt").as_deref(),
            Some("v2\n"),
            "{name} at {ip}"
        );
    }

    // Down leaves nothing: no namespace, no directory.
    let (dir, prefix) = (lab.dir.clone(), lab.prefix.clone());
    drop(lab);
    let ns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!stdout(&ns).contains(&prefix), "{}", stdout(&ns));
    assert!(!dir.exists(), "{} is gone", dir.display());
}

/// Bytes namespace `who`'s LAN port (its eth0: `origin`, `client`) has
/// sent so far (`ip -s link`).
fn tx(lab: &Lab, who: &str) -> u64 {
    let ns = format!("{}-{who}", lab.prefix);
    let o = Command::new("ip")
        .args(["-n", &ns, "-j", "-s", "link", "show", "eth0"])
        .output()
        .unwrap();
    assert!(o.status.success(), "ip -s link in {ns}: {}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    v[0]["stats64"]["tx"]["bytes"].as_u64().unwrap()
}

/// The layers (digest, size) of `shop:TAG` at the origin, read from the LAN.
fn origin_layers(lab: &Lab, tag: &str) -> Vec<(String, u64)> {
    let url = format!("http://10.77.0.3:5000/v2/shop/manifests/{tag}");
    let accept = "Accept: application/vnd.oci.image.manifest.v1+json";
    let o = lab.sh(&["exec", "--", "curl", "-sf", "-m", "10", "-H", accept, &url]);
    assert!(o.status.success(), "{url}: {}", stderr(&o));
    let m: Value = serde_json::from_slice(&o.stdout).unwrap();
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .chain(std::iter::once(&m["config"]))
        .map(|l| {
            (
                l["digest"].as_str().unwrap().to_string(),
                l["size"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn a_release_is_pushed_prewarmed_over_p2p_deployed_hotfixed_and_redeployed_on_every_host() {
    let Some(_) = stack() else { return };
    let _one = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    let Some(lab) = Lab::up(true) else { return };
    let app = LabApp::new(&lab);
    let token = std::fs::read_to_string(lab.dir.join("origin/token")).unwrap();
    let token = token.trim();
    let auth = format!("lab:{token}");
    let layout = app.dir.path().join("oci");
    let war = app.dir.path().join("war");
    copy_dir(&repo().join("base-images/webapp"), &war);
    write(&war.join("health.txt"), "ok\n");
    write(
        &war.join("META-INF/context.xml"),
        "<Context><Resources cachingAllowed=\"false\"/></Context>\n",
    );
    let config = repo().join("deploy/examples/offline.toml");
    // Each build carries 4 MiB of its own (incompressible) bytes, so the
    // new layer of every release is mostly those and its copies count.
    let build = |tag: &str| {
        write(&war.join("version.txt"), format!("{tag}\n"));
        let mut noise = vec![0u8; 4 << 20];
        let mut x = tag.bytes().fold(u64::from(std::process::id()) | 1, |h, c| {
            h.rotate_left(8) ^ u64::from(c)
        });
        for chunk in noise.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        std::fs::write(war.join("static.bin"), noise).unwrap();
    };
    // (what the report says, what the origin sent, what the operator's
    // machine sent)
    let release = |tag: &str| -> (Value, u64, u64) {
        let (origin, client) = (tx(&lab, "origin"), tx(&lab, "client"));
        let t = Instant::now();
        let o = app.strata_with(
            &lab,
            &[
                "release",
                "shop",
                "--json",
                "-c",
                config.to_str().unwrap(),
                "--war",
                war.to_str().unwrap(),
                "--push",
                &format!("10.77.0.3:5000/shop:{tag}"),
                "--plain-http",
                "--server",
                "http://10.77.0.3:5000",
                "--token",
                token,
                "--load",
            ],
            &layout,
            &[("STRATA_REGISTRY_AUTH", &auth)],
        );
        let e = stderr(&o);
        assert!(o.status.success(), "release {tag}: {e}\n{}", stdout(&o));
        let egress = tx(&lab, "origin") - origin;
        let sent = tx(&lab, "client") - client;
        eprintln!(
            "release {tag} in {:.1}s, origin egress {:.1} MiB, the operator's machine sent {:.1} MiB:\n{e}",
            t.elapsed().as_secs_f64(),
            egress as f64 / 1048576.0,
            sent as f64 / 1048576.0
        );
        let r: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|x| panic!("{x}: {}", stdout(&o)));
        (r, egress, sent)
    };
    let serving = |tag: &str| {
        for (name, _, ip, _) in instances(&lab, &app) {
            assert_eq!(
                lab.get(&ip, "/version.txt").as_deref(),
                Some(format!("{tag}\n").as_str()),
                "{name} at {ip}"
            );
        }
    };

    // b1: the whole image reaches the hosts through the swarm, each engine
    // pulls it from its own agent, and the deploy only tags it there.
    build("b1");
    let (r, egress, sent) = release("b1");
    assert_eq!(r["instances"].as_array().unwrap().len(), INSTANCES, "{r}");
    serving("b1");
    let placed = instances(&lab, &app);
    for (name, h, _, c) in &placed {
        let running = lab.docker(*h, &["inspect", "-f", "{{.Image}}", c]);
        let pulled = lab.docker(
            *h,
            &["image", "inspect", "-f", "{{.Id}}", "127.0.0.1:5002/shop:b1"],
        );
        assert_eq!(running, pulled, "{name} runs what h{h} pulled from its agent");
    }
    // The origin sent about one copy, not one per host; the operator's
    // machine one (the push), so it loaded nothing into any engine.
    let image: u64 = origin_layers(&lab, "b1").iter().map(|l| l.1).sum();
    let copies = egress as f64 / image as f64;
    let pushed = sent as f64 / image as f64;
    eprintln!(
        "b1: {HOSTS} hosts, image {image} bytes: the origin sent {copies:.2} copies, the operator's machine {pushed:.2}"
    );
    assert!(copies < 1.5, "origin egress {copies:.2} copies of the image");
    assert!(
        pushed < 1.3,
        "the operator's machine sent {pushed:.2} copies: the push, and no load"
    );

    // b2: a page and the static bytes changed: a hotfix everywhere, same
    // containers, and the origin sends about one copy of the new layer.
    build("b2");
    write(&war.join("index.html"), "<h1>build two</h1>\n");
    let (r, egress, sent) = release("b2");
    for i in r["instances"].as_array().unwrap() {
        assert_eq!(i["mode"], "hotfix", "{r}");
        assert_eq!(i["outcome"], "ok", "{r}");
    }
    serving("b2");
    assert_eq!(
        instances(&lab, &app),
        placed,
        "hotfixed in place: same containers"
    );
    let old: Vec<String> = origin_layers(&lab, "b1").into_iter().map(|l| l.0).collect();
    let new: u64 = origin_layers(&lab, "b2")
        .iter()
        .filter(|l| !old.contains(&l.0))
        .map(|l| l.1)
        .sum();
    let copies = egress as f64 / new as f64;
    let pushed = sent as f64 / new as f64;
    eprintln!(
        "b2: new layers {new} bytes: the origin sent {copies:.2} copies, the operator's machine {pushed:.2}"
    );
    assert!(copies < 1.6, "origin egress {copies:.2} copies of the new layers");
    // (The operator's machine sends each instance the changed files:
    // a hotfix goes through the engine API, not through the agents.)

    // b3 with a change no hotfix can carry (the environment): every
    // instance redeployed, two at a time (max_unavailable = 2), each
    // keeping its host and IP.
    let spec = std::fs::read_to_string(app.spec()).unwrap();
    std::fs::write(
        app.spec(),
        spec.replace("env = {", "env = { RELEASE = \"three\", ")
            .replace("stop_grace = ", "max_unavailable = 2\nstop_grace = "),
    )
    .unwrap();
    build("b3");
    let (r, _, _) = release("b3");
    for i in r["instances"].as_array().unwrap() {
        assert_eq!(i["mode"], "redeploy", "{r}");
        assert_eq!(i["outcome"], "ok", "{r}");
    }
    serving("b3");
    let after = instances(&lab, &app);
    for (b, a) in placed.iter().zip(&after) {
        assert_eq!((&b.0, b.1, &b.2), (&a.0, a.1, &a.2), "same instance, host and IP");
        assert_ne!(b.3, a.3, "{}: a new container", a.0);
        let env = lab.docker(a.1, &["inspect", "-f", "{{json .Config.Env}}", &a.3]);
        assert!(env.contains("RELEASE=three"), "{}: {env}", a.0);
    }
    // Two at a time: shop-1 and shop-2 started together, shop-3 only
    // once they had taken over (a Tomcat warm-up later), and so on.
    let started: Vec<f64> = after
        .iter()
        .map(|(_, h, _, c)| {
            let at = lab.docker(*h, &["inspect", "-f", "{{.State.StartedAt}}", c]);
            let o = Command::new("date").args(["-d", &at, "+%s.%N"]).output().unwrap();
            stdout(&o).trim().parse().unwrap()
        })
        .collect();
    eprintln!("b3: new containers started at {started:?}");
    for pair in started.chunks(2) {
        assert!(
            (pair[0] - pair[1]).abs() < 3.0,
            "a pair warms up side by side: {started:?}"
        );
    }
    for w in started.windows(3) {
        assert!(w[2] - w[0] > 2.0, "never three at once: {started:?}");
    }
    let h = app.json(&lab, &["history"]);
    let actions: Vec<_> = h
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["outcome"].clone())
        .collect();
    assert_eq!(actions, vec!["ok", "ok", "ok"], "{h}");
}
