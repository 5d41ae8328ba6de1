//! The server's HTTP API against its own OpenAPI document: schemathesis
//! (from PyPI) generates requests for every operation from
//! `src/api/openapi.yaml` and checks every answer (no 5xx, documented
//! status codes, content types and schemas, valid requests accepted,
//! invalid ones refused); the roles and metrics of a running server; and
//! who may read: a server without flags wants a token for every read of
//! the API, the dashboard and `/metrics` (registry pulls stay anonymous),
//! `--public-read` opens reads and nothing else.

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
    // The deploy token (made by Serve) reads and deploys but cannot make
    // tokens; a wrong token is refused.
    let apps: Value = serve.get("/strata/api/apps", Some(&serve.token)).json().unwrap();
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
    let audit: Value = serve.get("/strata/api/audit", Some(&serve.token)).json().unwrap();
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
    // The server's metrics, to a token.
    let m = common::scrape(&serve.url(""), Some(&serve.token));
    assert!(
        m.contains("# TYPE strata_registry_request_seconds histogram"),
        "{m}"
    );
    assert!(m.contains("# TYPE strata_deploy_seconds histogram"), "{m}");
    drop(d);
}

/// The API's reads a test asks for, each answering 200 to a reader on
/// a server without a P2P origin and with the app `sample` never deployed.
const API_READS: [&str; 6] = [
    "/strata/api/apps",
    "/strata/api/apps/sample/history",
    "/strata/api/images",
    "/strata/api/tiers",
    "/strata/api/prewarm",
    "/strata/api/audit",
];

/// Reads that answer something else than 200 even to a reader here (no
/// P2P origin, nothing deployed, no job): still 401 without a token.
const OTHER_READS: [&str; 5] = [
    "/strata/api/apps/sample",
    "/strata/api/apps/sample/logs?tail=5",
    "/strata/api/hosts",
    "/strata/api/p2p/stats",
    "/strata/api/prewarm/1",
];

/// The dashboard's pages.
const PAGES: [&str; 8] = [
    "/ui/apps",
    "/ui/apps/sample",
    "/ui/apps/sample/logs?instance=1",
    "/ui/apps/sample/rollback",
    "/ui/prewarm",
    "/ui/hosts",
    "/ui/tiers",
    "/ui/audit",
];

fn no_redirects() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Logs in to the dashboard with `token`, asking to land on `next`:
/// the answer (a 303 on success) and the session cookie it set.
fn log_in(serve: &common::serve::Serve, token: &str, next: &str) -> (reqwest::blocking::Response, String) {
    let r = no_redirects()
        .post(serve.url("/ui/login"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(common::form(&[("token", token), ("next", next)]))
        .send()
        .unwrap();
    let cookie = r
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (r, cookie)
}

/// A blob pushed with the deploy token, then pulled without one.
fn registry_pull_is_anonymous(serve: &common::serve::Serve) {
    let body = b"an anonymous pull".to_vec();
    let dg = common::serve::push_blob(serve, &serve.client(), "open/blob", &body);
    let r = serve.get(&format!("/v2/open/blob/blobs/{dg}"), None);
    assert_eq!(r.status(), 200, "an anonymous registry pull");
    assert_eq!(r.bytes().unwrap().to_vec(), body);
}

#[test]
fn a_server_without_flags_wants_a_token_for_every_read() {
    let (d, serve) = server_with_apps();
    let data = d.path().join("data");
    // The startup output says how reads are protected.
    let said = serve.startup.join("\n");
    assert!(
        said.contains("reads of the API, the dashboard (/ui) and /metrics need a token with the read role")
            && said.contains("strata token create NAME --role read --data")
            && said.contains("registry pulls: anonymous; pushes: need a deploy token"),
        "{said}"
    );
    // Anonymously: 401 for the API, /metrics and every dashboard page,
    // saying how to get a token.
    for path in API_READS.iter().chain(&OTHER_READS).chain(&["/metrics"]) {
        let r = serve.get(path, None);
        assert_eq!(r.status(), 401, "{path}");
        assert_eq!(
            r.headers()["www-authenticate"],
            "Bearer realm=\"strata\"",
            "{path}"
        );
        let e: Value = r.json().unwrap();
        let e = e["error"].as_str().unwrap_or_default();
        assert!(
            e.contains("needs a token with the read role")
                && e.contains("strata token create NAME --role read")
                && e.contains("Authorization: Bearer TOKEN"),
            "{path}: {e}"
        );
    }
    for page in PAGES {
        let r = no_redirects().get(serve.url(page)).send().unwrap();
        assert_eq!(r.status(), 401, "{page}");
        assert!(
            r.headers().get("set-cookie").is_none(),
            "{page}: no session without a token"
        );
        let html = r.text().unwrap();
        assert!(
            html.contains("Reading this server needs a token with the read role")
                && html.contains("strata token create NAME --role read")
                && html.contains("action=\"/ui/login\""),
            "{page}: {html}"
        );
        // The login form brings the browser back to the page.
        let next = format!("name=\"next\" value=\"{}\"", page.replace('&', "&amp;"));
        assert!(html.contains(&next), "{page}: {html}");
        assert!(!html.contains("sample</a>"), "{page} shows no data: {html}");
    }
    // A wrong token is told so.
    let r = serve.get("/strata/api/apps", Some("st_wrong"));
    assert_eq!(r.status(), 401);
    assert!(r.text().unwrap().contains("not valid"));
    let (r, cookie) = log_in(&serve, "st_wrong", "/ui/audit");
    assert_eq!(r.status(), 401);
    assert!(cookie.is_empty());
    assert!(r.text().unwrap().contains("That token is not valid here"));

    // A read token made while the server runs works at once.
    let o = strata()
        .args(["token", "create", "viewer", "--role", "read", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let reader = stdout(&o).trim().to_string();
    for path in API_READS {
        let r = serve.get(path, Some(&reader));
        assert_eq!(r.status(), 200, "{path}");
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json")
        );
    }
    for path in OTHER_READS {
        let s = serve.get(path, Some(&reader)).status();
        assert!(s != 401 && s != 403, "{path}: {s}");
    }
    let m = common::scrape(&serve.url(""), Some(&reader));
    assert!(m.contains("strata_registry_request_seconds"), "{m}");
    // The dashboard: a login lands on the page asked for, and the
    // session reads every page.
    let (r, cookie) = log_in(&serve, &reader, "/ui/audit");
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/ui/audit");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict") && cookie.contains("Path=/ui"),
        "{cookie}"
    );
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
    let session = cookie.split(';').next().unwrap().to_string();
    for page in PAGES {
        let r = no_redirects()
            .get(serve.url(page))
            .header("Cookie", &session)
            .send()
            .unwrap();
        // The rollback confirmation is for deployers.
        let want = if page.ends_with("/rollback") { 403 } else { 200 };
        assert_eq!(r.status(), want, "{page}");
        assert!(r.text().unwrap().contains("viewer (read)"), "{page}");
    }
    // A login never sends the browser off the dashboard.
    for evil in [
        "https://evil.example/",
        "//evil.example/ui/",
        "/ui\\@evil",
        "/v2/x",
        "/ui/apps\r\nSet-Cookie: x=1",
    ] {
        let (r, _) = log_in(&serve, &reader, evil);
        assert_eq!(r.status(), 303);
        assert_eq!(r.headers()["location"], "/ui/apps", "{evil:?}");
    }
    // A reader deploys nothing; the anonymous caller neither.
    let deploy = |token: Option<&str>| {
        let mut rq = reqwest::blocking::Client::new()
            .post(serve.url("/strata/api/apps/sample/deploy"))
            .json(&serde_json::json!({"image": "sample:1"}));
        if let Some(t) = token {
            rq = rq.bearer_auth(t);
        }
        rq.send().unwrap().status()
    };
    assert_eq!(deploy(Some(&reader)), 403);
    assert_eq!(deploy(None), 401);
    // The registry's pulls stay anonymous.
    registry_pull_is_anonymous(&serve);
}

#[test]
fn public_read_opens_reads_and_nothing_else() {
    let d = tempfile::tempdir().unwrap();
    let apps = d.path().join("apps");
    std::fs::create_dir_all(&apps).unwrap();
    std::fs::copy(repo().join("deploy/apps/sample.toml"), apps.join("sample.toml")).unwrap();
    let serve = common::serve::Serve::start_with(
        &d.path().join("data"),
        &["--apps", apps.to_str().unwrap(), "--public-read"],
    );
    let said = serve.startup.join("\n");
    assert!(
        said.contains("reads of the API, the dashboard and /metrics are open to anyone (--public-read)"),
        "{said}"
    );
    for path in API_READS {
        assert_eq!(serve.get(path, None).status(), 200, "{path}");
    }
    let m = common::scrape(&serve.url(""), None);
    assert!(m.contains("strata_registry_request_seconds"), "{m}");
    for page in PAGES {
        let r = no_redirects().get(serve.url(page)).send().unwrap();
        let want = if page.ends_with("/rollback") { 403 } else { 200 };
        assert_eq!(r.status(), want, "{page}");
        assert!(r.text().unwrap().contains("anonymous (read)"), "{page}");
    }
    // Writes still need a token, saying which role.
    let http = reqwest::blocking::Client::new();
    for (path, body, role) in [
        (
            "/strata/api/apps/sample/deploy",
            serde_json::json!({"image": "sample:1"}),
            "deploy",
        ),
        (
            "/strata/api/apps/sample/rollback",
            serde_json::json!({}),
            "deploy",
        ),
        (
            "/strata/api/prewarm",
            serde_json::json!({"image": "sample:1"}),
            "deploy",
        ),
        (
            "/strata/api/tokens",
            serde_json::json!({"name": "x", "role": "read"}),
            "admin",
        ),
    ] {
        let r = http.post(serve.url(path)).json(&body).send().unwrap();
        assert_eq!(r.status(), 401, "{path}");
        let e = r.text().unwrap();
        assert!(
            e.contains("`anonymous` has the read role") && e.contains(&format!("--role {role}")),
            "{path}: {e}"
        );
    }
    // With a token the same write gets past the role check (404: no
    // P2P origin here).
    let r = http
        .post(serve.url("/strata/api/prewarm"))
        .bearer_auth(&serve.token)
        .json(&serde_json::json!({"image": "sample:1"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
    registry_pull_is_anonymous(&serve);
}

#[test]
fn open_push_opens_registry_pushes_only() {
    let d = tempfile::tempdir().unwrap();
    let serve =
        common::serve::Serve::start_with(&d.path().join("data"), &["--open-push", "--apps", "/nonexistent"]);
    assert!(
        serve
            .startup
            .join("\n")
            .contains("pushes: anonymous (--open-push)"),
        "{:?}",
        serve.startup
    );
    // An anonymous push is accepted…
    let body = b"pushed by nobody".to_vec();
    let dg = common::serve::push_blob(&serve, &reqwest::blocking::Client::new(), "anon/blob", &body);
    assert_eq!(
        serve.get(&format!("/v2/anon/blob/blobs/{dg}"), None).status(),
        200
    );
    // …but the API is closed to anonymous readers and writers alike.
    assert_eq!(serve.get("/strata/api/apps", None).status(), 401);
    assert_eq!(serve.get("/metrics", None).status(), 401);
    let r = reqwest::blocking::Client::new()
        .post(serve.url("/strata/api/prewarm"))
        .json(&serde_json::json!({"image": "anon/blob:1"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[test]
fn a_server_with_pull_auth_lets_no_anonymous_reader_in() {
    let d = tempfile::tempdir().unwrap();
    let serve =
        common::serve::Serve::start_with(&d.path().join("data"), &["--pull-auth", "--apps", "/nonexistent"]);
    assert!(
        serve
            .startup
            .join("\n")
            .contains("registry pulls: need a read token (--pull-auth)"),
        "{:?}",
        serve.startup
    );
    // The registry, the API and the metrics alike.
    let body = b"a private blob".to_vec();
    let dg = common::serve::push_blob(&serve, &serve.client(), "closed/blob", &body);
    let blob = format!("/v2/closed/blob/blobs/{dg}");
    for path in [blob.as_str(), "/strata/api/apps", "/metrics"] {
        let r = serve.get(path, None);
        assert_eq!(r.status(), 401, "{path}");
        assert!(r.headers().contains_key("www-authenticate"), "{path}");
        assert_eq!(serve.get(path, Some(&serve.token)).status(), 200, "{path}");
    }
    // The dashboard answers with its login form.
    let r = no_redirects().get(serve.url("/ui/apps")).send().unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.text().unwrap().contains("action=\"/ui/login\""));
}
