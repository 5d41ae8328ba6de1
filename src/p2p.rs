//! Peer-to-peer distribution of blobs: pieces, piece selection, peer
//! selection, and a deterministic simulator that drives the same code.
//!
//! A blob is cut into fixed-size pieces whose sha256 the origin publishes.
//! A downloader keeps a [`Bitfield`] of what it holds and asks
//! [`picker::pick`] which piece to request from which peer: rarest first
//! among the peers it knows, from the least loaded holder, the origin only
//! when no peer can give anything. The [`tracker::Tracker`] answers "who
//! has pieces of this blob" preferring peers that hold what the asker
//! lacks, same zone first, spreading load, and lets the origin serve a
//! piece only while no peer holds it (the origin is the last resort).
//! [`sim`] runs thousands of hosts through exactly this code in rounds of
//! one piece time (p/B), to compare the completion times with the lower
//! bound of any schedule.
//!
//! Before swarming, agents of a small cluster form a chain (see
//! `node::CHAIN_MAX`): each streams the blob from the one before it as the
//! pieces arrive there ([`relay`]), so every link carries one stream at
//! full rate. The swarm is what a chain falls back to, and what a larger
//! cluster uses. [`stripes`] is the plan meant to replace that swarm
//! beyond one chain (q stripes down q trees, one stream per link); so far
//! only the simulator runs it.

pub mod bitfield;
pub mod identity;
pub mod mirror;
pub mod node;
pub mod picker;
pub mod pieces;
pub mod register;
pub mod relay;
pub mod renew;
pub mod revoke;
pub mod rng;
pub mod sim;
pub mod stripes;
pub mod tls;
pub mod tokens;
pub mod tracker;
pub mod transcode;
pub mod wire;

pub use bitfield::Bitfield;
