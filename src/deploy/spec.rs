//! App specs (`deploy/apps/NAME.toml`): what an app is, where it runs,
//! how it is checked and what may be hotfixed. Read with serde
//! (`deny_unknown_fields`), then resolved into [`App`]: code past
//! [`load`] never sees a raw string where an address, a duration or a
//! glob belongs. Every mistake names `file:line:col` and the key.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::Deserialize;
use toml::Spanned;

use crate::lease::Pool;
use crate::spec::{LineIndex, Location};

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
#[cfg(test)]
mod tests;

pub use net::{Endpoint, Ipv4Net};

type S<T> = Spanned<T>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    name: S<String>,
    image: Option<S<String>>,
    #[serde(default)]
    instances: Option<S<u32>>,
    hosts: Option<S<Vec<S<String>>>>,
    network: S<RawNetwork>,
    #[serde(default)]
    env: BTreeMap<String, S<String>>,
    #[serde(default)]
    volumes: Vec<S<String>>,
    log_dir: Option<S<String>>,
    stop_grace: Option<S<String>>,
    memory_mib: Option<S<u64>>,
    command: Option<S<Vec<String>>>,
    user: Option<S<String>>,
    swap: Option<S<String>>,
    max_unavailable: Option<S<u32>>,
    health: Option<S<RawHealth>>,
    hotfix: Option<S<RawHotfix>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    name: S<String>,
    driver: Option<S<String>>,
    subnet: S<String>,
    gateway: Option<S<String>>,
    dynamic_range: Option<S<String>>,
    pool: S<String>,
    parent: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    kind: S<String>,
    port: Option<S<u16>>,
    path: Option<S<String>>,
    command: Option<S<Vec<String>>>,
    interval: Option<S<String>>,
    timeout: Option<S<String>>,
    retries: Option<S<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHotfix {
    #[serde(default)]
    paths: Vec<S<String>>,
    reload: Option<S<String>>,
    command: Option<S<Vec<String>>>,
    signal: Option<S<String>>,
    context: Option<S<String>>,
    health_deadline: Option<S<String>>,
}

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

struct Ctx<'a> {
    file: &'a Path,
    lines: LineIndex,
}

impl Ctx<'_> {
    fn at(&self, offset: usize) -> Location {
        self.lines.at(self.file, offset)
    }

    fn loc<T>(&self, s: &Spanned<T>) -> Location {
        self.at(s.span().start)
    }

    fn bad<T>(&self, s: &Spanned<T>, key: &str, value: impl ToString, expected: &str) -> SpecError {
        SpecError::BadValue {
            at: self.loc(s),
            key: key.to_string(),
            value: value.to_string(),
            expected: expected.to_string(),
        }
    }

    fn invalid<T>(&self, s: &Spanned<T>, key: &str, why: impl Into<String>) -> SpecError {
        SpecError::Invalid {
            at: self.loc(s),
            key: key.to_string(),
            why: why.into(),
        }
    }

    fn duration(&self, s: Option<&S<String>>, key: &str, default: Duration) -> Result<Duration> {
        match s {
            None => Ok(default),
            Some(s) => parse_duration(s.get_ref())
                .ok_or_else(|| self.bad(s, key, s.get_ref(), "a duration like 500ms, 10s or 2m")),
        }
    }

    fn ip(&self, s: &S<String>, key: &str) -> Result<Ipv4Addr> {
        s.get_ref()
            .parse()
            .map_err(|_| self.bad(s, key, s.get_ref(), "an IPv4 address"))
    }

    fn net(&self, s: &S<String>, key: &str) -> Result<Ipv4Net> {
        Ipv4Net::parse(s.get_ref())
            .ok_or_else(|| self.bad(s, key, s.get_ref(), "a network like 10.91.0.0/24"))
    }
}

/// Resolves spec text as if read from `path`.
pub fn parse(path: &Path, text: &str) -> Result<App> {
    let cx = Ctx {
        file: path,
        lines: LineIndex::new(text),
    };
    let raw: RawApp = toml::from_str(text).map_err(|e| SpecError::Syntax {
        at: cx.at(e.span().map(|s| s.start).unwrap_or(0)),
        message: e.message().trim_end().to_string(),
    })?;

    let name = raw.name.get_ref().clone();
    if !valid_app_name(&name) {
        return Err(cx.bad(
            &raw.name,
            "name",
            &name,
            "an app name ([a-z0-9][a-z0-9-]*, at most 48)",
        ));
    }
    let instances = match &raw.instances {
        Some(n) if *n.get_ref() > 1000 => {
            return Err(cx.bad(n, "instances", n.get_ref(), "between 0 and 1000"));
        }
        Some(n) => *n.get_ref(),
        None => 1,
    };
    let hosts = match &raw.hosts {
        None => vec![Endpoint::Unix(PathBuf::from("/var/run/docker.sock"))],
        Some(h) if h.get_ref().is_empty() => {
            return Err(cx.invalid(h, "hosts", "needs at least one engine endpoint"));
        }
        Some(h) => h
            .get_ref()
            .iter()
            .map(|e| Endpoint::parse(e.get_ref()).map_err(|why| cx.bad(e, "hosts", e.get_ref(), &why)))
            .collect::<Result<_>>()?,
    };

    let n = raw.network.get_ref();
    if !valid_network_name(n.name.get_ref()) {
        return Err(cx.bad(
            &n.name,
            "network.name",
            n.name.get_ref(),
            "a network name ([A-Za-z0-9][A-Za-z0-9_.-]*)",
        ));
    }
    let driver = match (n.driver.as_ref().map(|d| d.get_ref().as_str()), &n.parent) {
        (None | Some("bridge"), None) => Driver::Bridge,
        (None | Some("bridge"), Some(p)) => {
            return Err(cx.invalid(
                p,
                "network.parent",
                "only a macvlan network has a parent interface",
            ));
        }
        (Some("macvlan"), Some(p)) => Driver::Macvlan {
            parent: p.get_ref().clone(),
        },
        (Some("macvlan"), None) => {
            return Err(cx.invalid(
                &raw.network,
                "network.parent",
                "a macvlan network needs its parent interface",
            ));
        }
        (Some(other), _) => {
            let d = n.driver.as_ref().expect("matched Some");
            return Err(cx.bad(d, "network.driver", other, "`bridge` or `macvlan`"));
        }
    };
    let subnet = cx.net(&n.subnet, "network.subnet")?;
    let gateway = n
        .gateway
        .as_ref()
        .map(|g| cx.ip(g, "network.gateway"))
        .transpose()?;
    let dynamic_range = n
        .dynamic_range
        .as_ref()
        .map(|r| cx.net(r, "network.dynamic_range"))
        .transpose()?;
    let pool = Pool::new(n.name.get_ref(), n.pool.get_ref())
        .map_err(|e| cx.invalid(&n.pool, "network.pool", e.to_string()))?;
    if !subnet.contains(pool.first) || !subnet.contains(pool.last) {
        return Err(cx.invalid(
            &n.pool,
            "network.pool",
            format!("{}-{} is not inside the subnet {subnet}", pool.first, pool.last),
        ));
    }
    if pool.contains(subnet.first()) || pool.contains(subnet.last()) {
        return Err(cx.invalid(
            &n.pool,
            "network.pool",
            format!(
                "must not include the network address {} or broadcast {}",
                subnet.first(),
                subnet.last()
            ),
        ));
    }
    if let Some(g) = gateway {
        if !subnet.contains(g) {
            return Err(cx.invalid(
                n.gateway.as_ref().expect("parsed"),
                "network.gateway",
                format!("{g} is not inside the subnet {subnet}"),
            ));
        }
        if pool.contains(g) {
            return Err(cx.invalid(
                n.gateway.as_ref().expect("parsed"),
                "network.gateway",
                format!("{g} is inside the pool"),
            ));
        }
    }
    if let Some(r) = dynamic_range {
        if !subnet.contains(r.first()) || !subnet.contains(r.last()) {
            return Err(cx.invalid(
                n.dynamic_range.as_ref().expect("parsed"),
                "network.dynamic_range",
                format!("{r} is not inside the subnet {subnet}"),
            ));
        }
        let overlap =
            u32::from(pool.first) <= u32::from(r.last()) && u32::from(r.first()) <= u32::from(pool.last);
        if overlap {
            return Err(cx.invalid(
                n.dynamic_range.as_ref().expect("parsed"),
                "network.dynamic_range",
                format!("{r} overlaps the pool {}-{}: the engine could hand a leased address to another container", pool.first, pool.last),
            ));
        }
    }
    if let (Some(r), Driver::Macvlan { .. }) = (dynamic_range, &driver)
        && dynamic_slice(r, hosts.len(), 0).is_none()
    {
        return Err(cx.invalid(
            n.dynamic_range.as_ref().expect("parsed"),
            "network.dynamic_range",
            format!(
                "{r} is too small to give each of the {} hosts a slice of its own of at least 4 addresses (the engines of a macvlan network allocate on their own)",
                hosts.len()
            ),
        ));
    }
    if u64::from(instances) > pool.size() {
        return Err(cx.invalid(
            raw.instances.as_ref().expect("above 1 only when set"),
            "instances",
            format!("{instances} instances but the pool has {} addresses", pool.size()),
        ));
    }
    let network = Network {
        name: n.name.get_ref().clone(),
        driver,
        subnet,
        gateway,
        dynamic_range,
        pool,
    };

    let mut env = BTreeMap::new();
    for (k, v) in &raw.env {
        if k.is_empty() || k.contains('=') {
            return Err(cx.bad(v, "env", k, "a variable name without `=`"));
        }
        env.insert(k.clone(), v.get_ref().clone());
    }
    let mut volumes = Vec::new();
    for v in &raw.volumes {
        let s = v.get_ref();
        let parts: Vec<&str> = s.split(':').collect();
        let ok = matches!(parts.len(), 2 | 3)
            && !parts[0].is_empty()
            && parts[1].starts_with('/')
            && (parts.len() == 2 || matches!(parts[2], "ro" | "rw"));
        if !ok {
            return Err(cx.bad(
                v,
                "volumes",
                s,
                "`/host/path:/container/path[:ro]` or `name:/container/path`",
            ));
        }
        volumes.push(Volume(s.clone()));
    }
    let log_dir = match &raw.log_dir {
        Some(d) if !d.get_ref().starts_with('/') => {
            return Err(cx.bad(d, "log_dir", d.get_ref(), "an absolute path in the container"));
        }
        d => d.as_ref().map(|d| d.get_ref().clone()),
    };
    let stop_grace = cx.duration(raw.stop_grace.as_ref(), "stop_grace", Duration::from_secs(10))?;

    let health = match &raw.health {
        None => Health {
            check: Check::Tcp { port: 8080 },
            interval: Duration::from_millis(250),
            timeout: Duration::from_secs(2),
            retries: 240,
        },
        Some(h) => health(&cx, h)?,
    };
    let hotfix = match &raw.hotfix {
        None => HotfixPolicy {
            patterns: vec![],
            set: GlobSet::empty(),
            reload: Reload::None,
            health_deadline: DEFAULT_HOTFIX_HEALTH_DEADLINE,
        },
        Some(h) => hotfix(&cx, h)?,
    };
    let command = match &raw.command {
        Some(c) if c.get_ref().is_empty() => {
            return Err(cx.invalid(c, "command", "an empty command: leave it out to use the image's"));
        }
        c => c.as_ref().map(|c| c.get_ref().clone()),
    };
    let swap = match raw.swap.as_ref().map(|s| s.get_ref().as_str()) {
        None | Some("detach") => Swap::Detach,
        Some("drain") => Swap::Drain,
        Some(other) => {
            let s = raw.swap.as_ref().expect("matched Some");
            return Err(cx.bad(s, "swap", other, "`detach` or `drain`"));
        }
    };
    let max_unavailable = match &raw.max_unavailable {
        Some(n) if !(1..=100).contains(n.get_ref()) => {
            return Err(cx.bad(n, "max_unavailable", n.get_ref(), "between 1 and 100"));
        }
        Some(n) => *n.get_ref(),
        None => 1,
    };
    let user = match &raw.user {
        Some(u) if u.get_ref().trim().is_empty() || u.get_ref().contains(char::is_whitespace) => {
            return Err(cx.bad(u, "user", u.get_ref(), "a user name or UID[:GID]"));
        }
        u => u.as_ref().map(|u| u.get_ref().clone()),
    };
    Ok(App {
        file: path.to_path_buf(),
        name,
        image: raw.image.map(|i| i.into_inner()),
        instances,
        hosts,
        network,
        env,
        volumes,
        log_dir,
        stop_grace,
        memory_mib: raw.memory_mib.map(|m| m.into_inner()),
        command,
        user,
        swap,
        max_unavailable,
        health,
        hotfix,
    })
}

fn valid_network_name(s: &str) -> bool {
    !s.is_empty()
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

fn health(cx: &Ctx, s: &S<RawHealth>) -> Result<Health> {
    let h = s.get_ref();
    let port = |key: &str| {
        h.port
            .as_ref()
            .map(|p| *p.get_ref())
            .ok_or_else(|| cx.invalid(s, key, format!("a `{}` check needs `port`", h.kind.get_ref())))
    };
    let check = match h.kind.get_ref().as_str() {
        "http" => {
            let path = h
                .path
                .as_ref()
                .map(|p| p.get_ref().clone())
                .unwrap_or_else(|| "/".into());
            if !path.starts_with('/') {
                let p = h.path.as_ref().expect("defaulted to /");
                return Err(cx.bad(p, "health.path", &path, "a URL path starting with /"));
            }
            Check::Http {
                port: port("health.port")?,
                path,
            }
        }
        "tcp" => Check::Tcp {
            port: port("health.port")?,
        },
        "exec" => match &h.command {
            Some(c) if !c.get_ref().is_empty() => Check::Exec(c.get_ref().clone()),
            _ => return Err(cx.invalid(s, "health.command", "an `exec` check needs a non-empty `command`")),
        },
        other => return Err(cx.bad(&h.kind, "health.kind", other, "`http`, `tcp` or `exec`")),
    };
    let retries = match &h.retries {
        Some(r) if *r.get_ref() == 0 => return Err(cx.bad(r, "health.retries", 0, "at least 1")),
        Some(r) => *r.get_ref(),
        None => 240,
    };
    Ok(Health {
        check,
        interval: cx.duration(h.interval.as_ref(), "health.interval", Duration::from_millis(250))?,
        timeout: cx.duration(h.timeout.as_ref(), "health.timeout", Duration::from_secs(2))?,
        retries,
    })
}

/// How long a hotfixed instance may answer its health check wrongly
/// before the backup goes back.
pub const DEFAULT_HOTFIX_HEALTH_DEADLINE: Duration = Duration::from_secs(10);

/// Signal names Docker accepts for a kill.
const SIGNALS: [&str; 8] = [
    "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGTERM", "SIGINT", "SIGQUIT", "SIGWINCH", "SIGCONT",
];

fn hotfix(cx: &Ctx, s: &S<RawHotfix>) -> Result<HotfixPolicy> {
    let h = s.get_ref();
    let mut b = GlobSetBuilder::new();
    let mut patterns = Vec::new();
    for p in &h.paths {
        let pat = p.get_ref();
        if !pat.starts_with('/') || pat.split('/').any(|c| c == "..") {
            return Err(cx.bad(
                p,
                "hotfix.paths",
                pat,
                "an absolute path or glob in the container without `..`",
            ));
        }
        let g =
            Glob::new(pat).map_err(|e| cx.bad(p, "hotfix.paths", pat, &format!("a glob ({})", e.kind())))?;
        b.add(g);
        patterns.push(pat.clone());
    }
    let set = b
        .build()
        .map_err(|e| cx.invalid(s, "hotfix.paths", e.to_string()))?;
    let reload = match h.reload.as_ref().map(|r| r.get_ref().as_str()) {
        None | Some("none") => Reload::None,
        Some("exec") => match &h.command {
            Some(c) if !c.get_ref().is_empty() => Reload::Exec(c.get_ref().clone()),
            _ => {
                return Err(cx.invalid(
                    s,
                    "hotfix.command",
                    "`reload = \"exec\"` needs a non-empty `command`",
                ));
            }
        },
        Some("signal") => {
            let sig = h
                .signal
                .as_ref()
                .ok_or_else(|| cx.invalid(s, "hotfix.signal", "`reload = \"signal\"` needs `signal`"))?;
            let name = sig.get_ref().to_ascii_uppercase();
            let name = if name.starts_with("SIG") {
                name
            } else {
                format!("SIG{name}")
            };
            if !SIGNALS.contains(&name.as_str()) {
                return Err(cx.bad(
                    sig,
                    "hotfix.signal",
                    sig.get_ref(),
                    &format!("one of {}", SIGNALS.join(", ")),
                ));
            }
            Reload::Signal(name)
        }
        Some("tomcat-context") => {
            let c = h.context.as_ref().ok_or_else(|| {
                cx.invalid(
                    s,
                    "hotfix.context",
                    "`reload = \"tomcat-context\"` needs `context`, the webapp directory",
                )
            })?;
            if !c.get_ref().starts_with('/') {
                return Err(cx.bad(
                    c,
                    "hotfix.context",
                    c.get_ref(),
                    "an absolute path in the container",
                ));
            }
            Reload::TomcatContext(c.get_ref().trim_end_matches('/').to_string())
        }
        Some(other) => {
            let r = h.reload.as_ref().expect("matched Some");
            return Err(cx.bad(
                r,
                "hotfix.reload",
                other,
                "`none`, `exec`, `signal` or `tomcat-context`",
            ));
        }
    };
    let health_deadline = cx.duration(
        h.health_deadline.as_ref(),
        "hotfix.health_deadline",
        DEFAULT_HOTFIX_HEALTH_DEADLINE,
    )?;
    Ok(HotfixPolicy {
        patterns,
        set,
        reload,
        health_deadline,
    })
}
