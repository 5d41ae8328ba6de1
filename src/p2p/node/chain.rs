//! Chains: the agents of a small cluster stream a blob one from the next
//! (the first from the origin), each piece forwarded as it arrives. The
//! sending side (`stream_pieces`) sends the next agent every piece it
//! lacks, in index order of what is here, held or still arriving; the
//! following side (`follow`) writes each piece once it passed its hash,
//! and ends (for the swarm to take over) when the chain ends short,
//! stalls or sends a bad piece. A piece that failed its hash is never
//! written.
//!
//! Stripes carry the same streams past one chain: in a larger cluster
//! the tracker deals the pieces into stripes and gives each agent a
//! parent per stripe (`stripes::Plan`); the agent follows one stream per
//! stripe, listing the other stripes' pieces as had so the sender skips
//! them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::serve::Body;
use super::{Inner, TRACKER_TIMEOUT};
use crate::digest::Digest;
use crate::p2p::Bitfield;
use crate::p2p::pieces::Partial;
use crate::p2p::wire::{PeerAddr, Request, Response, read_msg, write_msg};

/// A chain that delivered no byte for this long is left for the swarm
/// (`FIRST_BYTE` for its first: every agent before this one must have
/// started and connected).
const STALL: Duration = Duration::from_secs(1);
const FIRST_BYTE: Duration = Duration::from_secs(5);
/// A stream to the next agent of a chain ends after this long without a
/// new piece to send.
const STREAM_IDLE: Duration = Duration::from_secs(10);
/// How many times an agent waits while the tracker gathers the agents
/// fetching a blob (it says how long: half a second at most).
const GATHER_WAITS: u32 = 10;

/// How a chain is going, shared between its task and the download.
pub(super) struct ChainProgress {
    started: Instant,
    /// When the last byte came (micros since `started`; 0: none yet).
    last_byte: AtomicU64,
    pub(super) from_peers: std::sync::atomic::AtomicUsize,
    pub(super) from_origin: std::sync::atomic::AtomicUsize,
    /// Whether the blob comes down stripe trees rather than one chain.
    pub(super) striped: std::sync::atomic::AtomicBool,
}

impl ChainProgress {
    pub(super) fn new(started: Instant) -> ChainProgress {
        ChainProgress {
            last_byte: AtomicU64::new(0),
            started,
            from_peers: Default::default(),
            from_origin: Default::default(),
            striped: Default::default(),
        }
    }

    fn seconds(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    fn moved(&self) {
        let now = self.started.elapsed().as_micros().max(1) as u64;
        self.last_byte.store(now, Ordering::Relaxed);
    }

    /// No byte for `STALL`, or none at all for `FIRST_BYTE`.
    pub(super) fn stalled(&self) -> bool {
        match self.last_byte.load(Ordering::Relaxed) {
            0 => self.started.elapsed() > FIRST_BYTE,
            last => self.started.elapsed().saturating_sub(Duration::from_micros(last)) > STALL,
        }
    }
}

/// Why a chain ended before the blob was whole.
#[derive(Debug)]
pub(super) enum ChainEnd {
    /// No place in a chain (chains off or full, or no tracker).
    None(String),
    /// The stream broke or ended short; the swarm takes over.
    Lost(String),
    /// This peer (or "origin") sent a piece that failed its hash.
    Bad(String),
}

impl std::fmt::Display for ChainEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChainEnd::None(why) => write!(f, "no chain: {why}"),
            ChainEnd::Lost(why) => write!(f, "the chain broke: {why}"),
            ChainEnd::Bad(who) => write!(f, "{who} sent a bad piece"),
        }
    }
}

impl Inner {
    /// Streams to the next agent of a chain every piece of `blob` it lacks
    /// (not in `have`), as this node gets them: the lowest-numbered piece
    /// that is here, held or still arriving (cut-through), each on the
    /// uplink's timeline like any piece. Ends when the asker has them all,
    /// or after `STREAM_IDLE` without anything new (the asker swarms then).
    pub(super) async fn stream_pieces(
        self: &Arc<Self>,
        blob: Digest,
        pieces: usize,
        have: &[u8],
        send: &mut quinn::SendStream,
    ) {
        let Some(mut sent) = Bitfield::from_bytes(pieces, have) else {
            let bad = Response::Error {
                message: format!("the bitfield does not fit {pieces} pieces"),
            };
            let _ = write_msg(send, &bad).await;
            let _ = send.finish();
            return;
        };
        let mut idle_since = Instant::now();
        while !sent.is_full() && !self.closing.load(Ordering::Relaxed) {
            let news = self.news.notified();
            tokio::pin!(news);
            news.as_mut().enable();
            let Some((index, body)) = self.next_to_stream(&blob, &sent).await else {
                if idle_since.elapsed() > STREAM_IDLE {
                    break;
                }
                // Woken by news; the timeout only bounds a missed wake-up.
                let _ = tokio::time::timeout(Duration::from_millis(50), news).await;
                continue;
            };
            sent.set(index);
            self.upload_slot(body.len()).await;
            let head = Response::Next {
                index,
                len: body.len() as u64,
            };
            if write_msg(send, &head).await.is_err() || self.send_body(send, body).await.is_err() {
                return;
            }
            idle_since = Instant::now();
        }
        let _ = send.finish();
        let _ = send.stopped().await;
    }

    /// The lowest-numbered piece of `blob` here (held, or arriving and not
    /// failed) that is not in `sent`.
    async fn next_to_stream(self: &Arc<Self>, blob: &Digest, sent: &Bitfield) -> Option<(usize, Body)> {
        let held = self.holding(blob).filter(|h| h.len() == sent.len())?;
        let index = sent.wanted_from(&held).next()?;
        if let Some(body) = self.arriving_body(blob, index) {
            return Some((index, body));
        }
        let (node, b) = (self.clone(), blob.clone());
        match tokio::task::spawn_blocking(move || node.read_piece(&b, index)).await {
            Ok(Ok(bytes)) => Some((index, Body::Bytes(bytes.into()))),
            _ => None,
        }
    }

    /// Follows a chain: asks the tracker which agent to stream `blob` from
    /// (or the origin), or with a cluster larger than a chain which agent
    /// to stream each stripe from, then takes every piece each sends,
    /// listed as arriving while it comes (so the next agent gets it
    /// cut-through), written once it passed its hash. Ends when the blob
    /// is whole, or with why the swarm must take over.
    pub(super) async fn follow(
        self: Arc<Self>,
        origin: SocketAddr,
        blob: Digest,
        partial: Arc<Mutex<Partial>>,
        chain: Arc<ChainProgress>,
    ) -> Result<(), ChainEnd> {
        let ask = Request::Upstream {
            blob: blob.clone(),
            node: self.name.clone(),
            addr: self.addr.to_string(),
            stripes: true,
        };
        // The tracker may gather the agents fetching the blob first.
        let mut waits = 0;
        let (shift, parents) = loop {
            let answer = tokio::time::timeout(TRACKER_TIMEOUT, self.request(origin, &ask)).await;
            match answer {
                Ok(Ok((Response::Busy { retry_ms, .. }, _))) if waits < GATHER_WAITS => {
                    waits += 1;
                    tokio::time::sleep(Duration::from_millis(retry_ms.clamp(1, 1000))).await;
                }
                Ok(Ok((Response::Upstream { peer }, _))) => break (0, vec![peer]),
                Ok(Ok((Response::Stripes { shift, parents }, _))) if !parents.is_empty() => {
                    break (shift, parents);
                }
                Ok(Ok((Response::Error { message }, _))) => return Err(ChainEnd::None(message)),
                Ok(Ok((other, _))) => return Err(ChainEnd::None(format!("unexpected answer {other:?}"))),
                Ok(Err(e)) => return Err(ChainEnd::None(e.to_string())),
                Err(_) => return Err(ChainEnd::None("the tracker did not answer".into())),
            }
        };
        let stripes = parents.len();
        if stripes > 1 {
            chain.striped.store(true, Ordering::Relaxed);
            tracing::debug!("p2p: streaming {blob} in {stripes} stripes");
        }
        // Every stripe at once; the first bad piece ends them all (the
        // swarm bans its sender), a stripe that breaks leaves its pieces
        // to the swarm once the others are done.
        let mut streams = tokio::task::JoinSet::new();
        for (k, peer) in parents.into_iter().enumerate() {
            let stripe = Stripe { k, stripes, shift };
            let (node, blob, partial, chain) = (self.clone(), blob.clone(), partial.clone(), chain.clone());
            streams.spawn(async move { node.follow_one(origin, blob, partial, chain, peer, stripe).await });
        }
        let mut lost = None;
        while let Some(ended) = streams.join_next().await {
            match ended {
                Ok(Ok(())) => {}
                Ok(Err(bad @ ChainEnd::Bad(_))) => return Err(bad),
                Ok(Err(e)) => lost = lost.or(Some(e)),
                Err(e) => lost = lost.or(Some(ChainEnd::Lost(e.to_string()))),
            }
        }
        lost.map_or(Ok(()), Err)
    }

    /// Streams the pieces of one stripe of `blob` (all of them with one
    /// stripe: a chain) from `peer` (None: the origin).
    async fn follow_one(
        self: Arc<Self>,
        origin: SocketAddr,
        blob: Digest,
        partial: Arc<Mutex<Partial>>,
        chain: Arc<ChainProgress>,
        peer: Option<PeerAddr>,
        stripe: Stripe,
    ) -> Result<(), ChainEnd> {
        let have = || partial.lock().unwrap_or_else(|e| e.into_inner()).have().clone();
        let (name, addr) = match &peer {
            Some(p) => match p.addr.parse() {
                Ok(a) => (p.name.clone(), a),
                Err(_) => return Err(ChainEnd::None(format!("{} at {:?}", p.name, p.addr))),
            },
            None => ("origin".to_string(), origin),
        };
        let lost = |why: String| ChainEnd::Lost(format!("{name}: {why}"));
        let conn = self.connection(addr).await.map_err(|e| lost(e.to_string()))?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| lost(e.to_string()))?;
        // Pieces of other stripes count as had: the sender skips them.
        let own = stripe.as_had(have());
        let n = own.len();
        let complete = || stripe.as_had(have()).is_full();
        let req = Request::Stream {
            blob: blob.clone(),
            pieces: n,
            have: own.to_bytes(),
        };
        write_msg(&mut send, &req)
            .await
            .map_err(|e| lost(e.to_string()))?;
        let _ = send.finish();
        tracing::debug!(
            "p2p: streaming {blob} (stripe {} of {}) from {name}",
            stripe.k,
            stripe.stripes
        );
        loop {
            let (index, len) = match read_msg(&mut recv).await {
                Ok(Response::Next { index, len }) => (index, len as usize),
                Ok(Response::Error { message }) => return Err(lost(message)),
                Ok(other) => return Err(lost(format!("unexpected answer {other:?}"))),
                Err(_) if complete() => return Ok(()),
                Err(e) => return Err(lost(e.to_string())),
            };
            // A piece number past the blob, or of another stripe, is a
            // lie, not a range to compute.
            if index >= n || !stripe.holds(index) {
                return Err(ChainEnd::Bad(name));
            }
            let expected = partial
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .table
                .range(index)
                .1;
            if len as u64 != expected {
                return Err(ChainEnd::Bad(name));
            }
            self.download_slot().await;
            let (bytes, receiving) = match self
                .take_piece(origin, &blob, index, len, &mut recv, || chain.moved())
                .await
            {
                Ok(taken) => taken,
                Err(Some(e)) => return Err(lost(e.to_string())),
                Err(None) => return Err(lost(format!("piece {index} ended early"))),
            };
            // Counted with the write itself: this task may be aborted (a
            // stall) while the write goes on.
            let counted = (chain.clone(), peer.is_none());
            match self
                .write_taken(&partial, index, bytes, receiving, Some(counted))
                .await
            {
                Ok(true) => {
                    tracing::debug!("p2p: piece {index} from {name} at {:.3}", chain.seconds());
                }
                Ok(false) => {}
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => return Err(ChainEnd::Bad(name)),
                Err(e) => return Err(lost(e.to_string())),
            }
        }
    }
}

/// One stripe of a blob's pieces: piece i is in stripe (i + shift) mod
/// stripes. A chain is the one stripe of every piece.
#[derive(Debug, Clone, Copy)]
struct Stripe {
    k: usize,
    stripes: usize,
    shift: usize,
}

impl Stripe {
    fn holds(&self, piece: usize) -> bool {
        (piece + self.shift) % self.stripes == self.k
    }

    /// `have` with every piece of the other stripes set.
    fn as_had(&self, mut have: Bitfield) -> Bitfield {
        for i in (0..have.len()).filter(|&i| !self.holds(i)) {
            have.set(i);
        }
        have
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripes_deal_every_piece_to_exactly_one() {
        let (pieces, stripes, shift) = (23, 5, 3);
        let all: Vec<Stripe> = (0..stripes).map(|k| Stripe { k, stripes, shift }).collect();
        for i in 0..pieces {
            assert_eq!(all.iter().filter(|s| s.holds(i)).count(), 1, "piece {i}");
        }
        let had = all[2].as_had(Bitfield::with(pieces, &[4]));
        let missing: Vec<usize> = (0..pieces).filter(|&i| !had.get(i)).collect();
        assert_eq!(missing, vec![9, 14, 19], "stripe 2's pieces but 4, which is had");
        let chain = Stripe {
            k: 0,
            stripes: 1,
            shift: 0,
        };
        assert!((0..pieces).all(|i| chain.holds(i)));
        assert!(!chain.as_had(Bitfield::new(pieces)).get(0));
    }
}
