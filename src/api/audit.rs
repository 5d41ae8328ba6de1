//! The audit log: every mutating API call (prewarm, deploy, hotfix,
//! rollback, token creation), with who, when, what and how it ended, one
//! JSON line each in `DATA/audit.jsonl`; and the admin's token endpoint.
//!
//! A line is appended after the call finished (a call refused for its
//! role is logged too); a line cut by a crash is skipped when read.

use std::io::Write;
use std::path::Path;

use axum::Json;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use super::{Api, Caller, error};
use crate::registry::auth::Role;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditEntry {
    pub at: String,
    pub who: String,
    pub role: Role,
    /// prewarm, deploy, hotfix, rollback, token.
    pub action: String,
    /// The app, image or token name acted on.
    pub target: String,
    /// ok, failed, refused.
    pub outcome: String,
    #[serde(default)]
    pub detail: String,
}

/// Appends one entry; a failure to write is logged, never fatal to the call.
pub fn record(data: &Path, who: &Caller, action: &str, target: &str, outcome: &str, detail: &str) {
    let e = AuditEntry {
        at: crate::deploy::state::now(),
        who: who.name.clone(),
        role: who.role,
        action: action.into(),
        target: target.into(),
        outcome: outcome.into(),
        detail: detail.into(),
    };
    let path = data.join("audit.jsonl");
    let write = || {
        std::fs::create_dir_all(data)?;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        let mut line = serde_json::to_vec(&e).map_err(std::io::Error::other)?;
        line.push(b'\n');
        f.write_all(&line)?;
        f.sync_data()
    };
    // The entry is on disk before the caller answers, but the fsync must
    // not hold up the other requests of an async worker: on the server's
    // multi-threaded runtime they move to another thread meanwhile.
    let on_worker = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    let written = if on_worker {
        tokio::task::block_in_place(write)
    } else {
        write()
    };
    if let Err(err) = written {
        tracing::error!("audit: cannot append to {}: {err}", path.display());
    }
    tracing::info!(
        "audit: {} ({}) {} {} → {}",
        e.who,
        e.role,
        e.action,
        e.target,
        e.outcome
    );
}

/// The last `limit` entries, oldest first.
pub fn read(data: &Path, limit: usize) -> Vec<AuditEntry> {
    let text = std::fs::read_to_string(data.join("audit.jsonl")).unwrap_or_default();
    let all: Vec<AuditEntry> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let skip = all.len().saturating_sub(limit);
    all.into_iter().skip(skip).collect()
}

pub fn routes() -> Router<Api> {
    Router::new()
        .route("/strata/api/audit", get(list))
        .route("/strata/api/tokens", post(create_token))
}

#[derive(Debug, Deserialize)]
struct Limit {
    limit: Option<usize>,
}

async fn list(
    State(api): State<Api>,
    headers: HeaderMap,
    q: Result<Query<Limit>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(r) = api.require(&headers, Role::Read) {
        return r;
    }
    let q = match super::query(q) {
        Ok(q) => q,
        Err(r) => return r,
    };
    let data = api.cfg.data.clone();
    let limit = q.limit.unwrap_or(200).min(10_000);
    super::blocking_json(move || read(&data, limit)).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    pub name: String,
    pub role: Role,
}

/// Admins create tokens: the token is in the answer, once; only its hash
/// is stored, and it is accepted at once.
async fn create_token(State(api): State<Api>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let caller = match api.authorize(&headers, Role::Admin, "token", "") {
        Ok(c) => c,
        Err(r) => return r,
    };
    let req: TokenRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("not a token request: {e}")),
    };
    let path = api.cfg.credentials_file.clone();
    let creds = api.cfg.access.credentials.clone();
    let (name, role) = (req.name.clone(), req.role);
    let made = tokio::task::spawn_blocking(move || creds.create(&path, &name, role)).await;
    match made {
        Ok(Ok(token)) => {
            record(
                &api.cfg.data,
                &caller,
                "token",
                &req.name,
                "ok",
                req.role.as_str(),
            );
            (
                StatusCode::CREATED,
                Json(serde_json::json!({ "name": req.name, "role": req.role, "token": token })),
            )
                .into_response()
        }
        Ok(Err(e)) => error(StatusCode::BAD_REQUEST, e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_a_cut_line_is_skipped() {
        let d = tempfile::tempdir().unwrap();
        let c = Caller {
            name: "ops".into(),
            role: Role::Admin,
        };
        record(d.path(), &c, "deploy", "shop", "ok", "");
        record(d.path(), &c, "rollback", "shop", "failed", "engine down");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(d.path().join("audit.jsonl"))
            .unwrap();
        f.write_all(b"{\"at\":\"2026").unwrap();
        let all = read(d.path(), 10);
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].action, "rollback");
        assert_eq!(all[1].detail, "engine down");
        assert_eq!(read(d.path(), 1), all[1..]);
    }
}
