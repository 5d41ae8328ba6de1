//! `strata serve`: an OCI distribution-spec registry over the shared store.
//!
//! Blobs live in the content-addressed store and become visible only by an
//! atomic rename after their digest matched; tags and repository membership
//! are small files under `repos/`; upload sessions are plain files under
//! `uploads/`, so they survive a restart and can be resumed. This module
//! never serves bytes it has not verified.

pub mod auth;
pub mod gc;
mod http;
mod state;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

pub use state::{Registry, RegistryError};

/// Who may do what.
#[derive(Debug, Clone, Default)]
pub struct Access {
    pub credentials: auth::Credentials,
    /// Accept pushes without a credential (demos and tests only).
    pub open_push: bool,
    /// Require a credential for pulls too.
    pub pull_auth: bool,
    /// Allow DELETE of manifests, tags and blobs (content management).
    pub allow_delete: bool,
}

/// A bound registry server; [`Server::run`] serves until `shutdown`.
pub struct Server {
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    access: Arc<Access>,
}

impl Server {
    pub async fn bind(addr: SocketAddr, data: PathBuf, access: Access) -> Result<Server, RegistryError> {
        let registry = Arc::new(Registry::open(data)?);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| RegistryError::Bind { addr, source })?;
        Ok(Server {
            listener,
            registry,
            access: Arc::new(access),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let app = http::router(self.registry, self.access);
        axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown)
            .await
    }
}
