//! `run` steps: commands executed in a container of the parent tier
//! through the real Docker engine; the filesystem diff becomes the layer.

mod common;

use std::process::Command;

use common::*;

fn config(dir: &std::path::Path, steps: &str) {
    let debs = repo().join("base-images/debs");
    write(
        &dir.join("layers.toml"),
        format!(
            r#"
[tiers.base]
sources = [
  {{ deb = "{debs}/busybox-static_*.deb", exclude = ["usr/share/**"] }},
  {{ symlink = "busybox", paths = ["/bin/sh", "/bin/echo", "/bin/rm", "/bin/mkdir", "/bin/cat", "/bin/touch", "/bin/ls"] }},
  {{ content = "root:x:0:\n", dest = "/etc/group" }},
]
env = {{ PATH = "/bin" }}

[tiers.tools]
parent = "base"
sources = [{{ content = "from a source\n", dest = "/opt/src.txt" }}]
run = [{steps}]
cmd = ["/bin/cat", "/hello.txt"]
"#,
            debs = debs.display()
        ),
    );
}

#[test]
fn run_steps_become_the_tier_layer() {
    if !have_docker() {
        return;
    }
    let Some(_) = debs() else { return };
    let d = tempfile::tempdir().unwrap();
    config(
        d.path(),
        r#""echo built-by-run > /hello.txt", "rm /etc/group", "cat /opt/src.txt > /opt/copy.txt""#,
    );
    let tag = unique("run");
    let _cleanup = DockerCleanup {
        containers: vec![],
        images: vec![format!("strata/base:{tag}"), format!("strata/tools:{tag}")],
    };
    let out = run_in(d.path(), &["build", "--layout", "oci", "--tag", &tag, "--load"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let files = run_in(d.path(), &["inspect", "--files", "--layout", "oci", "tools"]);
    let listing = stdout(&files);
    assert!(listing.contains("/hello.txt"), "{listing}");
    assert!(listing.contains("/opt/copy.txt"), "{listing}");
    assert!(
        !listing.contains("/etc/group"),
        "deleted by a whiteout: {listing}"
    );
    let o = Command::new("docker")
        .args(["run", "--rm", &format!("strata/tools:{tag}")])
        .output()
        .unwrap();
    assert_eq!(stdout(&o), "built-by-run\n", "{}", stderr(&o));
    let o = Command::new("docker")
        .args([
            "run",
            "--rm",
            "--entrypoint",
            "/bin/cat",
            &format!("strata/tools:{tag}"),
            "/opt/copy.txt",
        ])
        .output()
        .unwrap();
    assert_eq!(stdout(&o), "from a source\n");
    // No helper images or containers are left behind.
    let left = Command::new("docker")
        .args(["images", "-q", "strata-run/tools"])
        .output()
        .unwrap();
    assert_eq!(stdout(&left).trim(), "");
}

#[test]
fn a_failing_run_step_fails_the_build_with_its_output() {
    if !have_docker() {
        return;
    }
    let Some(_) = debs() else { return };
    let d = tempfile::tempdir().unwrap();
    config(d.path(), r#""echo about-to-fail", "cat /does/not/exist""#);
    // Its own tier name, so its helper image never shows up in the other
    // test's check for leftovers.
    let toml = std::fs::read_to_string(d.path().join("layers.toml")).unwrap();
    write(
        &d.path().join("layers.toml"),
        toml.replace("[tiers.tools]", "[tiers.broken]"),
    );
    let out = run_in(d.path(), &["build", "--layout", "oci"]);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(e.contains("run step failed with exit code 1"), "{e}");
    assert!(e.contains("about-to-fail"), "{e}");
    assert!(!d.path().join("oci").exists());
    let left = Command::new("docker")
        .args(["images", "-q", "strata-run/broken"])
        .output()
        .unwrap();
    assert_eq!(stdout(&left).trim(), "", "a failed run leaves no helper image");
}
