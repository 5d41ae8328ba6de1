//! Independent clients of a real `strata serve` (issue 18): the
//! `oci-client` crate pushes an image, pulls it back, mounts its blobs into
//! another repository and lists referrers; skopeo copies an OCI layout in,
//! inspects it, copies it to a second repository (mounting the blobs, which
//! a count of the bytes sent to the registry proves) and back out. Every
//! test makes content unique to its run, so nothing a machine already holds
//! (a registry's blobs, skopeo's blob-info cache) can make it pass.
//!
//! What other files already cover: `push_pull.rs` pulls a `strata push`ed
//! image with `oci-client` and pulls an `oci-client` push with `strata
//! pull`; `registry_corners.rs` has `oci-client`'s ranged pull and its mount
//! from a repository with and without the blob, skopeo with foreign layers,
//! sparse indexes and the token flow; `registry.rs` copies a built Tomcat
//! in and out with skopeo (only where Docker and the Debian packages are)
//! and lists referrers over raw HTTP.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::serve::{Serve, push_blob};
use common::*;
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::{OciDescriptor, OciImageManifest, OciManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client as OciClient, Reference};
use serde_json::{Value, json};
use strata::digest::Digest;
use strata::oci::{MEDIA_CONFIG, MEDIA_INDEX, MEDIA_LAYER_TAR, MEDIA_MANIFEST};

const EMPTY: &str = "application/vnd.oci.empty.v1+json";

/// A seed no earlier run used: the clock and the process id.
fn run_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    nanos ^ (u64::from(std::process::id()) << 32)
}

/// An uncompressed tar holding one file.
fn tar_with(path: &str, body: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(body.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    b.append_data(&mut h, path, body).unwrap();
    b.into_inner().unwrap()
}

/// A two-layer image whose bytes belong to this run: 6 MiB of noise (two
/// of `oci-client`'s 4 MiB chunks) and a small file naming the seed.
fn unique_image(seed: u64) -> (Vec<ImageLayer>, Config) {
    let layers = vec![
        tar_with("opt/noise.bin", &noise(6 << 20, seed)),
        tar_with("etc/run-id", format!("{seed}\n").as_bytes()),
    ];
    let diff_ids: Vec<String> = layers.iter().map(|l| Digest::sha256_of(l).to_string()).collect();
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Env": [format!("RUN={seed}")] },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    });
    (
        layers
            .into_iter()
            .map(|l| ImageLayer::new(l, MEDIA_LAYER_TAR.to_string(), None))
            .collect(),
        Config::new(
            serde_json::to_vec(&config).unwrap(),
            MEDIA_CONFIG.to_string(),
            None,
        ),
    )
}

fn oci_client() -> OciClient {
    OciClient::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..Default::default()
    })
}

fn tagged(s: &Serve, repo: &str, tag: &str) -> Reference {
    Reference::with_tag(format!("127.0.0.1:{}", s.port), repo.into(), tag.into())
}

fn by_digest(s: &Serve, repo: &str, digest: &str) -> Reference {
    Reference::with_digest(format!("127.0.0.1:{}", s.port), repo.into(), digest.into())
}

fn push_auth(s: &Serve) -> RegistryAuth {
    RegistryAuth::Basic("tests".into(), s.token.clone())
}

#[test]
fn oci_client_pushes_pulls_and_mounts_an_image_of_this_run() {
    let d = tempfile::tempdir().unwrap();
    let s = Serve::start(&d.path().join("data"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = oci_client();
    let auth = push_auth(&s);
    let (layers, config) = unique_image(run_seed());
    let sent: BTreeMap<String, Vec<u8>> = layers
        .iter()
        .map(|l| (l.sha256_digest(), l.data.to_vec()))
        .chain([(config.sha256_digest(), config.data.to_vec())])
        .collect();
    let src = tagged(&s, "clients/src", "v1");
    let dst = tagged(&s, "clients/dst", "v1");

    rt.block_on(async {
        client
            .push(&src, &layers, config.clone(), &auth, None)
            .await
            .unwrap();

        // Pulled back: the same bytes under the same digests, layers in
        // the manifest's order, and the digest the registry names is the
        // one of the bytes it served.
        let image = client.pull(&src, &auth, vec![MEDIA_LAYER_TAR]).await.unwrap();
        let manifest = image.manifest.clone().unwrap();
        let want: Vec<String> = layers.iter().map(|l| l.sha256_digest()).collect();
        let got: Vec<String> = manifest.layers.iter().map(|l| l.digest.clone()).collect();
        assert_eq!(got, want);
        for l in &image.layers {
            assert_eq!(Some(&l.data.to_vec()), sent.get(&l.sha256_digest()));
        }
        assert_eq!(image.config.data, config.data);
        let (raw, digest) = client
            .pull_manifest_raw(&src, &auth, &[MEDIA_MANIFEST])
            .await
            .unwrap();
        assert_eq!(digest, Digest::sha256_of(&raw).to_string());
        assert_eq!(image.digest.as_deref(), Some(digest.as_str()));
        assert_eq!(client.fetch_manifest_digest(&src, &auth).await.unwrap(), digest);

        // Mounted into another repository: absent there before, readable
        // there after, and enough for the manifest to be accepted there
        // (the registry takes a manifest only when its repository holds
        // every blob it names).
        for (blob, bytes) in &sent {
            assert!(!client.blob_exists(&dst, blob).await.unwrap(), "{blob}");
            client.mount_blob(&dst, &src, blob).await.unwrap();
            assert!(client.blob_exists(&dst, blob).await.unwrap(), "{blob}");
            let mut out = Vec::new();
            client.pull_blob(&dst, blob.as_str(), &mut out).await.unwrap();
            assert!(out == *bytes, "{blob}: other bytes in the target repository");
        }
        client
            .push_manifest_raw(&dst, raw.clone(), MEDIA_MANIFEST.parse().unwrap())
            .await
            .unwrap();
        let copy = client.pull(&dst, &auth, vec![MEDIA_LAYER_TAR]).await.unwrap();
        assert_eq!(copy.digest, Some(digest));
        assert_eq!(copy.layers.len(), 2);
    });
}

/// A referrer's descriptor as the referrers API lists it.
fn listed(list: &oci_client::manifest::OciImageIndex, digest: &str) -> Value {
    let all = serde_json::to_value(&list.manifests).unwrap();
    all.as_array()
        .unwrap()
        .iter()
        .find(|m| m["digest"] == digest)
        .cloned()
        .unwrap_or_else(|| panic!("{digest} is not listed: {all}"))
}

#[test]
fn oci_client_lists_the_referrers_of_an_image() {
    let d = tempfile::tempdir().unwrap();
    let s = Serve::start_with(&d.path().join("data"), &["--allow-delete"]);
    let c = s.client();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = oci_client();
    let auth = push_auth(&s);
    let seed = run_seed();
    let (layers, config) = unique_image(seed);
    let repo = "clients/app";
    let app = tagged(&s, repo, "v1");
    let (image_raw, image_digest) = rt.block_on(async {
        client.push(&app, &layers, config, &auth, None).await.unwrap();
        client
            .pull_manifest_raw(&app, &auth, &[MEDIA_MANIFEST])
            .await
            .unwrap()
    });
    let subject = OciDescriptor {
        media_type: MEDIA_MANIFEST.into(),
        digest: image_digest.clone(),
        size: image_raw.len() as i64,
        ..Default::default()
    };

    // The blobs artifacts name: the empty config `{}` and one payload each.
    let empty = push_blob(&s, &c, repo, b"{}");
    let sbom = push_blob(&s, &c, repo, format!("sbom of {seed}").as_bytes());
    let sig_config = push_blob(&s, &c, repo, format!("{{\"run\":{seed}}}").as_bytes());
    let sig = push_blob(&s, &c, repo, format!("signature of {seed}").as_bytes());
    let desc = |media: &str, d: &Digest, size: usize| OciDescriptor {
        media_type: media.into(),
        digest: d.to_string(),
        size: size as i64,
        ..Default::default()
    };

    // An SBOM, pushed by oci-client: an artifact with the empty config
    // and its own artifactType and annotations.
    let sbom_type = "application/vnd.example.sbom.v1+json";
    let annotations = BTreeMap::from([
        (
            "org.opencontainers.image.created".to_string(),
            "2026-01-01T00:00:00Z".to_string(),
        ),
        ("dev.strata.test.run".to_string(), seed.to_string()),
    ]);
    let sbom_manifest = OciImageManifest {
        schema_version: 2,
        media_type: Some(MEDIA_MANIFEST.into()),
        config: desc(EMPTY, &empty, 2),
        layers: vec![desc(
            "application/spdx+json",
            &sbom,
            format!("sbom of {seed}").len(),
        )],
        subject: Some(subject.clone()),
        artifact_type: Some(sbom_type.into()),
        annotations: Some(annotations.clone()),
    };
    let sbom_ref = tagged(&s, repo, "sbom");
    let (sbom_raw, sbom_digest) = rt.block_on(async {
        client
            .push_manifest(&sbom_ref, &OciManifest::Image(sbom_manifest))
            .await
            .unwrap();
        client
            .pull_manifest_raw(&sbom_ref, &auth, &[MEDIA_MANIFEST])
            .await
            .unwrap()
    });

    // A signature with no artifactType, pushed by digest over raw HTTP:
    // the answer names the subject, and the list takes the artifact type
    // from the config's media type (distribution spec 1.1).
    let sig_config_type = "application/vnd.example.signature.config.v1+json";
    let sig_body = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": { "mediaType": sig_config_type, "digest": sig_config.to_string(),
                    "size": format!("{{\"run\":{seed}}}").len() },
        "layers": [{ "mediaType": "application/octet-stream", "digest": sig.to_string(),
                     "size": format!("signature of {seed}").len() }],
        "subject": subject,
    }))
    .unwrap();
    let sig_digest = Digest::sha256_of(&sig_body).to_string();
    let r = c
        .put(s.url(&format!("/v2/{repo}/manifests/{sig_digest}")))
        .header("Content-Type", MEDIA_MANIFEST)
        .body(sig_body.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["oci-subject"], image_digest.as_str());
    assert_eq!(r.headers()["docker-content-digest"], sig_digest.as_str());

    // An index may refer to a subject as well.
    let bundle_type = "application/vnd.example.bundle.v1";
    let bundle_body = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "artifactType": bundle_type,
        "manifests": [{ "mediaType": MEDIA_MANIFEST, "digest": sbom_digest, "size": sbom_raw.len() }],
        "subject": subject,
    }))
    .unwrap();
    let bundle_digest = Digest::sha256_of(&bundle_body).to_string();
    rt.block_on(client.push_manifest_raw(
        &by_digest(&s, repo, &bundle_digest),
        bundle_body.clone(),
        MEDIA_INDEX.parse().unwrap(),
    ))
    .unwrap();

    // A referrer of the same digest in another repository, pushed before
    // any subject exists there (the spec lets a referrer come first).
    let other = "clients/other";
    let other_empty = push_blob(&s, &c, other, b"{}");
    let other_body = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "artifactType": sbom_type,
        "config": { "mediaType": EMPTY, "digest": other_empty.to_string(), "size": 2, "data": "e30=" },
        "layers": [{ "mediaType": EMPTY, "digest": other_empty.to_string(), "size": 2, "data": "e30=" }],
        "subject": subject,
    }))
    .unwrap();
    let other_digest = Digest::sha256_of(&other_body).to_string();
    rt.block_on(client.push_manifest_raw(
        &by_digest(&s, other, &other_digest),
        other_body,
        MEDIA_MANIFEST.parse().unwrap(),
    ))
    .unwrap();

    let subject_ref = by_digest(&s, repo, &image_digest);
    let all = rt.block_on(client.pull_referrers(&subject_ref, None)).unwrap();
    assert_eq!(all.media_type.as_deref(), Some(MEDIA_INDEX));
    assert_eq!(all.manifests.len(), 3, "{:?}", all.manifests);
    let m = listed(&all, &sbom_digest);
    assert_eq!(m["mediaType"], MEDIA_MANIFEST);
    assert_eq!(m["artifactType"], sbom_type);
    assert_eq!(m["annotations"], serde_json::to_value(&annotations).unwrap());
    let m = listed(&all, &sig_digest);
    assert_eq!(m["artifactType"], sig_config_type);
    assert_eq!(m["size"], sig_body.len());
    assert!(m.get("annotations").is_none(), "{m}");
    let m = listed(&all, &bundle_digest);
    assert_eq!(m["mediaType"], MEDIA_INDEX);
    assert_eq!(m["artifactType"], bundle_type);
    assert_eq!(m["size"], bundle_body.len());

    // Filtered by the registry: oci-client filters only when it falls
    // back to the tag schema, so what comes back is the server's filter.
    let only = rt
        .block_on(client.pull_referrers(&subject_ref, Some(sbom_type)))
        .unwrap();
    let digests: Vec<&str> = only.manifests.iter().map(|m| m.digest.as_str()).collect();
    assert_eq!(digests, [sbom_digest.as_str()]);
    let none = rt
        .block_on(client.pull_referrers(&subject_ref, Some("application/vnd.example.none")))
        .unwrap();
    assert!(none.manifests.is_empty());
    let elsewhere = rt
        .block_on(client.pull_referrers(&by_digest(&s, other, &image_digest), None))
        .unwrap();
    let digests: Vec<&str> = elsewhere.manifests.iter().map(|m| m.digest.as_str()).collect();
    assert_eq!(digests, [other_digest.as_str()]);

    // The answer is an OCI index, and says when it was filtered.
    let r = c
        .get(s.url(&format!(
            "/v2/{repo}/referrers/{image_digest}?artifactType={sbom_type}"
        )))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], MEDIA_INDEX);
    assert_eq!(r.headers()["oci-filters-applied"], "artifactType");

    // A deleted referrer is no longer listed.
    let r = c
        .delete(s.url(&format!("/v2/{repo}/manifests/{sig_digest}")))
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    let after = rt.block_on(client.pull_referrers(&subject_ref, None)).unwrap();
    let mut digests: Vec<&str> = after.manifests.iter().map(|m| m.digest.as_str()).collect();
    digests.sort();
    let mut want = [sbom_digest.as_str(), bundle_digest.as_str()];
    want.sort();
    assert_eq!(digests, want);
}

/// A TCP proxy in front of a registry that counts the bytes clients send.
struct CountingProxy {
    port: u16,
    sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl CountingProxy {
    fn start(upstream: u16) -> CountingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let sent = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (sent2, stop2) = (sent.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                client.set_nonblocking(false).unwrap();
                let server = TcpStream::connect(("127.0.0.1", upstream)).unwrap();
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let sent3 = sent2.clone();
                std::thread::spawn(move || pump(client, server, Some(sent3)));
                std::thread::spawn(move || pump(s2, c2, None));
            }
        });
        CountingProxy { port, sent, stop }
    }

    fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, count: Option<Arc<AtomicU64>>) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(c) = &count {
            c.fetch_add(n as u64, Ordering::SeqCst);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

fn skopeo(args: &[&str]) -> std::process::Output {
    let o = Command::new("skopeo").args(args).output().unwrap();
    assert!(o.status.success(), "skopeo {}: {}", args.join(" "), stderr(&o));
    o
}

/// The manifest a layout's index names `name`: its digest and bytes.
fn layout_manifest(layout: &Path, name: &str) -> (String, Vec<u8>) {
    let index: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let digest = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == name)
        .unwrap_or_else(|| panic!("{name} not in {index}"))["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let bytes = layout_blob(layout, &digest);
    (digest, bytes)
}

fn layout_blob(layout: &Path, digest: &str) -> Vec<u8> {
    let (alg, hex) = digest.split_once(':').unwrap();
    std::fs::read(layout.join("blobs").join(alg).join(hex)).unwrap()
}

#[test]
fn skopeo_copies_a_layout_in_between_repositories_and_back_out() {
    if !have_tool("skopeo") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let seed = run_seed();
    // A strata-built image of this run: 4 MiB of noise in the base tier,
    // the seed in the app tier's file, env and labels.
    write(&d.path().join("files/opt/noise.bin"), noise(4 << 20, seed));
    write(
        &d.path().join("layers.toml"),
        format!(
            r#"
[tiers.base]
sources = [{{ path = "files" }}]

[tiers.app]
parent = "base"
sources = [{{ content = "{seed}", dest = "/srv/run-id" }}]
env = {{ RUN = "{seed}" }}
labels = {{ "org.opencontainers.image.title" = "clients", "dev.strata.test.run" = "{seed}" }}
ports = [8080]
"#
        ),
    );
    let layout = d.path().join("oci");
    let o = strata()
        .env("STRATA_STORE", d.path().join("store"))
        .args(["build", "-c"])
        .arg(d.path().join("layers.toml"))
        .arg("--layout")
        .arg(&layout)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let (digest, manifest) = layout_manifest(&layout, "app");
    let m: Value = serde_json::from_slice(&manifest).unwrap();
    let config_digest = m["config"]["digest"].as_str().unwrap();

    let s = Serve::start(&d.path().join("data"));
    // Every skopeo call goes through the proxy: skopeo remembers where it
    // put a blob by registry host and port, and mounts only from there.
    let proxy = CountingProxy::start(s.port);
    let at = |repo: &str| format!("docker://127.0.0.1:{}/{repo}:1", proxy.port);
    let creds = format!("tests:{}", s.token);
    let src = format!("oci:{}:app", layout.display());
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        &creds,
        &src,
        &at("clients/one"),
    ]);
    let pushed = proxy.sent();
    assert!(pushed > 4 << 20, "the first copy sent only {pushed} bytes");

    // Inspected: skopeo sees the manifest and config bytes of the layout.
    let o = skopeo(&["inspect", "--tls-verify=false", &at("clients/one")]);
    let info: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(info["Digest"], digest.as_str());
    let layer_digests: Vec<&Value> = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| &l["digest"])
        .collect();
    assert_eq!(
        info["Layers"].as_array().unwrap().iter().collect::<Vec<_>>(),
        layer_digests
    );
    assert_eq!(info["Labels"]["dev.strata.test.run"], seed.to_string());
    assert!(
        info["Env"]
            .as_array()
            .unwrap()
            .contains(&json!(format!("RUN={seed}"))),
        "{info}"
    );
    let o = skopeo(&["inspect", "--raw", "--tls-verify=false", &at("clients/one")]);
    assert!(o.stdout == manifest, "the registry served other manifest bytes");
    let o = skopeo(&[
        "inspect",
        "--config",
        "--raw",
        "--tls-verify=false",
        &at("clients/one"),
    ]);
    assert!(
        o.stdout == layout_blob(&layout, config_digest),
        "other config bytes"
    );
    let o = skopeo(&[
        "list-tags",
        "--tls-verify=false",
        &format!("docker://127.0.0.1:{}/clients/one", proxy.port),
    ]);
    let tags: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(tags["Tags"], json!(["1"]));

    // Copied to a second repository of the same registry: skopeo mounts
    // the blobs instead of sending them again.
    let before = proxy.sent();
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        "--dest-creds",
        &creds,
        &at("clients/one"),
        &at("clients/two"),
    ]);
    let copied = proxy.sent() - before;
    assert!(
        copied < 256 << 10,
        "copying between repositories sent {copied} bytes: the blobs were uploaded, not mounted"
    );
    let o = skopeo(&["inspect", "--raw", "--tls-verify=false", &at("clients/two")]);
    assert!(o.stdout == manifest);
    for l in &layer_digests {
        let r =
            reqwest::blocking::get(s.url(&format!("/v2/clients/two/blobs/{}", l.as_str().unwrap()))).unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            Digest::sha256_of(&r.bytes().unwrap()).to_string(),
            l.as_str().unwrap()
        );
    }

    // And out again into a layout: the same manifest, every blob intact.
    let back = d.path().join("back");
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &at("clients/two"),
        &format!("oci:{}:x", back.display()),
    ]);
    assert_eq!(layout_manifest(&back, "x"), (digest, manifest));
    assert_eq!(strata::oci::layout::verify(&back).unwrap(), 4);
}
