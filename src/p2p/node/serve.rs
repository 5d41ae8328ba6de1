//! Serving: a task per connection and per stream (one bad peer or stream
//! never ends the accept loop), the asker's name taken from its
//! certificate (a message that speaks for another node, or comes from a
//! revoked one, is refused), answers to requests, and the pieces this
//! node can send: held in the store, in a partial download, or still
//! arriving (forwarded as they come, cut short when they fail here). A
//! piece is sent only as read back from disk or as it arrives; its last
//! byte waits for the hash check here.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::cache::InUse;
use super::{CUT_SHORT, Inner, NOT_HERE};
use crate::digest::Digest;
use crate::p2p::Bitfield;
use crate::p2p::pieces::{DEFAULT_PIECE, Partial};
use crate::p2p::relay::{self, Arriving, Flow};
use crate::p2p::wire::{Request, Response, read_msg, write_msg};

/// How long a forward whose source failed waits for a verified copy.
const CUT_GRACE: Duration = Duration::from_millis(500);

/// A piece body to send: read from disk, or still arriving. Both go to
/// quinn as `Bytes`, which it keeps as they are (no copy into its send
/// buffer, unlike a slice).
pub(super) enum Body {
    Bytes(Bytes),
    Arriving {
        piece: Arc<Arriving>,
        blob: Digest,
        index: usize,
    },
}

impl Body {
    pub(super) fn len(&self) -> usize {
        match self {
            Body::Bytes(b) => b.len(),
            Body::Arriving { piece, .. } => piece.len(),
        }
    }
}

/// Why a piece could not be read for a peer.
pub(super) enum Unread {
    /// Not (or no longer) here: the asker should try another holder.
    NotHere(String),
    Failed(String),
}

/// `announced` with an unspecified IP replaced by the IP the message came
/// from (the port stays: it is the one the peer listens on).
fn reachable(announced: &str, from: SocketAddr) -> String {
    match announced.parse::<SocketAddr>() {
        Ok(a) if a.ip().is_unspecified() => {
            let ip = match from.ip() {
                std::net::IpAddr::V6(v6) => v6
                    .to_ipv4_mapped()
                    .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
                v4 => v4,
            };
            SocketAddr::new(ip, a.port()).to_string()
        }
        _ => announced.to_string(),
    }
}

impl Inner {
    pub(super) async fn serve_conn(self: Arc<Self>, conn: quinn::Connection) {
        let remote = conn.remote_address();
        // Every message on this connection speaks for this node only.
        let who: Arc<str> = match crate::p2p::identity::peer_name(&conn) {
            Ok(name) => name.into(),
            Err(e) => {
                tracing::warn!("p2p: closing the connection from {remote}: {e}");
                conn.close(2u32.into(), b"no node name in the certificate");
                return;
            }
        };
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            let (node, who) = (self.clone(), who.clone());
            tokio::spawn(async move {
                let mut req: Request = match read_msg(&mut recv).await {
                    Ok(r) => r,
                    Err(_) => return,
                };
                // An agent listening on 0.0.0.0 or [::] announces that
                // address; peers reach it at the address it came from.
                if let Request::Register { addr, .. }
                | Request::Announce { addr, .. }
                | Request::Upstream { addr, .. } = &mut req
                {
                    *addr = reachable(addr, remote);
                }
                let refused = match crate::p2p::identity::check(&who, &req) {
                    Err(e) => Some(e.to_string()),
                    // Revoked while connected: refused from now on.
                    Ok(()) if node.revoked.as_ref().is_some_and(|r| r.contains(&who)) => Some(format!(
                        "the certificate of `{who}` is revoked (strata cluster revoke)"
                    )),
                    Ok(()) => None,
                };
                if let Some(message) = refused {
                    tracing::warn!("p2p: {remote}: {message}");
                    let refused = Response::Error { message };
                    let _ = write_msg(&mut send, &refused).await;
                    let _ = send.finish();
                    return;
                }
                if let Request::Prewarm { image, load } = req {
                    let last = match node.prewarm_here(&image, load, &mut send).await {
                        Ok(()) => Response::Ok,
                        Err(e) => Response::Error {
                            message: e.to_string(),
                        },
                    };
                    let _ = write_msg(&mut send, &last).await;
                    let _ = send.finish();
                    let _ = send.stopped().await;
                    return;
                }
                if let Request::Stream { blob, pieces, have } = req {
                    node.stream_pieces(blob, pieces, &have, &mut send).await;
                    return;
                }
                // Backpressure: a piece request that would wait long for
                // this uplink is refused at once, so the asker goes to
                // another holder instead of queueing here.
                if matches!(req, Request::Piece { .. })
                    && let Some(wait) = node.uplink_full()
                {
                    let busy = Response::Busy {
                        // Rounded up: 0 means "peers hold it" to the asker.
                        retry_ms: wait.as_micros().div_ceil(1000) as u64,
                        message: "the uplink is full; ask another peer".into(),
                    };
                    let _ = write_msg(&mut send, &busy).await;
                    let _ = send.finish();
                    return;
                }
                let (resp, body) = node.answer(req, &who).await;
                if let Some(b) = &body {
                    node.upload_slot(b.len()).await;
                }
                if write_msg(&mut send, &resp).await.is_ok() {
                    if let Some(b) = body {
                        tracing::debug!("p2p: sending a piece to {remote}");
                        if node.send_body(&mut send, b).await.is_err() {
                            return;
                        }
                    }
                    let _ = send.finish();
                    let _ = send.stopped().await;
                }
            });
        }
    }

    /// Answers `req` from the node whose certificate is `from`'s (names
    /// in tracker messages were checked against it). The origin's
    /// messages (registrations, renewals, piece tables and the tracker's)
    /// are answered in `origin`.
    async fn answer(self: &Arc<Self>, req: Request, from: &str) -> (Response, Option<Body>) {
        let err = |m: String| (Response::Error { message: m }, None);
        match req {
            Request::Register {
                node,
                addr,
                zone,
                labels,
            } => (self.register(node, addr, zone, labels), None),
            Request::Renew { csr } => (self.renew(csr, from).await, None),
            Request::Prewarm { .. } => err("prewarm is answered on its own stream".into()),
            Request::Stats => (
                Response::Stats {
                    piece_bytes_served: self.piece_bytes_served.load(Ordering::Relaxed),
                    pieces_served: self.pieces_served.load(Ordering::Relaxed),
                },
                None,
            ),
            Request::Pieces { blob } => (self.pieces(blob).await, None),
            Request::Have { blob } => match self.holding(&blob) {
                Some(h) => (
                    Response::Have {
                        pieces: h.len(),
                        have: h.to_bytes(),
                    },
                    None,
                ),
                None => err(format!("{blob} is not held here")),
            },
            Request::Piece { blob, index } => {
                // The origin sends a piece only while no peer holds it.
                if self.leave_to_peers(&blob, index) {
                    return (
                        Response::Busy {
                            retry_ms: 0,
                            message: "peers hold this piece; ask them".into(),
                        },
                        None,
                    );
                }
                if let Some(body) = self.arriving_body(&blob, index) {
                    let len = body.len() as u64;
                    return (Response::Piece { len }, Some(body));
                }
                let node = self.clone();
                match tokio::task::spawn_blocking(move || node.read_piece(&blob, index)).await {
                    Ok(Ok(bytes)) => (
                        Response::Piece {
                            len: bytes.len() as u64,
                        },
                        Some(Body::Bytes(bytes.into())),
                    ),
                    // Reported (it was arriving), but its download failed:
                    // the asker tries another holder.
                    Ok(Err(Unread::NotHere(why))) => (
                        Response::Busy {
                            retry_ms: NOT_HERE.as_millis() as u64,
                            message: why,
                        },
                        None,
                    ),
                    Ok(Err(Unread::Failed(e))) => err(e),
                    Err(e) => err(e.to_string()),
                }
            }
            Request::Announce {
                blob,
                node,
                addr,
                zone,
                have,
            } => (self.announce(&blob, node, addr, zone, have), None),
            Request::Got { blob, node, index } => (self.got(&blob, node, index), None),
            Request::Peers { blob, node, want } => (self.peers(&blob, node, want), None),
            Request::Gone { blob, peer } => (self.gone(&blob, peer, from), None),
            Request::Upstream {
                blob,
                node,
                addr,
                stripes,
            } => (self.upstream(&blob, node, addr, stripes), None),
            Request::Stream { .. } => err("a stream is answered on its own stream".into()),
        }
    }

    /// Sends a piece's bytes; a piece still arriving goes as it comes and
    /// is cut short (the stream reset with `CUT_SHORT`) when it fails here
    /// and no verified copy that agrees with what went comes within
    /// `CUT_GRACE` (the request that brought it may have been dropped as
    /// a duplicate of one that arrived first, or the chain it came on may
    /// have stalled while the swarm brings it).
    pub(super) async fn send_body(
        self: &Arc<Self>,
        send: &mut quinn::SendStream,
        body: Body,
    ) -> Result<(), relay::Cut> {
        let len = body.len() as u64;
        match body {
            Body::Bytes(b) => send.write_chunk(b).await.map_err(|_| relay::Cut)?,
            Body::Arriving { piece, blob, index } => {
                tracing::debug!("p2p: forwarding a piece still arriving, {:?}", piece.flow());
                let (mut r, mut chunks) = (piece.reader(), Vec::new());
                loop {
                    match r.next(&mut chunks).await {
                        Ok(true) => send.write_all_chunks(&mut chunks).await.map_err(|_| relay::Cut)?,
                        Ok(false) => break,
                        Err(cut) => match self.verified_piece(&blob, index).await {
                            Some(whole) if piece.starts_like(&whole, r.sent()) => {
                                let rest = Bytes::from(whole).slice(r.sent()..);
                                send.write_chunk(rest).await.map_err(|_| relay::Cut)?;
                                break;
                            }
                            _ => {
                                let _ = send.reset(CUT_SHORT.into());
                                return Err(cut);
                            }
                        },
                    }
                }
            }
        }
        self.piece_bytes_served.fetch_add(len, Ordering::Relaxed);
        self.pieces_served.fetch_add(1, Ordering::Relaxed);
        crate::metrics::P2P_BYTES_SERVED.add(len);
        Ok(())
    }

    /// Piece `index` of `blob`, once it is held here (verified), waiting
    /// up to `CUT_GRACE` for it.
    async fn verified_piece(self: &Arc<Self>, blob: &Digest, index: usize) -> Option<Vec<u8>> {
        let until = Instant::now() + CUT_GRACE;
        loop {
            let news = self.news.notified();
            tokio::pin!(news);
            news.as_mut().enable();
            let (node, b) = (self.clone(), blob.clone());
            if let Ok(Ok(bytes)) = tokio::task::spawn_blocking(move || node.read_piece(&b, index)).await {
                return Some(bytes);
            }
            let left = until.checked_duration_since(Instant::now())?;
            let _ = tokio::time::timeout(left.min(Duration::from_millis(50)), news).await;
        }
    }

    /// The pieces of `blob` this node holds (or is receiving), if any.
    pub(super) fn holding(&self, blob: &Digest) -> Option<Bitfield> {
        if let Some(p) = self.partial(blob) {
            let have = p.lock().unwrap_or_else(|e| e.into_inner()).have().clone();
            return Some(self.with_arriving(blob, have));
        }
        if self.store.has(blob) {
            let size = self.store.size(blob).ok()?;
            return Some(Bitfield::full(size.div_ceil(DEFAULT_PIECE) as usize));
        }
        None
    }

    /// Piece `index` of `blob` while it arrives here (and has not failed),
    /// to forward as it comes.
    pub(super) fn arriving_body(&self, blob: &Digest, index: usize) -> Option<Body> {
        let arriving = self.arriving.lock().unwrap_or_else(|e| e.into_inner());
        let piece = arriving.get(&(blob.clone(), index))?;
        (piece.flow() != Flow::Failed).then(|| Body::Arriving {
            piece: piece.clone(),
            blob: blob.clone(),
            index,
        })
    }

    /// `have` and the pieces of `blob` arriving now.
    pub(super) fn with_arriving(&self, blob: &Digest, mut have: Bitfield) -> Bitfield {
        let arriving = self.arriving.lock().unwrap_or_else(|e| e.into_inner());
        for (b, i) in arriving.keys() {
            if b == blob && *i < have.len() {
                have.set(*i);
            }
        }
        have
    }

    /// The download of `blob` in progress here, if any.
    fn partial(&self, blob: &Digest) -> Option<Arc<Mutex<Partial>>> {
        self.partials
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(blob)
            .cloned()
    }

    pub(super) fn read_piece(&self, blob: &Digest, index: usize) -> Result<Vec<u8>, Unread> {
        if let Some(p) = self.partial(blob) {
            let p = p.lock().unwrap_or_else(|e| e.into_inner());
            if !p.have().get(index) {
                return Err(Unread::NotHere(format!(
                    "piece {index} of {blob} is not held here"
                )));
            }
            return p.read_piece(index).map_err(|e| Unread::Failed(e.to_string()));
        }
        if !self.store.has(blob) {
            return Err(Unread::Failed(format!("{blob} is not held here")));
        }
        use std::os::unix::fs::FileExt;
        let _in_use = InUse::new(self, blob);
        let failed = |e: std::io::Error| Unread::Failed(e.to_string());
        let f = self
            .store
            .open_blob(blob)
            .map_err(|e| Unread::Failed(e.to_string()))?;
        // Recently served blobs are the last to be evicted.
        let _ = f.set_modified(std::time::SystemTime::now());
        let size = f.metadata().map_err(failed)?.len();
        let start = index as u64 * DEFAULT_PIECE;
        if start >= size {
            return Err(Unread::Failed(format!("{blob} has no piece {index}")));
        }
        let mut buf = vec![0u8; (size - start).min(DEFAULT_PIECE) as usize];
        f.read_exact_at(&mut buf, start).map_err(failed)?;
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::reachable;

    #[test]
    fn unspecified_addresses_become_the_sender_s() {
        let from: std::net::SocketAddr = "10.97.0.7:41000".parse().unwrap();
        assert_eq!(reachable("0.0.0.0:5001", from), "10.97.0.7:5001");
        assert_eq!(reachable("[::]:5001", from), "10.97.0.7:5001");
        assert_eq!(reachable("10.1.1.1:5001", from), "10.1.1.1:5001");
        let v6: std::net::SocketAddr = "[::ffff:10.97.0.8]:41000".parse().unwrap();
        assert_eq!(reachable("0.0.0.0:5001", v6), "10.97.0.8:5001");
    }
}
