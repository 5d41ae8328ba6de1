//! The distribution protocol's corners (issue 18), over raw HTTP against a
//! real `strata serve`, and with real clients (skopeo, `oci-client`) where
//! a client uses them: foreign layers, sparse indexes, suffix and open
//! byte ranges, mounts with and without `from`, cancelled uploads, tags on
//! a push by digest, sha512 manifests, manifests whose spec fields have the
//! wrong shape, the API version header and the token endpoint.

mod common;

use std::path::Path;
use std::process::Command;

use common::serve::{Serve, error_of, push_blob};
use common::*;
use reqwest::blocking::{Client, Response};
use serde_json::{Value, json};
use strata::digest::{Algorithm, Digest};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const NONDIST: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
const FOREIGN: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
const CONFIG: &[u8] = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;

fn put(s: &Serve, c: &Client, repo: &str, reference: &str, ct: &str, body: &str) -> Response {
    c.put(s.url(&format!("/v2/{repo}/manifests/{reference}")))
        .header("Content-Type", ct)
        .body(body.to_string())
        .send()
        .unwrap()
}

/// An image manifest: the config (pushed to `repo`) and one layer of
/// `layer_type` whose blob was never pushed, with `urls` when given.
fn manifest_with_layer(s: &Serve, c: &Client, repo: &str, layer_type: &str, urls: Option<&[&str]>) -> String {
    let cfg = push_blob(s, c, repo, CONFIG);
    let absent = Digest::sha256_of(format!("never pushed {layer_type}").as_bytes());
    let mut layer = json!({ "mediaType": layer_type, "digest": absent.to_string(), "size": 123 });
    if let Some(u) = urls {
        layer["urls"] = json!(u);
    }
    json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": OCI_CONFIG, "digest": cfg.to_string(), "size": CONFIG.len() },
        "layers": [layer],
    })
    .to_string()
}

#[test]
fn foreign_layers_need_no_blob_unless_the_server_refuses_them() {
    let d = tempfile::tempdir().unwrap();
    let s = Serve::start(&d.path().join("data"));
    let c = s.client();
    let url = ["https://example.com/layer.tar.gz"];
    for (i, t) in [NONDIST, FOREIGN].into_iter().enumerate() {
        let m = manifest_with_layer(&s, &c, "win", t, Some(&url));
        let r = put(&s, &c, "win", &format!("v{i}"), OCI_MANIFEST, &m);
        assert_eq!(r.status(), 201, "{t}: {:?}", error_of(r));
        let r = c.get(s.url(&format!("/v2/win/manifests/v{i}"))).send().unwrap();
        assert_eq!(r.status(), 200);
    }
    // Without urls there is nowhere to fetch it from; an ordinary layer
    // must be pushed whatever it says.
    let m = manifest_with_layer(&s, &c, "win", NONDIST, None);
    let (status, code, msg) = error_of(put(&s, &c, "win", "nourls", OCI_MANIFEST, &m));
    assert_eq!((status, code.as_str()), (400, "MANIFEST_BLOB_UNKNOWN"), "{msg}");
    let m = manifest_with_layer(&s, &c, "win", strata::oci::MEDIA_LAYER_TAR, Some(&url));
    let (status, code, msg) = error_of(put(&s, &c, "win", "plain", OCI_MANIFEST, &m));
    assert_eq!((status, code.as_str()), (400, "MANIFEST_BLOB_UNKNOWN"), "{msg}");
    // gc keeps the manifest and does not trip over the absent blob.
    let o = strata()
        .args(["gc", "--json", "--grace", "0s", "--data"])
        .arg(d.path().join("data"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(c.get(s.url("/v2/win/manifests/v0")).send().unwrap().status(), 200);
    drop(s);

    // The policy flag, and the same key in the config file, refuse them.
    let cfg = d.path().join("serve.toml");
    std::fs::write(&cfg, "[storage]\nrefuse_foreign_layers = true\n").unwrap();
    for (n, extra) in [
        vec!["--refuse-foreign-layers"],
        vec!["--config", cfg.to_str().unwrap()],
    ]
    .into_iter()
    .enumerate()
    {
        let s = Serve::start_with(&d.path().join(format!("refusing{n}")), &extra);
        let c = s.client();
        for t in [NONDIST, FOREIGN] {
            let m = manifest_with_layer(&s, &c, "win", t, Some(&url));
            let (status, code, msg) = error_of(put(&s, &c, "win", "v1", OCI_MANIFEST, &m));
            assert_eq!(
                (status, code.as_str()),
                (400, "MANIFEST_BLOB_UNKNOWN"),
                "{extra:?}"
            );
            assert!(msg.contains("foreign"), "{msg}");
        }
    }
}

/// Writes a blob into a hand-made OCI layout.
fn layout_blob(dir: &Path, bytes: &[u8]) -> Digest {
    let dg = Digest::sha256_of(bytes);
    write(&dir.join("blobs/sha256").join(dg.hex()), bytes);
    dg
}

/// Writes the layout's index.json naming `top` (stored too) as `name`.
fn layout_index(dir: &Path, media: &str, top: &[u8], name: &str) {
    let dg = layout_blob(dir, top);
    write(&dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#);
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{ "mediaType": media, "digest": dg.to_string(), "size": top.len(),
                        "annotations": { "org.opencontainers.image.ref.name": name } }],
    });
    write(&dir.join("index.json"), index.to_string());
}

#[test]
fn skopeo_pushes_an_image_with_a_foreign_layer() {
    if !have_tool("skopeo") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let layout = d.path().join("oci");
    let cfg = layout_blob(&layout, CONFIG);
    let absent = Digest::sha256_of(b"a foreign layer");
    let m = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": OCI_CONFIG, "digest": cfg.to_string(), "size": CONFIG.len() },
        "layers": [{ "mediaType": NONDIST, "digest": absent.to_string(), "size": 15,
                     "urls": ["https://example.com/foreign.tar.gz"] }],
    })
    .to_string();
    layout_index(&layout, OCI_MANIFEST, m.as_bytes(), "win");
    let copy = |s: &Serve, repo: &str| {
        Command::new("skopeo")
            .args(["copy", "--dest-tls-verify=false", "--dest-creds"])
            .arg(format!("tests:{}", s.token))
            .arg(format!("oci:{}:win", layout.display()))
            .arg(format!("docker://127.0.0.1:{}/{repo}:1", s.port))
            .output()
            .unwrap()
    };
    let s = Serve::start(&d.path().join("data"));
    let o = copy(&s, "win");
    assert!(o.status.success(), "skopeo copy: {}", stderr(&o));
    let o = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://127.0.0.1:{}/win:1", s.port))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["layers"][0]["digest"], absent.to_string(), "{v}");
    drop(s);
    let s = Serve::start_with(&d.path().join("refusing"), &["--refuse-foreign-layers"]);
    let o = copy(&s, "win");
    assert!(!o.status.success(), "a refusing server took it");
}

#[test]
fn an_index_may_name_absent_manifests_only_when_sparse_indexes_are_allowed() {
    let d = tempfile::tempdir().unwrap();
    let absent = Digest::sha256_of(b"a manifest for another platform");
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{ "mediaType": OCI_MANIFEST, "digest": absent.to_string(), "size": 31,
                        "platform": { "architecture": "arm64", "os": "linux" } }],
    })
    .to_string();
    let s = Serve::start(&d.path().join("data"));
    let c = s.client();
    let (status, code, msg) = error_of(put(&s, &c, "multi", "1", OCI_INDEX, &index));
    assert_eq!((status, code.as_str()), (400, "MANIFEST_BLOB_UNKNOWN"), "{msg}");
    drop(s);
    let cfg = d.path().join("serve.toml");
    std::fs::write(&cfg, "[storage]\nallow_sparse_index = true\n").unwrap();
    for (n, extra) in [
        vec!["--allow-sparse-index"],
        vec!["--config", cfg.to_str().unwrap()],
    ]
    .into_iter()
    .enumerate()
    {
        let s = Serve::start_with(&d.path().join(format!("sparse{n}")), &extra);
        let c = s.client();
        let r = put(&s, &c, "multi", "1", OCI_INDEX, &index);
        assert_eq!(r.status(), 201, "{extra:?}: {:?}", error_of(r));
        let r = c.get(s.url("/v2/multi/manifests/1")).send().unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().unwrap(), index);
        // The absent manifest stays absent; image manifests still need blobs.
        assert_eq!(
            c.get(s.url(&format!("/v2/multi/manifests/{absent}")))
                .send()
                .unwrap()
                .status(),
            404
        );
        let m = manifest_with_layer(&s, &c, "multi", strata::oci::MEDIA_LAYER_TAR, None);
        assert_eq!(
            error_of(put(&s, &c, "multi", "img", OCI_MANIFEST, &m)).1,
            "MANIFEST_BLOB_UNKNOWN"
        );
    }

    // skopeo's --multi-arch=index-only pushes exactly such an index.
    if !have_tool("skopeo") {
        return;
    }
    let layout = d.path().join("oci");
    let cfg = layout_blob(&layout, CONFIG);
    let layer = layout_blob(&layout, &tar_of(&[("hello", "world")]));
    let m = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": OCI_CONFIG, "digest": cfg.to_string(), "size": CONFIG.len() },
        "layers": [{ "mediaType": strata::oci::MEDIA_LAYER_TAR, "digest": layer.to_string(),
                     "size": tar_of(&[("hello", "world")]).len() }],
    })
    .to_string();
    let md = layout_blob(&layout, m.as_bytes());
    let idx = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{ "mediaType": OCI_MANIFEST, "digest": md.to_string(), "size": m.len(),
                        "platform": { "architecture": "amd64", "os": "linux" } }],
    })
    .to_string();
    layout_index(&layout, OCI_INDEX, idx.as_bytes(), "multi");
    let copy = |s: &Serve| {
        Command::new("skopeo")
            .args([
                "copy",
                "--multi-arch=index-only",
                "--dest-tls-verify=false",
                "--dest-creds",
            ])
            .arg(format!("tests:{}", s.token))
            .arg(format!("oci:{}:multi", layout.display()))
            .arg(format!("docker://127.0.0.1:{}/multi:idx", s.port))
            .output()
            .unwrap()
    };
    let s = Serve::start(&d.path().join("data"));
    assert!(
        !copy(&s).status.success(),
        "a dense-only server took a sparse index"
    );
    drop(s);
    let s2 = Serve::start_with(&d.path().join("sparse-skopeo"), &["--allow-sparse-index"]);
    let o = copy(&s2);
    assert!(
        o.status.success(),
        "skopeo copy --multi-arch=index-only: {}",
        stderr(&o)
    );
    let r = s2.client().get(s2.url("/v2/multi/manifests/idx")).send().unwrap();
    assert_eq!(r.status(), 200);
}

fn range(s: &Serve, c: &Client, dg: &Digest, spec: &str) -> (u16, String, Vec<u8>) {
    let r = c
        .get(s.url(&format!("/v2/app/blobs/{dg}")))
        .header("Range", spec)
        .send()
        .unwrap();
    let status = r.status().as_u16();
    let cr = r
        .headers()
        .get("content-range")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, cr, r.bytes().unwrap().to_vec())
}

#[test]
fn suffix_and_open_ranges_and_416_for_the_rest() {
    let d = tempfile::tempdir().unwrap();
    let s = Serve::start(&d.path().join("data"));
    let c = s.client();
    let blob = noise(1000, 18);
    let dg = push_blob(&s, &c, "app", &blob);
    assert_eq!(
        range(&s, &c, &dg, "bytes=-500"),
        (206, "bytes 500-999/1000".into(), blob[500..].to_vec())
    );
    assert_eq!(
        range(&s, &c, &dg, "bytes=-5000"),
        (206, "bytes 0-999/1000".into(), blob.clone()),
        "a suffix longer than the blob is all of it"
    );
    assert_eq!(
        range(&s, &c, &dg, "bytes=990-"),
        (206, "bytes 990-999/1000".into(), blob[990..].to_vec())
    );
    assert_eq!(
        range(&s, &c, &dg, "bytes=10-2000"),
        (206, "bytes 10-999/1000".into(), blob[10..].to_vec())
    );
    for bad in [
        "bytes=1000-",
        "bytes=-0",
        "bytes=5-2",
        "bytes=abc",
        "bytes=0-1,4-5",
        "bytes=--5",
        "bytes=",
    ] {
        let (status, cr, _) = range(&s, &c, &dg, bad);
        assert_eq!((status, cr.as_str()), (416, "bytes */1000"), "{bad}");
    }

    // oci-client's partial pull asks `bytes=N-`.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = oci_client::Client::new(oci_client::client::ClientConfig {
        protocol: oci_client::client::ClientProtocol::Http,
        ..Default::default()
    });
    let reference: oci_client::Reference = format!("127.0.0.1:{}/app:x", s.port).parse().unwrap();
    let layer = dg.to_string();
    let got = rt.block_on(async {
        use futures_util::StreamExt;
        client
            .auth(
                &reference,
                &oci_client::secrets::RegistryAuth::Anonymous,
                oci_client::RegistryOperation::Pull,
            )
            .await
            .unwrap();
        let resp = client
            .pull_blob_stream_partial(&reference, layer.as_str(), 900, None)
            .await
            .unwrap();
        let oci_client::client::BlobResponse::Partial(mut stream) = resp else {
            panic!("a full answer to a ranged pull");
        };
        let mut got = Vec::new();
        while let Some(chunk) = stream.next().await {
            got.extend_from_slice(&chunk.unwrap());
        }
        got
    });
    assert_eq!(got, blob[900..]);
}

/// POST …/blobs/uploads/ with a query; returns the status and Location.
fn post(s: &Serve, c: &Client, repo: &str, query: &str) -> (u16, String) {
    let r = c
        .post(s.url(&format!("/v2/{repo}/blobs/uploads/{query}")))
        .send()
        .unwrap();
    let loc = r
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (r.status().as_u16(), loc)
}

fn blob_status(s: &Serve, c: &Client, repo: &str, dg: &Digest) -> u16 {
    c.get(s.url(&format!("/v2/{repo}/blobs/{dg}")))
        .send()
        .unwrap()
        .status()
        .as_u16()
}

#[test]
fn mounts_take_blobs_only_from_repositories_that_hold_them() {
    let d = tempfile::tempdir().unwrap();
    let s = Serve::start(&d.path().join("data"));
    let c = s.client();
    let dg = push_blob(&s, &c, "src", b"shared bytes");
    // Without `from`: found in a repository the caller may read.
    let (status, loc) = post(&s, &c, "dst", &format!("?mount={dg}"));
    assert_eq!((status, loc), (201, format!("/v2/dst/blobs/{dg}")));
    assert_eq!(blob_status(&s, &c, "dst", &dg), 200);
    // A blob no repository holds: a new upload session instead.
    let unknown = Digest::sha256_of(b"nobody has this");
    let (status, loc) = post(&s, &c, "dst", &format!("?mount={unknown}"));
    assert_eq!(status, 202);
    assert!(loc.starts_with("/v2/dst/blobs/uploads/"), "{loc}");
    // With `from`: the blob must be in that repository, not just stored.
    push_blob(&s, &c, "empty", b"something else");
    let (status, loc) = post(&s, &c, "third", &format!("?mount={dg}&from=empty"));
    assert_eq!(status, 202, "mounted from a repository without the blob");
    assert!(loc.starts_with("/v2/third/blobs/uploads/"), "{loc}");
    assert_eq!(blob_status(&s, &c, "third", &dg), 404);
    let (status, _) = post(&s, &c, "third", &format!("?mount={dg}&from=src"));
    assert_eq!(status, 201);
    assert_eq!(blob_status(&s, &c, "third", &dg), 200);

    // oci-client mounts with `from`, and wants 201.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = oci_client::Client::new(oci_client::client::ClientConfig {
        protocol: oci_client::client::ClientProtocol::Http,
        ..Default::default()
    });
    let at =
        |repo: &str| -> oci_client::Reference { format!("127.0.0.1:{}/{repo}:1", s.port).parse().unwrap() };
    rt.block_on(async {
        client
            .auth(
                &at("fourth"),
                &oci_client::secrets::RegistryAuth::Basic("tests".into(), s.token.clone()),
                oci_client::RegistryOperation::Push,
            )
            .await
            .unwrap();
        let wrong = client
            .mount_blob(&at("fourth"), &at("empty"), &dg.to_string())
            .await;
        assert!(wrong.is_err(), "mounted from a repository without the blob");
        client
            .mount_blob(&at("fourth"), &at("src"), &dg.to_string())
            .await
            .unwrap();
    });
    assert_eq!(blob_status(&s, &c, "fourth", &dg), 200);
}

#[test]
fn a_cancelled_upload_is_gone() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let s = Serve::start(&data);
    let c = s.client();
    let (status, loc) = post(&s, &c, "app", "");
    assert_eq!(status, 202);
    let r = c
        .patch(s.url(&loc))
        .header("Content-Range", "0-4")
        .body("hello")
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(c.delete(s.url(&loc)).send().unwrap().status(), 204);
    assert_eq!(
        error_of(c.get(s.url(&loc)).send().unwrap()).1,
        "BLOB_UPLOAD_UNKNOWN"
    );
    let r = c
        .patch(s.url(&loc))
        .header("Content-Range", "5-9")
        .body("world")
        .send()
        .unwrap();
    let (status, code, _) = error_of(r);
    assert_eq!((status, code.as_str()), (404, "BLOB_UPLOAD_UNKNOWN"));
    let (status, code, _) = error_of(c.delete(s.url(&loc)).send().unwrap());
    assert_eq!((status, code.as_str()), (404, "BLOB_UPLOAD_UNKNOWN"));
    let left: Vec<_> = std::fs::read_dir(data.join("uploads"))
        .unwrap()
        .flatten()
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

fn header_values(r: &Response, name: &str) -> Vec<String> {
    r.headers()
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_push_by_digest_tags_and_sha512_stays_sha512() {
    let d = tempfile::tempdir().unwrap();
    let s = Serve::start(&d.path().join("data"));
    let c = s.client();
    let cfg = push_blob(&s, &c, "app", CONFIG);
    let m = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": OCI_CONFIG, "digest": cfg.to_string(), "size": CONFIG.len() },
        "layers": [],
    })
    .to_string();
    let md = Digest::sha256_of(m.as_bytes());
    let (status, code, _) = error_of(put(
        &s,
        &c,
        "app",
        &format!("{md}?tag=ok&tag=-bad"),
        OCI_MANIFEST,
        &m,
    ));
    assert_eq!((status, code.as_str()), (400, "TAG_INVALID"));
    assert_eq!(
        c.get(s.url("/v2/app/manifests/ok")).send().unwrap().status(),
        404,
        "a refused push tags nothing"
    );
    let r = put(&s, &c, "app", &format!("{md}?tag=t1&tag=t2"), OCI_MANIFEST, &m);
    assert_eq!(r.status(), 201);
    assert_eq!(header_values(&r, "oci-tag"), ["t1", "t2"]);
    assert_eq!(header_values(&r, "docker-content-digest"), [md.to_string()]);
    for t in ["t1", "t2"] {
        let r = c.get(s.url(&format!("/v2/app/manifests/{t}"))).send().unwrap();
        assert_eq!(header_values(&r, "docker-content-digest"), [md.to_string()]);
    }
    let r = c.get(s.url("/v2/app/tags/list")).send().unwrap();
    let v: Value = serde_json::from_slice(&r.bytes().unwrap()).unwrap();
    assert_eq!(v["tags"], json!(["t1", "t2"]));

    // sha512 in, sha512 out.
    let mut h = Algorithm::Sha512.hasher();
    h.update(m.as_bytes());
    let d512 = h.finish();
    let r = put(&s, &c, "app", &format!("{d512}?tag=t512"), OCI_MANIFEST, &m);
    assert_eq!(r.status(), 201, "{:?}", error_of(r));
    assert_eq!(header_values(&r, "docker-content-digest"), [d512.to_string()]);
    assert_eq!(header_values(&r, "oci-tag"), ["t512"]);
    for reference in [d512.to_string(), "t512".to_string()] {
        for head in [false, true] {
            let url = s.url(&format!("/v2/app/manifests/{reference}"));
            let r = if head { c.head(url) } else { c.get(url) }.send().unwrap();
            assert_eq!(r.status(), 200, "{reference}");
            assert_eq!(header_values(&r, "docker-content-digest"), [d512.to_string()]);
            if !head {
                assert_eq!(r.text().unwrap(), m);
            }
        }
    }
}

#[test]
fn a_manifest_with_a_malformed_spec_field_is_refused_and_stores_nothing() {
    let d = tempfile::tempdir().unwrap();
    let s = Serve::start(&d.path().join("data"));
    let c = s.client();
    let cfg = push_blob(&s, &c, "app", CONFIG);
    let base = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": OCI_CONFIG, "digest": cfg.to_string(), "size": CONFIG.len() },
        "layers": [],
    });
    let subject = Digest::sha256_of(base.to_string().as_bytes()).to_string();
    // Fields strata itself never reads, each with the wrong shape: a
    // subject without its size, a numeric artifactType, `urls` as a string.
    let mut bad_subject = base.clone();
    bad_subject["subject"] = json!({ "mediaType": OCI_MANIFEST, "digest": subject });
    let mut bad_type = base.clone();
    bad_type["artifactType"] = json!(5);
    let mut bad_urls = base.clone();
    bad_urls["config"]["urls"] = json!("https://example.com/cfg");
    let mut bad_version = base.clone();
    bad_version["schemaVersion"] = json!(3);
    for (tag, m, why) in [
        ("s", bad_subject, "missing field `size`"),
        ("t", bad_type, "expected a string"),
        ("u", bad_urls, "expected a sequence"),
        ("v", bad_version, "`schemaVersion` is 3, not 2"),
    ] {
        let (status, code, msg) = error_of(put(&s, &c, "app", tag, OCI_MANIFEST, &m.to_string()));
        assert_eq!((status, code.as_str()), (400, "MANIFEST_INVALID"), "{tag}: {msg}");
        assert!(msg.contains(why), "{tag}: {msg}");
        let r = c.get(s.url(&format!("/v2/app/manifests/{tag}"))).send().unwrap();
        assert_eq!(r.status(), 404, "{tag}: a refused manifest was tagged");
    }
    let r = c
        .get(s.url(&format!("/v2/app/referrers/{subject}")))
        .send()
        .unwrap();
    let v: Value = serde_json::from_slice(&r.bytes().unwrap()).unwrap();
    assert_eq!(v["manifests"], json!([]), "a refused referrer is listed");
    assert_eq!(
        put(&s, &c, "app", "ok", OCI_MANIFEST, &base.to_string()).status(),
        201
    );
}

#[test]
fn every_v2_answer_names_the_api_version_and_tokens_look_like_distributions() {
    let d = tempfile::tempdir().unwrap();
    let s = Serve::start_with(&d.path().join("data"), &["--pull-auth"]);
    let c = s.client();
    let anon = Client::new();
    let dg = Digest::sha256_of(b"x");
    let answers = [
        anon.get(s.url("/v2/")).send().unwrap(),
        c.get(s.url("/v2/")).send().unwrap(),
        c.get(s.url(&format!("/v2/app/blobs/{dg}"))).send().unwrap(),
        c.get(s.url("/v2/app/manifests/nope")).send().unwrap(),
        c.get(s.url("/v2/nothing/here")).send().unwrap(),
        c.post(s.url("/v2/app/blobs/uploads/")).send().unwrap(),
        c.put(s.url("/v2/app/tags/list")).send().unwrap(),
        anon.post(s.url("/v2/app/blobs/uploads/")).send().unwrap(),
    ];
    for r in &answers {
        assert_eq!(
            header_values(r, "docker-distribution-api-version"),
            ["registry/2.0"],
            "{} {}",
            r.url(),
            r.status()
        );
    }
    // Challenges name the realm, the service and the scope asked for.
    let realm = format!("realm=\"http://127.0.0.1:{}/token\"", s.port);
    let challenge = |r: Response| -> String {
        assert_eq!(r.status(), 401);
        header_values(&r, "www-authenticate").join(" ")
    };
    let push = challenge(anon.post(s.url("/v2/team/app/blobs/uploads/")).send().unwrap());
    let pull = challenge(anon.get(s.url("/v2/team/app/tags/list")).send().unwrap());
    for (ch, scope) in [
        (&push, "scope=\"repository:team/app:pull,push\""),
        (&pull, "scope=\"repository:team/app:pull\""),
    ] {
        assert!(ch.starts_with("Bearer "), "{ch}");
        for want in [realm.as_str(), "service=\"strata\"", scope] {
            assert!(ch.contains(want), "{want} not in {ch}");
        }
    }
    // The token endpoint answers as distribution's does.
    let r = anon
        .get(s.url("/token?service=strata&scope=repository:team/app:pull,push"))
        .basic_auth("tests", Some(&s.token))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = serde_json::from_slice(&r.bytes().unwrap()).unwrap();
    assert!(v["token"].is_string() && v["token"] == v["access_token"], "{v}");
    assert!(v["expires_in"].as_u64().unwrap() >= 60, "{v}");
    let issued = v["issued_at"].as_str().unwrap();
    assert!(
        issued.len() >= 20 && issued.ends_with('Z') && issued.as_bytes()[10] == b'T',
        "{issued}"
    );
    assert_eq!(
        anon.get(s.url("/v2/team/app/tags/list"))
            .bearer_auth(v["token"].as_str().unwrap())
            .send()
            .unwrap()
            .status(),
        404
    );

    // skopeo follows the challenge to /token and back.
    if !have_tool("skopeo") {
        return;
    }
    let o = Command::new("skopeo")
        .args(["list-tags", "--tls-verify=false", "--creds"])
        .arg(format!("tests:{}", s.token))
        .arg(format!("docker://127.0.0.1:{}/team/app", s.port))
        .output()
        .unwrap();
    let err = stderr(&o);
    // Authorised, so the answer is about the (absent) repository.
    assert!(err.contains("404"), "{err}");
    assert!(!err.contains("unauthorized"), "{err}");
}
