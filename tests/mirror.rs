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
