//! Who a peer is: the node name in its cluster certificate (the subject's
//! common name, set by `strata cluster issue` and by the join and renewal
//! endpoints), and the rule that binds every tracker message to it.
//!
//! A message speaks only for the node whose certificate opened the
//! connection: a name a message carries is checked against the
//! certificate's, never trusted on its own. Pure functions over bytes
//! and messages; the only I/O-side call reads what a QUIC connection's
//! handshake already verified.

use super::wire::Request;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("the peer presented no certificate")]
    NoCertificate,
    #[error("the peer's certificate cannot be read: {0}")]
    Unreadable(String),
    #[error("the peer's certificate names no node (no common name)")]
    NoName,
    #[error(
        "this connection's certificate is `{cert}`'s: a `{op}` for `{claimed}` is refused (a node speaks only for itself)"
    )]
    Mismatch {
        cert: String,
        claimed: String,
        op: &'static str,
    },
}

pub type Result<T, E = IdentityError> = std::result::Result<T, E>;

/// What strata reads from a node certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The node's name (the subject's common name).
    pub name: String,
    /// Validity, in seconds since the Unix epoch.
    pub not_before: i64,
    pub not_after: i64,
}

impl CertInfo {
    /// Whether less than a third of the lifetime is left at `now` (Unix
    /// seconds): time to ask for a new certificate.
    pub fn due_for_renewal(&self, now: i64) -> bool {
        let life = (self.not_after - self.not_before).max(0);
        3 * (self.not_after - now) < life
    }
}

/// Reads the name and validity of a DER certificate.
pub fn read_cert(der: &[u8]) -> Result<CertInfo> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| IdentityError::Unreadable(e.to_string()))?;
    let name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or(IdentityError::NoName)?
        .to_string();
    let v = cert.validity();
    Ok(CertInfo {
        name,
        not_before: v.not_before.timestamp(),
        not_after: v.not_after.timestamp(),
    })
}

/// Reads the first certificate of a PEM file.
pub fn read_cert_file(path: &std::path::Path) -> Result<CertInfo> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_file(path)
        .map_err(|e| IdentityError::Unreadable(format!("{}: {e}", path.display())))?;
    read_cert(&der)
}

/// The node name of the certificate a QUIC peer presented (the handshake
/// already checked it against the cluster CA).
pub fn peer_name(conn: &quinn::Connection) -> Result<String> {
    let any = conn.peer_identity().ok_or(IdentityError::NoCertificate)?;
    let certs = any
        .downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
        .map_err(|_| IdentityError::NoCertificate)?;
    let leaf = certs.first().ok_or(IdentityError::NoCertificate)?;
    Ok(read_cert(leaf)?.name)
}

/// The node a tracker message speaks for, and the message's name.
pub fn claimed(req: &Request) -> Option<(&'static str, &str)> {
    match req {
        Request::Register { node, .. } => Some(("register", node)),
        Request::Announce { node, .. } => Some(("announce", node)),
        Request::Got { node, .. } => Some(("got", node)),
        Request::Peers { node, .. } => Some(("peers", node)),
        Request::Upstream { node, .. } => Some(("upstream", node)),
        // `Gone` names the peer it reports, not its sender: the tracker
        // takes the reporter from the certificate (see `node.rs`).
        _ => None,
    }
}

/// Refuses a message that speaks for another node than `cert`'s.
pub fn check(cert: &str, req: &Request) -> Result<()> {
    match claimed(req) {
        Some((op, claimed)) if claimed != cert => Err(IdentityError::Mismatch {
            cert: cert.to_string(),
            claimed: claimed.to_string(),
            op,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;

    #[test]
    fn a_message_speaks_only_for_its_certificate() {
        let blob = Digest::sha256_of(b"x");
        let got = |node: &str| Request::Got {
            blob: blob.clone(),
            node: node.into(),
            index: 0,
        };
        check("host-1", &got("host-1")).unwrap();
        let e = check("host-3", &got("host-1")).unwrap_err().to_string();
        assert!(e.contains("`host-3`") && e.contains("`got` for `host-1`"), "{e}");
        // Messages that name no node pass.
        check("host-3", &Request::Have { blob }).unwrap();
    }

    #[test]
    fn names_and_lifetimes_come_from_the_certificate() {
        let d = tempfile::tempdir().unwrap();
        crate::p2p::tls::init_ca(d.path()).unwrap();
        let (pem, _) = crate::p2p::tls::issue(
            d.path(),
            "host-7",
            &d.path().join("out"),
            crate::p2p::tls::DEFAULT_LIFETIME,
        )
        .unwrap();
        let der = rustls_pki_types::CertificateDer::from_pem_file(&pem).unwrap();
        let info = read_cert(&der).unwrap();
        assert_eq!(info.name, "host-7");
        assert!(info.not_after > info.not_before);
        assert!(read_cert(b"not a certificate").is_err());
        let c = CertInfo {
            name: "n".into(),
            not_before: 0,
            not_after: 300,
        };
        assert!(!c.due_for_renewal(199) && c.due_for_renewal(201));
    }

    use rustls_pki_types::pem::PemObject;
}
