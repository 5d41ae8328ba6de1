//! Reading an app spec: the raw TOML shapes (`deny_unknown_fields`,
//! every value with its span) and their resolution into [`App`], each
//! mistake named by `file:line:col` and key.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::Deserialize;
use toml::Spanned;

use super::{
    App, Check, Driver, Endpoint, Health, HotfixPolicy, Ipv4Net, Network, Reload, Result, SpecError, Swap,
    Volume, dynamic_slice, parse_duration, valid_app_name,
};
use crate::lease::Pool;
use crate::spec::{LineIndex, Location};

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
