//! The agent's read-only registry on loopback: the local engine pulls
//! `127.0.0.1:PORT/REPO:TAG` from it; manifests come from the origin
//! registry (small, and tags must resolve fresh), blobs from the agent's
//! cache or, when missing, from the swarm over QUIC.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};

use super::node::Node;
use crate::digest::Digest;
use crate::oci::{MANIFEST_ACCEPT, MEDIA_MANIFEST};
use crate::store::Store;

pub struct Mirror {
    pub node: Arc<Node>,
    /// The origin's P2P address (tracker and seeder).
    pub origin: SocketAddr,
    /// The origin registry's base URL, e.g. `http://10.0.0.1:5000`.
    pub upstream: String,
    pub store: Store,
    pub http: reqwest::Client,
}

pub fn router(m: Arc<Mirror>) -> Router {
    Router::new()
        .route("/v2", get(base))
        .route("/v2/", get(base))
        .route("/v2/{*rest}", any(dispatch))
        .with_state(m)
}

async fn base() -> Response {
    let mut r = Body::from("{}").into_response();
    set(&mut r, "Docker-Distribution-API-Version", "registry/2.0");
    r
}

fn set(r: &mut Response, k: &'static str, v: impl AsRef<str>) {
    if let Ok(v) = HeaderValue::from_str(v.as_ref()) {
        r.headers_mut().insert(k, v);
    }
}

fn error(status: StatusCode, code: &str, message: impl std::fmt::Display) -> Response {
    let body = serde_json::json!({ "errors": [{ "code": code, "message": message.to_string() }] });
    let mut r = (status, body.to_string()).into_response();
    set(&mut r, "Content-Type", "application/json");
    r
}

async fn dispatch(
    State(m): State<Arc<Mirror>>,
    method: Method,
    Path(rest): Path<String>,
    h: HeaderMap,
) -> Response {
    let head = method == Method::HEAD;
    if method != Method::GET && !head {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            "this mirror is read-only",
        );
    }
    if let Some((name, reference)) = rest.rsplit_once("/manifests/") {
        return manifest(&m, name, reference, &h, head).await;
    }
    if let Some((_, d)) = rest.rsplit_once("/blobs/") {
        return match d.parse::<Digest>() {
            Ok(d) => blob(&m, &d, head).await,
            Err(e) => error(StatusCode::BAD_REQUEST, "DIGEST_INVALID", e),
        };
    }
    error(
        StatusCode::NOT_FOUND,
        "UNSUPPORTED",
        format!("/v2/{rest} is not served here"),
    )
}

async fn manifest(m: &Mirror, name: &str, reference: &str, h: &HeaderMap, head: bool) -> Response {
    let accept = h
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| MANIFEST_ACCEPT.to_string());
    let url = format!("{}/v2/{name}/manifests/{reference}", m.upstream);
    let resp = match m.http.get(&url).header(header::ACCEPT, accept).send().await {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_GATEWAY,
                "UNKNOWN",
                format!("the origin registry: {e}"),
            );
        }
    };
    if !resp.status().is_success() {
        let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        return error(
            status,
            "MANIFEST_UNKNOWN",
            format!("the origin answered {status} for {name}:{reference}"),
        );
    }
    let media = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or(MEDIA_MANIFEST)
        .to_string();
    let bytes = match resp.bytes().await {
        Ok(b) if b.len() <= 4 << 20 => b,
        Ok(_) => {
            return error(
                StatusCode::BAD_GATEWAY,
                "MANIFEST_INVALID",
                "the manifest is over 4 MiB",
            );
        }
        Err(e) => return error(StatusCode::BAD_GATEWAY, "UNKNOWN", e),
    };
    let digest = Digest::sha256_of(&bytes);
    if let Ok(expected) = reference.parse::<Digest>()
        && expected != digest
    {
        return error(
            StatusCode::BAD_GATEWAY,
            "DIGEST_INVALID",
            "the origin sent a manifest with another digest",
        );
    }
    let _ = m.store.put(&bytes, Some(&digest));
    let len = bytes.len();
    let mut r = if head { Body::empty() } else { Body::from(bytes) }.into_response();
    set(&mut r, "Content-Type", media);
    set(&mut r, "Content-Length", len.to_string());
    set(&mut r, "Docker-Content-Digest", digest.to_string());
    r
}

async fn blob(m: &Mirror, d: &Digest, head: bool) -> Response {
    if !m.store.has(d)
        && let Err(e) = m.node.fetch(m.origin, d).await
    {
        return error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", e);
    }
    let path = m.store.blob_path(d);
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) => return error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", e),
    };
    let size = file.metadata().await.map(|md| md.len()).unwrap_or(0);
    let body = if head {
        Body::empty()
    } else {
        Body::from_stream(tokio_util::io::ReaderStream::with_capacity(file, 128 << 10))
    };
    let mut r = body.into_response();
    set(&mut r, "Content-Type", "application/octet-stream");
    set(&mut r, "Content-Length", size.to_string());
    set(&mut r, "Docker-Content-Digest", d.to_string());
    r
}
