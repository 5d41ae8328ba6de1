//! Blob upload endpoints: `POST …/blobs/uploads/` (monolithic or a new
//! session, or a mount, with or without `from`), `PATCH`, `PUT`, `GET` and
//! `DELETE` (cancel: the session and its bytes are gone) of a session.
//!
//! Every request on a session holds its [`UploadLock`], so chunks never
//! interleave; a chunk whose `Content-Range` is malformed, out of order or
//! longer or shorter than the body is refused and leaves the session as it
//! was.

use std::collections::HashMap;
use std::io::Write;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;

use super::{ApiError, Reply, parse_digest, set};
use crate::digest::Digest;
use crate::registry::state::{Registry, RegistryError};
use crate::registry::uploads::{Hashing, UploadLock, UploadWriter};

/// A chunk's `Content-Range`: `START-END`, END included (the spec's form;
/// `bytes START-END` and `bytes=START-END` are accepted too). `None`: no
/// header (a streamed chunk, taken at the session's end).
fn content_range(h: &HeaderMap) -> Result<Option<(u64, u64)>, RegistryError> {
    let Some(v) = h.get(header::CONTENT_RANGE) else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(v.as_bytes()).into_owned();
    let bad = || RegistryError::ContentRangeInvalid(text.clone());
    let spec = text.trim();
    let spec = spec
        .strip_prefix("bytes ")
        .or_else(|| spec.strip_prefix("bytes="))
        .unwrap_or(spec);
    let (a, b) = spec.split_once('-').ok_or_else(bad)?;
    let digits = |s: &str| -> Result<u64, RegistryError> {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        s.parse().map_err(|_| bad())
    };
    let (start, end) = (digits(a)?, digits(b)?);
    if start > end {
        return Err(bad());
    }
    Ok(Some((start, end)))
}

/// For fuzzing: a `Content-Range` header's raw value through
/// [`content_range`]. None: not a valid header value (hyper refuses it
/// before the registry sees it).
pub fn content_range_value(value: &[u8]) -> Option<Result<(u64, u64), RegistryError>> {
    let mut h = HeaderMap::new();
    h.insert(header::CONTENT_RANGE, HeaderValue::from_bytes(value).ok()?);
    content_range(&h).transpose()
}

/// The request's `Content-Length`, when it sent one.
fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

/// Appends a request body to the locked session. On any failure the
/// session is left as it was before the request, or removed when it cannot
/// go on (too large, disk full).
async fn receive(
    reg: &Registry,
    lock: &UploadLock<'_>,
    headers: &HeaderMap,
    body: Body,
    hashing: Hashing,
) -> Result<(), ApiError> {
    let range = content_range(headers)?;
    if let (Some((start, end)), Some(got)) = (range, content_length(headers))
        && got != end - start + 1
    {
        return Err(RegistryError::ContentRangeLength { start, end, got }.into());
    }
    let have = lock.size()?;
    // Inline hashing may first wait for (and finish) a catch-up.
    let mut file = tokio::task::block_in_place(|| lock.append(range.map(|r| r.0), hashing))?;
    match pump(reg, have, range, body, &mut file).await {
        Ok(()) => tokio::task::block_in_place(|| file.close()).map_err(|source| {
            let e = io(lock, source);
            if e.disk_full() {
                lock.remove();
            }
            ApiError::from(e)
        }),
        Err((e, keep)) => {
            if keep {
                if let Err(source) = tokio::task::block_in_place(|| file.abort()) {
                    tracing::warn!("registry: {}", io(lock, source));
                }
            } else {
                // Nothing of this request is kept; the session is dropped
                // and its bytes freed for others.
                drop(file);
                lock.remove();
            }
            Err(e)
        }
    }
}

fn io(lock: &UploadLock<'_>, source: std::io::Error) -> RegistryError {
    RegistryError::Io {
        path: format!("uploads/{}", lock.id()).into(),
        source,
    }
}

/// Most body bytes one upload gathers before writing them (when more
/// arrive at once than this).
const WRITE_BATCH: usize = 256 << 10;

/// Streams `body` into `file`; an error says whether the session may go on.
///
/// Memory per upload stays bounded: frames are written in batches of at
/// most [`WRITE_BATCH`], and whatever has arrived is written before the
/// upload waits for more, so an upload whose client is slow (or whose
/// turn has not come, among a thousand) holds no body bytes while it
/// waits.
async fn pump(
    reg: &Registry,
    have: u64,
    range: Option<(u64, u64)>,
    body: Body,
    file: &mut UploadWriter<'_, '_>,
) -> Result<(), (ApiError, bool)> {
    use futures_util::FutureExt;
    let mut stream = body.into_data_stream();
    // Frames are small (curl sends 64 KiB); leave the async worker for the
    // blocking write and hash once per batch, not once per frame.
    let mut pending: Vec<bytes::Bytes> = Vec::new();
    let mut pending_len = 0usize;
    let mut got = 0u64;
    let wrong_length = |start, end, got| {
        let e = RegistryError::ContentRangeLength { start, end, got };
        (ApiError::from(e), true)
    };
    let write = |pending: &mut Vec<bytes::Bytes>, file: &mut UploadWriter<'_, '_>| {
        let written = tokio::task::block_in_place(|| pending.iter().try_for_each(|c| file.write_all(c)));
        pending.clear();
        written.map_err(|source| {
            let e = RegistryError::Io {
                path: "uploads".into(),
                source,
            };
            let keep = !e.disk_full();
            (ApiError::from(e), keep)
        })
    };
    loop {
        let next = match stream.next().now_or_never() {
            Some(next) => next,
            None => {
                // Nothing more has arrived: write what has before waiting.
                if pending_len > 0 {
                    write(&mut pending, file)?;
                    pending_len = 0;
                }
                stream.next().await
            }
        };
        let done = next.is_none();
        if let Some(chunk) = next {
            let chunk = chunk.map_err(|e| {
                (
                    ApiError(StatusCode::BAD_REQUEST, "BLOB_UPLOAD_INVALID", e.to_string()),
                    true,
                )
            })?;
            got += chunk.len() as u64;
            pending_len += chunk.len();
            pending.push(chunk);
            if let Some((start, end)) = range
                && got > end - start + 1
            {
                return Err(wrong_length(start, end, got));
            }
            if have + got > reg.max_blob() {
                return Err((RegistryError::BlobTooLarge { max: reg.max_blob() }.into(), false));
            }
        }
        if pending_len >= WRITE_BATCH || (done && pending_len > 0) {
            write(&mut pending, file)?;
            pending_len = 0;
        }
        if done {
            break;
        }
    }
    match range {
        Some((start, end)) if got != end - start + 1 => Err(wrong_length(start, end, got)),
        _ => Ok(()),
    }
}

fn upload_status(name: &str, id: &str, size: u64, status: StatusCode) -> Reply {
    let mut r = status.into_response();
    set(&mut r, "Location", format!("/v2/{name}/blobs/uploads/{id}"));
    set(&mut r, "Range", format!("0-{}", size.saturating_sub(1)));
    set(&mut r, "Docker-Upload-UUID", id);
    set(&mut r, "Content-Length", "0");
    Ok(r)
}

fn blob_created(name: &str, d: &Digest) -> Response {
    let mut r = StatusCode::CREATED.into_response();
    set(&mut r, "Location", format!("/v2/{name}/blobs/{d}"));
    set(&mut r, "Docker-Content-Digest", d.to_string());
    set(&mut r, "Content-Length", "0");
    r
}

/// `POST /v2/NAME/blobs/uploads/`: a mount, a monolithic upload
/// (`?digest=`) or a new session. A refused request creates no session.
pub(super) async fn start(reg: &Registry, name: &str, q: &HashMap<String, String>, req: Request) -> Reply {
    if let Some(mount) = q.get("mount") {
        // From `from` when it holds the blob, else (no `from`) from any
        // repository that does: whoever may push here may read them all.
        // Otherwise a new session, as the spec asks.
        let d = parse_digest(mount)?;
        let found = tokio::task::block_in_place(|| match q.get("from") {
            Some(from) => reg.repo_has_blob(from, &d),
            None => reg.repo_holding_blob(&d).is_some(),
        });
        if found {
            reg.link_blob(name, &d)?;
            return Ok(blob_created(name, &d));
        }
    }
    let digest = q.get("digest").map(|d| parse_digest(d)).transpose()?;
    let id = tokio::task::block_in_place(|| reg.start_upload(name))?;
    let Some(digest) = digest else {
        return upload_status(name, &id, 0, StatusCode::ACCEPTED);
    };
    let lock = reg.lock_upload(name, &id)?;
    // Only this request knows the session: whatever ends it early (an
    // error, a dropped connection) removes it.
    lock.discard_unless_finished();
    let (parts, body) = req.into_parts();
    receive(reg, &lock, &parts.headers, body, Hashing::Inline).await?;
    tokio::task::block_in_place(|| lock.finish(name, &digest))?;
    Ok(blob_created(name, &digest))
}

/// `PATCH`: one chunk, answered once written; it is hashed while the
/// client sends the next.
pub(super) async fn patch(reg: &Registry, name: &str, id: &str, req: Request) -> Reply {
    let lock = reg.lock_upload(name, id)?;
    let (parts, body) = req.into_parts();
    receive(reg, &lock, &parts.headers, body, Hashing::Behind).await?;
    upload_status(name, id, lock.size()?, StatusCode::ACCEPTED)
}

/// `PUT ?digest=`: the last chunk (maybe empty), then the blob is stored.
pub(super) async fn put(
    reg: &Registry,
    name: &str,
    id: &str,
    q: &HashMap<String, String>,
    req: Request,
) -> Reply {
    let digest = parse_digest(q.get("digest").map(String::as_str).unwrap_or(""))?;
    let lock = reg.lock_upload(name, id)?;
    let (parts, body) = req.into_parts();
    receive(reg, &lock, &parts.headers, body, Hashing::Inline).await?;
    tokio::task::block_in_place(|| lock.finish(name, &digest))?;
    Ok(blob_created(name, &digest))
}

/// `GET`: how far the session is.
pub(super) fn status(reg: &Registry, name: &str, id: &str) -> Reply {
    let size = reg.upload_size(name, id)?;
    upload_status(name, id, size, StatusCode::NO_CONTENT)
}

/// `DELETE`: cancels the session.
pub(super) fn cancel(reg: &Registry, name: &str, id: &str) -> Reply {
    reg.lock_upload(name, id)?.remove();
    Ok(StatusCode::NO_CONTENT.into_response())
}
