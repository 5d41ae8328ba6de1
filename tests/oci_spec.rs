//! strata's image JSON against the `oci-spec` crate, an implementation of
//! the image spec that strata's own types did not come from: every
//! manifest, index and config strata writes (builder tiers, empty-layer
//! tiers, images based on a docker-archive or a layout, gzip variants, the
//! layout's index, an agent's rewritten index, the registry's referrers
//! answer) parses with it and means the same JSON. The other tests pin down
//! why the builder still writes with its own types (ARCHITECTURE.md, "Why
//! strata keeps its own OCI types"): oci-spec writes maps in hash order
//! and a platform's `os.version` under another name.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::serve::{Serve, push_blob};
use common::*;
use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest, MediaType};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use strata::digest::Digest;
use strata::oci::{self, Descriptor, ImageConfig, Index, Manifest, Platform, to_json};

/// Parses `bytes` with oci-spec's `T` and checks that it means the same
/// JSON: no field lost, none added, none of a type oci-spec reads
/// differently.
fn same_under_oci_spec<T: DeserializeOwned + Serialize>(what: &str, bytes: &[u8]) -> T {
    let parsed: T = serde_json::from_slice(bytes).unwrap_or_else(|e| {
        panic!(
            "{what}: oci-spec refuses it: {e}\n{}",
            String::from_utf8_lossy(bytes)
        )
    });
    let ours: Value = serde_json::from_slice(bytes).unwrap();
    assert_eq!(serde_json::to_value(&parsed).unwrap(), ours, "{what}");
    parsed
}

fn blob(layout: &Path, digest: &str) -> Vec<u8> {
    let (alg, hex) = digest.split_once(':').unwrap();
    std::fs::read(layout.join("blobs").join(alg).join(hex)).unwrap()
}

/// Checks a manifest strata wrote, its config and every descriptor's size
/// and digest against the blobs in `layout`; returns its layer types.
fn check_image(what: &str, layout: &Path, bytes: &[u8]) -> Vec<MediaType> {
    let m: ImageManifest = same_under_oci_spec(what, bytes);
    assert_eq!(m.schema_version(), 2, "{what}");
    assert_eq!(m.media_type(), &Some(MediaType::ImageManifest), "{what}");
    assert_eq!(m.config().media_type(), &MediaType::ImageConfig, "{what}");
    for d in std::iter::once(m.config()).chain(m.layers()) {
        let b = blob(layout, d.digest().as_ref());
        assert_eq!(b.len() as u64, d.size(), "{what}: {}", d.digest());
        assert_eq!(
            Digest::sha256_of(&b).to_string(),
            d.digest().to_string(),
            "{what}"
        );
    }
    let config_bytes = blob(layout, m.config().digest().as_ref());
    let c: ImageConfiguration = same_under_oci_spec(&format!("{what}'s config"), &config_bytes);
    assert_eq!(c.rootfs().typ(), "layers", "{what}");
    assert_eq!(c.rootfs().diff_ids().len(), m.layers().len(), "{what}");
    let history = c.history().clone().unwrap_or_default();
    let with_layer = history.iter().filter(|h| h.empty_layer() != Some(true)).count();
    assert_eq!(
        with_layer,
        m.layers().len(),
        "{what}: history entries with a layer"
    );
    m.layers().iter().map(|l| l.media_type().clone()).collect()
}

/// Every image a layout's index names, after checking the index itself.
fn check_layout(layout: &Path) -> BTreeMap<String, Vec<u8>> {
    let index: ImageIndex =
        same_under_oci_spec("index.json", &std::fs::read(layout.join("index.json")).unwrap());
    assert_eq!(index.schema_version(), 2);
    index
        .manifests()
        .iter()
        .map(|d| {
            let name = d.annotations().as_ref().unwrap()[oci::ANNOTATION_REF_NAME].clone();
            let bytes = blob(layout, d.digest().as_ref());
            assert_eq!(bytes.len() as u64, d.size(), "{name}");
            (name, bytes)
        })
        .collect()
}

#[test]
fn everything_strata_writes_parses_with_oci_spec_and_means_the_same() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    // An empty-layer tier between two with files, and an app tier that
    // sets every config field layers.toml has.
    write(&d.path().join("files/etc/motd"), "strata\n");
    write(&d.path().join("files/opt/noise.bin"), noise(64 << 10, 18));
    write(
        &d.path().join("layers.toml"),
        r#"
[tiers.base]
sources = [{ path = "files" }]
env = { PATH = "/usr/bin:/bin" }

[tiers.labelled]
parent = "base"
labels = { "org.opencontainers.image.vendor" = "strata" }

[tiers.app]
parent = "labelled"
sources = [{ content = "v1", dest = "/srv/version" }]
env = { JAVA_OPTS = "-Xmx1g", PATH = "/opt/app/bin:${PATH}" }
entrypoint = ["/opt/app/bin/run"]
cmd = ["--serve"]
user = "1000:1000"
workdir = "/srv"
ports = [8080, "8443/tcp"]
volumes = ["/var/log/app", "/data"]
labels = { "org.opencontainers.image.title" = "app", "org.opencontainers.image.version" = "1", "dev.strata.test" = "oci-spec" }
stop_signal = "SIGTERM"
"#,
    );
    let o = strata()
        .env("STRATA_STORE", &store)
        .args(["build", "-c"])
        .arg(d.path().join("layers.toml"))
        .arg("--layout")
        .arg(d.path().join("oci"))
        .arg("--docker-archive")
        .arg(d.path().join("stack.tar"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    // Images based on that build's output: a docker-archive (imported,
    // its layers gzip) and an OCI layout.
    write(
        &d.path().join("second/layers.toml"),
        r#"
[tiers.imported]
base = "docker-archive:../stack.tar:strata/app:latest"

[tiers.onlayout]
base = "oci:../oci:app"
sources = [{ content = "v2", dest = "/srv/version" }]
"#,
    );
    let o = strata()
        .env("STRATA_STORE", &store)
        .current_dir(d.path().join("second"))
        .args(["build", "--layout", "oci"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));

    let layout = d.path().join("oci");
    let images = check_layout(&layout);
    assert_eq!(images.keys().collect::<Vec<_>>(), ["app", "base", "labelled"]);
    for (name, bytes) in &images {
        let layers = check_image(name, &layout, bytes);
        assert!(layers.iter().all(|t| *t == MediaType::ImageLayerZstd), "{name}");
    }
    let second = d.path().join("second/oci");
    let based = check_layout(&second);
    assert_eq!(based.keys().collect::<Vec<_>>(), ["imported", "onlayout"]);
    for (name, bytes) in &based {
        check_image(name, &second, bytes);
    }
    let app: ImageManifest = serde_json::from_slice(&images["app"]).unwrap();
    let config: ImageConfiguration =
        serde_json::from_slice(&blob(&layout, app.config().digest().as_ref())).unwrap();
    let runtime = config.config().clone().unwrap();
    assert_eq!(runtime.labels().as_ref().unwrap().len(), 4);
    assert_eq!(
        runtime
            .exposed_ports()
            .clone()
            .unwrap()
            .into_iter()
            .collect::<BTreeSet<_>>(),
        BTreeSet::from(["8080/tcp".to_string(), "8443/tcp".to_string()])
    );
    assert_eq!(runtime.stop_signal().as_deref(), Some("SIGTERM"));

    // The gzip variant `strata push --gzip` makes, as the registry serves it.
    let s = Serve::start(&d.path().join("data"));
    let target = format!("127.0.0.1:{}/t/app:gz", s.port);
    let o = strata()
        .env("STRATA_STORE", &store)
        .env("STRATA_REGISTRY_AUTH", &s.token)
        .args(["push", "--gzip", "app", &target, "--layout"])
        .arg(&layout)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let c = s.client();
    let r = c
        .get(s.url("/v2/t/app/manifests/gz"))
        .header("Accept", oci::MANIFEST_ACCEPT)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let gzip = r.bytes().unwrap().to_vec();
    let gzip_layers = check_image("the gzip variant", &store, &gzip);
    assert!(gzip_layers.iter().all(|t| *t == MediaType::ImageLayerGzip));

    // An index of the image, and an agent's rewrite of it for an engine
    // that reads no zstd (the child for its platform swapped for the
    // variant, everything else kept).
    let app_desc = Descriptor {
        platform: Some(Platform {
            architecture: "amd64".into(),
            os: "linux".into(),
        }),
        ..Descriptor::new(
            oci::MEDIA_MANIFEST,
            Digest::sha256_of(&images["app"]),
            images["app"].len() as u64,
        )
    };
    let mut index = Index::new();
    index.manifests.push(app_desc.clone());
    index.annotations.insert("dev.strata.test".into(), "index".into());
    let index = to_json(&index);
    same_under_oci_spec::<ImageIndex>("an index", &index);
    let variant = Descriptor::new(oci::MEDIA_MANIFEST, Digest::sha256_of(&gzip), gzip.len() as u64);
    let rewritten =
        strata::p2p::transcode::rewrite_index(&index, &BTreeMap::from([(app_desc.digest.clone(), variant)]))
            .unwrap();
    let rewritten: ImageIndex = same_under_oci_spec("the rewritten index", &rewritten);
    assert_eq!(
        rewritten.manifests()[0].digest().to_string(),
        Digest::sha256_of(&gzip).to_string()
    );

    // The registry's referrers answer.
    let cfg = push_blob(&s, &c, "t/app", b"{}");
    let artifact = json!({
        "schemaVersion": 2,
        "mediaType": oci::MEDIA_MANIFEST,
        "artifactType": "application/vnd.example.sbom",
        "config": { "mediaType": "application/vnd.oci.empty.v1+json", "digest": cfg.to_string(), "size": 2 },
        "layers": [],
        "subject": { "mediaType": oci::MEDIA_MANIFEST, "digest": Digest::sha256_of(&gzip).to_string(), "size": gzip.len() },
        "annotations": { "dev.strata.test": "referrer" },
    })
    .to_string();
    let r = c
        .put(s.url(&format!(
            "/v2/t/app/manifests/{}",
            Digest::sha256_of(artifact.as_bytes())
        )))
        .header("Content-Type", oci::MEDIA_MANIFEST)
        .body(artifact)
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = c
        .get(s.url(&format!("/v2/t/app/referrers/{}", Digest::sha256_of(&gzip))))
        .send()
        .unwrap();
    let list: ImageIndex = same_under_oci_spec("the referrers answer", &r.bytes().unwrap());
    assert_eq!(list.manifests().len(), 1);
    assert_eq!(
        list.manifests()[0].artifact_type(),
        &Some(MediaType::Other("application/vnd.example.sbom".into()))
    );
}

/// oci-spec's JSON of `bytes` (parsed afresh each time, so each map gets
/// its own hasher, as in separate builds) over `runs` runs.
fn oci_spec_outputs<T: DeserializeOwned + Serialize>(bytes: &[u8], runs: usize) -> BTreeSet<Vec<u8>> {
    (0..runs)
        .map(|_| serde_json::to_vec(&serde_json::from_slice::<T>(bytes).unwrap()).unwrap())
        .collect()
}

#[test]
fn oci_spec_writes_maps_in_hash_order_so_its_bytes_are_not_reproducible() {
    // A config as the builder makes it: labels, ports and volumes.
    let mut config = ImageConfig::empty("linux", "amd64");
    for (k, v) in [("a", "1"), ("b", "2"), ("c", "3"), ("d", "4")] {
        config.config.labels.insert(format!("org.example.{k}"), v.into());
    }
    for p in ["80/tcp", "443/tcp", "8080/tcp"] {
        config.config.exposed_ports.insert(p.into(), Default::default());
    }
    let ours = to_json(&config);
    // strata's bytes survive a round trip through its own types...
    assert_eq!(
        to_json(&serde_json::from_slice::<ImageConfig>(&ours).unwrap()),
        ours
    );
    // ...oci-spec's change from one parse to the next (HashMap order),
    // though every one of them means the same JSON.
    let outputs = oci_spec_outputs::<ImageConfiguration>(&ours, 32);
    assert!(outputs.len() > 1, "oci-spec wrote one byte order in 32 runs");
    for o in &outputs {
        assert_eq!(
            serde_json::from_slice::<Value>(o).unwrap(),
            serde_json::from_slice::<Value>(&ours).unwrap()
        );
    }

    // A tier's manifest: with one annotation (a base tier) oci-spec writes
    // strata's bytes exactly, so field order and omitted empty fields
    // agree; with two (every tier with a parent) the order wanders.
    let layer = Descriptor::new(oci::MEDIA_LAYER_ZSTD, Digest::sha256_of(b"layer"), 5);
    let mut manifest = Manifest {
        schema_version: 2,
        media_type: Some(oci::MEDIA_MANIFEST.into()),
        config: Descriptor::new(oci::MEDIA_CONFIG, Digest::sha256_of(&ours), ours.len() as u64),
        layers: vec![layer],
        annotations: BTreeMap::from([(oci::ANNOTATION_TIER.to_string(), "base".to_string())]),
    };
    let base = to_json(&manifest);
    assert_eq!(
        oci_spec_outputs::<ImageManifest>(&base, 8),
        BTreeSet::from([base.clone()])
    );
    manifest
        .annotations
        .insert(oci::ANNOTATION_PARENT.into(), "alpine".into());
    manifest
        .annotations
        .insert(oci::ANNOTATION_TIER.into(), "tools".into());
    let tier = to_json(&manifest);
    assert!(oci_spec_outputs::<ImageManifest>(&tier, 32).len() > 1);
}

#[test]
fn oci_spec_orders_descriptor_fields_otherwise_and_loses_a_platforms_os_version() {
    // An index entry with a platform and annotations: strata writes the
    // platform first, oci-spec the annotations; the same JSON, other bytes
    // (and so another digest).
    let mut entry = Descriptor::new(oci::MEDIA_MANIFEST, Digest::sha256_of(b"m"), 1);
    entry.platform = Some(Platform {
        architecture: "amd64".into(),
        os: "linux".into(),
    });
    entry
        .annotations
        .insert(oci::ANNOTATION_REF_NAME.into(), "app".into());
    let mut index = Index::new();
    index.manifests.push(entry);
    let ours = to_json(&index);
    let theirs = serde_json::to_vec(&serde_json::from_slice::<ImageIndex>(&ours).unwrap()).unwrap();
    assert_ne!(theirs, ours);
    assert_eq!(
        serde_json::from_slice::<Value>(&theirs).unwrap(),
        serde_json::from_slice::<Value>(&ours).unwrap()
    );
    let platform_at = |b: &[u8]| String::from_utf8_lossy(b).find("\"platform\"").unwrap();
    let annotations_at = |b: &[u8]| String::from_utf8_lossy(b).find("\"annotations\"").unwrap();
    assert!(platform_at(&ours) < annotations_at(&ours));
    assert!(platform_at(&theirs) > annotations_at(&theirs));

    // The image spec names them `os.version` and `os.features`; oci-spec
    // 0.10 reads neither (they vanish on a round trip) and writes its own
    // field names instead.
    let windows = json!({
        "schemaVersion": 2,
        "mediaType": oci::MEDIA_INDEX,
        "manifests": [{
            "mediaType": oci::MEDIA_MANIFEST,
            "digest": Digest::sha256_of(b"w").to_string(),
            "size": 1,
            "platform": { "architecture": "amd64", "os": "windows",
                          "os.version": "10.0.17763.1879", "os.features": ["win32k"] },
        }],
    });
    let parsed: ImageIndex = serde_json::from_value(windows).unwrap();
    let platform = parsed.manifests()[0].platform().clone().unwrap();
    assert_eq!(platform.os_version(), &None);
    let back = serde_json::to_value(&parsed).unwrap();
    assert_eq!(
        back["manifests"][0]["platform"],
        json!({ "architecture": "amd64", "os": "windows" })
    );
    let written = serde_json::to_value(
        oci_spec::image::PlatformBuilder::default()
            .architecture(oci_spec::image::Arch::Amd64)
            .os(oci_spec::image::Os::Windows)
            .os_version("10.0.17763.1879")
            .build()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(written["os_version"], "10.0.17763.1879");
    assert!(written.get("os.version").is_none());
}

#[test]
fn oci_spec_drops_the_fields_it_does_not_know() {
    // A Docker-built config: Docker's own fields beside the spec's.
    let docker = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Env": ["PATH=/bin"], "Healthcheck": { "Test": ["CMD", "true"] }, "ArgsEscaped": true },
        "container_config": { "Hostname": "builder" },
        "docker_version": "20.10.24",
        "rootfs": { "type": "layers", "diff_ids": [] },
    });
    let back = serde_json::to_value(serde_json::from_value::<ImageConfiguration>(docker).unwrap()).unwrap();
    assert!(back["config"].get("Healthcheck").is_none());
    assert!(back.get("container_config").is_none() && back.get("docker_version").is_none());
    assert_eq!(back["config"]["Env"], json!(["PATH=/bin"]));
}
