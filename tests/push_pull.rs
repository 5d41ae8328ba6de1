//! `strata push` / `strata pull` against real registries: Debian's
//! `docker-registry` (distribution 2.8) and `strata serve`, including a
//! connection cut in the middle of a chunked upload, and the `oci-client`
//! crate as an independent client of `strata serve`.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::serve::Serve;
use common::*;
use serde_json::Value;

/// Builds `base` (a 20 MiB incompressible file and a small one) and
/// `app` on top of it into `dir/oci`; returns the store and layout.
fn build_stack(dir: &Path) -> (PathBuf, PathBuf) {
    write(&dir.join("files/opt/big.bin"), noise(20 << 20, 7));
    write(&dir.join("files/etc/motd"), "strata\n");
    write(
        &dir.join("layers.toml"),
        r#"
[tiers.base]
sources = [{ path = "files" }]

[tiers.app]
parent = "base"
sources = [{ content = "v1", dest = "/srv/version" }]
"#,
    );
    let store = dir.join("store");
    let layout = dir.join("oci");
    let o = strata()
        .env("STRATA_STORE", &store)
        .args(["build", "-c"])
        .arg(dir.join("layers.toml"))
        .arg("--layout")
        .arg(&layout)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    (store, layout)
}

/// Runs `strata push|pull … --json` with `store` and `layout`.
fn transfer(store: &Path, layout: &Path, args: &[&str], env: &[(&str, &str)]) -> (bool, Value, String) {
    let mut c = strata();
    c.env("STRATA_STORE", store)
        .env_remove("STRATA_REGISTRY_AUTH")
        .args(args)
        .arg("--layout")
        .arg(layout)
        .arg("--json");
    for (k, v) in env {
        c.env(k, v);
    }
    let o = c.output().unwrap();
    let v = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    (o.status.success(), v, stderr(&o))
}

fn outcomes(v: &Value) -> Vec<String> {
    v["blobs"]
        .as_array()
        .unwrap_or(&vec![])
        .iter()
        .map(|b| b["outcome"].as_str().unwrap_or("").to_string())
        .collect()
}

/// The manifest digest a layout names `name`.
fn layout_digest(layout: &Path, name: &str) -> String {
    let index: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == name)
        .unwrap_or_else(|| panic!("{name} not in {index}"))["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Debian's `docker-registry` on a free loopback port, killed on drop.
struct DockerRegistry {
    child: Child,
    port: u16,
}

impl DockerRegistry {
    fn start(dir: &Path) -> DockerRegistry {
        let port = free_port();
        let config = dir.join("registry.yml");
        write(
            &config,
            format!(
                "version: 0.1\nlog: {{ level: error }}\nstorage: {{ filesystem: {{ rootdirectory: {} }} }}\nhttp: {{ addr: 127.0.0.1:{port} }}\n",
                dir.join("dr-data").display()
            ),
        );
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let r = DockerRegistry { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }
}

impl Drop for DockerRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn push_and_pull_through_debians_docker_registry() {
    if !have_tool("docker-registry") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let (store, layout) = build_stack(d.path());
    let reg = DockerRegistry::start(d.path());
    let base_ref = format!("127.0.0.1:{}/t/base:1", reg.port);
    let app_ref = format!("127.0.0.1:{}/t/app:1", reg.port);

    // First push: everything travels; the 20 MiB layer in 8 MiB chunks.
    let (ok, v, err) = transfer(
        &store,
        &layout,
        &["push", "--chunk-mib", "8", "base", &base_ref],
        &[],
    );
    assert!(ok, "{err}");
    assert!(outcomes(&v).iter().all(|o| o == "transferred"), "{v}");
    assert!(v["bytes_transferred"].as_u64().unwrap() > 20 << 20, "{v}");
    assert_eq!(v["manifest"]["digest"], layout_digest(&layout, "base"));

    // Again: the registry has every blob, nothing travels.
    let (ok, v, err) = transfer(&store, &layout, &["push", "base", &base_ref], &[]);
    assert!(ok, "{err}");
    assert!(outcomes(&v).iter().all(|o| o == "present"), "{v}");

    // Another repository: base's layer is mounted, not sent again.
    let (ok, v, err) = transfer(&store, &layout, &["push", "app", &app_ref], &[]);
    assert!(ok, "{err}");
    let blobs = v["blobs"].as_array().unwrap();
    let mounted: Vec<_> = blobs.iter().filter(|b| b["outcome"] == "mounted").collect();
    assert!(
        !mounted.is_empty() && mounted.iter().all(|b| b["from"] == "t/base"),
        "{v}"
    );
    assert!(v["bytes_transferred"].as_u64().unwrap() < 1 << 20, "{v}");

    // Back into an empty store and layout: the same image, byte for byte.
    let store2 = d.path().join("store2");
    let layout2 = d.path().join("oci2");
    let (ok, v, err) = transfer(&store2, &layout2, &["pull", &app_ref], &[]);
    assert!(ok, "{err}");
    assert!(outcomes(&v).iter().all(|o| o == "transferred"), "{v}");
    assert_eq!(layout_digest(&layout2, "t/app:1"), layout_digest(&layout, "app"));
    assert!(strata::oci::layout::verify(&layout2).unwrap() >= 4);
    let (ok, v, err) = transfer(&store2, &layout2, &["pull", "--name", "again", &app_ref], &[]);
    assert!(ok, "{err}");
    assert!(outcomes(&v).iter().all(|o| o == "present"), "{v}");

    // A reference that is not there: a clear error naming it.
    let missing = format!("127.0.0.1:{}/t/nothing:1", reg.port);
    let (ok, _, err) = transfer(&store2, &layout2, &["pull", &missing], &[]);
    assert!(!ok);
    assert!(err.contains("t/nothing") && err.contains("404"), "{err}");
}

/// A TCP proxy that cuts every connection once the bytes it forwarded
/// towards the server pass `cut_after`, the first time only.
struct CuttingProxy {
    port: u16,
    stop: Arc<AtomicBool>,
    cuts: Arc<AtomicU64>,
}

impl CuttingProxy {
    fn start(upstream: u16, cut_after: u64) -> CuttingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let cuts = Arc::new(AtomicU64::new(0));
        let forwarded = Arc::new(AtomicU64::new(0));
        let (stop2, cuts2) = (stop.clone(), cuts.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(300);
            while !stop2.load(Ordering::SeqCst) && Instant::now() < deadline {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                client.set_nonblocking(false).unwrap();
                let server = TcpStream::connect(("127.0.0.1", upstream)).unwrap();
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (fw, cuts3) = (forwarded.clone(), cuts2.clone());
                // Client → server, counting, cutting once.
                std::thread::spawn(move || pump(client, server, Some((fw, cut_after, cuts3))));
                std::thread::spawn(move || pump(s2, c2, None));
            }
        });
        CuttingProxy { port, stop, cuts }
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, cut: Option<(Arc<AtomicU64>, u64, Arc<AtomicU64>)>) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some((total, after, cuts)) = &cut {
            let before = total.fetch_add(n as u64, Ordering::SeqCst);
            if before < *after && before + n as u64 >= *after {
                cuts.fetch_add(1, Ordering::SeqCst);
                break;
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

#[test]
fn push_to_strata_serve_needs_a_credential_and_survives_a_cut_connection() {
    let d = tempfile::tempdir().unwrap();
    let (store, layout) = build_stack(d.path());
    let s = Serve::start(&d.path().join("data"));

    // No credential: refused, and the message says what to do.
    let target = format!("127.0.0.1:{}/team/base:1", s.port);
    let (ok, _, err) = transfer(&store, &layout, &["push", "base", &target], &[]);
    assert!(!ok);
    assert!(err.contains("credential") && err.contains("--user"), "{err}");

    // Through a proxy that drops the connection once, 13 MiB into the
    // upload: the chunk is resumed from the registry's count.
    let proxy = CuttingProxy::start(s.port, 13 << 20);
    let via = format!("127.0.0.1:{}/team/base:1", proxy.port);
    let (ok, v, err) = transfer(
        &store,
        &layout,
        &["push", "--chunk-mib", "4", "base", &via],
        &[("STRATA_REGISTRY_AUTH", &s.token)],
    );
    assert!(ok, "{err}");
    assert_eq!(proxy.cuts.load(Ordering::SeqCst), 1, "the proxy cut the upload");
    assert!(err.contains("retrying"), "the retry is reported: {err}");
    assert_eq!(v["manifest"]["digest"], layout_digest(&layout, "base"));

    // Pulled back anonymously (pull is open by default), same digest; the
    // registry verified every byte on the way in.
    let store2 = d.path().join("store2");
    let layout2 = d.path().join("oci2");
    let (ok, _, err) = transfer(&store2, &layout2, &["pull", &target], &[]);
    assert!(ok, "{err}");
    assert_eq!(
        layout_digest(&layout2, "team/base:1"),
        layout_digest(&layout, "base")
    );
    assert_eq!(strata::oci::layout::verify(&layout2).unwrap(), 3);
}

#[test]
fn the_oci_client_crate_pulls_and_pushes_through_strata_serve() {
    use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
    use oci_client::secrets::RegistryAuth;

    let d = tempfile::tempdir().unwrap();
    let (store, layout) = build_stack(d.path());
    let s = Serve::start(&d.path().join("data"));
    let target = format!("127.0.0.1:{}/team/app:1", s.port);
    let (ok, _, err) = transfer(
        &store,
        &layout,
        &["push", "app", &target],
        &[("STRATA_REGISTRY_AUTH", &s.token)],
    );
    assert!(ok, "{err}");

    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = oci_client::Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..Default::default()
    });
    // Pull what strata pushed: every layer's bytes match its digest.
    let reference: oci_client::Reference = target.parse().unwrap();
    let image = rt
        .block_on(client.pull(
            &reference,
            &RegistryAuth::Anonymous,
            vec![strata::oci::MEDIA_LAYER_ZSTD, strata::oci::MEDIA_LAYER_GZIP],
        ))
        .unwrap();
    let manifest = image.manifest.unwrap();
    assert_eq!(manifest.layers.len(), image.layers.len());
    assert_eq!(
        image.digest.as_deref(),
        Some(layout_digest(&layout, "app").as_str())
    );
    // (oci-client returns layers in the order they finished.)
    let mut want: Vec<_> = manifest.layers.iter().map(|l| l.digest.clone()).collect();
    let mut got: Vec<_> = image
        .layers
        .iter()
        .map(|l| format!("sha256:{}", sha256_hex(&l.data)))
        .collect();
    want.sort();
    got.sort();
    assert_eq!(got, want);

    // Push with oci-client (Basic auth with the token), pull with strata.
    let pushed: oci_client::Reference = format!("127.0.0.1:{}/team/artifact:v1", s.port).parse().unwrap();
    let layer = ImageLayer::new(
        b"hello from oci-client".to_vec(),
        strata::oci::MEDIA_LAYER_TAR.to_string(),
        None,
    );
    let config = Config::new(
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#.to_vec(),
        strata::oci::MEDIA_CONFIG.to_string(),
        None,
    );
    // A fresh client: oci-client keeps the first auth it used per registry.
    let client = oci_client::Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..Default::default()
    });
    rt.block_on(client.push(
        &pushed,
        &[layer],
        config,
        &RegistryAuth::Basic("tests".into(), s.token.clone()),
        None,
    ))
    .unwrap();
    let store2 = d.path().join("store2");
    let layout2 = d.path().join("oci2");
    let (ok, v, err) = transfer(&store2, &layout2, &["pull", &pushed.to_string()], &[]);
    assert!(ok, "{err}");
    assert_eq!(outcomes(&v).len(), 2, "{v}");
    assert!(strata::oci::layout::verify(&layout2).unwrap() >= 3);
}
