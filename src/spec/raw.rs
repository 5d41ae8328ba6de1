//! The on-disk shape of `layers.toml`, exactly as serde reads it.
//!
//! Nothing here is trusted: values keep their source spans so that the
//! resolve step can point at `layers.toml:LINE:COL` when they are wrong.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

pub type S<T> = Spanned<T>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    #[serde(default)]
    pub build: Option<S<BuildSection>>,
    #[serde(default)]
    pub tiers: BTreeMap<S<String>, S<Tier>>,
    /// The app tier template: every `[apps.NAME]` is a tier built from it.
    #[serde(default)]
    pub app: Option<S<Tier>>,
    #[serde(default)]
    pub apps: BTreeMap<S<String>, S<App>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildSection {
    pub source_date_epoch: Option<S<i64>>,
    pub compression: Option<S<String>>,
    pub level: Option<S<i32>>,
    pub repository: Option<S<String>>,
    pub tag: Option<S<String>>,
    pub platform: Option<S<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    pub parent: Option<S<String>>,
    pub base: Option<S<String>>,
    pub description: Option<S<String>>,
    #[serde(default)]
    pub sources: Vec<S<Source>>,
    #[serde(default)]
    pub delete: Vec<S<String>>,
    #[serde(default)]
    pub run: Vec<S<String>>,
    pub fixes: Option<S<Fixes>>,
    #[serde(default)]
    pub env: BTreeMap<String, S<String>>,
    pub entrypoint: Option<S<Vec<String>>>,
    pub cmd: Option<S<Vec<String>>>,
    pub user: Option<S<String>>,
    pub workdir: Option<S<String>>,
    #[serde(default)]
    pub ports: Vec<S<PortSpec>>,
    #[serde(default)]
    pub volumes: Vec<S<String>>,
    #[serde(default)]
    pub labels: BTreeMap<String, S<String>>,
    pub stop_signal: Option<S<String>>,
    /// Template only: the directory WARs are unpacked under.
    pub webapps: Option<S<String>>,
    /// Template only: the owner of unpacked WAR files (`uid:gid`).
    pub war_owner: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct App {
    pub war: S<String>,
    pub context: Option<S<String>>,
    #[serde(default)]
    pub env: BTreeMap<String, S<String>>,
    #[serde(default)]
    pub labels: BTreeMap<String, S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PortSpec {
    Number(u16),
    Text(String),
}

/// One source of files. Exactly one of the kind keys (`path`, `tar`, `deb`,
/// `war`, `content`, `symlink`, `dir`) must be set.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub path: Option<S<String>>,
    pub tar: Option<S<String>>,
    pub deb: Option<S<String>>,
    pub war: Option<S<String>>,
    pub content: Option<S<String>>,
    pub symlink: Option<S<String>>,
    pub dir: Option<S<Vec<String>>>,

    pub sha256: Option<S<String>>,
    pub sha512: Option<S<String>>,
    pub dest: Option<S<String>>,
    pub paths: Option<S<Vec<String>>>,
    pub strip_components: Option<S<u32>>,
    pub strip_prefix: Option<S<String>>,
    #[serde(default)]
    pub include: Vec<S<String>>,
    #[serde(default)]
    pub exclude: Vec<S<String>>,
    pub mode: Option<S<String>>,
    pub dir_mode: Option<S<String>>,
    pub owner: Option<S<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Fixes {
    pub timezone: Option<S<String>>,
    pub encoding: Option<S<String>>,
    pub hostname: Option<S<bool>>,
    pub jvm: Option<S<Jvm>>,
    pub init: Option<S<bool>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Jvm {
    pub max_ram_percentage: Option<S<f64>>,
    pub initial_ram_percentage: Option<S<f64>>,
    pub exit_on_oom: Option<S<bool>>,
    #[serde(default)]
    pub extra: Vec<S<String>>,
}
