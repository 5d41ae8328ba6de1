//! `strata gc`: sweep blobs no manifest reaches.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;

use super::human;

/// Delete blobs of a registry's data directory that no manifest reaches,
/// and upload sessions idle for longer than --upload-ttl.
///
/// Marks everything the manifests and indexes of every repository name,
/// then deletes the other blobs once they are older than --grace, so blobs
/// of a push still in progress survive. Safe to run while `strata serve`
/// runs (which purges idle upload sessions by itself too).
///
/// Examples:
///   strata gc --data /var/lib/strata --dry-run
///   strata gc --data /var/lib/strata --grace 30m
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[arg(long, env = "STRATA_DATA", default_value = "strata-data")]
    pub data: PathBuf,
    /// Keep unreferenced blobs younger than this (s, m, h suffixes).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub grace: Duration,
    /// Delete upload sessions idle for longer than this (s, m, h suffixes).
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub upload_ttl: Duration,
    /// Report what would be deleted, delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

use strata::registry::config::parse_duration;

pub fn run(a: Args) -> Result<()> {
    let r = strata::registry::gc::collect(&a.data, a.grace, a.upload_ttl, a.dry_run)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "{} manifests reach {} blobs; {} {} unreferenced blobs ({}); {} younger than the grace period kept; {} {} idle upload sessions ({})",
            r.manifests,
            r.live_blobs,
            if r.dry_run { "would delete" } else { "deleted" },
            r.swept_blobs,
            human(r.swept_bytes),
            r.young_blobs,
            if r.dry_run { "would delete" } else { "deleted" },
            r.expired_uploads,
            human(r.expired_upload_bytes)
        );
    }
    Ok(())
}
