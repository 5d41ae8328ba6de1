//! The server's HTTP API against its own OpenAPI document: schemathesis
//! (from PyPI) generates requests for every operation from
//! `src/api/openapi.yaml` and checks every answer (no 5xx, documented
//! status codes, content types and schemas, valid requests accepted,
//! invalid ones refused); and the roles and metrics of a running server.

mod common;

use std::process::Command;

use common::*;
use serde_json::Value;

fn server_with_apps() -> (tempfile::TempDir, common::serve::Serve) {
    let d = tempfile::tempdir().unwrap();
    let apps = d.path().join("apps");
    std::fs::create_dir_all(&apps).unwrap();
    std::fs::copy(repo().join("deploy/apps/sample.toml"), apps.join("sample.toml")).unwrap();
    let serve = common::serve::Serve::start_with(&d.path().join("data"), &["--apps", apps.to_str().unwrap()]);
    (d, serve)
}

#[test]
fn the_api_matches_its_openapi_document() {
    if !have_tool("schemathesis") {
        return;
    }
    let (d, serve) = server_with_apps();
    let data = d.path().join("data");
    let o = strata()
        .args(["token", "create", "fuzz", "--role", "admin", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let admin = stdout(&o).trim().to_string();
    // The served document is the one in the repository.
    let served = reqwest::blocking::get(serve.url("/strata/api/openapi.yaml"))
        .unwrap()
        .text()
        .unwrap();
    assert_eq!(
        served,
        std::fs::read_to_string(repo().join("src/api/openapi.yaml")).unwrap()
    );
    drop(serve);
    // Restart so the admin token made above is loaded.
    let serve = common::serve::Serve::start_with(&data, &["--apps", d.path().join("apps").to_str().unwrap()]);
    for auth in [
        format!("Authorization: Bearer {admin}"),
        "X-Anonymous: 1".to_string(),
    ] {
        let o = Command::new("schemathesis")
            .arg("run")
            .arg(serve.url("/strata/api/openapi.yaml"))
            .arg("--url")
            .arg(serve.url(""))
            .args([
                "--checks",
                "all",
                "--max-examples",
                "25",
                "--seed",
                "7",
                "-H",
                &auth,
            ])
            .env("SCHEMATHESIS_HOOKS", "")
            .current_dir(d.path())
            .output()
            .unwrap();
        let out = format!("{}\n{}", stdout(&o), stderr(&o));
        assert!(o.status.success(), "schemathesis found failures:\n{out}");
        assert!(out.contains("passed"), "{out}");
    }
}

#[test]
fn roles_guard_the_api_and_tokens_made_by_an_admin_work_at_once() {
    let (d, serve) = server_with_apps();
    let http = reqwest::blocking::Client::new();
    let post = |path: &str, token: Option<&str>, body: Value| {
        let mut r = http.post(serve.url(path)).json(&body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send().unwrap()
    };
    // Anonymous callers read; the deploy token (made by Serve) deploys but
    // cannot make tokens; a wrong token is refused.
    let apps: Value = http
        .get(serve.url("/strata/api/apps"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(apps[0]["name"], "sample", "{apps}");
    assert_eq!(apps[0]["deployed"], serde_json::json!([]));
    assert_eq!(
        post("/strata/api/apps/sample/rollback", None, Value::Null).status(),
        401
    );
    assert_eq!(
        post("/strata/api/apps/sample/rollback", Some("st_wrong"), Value::Null).status(),
        401
    );
    let r = post(
        "/strata/api/apps/sample/rollback",
        Some(&serve.token),
        Value::Null,
    );
    assert_eq!(r.status(), 409, "nothing to roll back to");
    assert!(r.text().unwrap().contains("no deploy to roll back to"));
    let r = post(
        "/strata/api/tokens",
        Some(&serve.token),
        serde_json::json!({"name": "x", "role": "admin"}),
    );
    assert_eq!(r.status(), 403);
    // The prewarm API without a P2P origin says how to get one.
    let r = post(
        "/strata/api/prewarm",
        Some(&serve.token),
        serde_json::json!({"image": "a:1"}),
    );
    assert_eq!(r.status(), 404);
    assert!(r.text().unwrap().contains("--p2p-listen"));
    // Every refusal and attempt is in the audit log with who.
    let audit: Value = http
        .get(serve.url("/strata/api/audit"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let entries = audit.as_array().unwrap();
    assert!(
        entries
            .iter()
            .any(|e| e["who"] == "tests" && e["action"] == "token" && e["outcome"] == "refused"),
        "{audit}"
    );
    assert!(
        entries
            .iter()
            .any(|e| e["who"] == "tests" && e["action"] == "rollback" && e["outcome"] == "failed"),
        "{audit}"
    );
    // The server's metrics are served without a token.
    let m = common::scrape(&serve.url(""));
    assert!(
        m.contains("# TYPE strata_registry_request_seconds histogram"),
        "{m}"
    );
    assert!(m.contains("# TYPE strata_deploy_seconds histogram"), "{m}");
    drop(d);
}

#[test]
fn a_server_with_pull_auth_lets_no_anonymous_reader_in() {
    let d = tempfile::tempdir().unwrap();
    let serve =
        common::serve::Serve::start_with(&d.path().join("data"), &["--pull-auth", "--apps", "/nonexistent"]);
    let http = reqwest::blocking::Client::new();
    // The API and the metrics (app names, hosts' traffic) alike.
    let read = |path: &str| {
        let r = http.get(serve.url(path)).send().unwrap();
        assert_eq!(r.status(), 401, "{path}");
        assert!(r.headers().contains_key("www-authenticate"), "{path}");
        let r = http
            .get(serve.url(path))
            .bearer_auth(&serve.token)
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        r
    };
    assert_eq!(
        read("/strata/api/apps").json::<Value>().unwrap(),
        serde_json::json!([])
    );
    assert!(
        read("/metrics")
            .text()
            .unwrap()
            .contains("strata_registry_request_seconds")
    );
    // The dashboard sends anonymous browsers to the login page.
    let no_redirect = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = no_redirect.get(serve.url("/ui/apps")).send().unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/ui/login");
}
