//! The builder against real bytes: reproducible digests, the cache,
//! hostile archives, pinned downloads from a local HTTP server, and real
//! OCI tools reading the output.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use serde_json::Value;

/// A small stack: a base from a tar, a tools tier from a host directory
/// with fixes, and an app from a WAR.
fn small_stack(dir: &Path, war_body: &str) {
    write(
        &dir.join("rootfs.tar"),
        tar_of(&[
            ("bin/tool", "#!/bin/sh\necho tool\n"),
            ("etc/os-release", "ID=test\n"),
            ("usr/share/zoneinfo/Asia/Shanghai", "TZif-fake"),
            ("bin/sh@", "/bin/tool"),
        ]),
    );
    write(&dir.join("tools/usr/local/bin/hello"), "hello\n");
    write(&dir.join("tools/usr/local/share/doc/readme"), "doc\n");
    write_war(&dir.join("app.war"), war_body);
    write(
        &dir.join("layers.toml"),
        r#"
[tiers.base]
sources = [{ tar = "rootfs.tar" }, { dir = ["/tmp"], mode = "1777" }]
env = { PATH = "/usr/bin:/bin" }
cmd = ["/bin/sh"]

[tiers.tools]
parent = "base"
sources = [{ path = "tools", exclude = ["usr/local/share/**"] }]
fixes = { timezone = "Asia/Shanghai", encoding = "UTF-8", hostname = true, init = true }

[tiers.tomcat]
parent = "tools"
sources = [{ content = "server", dest = "/usr/local/tomcat/conf/server.xml" }]
fixes = { jvm = { max_ram_percentage = 70 } }
cmd = ["catalina.sh", "run"]
ports = [8080]

[app]
parent = "tomcat"
webapps = "/usr/local/tomcat/webapps"

[apps.shop]
war = "app.war"
"#,
    );
}

fn write_war(path: &Path, index: &str) {
    let f = std::fs::File::create(path).unwrap();
    let mut z = zip::ZipWriter::new(f);
    let opts = zip::write::SimpleFileOptions::default();
    z.add_directory("WEB-INF/", opts).unwrap();
    z.start_file("WEB-INF/web.xml", opts).unwrap();
    z.write_all(b"<web-app/>").unwrap();
    z.start_file("index.html", opts).unwrap();
    z.write_all(index.as_bytes()).unwrap();
    z.finish().unwrap();
}

fn build_json(dir: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["build", "--json", "--layout", "oci"];
    args.extend_from_slice(extra);
    let out = run_in(dir, &args);
    assert!(out.status.success(), "build failed: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn digests(report: &Value) -> Vec<(String, String, Option<String>)> {
    report["tiers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["tier"].as_str().unwrap().to_string(),
                t["manifest"]["digest"].as_str().unwrap().to_string(),
                t["layer"]["digest"].as_str().map(str::to_string),
            )
        })
        .collect()
}

#[test]
fn two_clean_builds_give_identical_digests() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    small_stack(a.path(), "v1");
    small_stack(b.path(), "v1");
    let ra = build_json(a.path(), &[]);
    let rb = build_json(b.path(), &[]);
    assert_eq!(digests(&ra), digests(&rb));
    assert_eq!(digests(&ra).len(), 4);
    // Byte-identical layouts, index included.
    let ia = std::fs::read(a.path().join("oci/index.json")).unwrap();
    let ib = std::fs::read(b.path().join("oci/index.json")).unwrap();
    assert_eq!(ia, ib);
    assert_eq!(
        strata::oci::layout::verify(&a.path().join("oci")).unwrap(),
        4 * 2 + 4
    );
}

#[test]
fn changing_the_war_rebuilds_only_the_app_tier() {
    let d = tempfile::tempdir().unwrap();
    small_stack(d.path(), "v1");
    let first = build_json(d.path(), &[]);
    assert!(
        first["tiers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["cached"] == false)
    );
    std::thread::sleep(std::time::Duration::from_millis(20));
    write_war(&d.path().join("app.war"), "v2");
    let second = build_json(d.path(), &[]);
    let (a, b) = (digests(&first), digests(&second));
    for i in 0..3 {
        assert_eq!(a[i], b[i], "tier {} must be unchanged", a[i].0);
        assert_eq!(second["tiers"][i]["cached"], true);
    }
    assert_eq!(a[3].0, "shop");
    assert_ne!(a[3].1, b[3].1);
    assert_eq!(second["tiers"][3]["cached"], false);

    // The file-level diff shows exactly the changed page.
    std::fs::rename(d.path().join("oci"), d.path().join("old")).unwrap();
    write_war(&d.path().join("app.war"), "v1");
    build_json(d.path(), &[]);
    let out = run_in(
        d.path(),
        &["diff", "--json", "--layout", "oci", "oci:old:shop", "shop"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let changes: Value = serde_json::from_slice(&out.stdout).unwrap();
    let changes = changes.as_array().unwrap();
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0]["path"], "usr/local/tomcat/webapps/ROOT/index.html");
    assert_eq!(changes[0]["change"], "modified");
    assert_eq!(changes[0]["old_size"], 2);
}

#[test]
fn fixes_and_config_are_baked_in() {
    let d = tempfile::tempdir().unwrap();
    small_stack(d.path(), "v1");
    build_json(d.path(), &[]);
    let out = run_in(
        d.path(),
        &["inspect", "--json", "--files", "--layout", "oci", "shop"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let env: Vec<&str> = v["config"]["config"]["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(env.contains(&"TZ=Asia/Shanghai"), "{env:?}");
    assert!(env.contains(&"LANG=C.UTF-8"), "{env:?}");
    assert!(
        env.contains(
            &"JAVA_TOOL_OPTIONS=-Dfile.encoding=UTF-8 -Dsun.jnu.encoding=UTF-8 -XX:MaxRAMPercentage=70.0 -XX:+ExitOnOutOfMemoryError"
        ),
        "{env:?}"
    );
    assert_eq!(
        v["config"]["config"]["Entrypoint"][0],
        "/usr/local/bin/strata-init"
    );
    assert_eq!(v["config"]["config"]["Cmd"][0], "catalina.sh");
    let files = v["files"].as_array().unwrap();
    let find = |p: &str| files.iter().find(|f| f["path"] == p).cloned();
    assert_eq!(
        find("etc/localtime").unwrap()["link"],
        "/usr/share/zoneinfo/Asia/Shanghai"
    );
    assert_eq!(find("etc/timezone").unwrap()["size"], 14);
    assert_eq!(find("tmp").unwrap()["mode"], 0o1777);
    assert!(find("usr/local/bin/hello").is_some());
    assert!(find("usr/local/share/doc/readme").is_none(), "excluded");
    assert!(find("usr/local/tomcat/webapps/ROOT/WEB-INF/web.xml").is_some());
    assert_eq!(v["layers"].as_array().unwrap().len(), 4);
}

fn hostile(entries: &[(&str, &str)], expect: &str) {
    let d = tempfile::tempdir().unwrap();
    write(&d.path().join("evil.tar"), tar_of(entries));
    write(
        &d.path().join("layers.toml"),
        "[tiers.base]\nsources = [{ content = \"ok\", dest = \"/ok\" }]\n[tiers.evil]\nparent = \"base\"\nsources = [{ tar = \"evil.tar\" }]\n",
    );
    let out = run_in(d.path(), &["build", "--layout", "oci"]);
    assert!(!out.status.success(), "a hostile archive must fail the build");
    let e = stderr(&out);
    assert!(e.contains("evil.tar") && e.contains(expect), "{e}");
    assert!(!d.path().join("oci").exists(), "no layout on failure");
    let tmp = d.path().join("store/tmp");
    assert_eq!(
        std::fs::read_dir(tmp).unwrap().count(),
        0,
        "no staging left behind"
    );
}

#[test]
fn tar_with_parent_dir_entry_is_refused() {
    hostile(&[("a", "1"), ("../escape", "x")], "climbs out of the root");
}

#[test]
fn tar_with_absolute_entry_is_refused() {
    hostile(&[("/etc/passwd", "x")], "absolute path");
}

#[test]
fn tar_with_escaping_symlink_is_refused() {
    hostile(&[("a/lnk@", "../../../etc")], "escapes the image root");
}

#[test]
fn tar_entry_through_a_symlink_is_refused() {
    hostile(&[("lnk@", "/etc"), ("lnk/x", "pwned")], "lies below symlink");
}

#[test]
fn wrong_sha256_of_local_archive_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let body = tar_of(&[("f", "1")]);
    write(&d.path().join("x.tar"), &body);
    let wrong = sha256_hex(b"something else");
    write(
        &d.path().join("layers.toml"),
        format!("[tiers.base]\nsources = [\n  {{ tar = \"x.tar\", sha256 = \"{wrong}\" }},\n]\n"),
    );
    let out = run_in(d.path(), &["build", "--layout", "oci"]);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(e.contains(&format!("expected sha256:{wrong}")), "{e}");
    assert!(e.contains(&sha256_hex(&body)), "{e}");
    assert!(e.contains("layers.toml:3:"), "{e}");
    assert!(!d.path().join("oci").exists());
}

/// Serves `body` for every request; counts requests.
fn serve(body: Vec<u8>) -> (String, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/rootfs.tar.gz", l.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        // Bounded: a test never makes more than a handful of requests.
        for stream in l.incoming().take(16) {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            h.fetch_add(1, Ordering::SeqCst);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(&body);
        }
    });
    (url, hits)
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

#[test]
fn downloads_are_verified_and_cached_by_digest() {
    let d = tempfile::tempdir().unwrap();
    let body = gzip(&tar_of(&[
        ("rootfs/etc/hostname", "box\n"),
        ("rootfs/bin/x", "x"),
    ]));
    let (url, hits) = serve(body.clone());
    let good = sha256_hex(&body);
    let toml = |digest: &str| {
        format!(
            "[tiers.base]\nsources = [{{ tar = \"{url}\", sha256 = \"{digest}\", strip_components = 1 }}]\n"
        )
    };
    // A wrong pin: refused, nothing stored.
    write(&d.path().join("layers.toml"), toml(&sha256_hex(b"nope")));
    let out = run_in(d.path(), &["build", "--layout", "oci"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("nothing was stored"), "{}", stderr(&out));
    assert!(!d.path().join(format!("store/blobs/sha256/{good}")).exists());
    // The right pin: downloaded once, then served from the store.
    write(&d.path().join("layers.toml"), toml(&good));
    build_json(d.path(), &[]);
    assert!(d.path().join(format!("store/blobs/sha256/{good}")).exists());
    let after_first = hits.load(Ordering::SeqCst);
    build_json(d.path(), &["--no-cache"]);
    assert_eq!(
        hits.load(Ordering::SeqCst),
        after_first,
        "second build must not download"
    );
    let out = run_in(d.path(), &["inspect", "--files", "--layout", "oci", "base"]);
    assert!(stdout(&out).contains("/etc/hostname"), "{}", stdout(&out));
}

#[test]
fn skopeo_and_umoci_read_the_layouts() {
    if !have_tool("skopeo") || !have_tool("umoci") {
        return;
    }
    for compression in ["zstd", "gzip"] {
        let d = tempfile::tempdir().unwrap();
        small_stack(d.path(), "v1");
        let toml = std::fs::read_to_string(d.path().join("layers.toml")).unwrap();
        write(
            &d.path().join("layers.toml"),
            format!("[build]\ncompression = \"{compression}\"\n{toml}"),
        );
        build_json(d.path(), &[]);
        let layout = format!("oci:{}:shop", d.path().join("oci").display());
        let out = std::process::Command::new("skopeo")
            .args(["inspect", "--raw", &layout])
            .output()
            .unwrap();
        assert!(out.status.success(), "skopeo inspect: {}", stderr(&out));
        let m: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(
            m["layers"][0]["mediaType"]
                .as_str()
                .unwrap()
                .ends_with(compression)
        );
        let dest = format!("oci:{}:copy", d.path().join("copy").display());
        let out = std::process::Command::new("skopeo")
            .args(["copy", &layout, &dest])
            .output()
            .unwrap();
        assert!(out.status.success(), "skopeo copy: {}", stderr(&out));
        if compression == "gzip" {
            let bundle = d.path().join("bundle");
            let out = std::process::Command::new("umoci")
                .args(["unpack", "--rootless", "--image"])
                .arg(format!("{}:shop", d.path().join("oci").display()))
                .arg(&bundle)
                .output()
                .unwrap();
            assert!(out.status.success(), "umoci unpack: {}", stderr(&out));
            let page =
                std::fs::read_to_string(bundle.join("rootfs/usr/local/tomcat/webapps/ROOT/index.html"))
                    .unwrap();
            assert_eq!(page, "v1");
            assert!(bundle.join("rootfs/etc/timezone").is_file());
        }
    }
}

#[test]
fn zstd_bytes_do_not_depend_on_the_worker_count() {
    let mut layers = Vec::new();
    for workers in ["1", "2", "7"] {
        let d = tempfile::tempdir().unwrap();
        // Enough data for several zstd jobs.
        let mut state = 7u64;
        let body: String = (0..24_000_000)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                (b'a' + (state >> 59) as u8) as char
            })
            .collect();
        write(&d.path().join("data/big.txt"), &body);
        write(
            &d.path().join("layers.toml"),
            "[tiers.t]\nsources = [{ path = \"data\" }]\n",
        );
        let out = strata()
            .current_dir(d.path())
            .env("STRATA_STORE", d.path().join("store"))
            .env("STRATA_ZSTD_WORKERS", workers)
            .args(["build", "--json", "--layout", "oci"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        layers.push(v["tiers"][0]["layer"]["digest"].as_str().unwrap().to_string());
    }
    assert_eq!(layers[0], layers[1]);
    assert_eq!(layers[1], layers[2]);
}

#[test]
fn a_killed_build_leaves_no_partial_blob_or_image() {
    let d = tempfile::tempdir().unwrap();
    // ~160 MB of poorly compressible data, so the layer takes a while.
    let mut state = 99u64;
    let chunk: Vec<u8> = (0..(16 << 20))
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    for i in 0..10 {
        let mut c = chunk.clone();
        c[0] = i;
        write(&d.path().join(format!("data/f{i}")), &c);
    }
    write(
        &d.path().join("layers.toml"),
        "[tiers.big]\nsources = [{ path = \"data\" }]\n",
    );
    let mut child = strata()
        .current_dir(d.path())
        .env("STRATA_STORE", d.path().join("store"))
        .args(["build", "--layout", "oci"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait (bounded) until the layer blob is being written, then kill -9.
    let tmp = d.path().join("store/tmp");
    let started = std::time::Instant::now();
    let mut seen_partial = false;
    while started.elapsed() < std::time::Duration::from_secs(20) {
        let partial = std::fs::read_dir(&tmp)
            .map(|rd| {
                rd.flatten().any(|e| {
                    e.file_name().to_string_lossy().starts_with("blob-")
                        && e.metadata().map(|m| m.len() > (1 << 20)).unwrap_or(false)
                })
            })
            .unwrap_or(false);
        if partial {
            seen_partial = true;
            break;
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(seen_partial, "the build finished before it could be interrupted");
    // Every visible blob matches its name; no tier record, no layout.
    let blobs = d.path().join("store/blobs/sha256");
    for e in std::fs::read_dir(&blobs).unwrap().flatten() {
        let bytes = std::fs::read(e.path()).unwrap();
        assert_eq!(
            sha256_hex(&bytes),
            e.file_name().to_string_lossy(),
            "corrupt blob visible"
        );
    }
    assert!(!d.path().join("oci").exists());
    assert!(!d.path().join("store/meta/tier").exists());
    // The next build succeeds and cleans nothing it should not.
    let out = run_in(d.path(), &["build", "--layout", "oci"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(strata::oci::layout::verify(&d.path().join("oci")).unwrap(), 3);
}

#[test]
fn base_images_deletes_and_hard_links() {
    let d = tempfile::tempdir().unwrap();
    small_stack(d.path(), "v1");
    build_json(d.path(), &["--tier", "tools", "--docker-archive", "tools.tar"]);
    // A second config starts from the first build's output, as an OCI
    // layout and as a docker-archive.
    write(&d.path().join("extra/a.txt"), "same bytes");
    std::fs::hard_link(d.path().join("extra/a.txt"), d.path().join("extra/b.txt")).unwrap();
    write(
        &d.path().join("second/layers.toml"),
        r#"
[tiers.fromoci]
base = "oci:../oci:tools"
sources = [{ path = "../extra", dest = "/srv" }]
delete = ["/etc/os-release"]

[tiers.fromarchive]
base = "docker-archive:../tools.tar:strata/tools:latest"
"#,
    );
    let out = run_in(&d.path().join("second"), &["build", "--json", "--layout", "oci"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let files = |name: &str| {
        let o = run_in(
            &d.path().join("second"),
            &["inspect", "--json", "--files", "--layout", "oci", name],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_slice::<Value>(&o.stdout).unwrap()
    };
    let v = files("fromoci");
    let list = v["files"].as_array().unwrap();
    let get = |p: &str| list.iter().find(|f| f["path"] == p).cloned();
    assert!(get("etc/os-release").is_none(), "deleted by a whiteout");
    assert!(get("usr/local/bin/hello").is_some(), "the base's files are there");
    assert_eq!(get("srv/a.txt").unwrap()["kind"], "file");
    let b = get("srv/b.txt").unwrap();
    assert_eq!(b["kind"], "hardlink");
    assert_eq!(b["link"], "srv/a.txt");
    assert_eq!(b["digest"], get("srv/a.txt").unwrap()["digest"]);
    assert_eq!(v["layers"].as_array().unwrap().len(), 3);
    assert_eq!(
        v["config"]["config"]["Env"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e == &"TZ=Asia/Shanghai")
            .count(),
        1
    );
    let a = files("fromarchive");
    assert!(
        a["files"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["path"] == "etc/os-release")
    );
    // The archive's layers are gzip transcodes of the same tars.
    let o = run_in(d.path(), &["inspect", "--json", "--layout", "oci", "tools"]);
    let tools: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        a["config"]["rootfs"]["diff_ids"],
        tools["config"]["rootfs"]["diff_ids"]
    );
    assert!(a["layers"][0]["media_type"].as_str().unwrap().ends_with("gzip"));
}

#[test]
fn tar_compression_is_detected_from_the_bytes() {
    let d = tempfile::tempdir().unwrap();
    let plain = tar_of(&[("top/etc/hostname", "box\n")]);
    let xz = {
        let mut e = xz2::write::XzEncoder::new(Vec::new(), 6);
        e.write_all(&plain).unwrap();
        e.finish().unwrap()
    };
    let zst = zstd::encode_all(&plain[..], 3).unwrap();
    // Misleading names on purpose: the bytes decide.
    write(&d.path().join("a.tar.gz"), &plain);
    write(&d.path().join("b.tar"), gzip(&plain));
    write(&d.path().join("c.bin"), &xz);
    write(&d.path().join("d.tar.xz"), &zst);
    let mut toml = String::new();
    for (i, f) in ["a.tar.gz", "b.tar", "c.bin", "d.tar.xz"].iter().enumerate() {
        toml.push_str(&format!(
            "[tiers.t{i}]\nsources = [{{ tar = \"{f}\", strip_components = 1, sha256 = \"{}\" }}]\n",
            sha256_hex(&std::fs::read(d.path().join(f)).unwrap())
        ));
    }
    write(&d.path().join("layers.toml"), toml);
    let r = build_json(d.path(), &[]);
    let layers: Vec<_> = r["tiers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["diff_id"].clone())
        .collect();
    assert_eq!(layers.len(), 4);
    assert!(
        layers.iter().all(|l| l == &layers[0]),
        "same content, same layer: {layers:?}"
    );
}
