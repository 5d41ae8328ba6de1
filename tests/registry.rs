//! `strata serve` against real clients (skopeo, the Docker engine) and raw
//! HTTP for the error paths, including a server killed mid-upload.

mod common;

use std::process::Command;

use common::serve::Serve;
use common::*;
use reqwest::blocking::Client;
use serde_json::Value;

/// Pushes `body` as a blob of repository `app` in one request.
fn push_blob(s: &Serve, c: &Client, body: &str) -> strata::digest::Digest {
    let dg = strata::digest::Digest::sha256_of(body.as_bytes());
    let r = c
        .post(s.url(&format!("/v2/app/blobs/uploads/?digest={dg}")))
        .body(body.to_string())
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    dg
}

/// An OCI image manifest with `config`, no layers, and `extra` fields.
fn image_manifest(config: &strata::digest::Digest, extra: Value) -> String {
    let mut m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.to_string(), "size": 2 },
        "layers": [],
    });
    for (k, v) in extra.as_object().unwrap() {
        m[k] = v.clone();
    }
    m.to_string()
}

/// PUTs a manifest into repository `app`.
fn put_manifest(s: &Serve, c: &Client, reference: &str, body: &str) -> reqwest::blocking::Response {
    c.put(s.url(&format!("/v2/app/manifests/{reference}")))
        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .body(body.to_string())
        .send()
        .unwrap()
}

fn code(resp: reqwest::blocking::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let body: Value = serde_json::from_slice(&resp.bytes().unwrap_or_default()).unwrap_or(Value::Null);
    (
        status,
        body["errors"][0]["code"].as_str().unwrap_or("").to_string(),
    )
}

#[test]
fn api_errors_use_the_spec_codes_and_store_nothing() {
    let d = tempfile::tempdir().unwrap();
    let s = Serve::start(&d.path().join("data"));
    let c = s.client();
    assert_eq!(c.get(s.url("/v2/")).send().unwrap().status(), 200);

    // Pushing needs a credential: none, or a wrong one, gets 401 with a
    // challenge, and nothing is stored.
    let anon = Client::new();
    let hello0 = strata::digest::Digest::sha256_of(b"hello");
    for auth in [None, Some("Bearer st_wrong"), Some("Basic dGVzdHM6bm9wZQ==")] {
        let mut req = anon
            .post(s.url(&format!("/v2/app/blobs/uploads/?digest={hello0}")))
            .body("hello");
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        let r = req.send().unwrap();
        let challenge = r
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_string());
        assert_eq!(code(r), (401, "UNAUTHORIZED".into()), "{auth:?}");
        assert!(
            challenge.unwrap_or_default().starts_with("Bearer realm="),
            "{auth:?}"
        );
    }
    assert_eq!(
        anon.get(s.url("/v2/")).send().unwrap().status(),
        401,
        "the root challenges"
    );
    // Docker's token flow: an anonymous token pulls but cannot push; a
    // token fetched with the credential can.
    let session = |req: reqwest::blocking::RequestBuilder| -> String {
        let v: Value = serde_json::from_slice(&req.send().unwrap().bytes().unwrap()).unwrap();
        v["token"].as_str().unwrap().to_string()
    };
    let anon_token = session(anon.get(s.url("/token?scope=repository:app:pull,push")));
    let r = anon
        .post(s.url(&format!("/v2/app/blobs/uploads/?digest={hello0}")))
        .bearer_auth(&anon_token)
        .body("hello")
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = anon
        .get(s.url("/v2/nope/tags/list"))
        .bearer_auth(&anon_token)
        .send()
        .unwrap();
    assert_eq!(r.status(), 404, "pulls need no push right");
    let push_token = session(anon.get(s.url("/token")).basic_auth("tests", Some(&s.token)));
    let r = anon.get(s.url("/v2/")).bearer_auth(&push_token).send().unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        !d.path()
            .join(format!("data/store/blobs/sha256/{}", hello0.hex()))
            .exists()
    );

    // Wrong digest on a monolithic upload: DIGEST_INVALID, nothing stored.
    let wrong = strata::digest::Digest::sha256_of(b"other");
    let r = c
        .post(s.url(&format!("/v2/app/blobs/uploads/?digest={wrong}")))
        .body("hello")
        .send()
        .unwrap();
    assert_eq!(code(r), (400, "DIGEST_INVALID".into()));
    let hello = strata::digest::Digest::sha256_of(b"hello");
    for dg in [&wrong, &hello] {
        let r = c.head(s.url(&format!("/v2/app/blobs/{dg}"))).send().unwrap();
        assert_eq!(r.status(), 404);
    }
    // The right digest: stored, served, ranged.
    let r = c
        .post(s.url(&format!("/v2/app/blobs/uploads/?digest={hello}")))
        .body("hello")
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = c.get(s.url(&format!("/v2/app/blobs/{hello}"))).send().unwrap();
    assert_eq!(r.headers()["docker-content-digest"], hello.to_string().as_str());
    assert_eq!(r.text().unwrap(), "hello");
    let r = c
        .get(s.url(&format!("/v2/app/blobs/{hello}")))
        .header("Range", "bytes=1-3")
        .send()
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.text().unwrap(), "ell");
    // Blobs belong to repositories: another one sees it only after a mount.
    let r = c.get(s.url(&format!("/v2/other/blobs/{hello}"))).send().unwrap();
    assert_eq!(code(r), (404, "BLOB_UNKNOWN".into()));
    let r = c
        .post(s.url(&format!("/v2/other/blobs/uploads/?mount={hello}&from=app")))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = c.get(s.url(&format!("/v2/other/blobs/{hello}"))).send().unwrap();
    assert_eq!(r.text().unwrap(), "hello");

    // A manifest naming a missing blob.
    let missing = strata::digest::Digest::sha256_of(b"missing");
    let m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": hello.to_string(), "size": 5 },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", "digest": missing.to_string(), "size": 1 }],
    });
    let put = |name: &str, reference: &str, body: Vec<u8>| {
        c.put(s.url(&format!("/v2/{name}/manifests/{reference}")))
            .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
            .body(body)
            .send()
            .unwrap()
    };
    assert_eq!(
        code(put("app", "v1", m.to_string().into_bytes())),
        (400, "MANIFEST_BLOB_UNKNOWN".into())
    );
    assert_eq!(
        code(put("Bad_Name", "v1", b"{}".to_vec())),
        (400, "NAME_INVALID".into())
    );
    assert_eq!(
        code(put("app", "-bad", b"{}".to_vec())),
        (400, "TAG_INVALID".into())
    );
    assert_eq!(put("app", "big", vec![b' '; 5 << 20]).status(), 413);
    let r = c.get(s.url("/v2/app/manifests/v1")).send().unwrap();
    assert_eq!(code(r), (404, "MANIFEST_UNKNOWN".into()));
    let r = c.get(s.url("/v2/nope/tags/list")).send().unwrap();
    assert_eq!(code(r), (404, "NAME_UNKNOWN".into()));

    // Chunked upload: an out-of-order chunk gets 416.
    let r = c.post(s.url("/v2/app/blobs/uploads/")).send().unwrap();
    assert_eq!(r.status(), 202);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    assert!(r.headers().contains_key("docker-upload-uuid"));
    let r = c
        .patch(s.url(&loc))
        .header("Content-Range", "0-2")
        .body("hel")
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(r.headers()["range"], "0-2");
    let r = c
        .patch(s.url(&loc))
        .header("Content-Range", "5-6")
        .body("xx")
        .send()
        .unwrap();
    assert_eq!(r.status(), 416);
    let r = c
        .patch(s.url(&loc))
        .header("Content-Range", "3-4")
        .body("lo")
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = c.put(s.url(&format!("{loc}?digest={hello}"))).send().unwrap();
    assert_eq!(r.status(), 201);
}

/// PATCHes are answered before their bytes are hashed (the hash catches
/// up behind them); the closing PUT still stores only what hashes to its
/// digest, whatever mix of chunks, refused chunks and a last chunk in the
/// PUT came before.
#[test]
fn chunks_hashed_behind_their_answers_store_only_the_right_digest() {
    let d = tempfile::tempdir().unwrap();
    let s = Serve::start(&d.path().join("data"));
    let c = s.client();
    let body: Vec<u8> = (0..5_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let digest = strata::digest::Digest::sha256_of(&body);
    let chunk = 300_000;
    let upload = |put_digest: &strata::digest::Digest| {
        let r = c.post(s.url("/v2/app/blobs/uploads/")).send().unwrap();
        let mut loc = r.headers()["location"].to_str().unwrap().to_string();
        let last = body.len() - 100_000;
        let mut off = 0;
        while off < last {
            let end = (off + chunk).min(last);
            if off == chunk * 3 {
                // A refused chunk in between leaves nothing behind.
                let r = c
                    .patch(s.url(&loc))
                    .header("Content-Range", format!("{}-{}", off + 1, end))
                    .body(body[off + 1..=end].to_vec())
                    .send()
                    .unwrap();
                assert_eq!(r.status(), 416);
            }
            let r = c
                .patch(s.url(&loc))
                .header("Content-Range", format!("{off}-{}", end - 1))
                .body(body[off..end].to_vec())
                .send()
                .unwrap();
            assert_eq!(r.status(), 202, "chunk at {off}");
            loc = r.headers()["location"].to_str().unwrap().to_string();
            off = end;
        }
        c.put(s.url(&format!("{loc}?digest={put_digest}")))
            .body(body[last..].to_vec())
            .send()
            .unwrap()
    };
    let wrong = strata::digest::Digest::sha256_of(b"something else");
    assert_eq!(code(upload(&wrong)), (400, "DIGEST_INVALID".into()));
    let blob = |d: &strata::digest::Digest| c.get(s.url(&format!("/v2/app/blobs/{d}"))).send().unwrap();
    assert_eq!(blob(&wrong).status(), 404);
    assert_eq!(upload(&digest).status(), 201);
    let got = blob(&digest).bytes().unwrap();
    assert!(got.as_ref() == body.as_slice(), "the stored blob is the upload");
}

#[test]
fn an_upload_survives_a_killed_server() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let mut s = Serve::start(&data);
    let c = s.client();
    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let digest = strata::digest::Digest::sha256_of(&body);
    let r = c.post(s.url("/v2/big/blobs/uploads/")).send().unwrap();
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let r = c
        .patch(s.url(&loc))
        .header("Content-Range", "0-999999")
        .body(body[..1_000_000].to_vec())
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    s.kill(); // SIGKILL, no shutdown
    let blobs = data.join("store/blobs/sha256");
    assert_eq!(
        std::fs::read_dir(&blobs).unwrap().count(),
        0,
        "no partial blob visible"
    );
    let s = Serve::start(&data);
    let r = c.get(s.url(&loc)).send().unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        r.headers()["range"],
        "0-999999",
        "the session resumes where it was"
    );
    let r = c
        .patch(s.url(&loc))
        .header("Content-Range", "1000000-2999999")
        .body(body[1_000_000..].to_vec())
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = c.put(s.url(&format!("{loc}?digest={digest}"))).send().unwrap();
    assert_eq!(r.status(), 201);
    let got = c
        .get(s.url(&format!("/v2/big/blobs/{digest}")))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    assert_eq!(strata::digest::Digest::sha256_of(&got), digest);
}

#[test]
fn skopeo_and_docker_round_trip_through_strata_serve() {
    if !have_tool("skopeo") || !have_docker() {
        return;
    }
    let Some(_) = debs() else { return };
    let d = tempfile::tempdir().unwrap();
    let s = Serve::start(&d.path().join("data"));
    let out = strata()
        .env("STRATA_STORE", d.path().join("store"))
        .args(["build", "-c"])
        .arg(repo().join("deploy/examples/offline.toml"))
        .args(["--tier", "tomcat", "--layout"])
        .arg(d.path().join("oci"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let src = format!("oci:{}:tomcat", d.path().join("oci").display());
    let repo_ref = format!(
        "127.0.0.1:{}/{}:v1",
        s.port,
        unique("tomcat").replace("strata-test-", "t/")
    );
    let dest = format!("docker://{repo_ref}");
    let o = Command::new("skopeo")
        .args([
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
            &format!("tests:{}", s.token),
            &src,
            &dest,
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "skopeo copy in: {}", stderr(&o));
    let o = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false", &dest])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let m: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(m["layers"][0]["mediaType"].as_str().unwrap().ends_with("zstd"));
    let back = d.path().join("back");
    let o = Command::new("skopeo")
        .args(["copy", "--src-tls-verify=false", &dest])
        .arg(format!("oci:{}:x", back.display()))
        .output()
        .unwrap();
    assert!(o.status.success(), "skopeo copy out: {}", stderr(&o));
    assert!(strata::oci::layout::verify(&back).unwrap() >= 4);

    // The engine pulls the image and runs it: the tier's fixes, its Java
    // and its Tomcat are there. Engines before 23.0 cannot read zstd
    // layers, so `strata push --gzip` serves them; newer ones get zstd too.
    let gz_ref = format!("{repo_ref}-gzip");
    let o = strata()
        .env("STRATA_STORE", d.path().join("store"))
        .env("STRATA_REGISTRY_AUTH", &s.token)
        .args(["push", "--gzip", &src, &gz_ref])
        .output()
        .unwrap();
    assert!(o.status.success(), "strata push --gzip: {}", stderr(&o));
    let mut refs = vec![gz_ref.clone()];
    let engine = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .unwrap();
    let major: u32 = stdout(&engine)
        .split('.')
        .next()
        .unwrap_or("0")
        .trim()
        .parse()
        .unwrap_or(0);
    if major >= 23 {
        refs.push(repo_ref.clone());
    } else {
        eprintln!(
            "Docker {} reads no zstd: pulling the gzip variant only",
            stdout(&engine).trim()
        );
    }
    let _cleanup = DockerCleanup {
        containers: vec![],
        images: refs.clone(),
    };
    for r in &refs {
        let o = Command::new("docker").args(["pull", r]).output().unwrap();
        assert!(o.status.success(), "docker pull {r}: {}", stderr(&o));
        let o = Command::new("docker")
            .args(["run", "--rm", "--entrypoint", "/bin/sh", r, "-c"])
            .arg("cat /etc/timezone; test -x $CATALINA_HOME/bin/catalina.sh && echo tomcat; java -version 2>&1 | grep version")
            .output()
            .unwrap();
        let out = stdout(&o);
        assert!(
            out.starts_with("Asia/Shanghai\ntomcat\n"),
            "{r}: {out}{}",
            stderr(&o)
        );
        assert!(out.contains("openjdk version \"17"), "{out}");
    }
}

#[test]
fn deletes_only_when_enabled() {
    let d = tempfile::tempdir().unwrap();
    let s = Serve::start(&d.path().join("locked"));
    let c = s.client();
    let r = c.delete(s.url("/v2/app/manifests/v1")).send().unwrap();
    assert_eq!(code(r), (405, "UNSUPPORTED".into()));

    let s = Serve::start_with(&d.path().join("open"), &["--allow-delete"]);
    let c = s.client();
    let blob = push_blob(&s, &c, "{}");
    let m = image_manifest(&blob, serde_json::json!({}));
    let digest = strata::digest::Digest::sha256_of(m.as_bytes());
    for tag in ["v1", "v2"] {
        assert_eq!(put_manifest(&s, &c, tag, &m).status(), 201);
    }
    let status = |path: &str| c.get(s.url(path)).send().unwrap().status().as_u16();
    assert_eq!(
        c.delete(s.url("/v2/app/manifests/v1")).send().unwrap().status(),
        202
    );
    assert_eq!(status("/v2/app/manifests/v1"), 404);
    assert_eq!(status("/v2/app/manifests/v2"), 200, "other tags stay");
    assert_eq!(
        c.delete(s.url(&format!("/v2/app/manifests/{digest}")))
            .send()
            .unwrap()
            .status(),
        202
    );
    assert_eq!(
        status("/v2/app/manifests/v2"),
        404,
        "tags of a deleted manifest go with it"
    );
    assert_eq!(status(&format!("/v2/app/manifests/{digest}")), 404);
    assert_eq!(
        c.delete(s.url(&format!("/v2/app/blobs/{blob}")))
            .send()
            .unwrap()
            .status(),
        202
    );
    assert_eq!(status(&format!("/v2/app/blobs/{blob}")), 404);
    // Deleting needs a push credential like any write.
    let r = Client::new()
        .delete(s.url("/v2/app/manifests/v2"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[test]
fn gc_sweeps_only_old_unreferenced_blobs() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let s = Serve::start_with(&data, &["--allow-delete"]);
    let c = s.client();
    let push_manifest = |tag: &str, config: &strata::digest::Digest| {
        let m = image_manifest(config, serde_json::json!({}));
        assert_eq!(put_manifest(&s, &c, tag, &m).status(), 201);
        strata::digest::Digest::sha256_of(m.as_bytes())
    };
    let kept = push_blob(&s, &c, "{\"a\":1}");
    let orphan = push_blob(&s, &c, "{\"b\":2}");
    let dropped = push_blob(&s, &c, "{\"c\":3}");
    push_manifest("v1", &kept);
    let m2 = push_manifest("v2", &dropped);
    assert_eq!(
        c.delete(s.url(&format!("/v2/app/manifests/{m2}")))
            .send()
            .unwrap()
            .status(),
        202
    );

    let gc = |grace: &str| -> Value {
        let o = strata()
            .args(["gc", "--json", "--grace", grace, "--data"])
            .arg(&data)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    // With a long grace period nothing this young goes.
    let r = gc("1h");
    assert_eq!(r["swept_blobs"], 0);
    assert_eq!(r["young_blobs"], 3, "{r}");
    let r = gc("0s");
    assert_eq!(
        r["swept_blobs"], 3,
        "orphan, dropped config and the deleted manifest: {r}"
    );
    let blob_path = |dg: &strata::digest::Digest| data.join("store/blobs/sha256").join(dg.hex());
    assert!(blob_path(&kept).is_file());
    assert!(!blob_path(&orphan).exists());
    assert!(!blob_path(&dropped).exists());
    assert!(!blob_path(&m2).exists());
    assert_eq!(c.get(s.url("/v2/app/manifests/v1")).send().unwrap().status(), 200);
    assert_eq!(
        c.get(s.url(&format!("/v2/app/blobs/{kept}")))
            .send()
            .unwrap()
            .status(),
        200
    );
}

#[test]
fn referrers_list_and_filter_by_artifact_type() {
    let d = tempfile::tempdir().unwrap();
    let s = Serve::start(&d.path().join("data"));
    let c = s.client();
    let cfg = push_blob(&s, &c, "{}");
    let manifest = |extra: Value| image_manifest(&cfg, extra);
    let put = |reference: &str, body: &str| put_manifest(&s, &c, reference, body);
    let base = manifest(serde_json::json!({}));
    let base_digest = strata::digest::Digest::sha256_of(base.as_bytes());
    assert_eq!(put("v1", &base).status(), 201);
    let subject = serde_json::json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": base_digest.to_string(),
        "size": base.len(),
    });
    for kind in ["application/vnd.example.sbom", "application/vnd.example.sig"] {
        let body = manifest(serde_json::json!({ "artifactType": kind, "subject": subject }));
        let digest = strata::digest::Digest::sha256_of(body.as_bytes());
        let r = put(&digest.to_string(), &body);
        assert_eq!(r.status(), 201);
        assert_eq!(r.headers()["oci-subject"], base_digest.to_string().as_str());
    }
    let list = |query: &str| -> (Value, bool) {
        let r = c
            .get(s.url(&format!("/v2/app/referrers/{base_digest}{query}")))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        let filtered = r.headers().contains_key("oci-filters-applied");
        (serde_json::from_slice(&r.bytes().unwrap()).unwrap(), filtered)
    };
    let (all, filtered) = list("");
    assert!(!filtered);
    assert_eq!(all["manifests"].as_array().unwrap().len(), 2, "{all}");
    let (sbom, filtered) = list("?artifactType=application/vnd.example.sbom");
    assert!(filtered);
    let sbom = sbom["manifests"].as_array().unwrap().clone();
    assert_eq!(sbom.len(), 1);
    assert_eq!(sbom[0]["artifactType"], "application/vnd.example.sbom");
    let none = strata::digest::Digest::sha256_of(b"no such subject");
    let r = c.get(s.url(&format!("/v2/app/referrers/{none}"))).send().unwrap();
    assert_eq!(r.status(), 200);
}

#[test]
fn serves_https_when_given_a_certificate() {
    if !have_tool("openssl") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let (cert, key) = (d.path().join("cert.pem"), d.path().join("key.pem"));
    let (ca, ca_key, csr) = (
        d.path().join("ca.pem"),
        d.path().join("ca.key"),
        d.path().join("leaf.csr"),
    );
    let ext = d.path().join("leaf.ext");
    std::fs::write(&ext, "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n").unwrap();
    let p = |x: &std::path::PathBuf| x.to_str().unwrap().to_string();
    let steps: Vec<Vec<String>> = vec![
        // A throwaway CA, and a server certificate for 127.0.0.1 signed by it.
        vec![
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=strata-test-ca",
            "-keyout",
            &p(&ca_key),
            "-out",
            &p(&ca),
        ]
        .into_iter()
        .map(String::from)
        .collect(),
        vec![
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            &p(&key),
            "-out",
            &p(&csr),
        ]
        .into_iter()
        .map(String::from)
        .collect(),
        vec![
            "x509",
            "-req",
            "-in",
            &p(&csr),
            "-CA",
            &p(&ca),
            "-CAkey",
            &p(&ca_key),
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            &p(&ext),
            "-out",
            &p(&cert),
        ]
        .into_iter()
        .map(String::from)
        .collect(),
    ];
    for args in steps {
        let o = Command::new("openssl").args(&args).output().unwrap();
        assert!(o.status.success(), "openssl {args:?}: {}", stderr(&o));
    }
    let s = Serve::start_with(
        &d.path().join("data"),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap();
    let c = Client::builder().add_root_certificate(ca).build().unwrap();
    let url = format!("https://127.0.0.1:{}/v2/", s.port);
    let r = c.get(&url).bearer_auth(&s.token).send().unwrap();
    assert_eq!(r.status(), 200);
    // Plain HTTP to the TLS port gets no registry answer.
    let plain = Client::new().get(s.url("/v2/")).bearer_auth(&s.token).send();
    assert!(
        plain.map(|r| r.status() != 200).unwrap_or(true),
        "plain HTTP must not be served"
    );
    // A client that does not trust the certificate is refused.
    assert!(Client::new().get(&url).send().is_err());
}

#[test]
fn a_config_file_sets_what_flags_do_not() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("serve.toml");
    write(&cfg, "[auth]\nopen_push = true\n[storage]\nallow_delete = true\n");
    let s = Serve::start_with(&d.path().join("data"), &["--config", cfg.to_str().unwrap()]);
    // open_push: no credential needed; allow_delete: DELETE answers 202.
    let c = Client::new();
    let dg = strata::digest::Digest::sha256_of(b"x");
    let r = c
        .post(s.url(&format!("/v2/app/blobs/uploads/?digest={dg}")))
        .body("x")
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(
        c.delete(s.url(&format!("/v2/app/blobs/{dg}")))
            .send()
            .unwrap()
            .status(),
        202
    );
    // The shipped example parses.
    strata::registry::config::ServeConfig::load(&repo().join("deploy/examples/serve.toml")).unwrap();
}

/// Unmounts a test's tmpfs, also when the test fails.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_is_a_clear_507_and_the_store_stays_intact() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=6m", "strata-test-full"])
        .arg(&data)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        skip("mounting a 6 MiB tmpfs (needs root) to fill the registry's disk");
        return;
    }
    let _unmount = Unmount(data.clone());
    let s = Serve::start(&data);
    let c = s.client();
    let small = push_blob(&s, &c, "small and safe");

    // Fill the disk with 1 MiB chunks until the registry says so.
    let r = c.post(s.url("/v2/app/blobs/uploads/")).send().unwrap();
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let chunk = vec![0x5au8; 1 << 20];
    let mut answer = None;
    for i in 0..12u64 {
        let r = c
            .patch(s.url(&loc))
            .header("Content-Range", format!("{}-{}", i << 20, ((i + 1) << 20) - 1))
            .body(chunk.clone())
            .send()
            .unwrap();
        if r.status() != 202 {
            let status = r.status().as_u16();
            let body: Value = serde_json::from_slice(&r.bytes().unwrap()).unwrap();
            answer = Some((status, body));
            break;
        }
    }
    let (status, body) = answer.expect("a 6 MiB disk took 12 MiB");
    assert_eq!(status, 507, "{body}");
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("disk is full"), "{message}");

    // The failed session is gone (its bytes freed); nothing half-written
    // is visible; what was stored before is intact and served.
    assert_eq!(c.get(s.url(&loc)).send().unwrap().status(), 404);
    let blobs: Vec<_> = std::fs::read_dir(data.join("store/blobs/sha256"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(blobs, vec![small.hex().to_string()]);
    let got = c
        .get(s.url(&format!("/v2/app/blobs/{small}")))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    assert_eq!(&got[..], b"small and safe");
    // And the registry goes on working once space is back.
    push_blob(&s, &c, "still accepting pushes");
}

#[test]
fn blobs_over_the_configured_limit_get_413_and_leave_nothing() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let s = Serve::start_with(&data, &["--max-blob-mib", "1"]);
    let c = s.client();
    push_blob(&s, &c, "under the limit");
    let r = c.post(s.url("/v2/app/blobs/uploads/")).send().unwrap();
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let part = vec![1u8; 600 << 10];
    let r = c
        .patch(s.url(&loc))
        .header("Content-Range", format!("0-{}", part.len() - 1))
        .body(part.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = c
        .patch(s.url(&loc))
        .header("Content-Range", format!("{}-{}", part.len(), 2 * part.len() - 1))
        .body(part.clone())
        .send()
        .unwrap();
    assert_eq!(code(r), (413, "SIZE_INVALID".to_string()));
    assert_eq!(
        c.get(s.url(&loc)).send().unwrap().status(),
        404,
        "the session is dropped"
    );
    assert_eq!(std::fs::read_dir(data.join("uploads")).unwrap().count(), 0);
    assert_eq!(
        std::fs::read_dir(data.join("store/blobs/sha256"))
            .unwrap()
            .count(),
        1
    );
}
