//! strata: tiered container images, an OCI registry, P2P fan-out and
//! in-place deploys for Docker hosts.
//!
//! One module per job: [`spec`] reads `layers.toml`, [`build`] turns it into
//! images in the [`store`], [`oci`] reads and writes image formats,
//! [`fetch`] downloads pinned sources and [`engine`] talks to Docker.

// Errors carry what a person needs to act on them (file, line, digests);
// they travel on the cold path only, so their size does not matter.
#![allow(clippy::result_large_err)]

pub mod api;
pub mod build;
pub mod client;
pub mod deploy;
pub mod digest;
pub mod engine;
pub mod etcd;
pub mod fetch;
pub mod lease;
pub mod metrics;
pub mod oci;
pub mod p2p;
pub mod registry;
pub mod spec;
pub mod store;
