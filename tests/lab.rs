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

use common::deploy::stack;
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

impl Lab {
    fn up() -> Option<Lab> {
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
        let o = lab.sh(&["up", "--hosts", &HOSTS.to_string(), "--prefix", &lab.prefix]);
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
            .arg(&s.layout)
            .env("STRATA_STORE", &s.store)
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
    let Some(lab) = Lab::up() else { return };
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
