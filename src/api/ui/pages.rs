//! The dashboard's pages: apps, one app with its history and the
//! rollback flow (confirmation page, then a POST with the CSRF token),
//! an instance's log, prewarm jobs, hosts, the tier graph, the audit log.

use std::fmt::Write;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{CsrfForm, Visitor, csrf_ok, esc, health_class, message_page, page, seg};
use crate::api::Api;
use crate::registry::auth::Role;

pub(super) async fn apps_page(State(api): State<Api>, Visitor(s, cookie): Visitor) -> Response {
    let a = api.clone();
    let apps = tokio::task::spawn_blocking(move || crate::api::apps::summaries(&a))
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

#[derive(Deserialize, Default)]
pub(super) struct VerifyQuery {
    #[serde(default)]
    verify: Option<String>,
    /// The history page (1: the newest rows).
    #[serde(default)]
    page: Option<usize>,
}

/// History rows per dashboard page.
const HISTORY_PAGE: usize = 20;

pub(super) async fn app_page(
    State(api): State<Api>,
    Visitor(s, cookie): Visitor,
    Path(app): Path<String>,
    q: Result<axum::extract::Query<VerifyQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let (verify, at_page) = match q {
        Ok(axum::extract::Query(q)) => (
            q.verify.is_some_and(|v| v != "0" && v != "false"),
            q.page.unwrap_or(1).max(1),
        ),
        Err(_) => (false, 1),
    };
    let (status, history) = match crate::api::apps::status_and_history(&api, &app, verify).await {
        Ok(both) => both,
        Err(e) => {
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
    if !status.recovery.is_empty() {
        let _ = write!(b, "<p class=\"bad\">{}</p>", esc(&status.recovery));
    }
    if let Some(op) = &status.unfinished {
        let _ = write!(b, "<p class=\"bad\">Unfinished: {}</p>", esc(&op.describe(&app)));
    }
    if !verify {
        let _ = write!(
            b,
            "<p><a href=\"/ui/apps/{}?verify=1\">Verify every instance</a> <span class=\"muted\">(reads the files under the hotfix paths, the image and the config back from each container)</span></p>",
            seg(&app)
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
            esc(&seconds_only(&i.started_at)),
            health_class(&i.instance.health),
            esc(&i.instance.health),
            seg(&app),
            i.instance.index
        );
        match &i.drift {
            Some(d) if d.is_empty() => {
                b.push_str("<tr><td></td><td colspan=\"6\" class=\"ok\">verified: no drift</td></tr>");
            }
            Some(d) => {
                for line in d {
                    let _ = write!(
                        b,
                        "<tr><td></td><td colspan=\"6\" class=\"bad\">drift: {}</td></tr>",
                        esc(line)
                    );
                }
            }
            None => {}
        }
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
    let pages = history.len().div_ceil(HISTORY_PAGE).max(1);
    let at_page = at_page.min(pages);
    for e in history
        .iter()
        .rev()
        .skip((at_page - 1) * HISTORY_PAGE)
        .take(HISTORY_PAGE)
    {
        // Only versions whose image this server still holds whole.
        let button = if can_deploy
            && e.outcome == "ok"
            && Some(&e.image.manifest) != current.as_ref()
            && crate::deploy::has_image(api.cfg.registry.store(), &e.image)
        {
            // (A form, not a button inside a link: that is not valid HTML.)
            format!(
                "<form method=\"get\" action=\"/ui/apps/{}/rollback\"><input type=\"hidden\" name=\"to\" value=\"{}\"><button>Roll back to v{}</button></form>",
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
    if pages > 1 {
        let link = |p: usize, text: &str| format!("<a href=\"/ui/apps/{}?page={p}\">{text}</a>", seg(&app));
        let _ = write!(
            b,
            "<p class=\"pager\">{} page {at_page} of {pages} ({} runs) {}</p>",
            if at_page > 1 {
                link(at_page - 1, "&larr; newer")
            } else {
                String::new()
            },
            history.len(),
            if at_page < pages {
                link(at_page + 1, "older &rarr;")
            } else {
                String::new()
            },
        );
    }
    page(&app, &s, cookie, None, &b)
}

#[derive(Deserialize)]
pub(super) struct ToQuery {
    to: Option<u64>,
}

pub(super) async fn confirm_rollback(
    State(api): State<Api>,
    Visitor(s, cookie): Visitor,
    Path(app): Path<String>,
    Query(q): Query<ToQuery>,
) -> Response {
    if s.caller.role < Role::Deploy {
        return message_page(
            &s,
            "Not allowed",
            StatusCode::FORBIDDEN,
            "<p>Rolling back needs the deploy role.</p>",
        );
    }
    let history = crate::api::apps::history_of_app(&api, &app)
        .await
        .unwrap_or_default();
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

pub(super) async fn rollback(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(app): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Response {
    let Some(s) = api.session_of(&headers) else {
        return (StatusCode::FORBIDDEN, "no session: reload the page and try again").into_response();
    };
    if !csrf_ok(&s, &f.csrf) {
        crate::api::audit::record(
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
        crate::api::audit::record(
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
    let r = crate::api::apps::rollback_as(&api, &s.caller, &app, f.to).await;
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
pub(super) struct LogQuery {
    instance: Option<u32>,
    /// `0` pauses the page (no refresh), so a reader can scroll back.
    follow: Option<u8>,
}

/// Lines the logs page shows.
const LOG_LINES: usize = 300;

/// An instance's (or every instance's) last lines, oldest first. The box
/// they are in is a scroll container laid out bottom up (CSS
/// `column-reverse`), so it opens scrolled to its end: the newest line
/// at the bottom, in view, on every refresh, with no script (the CSP
/// allows none). Following refreshes every 5 s; paused, it stays put.
/// Long lines wrap, their next rows indented.
pub(super) async fn logs_page(
    State(api): State<Api>,
    Visitor(s, cookie): Visitor,
    Path(app): Path<String>,
    Query(q): Query<LogQuery>,
) -> Response {
    let lines = crate::api::apps::recent_logs(&api, &app, q.instance, LOG_LINES).await;
    let title = match q.instance {
        Some(i) => format!("{app}-{i} log"),
        None => format!("{app} logs"),
    };
    let follow = q.follow != Some(0);
    let here = match q.instance {
        Some(i) => format!("/ui/apps/{}/logs?instance={i}", seg(&app)),
        None => format!("/ui/apps/{}/logs?", seg(&app)),
    };
    let sep = if here.ends_with('?') { "" } else { "&amp;" };
    let mode = if follow {
        format!(
            "<strong class=\"ok\" id=\"mode\">Following</strong> the last {LOG_LINES} lines, newest at the bottom, \
             refreshed every 5 s · <a href=\"{here}{sep}follow=0\">Pause</a>"
        )
    } else {
        format!(
            "<strong id=\"mode\">Paused</strong> on the last {LOG_LINES} lines, newest at the bottom · \
             <a href=\"{here}\">Follow</a>"
        )
    };
    let body = match lines {
        Ok(l) if l.is_empty() => format!(
            "<h1>{}</h1><p class=\"muted\">{mode} · <a href=\"/ui/apps/{}\">Back</a></p>\
             <p class=\"muted\">No lines yet.</p>",
            esc(&title),
            seg(&app)
        ),
        Ok(l) => format!(
            "<h1>{}</h1><p class=\"muted\">{mode} · <a href=\"/ui/apps/{}\">Back</a></p>\
             <div class=\"log\" id=\"log\"><div class=\"lines\">{}</div></div>",
            esc(&title),
            seg(&app),
            log_lines(&l)
        ),
        Err(e) => format!("<h1>{}</h1><p class=\"bad\">{}</p>", esc(&title), esc(&e)),
    };
    page(&title, &s, cookie, follow.then_some(5), &body)
}

/// `NAME | line` lines as one element each (so a wrapped line hangs
/// under its first row), the instance's name muted.
fn log_lines(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 4);
    for line in text.lines() {
        let (src, rest) = match line.split_once(" | ") {
            Some((src, rest)) => (format!("<span class=\"src\">{} | </span>", esc(src)), rest),
            None => (String::new(), line),
        };
        let _ = write!(out, "<div class=\"ln\">{src}{}</div>", esc(rest));
    }
    out
}

pub(super) async fn prewarm_page(State(api): State<Api>, Visitor(s, cookie): Visitor) -> Response {
    let jobs = crate::api::prewarm::jobs(&api);
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

pub(super) async fn hosts_page(State(api): State<Api>, Visitor(s, cookie): Visitor) -> Response {
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

/// An RFC 3339 time without its fraction of a second (Docker reports
/// nanoseconds).
fn seconds_only(t: &str) -> String {
    match (t.find('.'), t.ends_with('Z')) {
        (Some(dot), true) => format!("{}Z", &t[..dot]),
        _ => t.to_string(),
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

pub(super) async fn tiers_page(State(api): State<Api>, Visitor(s, cookie): Visitor) -> Response {
    let reg = api.cfg.registry.clone();
    let nodes = tokio::task::spawn_blocking(move || crate::api::tiers::of_registry(&reg))
        .await
        .unwrap_or_default();
    let mut b = String::from(
        "<h1>Tiers</h1><p class=\"muted\">Each image under the image whose layers it extends; \
         the layers a tier adds, their sizes, and how many images share each layer.</p><div class=\"box tier\">",
    );
    for (i, depth) in crate::api::tiers::walk(&nodes) {
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

pub(super) async fn audit_page(State(api): State<Api>, Visitor(s, cookie): Visitor) -> Response {
    let data = api.cfg.data.clone();
    let entries = tokio::task::spawn_blocking(move || crate::api::audit::read(&data, 200))
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
