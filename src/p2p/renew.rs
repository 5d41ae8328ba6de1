//! Node certificates that renew themselves: an agent whose certificate
//! has less than a third of its lifetime left asks the origin for a new
//! one over its mutual-TLS QUIC link (`Request::Renew`, a CSR for the key
//! it already has), writes it in place of the old one and presents it
//! on every new connection from then on — no restart.
//!
//! The origin signs only for the name of the certificate the request
//! came with (never a name from the request), for its configured
//! lifetime, and never for a revoked node (refused before this runs).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::identity::{CertInfo, read_cert_file};
use super::node::Node;
use super::tls::{self, Identity};
use super::wire::{Request, Response};

/// What the origin signs with: the cluster CA, and how long the
/// certificates it issues live.
#[derive(Debug, Clone)]
pub struct Authority {
    pub ca_dir: PathBuf,
    pub lifetime: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    #[error(transparent)]
    Identity(#[from] super::identity::IdentityError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("renewing the certificate of `{name}` at {origin}: {why}")]
    Refused {
        name: String,
        origin: String,
        why: String,
    },
}

/// On the origin: a new certificate for `name` (the asker's, from its
/// certificate) with the public key of `csr`.
pub fn sign(authority: &Authority, name: &str, csr: &str) -> Result<String, RenewError> {
    let cert = tls::sign_csr(&authority.ca_dir, name, csr, authority.lifetime)?;
    tracing::info!("cluster: renewed the certificate of `{name}`");
    Ok(cert)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// On an agent: renews `certs/NAME.pem` through `origin` when it is due,
/// and makes `node` present the new one. The new certificate, if any.
pub async fn renew_if_due(
    node: &Node,
    origin: std::net::SocketAddr,
    certs: &Path,
    name: &str,
) -> Result<Option<CertInfo>, RenewError> {
    let pem = certs.join(format!("{name}.pem"));
    let current = read_cert_file(&pem)?;
    if !current.due_for_renewal(now()) {
        return Ok(None);
    }
    let key_path = certs.join(format!("{name}.key"));
    let key = std::fs::read_to_string(&key_path).map_err(|source| RenewError::Io {
        path: key_path.clone(),
        source,
    })?;
    let csr = tls::csr_for_key(name, &key)?;
    let refused = |why: String| RenewError::Refused {
        name: name.to_string(),
        origin: origin.to_string(),
        why,
    };
    let cert = match node.ask(origin, &Request::Renew { csr }).await {
        Ok((Response::Renewed { cert }, _)) => cert,
        Ok((Response::Error { message }, _)) => return Err(refused(message)),
        Ok((other, _)) => return Err(refused(format!("unexpected answer {other:?}"))),
        Err(e) => return Err(refused(e.to_string())),
    };
    // Checked before it replaces anything: this node's, and newer.
    let staged = certs.join(format!("{name}.pem.new"));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RenewError::Io { path, source }
    };
    std::fs::write(&staged, &cert).map_err(io(&staged))?;
    let info = read_cert_file(&staged)?;
    if info.name != name || info.not_after <= current.not_after {
        let _ = std::fs::remove_file(&staged);
        return Err(refused(format!(
            "the origin sent a certificate for `{}` ending {}",
            info.name, info.not_after
        )));
    }
    let identity = Identity::load(&staged, &key_path, &certs.join("ca.pem"))?;
    node.set_identity(&identity)
        .await
        .map_err(|e| refused(format!("presenting the new certificate: {e}")))?;
    std::fs::rename(&staged, &pem).map_err(io(&pem))?;
    tracing::info!(
        "p2p: renewed the certificate of `{name}`: valid for {} s more",
        info.not_after - now()
    );
    Ok(Some(info))
}
