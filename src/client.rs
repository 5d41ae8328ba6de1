//! A distribution-spec client: `strata push` and `strata pull` against any
//! OCI registry (strata's own, Docker's distribution, others).
//!
//! Blobs stream from and into the content store, hashed on the way and
//! never held whole in memory. A push asks the registry first (HEAD) and
//! mounts from a sibling repository when it can, so only missing bytes
//! travel; large blobs go in chunks that resume from the registry's own
//! count after a dropped connection or a registry restart. Transient
//! failures (connection errors, 429, 5xx) are retried with backoff; the
//! Docker token flow and Basic auth are answered from the challenge.

mod auth;
mod reference;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::blocking::{Client as Http, RequestBuilder, Response};
use reqwest::header::{self, HeaderMap};

pub use self::auth::Credential;
pub use self::reference::{BadReference, Reference};
use crate::digest::Digest;
use crate::oci::{Descriptor, Index, MEDIA_DOCKER_LIST, MEDIA_INDEX, Manifest};
use crate::store::{Store, StoreError};

/// Manifests larger than this are refused (the registry side has the same limit).
const MAX_MANIFEST: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    BadReference(#[from] BadReference),
    #[error("{method} {url}: {reason}")]
    Http {
        method: &'static str,
        url: String,
        reason: String,
    },
    #[error("{method} {url}: the registry answered {status}{}", detail(.code, .message))]
    Status {
        method: &'static str,
        url: String,
        status: u16,
        code: String,
        message: String,
    },
    #[error("{url}: the registry refused the credential{}: {message} (pass --user NAME:TOKEN or --token, or set STRATA_REGISTRY_AUTH)", if *.had_credential { "" } else { " (none was given)" })]
    Unauthorized {
        url: String,
        had_credential: bool,
        message: String,
    },
    #[error("{url}: the registry denied it: {message}")]
    Denied { url: String, message: String },
    #[error("{what} {expected}: the registry sent bytes with digest {actual}; nothing was stored")]
    DigestMismatch {
        what: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("{reference} has no image for {platform} (it has: {available})")]
    NoPlatform {
        reference: String,
        platform: String,
        available: String,
    },
    #[error("{reference}: {why}")]
    BadManifest { reference: String, why: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn detail(code: &str, message: &str) -> String {
    match (code.is_empty(), message.is_empty()) {
        (true, true) => String::new(),
        (false, true) => format!(" {code}"),
        (true, false) => format!(": {message}"),
        (false, false) => format!(" {code}: {message}"),
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// How a client talks to one registry.
#[derive(Debug, Clone)]
pub struct Options {
    /// Speak plain HTTP. `None`: plain HTTP for loopback registries only.
    pub plain_http: Option<bool>,
    /// Accept a TLS certificate that does not verify (self-signed test registries).
    pub insecure_tls: bool,
    pub credential: Option<Credential>,
    /// Blobs larger than this are uploaded in PATCHes of this size.
    pub chunk_size: u64,
    /// Tries per request (and per chunk) before giving up.
    pub attempts: u32,
    /// Blobs in flight at once.
    pub jobs: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            plain_http: None,
            insecure_tls: false,
            credential: None,
            chunk_size: 32 << 20,
            attempts: 5,
            jobs: 3,
        }
    }
}

/// What happened to one blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobOutcome {
    /// The registry (or the local store, on pull) had it already.
    Present,
    /// Linked from another repository of the same registry.
    Mounted(String),
    /// Bytes travelled.
    Transferred,
}

/// Progress reports, in order per blob.
#[derive(Debug, Clone)]
pub enum Event {
    /// Bytes moved so far for a blob being transferred.
    Bytes { digest: Digest, done: u64, total: u64 },
    /// A blob is settled.
    Blob {
        digest: Digest,
        /// `config` or `layer`.
        role: &'static str,
        size: u64,
        outcome: BlobOutcome,
        elapsed: Duration,
    },
    /// A transient failure that will be retried.
    Retry {
        what: String,
        attempt: u32,
        reason: String,
    },
}

/// The result of a push or pull.
#[derive(Debug, Clone)]
pub struct Report {
    pub manifest: Descriptor,
    pub blobs: Vec<(Digest, u64, BlobOutcome)>,
}

impl Report {
    fn new(manifest: Descriptor, blobs: &[(&'static str, Descriptor)], outcomes: Vec<BlobOutcome>) -> Report {
        Report {
            manifest,
            blobs: blobs
                .iter()
                .zip(outcomes)
                .map(|((_, d), o)| (d.digest.clone(), d.size, o))
                .collect(),
        }
    }

    /// Bytes that travelled over the network.
    pub fn transferred(&self) -> u64 {
        self.blobs
            .iter()
            .filter(|b| b.2 == BlobOutcome::Transferred)
            .map(|b| b.1)
            .sum()
    }

    pub fn count(&self, f: impl Fn(&BlobOutcome) -> bool) -> usize {
        self.blobs.iter().filter(|b| f(&b.2)).count()
    }
}

/// A client for one registry.
pub struct Client {
    http: Http,
    base: String,
    registry: String,
    options: Options,
    auth: auth::Auth,
}

/// The request method, for messages.
fn method_name(m: &reqwest::Method) -> &'static str {
    match *m {
        reqwest::Method::GET => "GET",
        reqwest::Method::HEAD => "HEAD",
        reqwest::Method::POST => "POST",
        reqwest::Method::PUT => "PUT",
        reqwest::Method::PATCH => "PATCH",
        reqwest::Method::DELETE => "DELETE",
        _ => "request",
    }
}

fn transient(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 429 | 500 | 502 | 503 | 504)
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(200u64 << attempt.min(5)).min(Duration::from_secs(5))
}

/// One request's recipe: it can be built again for a retry.
struct Req<'a> {
    method: reqwest::Method,
    url: String,
    /// Token scopes this request needs.
    scopes: &'a [String],
    build: &'a dyn Fn(RequestBuilder) -> RequestBuilder,
    /// Retry transport errors and 5xx (false for requests that are not
    /// safe to repeat blindly, such as a PATCH).
    retry: bool,
}

impl Client {
    /// A client for the registry `reference` names.
    pub fn new(reference: &Reference, options: Options) -> Result<Client> {
        let plain = options.plain_http.unwrap_or_else(|| reference.is_loopback());
        let base = format!(
            "{}://{}",
            if plain { "http" } else { "https" },
            reference.registry
        );
        let http = Http::builder()
            .connect_timeout(Duration::from_secs(20))
            .timeout(None)
            .pool_max_idle_per_host(options.jobs.max(1) * 2)
            .tls_danger_accept_invalid_certs(options.insecure_tls)
            .user_agent(concat!("strata/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Http {
                method: "client",
                url: base.clone(),
                reason: e.to_string(),
            })?;
        Ok(Client {
            auth: auth::Auth::new(options.credential.clone()),
            http,
            base,
            registry: reference.registry.clone(),
            options,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Resolves a `Location` header against the registry's base URL.
    fn location(&self, r: &Response, url: &str) -> Result<String> {
        let loc = r
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| ClientError::Http {
                method: "POST",
                url: url.to_string(),
                reason: "the registry sent no Location for the upload".into(),
            })?;
        Ok(if loc.starts_with("http://") || loc.starts_with("https://") {
            loc.to_string()
        } else if loc.starts_with('/') {
            self.url(loc)
        } else {
            format!("{}/{loc}", self.base)
        })
    }

    /// Sends a request: attaches credentials, answers an auth challenge
    /// once, retries transient failures with backoff.
    fn send(&self, req: &Req<'_>, events: &dyn Fn(Event)) -> Result<Response> {
        let attempts = if req.retry {
            self.options.attempts.max(1)
        } else {
            1
        };
        let mut challenged = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut b = (req.build)(self.http.request(req.method.clone(), &req.url));
            if let Some(v) = self.auth.header(req.scopes) {
                b = b.header(header::AUTHORIZATION, v);
            }
            let failure = match b.send() {
                Ok(r) if r.status() == StatusCode::UNAUTHORIZED && !challenged => {
                    challenged = true;
                    attempt -= 1;
                    let challenge = r
                        .headers()
                        .get(header::WWW_AUTHENTICATE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    self.auth
                        .answer(&self.http, &challenge, req.scopes)
                        .map_err(|reason| ClientError::Unauthorized {
                            url: req.url.clone(),
                            had_credential: self.options.credential.is_some(),
                            message: reason,
                        })?;
                    continue;
                }
                Ok(r) if r.status() == StatusCode::FORBIDDEN => {
                    // Authenticated, but without the right: another try
                    // with the same credential cannot help.
                    let (code, message) = error_body(r);
                    let message = if message.is_empty() { code } else { message };
                    return Err(ClientError::Denied {
                        url: req.url.clone(),
                        message,
                    });
                }
                Ok(r) if r.status() == StatusCode::UNAUTHORIZED => {
                    let (_, message) = error_body(r);
                    return Err(ClientError::Unauthorized {
                        url: req.url.clone(),
                        had_credential: self.options.credential.is_some(),
                        message,
                    });
                }
                Ok(r) if transient(r.status()) && attempt < attempts => format!("answered {}", r.status()),
                Ok(r) => return Ok(r),
                Err(e) if attempt < attempts => e.to_string(),
                Err(e) => {
                    return Err(ClientError::Http {
                        method: method_name(&req.method),
                        url: req.url.clone(),
                        reason: error_chain(&e),
                    });
                }
            };
            events(Event::Retry {
                what: format!("{} {}", method_name(&req.method), req.url),
                attempt,
                reason: failure,
            });
            std::thread::sleep(backoff(attempt));
        }
    }

    /// `send`, then turns any status but the expected ones into an error.
    fn expect(&self, req: &Req<'_>, ok: &[StatusCode], events: &dyn Fn(Event)) -> Result<Response> {
        let r = self.send(req, events)?;
        if ok.contains(&r.status()) {
            return Ok(r);
        }
        let status = r.status().as_u16();
        let (code, message) = error_body(r);
        Err(ClientError::Status {
            method: method_name(&req.method),
            url: req.url.clone(),
            status,
            code,
            message,
        })
    }

    // ----- push -------------------------------------------------------------

    /// Pushes the image `manifest` (from `store`) to `target`. `mount_from`
    /// names repositories of the same registry worth trying to mount from,
    /// besides those this store remembers pushing the blob to.
    pub fn push(
        &self,
        store: &Store,
        manifest: &Descriptor,
        target: &Reference,
        mount_from: &[String],
        events: &(dyn Fn(Event) + Sync),
    ) -> Result<Report> {
        let bytes = store.read_blob(&manifest.digest)?;
        let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| ClientError::BadManifest {
            reference: manifest.digest.to_string(),
            why: e.to_string(),
        })?;
        let blobs = image_blobs(&m);
        for (_, d) in &blobs {
            if !store.has(&d.digest) {
                return Err(StoreError::NotFound(d.digest.clone()).into());
            }
        }
        let known = self.known_locations(store);
        let results = self.parallel(&blobs, |role, d| {
            let started = Instant::now();
            let mut candidates: Vec<String> = mount_from.to_vec();
            if let Some(repos) = known.get(&d.digest.to_string()) {
                candidates.extend(repos.iter().cloned());
            }
            candidates.retain(|r| r != &target.repository);
            candidates.dedup();
            let outcome = self.push_blob(store, &target.repository, d, &candidates, events)?;
            Ok(settled(events, role, d, outcome, started))
        })?;
        self.remember(store, &target.repository, blobs.iter().map(|(_, d)| &d.digest));

        let media = m
            .media_type
            .clone()
            .unwrap_or_else(|| manifest.media_type.clone());
        let path = format!("/v2/{}/manifests/{}", target.repository, target.reference());
        let scopes = [push_scope(&target.repository)];
        let body = bytes.clone();
        let build =
            move |b: RequestBuilder| b.header(header::CONTENT_TYPE, media.as_str()).body(body.clone());
        let r = self.expect(
            &Req {
                method: reqwest::Method::PUT,
                url: self.url(&path),
                scopes: &scopes,
                build: &build,
                retry: true,
            },
            &[StatusCode::CREATED, StatusCode::OK, StatusCode::ACCEPTED],
            events,
        )?;
        if let Some(d) = r
            .headers()
            .get("Docker-Content-Digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<Digest>().ok())
            && d != manifest.digest
        {
            return Err(ClientError::DigestMismatch {
                what: "manifest".into(),
                expected: manifest.digest.clone(),
                actual: d,
            });
        }
        Ok(Report::new(manifest.clone(), &blobs, results))
    }

    /// Runs `f` over `blobs` with up to `jobs` threads; the first error wins.
    fn parallel(
        &self,
        blobs: &[(&'static str, Descriptor)],
        f: impl Fn(&'static str, &Descriptor) -> Result<BlobOutcome> + Sync,
    ) -> Result<Vec<BlobOutcome>> {
        let next = AtomicUsize::new(0);
        let failed = std::sync::atomic::AtomicBool::new(false);
        let results: Mutex<Vec<Option<Result<BlobOutcome>>>> =
            Mutex::new(blobs.iter().map(|_| None).collect());
        std::thread::scope(|s| {
            for _ in 0..self.options.jobs.clamp(1, blobs.len().max(1)) {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        if i >= blobs.len() || failed.load(Ordering::SeqCst) {
                            break;
                        }
                        let r = f(blobs[i].0, &blobs[i].1);
                        if r.is_err() {
                            failed.store(true, Ordering::SeqCst);
                        }
                        results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
                    }
                });
            }
        });
        let mut out = Vec::new();
        // A blob left undone after another failed has no entry; that
        // failure is among the entries and is returned here.
        for r in results
            .into_inner()
            .unwrap_or_else(|e| e.into_inner())
            .into_iter()
            .flatten()
        {
            out.push(r?);
        }
        Ok(out)
    }

    fn push_blob(
        &self,
        store: &Store,
        repo: &str,
        d: &Descriptor,
        mount_from: &[String],
        events: &dyn Fn(Event),
    ) -> Result<BlobOutcome> {
        let scopes = [push_scope(repo)];
        let head = self.send(
            &Req {
                method: reqwest::Method::HEAD,
                url: self.url(&format!("/v2/{repo}/blobs/{}", d.digest)),
                scopes: &scopes,
                build: &|b| b,
                retry: true,
            },
            events,
        )?;
        if head.status() == StatusCode::OK {
            return Ok(BlobOutcome::Present);
        }
        let mut session = None;
        for from in mount_from {
            let scopes = [push_scope(repo), format!("repository:{from}:pull")];
            let url = self.url(&format!(
                "/v2/{repo}/blobs/uploads/?mount={}&from={from}",
                d.digest
            ));
            let r = self.expect(
                &Req {
                    method: reqwest::Method::POST,
                    url: url.clone(),
                    scopes: &scopes,
                    build: &|b| b.header(header::CONTENT_LENGTH, "0"),
                    retry: true,
                },
                &[StatusCode::CREATED, StatusCode::ACCEPTED],
                events,
            )?;
            if r.status() == StatusCode::CREATED {
                return Ok(BlobOutcome::Mounted(from.clone()));
            }
            // Not mounted: the registry opened an upload session instead.
            // Keep the last one for the upload; close the others.
            let location = self.location(&r, &url)?;
            if let Some(stale) = session.replace(location) {
                let mut b = self.http.delete(&stale);
                if let Some(v) = self.auth.header(&scopes) {
                    b = b.header(header::AUTHORIZATION, v);
                }
                let _ = b.send();
            }
        }
        let path = store.blob_path(&d.digest);
        let mut failures = 0;
        loop {
            let location = match session.take() {
                Some(l) => l,
                None => self.start_upload(repo, &scopes, events)?,
            };
            let r = if d.size > self.options.chunk_size {
                self.upload_chunked(&location, &path, d, &scopes, events)
            } else {
                self.upload_whole(&location, &path, d, &scopes, events)
            };
            match r {
                Ok(()) => return Ok(BlobOutcome::Transferred),
                Err(e) if retryable(&e) && failures + 1 < self.options.attempts => {
                    failures += 1;
                    events(Event::Retry {
                        what: format!("upload of {}", d.digest),
                        attempt: failures,
                        reason: e.to_string(),
                    });
                    std::thread::sleep(backoff(failures));
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn start_upload(&self, repo: &str, scopes: &[String], events: &dyn Fn(Event)) -> Result<String> {
        let url = self.url(&format!("/v2/{repo}/blobs/uploads/"));
        let r = self.expect(
            &Req {
                method: reqwest::Method::POST,
                url: url.clone(),
                scopes,
                build: &|b| b.header(header::CONTENT_LENGTH, "0"),
                retry: true,
            },
            &[StatusCode::ACCEPTED],
            events,
        )?;
        self.location(&r, &url)
    }

    /// One PUT with the whole blob.
    fn upload_whole(
        &self,
        location: &str,
        path: &std::path::Path,
        d: &Descriptor,
        scopes: &[String],
        events: &dyn Fn(Event),
    ) -> Result<()> {
        let url = with_digest(location, &d.digest);
        let size = d.size;
        let open_err = |e: std::io::Error| {
            ClientError::Store(StoreError::Io {
                path: path.to_path_buf(),
                source: e,
            })
        };
        // Small blobs: read once, so the request can be built again after
        // an auth challenge.
        let bytes = std::fs::read(path).map_err(open_err)?;
        let build = |b: RequestBuilder| {
            b.header(header::CONTENT_TYPE, "application/octet-stream")
                .header(header::CONTENT_LENGTH, size.to_string())
                .body(bytes.clone())
        };
        self.expect(
            &Req {
                method: reqwest::Method::PUT,
                url,
                scopes,
                build: &build,
                retry: false,
            },
            &[StatusCode::CREATED],
            events,
        )?;
        events(Event::Bytes {
            digest: d.digest.clone(),
            done: size,
            total: size,
        });
        Ok(())
    }

    /// PATCHes of `chunk_size`, resuming from the registry's own count
    /// after a failure, then the closing PUT.
    fn upload_chunked(
        &self,
        location: &str,
        path: &std::path::Path,
        d: &Descriptor,
        scopes: &[String],
        events: &dyn Fn(Event),
    ) -> Result<()> {
        let io_err = |e: std::io::Error| {
            ClientError::Store(StoreError::Io {
                path: path.to_path_buf(),
                source: e,
            })
        };
        let mut file = File::open(path).map_err(io_err)?;
        let mut location = location.to_string();
        let mut offset = 0u64;
        let mut failures = 0;
        let mut buf = vec![0u8; self.options.chunk_size as usize];
        while offset < d.size {
            let len = (d.size - offset).min(self.options.chunk_size) as usize;
            file.seek(SeekFrom::Start(offset)).map_err(io_err)?;
            file.read_exact(&mut buf[..len]).map_err(io_err)?;
            let chunk = bytes::Bytes::copy_from_slice(&buf[..len]);
            let range = format!("{offset}-{}", offset + len as u64 - 1);
            let build = |b: RequestBuilder| {
                b.header(header::CONTENT_TYPE, "application/octet-stream")
                    .header(header::CONTENT_LENGTH, len.to_string())
                    .header(header::CONTENT_RANGE, range.as_str())
                    .body(chunk.clone())
            };
            let sent = self.expect(
                &Req {
                    method: reqwest::Method::PATCH,
                    url: location.clone(),
                    scopes,
                    build: &build,
                    retry: false,
                },
                &[StatusCode::ACCEPTED, StatusCode::NO_CONTENT],
                events,
            );
            match sent {
                Ok(r) => {
                    location = self.location(&r, &location)?;
                    offset += len as u64;
                    events(Event::Bytes {
                        digest: d.digest.clone(),
                        done: offset,
                        total: d.size,
                    });
                }
                Err(e) if retryable(&e) && failures + 1 < self.options.attempts => {
                    failures += 1;
                    events(Event::Retry {
                        what: format!("chunk {range} of {}", d.digest),
                        attempt: failures,
                        reason: e.to_string(),
                    });
                    std::thread::sleep(backoff(failures));
                    // Ask the registry how much it kept and go on from there.
                    let (loc, have) = self.upload_status(&location, scopes, events)?;
                    location = loc;
                    offset = have;
                }
                Err(e) => return Err(e),
            }
        }
        let url = with_digest(&location, &d.digest);
        self.expect(
            &Req {
                method: reqwest::Method::PUT,
                url,
                scopes,
                build: &|b| b.header(header::CONTENT_LENGTH, "0"),
                retry: true,
            },
            &[StatusCode::CREATED],
            events,
        )?;
        Ok(())
    }

    /// GET on an upload session: its (new) location and bytes received.
    fn upload_status(
        &self,
        location: &str,
        scopes: &[String],
        events: &dyn Fn(Event),
    ) -> Result<(String, u64)> {
        let r = self.expect(
            &Req {
                method: reqwest::Method::GET,
                url: location.to_string(),
                scopes,
                build: &|b| b,
                retry: true,
            },
            &[StatusCode::NO_CONTENT, StatusCode::OK, StatusCode::ACCEPTED],
            events,
        )?;
        let have = r
            .headers()
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim_start_matches("bytes=").split_once('-'))
            .and_then(|(_, end)| end.parse::<u64>().ok())
            .map(|end| end + 1)
            .unwrap_or(0);
        let loc = if r.headers().contains_key(header::LOCATION) {
            self.location(&r, location)?
        } else {
            location.to_string()
        };
        Ok((loc, have))
    }

    /// Which repositories of this registry this store has pushed each blob
    /// to (digest → repositories), for cross-repository mounts.
    fn known_locations(&self, store: &Store) -> BTreeMap<String, Vec<String>> {
        store
            .read_meta("pushed", &meta_name(&self.registry))
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn remember<'a>(&self, store: &Store, repo: &str, digests: impl Iterator<Item = &'a Digest>) {
        let mut known = self.known_locations(store);
        for d in digests {
            let repos = known.entry(d.to_string()).or_default();
            if !repos.iter().any(|r| r == repo) {
                repos.push(repo.to_string());
            }
        }
        // A lost record only costs a mount later: not worth failing a push.
        if let Err(e) = store.write_meta(
            "pushed",
            &meta_name(&self.registry),
            &serde_json::to_vec(&known).unwrap_or_default(),
        ) {
            tracing::warn!("could not record pushed blobs: {e}");
        }
    }

    // ----- pull -------------------------------------------------------------

    /// Pulls `source` into `store`: the manifest (for an index, the one for
    /// `platform`, e.g. `linux/amd64`), its config and layers. Blobs the
    /// store has are not fetched again.
    pub fn pull(
        &self,
        store: &Store,
        source: &Reference,
        platform: &str,
        events: &(dyn Fn(Event) + Sync),
    ) -> Result<Report> {
        let (mut desc, mut bytes) =
            self.fetch_manifest(source, &source.reference(), source.digest.as_ref(), events)?;
        if desc.media_type == MEDIA_INDEX || desc.media_type == MEDIA_DOCKER_LIST {
            let index: Index = serde_json::from_slice(&bytes).map_err(|e| ClientError::BadManifest {
                reference: source.to_string(),
                why: format!("not an image index: {e}"),
            })?;
            let pick = index
                .manifests
                .iter()
                .find(|m| {
                    m.platform
                        .as_ref()
                        .is_some_and(|p| format!("{}/{}", p.os, p.architecture) == platform)
                })
                .ok_or_else(|| ClientError::NoPlatform {
                    reference: source.to_string(),
                    platform: platform.to_string(),
                    available: index
                        .manifests
                        .iter()
                        .filter_map(|m| m.platform.as_ref())
                        .map(|p| format!("{}/{}", p.os, p.architecture))
                        .collect::<Vec<_>>()
                        .join(", "),
                })?;
            let digest = pick.digest.clone();
            (desc, bytes) = self.fetch_manifest(source, &digest.to_string(), Some(&digest), events)?;
        }
        let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| ClientError::BadManifest {
            reference: source.to_string(),
            why: format!("not an image manifest: {e}"),
        })?;
        let blobs = image_blobs(&m);
        let results = self.parallel(&blobs, |role, d| {
            let started = Instant::now();
            let outcome = if store.has(&d.digest) {
                BlobOutcome::Present
            } else {
                self.pull_blob(store, &source.repository, d, events)?;
                BlobOutcome::Transferred
            };
            Ok(settled(events, role, d, outcome, started))
        })?;
        // The manifest last: a store holding it holds the whole image.
        store.put(&bytes, Some(&desc.digest))?;
        Ok(Report::new(desc, &blobs, results))
    }

    fn fetch_manifest(
        &self,
        source: &Reference,
        reference: &str,
        expected: Option<&Digest>,
        events: &dyn Fn(Event),
    ) -> Result<(Descriptor, Vec<u8>)> {
        let url = self.url(&format!("/v2/{}/manifests/{reference}", source.repository));
        let scopes = [pull_scope(&source.repository)];
        let mut r = self.expect(
            &Req {
                method: reqwest::Method::GET,
                url: url.clone(),
                scopes: &scopes,
                build: &|b| b.header(header::ACCEPT, crate::oci::MANIFEST_ACCEPT),
                retry: true,
            },
            &[StatusCode::OK],
            events,
        )?;
        let media = content_type(r.headers());
        let mut bytes = Vec::new();
        (&mut r)
            .take(MAX_MANIFEST as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| ClientError::Http {
                method: "GET",
                url: url.clone(),
                reason: e.to_string(),
            })?;
        if bytes.len() > MAX_MANIFEST {
            return Err(ClientError::BadManifest {
                reference: source.to_string(),
                why: format!("the manifest is larger than {MAX_MANIFEST} bytes"),
            });
        }
        let algorithm = expected.map_or(crate::digest::Algorithm::Sha256, |d| d.algorithm());
        let mut h = algorithm.hasher();
        h.update(&bytes);
        let actual = h.finish();
        if let Some(e) = expected
            && e != &actual
        {
            return Err(ClientError::DigestMismatch {
                what: format!("manifest of {source}"),
                expected: e.clone(),
                actual,
            });
        }
        // The body's own mediaType wins over a generic Content-Type.
        let declared = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v["mediaType"].as_str().map(str::to_string));
        let media = declared.or(media).ok_or_else(|| ClientError::BadManifest {
            reference: source.to_string(),
            why: "the manifest names no media type".into(),
        })?;
        let size = bytes.len() as u64;
        Ok((Descriptor::new(&media, actual, size), bytes))
    }

    /// Streams one blob into the store, verifying its digest; a dropped
    /// connection resumes with a `Range` request when the registry allows.
    fn pull_blob(&self, store: &Store, repo: &str, d: &Descriptor, events: &dyn Fn(Event)) -> Result<()> {
        let url = self.url(&format!("/v2/{repo}/blobs/{}", d.digest));
        let scopes = [pull_scope(repo)];
        let mut w = store.writer_with(d.digest.algorithm())?;
        let mut failures = 0;
        let mut buf = vec![0u8; 1 << 17];
        let mut last_report = Instant::now();
        'request: loop {
            let from = w.count();
            let range = format!("bytes={from}-");
            let build = |b: RequestBuilder| {
                if from > 0 {
                    b.header(header::RANGE, range.as_str())
                } else {
                    b
                }
            };
            let mut r = self.expect(
                &Req {
                    method: reqwest::Method::GET,
                    url: url.clone(),
                    scopes: &scopes,
                    build: &build,
                    retry: true,
                },
                &[StatusCode::OK, StatusCode::PARTIAL_CONTENT],
                events,
            )?;
            if from > 0 && r.status() == StatusCode::OK {
                // The registry ignored the range: start over.
                w = store.writer_with(d.digest.algorithm())?;
            }
            loop {
                match r.read(&mut buf) {
                    Ok(0) => break 'request,
                    Ok(n) => {
                        std::io::Write::write_all(&mut w, &buf[..n]).map_err(|e| {
                            ClientError::Store(StoreError::Io {
                                path: store.root().join("tmp"),
                                source: e,
                            })
                        })?;
                        if last_report.elapsed() > Duration::from_millis(200) {
                            last_report = Instant::now();
                            events(Event::Bytes {
                                digest: d.digest.clone(),
                                done: w.count(),
                                total: d.size,
                            });
                        }
                    }
                    Err(e) if failures + 1 < self.options.attempts => {
                        failures += 1;
                        events(Event::Retry {
                            what: format!("GET {url}"),
                            attempt: failures,
                            reason: e.to_string(),
                        });
                        std::thread::sleep(backoff(failures));
                        continue 'request;
                    }
                    Err(e) => {
                        return Err(ClientError::Http {
                            method: "GET",
                            url,
                            reason: e.to_string(),
                        });
                    }
                }
            }
        }
        events(Event::Bytes {
            digest: d.digest.clone(),
            done: w.count(),
            total: d.size,
        });
        match w.commit(Some(&d.digest)) {
            Ok(_) => Ok(()),
            Err(StoreError::DigestMismatch { expected, actual, .. }) => Err(ClientError::DigestMismatch {
                what: format!("blob of {repo}"),
                expected,
                actual,
            }),
            Err(e) => Err(e.into()),
        }
    }
}

/// The config and the distinct layers of an image, with their roles.
pub(crate) fn image_blobs(m: &Manifest) -> Vec<(&'static str, Descriptor)> {
    let mut blobs: Vec<(&'static str, Descriptor)> = vec![("config", m.config.clone())];
    for l in &m.layers {
        if !blobs.iter().any(|(_, d)| d.digest == l.digest) {
            blobs.push(("layer", l.clone()));
        }
    }
    blobs
}

/// Reports a settled blob and hands its outcome back.
fn settled(
    events: &dyn Fn(Event),
    role: &'static str,
    d: &Descriptor,
    outcome: BlobOutcome,
    started: Instant,
) -> BlobOutcome {
    events(Event::Blob {
        digest: d.digest.clone(),
        role,
        size: d.size,
        outcome: outcome.clone(),
        elapsed: started.elapsed(),
    });
    outcome
}

fn pull_scope(repo: &str) -> String {
    format!("repository:{repo}:pull")
}

fn push_scope(repo: &str) -> String {
    format!("repository:{repo}:pull,push")
}

fn meta_name(registry: &str) -> String {
    registry
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn with_digest(location: &str, d: &Digest) -> String {
    let sep = if location.contains('?') { '&' } else { '?' };
    format!("{location}{sep}digest={d}")
}

fn content_type(h: &HeaderMap) -> Option<String> {
    let v = h.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let v = v.split(';').next().unwrap_or(v).trim();
    (!v.is_empty() && v != "application/json" && v != "text/plain").then(|| v.to_string())
}

/// Whether an upload error may go away by trying again.
fn retryable(e: &ClientError) -> bool {
    match e {
        ClientError::Http { .. } => true,
        ClientError::Status { status, .. } => {
            transient(StatusCode::from_u16(*status).unwrap_or_default()) || *status == 416
        }
        _ => false,
    }
}

/// The spec's error body: the first error's code and message.
fn error_body(r: Response) -> (String, String) {
    let text = r.text().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    match v["errors"].get(0) {
        Some(e) => (
            e["code"].as_str().unwrap_or("").to_string(),
            e["message"].as_str().unwrap_or("").to_string(),
        ),
        None => (
            String::new(),
            text.chars().take(200).collect::<String>().trim().to_string(),
        ),
    }
}

/// An error with its causes, which reqwest keeps apart.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}
