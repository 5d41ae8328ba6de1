//! `strata serve` hardening (issue 16), over raw HTTP against a real
//! server: media types belong to a repository's manifest, manifests
//! reference only their repository's blobs, upload sessions are tied to
//! their repository, serialized, range-checked and expire, and a read-only
//! token is told it lacks the right, not the credential.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use common::serve::{Serve, error_of, push_blob};
use common::*;
use reqwest::blocking::Client;
use serde_json::Value;
use strata::digest::Digest;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// A small image: a real config (so skopeo can inspect it) and one layer.
fn image(s: &Serve, c: &Client, repo: &str, media_type: Option<&str>) -> String {
    let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let cfg = push_blob(s, c, repo, config);
    let layer = push_blob(s, c, repo, b"not really a tar");
    let mut m = serde_json::json!({
        "schemaVersion": 2,
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg.to_string(), "size": config.len() },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer.to_string(), "size": 16 }],
    });
    if let Some(t) = media_type {
        m["mediaType"] = Value::String(t.into());
    }
    m.to_string()
}

fn put_manifest(
    s: &Serve,
    c: &Client,
    repo: &str,
    reference: &str,
    ct: Option<&str>,
    body: &str,
) -> reqwest::blocking::Response {
    let mut req = c
        .put(s.url(&format!("/v2/{repo}/manifests/{reference}")))
        .body(body.to_string());
    if let Some(ct) = ct {
        req = req.header("Content-Type", ct);
    }
    req.send().unwrap()
}

fn served_type(s: &Serve, c: &Client, repo: &str, reference: &str) -> String {
    let r = c
        .get(s.url(&format!("/v2/{repo}/manifests/{reference}")))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{repo}:{reference}");
    r.headers()["content-type"].to_str().unwrap().to_string()
}

/// Files under DATA/uploads.
fn upload_files(data: &Path) -> Vec<String> {
    std::fs::read_dir(data.join("uploads"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Starts a session in `repo`; returns its location path and id.
fn start_session(s: &Serve, c: &Client, repo: &str) -> (String, String) {
    let r = c
        .post(s.url(&format!("/v2/{repo}/blobs/uploads/")))
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let id = r.headers()["docker-upload-uuid"].to_str().unwrap().to_string();
    (loc, id)
}

fn session_range(s: &Serve, c: &Client, loc: &str) -> (u16, String) {
    let r = c.get(s.url(loc)).send().unwrap();
    let range = r
        .headers()
        .get("range")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (r.status().as_u16(), range)
}

/// Polls `f` every 20 ms for at most `limit`.
fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

#[test]
fn a_push_to_one_repository_never_changes_what_another_serves() {
    let d = tempfile::tempdir().unwrap();
    let s = Serve::start(&d.path().join("data"));
    let c = s.client();
    let m = image(&s, &c, "orig", Some(OCI_MANIFEST));
    assert_eq!(
        put_manifest(&s, &c, "orig", "v1", Some(OCI_MANIFEST), &m).status(),
        201
    );
    // The same bytes into another repository, with a Content-Type that
    // contradicts the manifest's own mediaType: refused.
    image(&s, &c, "other", Some(OCI_MANIFEST));
    let (status, code, msg) = error_of(put_manifest(&s, &c, "other", "v1", Some("text/plain"), &m));
    assert_eq!((status, code.as_str()), (400, "MANIFEST_INVALID"), "{msg}");
    assert!(msg.contains("text/plain") && msg.contains(OCI_MANIFEST), "{msg}");
    assert_eq!(served_type(&s, &c, "orig", "v1"), OCI_MANIFEST);

    // Without a mediaType in the body the Content-Type decides, per
    // repository: one push never changes what another repository serves.
    let bare = image(&s, &c, "x", None);
    image(&s, &c, "y", None);
    assert_eq!(
        put_manifest(&s, &c, "x", "v1", Some(OCI_MANIFEST), &bare).status(),
        201
    );
    assert_eq!(
        put_manifest(&s, &c, "y", "v1", Some(DOCKER_MANIFEST), &bare).status(),
        201
    );
    assert_eq!(served_type(&s, &c, "x", "v1"), OCI_MANIFEST);
    assert_eq!(served_type(&s, &c, "y", "v1"), DOCKER_MANIFEST);
    // A Content-Type that names no manifest type is no manifest type.
    image(&s, &c, "z", None);
    let (status, code, msg) = error_of(put_manifest(&s, &c, "z", "v1", Some("text/plain"), &bare));
    assert_eq!((status, code.as_str()), (400, "MANIFEST_INVALID"), "{msg}");

    // A real client still reads the original image.
    if have_tool("skopeo") || skip("skopeo") {
        let o = Command::new("skopeo")
            .args(["inspect", "--tls-verify=false"])
            .arg(format!("docker://127.0.0.1:{}/orig:v1", s.port))
            .output()
            .unwrap();
        assert!(o.status.success(), "skopeo inspect: {}", stderr(&o));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["Os"], "linux", "{v}");
    }
}

#[test]
fn a_manifest_may_reference_only_its_own_repositorys_blobs() {
    let d = tempfile::tempdir().unwrap();
    let s = Serve::start(&d.path().join("data"));
    let c = s.client();
    // Blobs pushed to `a/b` only.
    let m = image(&s, &c, "a/b", Some(OCI_MANIFEST));
    let (status, code, msg) = error_of(put_manifest(&s, &c, "iso", "v1", Some(OCI_MANIFEST), &m));
    assert_eq!((status, code.as_str()), (400, "MANIFEST_BLOB_UNKNOWN"), "{msg}");
    assert_eq!(
        c.get(s.url("/v2/iso/manifests/v1")).send().unwrap().status(),
        404,
        "nothing was stored"
    );
    // Once mounted into `iso`, the same manifest is accepted, and pullable.
    let v: Value = serde_json::from_str(&m).unwrap();
    let blobs = [&v["config"]["digest"], &v["layers"][0]["digest"]];
    for b in blobs {
        let b = b.as_str().unwrap();
        let r = c
            .post(s.url(&format!("/v2/iso/blobs/uploads/?mount={b}&from=a/b")))
            .send()
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    assert_eq!(
        put_manifest(&s, &c, "iso", "v1", Some(OCI_MANIFEST), &m).status(),
        201
    );
    for b in blobs {
        let r = c
            .get(s.url(&format!("/v2/iso/blobs/{}", b.as_str().unwrap())))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // An index may name only manifests of its own repository.
    let md = Digest::sha256_of(m.as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{ "mediaType": OCI_MANIFEST, "digest": md.to_string(), "size": m.len() }],
    })
    .to_string();
    let ct = Some("application/vnd.oci.image.index.v1+json");
    let (status, code, msg) = error_of(put_manifest(&s, &c, "elsewhere", "idx", ct, &index));
    assert_eq!((status, code.as_str()), (400, "MANIFEST_BLOB_UNKNOWN"), "{msg}");
    assert_eq!(put_manifest(&s, &c, "iso", "idx", ct, &index).status(), 201);
}

#[test]
fn refused_and_cut_uploads_leave_no_session_behind() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let s = Serve::start(&data);
    let c = s.client();
    for _ in 0..3 {
        let r = c
            .post(s.url("/v2/app/blobs/uploads/?digest=sha256:nothex"))
            .body("hello")
            .send()
            .unwrap();
        assert_eq!(error_of(r).1, "DIGEST_INVALID");
    }
    assert_eq!(
        upload_files(&data),
        Vec::<String>::new(),
        "a refused request creates no session"
    );

    // A monolithic upload cut short: nobody could resume it, so it goes.
    let dg = Digest::sha256_of(&[7u8; 1000]);
    let mut tcp = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    write!(
        tcp,
        "POST /v2/app/blobs/uploads/?digest={dg} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: 1000\r\n\r\n",
        s.token
    )
    .unwrap();
    tcp.write_all(&[7u8; 10]).unwrap();
    tcp.flush().unwrap();
    assert!(
        eventually(Duration::from_secs(5), || !upload_files(&data).is_empty()),
        "the server started the session"
    );
    drop(tcp);
    assert!(
        eventually(Duration::from_secs(5), || upload_files(&data).is_empty()),
        "left behind: {:?}",
        upload_files(&data)
    );
}

/// Sets a file's modification time `ago` into the past.
fn age(path: &Path, ago: Duration) {
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(SystemTime::now() - ago).unwrap();
}

#[test]
fn idle_upload_sessions_expire_in_gc_and_in_the_running_server() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let s = Serve::start_with(&data, &["--upload-ttl", "1h"]);
    let c = s.client();
    let (old_loc, old_id) = start_session(&s, &c, "app");
    let (fresh_loc, _) = start_session(&s, &c, "app");
    let r = c
        .patch(s.url(&old_loc))
        .header("Content-Range", "0-4")
        .body("hello")
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    age(&data.join("uploads").join(&old_id), Duration::from_secs(2 * 3600));
    let o = strata()
        .args(["gc", "--json", "--upload-ttl", "1h", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["expired_uploads"], 1, "{v}");
    assert_eq!(session_range(&s, &c, &old_loc).0, 404);
    assert_eq!(session_range(&s, &c, &fresh_loc).0, 204);
    drop(s);

    // The running server purges by itself, with the TTL from its config.
    let cfg = d.path().join("serve.toml");
    std::fs::write(&cfg, "[storage]\nupload_ttl = \"2s\"\n").unwrap();
    let data2 = d.path().join("data2");
    let s = Serve::start_with(&data2, &["--config", cfg.to_str().unwrap()]);
    let c = s.client();
    let (loc, _) = start_session(&s, &c, "app");
    assert_eq!(session_range(&s, &c, &loc).0, 204);
    assert!(
        eventually(Duration::from_secs(15), || session_range(&s, &c, &loc).0 == 404),
        "the idle session is still there"
    );
    assert_eq!(upload_files(&data2), Vec::<String>::new());
}

/// Sends the head of a PATCH and `first` bytes of its body over raw TCP.
fn raw_patch(s: &Serve, loc: &str, range: &str, len: usize, first: &[u8]) -> TcpStream {
    let mut tcp = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    write!(
        tcp,
        "PATCH {loc} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Range: {range}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n",
        s.token
    )
    .unwrap();
    tcp.write_all(first).unwrap();
    tcp.flush().unwrap();
    tcp
}

#[test]
fn racing_patches_on_one_session_never_interleave() {
    let d = tempfile::tempdir().unwrap();
    let s = Serve::start(&d.path().join("data"));
    let c = s.client();
    let (loc, _) = start_session(&s, &c, "app");
    // A slow PATCH: 3 of its 4 MiB arrive, then it stalls.
    let a = noise(4 << 20, 16);
    let mut slow = raw_patch(&s, &loc, &format!("0-{}", a.len() - 1), a.len(), &a[..3 << 20]);
    // Wait until the server has written some of it and the size is steady.
    let mut last = String::new();
    assert!(eventually(Duration::from_secs(10), || {
        let (_, range) = session_range(&s, &c, &loc);
        let steady = range == last && range != "0-0";
        last = range;
        steady
    }));
    let have: u64 = last.split('-').nth(1).unwrap().parse::<u64>().unwrap() + 1;
    // A second PATCH whose offset matches what is on disk now.
    let r = c
        .patch(s.url(&loc))
        .header("Content-Range", format!("{have}-{}", have + 4))
        .body("BBBBB")
        .send()
        .unwrap();
    let (status, code, msg) = error_of(r);
    assert_eq!(status, 416, "{code} {msg}");
    // The slow one finishes and the blob is exactly its bytes.
    slow.write_all(&a[3 << 20..]).unwrap();
    let mut answer = String::new();
    slow.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    let dg = Digest::sha256_of(&a);
    let r = c.put(s.url(&format!("{loc}?digest={dg}"))).send().unwrap();
    assert_eq!(r.status(), 201);
}

#[test]
fn a_chunks_content_range_must_parse_and_match_its_body() {
    let d = tempfile::tempdir().unwrap();
    let s = Serve::start(&d.path().join("data"));
    let c = s.client();
    let (loc, _) = start_session(&s, &c, "app");
    let patch = |range: &str, body: reqwest::blocking::Body| {
        c.patch(s.url(&loc))
            .header("Content-Range", range)
            .body(body)
            .send()
            .unwrap()
    };
    assert_eq!(patch("0-4", "hello".into()).status(), 202);
    // An end past the body (with and without a Content-Length), a body
    // past the end, and a header that is no range at all.
    let streamed = |b: &'static [u8]| reqwest::blocking::Body::new(std::io::Cursor::new(b));
    for (range, body) in [
        ("5-100", "world".into()),
        ("5-100", streamed(b"world")),
        ("5-6", streamed(b"world")),
        ("garbage", "world".into()),
        ("9-5", "world".into()),
    ] {
        let (status, code, msg) = error_of(patch(range, body));
        assert!(
            status == 400 && code == "SIZE_INVALID" || status == 416 && code == "BLOB_UPLOAD_INVALID",
            "{range}: {status} {code} {msg}"
        );
        assert_eq!(
            session_range(&s, &c, &loc),
            (204, "0-4".into()),
            "{range}: the session is unchanged"
        );
    }
    assert_eq!(patch("5-9", streamed(b"world")).status(), 202);
    let dg = Digest::sha256_of(b"helloworld");
    let r = c.put(s.url(&format!("{loc}?digest={dg}"))).send().unwrap();
    assert_eq!(r.status(), 201);
}

#[test]
fn an_upload_session_belongs_to_its_repository() {
    let d = tempfile::tempdir().unwrap();
    let s = Serve::start(&d.path().join("data"));
    let c = s.client();
    let (loc, id) = start_session(&s, &c, "one");
    let two = format!("/v2/two/blobs/uploads/{id}");
    let r = c
        .patch(s.url(&two))
        .header("Content-Range", "0-4")
        .body("hello")
        .send()
        .unwrap();
    assert_eq!(error_of(r).1, "BLOB_UPLOAD_UNKNOWN");
    let dg = Digest::sha256_of(b"hello");
    let r = c
        .put(s.url(&format!("{two}?digest={dg}")))
        .body("hello")
        .send()
        .unwrap();
    assert_eq!(error_of(r).1, "BLOB_UPLOAD_UNKNOWN");
    assert_eq!(session_range(&s, &c, &two).0, 404);
    assert_eq!(
        error_of(c.delete(s.url(&two)).send().unwrap()).1,
        "BLOB_UPLOAD_UNKNOWN"
    );
    assert_eq!(
        c.get(s.url(&format!("/v2/two/blobs/{dg}")))
            .send()
            .unwrap()
            .status(),
        404
    );
    // Its own repository completes it.
    let r = c
        .put(s.url(&format!("{loc}?digest={dg}")))
        .body("hello")
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(
        c.get(s.url(&format!("/v2/one/blobs/{dg}")))
            .send()
            .unwrap()
            .status(),
        200
    );
}

#[test]
fn a_read_token_that_pushes_is_denied_by_role() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let o = strata()
        .args(["token", "create", "viewer", "--role", "read", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let read = stdout(&o).trim().to_string();
    let s = Serve::start(&data);
    let anon = Client::new();
    let dg = Digest::sha256_of(b"hello");
    let push = |auth: String| {
        anon.post(s.url(&format!("/v2/app/blobs/uploads/?digest={dg}")))
            .header("Authorization", auth)
            .body("hello")
            .send()
            .unwrap()
    };
    let want = "token viewer has role read; pushing needs deploy";
    let (status, code, msg) = error_of(push(format!("Bearer {read}")));
    assert_eq!((status, code.as_str(), msg.as_str()), (403, "DENIED", want));
    // The same through Docker's token flow.
    let r = anon
        .get(s.url("/token"))
        .basic_auth("viewer", Some(&read))
        .send()
        .unwrap();
    let v: Value = serde_json::from_slice(&r.bytes().unwrap()).unwrap();
    let session = v["token"].as_str().unwrap();
    let (status, code, msg) = error_of(push(format!("Bearer {session}")));
    assert_eq!((status, code.as_str(), msg.as_str()), (403, "DENIED", want));
    // Reading is fine.
    assert_eq!(
        anon.get(s.url("/v2/app/tags/list"))
            .bearer_auth(&read)
            .send()
            .unwrap()
            .status(),
        404
    );

    // `strata push` says so.
    write(
        &d.path().join("layers.toml"),
        "[tiers.base]\nsources = [{ content = \"v1\", dest = \"/srv/version\" }]\n",
    );
    let store = d.path().join("store");
    let layout = d.path().join("oci");
    let o = strata()
        .env("STRATA_STORE", &store)
        .args(["build", "-c"])
        .arg(d.path().join("layers.toml"))
        .arg("--layout")
        .arg(&layout)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let o = strata()
        .env("STRATA_STORE", &store)
        .env("STRATA_REGISTRY_AUTH", &read)
        .args([
            "push",
            "base",
            &format!("127.0.0.1:{}/team/base:1", s.port),
            "--layout",
        ])
        .arg(&layout)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains(want), "{err}");
    assert!(!err.contains("refused the credential"), "{err}");
}

#[test]
fn the_credentials_file_is_created_private() {
    if !have_tool("strace") {
        skip("strace");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let trace = d.path().join("trace");
    let creds = d.path().join("credentials");
    let o = Command::new("strace")
        .args(["-f", "-e", "trace=open,openat,creat", "-o"])
        .arg(&trace)
        .arg(env!("CARGO_BIN_EXE_strata"))
        .args(["token", "create", "ci", "--credentials"])
        .arg(&creds)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&trace).unwrap();
    let open = text
        .lines()
        .find(|l| l.contains(creds.to_str().unwrap()) && l.contains("O_CREAT"))
        .unwrap_or_else(|| panic!("no creating open of the credentials file:\n{text}"));
    // The mode given to open(2) itself: never readable by others, not even
    // for a moment before a chmod.
    assert!(open.contains(", 0600)"), "{open}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&creds).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn logs_to_a_file_carry_no_colour_codes() {
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("serve.log");
    let mut child = strata()
        .args(["serve", "--listen", "127.0.0.1:0", "--open-push", "--data"])
        .arg(d.path().join("data"))
        .env("STRATA_LOG", "trace")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let port = line.trim().rsplit(':').next().unwrap().to_string();
    let r = reqwest::blocking::get(format!("http://127.0.0.1:{port}/v2/")).unwrap();
    assert_eq!(r.status(), 200);
    let logged = eventually(Duration::from_secs(5), || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("TRACE"))
    });
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(logged, "nothing was logged: {text}");
    assert!(!text.contains('\u{1b}'), "{text:?}");
}
