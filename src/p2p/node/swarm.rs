//! The swarm: the download loop that runs once a blob's partial is open.
//! It follows a chain first (`chain`); without one, or once the chain
//! ends short or stalls, it picks pieces with the `picker` among the
//! peers the tracker hands out (refreshed in the background), asks the
//! origin only for pieces no peer holds, leaves a busy holder alone for
//! the time it names, and bans a peer that sent a piece that failed its
//! hash. The tracker is told without waiting: a slow or absent tracker
//! never holds up a download.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::task::JoinSet;

use super::chain::{ChainEnd, ChainProgress};
use super::fetch::{FetchReport, Receiving, fetch_err};
use super::{CUT_SHORT, Inner, NOT_HERE, REQUEST_TIMEOUT, Result, TRACKER_TIMEOUT};
use crate::digest::Digest;
use crate::p2p::Bitfield;
use crate::p2p::picker::{PeerView, pick, unseeded};
use crate::p2p::pieces::Partial;
use crate::p2p::rng::Rng;
use crate::p2p::wire::{Request, Response, read_msg, write_msg};

/// Requests in flight to one peer, and in all.
const PER_PEER: u32 = 1;
const IN_FLIGHT: usize = 10;
/// A holder that answered "busy" is not asked again for the time it named,
/// within these bounds.
const MIN_COOLDOWN: Duration = Duration::from_millis(5);
const MAX_COOLDOWN: Duration = Duration::from_millis(500);
/// How long a peer that sent a bad piece is not asked again.
const BAN: Duration = Duration::from_secs(120);
/// How often a downloading agent sends the tracker all it holds.
const ANNOUNCE_EVERY: Duration = Duration::from_secs(1);

/// A piece request's outcome: who was asked (None: the origin), which
/// piece, its bytes (and their entry among the arriving pieces, until
/// they are written) or why not.
type PieceResult = (
    Option<String>,
    usize,
    Result<(Vec<Bytes>, Option<Receiving>), PieceError>,
);

/// Why a piece did not come.
enum PieceError {
    /// The holder is busy; ask it again after this long (zero: after the
    /// next refresh of who holds what).
    Busy(Duration),
    /// Unreachable, or not holding what it said.
    Failed(String),
}

/// What a background refresh learnt: the pieces some peer holds (from
/// the tracker) and each peer's pieces (None: it did not answer).
struct Refresh {
    seeded: Option<Bitfield>,
    haves: Vec<(String, SocketAddr, Option<Bitfield>)>,
}

impl Inner {
    pub(super) async fn download(
        self: &Arc<Self>,
        origin: SocketAddr,
        blob: &Digest,
        partial: &Arc<Mutex<Partial>>,
        report: &mut FetchReport,
    ) -> Result<()> {
        let n = report.pieces;
        let have = |p: &Arc<Mutex<Partial>>| p.lock().unwrap_or_else(|e| e.into_inner()).have().clone();
        let piece_len =
            |i: usize| partial.lock().unwrap_or_else(|e| e.into_inner()).table.range(i).1 as usize;
        let origin_have = Bitfield::full(n);
        // Known peers: name → (addr, their pieces, requests in flight).
        let mut peers: HashMap<String, (SocketAddr, Bitfield, u32)> = HashMap::new();
        let mut banned: HashMap<String, Instant> = HashMap::new();
        // Pieces some peer holds (the tracker's word): the origin serves
        // only the others.
        let mut seeded = Bitfield::new(n);
        let mut pending = Bitfield::new(n);
        let mut origin_load = 0u32;
        let mut rng = Rng::new(
            u64::from_le_bytes(blob.hex().as_bytes()[..8].try_into().unwrap_or([0; 8]))
                ^ self.addr.port() as u64,
        );
        let mut tasks: JoinSet<PieceResult> = JoinSet::new();
        let mut last_refresh: Option<Instant> = None;
        let mut last_announce: Option<Instant> = None;
        let mut refreshing: Option<tokio::task::JoinHandle<Refresh>> = None;
        let started = Instant::now();
        // Peers that answered "busy", and until when they are left alone.
        let mut cooldown: HashMap<String, Instant> = HashMap::new();
        let mut origin_cooldown = Instant::now();
        let deadline = Instant::now() + Duration::from_secs(3600);
        // First follow a chain, if the tracker gives this agent a place in
        // one; the swarm below takes over when it ends short or stalls.
        let chain = Arc::new(ChainProgress::new(started));
        let mut following = Some(tokio::spawn(self.clone().follow(
            origin,
            blob.clone(),
            partial.clone(),
            chain.clone(),
        )));
        while !have(partial).is_full() {
            if Instant::now() > deadline {
                return Err(fetch_err(blob, "no completion within an hour"));
            }
            if let Some(h) = following.take_if(|h| h.is_finished()) {
                match h.await {
                    Ok(Ok(())) => {}
                    Ok(Err(ChainEnd::Bad(who))) => {
                        tracing::warn!("p2p: {who} streamed a bad piece of {blob}; banned");
                        let peer = (who != "origin").then_some(&mut peers);
                        self.ban(origin, blob, who, report, &mut banned, peer).await;
                    }
                    Ok(Err(e @ ChainEnd::None(_))) => tracing::debug!("p2p: {blob}: swarming ({e})"),
                    Ok(Err(e)) => tracing::info!("p2p: {blob}: swarming ({e})"),
                    Err(e) => tracing::debug!("p2p: {blob}: the chain task: {e}"),
                }
            } else if let Some(h) = following.take_if(|_| chain.stalled()) {
                tracing::info!("p2p: {blob}: the chain stalled; swarming");
                h.abort();
            }
            // On a chain, the tracker is told and asked once a second: it
            // keeps what this agent holds (for other agents and the hosts
            // page), and this agent knows peers to swarm with should the
            // chain break after the origin is gone.
            let refresh_every = if following.is_some() {
                ANNOUNCE_EVERY
            } else {
                Duration::from_millis(100)
            };
            // Refresh in the background: learn peers and what they hold
            // from the tracker, without stalling the requests in flight.
            // Announce in full now and then: the tracker learns of each new
            // piece from `Got`, which is sent without waiting and may be lost.
            if refreshing.is_none() && last_refresh.is_none_or(|t| t.elapsed() > refresh_every) {
                last_refresh = Some(Instant::now());
                if last_announce.is_none_or(|t| t.elapsed() > ANNOUNCE_EVERY) {
                    last_announce = Some(Instant::now());
                    self.tell(
                        origin,
                        Request::Announce {
                            blob: blob.clone(),
                            node: self.name.clone(),
                            addr: self.addr.to_string(),
                            zone: self.zone,
                            have: self.with_arriving(blob, have(partial)).to_bytes(),
                        },
                    )
                    .await;
                }
                let known: Vec<(String, SocketAddr)> = peers.iter().map(|(k, v)| (k.clone(), v.0)).collect();
                let (node, b) = (self.clone(), blob.clone());
                refreshing = Some(tokio::spawn(
                    async move { node.refresh(origin, b, n, known).await },
                ));
            }
            if refreshing.as_ref().is_some_and(|h| h.is_finished())
                && let Some(h) = refreshing.take()
            {
                let r = h.await.map_err(|e| fetch_err(blob, e))?;
                if let Some(b) = r.seeded {
                    seeded = b;
                }
                let mut gone = Vec::new();
                for (name, addr, answer) in r.haves {
                    if name == self.name || banned.get(&name).is_some_and(|t| t.elapsed() < BAN) {
                        continue;
                    }
                    match answer {
                        Some(b) => {
                            peers.entry(name).or_insert((addr, Bitfield::new(n), 0)).1 = b;
                        }
                        None => gone.push(name),
                    }
                }
                for name in gone {
                    if peers.remove(&name).is_some() {
                        self.tell(
                            origin,
                            Request::Gone {
                                blob: blob.clone(),
                                peer: name,
                            },
                        )
                        .await;
                    }
                }
            }
            if following.is_some() {
                // Woken by a piece written, so the last one ends the
                // download at once (a mirror's client waits for that end
                // to get its last piece); the timeout bounds a missed
                // wake-up.
                let _ = tokio::time::timeout(Duration::from_millis(20), self.news.notified()).await;
                continue;
            }
            // Fill the request slots.
            let own = have(partial);
            while tasks.len() < IN_FLIGHT {
                let names: Vec<&String> = peers.keys().collect();
                let views: Vec<PeerView<'_>> = names
                    .iter()
                    .map(|name| {
                        let (_, b, load) = &peers[*name];
                        PeerView {
                            have: b,
                            free: *load < PER_PEER
                                && cooldown.get(*name).is_none_or(|t| *t <= Instant::now()),
                            load: *load,
                            origin: false,
                        }
                    })
                    .chain(std::iter::once(PeerView {
                        have: &origin_have,
                        free: origin_load < PER_PEER && origin_cooldown <= Instant::now(),
                        load: origin_load,
                        origin: true,
                    }))
                    .collect();
                let origin_ok = |i: usize| !seeded.get(i);
                let Some((idx, piece)) = pick(&own, &pending, &views, &origin_ok, &mut rng) else {
                    break;
                };
                let target = if idx == names.len() {
                    None
                } else {
                    Some(names[idx].clone())
                };
                drop(views);
                let addr = match &target {
                    Some(name) => {
                        let e = peers.get_mut(name).expect("picked from the map");
                        e.2 += 1;
                        e.0
                    }
                    None => {
                        origin_load += 1;
                        origin
                    }
                };
                pending.set(piece);
                let len = piece_len(piece);
                tasks.spawn(
                    self.clone()
                        .piece_from(origin, addr, target, blob.clone(), piece, len),
                );
            }
            // Keep the origin busy with pieces no peer holds yet.
            if origin_load == 0
                && origin_cooldown <= Instant::now()
                && tasks.len() < IN_FLIGHT + 1
                && let Some(piece) = unseeded(&own, &pending, &|i| !seeded.get(i), &mut rng)
            {
                origin_load += 1;
                pending.set(piece);
                let len = piece_len(piece);
                tasks.spawn(
                    self.clone()
                        .piece_from(origin, origin, None, blob.clone(), piece, len),
                );
            }
            if tasks.is_empty() {
                // Nothing to ask anyone right now: wait for the swarm.
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            let Ok(Some(joined)) = tokio::time::timeout(Duration::from_millis(20), tasks.join_next()).await
            else {
                continue;
            };
            let (target, piece, result) = joined.map_err(|e| fetch_err(blob, e))?;
            match &target {
                Some(name) => {
                    if let Some(e) = peers.get_mut(name) {
                        e.2 = e.2.saturating_sub(1);
                    }
                }
                None => origin_load = origin_load.saturating_sub(1),
            }
            pending.unset(piece);
            match result {
                Ok((parts, receiving)) => {
                    let len = parts.iter().map(Bytes::len).sum::<usize>() as u64;
                    // Ok(false): an endgame duplicate.
                    match self.write_taken(partial, piece, parts, receiving, None).await {
                        Ok(true) => {
                            tracing::debug!(
                                "p2p: piece {piece} from {} at {:.3}",
                                target.as_deref().unwrap_or("origin"),
                                started.elapsed().as_secs_f64()
                            );
                            match &target {
                                Some(name) => {
                                    report.from_peers += 1;
                                    crate::metrics::P2P_BYTES_FROM_PEERS.add(len);
                                    if let Some(e) = peers.get_mut(name) {
                                        e.1.set(piece);
                                    }
                                }
                                None => {
                                    report.from_origin += 1;
                                    crate::metrics::P2P_BYTES_FROM_ORIGIN.add(len);
                                }
                            }
                        }
                        Ok(false) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                            // A piece that fails its hash: ban whoever sent it.
                            let who = target.clone().unwrap_or_else(|| "origin".into());
                            tracing::warn!("p2p: {who} sent a bad piece {piece} of {blob}; banned");
                            let peer = target.is_some().then_some(&mut peers);
                            self.ban(origin, blob, who, report, &mut banned, peer).await;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                Err(PieceError::Busy(wait)) => {
                    tracing::debug!("p2p: piece {piece} from {target:?}: busy for {wait:?}");
                    let until = Instant::now() + wait.clamp(MIN_COOLDOWN, MAX_COOLDOWN);
                    match &target {
                        Some(name) => {
                            cooldown.insert(name.clone(), until);
                        }
                        // Peers hold it: learn who.
                        None if wait.is_zero() => last_refresh = None,
                        None => origin_cooldown = until,
                    }
                }
                Err(PieceError::Failed(why)) => {
                    tracing::debug!("p2p: piece {piece} from {target:?}: {why}");
                    if let Some(name) = target {
                        // Unreachable or not holding what it said: forget it.
                        peers.remove(&name);
                        self.tell(
                            origin,
                            Request::Gone {
                                blob: blob.clone(),
                                peer: name,
                            },
                        )
                        .await;
                    }
                }
            }
        }
        // Drain duplicates still in flight.
        tasks.abort_all();
        if let Some(h) = following {
            h.abort();
        }
        report.from_peers += chain.from_peers.load(Ordering::Relaxed);
        report.from_origin += chain.from_origin.load(Ordering::Relaxed);
        Ok(())
    }

    /// Requests one piece (`len` bytes) from `addr` (`target`: the peer's
    /// name, None for the origin), after its slot under the download cap.
    async fn piece_from(
        self: Arc<Self>,
        origin: SocketAddr,
        addr: SocketAddr,
        target: Option<String>,
        blob: Digest,
        piece: usize,
        len: usize,
    ) -> PieceResult {
        self.download_slot().await;
        let work = self.receive(origin, addr, &blob, piece, len);
        let r = match tokio::time::timeout(REQUEST_TIMEOUT, work).await {
            Ok(r) => r,
            Err(_) => Err(PieceError::Failed(format!("{addr}: no answer in time"))),
        };
        (target, piece, r)
    }

    /// One piece's bytes from `addr`. They are listed among the arriving
    /// pieces as they come in, so peers may ask for them before they are
    /// whole, and the tracker hears of the piece at its first byte.
    async fn receive(
        self: &Arc<Self>,
        origin: SocketAddr,
        addr: SocketAddr,
        blob: &Digest,
        piece: usize,
        len: usize,
    ) -> Result<(Vec<Bytes>, Option<Receiving>), PieceError> {
        let failed = |why: String| PieceError::Failed(format!("{addr}: {why}"));
        let conn = self
            .connection(addr)
            .await
            .map_err(|e| PieceError::Failed(e.to_string()))?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| failed(e.to_string()))?;
        let req = Request::Piece {
            blob: blob.clone(),
            index: piece,
        };
        write_msg(&mut send, &req)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let _ = send.finish();
        match read_msg(&mut recv).await.map_err(|e| failed(e.to_string()))? {
            Response::Piece { len: l } if l == len as u64 => {}
            Response::Piece { len: l } => {
                return Err(failed(format!("piece {piece} of {l} bytes, not {len}")));
            }
            Response::Busy { retry_ms, .. } => return Err(PieceError::Busy(Duration::from_millis(retry_ms))),
            Response::Error { message } => return Err(PieceError::Failed(message)),
            other => return Err(failed(format!("unexpected answer {other:?}"))),
        }
        match self.take_piece(origin, blob, piece, len, &mut recv, || {}).await {
            Ok(taken) => Ok(taken),
            // The forwarder's own download of it failed: not its fault.
            Err(Some(quinn::ReadError::Reset(code))) if code == CUT_SHORT.into() => {
                Err(PieceError::Busy(NOT_HERE))
            }
            Err(Some(e)) => Err(failed(e.to_string())),
            Err(None) => Err(failed(format!("piece {piece} ended early"))),
        }
    }

    /// Asks the tracker for peers and what they hold. The tracker knows
    /// every piece a peer announced or reported (held, or arriving and
    /// forwarded as it comes), so its answer is not ahead of the peer
    /// (but for a piece whose download failed there, which the peer
    /// answers with `Busy` until its next full announce); only a peer handed out without a bitfield
    /// is asked itself. Known peers the tracker did not hand out this time
    /// keep what was learnt of them before. When the tracker does not
    /// answer (the origin is gone), every known peer is asked instead, so
    /// the swarm finishes without it. A peer that does not answer comes
    /// back with `None`.
    async fn refresh(
        self: Arc<Self>,
        origin: SocketAddr,
        blob: Digest,
        n: usize,
        known: Vec<(String, SocketAddr)>,
    ) -> Refresh {
        let asked = Request::Peers {
            blob: blob.clone(),
            node: self.name.clone(),
            want: 16,
        };
        let mut out = Refresh {
            seeded: None,
            haves: Vec::new(),
        };
        let mut ask = Vec::new();
        if let Ok(Ok((Response::Peers { peers, seeded }, _))) =
            tokio::time::timeout(TRACKER_TIMEOUT, self.request(origin, &asked)).await
        {
            out.seeded = Bitfield::from_bytes(n, &seeded);
            for p in peers {
                let Ok(addr) = p.addr.parse() else { continue };
                match p.have.and_then(|h| Bitfield::from_bytes(n, &h)) {
                    Some(have) => out.haves.push((p.name, addr, Some(have))),
                    None => ask.push((p.name, addr)),
                }
            }
        } else {
            ask = known;
        }
        let mut asks = JoinSet::new();
        for (name, addr) in ask {
            let (node, blob) = (self.clone(), blob.clone());
            asks.spawn(async move { (name, addr, node.request(addr, &Request::Have { blob }).await) });
        }
        while let Some(Ok((name, addr, answer))) = asks.join_next().await {
            let b = match answer {
                Ok((Response::Have { pieces, have }, _)) if pieces == n => Bitfield::from_bytes(n, &have),
                // Holds nothing of it (yet): still a peer.
                Ok(_) => Some(Bitfield::new(n)),
                Err(_) => None,
            };
            out.haves.push((name, addr, b));
        }
        out
    }

    /// Bans `who` (a peer's name, or "origin") for a bad piece of `blob`:
    /// counted, in the report, not asked again for `BAN`, and a peer (with
    /// `peers`, the downloader's known peers) forgotten and reported gone.
    async fn ban(
        self: &Arc<Self>,
        origin: SocketAddr,
        blob: &Digest,
        who: String,
        report: &mut FetchReport,
        banned: &mut HashMap<String, Instant>,
        peers: Option<&mut HashMap<String, (SocketAddr, Bitfield, u32)>>,
    ) {
        crate::metrics::P2P_PIECE_FAILURES.add(1);
        if !report.banned.contains(&who) {
            report.banned.push(who.clone());
        }
        banned.insert(who.clone(), Instant::now());
        if let Some(peers) = peers {
            peers.remove(&who);
            let gone = Request::Gone {
                blob: blob.clone(),
                peer: who,
            };
            self.tell(origin, gone).await;
        }
    }
}
