//! The deployment center's HTTP API beside the registry
//! (`/strata/api/...`), the dashboard (`/ui`) and `/metrics`.
//!
//! One face over every stage: images in the registry, hosts and prewarm
//! jobs ([`prewarm`]), apps with their instances, deploys, rollbacks,
//! history and logs ([`apps`]), tokens and the audit log ([`audit`]).
//! The API never does the work itself: it calls the same library code as
//! the CLI (the orchestrator, the P2P node), so a deploy from the browser
//! and one from Jenkins are the same deploy.
//!
//! Auth: a token from the credentials file (`Authorization: Bearer` or
//! Basic; the dashboard's session cookie) carries a role (read, deploy,
//! admin). Every read of the API, the dashboard and `/metrics` needs at
//! least the read role, unless the server runs with `--public-read`, where
//! a caller without a token reads. Nothing here ever lets a caller without
//! a token change anything: `--open-push` opens the registry's pushes
//! only. The registry (`/v2/`) keeps its own rule: anonymous pulls unless
//! `--pull-auth`. Every mutating call is written to the audit log with who
//! and when; deploys also record who in the app's history.

pub mod apps;
pub mod audit;
pub mod client;
pub mod prewarm;
pub mod tiers;
pub mod ui;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::p2p::node::Node;
use crate::registry::auth::Role;
use crate::registry::{Access, Registry};

/// What the API serves over.
pub struct ApiConfig {
    pub access: Arc<Access>,
    pub registry: Arc<Registry>,
    /// The P2P origin and tracker, when the server runs one.
    pub node: Option<Arc<Node>>,
    /// The cluster CA directory, when the server issues certificates to
    /// agents that join with a token.
    pub ca_dir: Option<PathBuf>,
    /// How long the node certificates it signs are valid.
    pub cert_lifetime: std::time::Duration,
    /// The server's data directory: the audit log (`DATA/audit.jsonl`),
    /// hotfix backups, and with the file state store the deploy state
    /// and history (`DATA/apps/`).
    pub data: PathBuf,
    /// The folder of app specs (`NAME.toml`).
    pub apps: PathBuf,
    /// The lease store: `file` or `etcd://…` (as `strata deploy --leases`).
    pub leases: String,
    /// The deploy state store (as `strata deploy --state`): shared with
    /// other servers when it is etcd.
    pub state: Arc<dyn crate::deploy::StateStore>,
    /// The credentials file (`strata token create`), where admins'
    /// tokens made through the API are added.
    pub credentials_file: PathBuf,
    /// The server speaks HTTPS: the dashboard's cookie is `Secure`.
    pub https: bool,
}

#[derive(Clone)]
pub struct Api(Arc<Inner>);

pub struct Inner {
    pub cfg: ApiConfig,
    /// Prewarm jobs by id.
    pub jobs: Mutex<BTreeMap<u64, prewarm::Job>>,
    /// Dashboard sessions by cookie id.
    pub ui_sessions: Mutex<HashMap<String, ui::UiSession>>,
}

impl std::ops::Deref for Api {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// Who is calling, as proved by the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

impl Api {
    pub fn new(cfg: ApiConfig) -> Api {
        Api(Arc::new(Inner {
            cfg,
            jobs: Default::default(),
            ui_sessions: Default::default(),
        }))
    }

    /// The caller a request's `Authorization` header proves; without one,
    /// the anonymous reader of a `--public-read` server, else a 401 that
    /// says how to get a token.
    pub fn caller(&self, headers: &HeaderMap) -> Result<Caller, Response> {
        let presented = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        if let Some(p) = presented {
            return self.token_caller(p).ok_or_else(|| {
                unauthorized("the token is not valid: it is not in the server's credentials file")
            });
        }
        self.anonymous().ok_or_else(|| unauthorized(NEEDS_TOKEN))
    }

    /// The caller an `Authorization` value proves.
    pub fn token_caller(&self, authorization: &str) -> Option<Caller> {
        let (name, role) = self.cfg.access.credentials.check_role(Some(authorization))?;
        Some(Caller { name, role })
    }

    /// The caller without a token: a reader on a `--public-read` server,
    /// nobody otherwise. Never more than a reader, whatever the
    /// registry's `--open-push` says.
    pub fn anonymous(&self) -> Option<Caller> {
        self.cfg.access.public_read.then(|| Caller {
            name: ANONYMOUS.into(),
            role: Role::Read,
        })
    }

    /// The caller, if their role is at least `needed`.
    pub fn require(&self, headers: &HeaderMap, needed: Role) -> Result<Caller, Response> {
        let c = self.caller(headers)?;
        check_role(&c, needed)?;
        Ok(c)
    }
}

impl Api {
    /// The caller of a mutating call (`action` on `target`), if their
    /// role is at least `needed`; a refusal goes to the audit log.
    pub fn authorize(
        &self,
        headers: &HeaderMap,
        needed: Role,
        action: &str,
        target: &str,
    ) -> Result<Caller, Response> {
        let c = self.caller(headers)?;
        if let Err(r) = check_role(&c, needed) {
            audit::record(
                &self.cfg.data,
                &c,
                action,
                target,
                "refused",
                &format!("needs {needed}"),
            );
            return Err(r);
        }
        Ok(c)
    }
}

/// A query string's value, or a JSON 400 naming what is wrong with it
/// (axum's own rejection is plain text). Taken after the role check, so
/// an unauthorised caller learns nothing about the parameters.
pub fn query<T>(
    q: Result<axum::extract::Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, Response> {
    q.map(|axum::extract::Query(v)| v)
        .map_err(|e| error(StatusCode::BAD_REQUEST, e.body_text()))
}

/// Runs `f` on a blocking thread and answers its value as JSON.
pub async fn blocking_json<T, F>(f: F) -> Response
where
    T: serde::Serialize + Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// The name of the caller without a token.
pub const ANONYMOUS: &str = "anonymous";

/// What a reader without a token is told (the 401 of the API, the
/// dashboard and `/metrics`).
pub const NEEDS_TOKEN: &str = "reading this server needs a token with the read role: \
    on the server, `strata token create NAME --role read --data DATA` prints one \
    (it works at once); send it as `Authorization: Bearer TOKEN`, or log in to the dashboard \
    at /ui/login with it (a server started with --public-read lets anyone read)";

/// A 401 with `message` and a challenge naming the scheme.
fn unauthorized(message: &str) -> Response {
    let mut r = error(StatusCode::UNAUTHORIZED, message);
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer realm=\"strata\""),
    );
    r
}

/// Refuses a caller whose role is below `needed` (403, naming both; 401
/// for the anonymous reader, who needs a token).
pub fn check_role(c: &Caller, needed: Role) -> Result<(), Response> {
    if c.role >= needed {
        return Ok(());
    }
    let message = format!(
        "`{}` has the {} role; this needs {} (strata token create NAME --role {})",
        c.name, c.role, needed, needed
    );
    if c.name == ANONYMOUS {
        return Err(unauthorized(&message));
    }
    Err(error(StatusCode::FORBIDDEN, message))
}

/// A JSON error body `{"error": "..."}` with `status`.
pub fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, Json(serde_json::json!({ "error": message.to_string() }))).into_response()
}

/// Every API route, the dashboard and `/metrics`.
pub fn router(cfg: ApiConfig) -> Router {
    let api = Api::new(cfg);
    apps::finish_unfinished(api.clone());
    apps::sweep_fenced_hosts(api.clone());
    Router::new()
        .route("/strata/api/openapi.yaml", get(openapi))
        .merge(prewarm::routes())
        .merge(apps::routes())
        .merge(audit::routes())
        .merge(ui::routes())
        .route("/metrics", get(server_metrics))
        .with_state(api)
}

/// The OpenAPI document of this API (kept in the repository as
/// `src/api/openapi.yaml`).
pub const OPENAPI: &str = include_str!("api/openapi.yaml");

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/yaml")], OPENAPI).into_response()
}

/// `GET /metrics` on an agent: this process's counters (the agent's
/// listener is loopback by default, or where the operator put it).
pub fn metrics_router() -> Router {
    Router::new().route("/metrics", get(|| render_metrics(None)))
}

/// `GET /metrics` on the server: as an agent's, plus deploy durations
/// and outcomes from the apps' history; it needs the read role, like the
/// rest of the API (in Prometheus, `authorization: {credentials: TOKEN}`
/// in the scrape job), unless the server runs with `--public-read`.
async fn server_metrics(
    axum::extract::State(api): axum::extract::State<Api>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = api.require(&headers, Role::Read) {
        return r;
    }
    render_metrics(Some(api.cfg.state.clone())).await
}

/// This process's counters and, when `deploy_state` is given, deploy
/// durations and outcomes from the apps' history there.
async fn render_metrics(deploy_state: Option<Arc<dyn crate::deploy::StateStore>>) -> Response {
    let mut body = crate::metrics::render();
    if let Some(state) = deploy_state {
        let deploys = tokio::task::spawn_blocking(move || {
            let all = crate::deploy::state::histories(state.as_ref());
            crate::metrics::render_deploys(all.iter().flat_map(|(app, h)| {
                h.iter().map(move |e| crate::metrics::DeployRecord {
                    app,
                    action: &e.action,
                    outcome: &e.outcome,
                    seconds: e.seconds,
                })
            }))
        })
        .await
        .unwrap_or_default();
        body.push_str(&deploys);
    }
    crate::metrics::response(body)
}
