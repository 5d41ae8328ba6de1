//! The distribution-spec HTTP surface: routing, headers and error bodies.

pub(super) mod uploads;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};

use super::auth::Role;
use super::state::{MAX_MANIFEST, Registry, RegistryError};
use crate::digest::Digest;

#[derive(Clone)]
struct Shared {
    reg: Arc<Registry>,
    access: Arc<super::Access>,
    /// Bearer tokens handed out by `/token`: who (None = anonymous) and
    /// until when.
    sessions: Arc<std::sync::Mutex<Sessions>>,
}

/// Session token → (credential name and role, or None for anonymous;
/// expiry).
type Sessions = HashMap<String, (Option<(String, Role)>, std::time::Instant)>;

/// How long a token from `/token` is valid.
const SESSION_TTL: std::time::Duration = std::time::Duration::from_secs(3600);
/// Sessions kept at most; expired ones are dropped first.
const MAX_SESSIONS: usize = 100_000;

/// Read size for serving blobs: large enough for page-cache speed, small
/// enough that hundreds of concurrent pulls stay within a bounded memory.
const BLOB_CHUNK: usize = 128 << 10;

pub fn router(reg: Arc<Registry>, access: Arc<super::Access>) -> Router {
    let v2 = Router::new()
        .route("/v2", get(base))
        .route("/v2/", get(base))
        .route("/v2/{*rest}", any(dispatch))
        .layer(axum::middleware::map_response(api_version));
    Router::new()
        .route("/token", get(token))
        .merge(v2)
        .with_state(Shared {
            reg,
            access,
            sessions: Default::default(),
        })
}

/// Every `/v2/` answer, errors and challenges included, says which API it
/// speaks (clients such as Docker probe for it).
async fn api_version(mut r: Response) -> Response {
    r.headers_mut().insert(
        "Docker-Distribution-API-Version",
        HeaderValue::from_static("registry/2.0"),
    );
    r
}

fn unauthorized(why: &str) -> ApiError {
    ApiError(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", why.to_string())
}

/// The Bearer challenge that sends clients to `/token` (Docker's token
/// flow: anonymous clients get a pull-only token, clients with a
/// credential a push token), naming the `scope` the request needs
/// (`repository:NAME:pull`, `…:pull,push`, `…:delete`) as distribution does.
fn challenge(headers: &HeaderMap, why: &str, scope: Option<&str>) -> Response {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("127.0.0.1");
    let mut r = unauthorized(why).into_response();
    let scope = scope.map(|s| format!(",scope=\"{s}\"")).unwrap_or_default();
    set(
        &mut r,
        "WWW-Authenticate",
        format!("Bearer realm=\"http://{host}/token\",service=\"strata\"{scope}"),
    );
    r
}

async fn token(State(sh): State<Shared>, headers: HeaderMap) -> Response {
    let presented = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let who = match presented {
        None => None,
        Some(p) => match sh.access.credentials.check_role(Some(p)) {
            Some(who) => Some(who),
            None => return unauthorized("the credential is not valid").into_response(),
        },
    };
    if who.is_none() && sh.access.pull_auth {
        return unauthorized("pulling needs a credential").into_response();
    }
    let t = format!(
        "sts_{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    {
        let mut map = sh.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        if map.len() >= MAX_SESSIONS {
            map.retain(|_, (_, until)| *until > now);
        }
        if map.len() < MAX_SESSIONS {
            map.insert(t.clone(), (who, now + SESSION_TTL));
        }
    }
    let issued_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    // distribution's answer: both token names, seconds to live, and when.
    let body = serde_json::json!({
        "token": t,
        "access_token": t,
        "expires_in": SESSION_TTL.as_secs(),
        "issued_at": crate::oci::rfc3339(issued_at),
    });
    let mut r = (StatusCode::OK, body.to_string()).into_response();
    set(&mut r, "Content-Type", "application/json");
    r
}

/// Who the request's `Authorization` proves: a token from the credentials
/// file (Bearer or Basic) or a live session token from `/token`, which is
/// anonymous when it was fetched without a credential.
enum Caller {
    /// No credential, an invalid one, or an expired session.
    Nobody,
    Anonymous,
    Token(String, Role),
}

fn caller(sh: &Shared, headers: &HeaderMap) -> Caller {
    let presented = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if let Some((name, role)) = sh.access.credentials.check_role(presented) {
        return Caller::Token(name, role);
    }
    let Some(t) = presented.and_then(|p| p.strip_prefix("Bearer ")) else {
        return Caller::Nobody;
    };
    let map = sh.sessions.lock().unwrap_or_else(|e| e.into_inner());
    match map.get(t.trim()) {
        Some((who, until)) if *until > std::time::Instant::now() => match who {
            Some((name, role)) => Caller::Token(name.clone(), *role),
            None => Caller::Anonymous,
        },
        _ => Caller::Nobody,
    }
}

/// Whether the request's `Authorization` proves a right to read (or, with
/// `write`, to push; anonymous sessions may only read).
fn proves(sh: &Shared, headers: &HeaderMap, write: bool) -> bool {
    match caller(sh, headers) {
        Caller::Nobody => false,
        Caller::Anonymous => !write,
        Caller::Token(_, role) => !write || role >= Role::Deploy,
    }
}

fn authorize(sh: &Shared, headers: &HeaderMap, write: bool, scope: Option<&str>) -> Result<(), Response> {
    let access = &sh.access;
    let needed = if write {
        !access.open_push
    } else {
        access.pull_auth
    };
    if !needed {
        return Ok(());
    }
    if proves(sh, headers, write) {
        return Ok(());
    }
    if let Caller::Token(name, role) = caller(sh, headers) {
        // A valid credential without the right: authenticating again
        // cannot help, so no challenge.
        let why = format!("token {name} has role {role}; pushing needs {}", Role::Deploy);
        return Err(ApiError(StatusCode::FORBIDDEN, "DENIED", why).into_response());
    }
    let why = if write {
        "pushing needs a credential (strata token create)"
    } else {
        "pulling needs a credential"
    };
    Err(challenge(headers, why, scope))
}

/// The API root. When the server has credentials it challenges clients
/// that bring none, so they fetch a token: anonymous clients get one that
/// can pull, clients with a credential one that can push.
async fn base(State(sh): State<Shared>, headers: HeaderMap) -> Response {
    let has_auth = headers.contains_key(header::AUTHORIZATION);
    let guarded = !sh.access.credentials.is_empty() || sh.access.pull_auth;
    if guarded && !has_auth {
        return challenge(&headers, "authentication required", None);
    }
    if has_auth && guarded && !proves(&sh, &headers, false) {
        return challenge(&headers, "the credential is not valid", None);
    }
    StatusCode::OK.into_response()
}

/// An error in the spec's JSON shape, with its HTTP status.
struct ApiError(StatusCode, &'static str, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "errors": [{ "code": self.1, "message": self.2 }] });
        let mut r = (self.0, body.to_string()).into_response();
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if self.0 == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the body was not read: the connection cannot be
            // reused, so tell the client not to try.
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        r
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> ApiError {
        use RegistryError as E;
        let (status, code) = match &e {
            E::NameInvalid(_) => (StatusCode::BAD_REQUEST, "NAME_INVALID"),
            E::NameUnknown(_) => (StatusCode::NOT_FOUND, "NAME_UNKNOWN"),
            E::TagInvalid(_) => (StatusCode::BAD_REQUEST, "TAG_INVALID"),
            E::ManifestUnknown(_) => (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"),
            E::BlobUnknown(_) | E::Store(crate::store::StoreError::NotFound(_)) => {
                (StatusCode::NOT_FOUND, "BLOB_UNKNOWN")
            }
            E::UploadUnknown(_) => (StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN"),
            E::DigestInvalid(_) | E::DigestMismatch { .. } => (StatusCode::BAD_REQUEST, "DIGEST_INVALID"),
            E::ManifestInvalid(_) => (StatusCode::BAD_REQUEST, "MANIFEST_INVALID"),
            E::ManifestBlobUnknown(_) | E::ForeignLayerRefused(_) => {
                (StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN")
            }
            E::ManifestTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "SIZE_INVALID"),
            E::BlobTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "SIZE_INVALID"),
            E::RangeInvalid { .. } | E::UploadBusy(_) | E::ContentRangeInvalid(_) => {
                (StatusCode::RANGE_NOT_SATISFIABLE, "BLOB_UPLOAD_INVALID")
            }
            E::ContentRangeLength { .. } => (StatusCode::BAD_REQUEST, "SIZE_INVALID"),
            _ if e.disk_full() => (StatusCode::INSUFFICIENT_STORAGE, "UNKNOWN"),
            E::Bind { .. } | E::Io { .. } | E::Tls { .. } | E::Store(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN")
            }
        };
        if e.disk_full() {
            tracing::error!("registry: {e}");
            let why = format!("the registry's disk is full; nothing was stored ({e})");
            return ApiError(status, code, why);
        }
        if status.is_server_error() {
            tracing::error!("registry: {e}");
        }
        ApiError(status, code, e.to_string())
    }
}

type Reply = Result<Response, ApiError>;

/// Which endpoint a `/v2/...` path names.
#[derive(Clone, Copy)]
pub(super) enum Route<'a> {
    Blob(&'a str, &'a str),
    Uploads(&'a str),
    Upload(&'a str, &'a str),
    Manifest(&'a str, &'a str),
    Tags(&'a str),
    Referrers(&'a str, &'a str),
}

impl<'a> Route<'a> {
    /// The repository the endpoint belongs to.
    fn repository(self) -> &'a str {
        match self {
            Route::Blob(n, _)
            | Route::Uploads(n)
            | Route::Upload(n, _)
            | Route::Manifest(n, _)
            | Route::Tags(n)
            | Route::Referrers(n, _) => n,
        }
    }
}

pub(super) fn route(rest: &str) -> Option<Route<'_>> {
    if let Some(i) = rest.rfind("/referrers/") {
        return Some(Route::Referrers(&rest[..i], &rest[i + 11..]));
    }
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Some(Route::Tags(name));
    }
    if let Some(name) = rest
        .strip_suffix("/blobs/uploads/")
        .or_else(|| rest.strip_suffix("/blobs/uploads"))
    {
        return Some(Route::Uploads(name));
    }
    if let Some(i) = rest.rfind("/blobs/uploads/") {
        return Some(Route::Upload(&rest[..i], &rest[i + 15..]));
    }
    if let Some(i) = rest.rfind("/blobs/") {
        return Some(Route::Blob(&rest[..i], &rest[i + 7..]));
    }
    if let Some(i) = rest.rfind("/manifests/") {
        return Some(Route::Manifest(&rest[..i], &rest[i + 11..]));
    }
    None
}

/// For fuzzing: the endpoint `/v2/{rest}` names, through the router's own
/// [`route`], as (endpoint, repository, reference: digest, tag or upload
/// id; empty when the endpoint has none). None: no endpoint.
pub fn route_parts(rest: &str) -> Option<(&'static str, &str, &str)> {
    Some(match route(rest)? {
        Route::Blob(n, d) => ("blob", n, d),
        Route::Uploads(n) => ("uploads", n, ""),
        Route::Upload(n, id) => ("upload", n, id),
        Route::Manifest(n, r) => ("manifest", n, r),
        Route::Tags(n) => ("tags", n, ""),
        Route::Referrers(n, d) => ("referrers", n, d),
    })
}

/// For fuzzing: a `Range` header's raw value against a blob of `size`
/// bytes, through [`parse_range`]. None: no usable header (not a valid
/// header value, or not a range the registry serves partially).
pub fn range_value(value: &[u8], size: u64) -> Option<Result<(u64, u64), ()>> {
    let mut h = HeaderMap::new();
    h.insert(header::RANGE, HeaderValue::from_bytes(value).ok()?);
    parse_range(&h, size)
}

/// Serves one `/v2/...` request and records its latency by operation.
async fn dispatch(
    State(sh): State<Shared>,
    Path(rest): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    req: Request,
) -> Response {
    use crate::metrics::RegistryOp;
    let started = std::time::Instant::now();
    let r = route(&rest);
    let op = match (r, req.method()) {
        (Some(Route::Blob(..)), &Method::GET | &Method::HEAD) => RegistryOp::BlobGet,
        (Some(Route::Uploads(_) | Route::Upload(..)), &Method::POST | &Method::PATCH | &Method::PUT) => {
            RegistryOp::BlobUpload
        }
        (Some(Route::Manifest(..)), &Method::GET | &Method::HEAD) => RegistryOp::ManifestGet,
        (Some(Route::Manifest(..)), &Method::PUT) => RegistryOp::ManifestPut,
        _ => RegistryOp::Other,
    };
    let response = serve(sh, &rest, r, q, req).await.into_response();
    crate::metrics::registry_request(op, started.elapsed(), response.status().as_u16());
    response
}

/// Serves the request for endpoint `r` (None: `rest` names none).
async fn serve(
    sh: Shared,
    rest: &str,
    r: Option<Route<'_>>,
    q: HashMap<String, String>,
    req: Request,
) -> Reply {
    let method = req.method().clone();
    let write = !matches!(method, Method::GET | Method::HEAD);
    let actions = match method {
        Method::GET | Method::HEAD => "pull",
        Method::DELETE => "delete",
        _ => "pull,push",
    };
    let scope = r.map(|r| format!("repository:{}:{actions}", r.repository()));
    if let Err(r) = authorize(&sh, req.headers(), write, scope.as_deref()) {
        return Ok(r);
    }
    let reg = sh.reg;
    let Some(r) = r else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("no endpoint /v2/{rest}"),
        ));
    };
    match (r, &method) {
        (Route::Blob(name, d), &Method::GET | &Method::HEAD) => {
            get_blob(&reg, name, d, req.headers(), method == Method::HEAD).await
        }
        (Route::Uploads(name), &Method::POST) => uploads::start(&reg, name, &q, req).await,
        (Route::Upload(name, id), &Method::PATCH) => uploads::patch(&reg, name, id, req).await,
        (Route::Upload(name, id), &Method::PUT) => uploads::put(&reg, name, id, &q, req).await,
        (Route::Upload(name, id), &Method::GET) => uploads::status(&reg, name, id),
        (Route::Upload(name, id), &Method::DELETE) => uploads::cancel(&reg, name, id),
        (Route::Manifest(name, r), &Method::GET | &Method::HEAD) => {
            get_manifest(&reg, name, r, method == Method::HEAD)
        }
        (Route::Manifest(name, r), &Method::PUT) => put_manifest(&reg, name, r, req).await,
        (Route::Tags(name), &Method::GET) => tags(&reg, name, &q),
        (Route::Referrers(name, d), &Method::GET) => {
            let subject = parse_digest(d)?;
            let filter = q.get("artifactType").map(String::as_str);
            let list = reg.referrers(name, &subject, filter)?;
            let body = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": crate::oci::MEDIA_INDEX,
                "manifests": list,
            });
            let mut r = (StatusCode::OK, body.to_string()).into_response();
            set(&mut r, "Content-Type", crate::oci::MEDIA_INDEX);
            if filter.is_some() {
                set(&mut r, "OCI-Filters-Applied", "artifactType");
            }
            Ok(r)
        }
        (Route::Manifest(name, r), &Method::DELETE) if sh.access.allow_delete => {
            tokio::task::block_in_place(|| reg.delete_manifest(name, r))?;
            Ok(StatusCode::ACCEPTED.into_response())
        }
        (Route::Blob(name, d), &Method::DELETE) if sh.access.allow_delete => {
            let digest = parse_digest(d)?;
            tokio::task::block_in_place(|| reg.delete_blob(name, &digest))?;
            Ok(StatusCode::ACCEPTED.into_response())
        }
        (_, m) => Err(ApiError(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            format!("{m} is not supported on /v2/{rest}"),
        )),
    }
}

fn parse_digest(s: &str) -> Result<Digest, ApiError> {
    s.parse()
        .map_err(|_| ApiError::from(RegistryError::DigestInvalid(s.to_string())))
}

fn set(r: &mut Response, name: &'static str, value: impl AsRef<str>) {
    if let Ok(v) = HeaderValue::from_str(value.as_ref()) {
        r.headers_mut().insert(name, v);
    }
}

/// A request's `Range` against a blob of `size` bytes: `None` without one
/// (or in a unit other than bytes, which is ignored); else the inclusive
/// range `bytes=START-END`, `bytes=START-` or `bytes=-SUFFIX` (the last
/// SUFFIX bytes) names, or `Err` when it is malformed, has several ranges
/// or none of it lies within the blob (416).
fn parse_range(h: &HeaderMap, size: u64) -> Option<Result<(u64, u64), ()>> {
    let v = h.get(header::RANGE)?;
    let v = String::from_utf8_lossy(v.as_bytes());
    let v = v.trim();
    if !v.to_ascii_lowercase().starts_with("bytes=") {
        // Another unit is ignored (RFC 9110); a header that is no range
        // at all is refused.
        return if v.contains('=') { None } else { Some(Err(())) };
    }
    Some(byte_range(&v[6..], size))
}

fn byte_range(spec: &str, size: u64) -> Result<(u64, u64), ()> {
    let number = |s: &str| -> Result<u64, ()> {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            return Err(());
        }
        s.parse().map_err(|_| ())
    };
    let (a, b) = spec.split_once('-').ok_or(())?;
    if a.trim().is_empty() {
        let suffix = number(b)?;
        if suffix == 0 || size == 0 {
            return Err(());
        }
        return Ok((size.saturating_sub(suffix), size - 1));
    }
    let start = number(a)?;
    let end = if b.trim().is_empty() { u64::MAX } else { number(b)? };
    if start > end || start >= size {
        return Err(());
    }
    Ok((start, end.min(size - 1)))
}

/// The bytes of a blob GET's answer, put into the response's extensions
/// beside the streaming body, so that a plain HTTP/1.1 connection can send
/// them from the file to the socket ([`super::direct`]) instead of
/// polling the body.
#[derive(Clone)]
pub(super) struct BlobFile {
    pub file: Arc<std::fs::File>,
    pub start: u64,
    pub len: u64,
}

/// `len` bytes of `file` from `start`, read in [`BLOB_CHUNK`] pieces on
/// the blocking pool. Nothing is read until the body is polled (a
/// response sent with sendfile never is); a file shorter than promised
/// ends the body with an error, so hyper cuts the response short rather
/// than pad it.
fn file_stream(
    file: Arc<std::fs::File>,
    start: u64,
    len: u64,
) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> {
    futures_util::stream::try_unfold((file, start, len), |(file, off, left)| async move {
        if left == 0 {
            return Ok(None);
        }
        let n = left.min(BLOB_CHUNK as u64) as usize;
        let (file, buf) = tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt;
            let mut buf = vec![0; n];
            file.read_exact_at(&mut buf, off).map(|()| (file, buf))
        })
        .await
        .map_err(std::io::Error::other)??;
        Ok(Some((
            bytes::Bytes::from(buf),
            (file, off + n as u64, left - n as u64),
        )))
    })
}

async fn get_blob(reg: &Registry, name: &str, d: &str, h: &HeaderMap, head: bool) -> Reply {
    let digest = parse_digest(d)?;
    let size = reg.blob_size(name, &digest)?;
    let path = reg.store().blob_path(&digest);
    let (status, start, len) = match parse_range(h, size) {
        Some(Ok((s, e))) => (StatusCode::PARTIAL_CONTENT, s, e - s + 1),
        Some(Err(())) => {
            let mut r = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            set(&mut r, "Content-Range", format!("bytes */{size}"));
            return Ok(r);
        }
        None => (StatusCode::OK, 0, size),
    };
    let mut r = if head {
        (status, Body::empty()).into_response()
    } else {
        let file = std::fs::File::open(&path).map_err(|_| RegistryError::BlobUnknown(digest.clone()))?;
        let file = Arc::new(file);
        let body = Body::from_stream(file_stream(file.clone(), start, len));
        let mut r = (status, body).into_response();
        r.extensions_mut().insert(BlobFile { file, start, len });
        r
    };
    set(&mut r, "Content-Length", len.to_string());
    set(&mut r, "Content-Type", "application/octet-stream");
    set(&mut r, "Docker-Content-Digest", digest.to_string());
    // The content never changes under its digest (distribution answers
    // the same ETag).
    set(&mut r, "ETag", format!("\"{digest}\""));
    set(&mut r, "Accept-Ranges", "bytes");
    if status == StatusCode::PARTIAL_CONTENT {
        set(
            &mut r,
            "Content-Range",
            format!("bytes {start}-{}/{size}", start + len - 1),
        );
    }
    Ok(r)
}

fn get_manifest(reg: &Registry, name: &str, reference: &str, head: bool) -> Reply {
    let (d, bytes, media) = reg.manifest(name, reference)?;
    let len = bytes.len();
    let mut r = if head { Body::empty() } else { Body::from(bytes) }.into_response();
    set(&mut r, "Content-Type", media);
    set(&mut r, "Content-Length", len.to_string());
    set(&mut r, "Docker-Content-Digest", d.to_string());
    Ok(r)
}

/// Every value of `key` in a query string, in order (`?tag=a&tag=b`).
fn query_all(query: Option<&str>, key: &str) -> Vec<String> {
    query
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| *k == key)
        .map(|(_, v)| v.to_string())
        .collect()
}

/// `PUT …/manifests/REFERENCE[?tag=T…]`: stores the manifest, tags it
/// (one `OCI-Tag` header per `tag` in the answer) and answers its digest
/// in the algorithm it was pushed with.
async fn put_manifest(reg: &Registry, name: &str, reference: &str, req: Request) -> Reply {
    let tags = query_all(req.uri().query(), "tag");
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.split(';').next().unwrap_or(s).trim().to_string());
    let bytes = axum::body::to_bytes(req.into_body(), MAX_MANIFEST)
        .await
        .map_err(|_| ApiError::from(RegistryError::ManifestTooLarge))?;
    let put =
        tokio::task::block_in_place(|| reg.put_manifest(name, reference, &bytes, ct.as_deref(), &tags))?;
    let d = put.digest;
    let mut r = StatusCode::CREATED.into_response();
    set(&mut r, "Location", format!("/v2/{name}/manifests/{d}"));
    set(&mut r, "Docker-Content-Digest", d.to_string());
    if let Some(sub) = put.subject {
        set(&mut r, "OCI-Subject", sub.to_string());
    }
    for t in &tags {
        if let Ok(v) = HeaderValue::from_str(t) {
            r.headers_mut().append("OCI-Tag", v);
        }
    }
    set(&mut r, "Content-Length", "0");
    Ok(r)
}

fn tags(reg: &Registry, name: &str, q: &HashMap<String, String>) -> Reply {
    let n = q.get("n").and_then(|v| v.parse().ok());
    let list = reg.tags(name, n, q.get("last").map(String::as_str))?;
    let more = n.is_some_and(|n| list.len() == n && n > 0);
    let body = serde_json::json!({ "name": name, "tags": list });
    let mut r = (StatusCode::OK, body.to_string()).into_response();
    set(&mut r, "Content-Type", "application/json");
    if let (true, Some(last), Some(n)) = (more, list.last(), n) {
        set(
            &mut r,
            "Link",
            format!("</v2/{name}/tags/list?n={n}&last={last}>; rel=\"next\""),
        );
    }
    Ok(r)
}
