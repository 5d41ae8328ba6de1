//! Apps over HTTP (`/strata/api/apps/...`) and the images in the
//! registry (`/strata/api/images`): the same orchestrator as `strata
//! deploy`, run on a blocking thread per call, so the app's lock, state,
//! history and rollback behave exactly as from the CLI.
//!
//! Deploys and rollbacks need the deploy role, are audited, and name the
//! token in the app's history (`NAME (api)`). The image of a deploy is a
//! `REPO:TAG` or `REPO@DIGEST` of this server's registry.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use super::{Api, Caller, error};
use crate::deploy::plan::Mode;
use crate::deploy::spec::{self, SpecError};
use crate::deploy::state::{AppDir, HistoryEntry, Instance};
use crate::deploy::{DeployError, Orchestrator, Report, Target};
use crate::lease::LeaseError;
use crate::registry::RegistryError;
use crate::registry::auth::Role;

pub fn routes() -> Router<Api> {
    Router::new()
        .route("/strata/api/images", get(images))
        .route("/strata/api/tiers", get(tiers))
        .route("/strata/api/apps", get(list))
        .route("/strata/api/apps/{app}", get(status))
        .route("/strata/api/apps/{app}/history", get(history))
        .route("/strata/api/apps/{app}/logs", get(logs))
        .route("/strata/api/apps/{app}/deploy", post(deploy))
        .route("/strata/api/apps/{app}/rollback", post(rollback))
}

/// An app as its spec and state say, without asking any engine.
#[derive(Debug, Clone, Serialize)]
pub struct AppSummary {
    pub name: String,
    /// The spec's default image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Instances declared.
    pub instances: u32,
    /// The last history version.
    pub version: u64,
    /// Instances deployed, with their leased IPs.
    pub deployed: Vec<Instance>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last: Option<HistoryEntry>,
    /// A crashed orchestrator left an operation unfinished.
    pub unfinished: bool,
    /// The spec does not load.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Every app declared in the specs folder, sorted by name.
pub fn summaries(api: &Api) -> Vec<AppSummary> {
    let dir = &api.cfg.apps;
    spec::list(dir)
        .into_iter()
        .filter(|n| spec::valid_app_name(n))
        .map(|name| {
            let app_dir = AppDir::new(&api.cfg.data, api.cfg.state.clone(), &name);
            let state = app_dir.load().unwrap_or_default();
            let last = app_dir.history().ok().and_then(|mut h| h.pop());
            let (image, instances, error) = match spec::find(dir, &name) {
                Ok(a) => (a.image, a.instances, None),
                Err(e) => (None, 0, Some(e.to_string())),
            };
            AppSummary {
                name,
                image,
                instances,
                version: state.version,
                deployed: state.instances.into_values().collect(),
                last,
                unfinished: state.operation.is_some() || state.run.is_some(),
                error,
            }
        })
        .collect()
}

/// The HTTP status for a deploy error: what the caller can fix is 4xx, an
/// engine or a health check failing is 502, the rest 500.
fn status_of(e: &DeployError) -> StatusCode {
    match e {
        DeployError::Spec(SpecError::UnknownApp { .. }) => StatusCode::NOT_FOUND,
        DeployError::Spec(_) => StatusCode::UNPROCESSABLE_ENTITY,
        DeployError::Lease(LeaseError::Locked { .. } | LeaseError::Exhausted { .. }) => StatusCode::CONFLICT,
        DeployError::Lease(LeaseError::Etcd { .. }) | DeployError::Etcd(_) => StatusCode::BAD_GATEWAY,
        // Another orchestrator took the app over meanwhile.
        DeployError::StateConflict { .. } => StatusCode::CONFLICT,
        DeployError::MissingImage { .. } => StatusCode::CONFLICT,
        // The request is fine; the app's state or spec does not allow it.
        DeployError::NoImage(_)
        | DeployError::NoRollback { .. }
        | DeployError::NotHotfixable { .. }
        | DeployError::PoolShort { .. }
        | DeployError::ImageGone { .. }
        | DeployError::NothingToRemove(_)
        | DeployError::AllDrained(_) => StatusCode::CONFLICT,
        DeployError::Hostile { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        DeployError::Instance { .. } => StatusCode::NOT_FOUND,
        DeployError::Engine { .. }
        | DeployError::HostDown { .. }
        | DeployError::NetworkMismatch { .. }
        | DeployError::RolledBack { .. }
        | DeployError::Unhealthy { .. }
        | DeployError::HotfixRestored { .. }
        | DeployError::Unverified { .. }
        | DeployError::Restarted { .. } => StatusCode::BAD_GATEWAY,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn deploy_error(e: DeployError) -> Response {
    let text = e.to_string();
    let mut r = error(status_of(&e), &text);
    r.extensions_mut().insert(ErrorText(text));
    r
}

/// How often the server looks for runs that a dead process left.
pub const FINISH_EVERY: std::time::Duration = std::time::Duration::from_secs(3);

/// From the start and then every [`FINISH_EVERY`]: each app whose state
/// holds a run or step while nobody holds its lock (the process that
/// journaled it died: on this machine, or with a shared state store on
/// another, whose etcd lock expires `LOCK_TTL` after it died) is settled
/// and finished forward, as the next command would. One thread, one app
/// at a time, so the server answers meanwhile; a live run (its lock is
/// held) is left alone; an app whose recovery failed is tried again
/// after a pause that doubles from 10 s to 5 min.
pub fn finish_unfinished(api: Api) {
    std::thread::spawn(move || {
        let mut pause: std::collections::HashMap<String, (std::time::Instant, std::time::Duration)> =
            Default::default();
        loop {
            let journaled: Vec<String> = spec::list(&api.cfg.apps)
                .into_iter()
                .filter(|n| spec::valid_app_name(n))
                .filter(|n| {
                    AppDir::new(&api.cfg.data, api.cfg.state.clone(), n)
                        .load()
                        .is_ok_and(|s| s.operation.is_some() || s.run.is_some())
                })
                .collect();
            pause.retain(|app, _| journaled.contains(app));
            for app in journaled {
                if pause
                    .get(&app)
                    .is_some_and(|(until, _)| std::time::Instant::now() < *until)
                {
                    continue;
                }
                let name = app.clone();
                let progress = move |s: &str| tracing::info!("{name}: {s}");
                match orchestrate(&api, &app, &progress, |o| o.recover_now()) {
                    Ok(()) => {
                        pause.remove(&app);
                        tracing::info!("{app}: the run a dead process left unfinished is settled")
                    }
                    Err(DeployError::Lease(LeaseError::Locked { .. })) => {}
                    Err(e) => {
                        let wait = pause
                            .get(&app)
                            .map(|(_, w)| (*w * 2).min(std::time::Duration::from_secs(300)))
                            .unwrap_or(std::time::Duration::from_secs(10));
                        pause.insert(app.clone(), (std::time::Instant::now() + wait, wait));
                        tracing::error!(
                            "{app}: finishing the run a dead process left failed (next try in {wait:?}): {e}"
                        )
                    }
                }
            }
            std::thread::sleep(FINISH_EVERY);
        }
    });
}

/// Every few seconds, while some host is fenced (`strata drain --force`):
/// the apps' containers on fenced hosts that answer again are removed, so
/// a dead host that comes back does not serve, for long, an IP that moved.
pub fn sweep_fenced_hosts(api: Api) {
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(std::time::Duration::from_secs(5));
            let fenced = crate::deploy::drain::DrainList::load(api.cfg.state.as_ref())
                .is_ok_and(|l| l.hosts.values().any(|d| d.forced));
            if !fenced {
                continue;
            }
            for app in spec::list(&api.cfg.apps)
                .into_iter()
                .filter(|n| spec::valid_app_name(n))
            {
                let name = app.clone();
                let progress = move |s: &str| tracing::warn!("{name}: {s}");
                if let Err(e) = orchestrate(&api, &app, &progress, |o| o.sweep_fenced()) {
                    tracing::debug!("{app}: sweeping fenced hosts: {e}");
                }
            }
        }
    });
}

/// Runs `f` on `app`'s orchestrator as this server sees it (its spec
/// folder, lease store, deploy state and registry store), on this thread.
fn orchestrate<T>(
    api: &Api,
    app: &str,
    progress: &(dyn Fn(&str) + Sync),
    f: impl FnOnce(&mut Orchestrator<'_>) -> crate::deploy::Result<T>,
) -> crate::deploy::Result<T> {
    let spec = spec::find(&api.cfg.apps, app)?;
    let leases = crate::lease::open(&api.cfg.leases, &api.cfg.data)?;
    let registry = api.cfg.registry.clone();
    let mut orch = Orchestrator::new(
        spec,
        &api.cfg.data,
        api.cfg.state.clone(),
        registry.store(),
        leases.as_ref(),
        progress,
    )?;
    f(&mut orch)
}

/// Runs `f` with the app's orchestrator on a blocking thread (the
/// orchestrator drives the engines on a runtime of its own).
async fn with_orchestrator<T, F>(api: &Api, app: &str, actor: Option<&Caller>, f: F) -> Result<T, Response>
where
    T: Send + 'static,
    F: FnOnce(&Orchestrator<'_>) -> crate::deploy::Result<T> + Send + 'static,
{
    let api = api.clone();
    let app = app.to_string();
    let actor = actor.map(|c| format!("{} (api)", c.name));
    let joined = tokio::task::spawn_blocking(move || {
        let name = app.clone();
        let progress = move |s: &str| tracing::info!("{name}: {s}");
        orchestrate(&api, &app, &progress, |orch| {
            if let Some(a) = actor {
                orch.set_actor(a);
            }
            f(orch)
        })
    })
    .await;
    match joined {
        Ok(r) => r.map_err(deploy_error),
        Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e)),
    }
}

async fn list(State(api): State<Api>, headers: HeaderMap) -> Response {
    if let Err(r) = api.require(&headers, Role::Read) {
        return r;
    }
    let a = api.clone();
    super::blocking_json(move || summaries(&a)).await
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct StatusQuery {
    /// Also read each container back and report drift.
    #[serde(default)]
    verify: bool,
}

/// Instances as the engines see them now, with a live health probe (and
/// with `?verify=true` the drift from what the history says).
async fn status(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(app): Path<String>,
    q: Result<Query<StatusQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(r) = api.require(&headers, Role::Read) {
        return r;
    }
    let verify = match super::query(q) {
        Ok(q) => q.verify,
        Err(r) => return r,
    };
    match with_orchestrator(&api, &app, None, move |o| o.status(verify)).await {
        Ok(s) => Json(s).into_response(),
        Err(r) => r,
    }
}

async fn history(State(api): State<Api>, headers: HeaderMap, Path(app): Path<String>) -> Response {
    if let Err(r) = api.require(&headers, Role::Read) {
        return r;
    }
    match with_orchestrator(&api, &app, None, |o| o.history()).await {
        Ok(h) => Json(h).into_response(),
        Err(r) => r,
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    /// REPO:TAG or REPO@DIGEST in this registry; default: the spec's image.
    #[serde(default)]
    pub image: Option<String>,
    /// auto (hotfix when eligible), hotfix or redeploy.
    #[serde(default)]
    pub mode: Option<String>,
}

/// `REPO:TAG` or `REPO@DIGEST` → (repository, reference).
pub fn split_image(image: &str) -> Option<(&str, &str)> {
    if let Some((repo, d)) = image.split_once('@') {
        return Some((repo, d));
    }
    let (repo, tag) = image.rsplit_once(':')?;
    (!tag.contains('/')).then_some((repo, tag))
}

/// The registry's image as a deploy target.
fn target(api: &Api, image: &str) -> Result<Target, Response> {
    let Some((repo, reference)) = split_image(image) else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("image `{image}` is not REPO:TAG or REPO@DIGEST"),
        ));
    };
    let digest = api.cfg.registry.resolve(repo, reference).map_err(|e| {
        let status = match e {
            RegistryError::NameInvalid(_)
            | RegistryError::TagInvalid(_)
            | RegistryError::DigestInvalid(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::NOT_FOUND,
        };
        error(status, format!("image `{image}` in this registry: {e}"))
    })?;
    Target::from_store(api.cfg.registry.store(), image, &digest).map_err(|e| {
        error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("image `{image}` is not a deployable image manifest: {e}"),
        )
    })
}

/// A JSON body that may be empty or `null` (then the defaults).
fn parse_optional<T: Default + serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, serde_json::Error> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    Ok(serde_json::from_slice::<Option<T>>(body)?.unwrap_or_default())
}

/// Answers a finished deploy or rollback and writes the audit line.
fn finish(
    api: &Api,
    caller: &Caller,
    action: &str,
    app: &str,
    r: Result<Report, Response>,
    what: &str,
) -> Response {
    match r {
        Ok(report) => {
            let detail = format!("version {}: {}", report.version, report.image);
            super::audit::record(&api.cfg.data, caller, action, app, "ok", &detail);
            Json(report).into_response()
        }
        Err(resp) => {
            let detail = format!("{what}: HTTP {}", resp.status().as_u16());
            super::audit::record(&api.cfg.data, caller, action, app, "failed", &detail);
            resp
        }
    }
}

async fn deploy(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(app): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let caller = match api.authorize(&headers, Role::Deploy, "deploy", &app) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let req: DeployRequest = match parse_optional(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("not a deploy request: {e}")),
    };
    let (mode, action) = match req.mode.as_deref().unwrap_or("auto") {
        "auto" => (Mode::Auto, "deploy"),
        "hotfix" => (Mode::Hotfix, "hotfix"),
        "redeploy" => (Mode::Redeploy, "deploy"),
        other => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("mode `{other}` is not auto, hotfix or redeploy"),
            );
        }
    };
    let image = match req.image.clone() {
        Some(i) => i,
        None => {
            let a = api.cfg.apps.clone();
            let name = app.clone();
            match tokio::task::spawn_blocking(move || spec::find(&a, &name)).await {
                Ok(Ok(s)) => match s.image {
                    Some(i) => i,
                    None => return deploy_error(DeployError::NoImage(app)),
                },
                Ok(Err(e)) => return deploy_error(e.into()),
                Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
            }
        }
    };
    let t = {
        let a = api.clone();
        let i = image.clone();
        match tokio::task::spawn_blocking(move || target(&a, &i)).await {
            Ok(Ok(t)) => t,
            Ok(Err(r)) => return finish(&api, &caller, action, &app, Err(r), &image),
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
        }
    };
    let verb = action.to_string();
    let r = with_orchestrator(&api, &app, Some(&caller), move |o| o.deploy(&t, mode, &verb)).await;
    finish(&api, &caller, action, &app, r, &image)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The history version to return to; default: the last good deploy
    /// of another image.
    #[serde(default)]
    pub to: Option<u64>,
}

async fn rollback(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(app): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let caller = match api.authorize(&headers, Role::Deploy, "rollback", &app) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let req: RollbackRequest = match parse_optional(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("not a rollback request: {e}")),
    };
    rollback_as(&api, &caller, &app, req.to).await
}

/// Rolls `app` back as `caller` (the API and the dashboard's button).
pub async fn rollback_as(api: &Api, caller: &Caller, app: &str, to: Option<u64>) -> Response {
    let r = with_orchestrator(api, app, Some(caller), move |o| o.rollback(to)).await;
    let what = to
        .map(|v| format!("to version {v}"))
        .unwrap_or_else(|| "to the previous image".into());
    finish(api, caller, "rollback", app, r, &what)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    /// Only this instance (1, 2, …).
    pub instance: Option<u32>,
    /// Start with the last N lines of each instance.
    pub tail: Option<usize>,
    /// Keep streaming until the client goes away.
    #[serde(default)]
    pub follow: bool,
}

/// `NAME | line` lines from every instance, streamed as they come.
async fn logs(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(app): Path<String>,
    q: Result<Query<LogsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(r) = api.require(&headers, Role::Read) {
        return r;
    }
    let q = match super::query(q) {
        Ok(q) => q,
        Err(r) => return r,
    };
    // Errors the caller can act on come before the stream starts.
    let check = {
        let a = api.clone();
        let name = app.clone();
        tokio::task::spawn_blocking(move || -> crate::deploy::Result<()> {
            let spec = spec::find(&a.cfg.apps, &name)?;
            let st = AppDir::new(&a.cfg.data, a.cfg.state.clone(), &name).load()?;
            let found = st
                .instances
                .values()
                .any(|i| q.instance.is_none_or(|o| o == i.index));
            if !found {
                return Err(DeployError::Instance {
                    instance: q
                        .instance
                        .map(|o| spec.instance_name(o))
                        .unwrap_or_else(|| name.clone()),
                    why: "no such deployed instance".into(),
                });
            }
            Ok(())
        })
        .await
    };
    match check {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return deploy_error(e),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<String>(1024);
    let tx = Arc::new(tx);
    let (out, stop) = (tx.clone(), tx.clone());
    let a = api.clone();
    tokio::spawn(async move {
        let r = with_orchestrator(&a, &app, None, move |o| {
            o.logs(
                q.instance,
                q.follow,
                q.tail,
                &|name, line| {
                    // Called inside the orchestrator's runtime, where
                    // `blocking_send` is not allowed: wait for room by
                    // hand (a slow client slows the log streams down).
                    let mut l = format!("{name} | {line}\n");
                    while let Err(tokio::sync::mpsc::error::TrySendError::Full(back)) = out.try_send(l) {
                        l = back;
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                },
                &|| stop.is_closed(),
            )
        })
        .await;
        if let Err(r) = r {
            let _ = tx
                .send(format!("[strata: logs ended: HTTP {}]\n", r.status().as_u16()))
                .await;
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|l| (Ok::<_, std::convert::Infallible>(l), rx))
    });
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// The app's live status and its history, for the dashboard (errors as
/// text), from one orchestrator.
pub async fn status_and_history(
    api: &Api,
    app: &str,
    verify: bool,
) -> Result<(crate::deploy::Status, Vec<HistoryEntry>), String> {
    with_orchestrator(api, app, None, move |o| Ok((o.status(verify)?, o.history()?)))
        .await
        .map_err(response_text)
}

/// The app's history, for the dashboard.
pub async fn history_of_app(api: &Api, app: &str) -> Result<Vec<HistoryEntry>, String> {
    with_orchestrator(api, app, None, |o| o.history())
        .await
        .map_err(response_text)
}

/// The last `tail` lines of each instance (or one), for the dashboard.
pub async fn recent_logs(api: &Api, app: &str, instance: Option<u32>, tail: usize) -> Result<String, String> {
    with_orchestrator(api, app, None, move |o| {
        let out = std::sync::Mutex::new(String::new());
        o.logs(
            instance,
            false,
            Some(tail),
            &|name, line| {
                let mut s = out.lock().unwrap_or_else(|e| e.into_inner());
                s.push_str(name);
                s.push_str(" | ");
                s.push_str(line);
                s.push('\n');
            },
            &|| false,
        )?;
        Ok(out.into_inner().unwrap_or_else(|e| e.into_inner()))
    })
    .await
    .map_err(response_text)
}

/// The `error` of a JSON error response (the status when there is none).
fn response_text(r: Response) -> String {
    // Error responses are built by `error` from a string: take it back.
    let status = r.status();
    match r.extensions().get::<ErrorText>() {
        Some(t) => t.0.clone(),
        None => format!("HTTP {status}"),
    }
}

/// The message of an error response, kept beside its JSON body.
#[derive(Clone)]
struct ErrorText(String);

/// A repository of the registry and its tags.
#[derive(Debug, Serialize)]
pub struct Repository {
    pub name: String,
    pub tags: Vec<String>,
}

async fn images(State(api): State<Api>, headers: HeaderMap) -> Response {
    if let Err(r) = api.require(&headers, Role::Read) {
        return r;
    }
    let reg = api.cfg.registry.clone();
    super::blocking_json(move || {
        reg.repositories()
            .into_iter()
            .map(|name| Repository {
                tags: reg.tags(&name, None, None).unwrap_or_default(),
                name,
            })
            .collect::<Vec<_>>()
    })
    .await
}

/// The tier graph of the registry's images.
async fn tiers(State(api): State<Api>, headers: HeaderMap) -> Response {
    if let Err(r) = api.require(&headers, Role::Read) {
        return r;
    }
    let reg = api.cfg.registry.clone();
    super::blocking_json(move || super::tiers::of_registry(&reg)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references_split_at_the_right_colon() {
        assert_eq!(split_image("shop:b2"), Some(("shop", "b2")));
        assert_eq!(split_image("team/shop:b2"), Some(("team/shop", "b2")));
        assert_eq!(split_image("shop@sha256:abc"), Some(("shop", "sha256:abc")));
        assert_eq!(split_image("shop"), None);
        assert_eq!(split_image("host:5000/shop"), None);
    }
}
