//! The agent's read-only registry on loopback: the local engine pulls
//! `127.0.0.1:PORT/REPO:TAG` from it; manifests come from the origin
//! registry (small, and tags must resolve fresh), blobs from the agent's
//! cache or, when missing, from the swarm over QUIC.
//!
//! A client that cannot read zstd layers (`--engine-gzip`; see
//! [`transcode`]) gets the gzip variant of a zstd image when it asks by
//! tag, and a refusal naming the variant's digest when it asks for the
//! zstd manifest by digest (serving it would fail in the engine after
//! every layer was downloaded; serving the variant would fail the
//! engine's digest check). The variant itself is served by its digest.
//! An index's variant has the variants of its children for this host's
//! platform.
//!
//! Blobs (`blobs`) go to the client as their pieces arrive.

mod blobs;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};

use super::node::Node;
use super::transcode::{self, EngineGzip, Transcoder};
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
    /// Which clients get gzip variants of zstd images.
    pub gzip: EngineGzip,
    pub transcoder: Transcoder,
}

impl Mirror {
    pub fn new(
        node: Arc<Node>,
        origin: SocketAddr,
        upstream: &str,
        store: Store,
        gzip: EngineGzip,
    ) -> Mirror {
        Mirror {
            transcoder: Transcoder::new(store.clone(), node.clone(), origin),
            node,
            origin,
            upstream: upstream.trim_end_matches('/').to_string(),
            store,
            http: reqwest::Client::new(),
            gzip,
        }
    }
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
            Ok(d) => blobs::blob(&m, &d, &h, head).await,
            Err(e) => error(StatusCode::BAD_REQUEST, "DIGEST_INVALID", e),
        };
    }
    error(
        StatusCode::NOT_FOUND,
        "UNSUPPORTED",
        format!("/v2/{rest} is not served here"),
    )
}

/// A manifest from the origin: its bytes, media type and digest (checked
/// against `reference` when that is a digest), kept in the store.
struct Fetched {
    bytes: axum::body::Bytes,
    media: String,
    digest: Digest,
}

async fn from_origin(m: &Mirror, name: &str, reference: &str, accept: &str) -> Result<Fetched, Response> {
    let url = format!("{}/v2/{name}/manifests/{reference}", m.upstream);
    let resp = match m.http.get(&url).header(header::ACCEPT, accept).send().await {
        Ok(r) => r,
        Err(e) => {
            return Err(error(
                StatusCode::BAD_GATEWAY,
                "UNKNOWN",
                format!("the origin registry: {e}"),
            ));
        }
    };
    if !resp.status().is_success() {
        let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        return Err(error(
            status,
            "MANIFEST_UNKNOWN",
            format!("the origin answered {status} for {name}:{reference}"),
        ));
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
            return Err(error(
                StatusCode::BAD_GATEWAY,
                "MANIFEST_INVALID",
                "the manifest is over 4 MiB",
            ));
        }
        Err(e) => return Err(error(StatusCode::BAD_GATEWAY, "UNKNOWN", e)),
    };
    let digest = Digest::sha256_of(&bytes);
    if let Ok(expected) = reference.parse::<Digest>()
        && expected != digest
    {
        return Err(error(
            StatusCode::BAD_GATEWAY,
            "DIGEST_INVALID",
            "the origin sent a manifest with another digest",
        ));
    }
    let _ = m.store.put(&bytes, Some(&digest));
    Ok(Fetched { bytes, media, digest })
}

async fn manifest(m: &Mirror, name: &str, reference: &str, h: &HeaderMap, head: bool) -> Response {
    let accept = h
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| MANIFEST_ACCEPT.to_string());
    let agent = h
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let gzip = m.gzip.applies_to(&transcode::client_of(agent));
    let by_digest = reference.parse::<Digest>().ok();
    let got = match from_origin(m, name, reference, &accept).await {
        Ok(got) => got,
        Err(refused) => {
            // A gzip variant made here, asked for by its own digest (what
            // the engine recorded after a pull by tag).
            if refused.status() == StatusCode::NOT_FOUND
                && let Some(d) = &by_digest
                && let Some(source) = m.transcoder.source_of_manifest(d)
            {
                return variant_by_digest(m, name, d, &source, &accept, head).await;
            }
            return refused;
        }
    };
    if gzip {
        match variant_of(m, name, &got).await {
            Ok(None) => {}
            Ok(Some(gz)) if by_digest.is_none() => return variant(m, &gz, &got.media, head),
            Ok(Some(gz)) => {
                let client = match transcode::client_of(agent) {
                    transcode::Client::Docker(Some((major, minor))) => format!("Docker {major}.{minor}"),
                    _ => "this client".to_string(),
                };
                return error(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "UNSUPPORTED",
                    format!(
                        "{name}@{} has zstd layers, which {client} cannot read (Docker before 23.0); \
                         this agent serves its gzip variant by tag, and by digest as {name}@{gz}",
                        got.digest
                    ),
                );
            }
            Err(e) => return e,
        }
    }
    manifest_response(got.bytes, &got.media, &got.digest, head)
}

/// The gzip variant of a manifest from the origin: of an image with zstd
/// layers, or of an index whose children for this host's platform are
/// such images (the others stay as they are: no engine here picks them).
async fn variant_of(m: &Mirror, name: &str, got: &Fetched) -> Result<Option<Digest>, Response> {
    let failed = |what: &str, e: transcode::TranscodeError| {
        error(
            StatusCode::BAD_GATEWAY,
            "UNKNOWN",
            format!("making the gzip variant of {name}@{what}: {e}"),
        )
    };
    let Some(children) = transcode::index_children(&got.bytes, transcode::host_platform()) else {
        return m
            .transcoder
            .image(&got.digest, &got.bytes)
            .await
            .map_err(|e| failed(&got.digest.to_string(), e));
    };
    let mut variants = std::collections::BTreeMap::new();
    for child in children {
        let c = from_origin(m, name, &child.to_string(), MANIFEST_ACCEPT).await?;
        let made = m.transcoder.image(&c.digest, &c.bytes).await;
        if let Some(gz) = made.map_err(|e| failed(&child.to_string(), e))? {
            variants.insert(child, gz);
        }
    }
    m.transcoder
        .index(&got.digest, &got.bytes, &variants)
        .map_err(|e| failed(&got.digest.to_string(), e))
}

/// The gzip variant `gz` of `source`, asked for by digest: served when
/// the origin still has `source` under `name` (made again if it was
/// evicted).
async fn variant_by_digest(
    m: &Mirror,
    name: &str,
    gz: &Digest,
    source: &Digest,
    accept: &str,
    head: bool,
) -> Response {
    let got = match from_origin(m, name, &source.to_string(), accept).await {
        Ok(got) => got,
        Err(refused) => return refused,
    };
    match variant_of(m, name, &got).await {
        Ok(Some(made)) if made == *gz => variant(m, gz, &got.media, head),
        Ok(other) => error(
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            format!(
                "{name}@{gz} was a gzip variant of {source}, which now has {}",
                other.map_or("none".to_string(), |d| d.to_string())
            ),
        ),
        Err(e) => e,
    }
}

/// Serves the gzip variant `gz` from the store, with the media type of
/// its source when it names none itself.
fn variant(m: &Mirror, gz: &Digest, media: &str, head: bool) -> Response {
    let bytes = match m.store.read_blob(gz) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", e),
    };
    let media = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v["mediaType"].as_str().map(str::to_string))
        .unwrap_or_else(|| media.to_string());
    crate::metrics::MIRROR_GZIP_MANIFESTS_SERVED.add(1);
    manifest_response(bytes.into(), &media, gz, head)
}

fn manifest_response(bytes: axum::body::Bytes, media: &str, digest: &Digest, head: bool) -> Response {
    let len = bytes.len();
    let mut r = if head { Body::empty() } else { Body::from(bytes) }.into_response();
    set(&mut r, "Content-Type", media);
    set(&mut r, "Content-Length", len.to_string());
    set(&mut r, "Docker-Content-Digest", digest.to_string());
    r
}
