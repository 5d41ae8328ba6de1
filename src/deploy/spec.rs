//! App specs (`deploy/apps/NAME.toml`): what an app is, where it runs,
//! how it is checked and what may be hotfixed. Read with serde
//! (`deny_unknown_fields`), then resolved into [`App`]: code past
//! [`load`] never sees a raw string where an address, a duration or a
//! glob belongs. Every mistake names `file:line:col` and the key.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use globset::GlobSet;

use crate::lease::Pool;
use crate::spec::Location;

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read app spec {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{at}: {message}")]
    Syntax { at: Location, message: String },
    #[error("{at}: `{key}`: `{value}` is not {expected}")]
    BadValue {
        at: Location,
        key: String,
        value: String,
        expected: String,
    },
    #[error("{at}: `{key}`: {why}")]
    Invalid { at: Location, key: String, why: String },
    #[error("unknown app `{name}`: no {} (apps: {})", path.display(), if known.is_empty() { "none".to_string() } else { known.join(", ") })]
    UnknownApp {
        name: String,
        path: PathBuf,
        known: Vec<String>,
    },
}

pub type Result<T, E = SpecError> = std::result::Result<T, E>;

mod net;
mod parse;
#[cfg(test)]
mod tests;

pub use net::{Endpoint, Ipv4Net};
pub use parse::parse;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Driver {
    Bridge,
    Macvlan { parent: String },
}

#[derive(Debug, Clone)]
pub struct Network {
    pub name: String,
    pub driver: Driver,
    pub subnet: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
    /// The engine's own dynamic range (`ip_range`); never overlaps `pool`.
    pub dynamic_range: Option<Ipv4Net>,
    /// The static addresses strata leases to instances.
    pub pool: Pool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// GET http://IP:PORT/PATH answers 2xx or 3xx.
    Http { port: u16, path: String },
    /// A TCP connection to IP:PORT succeeds.
    Tcp { port: u16 },
    /// The command exits 0 inside the container.
    Exec(Vec<String>),
}

#[derive(Debug, Clone)]
pub struct Health {
    pub check: Check,
    /// Time between probes.
    pub interval: Duration,
    /// Time one probe may take.
    pub timeout: Duration,
    /// Probes before the instance counts as unhealthy.
    pub retries: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// Nothing: the app picks up files itself (static files, JSPs).
    None,
    /// Run a command inside the container.
    Exec(Vec<String>),
    /// Send a signal to the container's main process.
    Signal(String),
    /// Reload a Tomcat context by touching its watched `WEB-INF/web.xml`.
    TomcatContext(String),
}

#[derive(Debug, Clone)]
pub struct HotfixPolicy {
    /// The patterns as written (absolute paths, globs).
    pub patterns: Vec<String>,
    set: GlobSet,
    pub reload: Reload,
    /// How long a hotfixed instance may stay unhealthy before its backup
    /// goes back (default 10 s): separate from the start-up budget of a
    /// fresh container, which is `health.retries × health.interval`.
    pub health_deadline: Duration,
}

impl HotfixPolicy {
    /// Whether an image path (relative, as in listings) may be hotfixed.
    pub fn eligible(&self, path: &str) -> bool {
        !self.patterns.is_empty() && self.set.is_match(format!("/{}", path.trim_start_matches('/')))
    }
}

/// How a warm redeploy moves the IP from the old container to the new,
/// healthy one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Swap {
    /// The old container leaves the network, the new one takes the IP at
    /// once, then the old one stops: the shortest gap (two engine calls),
    /// but requests in flight on the old container are cut.
    #[default]
    Detach,
    /// The old container stops gracefully first (finishing its requests,
    /// refusing new ones), then the IP moves: a longer gap.
    Drain,
}

/// A bind mount (`/host:/container[:ro]`) or a named volume (`name:/container`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume(pub String);

/// A checked app spec.
#[derive(Debug, Clone)]
pub struct App {
    pub file: PathBuf,
    pub name: String,
    /// The image deployed when none is given.
    pub image: Option<String>,
    pub instances: u32,
    /// Instances go round-robin over these.
    pub hosts: Vec<Endpoint>,
    pub network: Network,
    pub env: BTreeMap<String, String>,
    pub volumes: Vec<Volume>,
    /// Kept in a named volume per instance, so logs survive redeploys.
    pub log_dir: Option<String>,
    pub stop_grace: Duration,
    pub memory_mib: Option<u64>,
    /// The container's command (default: the image's).
    pub command: Option<Vec<String>>,
    /// The user the container runs as (default: the image's).
    pub user: Option<String>,
    /// How a warm redeploy hands the IP over (default `detach`).
    pub swap: Swap,
    /// How many instances a rolling redeploy replaces at once (default
    /// 1): their new containers warm up side by side while the old ones
    /// serve, then take over their IPs one after the other. Cold
    /// redeploys (no warm swap possible) go one at a time.
    pub max_unavailable: u32,
    pub health: Health,
    pub hotfix: HotfixPolicy,
}

impl App {
    /// The instance's name, also its hostname and lease owner: `APP-N`.
    pub fn instance_name(&self, index: u32) -> String {
        format!("{}-{index}", self.name)
    }

    /// Where instance `index` (from 1) runs, given where the instances
    /// run now (`current`: index → endpoint as recorded). An instance
    /// stays on its host while `hosts` lists it; a new one, or one whose
    /// host left `hosts` (a drain), goes to the listed host with the
    /// fewest instances, the first listed on a tie. From nothing this is
    /// round-robin: instance i on host ((i − 1) mod K) + 1. Adding a host
    /// moves nothing; only new instances go there. A `drained` host is as
    /// if it were not listed (unless every host is).
    pub fn host_of(
        &self,
        index: u32,
        current: &BTreeMap<u32, String>,
        drained: &dyn Fn(&str) -> bool,
    ) -> &Endpoint {
        let open: Vec<bool> = self.hosts.iter().map(|h| !drained(&h.to_string())).collect();
        let every_drained = !open.contains(&true);
        let usable = |p: usize| open[p] || every_drained;
        let listed = |i: u32| {
            let h = current.get(&i)?;
            self.hosts
                .iter()
                .position(|e| e.to_string() == *h)
                .filter(|&p| usable(p))
        };
        let mut load = vec![0usize; self.hosts.len()];
        for i in 1..=self.instances {
            if let Some(p) = listed(i) {
                load[p] += 1;
            }
        }
        if let Some(p) = listed(index) {
            return &self.hosts[p];
        }
        for i in 1..=self.instances.max(index) {
            if listed(i).is_some() {
                continue;
            }
            let p = (0..load.len())
                .filter(|&p| usable(p))
                .min_by_key(|&p| (load[p], p))
                .expect("at least one host");
            if i == index {
                return &self.hosts[p];
            }
            load[p] += 1;
        }
        unreachable!("index {index} was placed in the loop")
    }

    /// The part of the dynamic range that the engine at `endpoint` hands
    /// out (warm-up addresses). A bridge network lives on its host alone
    /// and gets the whole range. The engines of a macvlan network share
    /// one LAN but allocate on their own, so each host gets a disjoint
    /// slice (see [`dynamic_slice`]): otherwise two hosts hand out the
    /// same address, at once (two IPs in conflict, a health check that
    /// reaches the wrong container) or in turn (the switch still sends
    /// the address's MAC, which Docker derives from the IP, to the port
    /// of the host that had it first, until the new container speaks).
    pub fn dynamic_range_of(&self, endpoint: &Endpoint) -> Option<Ipv4Net> {
        let range = self.network.dynamic_range?;
        match self.network.driver {
            Driver::Bridge => Some(range),
            Driver::Macvlan { .. } => {
                let i = self.hosts.iter().position(|h| h == endpoint).unwrap_or(0);
                dynamic_slice(range, self.hosts.len(), i)
            }
        }
    }
}

/// Slice `i` of `range` split into the smallest power of two of equal
/// networks that is at least `hosts`; None when a slice would hold fewer
/// than 4 addresses.
pub fn dynamic_slice(range: Ipv4Net, hosts: usize, i: usize) -> Option<Ipv4Net> {
    let bits = hosts.max(1).next_power_of_two().trailing_zeros() as u8;
    let prefix = range.prefix + bits;
    if prefix > 30 || i >= 1 << bits {
        return None;
    }
    let size = 1u32 << (32 - prefix);
    Some(Ipv4Net {
        addr: Ipv4Addr::from(u32::from(range.addr) + size * i as u32),
        prefix,
    })
}

/// `500ms`, `10s`, `2m`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let i = s.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = s.split_at(i);
    let n: u64 = num.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n * 60)),
        _ => None,
    }
}

pub fn valid_app_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 48
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// The names of the app specs in `dir` (`NAME.toml`), sorted.
pub fn list(dir: &Path) -> Vec<String> {
    let mut known: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.strip_suffix(".toml").map(str::to_string)
        })
        .collect();
    known.sort();
    known
}

/// The spec of app `name` in `dir` (`dir/NAME.toml`).
pub fn find(dir: &Path, name: &str) -> Result<App> {
    let path = dir.join(format!("{name}.toml"));
    if !valid_app_name(name) || !path.is_file() {
        return Err(SpecError::UnknownApp {
            name: name.to_string(),
            path,
            known: list(dir),
        });
    }
    let app = load(&path)?;
    if app.name != name {
        return Err(SpecError::Invalid {
            at: Location {
                file: path,
                line: 1,
                col: 1,
            },
            key: "name".into(),
            why: format!("the file of app `{name}` declares `{}`", app.name),
        });
    }
    Ok(app)
}

pub fn load(path: &Path) -> Result<App> {
    let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text)
}
