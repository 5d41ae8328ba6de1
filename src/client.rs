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
mod pull;
mod push;
mod reference;

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::blocking::{Client as Http, RequestBuilder, Response};
use reqwest::header::{self, HeaderMap};

pub use self::auth::Credential;
pub use self::reference::{BadReference, Reference};
use crate::digest::Digest;
use crate::oci::{Descriptor, Manifest};
use crate::store::StoreError;

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
