//! `strata inspect`: what an image is made of.

use anyhow::Result;
use serde::Serialize;
use strata::oci::diff::image_files;
use strata::store::Store;

use super::{StoreArgs, human, images};

/// Show an image's tiers, layers, sizes and config.
///
/// IMAGE is a tier name in the build output (`tomcat`), `oci:DIR:NAME`,
/// `docker-archive:FILE.tar[:REPO:TAG]` or a manifest digest.
///
/// Examples:
///   strata inspect tomcat
///   strata inspect --files sample | grep webapps
///   strata inspect --json oci:out/oci:jdk
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    pub image: String,
    /// Also list every file of the image (path, size, sha256).
    #[arg(long)]
    pub files: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Serialize)]
struct LayerView {
    tier: Option<String>,
    digest: String,
    media_type: String,
    size: u64,
    diff_id: Option<String>,
}

pub fn run(a: Args) -> Result<()> {
    let store = Store::open(&a.store.store)?;
    let img = images::resolve(&a.store, &store, &a.image)?;
    // Layers pair with the history entries that are not empty.
    let tiers: Vec<Option<String>> = img
        .config
        .history
        .iter()
        .filter(|h| !h.empty_layer)
        .map(|h| {
            h.created_by
                .as_deref()
                .and_then(|c| c.strip_prefix("strata tier "))
                .map(|c| c.split(' ').next().unwrap_or(c).to_string())
        })
        .collect();
    let layers: Vec<LayerView> = img
        .manifest
        .layers
        .iter()
        .enumerate()
        .map(|(i, l)| LayerView {
            tier: tiers.get(i).cloned().flatten(),
            digest: l.digest.to_string(),
            media_type: l.media_type.clone(),
            size: l.size,
            diff_id: img.config.rootfs.diff_ids.get(i).map(|d| d.to_string()),
        })
        .collect();
    let files = if a.files {
        Some(image_files(&store, &img.manifest)?)
    } else {
        None
    };
    if a.json {
        #[derive(Serialize)]
        struct View<'a> {
            image: &'a str,
            manifest: String,
            size: u64,
            layers: &'a [LayerView],
            config: &'a strata::oci::ImageConfig,
            #[serde(skip_serializing_if = "Option::is_none")]
            files: Option<Vec<&'a strata::oci::listing::Entry>>,
        }
        let v = View {
            image: &img.name,
            manifest: img.descriptor.digest.to_string(),
            size: layers.iter().map(|l| l.size).sum(),
            layers: &layers,
            config: &img.config,
            files: files.as_ref().map(|f| f.values().collect()),
        };
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let total: u64 = layers.iter().map(|l| l.size).sum();
    println!("image     {}", img.name);
    println!("manifest  {}", img.descriptor.digest);
    println!("platform  {}/{}", img.config.os, img.config.architecture);
    println!("size      {} in {} layers", human(total), layers.len());
    println!("\nlayers:");
    for l in &layers {
        println!(
            "  {:<12} {:>10}  {}  {}",
            l.tier.as_deref().unwrap_or("-"),
            human(l.size),
            l.digest,
            l.media_type.rsplit('.').next().unwrap_or("")
        );
    }
    let c = &img.config.config;
    println!("\nconfig:");
    if let Some(e) = &c.entrypoint {
        println!("  entrypoint  {}", serde_json::to_string(e)?);
    }
    if let Some(cmd) = &c.cmd {
        println!("  cmd         {}", serde_json::to_string(cmd)?);
    }
    if let Some(u) = &c.user {
        println!("  user        {u}");
    }
    if let Some(w) = &c.working_dir {
        println!("  workdir     {w}");
    }
    if !c.exposed_ports.is_empty() {
        let ports: Vec<_> = c.exposed_ports.keys().cloned().collect();
        println!("  ports       {}", ports.join(" "));
    }
    for e in &c.env {
        println!("  env         {e}");
    }
    for (k, v) in &c.labels {
        println!("  label       {k}={v}");
    }
    if let Some(files) = files {
        println!("\nfiles:");
        for e in files.values() {
            let digest = e.digest.as_ref().map(|d| d.short()).unwrap_or_default();
            let link = e.link.as_deref().map(|l| format!(" -> {l}")).unwrap_or_default();
            println!(
                "  {:>6o} {:>5}:{:<5} {:>10} {:<19} /{}{}",
                e.mode, e.uid, e.gid, e.size, digest, e.path, link
            );
        }
    }
    Ok(())
}
