//! Hosts known to the origin, agents joining the cluster, and prewarm
//! jobs with per-host progress (`/strata/api/{hosts,join,prewarm}`).
//!
//! Reading is open to readers; starting a job needs the deploy role.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use super::{Api, error};
use crate::p2p::node::Node;
use crate::registry::auth::Role;

/// Prewarm jobs remembered at most.
const MAX_JOBS: usize = 200;

/// A prewarm request.
#[derive(Debug, Deserialize)]
pub struct PrewarmRequest {
    /// REPO:TAG or REPO@DIGEST in this registry.
    pub image: String,
    /// Host names; empty with no label means every registered host.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Only hosts with this KEY=VALUE label.
    #[serde(default)]
    pub label: Option<String>,
    /// Also pull the image into each host's engine.
    #[serde(default)]
    pub load: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub id: u64,
    pub image: String,
    pub load: bool,
    pub hosts: BTreeMap<String, HostProgress>,
    pub done: bool,
    pub ok: bool,
    pub seconds: f64,
    #[serde(skip)]
    started: Option<Instant>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HostProgress {
    /// queued, running, done, failed
    pub state: String,
    pub done: u64,
    pub total: u64,
    pub message: String,
    pub seconds: f64,
}

pub fn routes() -> Router<Api> {
    Router::new()
        .route("/strata/api/join", post(join))
        .route("/strata/api/hosts", get(hosts))
        .route("/strata/api/p2p/stats", get(stats))
        .route("/strata/api/prewarm", post(start).get(list))
        .route("/strata/api/prewarm/{id}", get(show))
}

/// The P2P node, or a 404 saying how to enable it.
fn node(api: &Api) -> Result<Arc<Node>, Response> {
    api.cfg.node.clone().ok_or_else(|| {
        error(
            StatusCode::NOT_FOUND,
            "this server runs no P2P origin (strata serve --p2p-listen ADDR --p2p-certs DIR)",
        )
    })
}

/// An agent joining the cluster.
#[derive(Debug, Deserialize)]
pub struct JoinRequest {
    pub name: String,
    pub token: String,
    /// PEM certificate signing request; only its public key is used.
    pub csr: String,
}

/// Signs an agent's certificate when its join token is valid.
async fn join(State(api): State<Api>, body: axum::body::Bytes) -> Response {
    let Some(ca) = api.cfg.ca_dir.clone() else {
        return error(
            StatusCode::NOT_FOUND,
            "this server does not issue certificates (strata serve --cluster-ca DIR)",
        );
    };
    let req: JoinRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("not a join request: {e}")),
    };
    let name_ok = !req.name.is_empty()
        && req.name.len() <= 64
        && req
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        && req.name != "origin";
    if !name_ok {
        return error(
            StatusCode::BAD_REQUEST,
            format!("node name `{}` is not allowed", req.name),
        );
    }
    if crate::p2p::revoke::Revoked::open(&api.cfg.data).contains(&req.name) {
        tracing::warn!("cluster: refused to join `{}`: revoked", req.name);
        return error(
            StatusCode::FORBIDDEN,
            format!(
                "node `{}` is revoked (strata cluster revoke): join under another name",
                req.name
            ),
        );
    }
    // After the name's checks: a refused request spends no use.
    let redeemed = {
        let (ca, token) = (ca.clone(), req.token.clone());
        tokio::task::spawn_blocking(move || crate::p2p::tokens::redeem(&ca, &token)).await
    };
    match redeemed {
        Ok(Ok(())) => {}
        Ok(Err(e @ crate::p2p::tokens::TokenError::Io { .. })) => {
            return error(StatusCode::INTERNAL_SERVER_ERROR, e);
        }
        Ok(Err(e)) => {
            tracing::warn!("cluster: refused to join `{}`: {e}", req.name);
            return error(StatusCode::FORBIDDEN, e);
        }
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
    let lifetime = api.cfg.cert_lifetime;
    let signed = tokio::task::spawn_blocking(move || {
        let cert = crate::p2p::tls::sign_csr(&ca, &req.name, &req.csr, lifetime)?;
        let ca_pem =
            std::fs::read_to_string(ca.join("ca.pem")).map_err(|source| crate::p2p::tls::TlsError::Io {
                path: ca.join("ca.pem"),
                source,
            })?;
        tracing::info!("cluster: issued a certificate to `{}`", req.name);
        Ok::<_, crate::p2p::tls::TlsError>((cert, ca_pem))
    })
    .await;
    match signed {
        Ok(Ok((cert, ca))) => Json(serde_json::json!({ "cert": cert, "ca": ca })).into_response(),
        Ok(Err(e)) => error(StatusCode::BAD_REQUEST, e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn hosts(State(api): State<Api>, headers: HeaderMap) -> Response {
    if let Err(r) = api.require(&headers, Role::Read) {
        return r;
    }
    match node(&api) {
        Ok(n) => {
            // Each host with the blobs it announced to the tracker.
            let hosts: Vec<serde_json::Value> = n
                .hosts()
                .into_iter()
                .map(|h| {
                    let blobs: Vec<_> = n
                        .host_blobs(&h.name)
                        .into_iter()
                        .map(|(d, pct)| serde_json::json!({ "digest": d.to_string(), "percent": pct }))
                        .collect();
                    let mut v = serde_json::to_value(&h).unwrap_or_default();
                    v["blobs"] = blobs.into();
                    v
                })
                .collect();
            Json(hosts).into_response()
        }
        Err(r) => r,
    }
}

/// The origin's P2P counters (egress in pieces and bytes).
async fn stats(State(api): State<Api>, headers: HeaderMap) -> Response {
    if let Err(r) = api.require(&headers, Role::Read) {
        return r;
    }
    match node(&api) {
        Ok(n) => {
            Json(serde_json::json!({ "origin_piece_bytes_served": n.piece_bytes_served() })).into_response()
        }
        Err(r) => r,
    }
}

/// Every prewarm job remembered, oldest first.
pub fn jobs(api: &Api) -> Vec<Job> {
    let jobs = api.jobs.lock().unwrap_or_else(|e| e.into_inner());
    jobs.values().map(snapshot).collect()
}

async fn list(State(api): State<Api>, headers: HeaderMap) -> Response {
    if let Err(r) = api.require(&headers, Role::Read) {
        return r;
    }
    Json(jobs(&api)).into_response()
}

async fn show(
    State(api): State<Api>,
    headers: HeaderMap,
    id: Result<Path<u64>, axum::extract::rejection::PathRejection>,
) -> Response {
    if let Err(r) = api.require(&headers, Role::Read) {
        return r;
    }
    let Path(id) = match id {
        Ok(id) => id,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("the job id: {}", e.body_text())),
    };
    let jobs = api.jobs.lock().unwrap_or_else(|e| e.into_inner());
    match jobs.get(&id) {
        Some(j) => Json(snapshot(j)).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no prewarm job {id}")),
    }
}

fn snapshot(j: &Job) -> Job {
    let mut j = j.clone();
    if !j.done {
        j.seconds = j.started.map_or(0.0, |s| s.elapsed().as_secs_f64());
    }
    j
}

async fn start(State(api): State<Api>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let caller = match api.authorize(&headers, Role::Deploy, "prewarm", "") {
        Ok(c) => c,
        Err(r) => return r,
    };
    let node = match node(&api) {
        Ok(n) => n,
        Err(r) => return r,
    };
    let req: PrewarmRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("not a prewarm request: {e}")),
    };
    if req.image.is_empty() {
        return error(StatusCode::BAD_REQUEST, "`image` is empty");
    }
    let known = node.hosts();
    let targets: Vec<_> = if !req.hosts.is_empty() {
        let missing: Vec<_> = req
            .hosts
            .iter()
            .filter(|h| !known.iter().any(|k| &k.name == *h))
            .collect();
        if !missing.is_empty() {
            let names: Vec<_> = known.iter().map(|k| k.name.as_str()).collect();
            return error(
                StatusCode::BAD_REQUEST,
                format!("unknown host(s) {missing:?}; registered: {names:?}"),
            );
        }
        known
            .into_iter()
            .filter(|k| req.hosts.contains(&k.name))
            .collect()
    } else if let Some(l) = &req.label {
        known.into_iter().filter(|k| k.labels.contains(l)).collect()
    } else {
        known
    };
    if targets.is_empty() {
        return error(StatusCode::BAD_REQUEST, "no registered host matches");
    }
    let id = {
        let mut jobs = api.jobs.lock().unwrap_or_else(|e| e.into_inner());
        let id = jobs.keys().next_back().map_or(1, |k| k + 1);
        // Keep the last jobs only; finished ones go first.
        while jobs.len() >= MAX_JOBS {
            let oldest_done = jobs.iter().find(|(_, j)| j.done).map(|(k, _)| *k);
            match oldest_done.or_else(|| jobs.keys().next().copied()) {
                Some(k) => jobs.remove(&k),
                None => break,
            };
        }
        let hosts = targets
            .iter()
            .map(|h| {
                let p = HostProgress {
                    state: "queued".into(),
                    done: 0,
                    total: 0,
                    message: String::new(),
                    seconds: 0.0,
                };
                (h.name.clone(), p)
            })
            .collect();
        jobs.insert(
            id,
            Job {
                id,
                image: req.image.clone(),
                load: req.load,
                hosts,
                done: false,
                ok: false,
                seconds: 0.0,
                started: Some(Instant::now()),
            },
        );
        id
    };
    let runner = api.clone();
    tokio::spawn(async move {
        let mut all = tokio::task::JoinSet::new();
        for h in targets {
            let api = runner.clone();
            let node = node.clone();
            let image = req.image.clone();
            let load = req.load;
            all.spawn(async move {
                let started = Instant::now();
                let update = |f: &dyn Fn(&mut HostProgress)| {
                    let mut jobs = api.jobs.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(p) = jobs.get_mut(&id).and_then(|j| j.hosts.get_mut(&h.name)) {
                        f(p);
                        p.seconds = started.elapsed().as_secs_f64();
                    }
                };
                update(&|p| p.state = "running".into());
                let result = match h.addr.parse() {
                    Ok(addr) => {
                        let progress = |done: u64, total: u64, msg: &str| {
                            update(&|p| {
                                p.done = done;
                                p.total = total;
                                p.message = msg.to_string();
                            })
                        };
                        node.prewarm(addr, &image, load, &progress)
                            .await
                            .map_err(|e| e.to_string())
                    }
                    Err(e) => Err(format!("bad address {}: {e}", h.addr)),
                };
                match &result {
                    Ok(()) => crate::metrics::PREWARM_OK.observe(started.elapsed()),
                    Err(_) => crate::metrics::PREWARM_FAILED.observe(started.elapsed()),
                }
                match result {
                    Ok(()) => update(&|p| {
                        p.state = "done".into();
                        p.done = p.total;
                    }),
                    Err(e) => update(&|p| {
                        p.state = "failed".into();
                        p.message = e.clone();
                    }),
                }
            });
        }
        while all.join_next().await.is_some() {}
        let summary = {
            let mut jobs = runner.jobs.lock().unwrap_or_else(|e| e.into_inner());
            jobs.get_mut(&id).map(|j| {
                j.done = true;
                j.ok = j.hosts.values().all(|p| p.state == "done");
                j.seconds = j.started.map_or(0.0, |s| s.elapsed().as_secs_f64());
                let failed: Vec<_> = j
                    .hosts
                    .iter()
                    .filter(|(_, p)| p.state != "done")
                    .map(|(h, _)| h.as_str())
                    .collect();
                (
                    j.ok,
                    format!(
                        "job {id}, {} host(s), {:.1}s{}",
                        j.hosts.len(),
                        j.seconds,
                        if failed.is_empty() {
                            String::new()
                        } else {
                            format!(", failed: {}", failed.join(" "))
                        }
                    ),
                )
            })
        };
        if let Some((ok, detail)) = summary {
            let outcome = if ok { "ok" } else { "failed" };
            super::audit::record(&runner.cfg.data, &caller, "prewarm", &req.image, outcome, &detail);
        }
    });
    let mut r = (StatusCode::ACCEPTED, Json(serde_json::json!({ "id": id }))).into_response();
    if let Ok(v) = header::HeaderValue::from_str(&format!("/strata/api/prewarm/{id}")) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}
