//! An agent's registration with the origin: a heartbeat every few
//! seconds (which also renews the node certificate when it is due: see
//! `renew`), and what the agent says when it is not let in.
//!
//! A certificate from another cluster CA (or a revoked one) never gets
//! better by waiting: the agent says so at once, at error level, with
//! what to do, and reports its state so `strata agent` can give up after
//! `--register-timeout` (a supervisor then restarts it, and people see
//! it). An origin that is down is only waited for. Never exits the
//! process itself.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::node::Node;
use super::wire::{Request, Response};

/// How often an agent registers (its heartbeat).
pub const EVERY: Duration = Duration::from_secs(3);
/// How long one registration may take.
const TIMEOUT: Duration = Duration::from_secs(2);

/// Where registration stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Not yet tried, or the origin did not answer yet: `why`.
    Pending(String),
    Registered,
    /// The origin will not let this agent in as it is: `why`, with what
    /// to do.
    Refused(String),
}

/// Why a registration failed, from the error it failed with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The handshake failed over a certificate (either side's).
    Certificate,
    /// No answer: the origin is down or unreachable.
    Unreachable,
}

/// Sorts a failure by its text (quinn and rustls errors carry no more
/// structure across `NodeError::Peer`): TLS alerts and certificate errors
/// are about certificates, anything else is the network.
pub fn diagnose(error: &str) -> Problem {
    const CERT: [&str; 5] = [
        "invalid peer certificate",
        "cryptographic handshake failed",
        "received fatal alert",
        "certificate",
        "Certificate",
    ];
    if CERT.iter().any(|c| error.contains(c)) {
        Problem::Certificate
    } else {
        Problem::Unreachable
    }
}

/// What the agent says when the handshake with the origin fails over a
/// certificate.
pub fn certificate_advice(origin: SocketAddr, name: &str, certs: &str, error: &str) -> String {
    let revoked = error.contains("Revoked") || error.contains("revoked");
    let expired = error.contains("Expired") || error.contains("expired");
    let cause = if revoked {
        "revoked (strata cluster revoke)"
    } else if expired {
        "expired"
    } else {
        "issued by another cluster CA?"
    };
    format!(
        "the origin at {origin} refused this agent's certificate, or this agent refused the origin's ({cause}): {error}; \
         get a new one: remove {certs}/{name}.pem and start the agent with --join TOKEN (strata cluster token on the server), \
         or copy in what `strata cluster issue {name}` makes from the origin's cluster CA"
    )
}

/// Registers `node` with `origin` now and every `EVERY`, for as long as
/// the task runs, publishing its state on `status` and logging each
/// change (refusals at error level, at once).
pub async fn keep_registered(
    node: Arc<Node>,
    origin: SocketAddr,
    register: Request,
    certs: std::path::PathBuf,
    status: tokio::sync::watch::Sender<Status>,
) {
    let name = match &register {
        Request::Register { node, .. } => node.clone(),
        _ => String::new(),
    };
    let certs_shown = certs.display().to_string();
    loop {
        // A certificate with less than a third of its life left is
        // renewed first (a failure is said, and tried again next time).
        if let Err(e) = super::renew::renew_if_due(&node, origin, &certs, &name).await {
            tracing::error!("p2p: {e}");
        }
        let now = match tokio::time::timeout(TIMEOUT, node.ask(origin, &register)).await {
            Ok(Ok((Response::Ok, _))) => Status::Registered,
            Ok(Ok((Response::Error { message }, _))) => Status::Refused(format!(
                "the origin at {origin} refused to register `{name}`: {message}"
            )),
            Ok(Ok((other, _))) => Status::Pending(format!("the origin at {origin} answered {other:?}")),
            Ok(Err(e)) => {
                let e = e.to_string();
                match diagnose(&e) {
                    Problem::Certificate => {
                        Status::Refused(certificate_advice(origin, &name, &certs_shown, &e))
                    }
                    _ => Status::Pending(format!("the origin at {origin} is not reachable: {e}")),
                }
            }
            Err(_) => Status::Pending(format!(
                "the origin at {origin} did not answer within {TIMEOUT:?}"
            )),
        };
        let changed = *status.borrow() != now;
        if changed {
            match &now {
                Status::Registered => {
                    tracing::info!("p2p: registered with the origin at {origin} as `{name}`")
                }
                Status::Refused(why) => tracing::error!("p2p: {why}"),
                Status::Pending(why) => tracing::warn!("p2p: not registered: {why}"),
            }
        }
        status.send_replace(now);
        tokio::time::sleep(EVERY).await;
    }
}

/// Waits until `status` says registered. The last reason it was not comes
/// back when `limit` passes first (`None`: wait for ever).
pub async fn wait_registered(
    mut status: tokio::sync::watch::Receiver<Status>,
    limit: Option<Duration>,
) -> Result<(), String> {
    let until = async {
        loop {
            if *status.borrow_and_update() == Status::Registered {
                return;
            }
            if status.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    };
    match limit {
        None => {
            until.await;
            Ok(())
        }
        Some(limit) => match tokio::time::timeout(limit, until).await {
            Ok(()) => Ok(()),
            Err(_) => Err(match &*status.borrow() {
                Status::Pending(why) | Status::Refused(why) => why.clone(),
                Status::Registered => "registered just now".into(),
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_failures_are_told_from_a_missing_origin() {
        let bad = "127.0.0.1:5001: the cryptographic handshake failed: error 51: invalid peer certificate: BadSignature";
        assert_eq!(diagnose(bad), Problem::Certificate);
        assert_eq!(diagnose("received fatal alert: UnknownCA"), Problem::Certificate);
        assert_eq!(
            diagnose("127.0.0.1:5001: no answer within 2s"),
            Problem::Unreachable
        );
        let a = certificate_advice("10.0.0.1:5001".parse().unwrap(), "h7", "/etc/p2p", bad);
        assert!(
            a.contains("another cluster CA") && a.contains("/etc/p2p/h7.pem"),
            "{a}"
        );
        let r = certificate_advice(
            "10.0.0.1:5001".parse().unwrap(),
            "h7",
            "c",
            "alert: CertificateRevoked",
        );
        assert!(r.contains("revoked"), "{r}");
    }
}
