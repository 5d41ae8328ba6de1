//! Gzip variants of zstd images, made by an agent for the engines next to
//! it that cannot read zstd layers (Docker before 23.0, API 1.42: Debian
//! 12's `docker.io` 20.10 fails with "archive/tar: invalid tar header").
//!
//! Who gets a variant is decided per request from the client's
//! `User-Agent` ([`client_of`], [`EngineGzip::applies_to`]): a Docker
//! engine names its version there (`docker/20.10.24+dfsg1 go/…`), which
//! needs no access to its socket, holds for an agent in a container, and
//! tells several engines and containerd or podman on one host apart.
//!
//! A variant is what `strata push --gzip` pushes: [`gzip_image`] over the
//! same blobs, so its layer and manifest digests are the same. Layers are
//! transcoded once and kept in the agent's store (`meta/gzip/ZSTD` names
//! the gzip blob), with a record under `meta/gzip-source/GZIP` saying
//! what each variant was made from, so a variant evicted from the cache is
//! made again when it is asked for.
//!
//! This module never changes what the swarm carries: the blobs come over
//! P2P as pushed (zstd), verified, and the variants stay on this host. It
//! never serves a variant under the zstd image's digest.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::node::{Node, NodeError};
use crate::digest::Digest;
use crate::oci::archive::{ArchiveError, gzip_image, gzip_variant};
use crate::oci::{Descriptor, ImageConfig, LayerCompression, MEDIA_MANIFEST, Manifest};
use crate::store::{Store, StoreError};

/// The first Docker release that pulls zstd layers (API 1.42).
pub const DOCKER_ZSTD_SINCE: (u32, u32) = (23, 0);

/// Which clients of the mirror get gzip variants of zstd images
/// (`strata agent --engine-gzip`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineGzip {
    /// Docker engines older than 23.0, known by their `User-Agent`.
    #[default]
    Auto,
    /// Every client, whatever it says it is.
    Always,
    /// Nobody: images are served as pushed.
    Never,
}

impl std::str::FromStr for EngineGzip {
    type Err = String;

    fn from_str(s: &str) -> Result<EngineGzip, String> {
        match s {
            "auto" => Ok(EngineGzip::Auto),
            "always" => Ok(EngineGzip::Always),
            "never" => Ok(EngineGzip::Never),
            _ => Err(format!("`{s}`: expected auto, always or never")),
        }
    }
}

/// What a request's `User-Agent` says about the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Client {
    /// A Docker engine (`docker/VERSION …`), with its major and minor
    /// version when they parse.
    Docker(Option<(u32, u32)>),
    /// Anything else: containerd, podman, skopeo, strata, curl.
    Other,
}

/// The client a `User-Agent` names. Docker engines send
/// `docker/20.10.24+dfsg1 go/go1.19.8 git-commit/… UpstreamClient(…)`;
/// containerd `containerd/1.6.20`, podman and skopeo `containers/…`.
pub fn client_of(user_agent: &str) -> Client {
    let Some(rest) = user_agent.trim_start().strip_prefix("docker/") else {
        return Client::Other;
    };
    let version = rest.split_whitespace().next().unwrap_or("");
    let mut parts = version.split(|c: char| !c.is_ascii_digit());
    let major = parts.next().and_then(|p| p.parse().ok());
    let minor = parts.next().and_then(|p| p.parse().ok());
    Client::Docker(major.zip(minor))
}

impl EngineGzip {
    /// Whether `client` gets gzip variants. A Docker engine whose version
    /// does not parse gets them: every engine reads gzip.
    pub fn applies_to(self, client: &Client) -> bool {
        match (self, client) {
            (EngineGzip::Never, _) => false,
            (EngineGzip::Always, _) => true,
            (EngineGzip::Auto, Client::Docker(Some(v))) => *v < DOCKER_ZSTD_SINCE,
            (EngineGzip::Auto, Client::Docker(None)) => true,
            (EngineGzip::Auto, Client::Other) => false,
        }
    }
}

/// Whether a gzip variant of `m` differs from it: some layer is zstd and
/// every layer is one strata can transcode or keep.
pub fn needs_variant(m: &Manifest) -> bool {
    let kinds: Vec<_> = m
        .layers
        .iter()
        .map(|l| LayerCompression::from_media_type(&l.media_type))
        .collect();
    kinds.contains(&Some(LayerCompression::Zstd)) && kinds.iter().all(Option::is_some)
}

/// This host's platform as an index names it (`linux`, `amd64`): the
/// child an engine here picks from a multi-platform image.
pub fn host_platform() -> (&'static str, &'static str) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        a => a,
    };
    ("linux", arch)
}

/// The children of the index `bytes` for `platform` (os, architecture);
/// `None` when `bytes` is no index.
pub fn index_children(bytes: &[u8], platform: (&str, &str)) -> Option<Vec<Digest>> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let children = v.get("manifests")?.as_array()?;
    Some(
        children
            .iter()
            .filter(|c| c["platform"]["os"] == platform.0 && c["platform"]["architecture"] == platform.1)
            .filter_map(|c| c["digest"].as_str()?.parse().ok())
            .collect(),
    )
}

/// The index `bytes` with each child named in `variants` pointing at its
/// variant instead (digest, size, media type); every other field, and
/// every other child, as it was. `None` when nothing changed.
pub fn rewrite_index(bytes: &[u8], variants: &BTreeMap<Digest, Descriptor>) -> Option<Vec<u8>> {
    let mut v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let mut changed = false;
    for c in v.get_mut("manifests")?.as_array_mut()? {
        let Some(variant) = c["digest"]
            .as_str()
            .and_then(|d| d.parse::<Digest>().ok())
            .and_then(|d| variants.get(&d))
        else {
            continue;
        };
        c["digest"] = variant.digest.to_string().into();
        c["size"] = variant.size.into();
        c["mediaType"] = variant.media_type.clone().into();
        changed = true;
    }
    changed.then(|| serde_json::to_vec(&v).unwrap_or_default())
}

#[derive(Debug, thiserror::Error)]
pub enum TranscodeError {
    #[error("fetching {blob} over P2P: {source}")]
    Fetch { blob: Digest, source: NodeError },
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the gzip variant {wanted} was made by another strata: {layer} now transcodes to {made}")]
    Changed {
        wanted: Digest,
        layer: Digest,
        made: Digest,
    },
    #[error("the transcode did not finish: {0}")]
    Task(#[from] tokio::task::JoinError),
}

pub type Result<T, E = TranscodeError> = std::result::Result<T, E>;

/// What a variant in this store was made from (`meta/gzip-source/HEX`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Source {
    /// A gzip layer: the zstd layer and the diff_id its bytes must have.
    Layer { layer: Descriptor, diff_id: Digest },
    /// A gzip image manifest or index: the zstd image's manifest or index.
    Manifest { manifest: Digest },
}

const SOURCE: &str = "gzip-source";

/// Makes and remakes gzip variants in an agent's store.
pub struct Transcoder {
    store: Store,
    node: Arc<Node>,
    /// The origin's P2P address, which blobs are fetched through.
    origin: SocketAddr,
    /// One transcode at a time: bounded CPU next to the host's apps, and a
    /// second ask for the same image finds the first one's work done.
    busy: tokio::sync::Mutex<()>,
}

impl Transcoder {
    pub fn new(store: Store, node: Arc<Node>, origin: SocketAddr) -> Transcoder {
        Transcoder {
            store,
            node,
            origin,
            busy: tokio::sync::Mutex::new(()),
        }
    }

    /// The gzip variant of the image manifest `bytes` (digest `manifest`,
    /// verified by the caller), made when missing: its blobs come over P2P
    /// as pushed, zstd layers are transcoded once. `None` when the
    /// manifest is not an image with zstd layers (an index, an artifact,
    /// gzip already).
    pub async fn image(&self, manifest: &Digest, bytes: &[u8]) -> Result<Option<Digest>> {
        let Ok(m) = serde_json::from_slice::<Manifest>(bytes) else {
            return Ok(None);
        };
        if !needs_variant(&m) {
            return Ok(None);
        }
        let desc = Descriptor::new(
            m.media_type.as_deref().unwrap_or(MEDIA_MANIFEST),
            manifest.clone(),
            bytes.len() as u64,
        );
        // A blob evicted between its fetch and the transcode is fetched
        // again, once.
        let mut retried = false;
        loop {
            if !self.store.has(manifest) {
                self.store.put(bytes, Some(manifest))?;
            }
            self.fetch(&m.config.digest).await?;
            for l in &m.layers {
                let zstd = LayerCompression::from_media_type(&l.media_type) == Some(LayerCompression::Zstd);
                if zstd && !self.has_gzip_of(&l.digest) {
                    self.fetch(&l.digest).await?;
                }
            }
            let _one = self.busy.lock().await;
            let (store, d) = (self.store.clone(), desc.clone());
            match tokio::task::spawn_blocking(move || gzip_image(&store, &d, &made)).await? {
                Ok(gz) => {
                    self.record(&m, &gz.digest, manifest)?;
                    return Ok(Some(gz.digest));
                }
                Err(ArchiveError::Store(StoreError::NotFound(_))) if !retried => retried = true,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The gzip variant of the index `bytes` (digest `index`): its
    /// children `variants` (zstd manifest → gzip variant, made with
    /// [`Transcoder::image`]) replaced. `None` when there are none.
    pub fn index(
        &self,
        index: &Digest,
        bytes: &[u8],
        variants: &BTreeMap<Digest, Digest>,
    ) -> Result<Option<Digest>> {
        let mut descriptors = BTreeMap::new();
        for (child, gz) in variants {
            let manifest: Manifest = self.store.read_json(gz)?;
            let media = manifest.media_type.unwrap_or_else(|| MEDIA_MANIFEST.to_string());
            descriptors.insert(
                child.clone(),
                Descriptor::new(&media, gz.clone(), self.store.size(gz)?),
            );
        }
        let Some(rewritten) = rewrite_index(bytes, &descriptors) else {
            return Ok(None);
        };
        let (gz, _) = self.store.put(&rewritten, None)?;
        let source = Source::Manifest {
            manifest: index.clone(),
        };
        self.write_source(&gz, &source)?;
        Ok(Some(gz))
    }

    /// The zstd image a gzip manifest variant made here was made from.
    pub fn source_of_manifest(&self, gzip: &Digest) -> Option<Digest> {
        match self.source(gzip)? {
            Source::Manifest { manifest } => Some(manifest),
            Source::Layer { .. } => None,
        }
    }

    /// Puts the gzip layer `gzip` back into the store when this agent made
    /// it and it was evicted since. False when it is no variant made here.
    pub async fn layer(&self, gzip: &Digest) -> Result<bool> {
        let Some(Source::Layer { layer, diff_id }) = self.source(gzip) else {
            return Ok(false);
        };
        let mut retried = false;
        loop {
            if self.store.has(gzip) {
                return Ok(true);
            }
            self.fetch(&layer.digest).await?;
            let _one = self.busy.lock().await;
            let (store, l, id) = (self.store.clone(), layer.clone(), diff_id.clone());
            match tokio::task::spawn_blocking(move || gzip_variant(&store, &l, &id, &made)).await? {
                Ok(d) if d == *gzip => return Ok(true),
                Ok(d) => {
                    return Err(TranscodeError::Changed {
                        wanted: gzip.clone(),
                        layer: layer.digest.clone(),
                        made: d,
                    });
                }
                Err(ArchiveError::Store(StoreError::NotFound(_))) if !retried => retried = true,
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn source(&self, gzip: &Digest) -> Option<Source> {
        let bytes = self.store.read_meta(SOURCE, gzip.hex())?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Whether the store holds a gzip variant of the layer `zstd`.
    fn has_gzip_of(&self, zstd: &Digest) -> bool {
        self.store
            .read_meta("gzip", zstd.hex())
            .and_then(|b| String::from_utf8_lossy(&b).trim().parse::<Digest>().ok())
            .is_some_and(|d| self.store.has(&d))
    }

    async fn fetch(&self, blob: &Digest) -> Result<()> {
        if self.store.has(blob) {
            return Ok(());
        }
        self.node
            .fetch(self.origin, blob)
            .await
            .map(|_| ())
            .map_err(|source| TranscodeError::Fetch {
                blob: blob.clone(),
                source,
            })
    }

    /// Writes what each variant of `m` was made from.
    fn record(&self, m: &Manifest, gzip: &Digest, manifest: &Digest) -> Result<()> {
        let config: ImageConfig = self.store.read_json(&m.config.digest)?;
        for (layer, diff_id) in m.layers.iter().zip(&config.rootfs.diff_ids) {
            let Some(gz) = self
                .store
                .read_meta("gzip", layer.digest.hex())
                .and_then(|b| String::from_utf8_lossy(&b).trim().parse::<Digest>().ok())
            else {
                continue;
            };
            let source = Source::Layer {
                layer: layer.clone(),
                diff_id: diff_id.clone(),
            };
            self.write_source(&gz, &source)?;
        }
        let source = Source::Manifest {
            manifest: manifest.clone(),
        };
        self.write_source(gzip, &source)
    }

    fn write_source(&self, gzip: &Digest, source: &Source) -> Result<()> {
        if self.store.read_meta(SOURCE, gzip.hex()).is_some() {
            return Ok(());
        }
        // Strings and digests only: encoding cannot fail (an empty record
        // would read as none).
        let bytes = serde_json::to_vec(source).unwrap_or_default();
        Ok(self.store.write_meta(SOURCE, gzip.hex(), &bytes)?)
    }
}

/// Told about each layer `gzip_variant` transcodes.
fn made(what: &str) {
    crate::metrics::MIRROR_GZIP_LAYERS_MADE.add(1);
    tracing::info!("mirror: {what}");
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN_20_10: &str = "docker/20.10.24+dfsg1 go/go1.19.8 git-commit/5d6db84 kernel/6.1.0 os/linux arch/amd64 UpstreamClient(Docker-Client/28.2.2 \\(linux\\))";

    #[test]
    fn docker_engines_are_known_by_their_user_agent() {
        assert_eq!(client_of(DEBIAN_20_10), Client::Docker(Some((20, 10))));
        assert_eq!(
            client_of("docker/27.3.1 go/go1.22.7 git-commit/41ca978 os/linux arch/amd64"),
            Client::Docker(Some((27, 3)))
        );
        assert_eq!(client_of("docker/dev go/go1.22"), Client::Docker(None));
        assert_eq!(client_of("containerd/1.6.20~ds1"), Client::Other);
        assert_eq!(
            client_of("containers/5.24.1 (github.com/containers/image)"),
            Client::Other
        );
        assert_eq!(client_of(""), Client::Other);
        assert_eq!(client_of("Docker-Client/20.10.24"), Client::Other);
    }

    #[test]
    fn only_docker_before_23_gets_gzip_in_auto_mode() {
        let auto = EngineGzip::Auto;
        assert!(auto.applies_to(&client_of(DEBIAN_20_10)));
        assert!(auto.applies_to(&Client::Docker(Some((22, 6)))));
        assert!(!auto.applies_to(&Client::Docker(Some((23, 0)))));
        assert!(!auto.applies_to(&Client::Docker(Some((100, 0)))));
        assert!(
            auto.applies_to(&Client::Docker(None)),
            "unknown version: gzip, which all read"
        );
        assert!(!auto.applies_to(&Client::Other));
        assert!(EngineGzip::Always.applies_to(&Client::Other));
        assert!(!EngineGzip::Never.applies_to(&client_of(DEBIAN_20_10)));
        assert_eq!("never".parse(), Ok(EngineGzip::Never));
        assert!("sometimes".parse::<EngineGzip>().is_err());
    }

    #[test]
    fn a_variant_is_made_only_of_images_with_zstd_layers_strata_can_read() {
        let d = |n: u8| Digest::sha256_of(&[n]);
        let layer = |c: LayerCompression, n| Descriptor::new(c.media_type(), d(n), 1);
        let manifest = |layers| Manifest {
            schema_version: 2,
            media_type: Some(MEDIA_MANIFEST.into()),
            config: Descriptor::new(crate::oci::MEDIA_CONFIG, d(0), 1),
            layers,
            annotations: Default::default(),
        };
        let zstd = layer(LayerCompression::Zstd, 1);
        let gzip = layer(LayerCompression::Gzip, 2);
        assert!(needs_variant(&manifest(vec![gzip.clone(), zstd.clone()])));
        assert!(!needs_variant(&manifest(vec![gzip.clone()])));
        assert!(!needs_variant(&manifest(vec![])));
        let foreign = Descriptor::new(
            "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
            d(3),
            1,
        );
        assert!(!needs_variant(&manifest(vec![zstd, foreign])));
    }

    #[test]
    fn an_index_variant_swaps_only_the_children_it_has_variants_of() {
        let d = |n: u8| Digest::sha256_of(&[n]);
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": crate::oci::MEDIA_INDEX,
            "manifests": [
                { "mediaType": MEDIA_MANIFEST, "digest": d(1).to_string(), "size": 10,
                  "platform": { "os": "linux", "architecture": "amd64" } },
                { "mediaType": MEDIA_MANIFEST, "digest": d(2).to_string(), "size": 20,
                  "platform": { "os": "linux", "architecture": "arm", "variant": "v7" } },
            ],
            "annotations": { "a": "b" },
        })
        .to_string();
        assert_eq!(
            index_children(index.as_bytes(), ("linux", "amd64")),
            Some(vec![d(1)])
        );
        assert_eq!(index_children(index.as_bytes(), ("linux", "s390x")), Some(vec![]));
        assert_eq!(
            index_children(b"{\"schemaVersion\": 2, \"layers\": []}", ("linux", "amd64")),
            None
        );

        let variant = Descriptor::new(crate::oci::MEDIA_DOCKER_MANIFEST, d(9), 99);
        let rewritten = rewrite_index(index.as_bytes(), &BTreeMap::from([(d(1), variant)])).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&rewritten).unwrap();
        assert_eq!(v["manifests"][0]["digest"], d(9).to_string());
        assert_eq!(v["manifests"][0]["size"], 99);
        assert_eq!(v["manifests"][0]["mediaType"], crate::oci::MEDIA_DOCKER_MANIFEST);
        assert_eq!(v["manifests"][0]["platform"]["architecture"], "amd64");
        assert_eq!(v["manifests"][1]["digest"], d(2).to_string());
        assert_eq!(v["manifests"][1]["platform"]["variant"], "v7");
        assert_eq!(v["annotations"]["a"], "b");
        assert_eq!(rewrite_index(index.as_bytes(), &BTreeMap::new()), None);
    }
}
