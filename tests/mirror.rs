//! Engines and clients pulling through an agent's mirror (issue 18): a
//! zstd image reaches Debian's Docker 20.10, which cannot read zstd, as
//! the gzip variant the agent makes (the digests `strata push --gzip`
//! gives) while the swarm carries zstd; containerd (`ctr`, behind this
//! machine's Docker) with the shipped `deploy/containerd/` hosts file;
//! podman from the origin and through the agent, both reading zstd.
//! Every test makes images with content unique to its run, and removes
//! exactly what it made.

mod common;

use std::process::Command;
use std::time::Duration;

use common::swarm::*;
use common::*;
use strata::digest::Digest;

/// What Debian 12's Docker engine sends as its User-Agent.
const DOCKER_20_10: &str = "docker/20.10.24+dfsg1 go/go1.19.8 git-commit/5d6db84 os/linux arch/amd64";

/// A manifest from a registry: digest, bytes.
fn get_manifest(base: &str, repo: &str, reference: &str, user_agent: Option<&str>) -> (String, Vec<u8>) {
    let mut r = reqwest::blocking::Client::new()
        .get(format!("{base}/v2/{repo}/manifests/{reference}"))
        .header("Accept", strata::oci::MANIFEST_ACCEPT);
    if let Some(ua) = user_agent {
        r = r.header("User-Agent", ua);
    }
    let r = r.send().unwrap();
    assert_eq!(r.status(), 200, "{repo}:{reference}");
    let digest = r.headers()["docker-content-digest"].to_str().unwrap().to_string();
    let bytes = r.bytes().unwrap().to_vec();
    assert_eq!(digest, Digest::sha256_of(&bytes).to_string());
    (digest, bytes)
}

fn layers_of(manifest: &[u8]) -> Vec<(String, Digest)> {
    let m: strata::oci::Manifest = serde_json::from_slice(manifest).unwrap();
    m.layers.into_iter().map(|l| (l.media_type, l.digest)).collect()
}

#[test]
fn an_old_engine_pulls_a_zstd_image_through_an_agent_as_gzip_push_would_have_pushed_it() {
    if !have_docker() {
        return;
    }
    let Some(_) = debs() else { return };
    let version = Command::new("docker")
        .args(["version", "--format", "{{.Server.APIVersion}}"])
        .output()
        .unwrap();
    assert_eq!(
        stdout(&version).trim(),
        "1.41",
        "this test needs an engine that cannot read zstd (Docker 20.10)"
    );
    let d = tempfile::tempdir().unwrap();
    let s = Swarm::start(d.path(), 1, 1, 0.0);
    let repo_name = unique("zstd").replace("strata-test-", "p2p/");
    let id = s.push_tools_tier(&format!("{repo_name}:1"), false);
    let origin = format!("http://127.0.0.1:{}", s.registry);
    let (zstd_digest, zstd_manifest) = get_manifest(&origin, &repo_name, "1", Some(DOCKER_20_10));
    let zstd_layers = layers_of(&zstd_manifest);
    assert!(
        zstd_layers.iter().all(|(t, _)| t.ends_with("+zstd")),
        "pushed as built: {zstd_layers:?}"
    );
    let agent = s.agent_with(0, 0.0, &["--registry", &origin, "--mirror-listen", "127.0.0.1:0"]);
    let mirror = agent
        .line("mirror listening on", Duration::from_secs(20))
        .expect("mirror");
    let port = mirror.rsplit(':').next().unwrap().to_string();
    let mirror = format!("http://127.0.0.1:{port}");
    let image = format!("127.0.0.1:{port}/{repo_name}:1");
    let mut cleanup = DockerCleanup {
        containers: vec![],
        images: vec![image.clone()],
    };

    // The engine pulls by tag and runs the image: its unique file is there.
    let o = Command::new("docker").args(["pull", &image]).output().unwrap();
    let engine_id = Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", &image])
        .output()
        .unwrap();
    if engine_id.status.success() {
        cleanup.images.push(stdout(&engine_id).trim().to_string());
    }
    assert!(o.status.success(), "docker pull of a zstd image: {}", stderr(&o));
    let o = Command::new("docker")
        .args([
            "run",
            "--rm",
            "--entrypoint",
            "/bin/cat",
            &image,
            "/etc/strata-test-id",
        ])
        .output()
        .unwrap();
    assert_eq!(stdout(&o), format!("{id}\n"), "{}", stderr(&o));

    // What the engine got is the gzip variant, layer by layer; other
    // clients still get the image as pushed.
    let (gzip_digest, gzip_manifest) = get_manifest(&mirror, &repo_name, "1", Some(DOCKER_20_10));
    let gzip_layers = layers_of(&gzip_manifest);
    assert_ne!(gzip_digest, zstd_digest);
    assert_eq!(gzip_layers.len(), zstd_layers.len());
    assert!(
        gzip_layers.iter().all(|(t, _)| t.ends_with("+gzip")),
        "{gzip_layers:?}"
    );
    let repo_digests = Command::new("docker")
        .args(["image", "inspect", "--format", "{{json .RepoDigests}}", &image])
        .output()
        .unwrap();
    assert!(
        stdout(&repo_digests).contains(&format!("/{repo_name}@{gzip_digest}")),
        "the engine recorded {}, not {gzip_digest}",
        stdout(&repo_digests)
    );
    assert_eq!(get_manifest(&mirror, &repo_name, "1", None).0, zstd_digest);
    assert_eq!(
        get_manifest(&mirror, &repo_name, "1", Some("containerd/1.6.20~ds1")).0,
        zstd_digest
    );

    // P2P carried the zstd blobs; the gzip ones were made on the agent and
    // never were on the origin.
    let agent_store = s.dir.join("agent-0/store/blobs/sha256");
    let origin_store = s.dir.join("origin/store/blobs/sha256");
    for ((_, z), (_, g)) in zstd_layers.iter().zip(&gzip_layers) {
        assert!(agent_store.join(z.hex()).is_file(), "the agent lacks zstd {z}");
        assert!(agent_store.join(g.hex()).is_file(), "the agent lacks gzip {g}");
        assert!(!origin_store.join(g.hex()).exists(), "gzip {g} on the origin");
    }
    let zstd_bytes: u64 = zstd_layers
        .iter()
        .map(|(_, z)| std::fs::metadata(agent_store.join(z.hex())).unwrap().len())
        .sum();
    // The agent's pull-through registry serves its /metrics (no token:
    // agents' listeners are loopback unless placed elsewhere).
    let metrics = common::scrape(&mirror, None);
    let from_origin = common::metric(&metrics, "strata_p2p_bytes_received_total{source=\"origin\"}").unwrap();
    assert!(
        from_origin >= zstd_bytes as f64,
        "P2P brought {from_origin} bytes, the zstd layers are {zstd_bytes}"
    );
    let made = || {
        common::metric(
            &common::scrape(&mirror, None),
            "strata_mirror_gzip_layers_made_total",
        )
    };
    assert_eq!(made(), Some(zstd_layers.len() as f64), "{metrics}");

    // A second pull transcodes nothing.
    let o = Command::new("docker").args(["pull", &image]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(made(), Some(zstd_layers.len() as f64));

    // By digest: the zstd manifest is refused to this engine, naming the
    // variant; the variant is served by its own digest.
    let by_zstd = format!("127.0.0.1:{port}/{repo_name}@{zstd_digest}");
    let o = Command::new("docker").args(["pull", &by_zstd]).output().unwrap();
    assert!(!o.status.success(), "a zstd manifest by digest was served");
    assert!(
        stderr(&o).contains("zstd layers") && stderr(&o).contains(&gzip_digest),
        "{}",
        stderr(&o)
    );
    let by_gzip = format!("127.0.0.1:{port}/{repo_name}@{gzip_digest}");
    cleanup.images.push(by_gzip.clone());
    let o = Command::new("docker").args(["pull", &by_gzip]).output().unwrap();
    assert!(o.status.success(), "pull by the variant's digest: {}", stderr(&o));

    // A multi-platform image (an index) by tag: its child for this host
    // becomes the variant, the other child (a manifest with no layers)
    // stays as it is.
    let mut other: strata::oci::Manifest = serde_json::from_slice(&zstd_manifest).unwrap();
    other.layers.clear();
    let other = strata::oci::to_json(&other);
    let other_digest = Digest::sha256_of(&other).to_string();
    let r = reqwest::blocking::Client::new()
        .put(format!("{origin}/v2/{repo_name}/manifests/{other_digest}"))
        .header("Content-Type", strata::oci::MEDIA_MANIFEST)
        .body(other.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": strata::oci::MEDIA_INDEX,
        "manifests": [
            { "mediaType": strata::oci::MEDIA_MANIFEST, "digest": zstd_digest, "size": zstd_manifest.len(),
              "platform": { "os": "linux", "architecture": "amd64" } },
            { "mediaType": strata::oci::MEDIA_MANIFEST, "digest": other_digest, "size": other.len(),
              "platform": { "os": "linux", "architecture": "riscv64" } },
        ],
    })
    .to_string();
    let r = reqwest::blocking::Client::new()
        .put(format!("{origin}/v2/{repo_name}/manifests/multi"))
        .header("Content-Type", strata::oci::MEDIA_INDEX)
        .body(index)
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let multi = format!("127.0.0.1:{port}/{repo_name}:multi");
    cleanup.images.push(multi.clone());
    let o = Command::new("docker").args(["pull", &multi]).output().unwrap();
    assert!(o.status.success(), "docker pull of a zstd index: {}", stderr(&o));
    let (index_digest, served) = get_manifest(&mirror, &repo_name, "multi", Some(DOCKER_20_10));
    let served: serde_json::Value = serde_json::from_slice(&served).unwrap();
    assert_eq!(served["manifests"][0]["digest"], gzip_digest.as_str(), "{served}");
    assert_eq!(
        served["manifests"][1]["digest"],
        other_digest.as_str(),
        "{served}"
    );
    let repo_digests = Command::new("docker")
        .args(["image", "inspect", "--format", "{{json .RepoDigests}}", &multi])
        .output()
        .unwrap();
    assert!(
        stdout(&repo_digests).contains(&index_digest),
        "{}",
        stdout(&repo_digests)
    );

    // A gzip layer evicted from the agent's cache is made again when asked.
    let (_, evicted) = &gzip_layers[0];
    std::fs::remove_file(agent_store.join(evicted.hex())).unwrap();
    let r = reqwest::blocking::get(format!("{mirror}/v2/{repo_name}/blobs/{evicted}")).unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(Digest::sha256_of(&r.bytes().unwrap()), *evicted);

    // `strata push --gzip` of the same image gives the same digests.
    let pushed = format!("{repo_name}-gzip:1");
    s.push_built(&pushed, true);
    let (push_digest, push_manifest) = get_manifest(&origin, &format!("{repo_name}-gzip"), "1", None);
    assert_eq!(layers_of(&push_manifest), gzip_layers);
    assert_eq!(push_digest, gzip_digest);
    drop(agent);
}

/// The containerd socket `ctr` talks to: a system containerd's, else the
/// one Docker runs (Debian's `docker.io`), which answers.
fn containerd() -> Option<String> {
    if !have_tool("ctr") {
        return None;
    }
    let found = [
        "/run/containerd/containerd.sock",
        "/var/run/docker/containerd/containerd.sock",
    ]
    .into_iter()
    .find(|a| {
        std::path::Path::new(a).exists()
            && Command::new("ctr")
                .args(["--address", a, "--connect-timeout", "2s", "version"])
                .output()
                .is_ok_and(|o| o.status.success())
    });
    match found {
        Some(a) => Some(a.to_string()),
        None => {
            skip("a running containerd (its socket)");
            None
        }
    }
}

/// `ctr` on `address` in `namespace`.
fn ctr(address: &str, namespace: &str) -> Command {
    let mut c = Command::new("ctr");
    c.args([
        "--address",
        address,
        "--namespace",
        namespace,
        "--timeout",
        "120s",
    ]);
    c
}

/// Removes a containerd namespace a test made, with its containers and
/// images, when dropped (also on panic).
struct CtrCleanup {
    address: String,
    namespace: String,
    containers: Vec<String>,
}

impl Drop for CtrCleanup {
    fn drop(&mut self) {
        let ctr = || ctr(&self.address, &self.namespace);
        for c in &self.containers {
            let _ = ctr().args(["tasks", "kill", "-s", "SIGKILL", c]).output();
            let _ = ctr().args(["tasks", "delete", "-f", c]).output();
            let _ = ctr().args(["containers", "delete", c]).output();
        }
        // The namespace is this test's own: every image in it is one it pulled.
        if let Ok(o) = ctr().args(["images", "ls", "-q"]).output() {
            for image in stdout(&o).lines() {
                let _ = ctr().args(["images", "rm", "--sync", image]).output();
            }
        }
        let _ = Command::new("ctr")
            .args(["--address", &self.address, "namespaces", "rm", &self.namespace])
            .output();
    }
}

#[test]
fn containerd_pulls_zstd_and_gzip_images_through_the_agent_with_the_shipped_hosts_file_and_runs_them() {
    let Some(address) = containerd() else { return };
    let Some(_) = debs() else { return };
    let d = tempfile::tempdir().unwrap();
    let s = Swarm::start(d.path(), 1, 1, 0.0);
    let repo_name = unique("ctr").replace("strata-test-", "p2p/");
    let id = s.push_tools_tier(&format!("{repo_name}:1"), false);
    s.push_built(&format!("{repo_name}-gzip:1"), true);
    let origin = format!("http://127.0.0.1:{}", s.registry);
    let agent = s.agent_with(0, 0.0, &["--registry", &origin, "--mirror-listen", "127.0.0.1:0"]);
    let mirror = agent
        .line("mirror listening on", Duration::from_secs(20))
        .expect("mirror");
    let mirror = mirror.rsplit("//").next().unwrap().to_string();

    // The shipped hosts file, pointed at this agent's port.
    let shipped =
        std::fs::read_to_string(repo().join("deploy/containerd/certs.d/_default/hosts.toml")).unwrap();
    assert!(shipped.contains("\"http://127.0.0.1:5002\""), "{shipped}");
    let hosts = d.path().join("certs.d");
    write(
        &hosts.join("_default/hosts.toml"),
        shipped.replace("127.0.0.1:5002", &mirror),
    );

    let namespace = unique("ctr");
    let mut cleanup = CtrCleanup {
        address: address.clone(),
        namespace: namespace.clone(),
        containers: vec![],
    };
    let agent_store = s.dir.join("agent-0/store/blobs/sha256");
    for (repo, compression) in [(repo_name.clone(), "zstd"), (format!("{repo_name}-gzip"), "gzip")] {
        // The image is named by the origin; containerd asks the mirror
        // first, as the hosts file says.
        let image = format!("127.0.0.1:{}/{repo}:1", s.registry);
        let o = ctr(&address, &namespace)
            .args(["images", "pull", "--hosts-dir"])
            .arg(&hosts)
            .arg(&image)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "ctr pull {image}: {}{}",
            stdout(&o),
            stderr(&o)
        );

        // containerd has the image as pushed (its layers are `compression`),
        // and they came through the agent, which fetched them over P2P.
        let r = reqwest::blocking::get(format!("{origin}/v2/{repo}/manifests/1")).unwrap();
        let digest = r.headers()["docker-content-digest"].to_str().unwrap().to_string();
        let manifest: strata::oci::Manifest = serde_json::from_slice(&r.bytes().unwrap()).unwrap();
        let o = ctr(&address, &namespace).args(["images", "ls"]).output().unwrap();
        let listed = stdout(&o);
        assert!(
            listed
                .lines()
                .any(|l| l.starts_with(&format!("{image} ")) && l.contains(&digest)),
            "containerd lists {image} with another digest than {digest}:\n{listed}"
        );
        for l in &manifest.layers {
            assert!(l.media_type.ends_with(compression), "{repo}: {}", l.media_type);
            assert!(
                agent_store.join(l.digest.hex()).is_file(),
                "{} did not come through the agent",
                l.digest
            );
        }

        // And runs it: the run's unique file is there.
        let container = unique("ctr-run");
        cleanup.containers.push(container.clone());
        let o = ctr(&address, &namespace)
            .args([
                "run",
                "--rm",
                &image,
                &container,
                "/bin/cat",
                "/etc/strata-test-id",
            ])
            .output()
            .unwrap();
        assert_eq!(stdout(&o), format!("{id}\n"), "ctr run {image}: {}", stderr(&o));
    }
    // No gzip variant was made for containerd: it reads zstd.
    let made = common::metric(
        &common::scrape(&format!("http://{mirror}"), None),
        "strata_mirror_gzip_layers_made_total",
    );
    assert_eq!(made, Some(0.0));
    drop(cleanup);
    let o = Command::new("ctr")
        .args(["--address", &address, "namespaces", "ls", "-q"])
        .output()
        .unwrap();
    assert!(
        !stdout(&o).lines().any(|n| n == namespace),
        "namespace {namespace} left behind"
    );
    drop(agent);
}

/// `podman` with its own storage under `root` (vfs: no mounts to leave
/// behind), so a test sees and removes only what it pulled.
fn podman(root: &std::path::Path) -> Command {
    let mut c = Command::new("podman");
    c.arg("--root")
        .arg(root.join("storage"))
        .arg("--runroot")
        .arg(root.join("run"))
        .args([
            "--storage-driver",
            "vfs",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
        ]);
    c
}

/// A podman storage root of a test's own (a short path: podman refuses a
/// run root over 50 characters). Every container and image in it is
/// removed when dropped (also on panic), then the root itself.
struct PodmanRoot(tempfile::TempDir);

impl PodmanRoot {
    fn new() -> PodmanRoot {
        PodmanRoot(tempfile::Builder::new().prefix("strata-pm-").tempdir().unwrap())
    }

    fn podman(&self) -> Command {
        podman(self.0.path())
    }
}

impl Drop for PodmanRoot {
    fn drop(&mut self) {
        let _ = self.podman().args(["rm", "-af"]).output();
        let _ = self.podman().args(["rmi", "-af"]).output();
    }
}

#[test]
fn podman_pulls_zstd_and_gzip_images_from_the_origin_and_through_the_agent() {
    if !have_tool("podman") {
        return;
    }
    let Some(_) = debs() else { return };
    let d = tempfile::tempdir().unwrap();
    let s = Swarm::start(d.path(), 1, 1, 0.0);
    let repo_name = unique("podman").replace("strata-test-", "p2p/");
    let id = s.push_tools_tier(&format!("{repo_name}:1"), false);
    s.push_built(&format!("{repo_name}-gzip:1"), true);
    let origin = format!("127.0.0.1:{}", s.registry);
    let agent = s.agent_with(
        0,
        0.0,
        &[
            "--registry",
            &format!("http://{origin}"),
            "--mirror-listen",
            "127.0.0.1:0",
        ],
    );
    let mirror = agent
        .line("mirror listening on", Duration::from_secs(20))
        .expect("mirror");
    let mirror = mirror.rsplit("//").next().unwrap().to_string();
    let agent_store = s.dir.join("agent-0/store/blobs/sha256");

    for registry in [&origin, &mirror] {
        for (repo, compression) in [(repo_name.clone(), "zstd"), (format!("{repo_name}-gzip"), "gzip")] {
            // A storage of its own for each pull: nothing is there yet.
            let root = PodmanRoot::new();
            let image = format!("{registry}/{repo}:1");
            let o = root
                .podman()
                .args(["pull", "--tls-verify=false", &image])
                .output()
                .unwrap();
            assert!(o.status.success(), "podman pull {image}: {}", stderr(&o));

            // podman has the image as pushed (its layers `compression`).
            let r = reqwest::blocking::get(format!("http://{origin}/v2/{repo}/manifests/1")).unwrap();
            let digest = r.headers()["docker-content-digest"].to_str().unwrap().to_string();
            let manifest: strata::oci::Manifest = serde_json::from_slice(&r.bytes().unwrap()).unwrap();
            let o = root
                .podman()
                .args(["images", "--digests", "--format", "{{.Digest}}"])
                .output()
                .unwrap();
            assert_eq!(stdout(&o).trim(), digest, "{image}: {}", stderr(&o));
            for l in &manifest.layers {
                assert!(l.media_type.ends_with(compression), "{repo}: {}", l.media_type);
                if *registry == mirror {
                    assert!(
                        agent_store.join(l.digest.hex()).is_file(),
                        "{} did not come through the agent",
                        l.digest
                    );
                }
            }

            // And runs it. Explicit limits: this machine refuses to raise
            // them to podman's defaults ("error setting rlimit type 7").
            let o = root
                .podman()
                .args(["run", "--rm", "--network", "none"])
                .args(["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"])
                .args([&image, "/bin/cat", "/etc/strata-test-id"])
                .output()
                .unwrap();
            assert_eq!(
                stdout(&o),
                format!("{id}\n"),
                "podman run {image}: {}",
                stderr(&o)
            );
        }
    }
    // podman reads zstd: the agent made no gzip variant for it.
    let made = common::metric(
        &common::scrape(&format!("http://{mirror}"), None),
        "strata_mirror_gzip_layers_made_total",
    );
    assert_eq!(made, Some(0.0));
    drop(agent);
}

/// An agent of `s` with its mirror on loopback and its downloads capped
/// at `mbit` (so a blob takes a while to arrive), and the mirror's URL.
fn capped_mirror(s: &Swarm, mbit: f64) -> (Proc, String) {
    let origin = format!("http://127.0.0.1:{}", s.registry);
    let mbit = mbit.to_string();
    let agent = s.agent_with(
        0,
        0.0,
        &[
            "--registry",
            &origin,
            "--mirror-listen",
            "127.0.0.1:0",
            "--download-mbit",
            &mbit,
        ],
    );
    let mirror = agent
        .line("mirror listening on", Duration::from_secs(20))
        .expect("mirror");
    let port = mirror.rsplit(':').next().unwrap().to_string();
    (agent, format!("http://127.0.0.1:{port}"))
}

/// Where agent 0 of `s` keeps the swarm's blob once it is whole.
fn stored_blob(s: &Swarm) -> std::path::PathBuf {
    s.dir
        .join(format!("agent-0/store/blobs/sha256/{}", s.digest.hex()))
}

/// What a client saw of one blob GET: the status, the headers, all the
/// bytes, when the first came and whether the agent's store held the
/// whole blob by then, and when the last came.
struct Got {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
    first_byte: Duration,
    stored_at_first_byte: bool,
    all: Duration,
}

fn get_blob(url: &str, range: Option<&str>, stored: &std::path::Path) -> Got {
    use std::io::Read;
    let started = std::time::Instant::now();
    let mut rq = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
        .get(url);
    if let Some(r) = range {
        rq = rq.header("Range", r);
    }
    let mut resp = rq.send().unwrap();
    let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
    let mut first = vec![0u8; 64 << 10];
    let n = loop {
        match resp.read(&mut first) {
            Ok(n) => break n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("{url}: {e}"),
        }
    };
    let (first_byte, stored_at_first_byte) = (started.elapsed(), stored.exists());
    let mut body = first[..n].to_vec();
    resp.read_to_end(&mut body)
        .unwrap_or_else(|e| panic!("{url}: the body was cut off: {e}"));
    Got {
        status,
        headers,
        body,
        first_byte,
        stored_at_first_byte,
        all: started.elapsed(),
    }
}

fn header<'a>(g: &'a Got, name: &str) -> &'a str {
    g.headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} in {:?}", g.headers))
        .to_str()
        .unwrap()
}

#[test]
fn a_client_gets_a_blob_through_the_mirror_as_its_pieces_arrive() {
    let d = tempfile::tempdir().unwrap();
    // 8 MiB at 24 Mbit/s: about 2.8 s to arrive.
    let s = Swarm::start(d.path(), 1, 8, 0.0);
    let (_agent, mirror) = capped_mirror(&s, 24.0);
    let url = format!("{mirror}/v2/app/blobs/{}", s.digest);
    let g = get_blob(&url, None, &stored_blob(&s));
    eprintln!(
        "first byte after {:.3} s, all {} bytes after {:.3} s",
        g.first_byte.as_secs_f64(),
        g.body.len(),
        g.all.as_secs_f64()
    );
    assert_eq!(g.status, 200);
    assert_eq!(header(&g, "content-length"), s.blob.len().to_string());
    assert_eq!(header(&g, "docker-content-digest"), s.digest.to_string());
    assert!(
        !g.stored_at_first_byte,
        "the first byte came after the whole blob ({:?})",
        g.first_byte
    );
    assert!(
        g.first_byte * 3 < g.all,
        "the first byte came after {:?} of {:?}",
        g.first_byte,
        g.all
    );
    assert_eq!(Digest::sha256_of(&g.body), s.digest);
    // The download went on into the store.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !stored_blob(&s).exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(std::fs::read(stored_blob(&s)).unwrap(), s.blob);
}

#[test]
fn two_clients_of_one_arriving_blob_both_get_it_from_one_download() {
    let d = tempfile::tempdir().unwrap();
    let s = Swarm::start(d.path(), 1, 8, 0.0);
    let (_agent, mirror) = capped_mirror(&s, 24.0);
    let url = format!("{mirror}/v2/app/blobs/{}", s.digest);
    let stored = stored_blob(&s);
    let got: Vec<Got> = std::thread::scope(|sc| {
        let clients: Vec<_> = (0..2)
            .map(|_| sc.spawn(|| get_blob(&url, None, &stored)))
            .collect();
        clients.into_iter().map(|c| c.join().unwrap()).collect()
    });
    for g in &got {
        assert_eq!(g.status, 200);
        assert!(!g.stored_at_first_byte, "{:?}", g.first_byte);
        assert_eq!(Digest::sha256_of(&g.body), s.digest);
    }
    // One download: the origin sent the blob about once, not twice.
    let metrics = common::scrape(&mirror, None);
    let from_origin = common::metric(&metrics, "strata_p2p_bytes_received_total{source=\"origin\"}").unwrap();
    let size = s.blob.len() as f64;
    assert!(
        from_origin >= size && from_origin < 1.5 * size,
        "{from_origin} bytes from the origin for a blob of {size}"
    );
}

#[test]
fn ranges_of_a_blob_arriving_and_whole_and_a_range_beyond_it() {
    let d = tempfile::tempdir().unwrap();
    let s = Swarm::start(d.path(), 1, 8, 0.0);
    let (_agent, mirror) = capped_mirror(&s, 24.0);
    let url = format!("{mirror}/v2/app/blobs/{}", s.digest);
    let stored = stored_blob(&s);
    let size = s.blob.len();
    let (a, b) = (3_000_001, 5_000_000);
    let check = |g: &Got, when: &str| {
        assert_eq!(g.status, 206, "{when}");
        assert_eq!(
            header(g, "content-range"),
            format!("bytes {a}-{b}/{size}"),
            "{when}"
        );
        assert_eq!(header(g, "content-length"), (b - a + 1).to_string(), "{when}");
        assert!(g.body == s.blob[a..=b], "{when}: other bytes than asked for");
    };
    let arriving = get_blob(&url, Some(&format!("bytes={a}-{b}")), &stored);
    assert!(
        !arriving.stored_at_first_byte,
        "the range came after the whole blob"
    );
    check(&arriving, "arriving");

    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !stored.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(stored.exists(), "the blob never arrived whole");
    check(&get_blob(&url, Some(&format!("bytes={a}-{b}")), &stored), "whole");
    let tail = get_blob(&url, Some("bytes=-100"), &stored);
    assert_eq!(tail.status, 206);
    assert!(tail.body == s.blob[size - 100..]);

    for beyond in [format!("bytes={size}-"), "bytes=9-3".to_string()] {
        let r = reqwest::blocking::Client::new()
            .get(&url)
            .header("Range", &beyond)
            .send()
            .unwrap();
        assert_eq!(r.status(), 416, "{beyond}");
        assert_eq!(r.headers()["content-range"], format!("bytes */{size}").as_str());
    }
}

#[test]
fn head_of_a_blob_not_here_yet_answers_its_size_at_once() {
    let d = tempfile::tempdir().unwrap();
    let s = Swarm::start(d.path(), 1, 8, 0.0);
    // 4 Mbit/s: the blob takes about 17 s to arrive.
    let (_agent, mirror) = capped_mirror(&s, 4.0);
    let url = format!("{mirror}/v2/app/blobs/{}", s.digest);
    let started = std::time::Instant::now();
    let r = reqwest::blocking::Client::new().head(&url).send().unwrap();
    let took = started.elapsed();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], s.blob.len().to_string().as_str());
    assert_eq!(
        r.headers()["docker-content-digest"],
        s.digest.to_string().as_str()
    );
    assert!(
        !stored_blob(&s).exists(),
        "HEAD waited for the whole blob ({took:?})"
    );
    // A blob the origin does not have is unknown here too.
    let unknown = Digest::sha256_of(b"no such blob");
    let r = reqwest::blocking::Client::new()
        .head(format!("{mirror}/v2/app/blobs/{unknown}"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[test]
fn a_blob_whose_pieces_pass_but_whose_whole_digest_does_not_is_cut_off_not_finished() {
    let d = tempfile::tempdir().unwrap();
    let s = Swarm::start(d.path(), 1, 4, 0.0);
    // The origin lies: its file under the blob's digest holds other bytes
    // of the same size, and its piece table (made on push) is theirs, so
    // every piece passes its hash and only the whole digest tells.
    let origin_store = s.dir.join("origin/store");
    let table = origin_store.join(format!(
        "meta/pieces/{}-{}",
        s.digest.hex(),
        strata::p2p::pieces::DEFAULT_PIECE
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !table.is_file() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut t: strata::p2p::pieces::PieceTable =
        serde_json::from_slice(&std::fs::read(&table).unwrap()).unwrap();
    let other = noise(s.blob.len(), 99);
    t.hashes = other
        .chunks(t.piece_size as usize)
        .map(|c| Digest::sha256_of(c).hex().to_string())
        .collect();
    write(&table, serde_json::to_vec(&t).unwrap());
    write(
        &origin_store.join(format!("blobs/sha256/{}", s.digest.hex())),
        &other,
    );

    let (_agent, mirror) = capped_mirror(&s, 24.0);
    let url = format!("{mirror}/v2/app/blobs/{}", s.digest);
    let mut resp = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
        .get(&url)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-length"],
        s.blob.len().to_string().as_str()
    );
    let mut body = Vec::new();
    let read = std::io::Read::read_to_end(&mut resp, &mut body);
    eprintln!("cut off after {} of {} bytes: {read:?}", body.len(), s.blob.len());
    assert!(read.is_err(), "a blob with another digest was sent whole");
    assert!(
        body.len() < s.blob.len(),
        "{} bytes of {}",
        body.len(),
        s.blob.len()
    );
    assert!(!stored_blob(&s).exists(), "the agent stored a bad blob");
    let cut = common::metric(
        &common::scrape(&mirror, None),
        "strata_mirror_blobs_cut_off_total",
    );
    assert!(cut >= Some(1.0), "{cut:?}");
}
