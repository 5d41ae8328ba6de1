//! The dashboard (`/ui`): server-rendered pages over the same calls as
//! the API — apps and their instances, each app's history with a rollback
//! button (behind a confirmation page), live prewarm progress, hosts, the
//! tier graph, an instance's log, the audit log. No script, no build step.
//!
//! A browser logs in with a token and gets a session cookie (HttpOnly,
//! SameSite=Strict); a server that lets anonymous callers read gives them
//! a session without logging in. Every form carries the session's CSRF
//! token and a POST without it is refused. Users below the deploy role see
//! no action buttons, and the POST handlers check the role again.

use std::fmt::Write;
use std::time::{Duration, Instant};

use axum::Form;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use serde::Deserialize;

use super::{Api, Caller};
use crate::registry::auth::Role;

const COOKIE: &str = "strata_ui";
/// Sessions live this long after their last use.
const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
const MAX_SESSIONS: usize = 10_000;

/// A browser's session.
#[derive(Debug, Clone)]
pub struct UiSession {
    pub caller: Caller,
    pub csrf: String,
    last_used: Instant,
}

pub fn routes() -> Router<Api> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/apps") }))
        .route("/ui", get(|| async { Redirect::to("/ui/apps") }))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", axum::routing::post(logout))
        .route("/ui/apps", get(apps_page))
        .route("/ui/apps/{app}", get(app_page))
        .route("/ui/apps/{app}/rollback", get(confirm_rollback).post(rollback))
        .route("/ui/apps/{app}/logs", get(logs_page))
        .route("/ui/prewarm", get(prewarm_page))
        .route("/ui/hosts", get(hosts_page))
        .route("/ui/tiers", get(tiers_page))
        .route("/ui/audit", get(audit_page))
}

fn random_id() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| kv.trim().strip_prefix(name)?.strip_prefix('='))
}

fn set_cookie(r: &mut Response, id: &str, max_age: u64) {
    let c = format!("{COOKIE}={id}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={max_age}");
    if let Ok(v) = HeaderValue::from_str(&c) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
}

impl Api {
    fn new_session(&self, caller: Caller) -> (String, UiSession) {
        let id = random_id();
        let s = UiSession {
            caller,
            csrf: random_id(),
            last_used: Instant::now(),
        };
        let mut all = self.ui_sessions.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if all.len() >= MAX_SESSIONS {
            all.retain(|_, s| now.duration_since(s.last_used) < SESSION_TTL);
        }
        if all.len() >= MAX_SESSIONS {
            // Still full of live sessions: drop the least recently used.
            if let Some(k) = all
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| k.clone())
            {
                all.remove(&k);
            }
        }
        all.insert(id.clone(), s.clone());
        (id, s)
    }

    fn session_of(&self, headers: &HeaderMap) -> Option<UiSession> {
        let id = cookie_value(headers, COOKIE)?;
        let mut all = self.ui_sessions.lock().unwrap_or_else(|e| e.into_inner());
        let s = all.get_mut(id)?;
        if s.last_used.elapsed() > SESSION_TTL {
            all.remove(id);
            return None;
        }
        s.last_used = Instant::now();
        Some(s.clone())
    }
}

/// The page's session, a new anonymous one (with its cookie), or the
/// login page when the server lets no one in without a token.
fn session(api: &Api, headers: &HeaderMap) -> Result<(UiSession, Option<String>), Response> {
    if let Some(s) = api.session_of(headers) {
        return Ok((s, None));
    }
    match api.anonymous() {
        Some(c) => {
            let (id, s) = api.new_session(c);
            Ok((s, Some(id)))
        }
        None => Err(Redirect::to("/ui/login").into_response()),
    }
}

/// HTML-escapes text.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// Escapes a path segment for a link.
fn seg(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}\
header{background:#1d2330;color:#fff;padding:8px 16px;display:flex;gap:18px;align-items:center}\
header a{color:#cfd8ea;text-decoration:none}header a:hover{color:#fff}header .who{margin-left:auto;color:#9aa6bd}\
main{padding:16px;max-width:1200px}h1{font-size:20px;margin:4px 0 12px}h2{font-size:16px;margin:20px 0 8px}\
table{border-collapse:collapse;background:#fff;width:100%;margin-bottom:8px}\
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #e3e6eb;vertical-align:top}th{background:#eef1f5;font-weight:600}\
.ok{color:#17803d}.bad{color:#b42318}.muted{color:#6b7588}code{font:12px ui-monospace,monospace}\
button{background:#2557d6;color:#fff;border:0;border-radius:4px;padding:4px 10px;cursor:pointer}\
button.danger{background:#b42318}form.inline{display:inline}\
.bar{background:#e3e6eb;border-radius:3px;width:200px;height:10px;display:inline-block;vertical-align:middle}\
.bar span{display:block;height:10px;border-radius:3px;background:#2557d6}\
pre{background:#11151c;color:#d6deeb;padding:10px;overflow:auto;font-size:12px}\
.tier{font:13px ui-monospace,monospace}.box{background:#fff;padding:12px;border:1px solid #e3e6eb}";

fn page(
    title: &str,
    s: &UiSession,
    new_cookie: Option<String>,
    refresh: Option<u32>,
    body: &str,
) -> Response {
    let refresh = refresh
        .map(|n| format!("<meta http-equiv=\"refresh\" content=\"{n}\">"))
        .unwrap_or_default();
    let who = if s.caller.name == "anonymous" {
        format!("anonymous ({}) · <a href=\"/ui/login\">log in</a>", s.caller.role)
    } else {
        format!(
            "{} ({}) <form class=\"inline\" method=\"post\" action=\"/ui/logout\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\"><button>log out</button></form>",
            esc(&s.caller.name),
            s.caller.role,
            esc(&s.csrf)
        )
    };
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">{refresh}\
         <title>{} · strata</title><style>{STYLE}</style></head><body>\
         <header><strong>strata</strong><a href=\"/ui/apps\">Apps</a><a href=\"/ui/prewarm\">Prewarm</a>\
         <a href=\"/ui/hosts\">Hosts</a><a href=\"/ui/tiers\">Tiers</a><a href=\"/ui/audit\">Audit</a>\
         <span class=\"who\">{who}</span></header><main>{body}</main></body></html>",
        esc(title)
    );
    let mut r = Html(html).into_response();
    r.headers_mut()
        .insert("X-Frame-Options", HeaderValue::from_static("DENY"));
    r.headers_mut().insert(
        "Content-Security-Policy",
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    if let Some(id) = new_cookie {
        set_cookie(&mut r, &id, SESSION_TTL.as_secs());
    }
    r
}

fn message_page(s: &UiSession, title: &str, status: StatusCode, body: &str) -> Response {
    let mut r = page(title, s, None, None, &format!("<h1>{}</h1>{body}", esc(title)));
    *r.status_mut() = status;
    r
}

fn health_class(h: &str) -> &'static str {
    if h == "healthy" || h == "ok" { "ok" } else { "bad" }
}

async fn login_page(State(api): State<Api>, headers: HeaderMap) -> Response {
    let s = api.session_of(&headers).unwrap_or(UiSession {
        caller: Caller {
            name: "anonymous".into(),
            role: Role::Read,
        },
        csrf: String::new(),
        last_used: Instant::now(),
    });
    let body = "<h1>Log in</h1><form method=\"post\" action=\"/ui/login\" class=\"box\">\
        <p>A token from <code>strata token create NAME --role read|deploy|admin</code>.</p>\
        <input type=\"password\" name=\"token\" size=\"60\" autofocus> <button>Log in</button></form>";
    page("Log in", &s, None, None, body)
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(State(api): State<Api>, Form(f): Form<LoginForm>) -> Response {
    // Logging in proves a token; it changes nothing, so it needs no CSRF
    // token (the session it creates is a new one).
    match api.token_caller(&format!("Bearer {}", f.token.trim())) {
        Some(c) => {
            let (id, _) = api.new_session(c);
            let mut r = Redirect::to("/ui/apps").into_response();
            set_cookie(&mut r, &id, SESSION_TTL.as_secs());
            r
        }
        None => {
            let s = UiSession {
                caller: Caller {
                    name: "anonymous".into(),
                    role: Role::Read,
                },
                csrf: String::new(),
                last_used: Instant::now(),
            };
            message_page(
                &s,
                "Log in failed",
                StatusCode::UNAUTHORIZED,
                "<p>The token is not valid. <a href=\"/ui/login\">Try again</a>.</p>",
            )
        }
    }
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    to: Option<u64>,
}

/// Whether the form's token is the session's (constant time).
fn csrf_ok(s: &UiSession, presented: &str) -> bool {
    let a = crate::registry::auth::sha(&s.csrf);
    let b = crate::registry::auth::sha(presented);
    !presented.is_empty() && crate::registry::auth::constant_time_eq(&a, &b)
}

async fn logout(State(api): State<Api>, headers: HeaderMap, Form(f): Form<CsrfForm>) -> Response {
    if let Some(s) = api.session_of(&headers)
        && csrf_ok(&s, &f.csrf)
        && let Some(id) = cookie_value(&headers, COOKIE)
    {
        api.ui_sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }
    let mut r = Redirect::to("/ui/apps").into_response();
    set_cookie(&mut r, "", 0);
    r
}

async fn apps_page(State(api): State<Api>, headers: HeaderMap) -> Response {
    let (s, cookie) = match session(&api, &headers) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let a = api.clone();
    let apps = tokio::task::spawn_blocking(move || super::apps::summaries(&a))
        .await
        .unwrap_or_default();
    let mut b =
        String::from("<h1>Apps</h1><table><tr><th>App</th><th>Instances</th><th>Last deploy</th></tr>");
    for a in &apps {
        let mut inst = String::new();
        for i in &a.deployed {
            let hotfix = i
                .hotfix
                .as_ref()
                .map(|h| format!(" + hotfix {}", esc(&h.to_string())))
                .unwrap_or_default();
            let _ = write!(
                inst,
                "<div><code>{}</code> <strong>{}</strong> <span class=\"{}\">{}</span><br><span class=\"muted\">{}{}</span></div>",
                esc(&i.name),
                i.ip,
                health_class(&i.health),
                esc(&i.health),
                esc(&i.image.to_string()),
                hotfix
            );
        }
        if a.deployed.is_empty() {
            inst = format!("<span class=\"muted\">none of {} deployed</span>", a.instances);
        }
        let last = match &a.last {
            Some(e) => format!(
                "v{} {} <span class=\"{}\">{}</span><br><span class=\"muted\">{} by {}</span>",
                e.version,
                esc(&e.action),
                if e.outcome == "ok" { "ok" } else { "bad" },
                esc(&e.outcome),
                esc(&e.at),
                esc(&e.by)
            ),
            None => "<span class=\"muted\">never</span>".into(),
        };
        let err = a
            .error
            .as_ref()
            .map(|e| format!("<br><span class=\"bad\">{}</span>", esc(e)))
            .unwrap_or_default();
        let unfinished = if a.unfinished {
            "<br><span class=\"bad\">an operation was left unfinished</span>"
        } else {
            ""
        };
        let _ = write!(
            b,
            "<tr><td><a href=\"/ui/apps/{}\">{}</a>{err}{unfinished}</td><td>{inst}</td><td>{last}</td></tr>",
            seg(&a.name),
            esc(&a.name)
        );
    }
    b.push_str("</table>");
    if apps.is_empty() {
        let _ = write!(
            b,
            "<p class=\"muted\">No app specs in <code>{}</code>.</p>",
            esc(&api.cfg.apps.display().to_string())
        );
    }
    page("Apps", &s, cookie, Some(15), &b)
}

async fn app_page(State(api): State<Api>, headers: HeaderMap, Path(app): Path<String>) -> Response {
    let (s, cookie) = match session(&api, &headers) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let st = super::apps::status_of_app(&api, &app).await;
    let history = super::apps::history_of_app(&api, &app).await;
    let (status, history) = match (st, history) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            return message_page(
                &s,
                &app,
                StatusCode::NOT_FOUND,
                &format!("<p class=\"bad\">{}</p>", esc(&e)),
            );
        }
    };
    let mut b = format!(
        "<h1>{} <span class=\"muted\">version {}</span></h1>",
        esc(&app),
        status.version
    );
    if let Some(op) = &status.unfinished {
        let _ = write!(
            b,
            "<p class=\"bad\">Unfinished: <code>{}</code> (the next deploy finishes or undoes it)</p>",
            esc(&serde_json::to_string(op).unwrap_or_default())
        );
    }
    b.push_str("<h2>Instances</h2><table><tr><th>Instance</th><th>IP</th><th>Host</th><th>Image</th><th>Container</th><th>Health</th><th></th></tr>");
    for i in &status.instances {
        let image = match &i.instance.hotfix {
            Some(h) => format!(
                "{}<br>+ hotfix {}",
                esc(&i.instance.image.to_string()),
                esc(&h.to_string())
            ),
            None => esc(&i.instance.image.to_string()),
        };
        let _ = write!(
            b,
            "<tr><td><code>{}</code></td><td><strong>{}</strong></td><td><code>{}</code></td><td>{image}</td>\
             <td>{} {}<br><span class=\"muted\">since {}</span></td><td class=\"{}\">{}</td>\
             <td><a href=\"/ui/apps/{}/logs?instance={}\">logs</a></td></tr>",
            esc(&i.instance.name),
            i.instance.ip,
            esc(&i.instance.host),
            esc(&i.instance.container_name),
            if i.running {
                "running"
            } else {
                "<span class=\"bad\">not running</span>"
            },
            esc(&i.started_at),
            health_class(&i.instance.health),
            esc(&i.instance.health),
            seg(&app),
            i.instance.index
        );
    }
    if status.instances.is_empty() {
        b.push_str("<tr><td colspan=\"7\" class=\"muted\">no instances deployed yet</td></tr>");
    }
    b.push_str("</table><h2>History</h2><table><tr><th>Version</th><th>When</th><th>Action</th><th>Image</th><th>Outcome</th><th>Took</th><th>By</th><th></th></tr>");
    let can_deploy = s.caller.role >= Role::Deploy;
    let current = status
        .instances
        .first()
        .map(|i| i.instance.effective().manifest.clone());
    for e in history.iter().rev() {
        let button = if can_deploy && e.outcome == "ok" && Some(&e.image.manifest) != current.as_ref() {
            format!(
                "<a href=\"/ui/apps/{}/rollback?to={}\"><button>Roll back to v{}</button></a>",
                seg(&app),
                e.version,
                e.version
            )
        } else {
            String::new()
        };
        let detail = if e.detail.is_empty() {
            String::new()
        } else {
            format!(
                "<br><span class=\"muted\">{}</span>",
                esc(e.detail.lines().next().unwrap_or(""))
            )
        };
        let _ = write!(
            b,
            "<tr><td>v{}</td><td>{}</td><td>{} <span class=\"muted\">{}</span></td><td>{}</td>\
             <td class=\"{}\">{}{detail}</td><td>{:.1}s</td><td>{}</td><td>{button}</td></tr>",
            e.version,
            esc(&e.at),
            esc(&e.action),
            esc(&e.mode),
            esc(&e.image.to_string()),
            if e.outcome == "ok" { "ok" } else { "bad" },
            esc(&e.outcome),
            e.seconds,
            esc(&e.by)
        );
    }
    b.push_str("</table>");
    page(&app, &s, cookie, None, &b)
}

#[derive(Deserialize)]
struct ToQuery {
    to: Option<u64>,
}

async fn confirm_rollback(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(app): Path<String>,
    Query(q): Query<ToQuery>,
) -> Response {
    let (s, cookie) = match session(&api, &headers) {
        Ok(x) => x,
        Err(r) => return r,
    };
    if s.caller.role < Role::Deploy {
        return message_page(
            &s,
            "Not allowed",
            StatusCode::FORBIDDEN,
            "<p>Rolling back needs the deploy role.</p>",
        );
    }
    let history = super::apps::history_of_app(&api, &app).await.unwrap_or_default();
    let target = match q.to {
        Some(v) => history
            .iter()
            .find(|e| e.version == v)
            .map(|e| format!("v{} ({})", v, e.image)),
        None => Some("the previous image".into()),
    };
    let Some(target) = target else {
        return message_page(
            &s,
            "No such version",
            StatusCode::NOT_FOUND,
            "<p>That version is not in the history.</p>",
        );
    };
    let to =
        q.to.map(|v| format!("<input type=\"hidden\" name=\"to\" value=\"{v}\">"))
            .unwrap_or_default();
    let body = format!(
        "<h1>Roll back {app_e}?</h1><div class=\"box\"><p>Every instance of <strong>{app_e}</strong> goes back to \
         <strong>{}</strong>: in place when only hotfix-eligible files differ, otherwise by a redeploy that keeps each IP.</p>\
         <form method=\"post\" action=\"/ui/apps/{app_s}/rollback\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">{to}\
         <button class=\"danger\" id=\"confirm\">Yes, roll back</button> <a href=\"/ui/apps/{app_s}\">Cancel</a></form></div>",
        esc(&target),
        esc(&s.csrf),
        app_e = esc(&app),
        app_s = seg(&app)
    );
    page("Confirm rollback", &s, cookie, None, &body)
}

async fn rollback(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(app): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Response {
    let Some(s) = api.session_of(&headers) else {
        return (StatusCode::FORBIDDEN, "no session: reload the page and try again").into_response();
    };
    if !csrf_ok(&s, &f.csrf) {
        super::audit::record(
            &api.cfg.data,
            &s.caller,
            "rollback",
            &app,
            "refused",
            "bad CSRF token",
        );
        return message_page(
            &s,
            "Refused",
            StatusCode::FORBIDDEN,
            "<p>The form's CSRF token does not match this session.</p>",
        );
    }
    if s.caller.role < Role::Deploy {
        super::audit::record(
            &api.cfg.data,
            &s.caller,
            "rollback",
            &app,
            "refused",
            "needs deploy",
        );
        return message_page(
            &s,
            "Not allowed",
            StatusCode::FORBIDDEN,
            "<p>Rolling back needs the deploy role.</p>",
        );
    }
    let r = super::apps::rollback_as(&api, &s.caller, &app, f.to).await;
    let status = r.status();
    let bytes = axum::body::to_bytes(r.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let back = format!(
        "<p><a href=\"/ui/apps/{}\">Back to {}</a></p>",
        seg(&app),
        esc(&app)
    );
    if status.is_success() {
        let mut rows = String::new();
        for i in v["instances"].as_array().into_iter().flatten() {
            let _ = write!(
                rows,
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td class=\"ok\">{}</td><td>{:.2}s</td></tr>",
                esc(i["instance"].as_str().unwrap_or("")),
                esc(i["ip"].as_str().unwrap_or("")),
                esc(i["mode"].as_str().unwrap_or("")),
                esc(i["outcome"].as_str().unwrap_or("")),
                i["seconds"].as_f64().unwrap_or(0.0)
            );
        }
        let body = format!(
            "<p class=\"ok\" id=\"result\">Rolled back to {} (version {}).</p><table><tr><th>Instance</th><th>IP</th><th>Mode</th><th>Outcome</th><th>Took</th></tr>{rows}</table>{back}",
            esc(v["image"].as_str().unwrap_or("")),
            v["version"]
        );
        message_page(&s, &format!("{app} rolled back"), status, &body)
    } else {
        let body = format!(
            "<p class=\"bad\" id=\"result\">{}</p>{back}",
            esc(v["error"].as_str().unwrap_or("the rollback failed"))
        );
        message_page(&s, "Rollback failed", status, &body)
    }
}

#[derive(Deserialize)]
struct LogQuery {
    instance: Option<u32>,
}

async fn logs_page(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(app): Path<String>,
    Query(q): Query<LogQuery>,
) -> Response {
    let (s, cookie) = match session(&api, &headers) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let lines = super::apps::recent_logs(&api, &app, q.instance, 300).await;
    let title = match q.instance {
        Some(i) => format!("{app}-{i} log"),
        None => format!("{app} logs"),
    };
    let body = match lines {
        Ok(l) => format!(
            "<h1>{}</h1><p class=\"muted\">The last 300 lines, refreshed every 5 s. <a href=\"/ui/apps/{}\">Back</a></p><pre>{}</pre>",
            esc(&title),
            seg(&app),
            esc(&l)
        ),
        Err(e) => format!("<h1>{}</h1><p class=\"bad\">{}</p>", esc(&title), esc(&e)),
    };
    page(&title, &s, cookie, Some(5), &body)
}

async fn prewarm_page(State(api): State<Api>, headers: HeaderMap) -> Response {
    let (s, cookie) = match session(&api, &headers) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let jobs = super::prewarm::jobs(&api);
    let mut b = String::from("<h1>Prewarm jobs</h1>");
    if jobs.is_empty() {
        b.push_str("<p class=\"muted\">No prewarm jobs yet (<code>strata prewarm IMAGE --server URL</code> or <code>strata release</code>).</p>");
    }
    for j in jobs.iter().rev() {
        let state = if !j.done {
            "running"
        } else if j.ok {
            "done"
        } else {
            "failed"
        };
        let _ = write!(
            b,
            "<h2>#{} {} <span class=\"{}\">{state}</span> <span class=\"muted\">{:.1}s{}</span></h2>\
             <table><tr><th>Host</th><th>State</th><th>Progress</th><th>Time</th><th>Message</th></tr>",
            j.id,
            esc(&j.image),
            if state == "failed" { "bad" } else { "ok" },
            j.seconds,
            if j.load { ", loaded into the engines" } else { "" }
        );
        for (h, p) in &j.hosts {
            let pct = if p.total == 0 {
                0.0
            } else {
                p.done as f64 * 100.0 / p.total as f64
            };
            let _ = write!(
                b,
                "<tr><td>{}</td><td class=\"{}\">{}</td><td><span class=\"bar\"><span style=\"width:{pct:.0}%\"></span></span> \
                 {} / {} MiB</td><td>{:.1}s</td><td class=\"muted\">{}</td></tr>",
                esc(h),
                if p.state == "failed" { "bad" } else { "ok" },
                esc(&p.state),
                p.done >> 20,
                p.total >> 20,
                p.seconds,
                esc(&p.message)
            );
        }
        b.push_str("</table>");
    }
    let running = jobs.iter().any(|j| !j.done);
    page("Prewarm", &s, cookie, Some(if running { 1 } else { 10 }), &b)
}

async fn hosts_page(State(api): State<Api>, headers: HeaderMap) -> Response {
    let (s, cookie) = match session(&api, &headers) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let mut b = String::from("<h1>Hosts</h1>");
    match &api.cfg.node {
        None => b.push_str("<p class=\"muted\">This server runs no P2P origin (<code>strata serve --p2p-listen ADDR --p2p-certs DIR</code>), so no agent registers.</p>"),
        Some(node) => {
            let hosts = node.hosts();
            b.push_str("<table><tr><th>Host</th><th>P2P address</th><th>Zone</th><th>Labels</th><th>Blobs cached</th><th>Last seen</th></tr>");
            for h in &hosts {
                let cached = node.host_blobs(&h.name);
                let _ = write!(
                    b,
                    "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{:.0}s ago</td></tr>",
                    esc(&h.name),
                    esc(&h.addr),
                    h.zone,
                    esc(&h.labels.join(", ")),
                    if cached.is_empty() {
                        "<span class=\"muted\">none announced</span>".to_string()
                    } else {
                        cached
                            .iter()
                            .map(|(d, pct)| format!("<code>{}</code> {pct:.0}%", esc(&d.short())))
                            .collect::<Vec<_>>()
                            .join("<br>")
                    },
                    h.seen_seconds_ago
                );
            }
            if hosts.is_empty() {
                b.push_str("<tr><td colspan=\"6\" class=\"muted\">no agent registered</td></tr>");
            }
            b.push_str("</table>");
        }
    }
    page("Hosts", &s, cookie, Some(10), &b)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

async fn tiers_page(State(api): State<Api>, headers: HeaderMap) -> Response {
    let (s, cookie) = match session(&api, &headers) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let reg = api.cfg.registry.clone();
    let nodes = tokio::task::spawn_blocking(move || super::tiers::of_registry(&reg))
        .await
        .unwrap_or_default();
    let mut b = String::from(
        "<h1>Tiers</h1><p class=\"muted\">Each image under the image whose layers it extends; \
         the layers a tier adds, their sizes, and how many images share each layer.</p><div class=\"box tier\">",
    );
    for (i, depth) in super::tiers::walk(&nodes) {
        let n = &nodes[i];
        let added: Vec<String> = (n.inherited..n.layers.len())
            .map(|k| {
                let shared = if n.shared_by[k] > 1 {
                    format!(" shared by {}", n.shared_by[k])
                } else {
                    String::new()
                };
                format!("{} {}{shared}", esc(&n.layers[k].0.short()), mib(n.layers[k].1))
            })
            .collect();
        let _ = write!(
            b,
            "<div style=\"margin-left:{}px\">{}<strong>{}</strong> <span class=\"muted\">+{} ({} total, {} layers)</span>\
             <div style=\"margin-left:22px\" class=\"muted\">{}</div></div>",
            depth * 28,
            if depth > 0 { "└─ " } else { "" },
            esc(&n.names.join(", ")),
            mib(n.own_bytes()),
            mib(n.total_bytes()),
            n.layers.len(),
            added.join("<br>")
        );
    }
    if nodes.is_empty() {
        b.push_str("<span class=\"muted\">No images in the registry yet (<code>strata push</code> or <code>strata release</code>).</span>");
    }
    b.push_str("</div>");
    page("Tiers", &s, cookie, None, &b)
}

async fn audit_page(State(api): State<Api>, headers: HeaderMap) -> Response {
    let (s, cookie) = match session(&api, &headers) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let data = api.cfg.data.clone();
    let entries = tokio::task::spawn_blocking(move || super::audit::read(&data, 200))
        .await
        .unwrap_or_default();
    let mut b = String::from(
        "<h1>Audit</h1><table><tr><th>When</th><th>Who</th><th>Action</th><th>Target</th><th>Outcome</th><th>Detail</th></tr>",
    );
    for e in entries.iter().rev() {
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{} <span class=\"muted\">{}</span></td><td>{}</td><td>{}</td><td class=\"{}\">{}</td><td class=\"muted\">{}</td></tr>",
            esc(&e.at),
            esc(&e.who),
            e.role,
            esc(&e.action),
            esc(&e.target),
            if e.outcome == "ok" { "ok" } else { "bad" },
            esc(&e.outcome),
            esc(&e.detail)
        );
    }
    b.push_str("</table>");
    page("Audit", &s, cookie, None, &b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_and_cookies() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(seg("a b/c"), "a%20b%2Fc");
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("x=1; strata_ui=abc; y=2"),
        );
        assert_eq!(cookie_value(&h, COOKIE), Some("abc"));
        let s = UiSession {
            caller: Caller {
                name: "a".into(),
                role: Role::Deploy,
            },
            csrf: "tok".into(),
            last_used: Instant::now(),
        };
        assert!(csrf_ok(&s, "tok"));
        assert!(!csrf_ok(&s, "tok2"));
        assert!(!csrf_ok(&s, ""));
    }
}
