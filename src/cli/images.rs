//! Resolving image names given on the command line.

use anyhow::{Context, Result};
use strata::digest::Digest;
use strata::oci::layout::Layout;
use strata::oci::{Descriptor, ImageConfig, Manifest};
use strata::store::Store;

use super::StoreArgs;

pub struct Image {
    pub name: String,
    pub descriptor: Descriptor,
    pub manifest: Manifest,
    pub config: ImageConfig,
}

/// Accepts `NAME` (a tag in `--layout`), `oci:DIR[:NAME]`,
/// `docker-archive:FILE[:REPO:TAG]` or a manifest digest in the store.
pub fn resolve(s: &StoreArgs, store: &Store, name: &str) -> Result<Image> {
    let (descriptor, manifest) = if let Some(rest) = name.strip_prefix("oci:") {
        let (dir, r) = match rest.rsplit_once(':') {
            Some((d, r)) if !r.contains('/') => (d, Some(r)),
            _ => (rest, None),
        };
        Layout::open(dir)?.import(store, r)?
    } else if let Some(rest) = name.strip_prefix("docker-archive:") {
        let (path, r) = match rest.find(".tar:") {
            Some(i) => (&rest[..i + 4], Some(&rest[i + 5..])),
            None => (rest, None),
        };
        strata::oci::archive::import(path.as_ref(), r, store)?
    } else if let Ok(d) = name.parse::<Digest>() {
        let m: Manifest = store
            .read_json(&d)
            .with_context(|| format!("{name} is not a manifest in the store {}", store.root().display()))?;
        let size = store.size(&d)?;
        (Descriptor::new(strata::oci::MEDIA_MANIFEST, d, size), m)
    } else {
        let layout = Layout::open(&s.layout).with_context(|| {
            format!(
                "looking up `{name}`: no image layout at {} (run `strata build` first, or pass --layout or oci:DIR:NAME)",
                s.layout.display()
            )
        })?;
        layout.import(store, Some(name))?
    };
    let config: ImageConfig = store.read_json(&manifest.config.digest)?;
    Ok(Image {
        name: name.to_string(),
        descriptor,
        manifest,
        config,
    })
}
