//! The dashboard (`/ui`): server-rendered pages over the same calls as
//! the API — apps and their instances, each app's history with a rollback
//! button (behind a confirmation page), live prewarm progress, hosts, the
//! tier graph, an instance's log, the audit log. No script, no build step.
//!
//! A browser logs in with a token and gets a session cookie (HttpOnly,
//! SameSite=Strict, Secure over HTTPS). A page asked for without a session
//! answers 401 with the login form, which brings the browser back to that
//! page; only a `--public-read` server gives anonymous visitors a
//! read-only session instead. Every form carries the session's CSRF
//! token and a POST without it is refused. Users below the deploy role see
//! no action buttons, and the POST handlers check the role again.

use std::time::{Duration, Instant};

use axum::Form;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use serde::Deserialize;

mod pages;
use pages::*;

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

impl UiSession {
    /// No session: what the login pages are drawn for (no forms but the
    /// login form, which needs no CSRF token).
    fn nobody() -> UiSession {
        UiSession {
            caller: Caller {
                name: String::new(),
                role: Role::Read,
            },
            csrf: String::new(),
            last_used: Instant::now(),
        }
    }
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

/// The `Set-Cookie` value for session `id` (empty with max age 0: the
/// cookie's removal); `Secure` when the server speaks HTTPS.
fn cookie_header(api: &Api, id: &str, max_age: u64) -> String {
    let secure = if api.cfg.https { "; Secure" } else { "" };
    format!("{COOKIE}={id}; Path=/ui; HttpOnly; SameSite=Strict{secure}; Max-Age={max_age}")
}

fn set_cookie(r: &mut Response, cookie: &str) {
    if let Ok(v) = HeaderValue::from_str(cookie) {
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

/// The page's session, a new anonymous one (with its cookie) on a
/// `--public-read` server, or else the login form (401) that comes back
/// to `here` once logged in.
fn session(api: &Api, headers: &HeaderMap, here: &str) -> Result<(UiSession, Option<String>), Response> {
    if let Some(s) = api.session_of(headers) {
        return Ok((s, None));
    }
    match api.anonymous() {
        Some(c) => {
            let (id, s) = api.new_session(c);
            Ok((s, Some(cookie_header(api, &id, SESSION_TTL.as_secs()))))
        }
        None => Err(login_form(
            api,
            &UiSession::nobody(),
            StatusCode::UNAUTHORIZED,
            "",
            here,
        )),
    }
}

/// A page's visitor: their session and, when it was just made, the
/// cookie to set (see [`session`]); otherwise the login form answers.
pub(super) struct Visitor(UiSession, Option<String>);

impl axum::extract::FromRequestParts<Api> for Visitor {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        api: &Api,
    ) -> Result<Visitor, Response> {
        let here = parts.uri.path_and_query().map_or("/ui/apps", |p| p.as_str());
        session(api, &parts.headers, here).map(|(s, cookie)| Visitor(s, cookie))
    }
}

/// Where a login may send the browser: a dashboard page of this server,
/// nothing else (no other host, no scheme, no header injection).
fn local_next(next: &str) -> &str {
    let ok = (next == "/ui" || next.starts_with("/ui/"))
        && next.len() <= 2048
        && next.bytes().all(|b| b.is_ascii_graphic() && b != b'\\');
    if ok { next } else { "/ui/apps" }
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
.log{display:flex;flex-direction:column-reverse;overflow-y:auto;max-height:calc(100vh - 170px);\
background:#11151c;color:#d6deeb;color-scheme:dark}\
.lines{padding:8px 10px;font:12px/1.45 ui-monospace,monospace}\
.ln{white-space:pre-wrap;overflow-wrap:anywhere;padding-left:4ch;text-indent:-4ch;min-height:1.45em}\
.ln .src{color:#7f8ba3}\
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
    let who = if s.caller.name.is_empty() {
        "not logged in".to_string()
    } else if s.caller.name == super::ANONYMOUS {
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
    if let Some(c) = new_cookie {
        set_cookie(&mut r, &c);
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

/// The login form with `status`, an optional problem, and the page to
/// go to afterwards, for `s` (nobody, or a session logging in anew). It
/// shows no app's data.
fn login_form(api: &Api, s: &UiSession, status: StatusCode, problem: &str, next: &str) -> Response {
    let why = if api.anonymous().is_some() {
        "Anyone may read this server; a token with the deploy role also deploys and rolls back."
    } else {
        "Reading this server needs a token with the read role (or deploy, or admin)."
    };
    let problem = if problem.is_empty() {
        String::new()
    } else {
        format!("<p class=\"bad\" id=\"problem\">{}</p>", esc(problem))
    };
    let body = format!(
        "<h1>Log in</h1>{problem}<form method=\"post\" action=\"/ui/login\" class=\"box\">\
         <p>{why}</p><p>On the server, <code>strata token create NAME --role read --data DATA</code> \
         prints one (it works at once); <code>--role deploy</code> also deploys and rolls back.</p>\
         <input type=\"hidden\" name=\"next\" value=\"{}\">\
         <input type=\"password\" name=\"token\" size=\"60\" autocomplete=\"current-password\" autofocus> \
         <button>Log in</button></form>",
        esc(local_next(next))
    );
    let mut r = page("Log in", s, None, None, &body);
    *r.status_mut() = status;
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"strata\""),
        );
    }
    r
}

#[derive(Deserialize)]
struct NextQuery {
    next: Option<String>,
}

async fn login_page(State(api): State<Api>, headers: HeaderMap, Query(q): Query<NextQuery>) -> Response {
    let s = api.session_of(&headers).unwrap_or_else(UiSession::nobody);
    login_form(
        &api,
        &s,
        StatusCode::OK,
        "",
        q.next.as_deref().unwrap_or("/ui/apps"),
    )
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
    #[serde(default)]
    next: String,
}

async fn login(State(api): State<Api>, Form(f): Form<LoginForm>) -> Response {
    // Logging in proves a token; it changes nothing, so it needs no CSRF
    // token (the session it creates is a new one).
    match api.token_caller(&format!("Bearer {}", f.token.trim())) {
        Some(c) => {
            let (id, _) = api.new_session(c);
            let mut r = Redirect::to(local_next(&f.next)).into_response();
            set_cookie(&mut r, &cookie_header(&api, &id, SESSION_TTL.as_secs()));
            r
        }
        None => login_form(
            &api,
            &UiSession::nobody(),
            StatusCode::UNAUTHORIZED,
            "That token is not valid here: it is not in the server's credentials file.",
            &f.next,
        ),
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
    set_cookie(&mut r, &cookie_header(&api, "", 0));
    r
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

    #[test]
    fn a_login_returns_to_dashboard_pages_only() {
        for ok in ["/ui", "/ui/audit", "/ui/apps/shop/logs?instance=1&follow=0"] {
            assert_eq!(local_next(ok), ok);
        }
        for bad in [
            "",
            "https://evil.example/ui/",
            "//evil.example/ui/",
            "/uix",
            "/v2/x",
            "/ui/\\evil",
            "/ui/a b",
            "/ui/a\r\nSet-Cookie: x=1",
        ] {
            assert_eq!(local_next(bad), "/ui/apps", "{bad:?}");
        }
    }
}
