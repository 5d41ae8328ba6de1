//! `strata diff`: the files that differ between two images.

use anyhow::Result;
use strata::oci::diff::{ChangeKind, diff, image_files};
use strata::store::Store;

use super::{StoreArgs, images};

/// List the files added, modified and deleted between two images.
///
/// Each line is `A`, `M` or `D`, the path, and sizes and sha256 digests
/// (old → new). This is the list a hotfix applies in place.
///
/// Examples:
///   strata diff oci:old/oci:sample sample
///   strata diff --json tomcat sample
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    pub old: String,
    pub new: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

pub fn run(a: Args) -> Result<()> {
    let store = Store::open(&a.store.store)?;
    let old = images::resolve(&a.store, &store, &a.old)?;
    let new = images::resolve(&a.store, &store, &a.new)?;
    let changes = diff(
        &image_files(&store, &old.manifest)?,
        &image_files(&store, &new.manifest)?,
    );
    if a.json {
        println!("{}", serde_json::to_string_pretty(&changes)?);
        return Ok(());
    }
    for c in &changes {
        let tag = match c.change {
            ChangeKind::Added => "A",
            ChangeKind::Modified => "M",
            ChangeKind::Deleted => "D",
        };
        let short =
            |d: &Option<strata::digest::Digest>| d.as_ref().map(|d| d.short()).unwrap_or_else(|| "-".into());
        let size = |s: Option<u64>| s.map(|s| s.to_string()).unwrap_or_else(|| "-".into());
        match c.change {
            ChangeKind::Added => println!("A /{}  {}  {}", c.path, size(c.new_size), short(&c.new_digest)),
            ChangeKind::Deleted => println!("D /{}  {}  {}", c.path, size(c.old_size), short(&c.old_digest)),
            ChangeKind::Modified => println!(
                "{tag} /{}  {} -> {}  {} -> {}",
                c.path,
                size(c.old_size),
                size(c.new_size),
                short(&c.old_digest),
                short(&c.new_digest)
            ),
        }
    }
    let count = |k| changes.iter().filter(|c| c.change == k).count();
    eprintln!(
        "{} added, {} modified, {} deleted",
        count(ChangeKind::Added),
        count(ChangeKind::Modified),
        count(ChangeKind::Deleted)
    );
    Ok(())
}
