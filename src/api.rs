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
//! Basic) carries a role (read, deploy, admin). Without a token a caller
//! reads (unless the server requires credentials for pulls) and, on a
//! server with open pushes, deploys. Every mutating call is written to the
//! audit log with who and when; deploys also record who in the app's
//! history.

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
    /// The server's data directory: deploy state and history live in
    /// `DATA/apps/`, the audit log in `DATA/audit.jsonl`.
    pub data: PathBuf,
    /// The folder of app specs (`NAME.toml`).
    pub apps: PathBuf,
    /// The lease store: `file` or `etcd://…` (as `strata deploy --leases`).
    pub leases: String,
    /// The credentials file (`strata token create`), where admins'
    /// tokens made through the API are added.
    pub credentials_file: PathBuf,
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

    /// The caller a request's `Authorization` header proves; anonymous
    /// callers read (and deploy on an open-push server).
    pub fn caller(&self, headers: &HeaderMap) -> Result<Caller, Response> {
        let presented = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        if let Some(p) = presented {
            return self.token_caller(p).ok_or_else(|| {
                error(
                    StatusCode::UNAUTHORIZED,
                    "the token is not valid (strata token create)",
                )
            });
        }
        self.anonymous().ok_or_else(|| {
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "this server needs a token (strata token create NAME --role read)",
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"strata\""),
            );
            r
        })
    }

    /// The caller an `Authorization` value proves.
    pub fn token_caller(&self, authorization: &str) -> Option<Caller> {
        let (name, role) = self.cfg.access.credentials.check_role(Some(authorization))?;
        Some(Caller { name, role })
    }

    /// The caller without a token, if the server lets one in.
    pub fn anonymous(&self) -> Option<Caller> {
        let a = &self.cfg.access;
        if a.pull_auth {
            return None;
        }
        Some(Caller {
            name: "anonymous".into(),
            role: if a.open_push { Role::Deploy } else { Role::Read },
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

/// Refuses a caller whose role is below `needed` (403, naming both).
pub fn check_role(c: &Caller, needed: Role) -> Result<(), Response> {
    if c.role >= needed {
        return Ok(());
    }
    let status = if c.name == "anonymous" {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::FORBIDDEN
    };
    Err(error(
        status,
        format!(
            "`{}` has the {} role; this needs {} (strata token create NAME --role {})",
            c.name, c.role, needed, needed
        ),
    ))
}

/// A JSON error body `{"error": "..."}` with `status`.
pub fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, Json(serde_json::json!({ "error": message.to_string() }))).into_response()
}

/// Every API route, the dashboard and `/metrics`.
pub fn router(cfg: ApiConfig) -> Router {
    let api = Api::new(cfg);
    apps::recover_unfinished(api.clone());
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
/// rest of the API (so a `--pull-auth` server wants a token: in
/// Prometheus, `authorization: {credentials: TOKEN}` in the scrape job).
async fn server_metrics(
    axum::extract::State(api): axum::extract::State<Api>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = api.require(&headers, Role::Read) {
        return r;
    }
    render_metrics(Some(api.cfg.data.clone())).await
}

/// This process's counters and, when `deploy_data` is given, deploy
/// durations and outcomes from the apps' history there.
async fn render_metrics(deploy_data: Option<PathBuf>) -> Response {
    let mut body = crate::metrics::render();
    if let Some(data) = deploy_data {
        let deploys = tokio::task::spawn_blocking(move || {
            let all = crate::deploy::state::histories(&data);
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
