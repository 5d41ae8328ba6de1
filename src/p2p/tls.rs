//! The cluster's certificates: one CA (`strata cluster init`), a
//! certificate per node signed by it (`strata cluster issue`), and the
//! QUIC configs that make every connection mutual TLS against that CA. A
//! process without a certificate from the cluster CA can fetch nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::RootCertStore;
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Every node certificate names this host, and every client expects it:
/// peers are reached by address, identity is the cluster signature.
pub const CLUSTER_NAME: &str = "strata.cluster";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: {why}", path.display())]
    Bad { path: PathBuf, why: String },
    #[error("{}: a cluster CA already exists there; refusing to replace it (every node certificate depends on it)", path.display())]
    Exists { path: PathBuf },
    #[error("certificate generation: {0}")]
    Gen(#[from] rcgen::Error),
    #[error("TLS setup: {0}")]
    Rustls(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn ca_params() -> Result<CertificateParams, TlsError> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name.push(DnType::CommonName, "strata cluster CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = rcgen::date_time_ymd(2024, 1, 1);
    p.not_after = rcgen::date_time_ymd(2124, 1, 1);
    Ok(p)
}

/// Creates `dir/ca.pem` and `dir/ca.key` (mode 0600). Refuses to
/// overwrite an existing CA.
pub fn init_ca(dir: &Path) -> Result<PathBuf, TlsError> {
    let cert_path = dir.join("ca.pem");
    if cert_path.exists() {
        return Err(TlsError::Exists { path: cert_path });
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let key = KeyPair::generate()?;
    let cert = ca_params()?.self_signed(&key)?;
    write_private(&dir.join("ca.key"), key.serialize_pem().as_bytes())?;
    crate::store::write_atomic(&cert_path, cert.pem().as_bytes()).map_err(io(&cert_path))?;
    Ok(cert_path)
}

/// How long a node certificate is valid unless told otherwise (`strata
/// serve --cert-lifetime`, `strata cluster issue --lifetime`). Agents
/// renew theirs when less than a third is left.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// Issues a node certificate named `name`, valid for `lifetime`, into
/// `out/NAME.pem` and `out/NAME.key`, with `ca.pem` copied beside them:
/// what a node needs.
pub fn issue(
    ca_dir: &Path,
    name: &str,
    out: &Path,
    lifetime: Duration,
) -> Result<(PathBuf, PathBuf), TlsError> {
    let issuer = load_issuer(ca_dir)?;
    let p = node_params(name, lifetime)?;
    let key = KeyPair::generate()?;
    let cert = p.signed_by(&key, &issuer)?;
    std::fs::create_dir_all(out).map_err(io(out))?;
    let (c, k) = (out.join(format!("{name}.pem")), out.join(format!("{name}.key")));
    write_private(&k, key.serialize_pem().as_bytes())?;
    crate::store::write_atomic(&c, cert.pem().as_bytes()).map_err(io(&c))?;
    let ca = ca_dir.join("ca.pem");
    let dest = out.join("ca.pem");
    if dest != ca {
        std::fs::copy(&ca, &dest).map_err(io(&dest))?;
    }
    Ok((c, k))
}

/// What every node certificate says: its name, the cluster host name,
/// server and client use, valid from now (less a tenth of the lifetime,
/// at most 5 min, for clocks a little behind) for `lifetime`. Nothing of
/// it comes from the requester but the name (and, for a CSR, the public
/// key).
fn node_params(name: &str, lifetime: Duration) -> Result<CertificateParams, TlsError> {
    let mut p = CertificateParams::new(vec![CLUSTER_NAME.to_string()])?;
    p.distinguished_name.push(DnType::CommonName, name);
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - (lifetime / 10).min(Duration::from_secs(300));
    p.not_after = now + lifetime;
    Ok(p)
}

fn load_issuer(ca_dir: &Path) -> Result<Issuer<'static, KeyPair>, TlsError> {
    let key_path = ca_dir.join("ca.key");
    let pem = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
    let key = KeyPair::from_pem(&pem).map_err(|e| TlsError::Bad {
        path: key_path.clone(),
        why: e.to_string(),
    })?;
    Ok(Issuer::new(ca_params()?, key))
}

/// A new key and a certificate signing request for node `name`: the key
/// stays on the host, the request goes to the server with a join token.
pub fn make_csr(name: &str) -> Result<(String, String), TlsError> {
    let key = KeyPair::generate()?;
    let csr = node_params(name, DEFAULT_LIFETIME)?.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

/// A certificate signing request for node `name` with the key it has
/// (`key_pem`): a renewal keeps the key, so only the certificate changes.
pub fn csr_for_key(name: &str, key_pem: &str) -> Result<String, TlsError> {
    let key = KeyPair::from_pem(key_pem)?;
    Ok(node_params(name, DEFAULT_LIFETIME)?
        .serialize_request(&key)?
        .pem()?)
}

/// Signs a node certificate for `name`, valid for `lifetime`, with the
/// public key of `csr_pem`. Everything else in the request is ignored.
pub fn sign_csr(ca_dir: &Path, name: &str, csr_pem: &str, lifetime: Duration) -> Result<String, TlsError> {
    let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)?;
    let issuer = load_issuer(ca_dir)?;
    Ok(node_params(name, lifetime)?
        .signed_by(&csr.public_key, &issuer)?
        .pem())
}

/// Writes a private key: mode 0600 from the start, then renamed in place.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// A node's identity: its certificate chain, key and the cluster CA.
pub struct Identity {
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Arc<RootCertStore>,
}

impl Identity {
    /// Reads `cert`, `key` and the CA certificate `ca` (PEM files).
    pub fn load(cert: &Path, key: &Path, ca: &Path) -> Result<Identity, TlsError> {
        let bad = |path: &Path, why: String| TlsError::Bad {
            path: path.to_path_buf(),
            why,
        };
        let certs: Vec<_> = CertificateDer::pem_file_iter(cert)
            .map_err(|e| bad(cert, e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| bad(cert, e.to_string()))?;
        if certs.is_empty() {
            return Err(bad(cert, "no certificate in the file".into()));
        }
        let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, e.to_string()))?;
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca).map_err(|e| bad(ca, e.to_string()))? {
            roots
                .add(c.map_err(|e| bad(ca, e.to_string()))?)
                .map_err(|e| bad(ca, e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(bad(ca, "no CA certificate in the file".into()));
        }
        Ok(Identity {
            certs,
            key: key_der,
            roots: Arc::new(roots),
        })
    }

    /// Loads `DIR/NAME.pem`, `DIR/NAME.key` and `DIR/ca.pem`.
    pub fn from_dir(dir: &Path, name: &str) -> Result<Identity, TlsError> {
        Identity::load(
            &dir.join(format!("{name}.pem")),
            &dir.join(format!("{name}.key")),
            &dir.join("ca.pem"),
        )
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::aws_lc_rs::default_provider())
    }

    /// Accepts only clients with a certificate from the cluster CA, and
    /// (with `revoked`) none whose node is revoked.
    pub fn server_config(
        &self,
        revoked: Option<Arc<super::revoke::Revoked>>,
    ) -> Result<quinn::ServerConfig, TlsError> {
        let r = |e: &dyn std::fmt::Display| TlsError::Rustls(e.to_string());
        let webpki =
            rustls::server::WebPkiClientVerifier::builder_with_provider(self.roots.clone(), Self::provider())
                .build()
                .map_err(|e| r(&e))?;
        let verifier: Arc<dyn ClientCertVerifier> = match revoked {
            Some(revoked) => Arc::new(NotRevoked {
                inner: webpki,
                revoked,
            }),
            None => webpki,
        };
        let mut tls = rustls::ServerConfig::builder_with_provider(Self::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| r(&e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.certs.clone(), self.key.clone_key())
            .map_err(|e| r(&e))?;
        tls.alpn_protocols = vec![b"strata-p2p/1".to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| r(&e))?;
        let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        cfg.transport_config(Arc::new(transport()));
        Ok(cfg)
    }

    /// Trusts only servers with a certificate from the cluster CA and
    /// presents this node's certificate.
    pub fn client_config(&self) -> Result<quinn::ClientConfig, TlsError> {
        let r = |e: &dyn std::fmt::Display| TlsError::Rustls(e.to_string());
        let mut tls = rustls::ClientConfig::builder_with_provider(Self::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| r(&e))?
            .with_root_certificates(self.roots.clone())
            .with_client_auth_cert(self.certs.clone(), self.key.clone_key())
            .map_err(|e| r(&e))?;
        tls.alpn_protocols = vec![b"strata-p2p/1".to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| r(&e))?;
        let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
        cfg.transport_config(Arc::new(transport()));
        Ok(cfg)
    }
}

/// The cluster CA's check, then the revocation list's: a revoked node's
/// certificate fails the handshake (alert `certificate_revoked`).
#[derive(Debug)]
struct NotRevoked {
    inner: Arc<dyn ClientCertVerifier>,
    revoked: Arc<super::revoke::Revoked>,
}

impl ClientCertVerifier for NotRevoked {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        let ok = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        let name = super::identity::read_cert(end_entity)
            .map_err(|e| rustls::Error::General(e.to_string()))?
            .name;
        if self.revoked.contains(&name) {
            tracing::warn!("p2p: refused the certificate of `{name}`: revoked");
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Revoked,
            ));
        }
        Ok(ok)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Windows large enough for a few MiB pieces in flight on a fast link;
/// idle connections kept alive so peers stay reachable between pieces.
fn transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(64u32.into());
    t.stream_receive_window((8u32 << 20).into());
    t.receive_window((32u32 << 20).into());
    t.send_window(32 << 20);
    t.keep_alive_interval(Some(std::time::Duration::from_secs(2)));
    t.max_idle_timeout(Some(
        std::time::Duration::from_secs(8).try_into().expect("8 s fits"),
    ));
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csrs_are_signed() {
        let d = tempfile::tempdir().unwrap();
        let ca = d.path().join("ca");
        init_ca(&ca).unwrap();
        let (key, csr) = make_csr("host-9").unwrap();
        let cert = sign_csr(&ca, "host-9", &csr, DEFAULT_LIFETIME).unwrap();
        let out = d.path().join("node");
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join("host-9.pem"), cert).unwrap();
        std::fs::write(out.join("host-9.key"), key).unwrap();
        std::fs::copy(ca.join("ca.pem"), out.join("ca.pem")).unwrap();
        Identity::from_dir(&out, "host-9")
            .unwrap()
            .client_config()
            .unwrap();
        assert!(sign_csr(&ca, "x", "not a csr", DEFAULT_LIFETIME).is_err());
    }

    #[test]
    fn init_issue_and_load() {
        let d = tempfile::tempdir().unwrap();
        let ca = d.path().join("ca");
        init_ca(&ca).unwrap();
        assert!(matches!(init_ca(&ca), Err(TlsError::Exists { .. })));
        let out = d.path().join("node");
        issue(&ca, "agent-1", &out, DEFAULT_LIFETIME).unwrap();
        let id = Identity::from_dir(&out, "agent-1").unwrap();
        id.server_config(None).unwrap();
        id.client_config().unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out.join("agent-1.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
