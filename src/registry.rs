//! `strata serve`: an OCI distribution-spec registry over the shared store.
//!
//! Blobs live in the content-addressed store and become visible only by an
//! atomic rename after their digest matched; tags and repository membership
//! are small files under `repos/`; upload sessions are plain files under
//! `uploads/`, so they survive a restart and can be resumed until they
//! have been idle for the upload TTL. This module never serves bytes it
//! has not verified.

pub mod auth;
pub mod config;
mod direct;
pub mod gc;
pub(crate) mod http;
pub mod manifests;
mod state;
pub mod uploads;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

pub use manifests::{ManifestPolicy, manifest_media_type};
pub use state::{Registry, RegistryError, valid_name, valid_tag};

/// The parsers a request's path and headers go through, on raw values,
/// for the fuzz targets in `fuzz/` (the router calls the same code).
pub mod parse {
    pub use super::http::uploads::content_range_value;
    pub use super::http::{range_value, route_parts};
}
pub use uploads::{DEFAULT_UPLOAD_TTL, PurgeReport, UploadLock};

/// Who may do what.
#[derive(Debug, Clone, Default)]
pub struct Access {
    pub credentials: auth::Credentials,
    /// Accept pushes without a credential (demos and tests only).
    pub open_push: bool,
    /// Require a credential for pulls too.
    pub pull_auth: bool,
    /// Let anonymous callers read the server's API, dashboard and
    /// `/metrics` (`--public-read`); by default every read there needs a
    /// token with the read role. The registry (`/v2/`) does not look at it.
    pub public_read: bool,
    /// Allow DELETE of manifests, tags and blobs (content management).
    pub allow_delete: bool,
    /// Refuse blobs larger than this many MiB (413); no limit by default.
    pub max_blob_mib: Option<u64>,
    /// Purge upload sessions idle for longer than this (default
    /// [`DEFAULT_UPLOAD_TTL`]).
    pub upload_ttl: Option<std::time::Duration>,
    /// Foreign layers and sparse indexes (`--refuse-foreign-layers`,
    /// `--allow-sparse-index`).
    pub manifest_policy: ManifestPolicy,
}

/// A bound registry server; [`Server::run`] serves until `shutdown`.
pub struct Server {
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    access: Arc<Access>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// More routes served beside the registry (the server's API).
    extra: Option<axum::Router>,
}

/// Aborts a background task when the server stops.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Purges idle upload sessions now and then, for as long as the server runs.
async fn purge_expired_uploads(registry: Arc<Registry>) {
    let ttl = registry.upload_ttl();
    let mut every = tokio::time::interval(uploads::purge_interval(ttl));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let reg = registry.clone();
        match tokio::task::spawn_blocking(move || reg.purge_uploads(std::time::SystemTime::now())).await {
            Ok(Ok(r)) if r.expired_uploads > 0 => tracing::info!(
                "registry: purged {} upload sessions idle for more than {}s ({} bytes)",
                r.expired_uploads,
                ttl.as_secs(),
                r.expired_bytes
            ),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!("registry: purging idle upload sessions: {e}"),
            Err(e) => tracing::warn!("registry: the upload purge task: {e}"),
        }
    }
}

/// The most a connection buffers of what a client sends before the
/// request's handler takes it. hyper's default (about 400 KiB) grows on
/// every full read, and on loopback every read is full: 1,000 concurrent
/// uploads then held 400 MB in read buffers alone. 64 KiB still reads a
/// fast upload in large bites (curl sends 64 KiB frames).
pub const READ_BUFFER: usize = 64 << 10;

/// How connections are served: HTTP/1.1 with a bounded read buffer, or h2
/// (negotiated by ALPN under TLS, or prior knowledge).
fn connection_builder() -> hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor> {
    let mut b = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    b.http1().max_buf_size(READ_BUFFER);
    b
}

/// A certificate chain and key, PEM files, for HTTPS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn tls_acceptor(files: &TlsFiles) -> Result<tokio_rustls::TlsAcceptor, RegistryError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |path: &PathBuf, reason: String| RegistryError::Tls {
        path: path.clone(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| bad(&files.cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(bad(&files.cert, "no certificate in the file".to_string()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| bad(&files.key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(&files.cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| bad(&files.key, e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

impl Server {
    pub async fn bind(
        addr: SocketAddr,
        data: PathBuf,
        access: Access,
        tls: Option<TlsFiles>,
    ) -> Result<Server, RegistryError> {
        let tls = tls.as_ref().map(tls_acceptor).transpose()?;
        let mut registry = Registry::open(data)?;
        if let Some(mib) = access.max_blob_mib {
            registry = registry.with_max_blob(mib << 20);
        }
        registry = registry
            .with_upload_ttl(access.upload_ttl.unwrap_or(DEFAULT_UPLOAD_TTL))
            .with_manifest_policy(access.manifest_policy);
        let registry = Arc::new(registry);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| RegistryError::Bind { addr, source })?;
        Ok(Server {
            listener,
            registry,
            access: Arc::new(access),
            tls,
            extra: None,
        })
    }

    /// Who may do what (shared with the API: a token an admin creates
    /// there is accepted by the registry at once).
    pub fn access(&self) -> Arc<Access> {
        self.access.clone()
    }

    /// The registry this server serves (shared with the API).
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves `routes` beside the registry's.
    pub fn with_routes(mut self, routes: axum::Router) -> Server {
        self.extra = Some(match self.extra.take() {
            Some(r) => r.merge(routes),
            None => routes,
        });
        self
    }

    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let _purger = AbortOnDrop(tokio::spawn(purge_expired_uploads(self.registry.clone())));
        let mut app = http::router(self.registry, self.access);
        if let Some(extra) = self.extra {
            app = app.merge(extra);
        }
        // Our own accept loop (not `axum::serve`) for HTTP and HTTPS alike,
        // so the connection's read buffer can be bounded: see
        // `READ_BUFFER`. Each connection is served in its own task; a
        // failed handshake or a broken connection only ends that task.
        let builder = connection_builder();
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        // Tells connections serving blob reads in `direct` to close once idle.
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = self.listener.accept() => {
                    let (tcp, peer) = match accepted {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::warn!("registry: accept failed: {e}");
                            // Out of file descriptors, most likely: let some close.
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    tracing::trace!("registry: connection from {peer} accepted");
                    let svc = hyper_util::service::TowerToHyperService::new(app.clone());
                    let (builder, watcher, tls) = (builder.clone(), graceful.watcher(), self.tls.clone());
                    let (app, mut stop) = (app.clone(), stop.clone());
                    tokio::spawn(async move {
                        let served = match tls {
                            // Plain HTTP/1.1 blob reads are sent from the
                            // file (see `direct`); the watcher, held
                            // meanwhile, keeps the shutdown waiting for them.
                            None => {
                                let io = match direct::serve(tcp, &app, &mut stop).await {
                                    direct::Outcome::Closed => return,
                                    direct::Outcome::Handoff(io) => io,
                                };
                                let io = hyper_util::rt::TokioIo::new(io);
                                watcher.watch(builder.serve_connection_with_upgrades(io, svc).into_owned()).await
                            }
                            Some(acceptor) => match acceptor.accept(tcp).await {
                                Ok(stream) => {
                                    let io = hyper_util::rt::TokioIo::new(stream);
                                    watcher.watch(builder.serve_connection_with_upgrades(io, svc).into_owned()).await
                                }
                                Err(e) => {
                                    tracing::debug!("registry: TLS handshake with {peer} failed: {e}");
                                    return;
                                }
                            },
                        };
                        if let Err(e) = served {
                            tracing::debug!("registry: connection from {peer}: {e}");
                        }
                    });
                }
                _ = &mut shutdown => break,
            }
        }
        drop(self.listener);
        let _ = stop_tx.send(true);
        // In-flight requests finish (idle connections close at once), within bounds.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), graceful.shutdown()).await;
        Ok(())
    }
}
