//! Command-line interface: one file per subcommand under `cli/`. A
//! subcommand turns flags into a library call and prints the result.

mod agent;
mod bench;
mod build;
mod deploy;
mod diff;
mod drain;
mod gc;
mod images;
mod inspect;
mod lease;
mod prewarm;
mod release;
mod serve;
mod token;
mod transfer;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// strata builds container images as a tier hierarchy (base → tools → jdk →
/// tomcat → app) declared in layers.toml: reproducible, zstd-compressed,
/// one small layer per change.
#[derive(Debug, Parser)]
#[command(name = "strata", version, propagate_version = true)]
#[command(
    after_help = "Start with `strata build --help`. Environment: STRATA_STORE (store directory), \
SOURCE_DATE_EPOCH (layer mtimes), DOCKER_HOST (engine for `run` steps and --load), RUST_LOG (log filter)."
)]
pub struct Cli {
    /// Log level for diagnostics on stderr (error, warn, info, debug, trace).
    #[arg(long, global = true, default_value = "warn", env = "STRATA_LOG")]
    pub log_level: String,
    /// Write logs as JSON lines.
    #[arg(long, global = true)]
    pub log_json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Build(build::Args),
    Inspect(inspect::Args),
    Diff(diff::Args),
    Serve(serve::Args),
    Token(token::Args),
    Gc(gc::Args),
    Push(transfer::PushArgs),
    Pull(transfer::PullArgs),
    Bench(bench::Args),
    Agent(agent::Args),
    Cluster(agent::ClusterArgs),
    Prewarm(prewarm::Args),
    Lease(lease::Args),
    Deploy(deploy::DeployArgs),
    Hotfix(deploy::HotfixArgs),
    Rollback(deploy::RollbackArgs),
    Remove(deploy::RemoveArgs),
    Drain(drain::Args),
    Status(deploy::StatusArgs),
    History(deploy::HistoryArgs),
    Logs(deploy::LogsArgs),
    Release(release::Args),
}

/// Options shared by commands that read images.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// The content store (blobs, cache records, downloads). Shared by every
    /// build on this machine; safe to delete, it is only a cache.
    #[arg(long, env = "STRATA_STORE", default_value_os_t = default_store())]
    pub store: PathBuf,
    /// The OCI image layout that builds write and image names refer to.
    #[arg(long, default_value = "out/oci")]
    pub layout: PathBuf,
}

fn default_store() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("strata")
}

pub fn init_logging(cli: &Cli) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cli.log_level));
    // Colours only for a person at a terminal: a log file, a pipe or
    // journald would keep the escape codes as text.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    if cli.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// An error and its causes for a person, each cause once. Most errors
/// here already show their source in their own message (`{path}:
/// {source}`); anyhow's `{:#}` would print that source a second time, and
/// a third when it, too, shows its own.
pub fn error_chain(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    let mut parent = out.clone();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !parent.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        parent = text;
    }
    out
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Build(a) => build::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Diff(a) => diff::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Token(a) => token::run(a),
        Command::Gc(a) => gc::run(a),
        Command::Push(a) => transfer::push(a),
        Command::Pull(a) => transfer::pull(a),
        Command::Bench(a) => bench::run(a),
        Command::Agent(a) => agent::run(a),
        Command::Cluster(a) => agent::cluster(a),
        Command::Prewarm(a) => prewarm::run(a),
        Command::Lease(a) => lease::run(a),
        Command::Deploy(a) => deploy::deploy(a),
        Command::Hotfix(a) => deploy::hotfix(a),
        Command::Rollback(a) => deploy::rollback(a),
        Command::Remove(a) => deploy::remove(a),
        Command::Drain(a) => drain::run(a),
        Command::Status(a) => deploy::status(a),
        Command::History(a) => deploy::history(a),
        Command::Logs(a) => deploy::logs(a),
        Command::Release(a) => release::run(a),
    }
}

/// Human-readable byte sizes: 1.2 MB.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1000.0 && i < UNITS.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}
