//! A P2P node over QUIC: serves the pieces it holds, downloads blobs from
//! peers with the [`picker`](super::picker), and — on the origin — keeps
//! the [`tracker`](super::tracker) and seeds from the registry's store.

mod cache;
mod chain;
mod origin;
mod prewarm;
mod serve;
mod uplink;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use chain::{ChainEnd, ChainProgress};
use origin::Tracker;

use super::Bitfield;
use super::picker::{PeerView, pick, unseeded};
use super::pieces::{Partial, Tables};
use super::relay::Arriving;
use super::rng::Rng;
use super::tls::{CLUSTER_NAME, Identity};
use super::wire::{Request, Response, read_msg, write_msg};
use crate::digest::Digest;
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("QUIC endpoint on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] super::tls::TlsError),
    #[error("{addr}: {why}")]
    Peer { addr: SocketAddr, why: String },
    #[error("the origin has no piece table for {blob}: {why}")]
    NoTable { blob: Digest, why: String },
    #[error("fetching {blob}: {why}")]
    Fetch { blob: Digest, why: String },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("prewarm: {0}")]
    Prewarm(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = NodeError> = std::result::Result<T, E>;

/// How a node runs.
pub struct NodeConfig {
    /// This node's name (its certificate's name).
    pub name: String,
    pub zone: u32,
    pub listen: SocketAddr,
    /// Complete blobs live here (for the origin: the registry's store).
    pub store: Store,
    /// Partial downloads.
    pub partial_dir: PathBuf,
    /// Keep the tracker and answer piece-table requests (the origin).
    pub origin: bool,
    pub identity: Identity,
    /// Upload cap in bytes per second (None: unlimited). Pieces are paced
    /// on one timeline, like a link shaped by a token bucket.
    pub upload_rate: Option<f64>,
    /// Download cap in bytes per second (None: unlimited): piece requests
    /// wait for their slot on one timeline.
    pub download_rate: Option<f64>,
    /// Cache watermarks in bytes (high, low): when complete blobs take more
    /// than high, least recently used ones go until they take at most low.
    /// Blobs in use (being served or downloaded) are never evicted.
    pub cache: Option<(u64, u64)>,
    /// On the origin: how many agents of one blob may form a chain (each
    /// streams from the one before it, cut-through); 0 turns chains off
    /// and every agent swarms. See `CHAIN_MAX`.
    pub chain_max: usize,
    /// On the origin: nodes whose certificates are refused, in the
    /// handshake and on every message of a connection already open.
    pub revoked: Option<Arc<super::revoke::Revoked>>,
    /// On the origin with the cluster CA: renews agents' certificates.
    pub authority: Option<super::renew::Authority>,
}

/// Agents per blob that form a chain by default. A chain keeps every link
/// busy with one stream at the full rate, so each agent gets the blob in
/// about S/B plus a few milliseconds per agent before it. With more live
/// agents than this (`LIVE_HOST`), or past this many in the chain, agents
/// swarm: a
/// chain's delay grows with its length, the swarm's with the log of its
/// size, and a chain busy with the origin's uplink would leave agents
/// outside it waiting.
pub const CHAIN_MAX: usize = 64;

/// Requests in flight to one peer, and in all.
const PER_PEER: u32 = 1;
/// A holder that answered "busy" is not asked again for the time it named,
/// within these bounds.
const MIN_COOLDOWN: Duration = Duration::from_millis(5);
const MAX_COOLDOWN: Duration = Duration::from_millis(500);
const IN_FLIGHT: usize = 10;
/// How long a peer that sent a bad piece is not asked again.
const BAN: Duration = Duration::from_secs(120);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const TRACKER_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a downloading agent sends the tracker all it holds.
const ANNOUNCE_EVERY: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Node {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    zone: u32,
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
    store: Store,
    partial_dir: PathBuf,
    partials: Mutex<HashMap<Digest, Arc<Mutex<Partial>>>>,
    tracker: Option<Mutex<Tracker>>,
    conns: tokio::sync::Mutex<HashMap<SocketAddr, quinn::Connection>>,
    piece_bytes_served: AtomicU64,
    pieces_served: AtomicU64,
    upload_rate: Option<f64>,
    /// When the shaped uplink is free again.
    upload_free_at: Mutex<Instant>,
    /// Agents that registered with this origin.
    hosts: Mutex<HashMap<String, (HostInfo, Instant)>>,
    /// What an agent needs to answer a prewarm.
    agent: Mutex<Option<AgentSide>>,
    closing: std::sync::atomic::AtomicBool,
    cache: Option<(u64, u64)>,
    download_rate: Option<f64>,
    download_free_at: Mutex<Instant>,
    /// Blobs being downloaded (one download per blob).
    fetching: Mutex<std::collections::HashSet<Digest>>,
    /// Blobs being read for a peer right now (count of readers).
    in_use: Mutex<HashMap<Digest, usize>>,
    /// Piece tables, one hashing pass each (made when a blob is pushed
    /// or first asked for).
    tables: Tables,
    /// Pieces on their way in, forwarded to peers before they are whole.
    arriving: Mutex<HashMap<(Digest, usize), Arc<Arriving>>>,
    /// Woken when a piece starts arriving or is written (streams wait on it).
    news: tokio::sync::Notify,
    chain_max: usize,
    revoked: Option<Arc<super::revoke::Revoked>>,
    authority: Option<super::renew::Authority>,
    /// What outgoing connections present (replaced by a renewal).
    client: Mutex<quinn::ClientConfig>,
}

/// An agent as the origin knows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HostInfo {
    pub name: String,
    pub addr: String,
    pub zone: u32,
    pub labels: Vec<String>,
    /// Seconds since its last heartbeat.
    pub seen_seconds_ago: f64,
}

/// An agent's link to the origin registry, for prewarms.
#[derive(Clone)]
pub struct AgentSide {
    /// The origin's P2P address.
    pub origin: SocketAddr,
    /// The origin registry's base URL.
    pub upstream: String,
    /// The agent's pull-through registry, for loading into the engine.
    pub mirror: Option<SocketAddr>,
}

/// A piece request's outcome: who was asked (None: the origin), which
/// piece, its bytes (and their entry among the arriving pieces, until
/// they are written) or why not.
type PieceResult = (
    Option<String>,
    usize,
    Result<(Vec<u8>, Option<Receiving>), PieceError>,
);

/// The stream error code of a forward cut short: the piece failed (or
/// its sender vanished) at the forwarder, which is not to blame for it.
const CUT_SHORT: u32 = 1;

/// A piece this node is receiving, listed in `Inner::arriving` while the
/// value lives: peers asking for it get its bytes as they come in. Ends
/// the piece as failed if it is dropped before it was verified.
struct Receiving {
    node: Arc<Inner>,
    key: (Digest, usize),
    piece: Arc<Arriving>,
}

impl Receiving {
    /// Lists the piece as arriving, unless it already is (a duplicate).
    fn start(node: &Arc<Inner>, blob: &Digest, index: usize, len: usize) -> Option<Receiving> {
        let key = (blob.clone(), index);
        let piece = Arc::new(Arriving::new(len));
        let mut map = node.arriving.lock().unwrap_or_else(|e| e.into_inner());
        if map.contains_key(&key) {
            return None;
        }
        map.insert(key.clone(), piece.clone());
        node.news.notify_waiters();
        Some(Receiving {
            node: node.clone(),
            key,
            piece,
        })
    }
}

impl Drop for Receiving {
    fn drop(&mut self) {
        self.piece.end(false);
        let mut map = self.node.arriving.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(&self.key).is_some_and(|p| Arc::ptr_eq(p, &self.piece)) {
            map.remove(&self.key);
        }
    }
}

/// Why a piece did not come.
enum PieceError {
    /// The holder is busy; ask it again after this long (zero: after the
    /// next refresh of who holds what).
    Busy(Duration),
    /// Unreachable, or not holding what it said.
    Failed(String),
}

/// How long to leave a holder alone that does not hold a piece the
/// tracker said it does (its own download of it failed), or whose
/// forward of a piece was cut short.
const NOT_HERE: Duration = Duration::from_millis(100);

/// What a background refresh learnt: the pieces some peer holds (from
/// the tracker) and each peer's pieces (None: it did not answer).
struct Refresh {
    seeded: Option<Bitfield>,
    haves: Vec<(String, SocketAddr, Option<Bitfield>)>,
}

/// What a fetch did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct FetchReport {
    pub pieces: usize,
    /// Verified pieces found on disk from an earlier run.
    pub resumed: usize,
    pub from_origin: usize,
    pub from_peers: usize,
    /// Peers banned for a piece that failed its hash.
    pub banned: Vec<String>,
    /// Blobs evicted from the cache afterwards (least recently used).
    pub evicted: Vec<String>,
    pub seconds: f64,
}

impl Node {
    pub async fn start(cfg: NodeConfig) -> Result<Node> {
        let server = cfg.identity.server_config(cfg.revoked.clone())?;
        let endpoint = quinn::Endpoint::server(server, cfg.listen).map_err(|source| NodeError::Bind {
            addr: cfg.listen,
            source,
        })?;
        let client = Mutex::new(cfg.identity.client_config()?);
        let addr = endpoint.local_addr()?;
        let inner = Arc::new(Inner {
            name: cfg.name,
            zone: cfg.zone,
            endpoint,
            addr,
            store: cfg.store,
            partial_dir: cfg.partial_dir,
            partials: Mutex::new(HashMap::new()),
            tracker: cfg.origin.then(|| Mutex::new(Tracker::default())),
            conns: tokio::sync::Mutex::new(HashMap::new()),
            piece_bytes_served: AtomicU64::new(0),
            pieces_served: AtomicU64::new(0),
            upload_rate: cfg.upload_rate.filter(|r| *r > 0.0),
            upload_free_at: Mutex::new(Instant::now()),
            hosts: Mutex::new(HashMap::new()),
            agent: Mutex::new(None),
            closing: std::sync::atomic::AtomicBool::new(false),
            cache: cfg.cache,
            download_rate: cfg.download_rate.filter(|r| *r > 0.0),
            download_free_at: Mutex::new(Instant::now()),
            in_use: Mutex::new(HashMap::new()),
            fetching: Mutex::new(std::collections::HashSet::new()),
            tables: Tables::default(),
            arriving: Mutex::new(HashMap::new()),
            news: tokio::sync::Notify::new(),
            chain_max: cfg.chain_max,
            revoked: cfg.revoked,
            authority: cfg.authority,
            client,
        });
        inner.evict();
        let serving = inner.clone();
        tokio::spawn(async move {
            while let Some(incoming) = serving.endpoint.accept().await {
                let node = serving.clone();
                tokio::spawn(async move {
                    // A handshake without a cluster certificate fails here.
                    match incoming.await {
                        Ok(conn) => node.serve_conn(conn).await,
                        Err(e) => tracing::info!("p2p: refused a connection: {e}"),
                    }
                });
            }
        });
        Ok(Node { inner })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// What the tracker knows agent `name` holds: each blob it announced
    /// and the percentage of its pieces (the origin only).
    pub fn host_blobs(&self, name: &str) -> Vec<(Digest, f64)> {
        self.inner.host_blobs(name)
    }

    pub fn piece_bytes_served(&self) -> u64 {
        self.inner.piece_bytes_served.load(Ordering::Relaxed)
    }

    /// Makes the piece table of a blob just stored, on a thread of its
    /// own, so the fan-out that follows starts without a hashing pass.
    /// Agents that ask meanwhile wait for this pass. Only the origin
    /// publishes tables; elsewhere this does nothing.
    pub fn prepare(&self, blob: &Digest) {
        if self.inner.tracker.is_none() {
            return;
        }
        let (inner, digest) = (self.inner.clone(), blob.clone());
        let made = std::thread::Builder::new()
            .name("piece-table".into())
            .spawn(move || {
                if let Err(e) = inner.piece_table(&digest) {
                    // Asks for it will try again and say why.
                    tracing::warn!("p2p: the piece table of {digest}: {e}");
                }
            });
        if let Err(e) = made {
            tracing::warn!("p2p: no thread for the piece table of {blob}: {e}");
        }
    }

    /// Downloads `blob` into the store through the swarm whose tracker
    /// (and origin) is at `origin`.
    pub async fn fetch(&self, origin: SocketAddr, blob: &Digest) -> Result<FetchReport> {
        self.inner.clone().fetch(origin, blob).await
    }

    /// Asks a node for its counters.
    pub async fn stats(&self, addr: SocketAddr) -> Result<(u64, u64)> {
        match self.inner.request(addr, &Request::Stats).await?.0 {
            Response::Stats {
                piece_bytes_served,
                pieces_served,
            } => Ok((piece_bytes_served, pieces_served)),
            other => Err(NodeError::Peer {
                addr,
                why: format!("unexpected answer {other:?}"),
            }),
        }
    }

    /// Agents that registered, newest heartbeat first.
    pub fn hosts(&self) -> Vec<HostInfo> {
        let hosts = self.inner.hosts.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<HostInfo> = hosts
            .values()
            .map(|(h, seen)| HostInfo {
                seen_seconds_ago: seen.elapsed().as_secs_f64(),
                ..h.clone()
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Makes this node answer prewarms from the origin registry.
    pub fn set_agent(&self, side: AgentSide) {
        *self.inner.agent.lock().unwrap_or_else(|e| e.into_inner()) = Some(side);
    }

    /// Presents `identity` from now on: new connections, in and out, use
    /// it (open ones keep theirs until they close).
    pub async fn set_identity(&self, identity: &Identity) -> Result<()> {
        let server = identity.server_config(self.inner.revoked.clone())?;
        self.inner.endpoint.set_server_config(Some(server));
        *self.inner.client.lock().unwrap_or_else(|e| e.into_inner()) = identity.client_config()?;
        self.inner.conns.lock().await.clear();
        Ok(())
    }

    /// This node's name (its certificate's).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub fn zone(&self) -> u32 {
        self.inner.zone
    }

    /// Asks the agent at `addr` to prewarm `image`; `progress` gets
    /// (bytes held, bytes in all, what it is doing).
    pub async fn prewarm(
        &self,
        addr: SocketAddr,
        image: &str,
        load: bool,
        progress: &(dyn Fn(u64, u64, &str) + Send + Sync),
    ) -> Result<()> {
        let peer = |why: String| NodeError::Peer { addr, why };
        let conn = self.inner.connection(addr).await?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| peer(e.to_string()))?;
        let req = Request::Prewarm {
            image: image.to_string(),
            load,
        };
        write_msg(&mut send, &req)
            .await
            .map_err(|e| peer(e.to_string()))?;
        let _ = send.finish();
        // Each frame within a minute, and the whole within a day.
        let deadline = Instant::now() + Duration::from_secs(24 * 3600);
        while Instant::now() < deadline {
            let frame = tokio::time::timeout(Duration::from_secs(60), read_msg::<Response>(&mut recv))
                .await
                .map_err(|_| peer("no progress for a minute".into()))?
                .map_err(|e| peer(e.to_string()))?;
            match frame {
                Response::Progress { done, total, message } => progress(done, total, &message),
                Response::Ok => return Ok(()),
                Response::Error { message } => return Err(peer(message)),
                other => return Err(peer(format!("unexpected answer {other:?}"))),
            }
        }
        Err(peer("the prewarm took over a day".into()))
    }

    /// Sends one request to a node (for tools and tests).
    pub async fn ask(&self, addr: SocketAddr, req: &Request) -> Result<(Response, Option<Vec<u8>>)> {
        self.inner.request(addr, req).await
    }

    pub fn close(&self) {
        self.inner.closing.store(true, Ordering::Relaxed);
        self.inner.endpoint.close(0u32.into(), b"bye");
    }
}

fn fetch_err(blob: &Digest, why: impl std::fmt::Display) -> NodeError {
    NodeError::Fetch {
        blob: blob.clone(),
        why: why.to_string(),
    }
}

impl Inner {
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
    ) -> Result<(Vec<u8>, Option<Receiving>), PieceError> {
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

    /// Takes the `len` bytes of piece `index` of `blob` off `recv`, listed
    /// among the arriving pieces as they come (unless the piece already
    /// is: a duplicate), the tracker told at the first byte; `moved` runs
    /// for every chunk. `Err(None)`: the stream ended early.
    async fn take_piece(
        self: &Arc<Self>,
        origin: SocketAddr,
        blob: &Digest,
        index: usize,
        len: usize,
        recv: &mut quinn::RecvStream,
        moved: impl Fn(),
    ) -> Result<(Vec<u8>, Option<Receiving>), Option<quinn::ReadError>> {
        let receiving = Receiving::start(self, blob, index, len);
        if receiving.is_some() {
            self.tell(
                origin,
                Request::Got {
                    blob: blob.clone(),
                    node: self.name.clone(),
                    index,
                },
            )
            .await;
        }
        let mut bytes = Vec::with_capacity(len);
        while bytes.len() < len {
            let c = recv.read_chunk(len - bytes.len(), true).await?.ok_or(None)?;
            if let Some(r) = &receiving {
                r.piece.push(&c.bytes);
            }
            bytes.extend_from_slice(&c.bytes);
            moved();
        }
        Ok((bytes, receiving))
    }

    /// Writes a piece that came (checking its hash) unless it is already
    /// here (`Ok(false)`: a duplicate); once written, forwards of it may
    /// send its last byte. Fails with `InvalidData` for a bad piece. With
    /// `counted` (a chain's progress, and whether the piece came from the
    /// origin), the piece is counted as it is written.
    async fn write_taken(
        &self,
        partial: &Arc<Mutex<Partial>>,
        index: usize,
        bytes: Vec<u8>,
        receiving: Option<Receiving>,
        counted: Option<(Arc<ChainProgress>, bool)>,
    ) -> std::io::Result<bool> {
        let p = partial.clone();
        let written = tokio::task::spawn_blocking(move || {
            let mut p = p.lock().unwrap_or_else(|e| e.into_inner());
            if p.have().get(index) {
                return Ok::<bool, std::io::Error>(false);
            }
            p.write_piece(index, &bytes)?;
            if let Some((chain, from_origin)) = counted {
                let len = bytes.len() as u64;
                if from_origin {
                    chain.from_origin.fetch_add(1, Ordering::Relaxed);
                    crate::metrics::P2P_BYTES_FROM_ORIGIN.add(len);
                } else {
                    chain.from_peers.fetch_add(1, Ordering::Relaxed);
                    crate::metrics::P2P_BYTES_FROM_PEERS.add(len);
                }
            }
            Ok(true)
        })
        .await
        .map_err(std::io::Error::other)??;
        if written {
            if let Some(r) = &receiving {
                r.piece.end(true);
            }
            drop(receiving);
            self.news.notify_waiters();
        }
        Ok(written)
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

    async fn connection(&self, addr: SocketAddr) -> Result<quinn::Connection> {
        if let Some(c) = self.conns.lock().await.get(&addr)
            && c.close_reason().is_none()
        {
            return Ok(c.clone());
        }
        // Connect without holding the map: a dead peer must not stall
        // requests to live ones.
        let peer = |why: String| NodeError::Peer { addr, why };
        let client = self.client.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let connecting = self
            .endpoint
            .connect_with(client, addr, CLUSTER_NAME)
            .map_err(|e| peer(e.to_string()))?;
        let c = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| peer(format!("no answer within {CONNECT_TIMEOUT:?}")))?
            .map_err(|e| peer(e.to_string()))?;
        self.conns.lock().await.insert(addr, c.clone());
        Ok(c)
    }

    /// One request; for a piece, its bytes too.
    async fn request(&self, addr: SocketAddr, req: &Request) -> Result<(Response, Option<Vec<u8>>)> {
        let peer = |why: String| NodeError::Peer { addr, why };
        let work = async {
            let conn = self.connection(addr).await?;
            // A connection the peer closed says why (e.g. the handshake
            // alert of a refused certificate), not just "connection lost".
            let peer = |e: String| match conn.close_reason() {
                Some(why) => peer(format!("{e}: {why}")),
                None => peer(e),
            };
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| peer(e.to_string()))?;
            write_msg(&mut send, req).await.map_err(|e| peer(e.to_string()))?;
            let _ = send.finish();
            let resp: Response = read_msg(&mut recv).await.map_err(|e| peer(e.to_string()))?;
            let body = match &resp {
                Response::Piece { len } if *len <= 64 << 20 => {
                    let mut b = vec![0u8; *len as usize];
                    recv.read_exact(&mut b).await.map_err(|e| peer(e.to_string()))?;
                    Some(b)
                }
                Response::Piece { len } => return Err(peer(format!("a piece of {len} bytes"))),
                _ => None,
            };
            Ok((resp, body))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, work)
            .await
            .map_err(|_| peer("no answer in time".into()))?
    }

    /// Tells the tracker something, without waiting: a tracker that is
    /// down or slow must not hold up the download.
    async fn tell(self: &Arc<Self>, origin: SocketAddr, req: Request) {
        let node = self.clone();
        tokio::spawn(async move {
            let r = tokio::time::timeout(TRACKER_TIMEOUT, node.request(origin, &req)).await;
            if let Ok(Err(e)) = r {
                tracing::debug!("p2p: tracker: {e}");
            }
        });
    }

    async fn fetch(self: Arc<Self>, origin: SocketAddr, blob: &Digest) -> Result<FetchReport> {
        let started = Instant::now();
        // One download per blob: a second caller (the mirror and a prewarm
        // at once) waits for the first instead of sharing its partial file.
        let deadline = Instant::now() + Duration::from_secs(3600);
        loop {
            if self.store.has(blob) {
                return Ok(FetchReport::default());
            }
            if self
                .fetching
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(blob.clone())
            {
                break;
            }
            if Instant::now() > deadline {
                return Err(fetch_err(
                    blob,
                    "another download of it did not end within an hour",
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let result = self.clone().fetch_claimed(origin, blob, started).await;
        self.fetching
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(blob);
        result
    }

    async fn fetch_claimed(
        self: Arc<Self>,
        origin: SocketAddr,
        blob: &Digest,
        started: Instant,
    ) -> Result<FetchReport> {
        let table = match self
            .request(origin, &Request::Pieces { blob: blob.clone() })
            .await?
        {
            (Response::Pieces { table }, _) if table.digest == *blob && table.is_consistent() => table,
            (Response::Error { message }, _) => {
                return Err(NodeError::NoTable {
                    blob: blob.clone(),
                    why: message,
                });
            }
            (other, _) => {
                return Err(NodeError::NoTable {
                    blob: blob.clone(),
                    why: format!("unexpected answer {other:?}"),
                });
            }
        };
        let n = table.count();
        tracing::debug!(
            "p2p: {blob}: piece table after {:.3} s",
            started.elapsed().as_secs_f64()
        );
        let dir = self.partial_dir.clone();
        let partial = tokio::task::spawn_blocking(move || Partial::open(&dir, table))
            .await
            .map_err(|e| fetch_err(blob, e))??;
        let mut report = FetchReport {
            pieces: n,
            resumed: partial.have().count(),
            ..Default::default()
        };
        let partial = Arc::new(Mutex::new(partial));
        self.partials
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(blob.clone(), partial.clone());
        tracing::debug!(
            "p2p: {blob}: partial open after {:.3} s",
            started.elapsed().as_secs_f64()
        );
        let mut result = self.download(origin, blob, &partial, &mut report).await;
        tracing::debug!(
            "p2p: {blob}: downloaded after {:.3} s",
            started.elapsed().as_secs_f64()
        );
        if result.is_ok() {
            // Into the store while still registered as a partial: peers
            // asking for pieces never find the blob held nowhere.
            let (p, store) = (partial.clone(), self.store.clone());
            result = tokio::task::spawn_blocking(move || {
                p.lock().unwrap_or_else(|e| e.into_inner()).finish(&store)
            })
            .await
            .map_err(|e| fetch_err(blob, e))
            .and_then(|r| r.map_err(NodeError::from));
        }
        self.partials
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(blob);
        if result.is_ok() {
            let node = self.clone();
            let evicted = tokio::task::spawn_blocking(move || node.evict())
                .await
                .map_err(|e| fetch_err(blob, e))?;
            report.evicted = evicted.iter().map(|d| d.to_string()).collect();
            crate::metrics::P2P_BLOBS_COMPLETED.add(1);
        }
        report.seconds = started.elapsed().as_secs_f64();
        result.map(|_| report)
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

    async fn download(
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
                tokio::time::sleep(Duration::from_millis(20)).await;
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
                Ok((bytes, receiving)) => {
                    let len = bytes.len() as u64;
                    // Ok(false): an endgame duplicate.
                    match self.write_taken(partial, piece, bytes, receiving, None).await {
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
}
