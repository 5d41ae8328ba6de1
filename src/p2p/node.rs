//! A P2P node over QUIC: serves the pieces it holds, downloads blobs from
//! peers with the [`picker`](super::picker), and — on the origin — keeps
//! the [`tracker`](super::tracker) and seeds from the registry's store.
//!
//! This file wires the node together: its configuration, the state every
//! part shares (`Inner`), the public [`Node`], and requests to other
//! nodes. Each job is an `impl Inner` in a file of its own:
//! - `serve`: connections and streams, answers, the pieces held here or
//!   still arriving (forwarded cut-through);
//! - `chain`: streaming a blob to the next agent of a chain, and
//!   following one;
//! - `fetch`: one download per blob, from its piece table to the store,
//!   and taking and writing the pieces that come;
//! - `follow`: a download followed piece by piece as the pieces come;
//! - `swarm`: the download loop (after the chain) with the picker, the
//!   tracker's refreshes, busy holders and bans;
//! - `origin`: the tracker, registrations, renewals, piece tables, and
//!   the origin sending a piece only while no peer holds it;
//! - `uplink`: pacing on capped links, and `Busy` when the uplink is full;
//! - `cache`: eviction between watermarks, never of a blob in use;
//! - `prewarm`: an agent's side of a prewarm.

mod cache;
mod chain;
mod fetch;
mod follow;
mod origin;
mod prewarm;
mod serve;
mod swarm;
mod uplink;

pub use fetch::FetchReport;
pub use follow::Following;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use origin::Tracker;

use super::pieces::{Partial, Tables};
use super::relay::Arriving;
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
/// agents than this (`LIVE_HOST`), the agents asking for a blob are
/// gathered and form a chain if they fit one, else the blob goes down
/// stripe trees over them (see `stripes`): a chain's delay grows with its
/// length, a tree's with the log of its size, and a chain busy with the
/// origin's uplink would leave agents outside it waiting. Past this many
/// in the chain, agents swarm.
pub const CHAIN_MAX: usize = 64;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const TRACKER_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The stream error code of a forward cut short: the piece failed (or
/// its sender vanished) at the forwarder, which is not to blame for it.
const CUT_SHORT: u32 = 1;

/// How long to leave a holder alone that does not hold a piece the
/// tracker said it does (its own download of it failed), or whose
/// forward of a piece was cut short.
const NOT_HERE: Duration = Duration::from_millis(100);

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
    /// Blobs being downloaded (one download per blob), and how each stands.
    fetching: Mutex<HashMap<Digest, tokio::sync::watch::Receiver<fetch::Stage>>>,
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
            fetching: Mutex::new(HashMap::new()),
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

    /// Follows the download of `blob` through the swarm at `origin`,
    /// piece by piece, starting it unless one runs (one download per blob
    /// however many follow it or [`fetch`](Self::fetch) it).
    pub fn follow(&self, origin: SocketAddr, blob: &Digest) -> Following {
        self.inner.following(origin, blob)
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

impl Inner {
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
}
