//! `strata bench`: harnesses behind the figures in BENCHMARKS.md.

use anyhow::Result;
use strata::p2p::sim;

/// Benchmarks anyone can rerun.
///
/// `sim` drives the real piece picker and tracker through a deterministic
/// discrete-event model of a fan-out (every link limited to the same
/// bandwidth, one piece per link per piece time) and compares completion
/// times with the lower bound S/B + (⌈log2(N+1)⌉ − 1)·p/B.
///
/// Examples:
///   strata bench sim --hosts 10000
///   strata bench sim --hosts 10000 --layout stripes
///   strata bench sim --hosts 32 --size-mib 64 --piece-kib 1024 --mbit 50 --json
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(subcommand)]
    pub what: What,
}

#[derive(Debug, clap::Subcommand)]
pub enum What {
    /// Simulate a fan-out of one blob to N hosts.
    Sim(SimArgs),
}

#[derive(Debug, clap::Args)]
pub struct SimArgs {
    /// Hosts downloading the blob (the origin comes on top).
    #[arg(long, default_value_t = 10_000)]
    pub hosts: usize,
    /// Blob size S.
    #[arg(long, default_value_t = 64)]
    pub size_mib: u64,
    /// Piece size p, KiB (the agents' piece size by default).
    #[arg(long, default_value_t = strata::p2p::pieces::DEFAULT_PIECE >> 10)]
    pub piece_kib: u64,
    /// Link bandwidth B of every host and of the origin, Mbit/s.
    #[arg(long, default_value_t = 50.0)]
    pub mbit: f64,
    /// Peers the tracker hands out per ask.
    #[arg(long, default_value_t = 32)]
    pub peers: usize,
    /// Zones (racks) the hosts are spread over.
    #[arg(long, default_value_t = 4)]
    pub zones: u32,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// How hosts are organised: `swarm` (the picker and tracker, what
    /// agents do past a chain) or `stripes` (q = ⌈log2(N+1)⌉ stripes down
    /// q trees of one circulant graph, every link one stream).
    #[arg(long, value_enum, default_value_t = LayoutArg::Swarm)]
    pub layout: LayoutArg,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LayoutArg {
    Swarm,
    Stripes,
}

pub fn run(a: Args) -> Result<()> {
    match a.what {
        What::Sim(s) => sim_cmd(s),
    }
}

fn sim_cmd(a: SimArgs) -> Result<()> {
    anyhow::ensure!(
        a.mbit > 0.0 && a.piece_kib > 0,
        "--mbit and --piece-kib must be positive"
    );
    let cfg = sim::Config {
        hosts: a.hosts,
        size: a.size_mib << 20,
        piece: a.piece_kib << 10,
        bandwidth: a.mbit * 1e6,
        peers: a.peers,
        zones: a.zones,
        seed: a.seed,
        layout: match a.layout {
            LayoutArg::Swarm => sim::Layout::Swarm,
            LayoutArg::Stripes => sim::Layout::Stripes,
        },
    };
    let started = std::time::Instant::now();
    let r = sim::run(&cfg)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!(
        "{} hosts ({:?}), {} pieces of {} KiB, {} Mbit/s links: S/B = {:.2} s, bound = {:.2} s",
        r.hosts, r.layout, r.pieces, a.piece_kib, a.mbit, r.floor_seconds, r.bound_seconds
    );
    println!(
        "p50 {:.2} s ({:.3}× bound), p99 {:.2} s ({:.3}×), max {:.2} s ({:.3}×)",
        r.p50_seconds,
        r.p50_seconds / r.bound_seconds,
        r.p99_seconds,
        r.p99_seconds / r.bound_seconds,
        r.max_seconds,
        r.max_seconds / r.bound_seconds
    );
    println!(
        "origin sent {} pieces ({:.3} copies of S); {} tracker asks; simulated in {:.1} s",
        r.origin_pieces,
        r.origin_copies,
        r.tracker_asks,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
