//! Bad `layers.toml` input: every mistake names `file:line:col` and the
//! key, and nothing is written.

mod common;

use std::path::Path;

use common::*;

fn build_fails(dir: &Path, toml: &str) -> String {
    write(&dir.join("layers.toml"), toml);
    let out = run_in(dir, &["build", "--layout", "oci"]);
    assert!(!out.status.success(), "build should fail for:\n{toml}");
    assert!(!dir.join("oci").exists(), "no output may be written on error");
    let tiers = dir.join("store/meta/tier");
    assert!(
        !tiers.exists() || std::fs::read_dir(&tiers).unwrap().count() == 0,
        "no tier may be recorded on error"
    );
    stderr(&out)
}

#[test]
fn malformed_toml_names_line_and_column() {
    let d = tempfile::tempdir().unwrap();
    let e = build_fails(d.path(), "[tiers.base]\ncmd = [\"/bin/sh\"\n");
    assert!(e.contains("layers.toml:2:"), "{e}");
}

#[test]
fn unknown_key_names_the_key_and_position() {
    let d = tempfile::tempdir().unwrap();
    let e = build_fails(d.path(), "[tiers.base]\nenv = {}\nentrypiont = [\"/bin/sh\"]\n");
    assert!(e.contains("layers.toml:3:1"), "{e}");
    assert!(e.contains("entrypiont"), "{e}");
}

#[test]
fn unknown_source_key() {
    let d = tempfile::tempdir().unwrap();
    let e = build_fails(
        d.path(),
        "[tiers.base]\nsources = [\n  { content = \"x\", dest = \"/x\", sha265 = \"00\" },\n]\n",
    );
    assert!(e.contains("layers.toml:3:"), "{e}");
    assert!(e.contains("sha265"), "{e}");
}

#[test]
fn missing_parent() {
    let d = tempfile::tempdir().unwrap();
    let e = build_fails(d.path(), "[tiers.app]\nparent = \"tomcat\"\n");
    assert!(e.contains("layers.toml:1:1"), "{e}");
    assert!(e.contains("unknown parent `tomcat`"), "{e}");
}

#[test]
fn cyclic_parents() {
    let d = tempfile::tempdir().unwrap();
    let e = build_fails(d.path(), "[tiers.a]\nparent = \"b\"\n[tiers.b]\nparent = \"a\"\n");
    assert!(e.contains("its own ancestor"), "{e}");
    assert!(e.contains("a → b → a") || e.contains("b → a → b"), "{e}");
}

#[test]
fn bad_digest_value() {
    let d = tempfile::tempdir().unwrap();
    write(&d.path().join("x.tar"), tar_of(&[("f", "1")]));
    let e = build_fails(
        d.path(),
        "[tiers.base]\nsources = [\n  { tar = \"x.tar\", sha256 = \"abc\" },\n]\n",
    );
    assert!(e.contains("layers.toml:3:"), "{e}");
    assert!(e.contains("`sha256`"), "{e}");
    assert!(e.contains("64"), "{e}");
}

#[test]
fn url_without_digest() {
    let d = tempfile::tempdir().unwrap();
    let e = build_fails(
        d.path(),
        "[tiers.base]\nsources = [{ tar = \"https://example.invalid/x.tar.gz\" }]\n",
    );
    assert!(e.contains("layers.toml:2:"), "{e}");
    assert!(e.contains("needs `sha256` or `sha512`"), "{e}");
}

#[test]
fn missing_file() {
    let d = tempfile::tempdir().unwrap();
    let e = build_fails(
        d.path(),
        "[tiers.base]\nsources = [\n  { path = \"nope/dir\" },\n]\n",
    );
    assert!(e.contains("layers.toml:3:"), "{e}");
    assert!(e.contains("nope/dir does not exist"), "{e}");
}

#[test]
fn deb_glob_must_match_one_file() {
    let d = tempfile::tempdir().unwrap();
    let e = build_fails(
        d.path(),
        "[tiers.base]\nsources = [{ deb = \"debs/busybox_*.deb\" }]\n",
    );
    assert!(e.contains("matches 0 files"), "{e}");
}

#[test]
fn source_with_two_kinds() {
    let d = tempfile::tempdir().unwrap();
    let e = build_fails(
        d.path(),
        "[tiers.base]\nsources = [{ content = \"x\", dir = [\"/a\"], dest = \"/x\" }]\n",
    );
    assert!(e.contains("exactly one of"), "{e}");
    assert!(e.contains("content, dir"), "{e}");
}

#[test]
fn dest_that_climbs_out() {
    let d = tempfile::tempdir().unwrap();
    let e = build_fails(
        d.path(),
        "[tiers.base]\nsources = [{ content = \"x\", dest = \"/etc/../../x\" }]\n",
    );
    assert!(e.contains("`dest`"), "{e}");
    assert!(e.contains("climbs out"), "{e}");
}

#[test]
fn bad_mode_and_port() {
    let d = tempfile::tempdir().unwrap();
    let e = build_fails(
        d.path(),
        "[tiers.base]\nsources = [{ content = \"x\", dest = \"/x\", mode = \"rwx\" }]\n",
    );
    assert!(e.contains("`mode`") && e.contains("octal"), "{e}");
    let e = build_fails(d.path(), "[tiers.base]\nports = [\"http\"]\n");
    assert!(e.contains("layers.toml:2:") && e.contains("`ports`"), "{e}");
}

#[test]
fn missing_config_file() {
    let d = tempfile::tempdir().unwrap();
    let out = run_in(d.path(), &["build", "-c", "nope.toml"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("cannot read nope.toml"), "{}", stderr(&out));
}

#[test]
fn shipped_layers_toml_resolves() {
    // The production alpine chain cannot be downloaded here, but it must
    // parse, validate and plan: every URL pinned by digest.
    let plan = strata::spec::load(&repo().join("layers.toml"), &[]).expect("layers.toml resolves");
    let names: Vec<_> = plan.tiers.iter().map(|t| t.name.as_str()).collect();
    for t in ["alpine", "tools", "jdk", "tomcat"] {
        assert!(names.contains(&t), "{names:?}");
    }
    for t in &plan.tiers {
        for s in &t.sources {
            if let strata::spec::SourceKind::Tar(strata::spec::Origin::Url(u)) = &s.kind {
                assert!(s.digest.is_some(), "{u} is not pinned");
            }
        }
    }
    assert_eq!(plan.chain("tomcat").len(), 4);
}

/// How often `needle` occurs in `haystack`.
fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[test]
fn a_build_error_names_each_cause_once() {
    let d = tempfile::tempdir().unwrap();
    let e = run_in(d.path(), &["build", "--layout", "oci", "-c", "missing.toml"]);
    let e = stderr(&e);
    assert_eq!(count(&e, "os error 2"), 1, "{e}");
    // An archive the builder cannot read, and one with a wrong digest.
    let d = tempfile::tempdir().unwrap();
    write(&d.path().join("g.tar"), "not a tar archive");
    let e = build_fails(d.path(), "[tiers.base]\nsources = [{ tar = \"g.tar\" }]\n");
    let line = e.lines().find(|l| l.starts_with("error: ")).unwrap();
    assert_eq!(count(line, "g.tar"), 1, "{e}");
    let parts: Vec<&str> = line.split(": ").collect();
    for (i, p) in parts.iter().enumerate() {
        assert!(!parts[i + 1..].contains(p), "`{p}` repeats: {line}");
    }
    let d = tempfile::tempdir().unwrap();
    write(&d.path().join("f.tar"), tar_of(&[("etc/motd", "hi\n")]));
    let e = build_fails(
        d.path(),
        &format!(
            "[tiers.base]\nsources = [{{ tar = \"f.tar\", sha256 = \"{}\" }}]\n",
            "0".repeat(64)
        ),
    );
    assert_eq!(count(&e, &"0".repeat(64)), 1, "{e}");
}
