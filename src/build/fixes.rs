//! The fixes every Java image needs, each a named unit baked once into the
//! tier that declares it: `timezone`, `encoding`, `hostname`, `jvm` and
//! `init`. A fix adds files to the tier's tree and sets config; it never
//! reads the network and never changes files of other tiers.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::build::tree::{Content, Meta, NodeKind, Tree, TreeError};
use crate::oci::ImageConfig;
use crate::oci::listing::{Entry, EntryKind};
use crate::spec::{ConfigChanges, Fixes, ImagePath};

/// Part of every cache key: bump when a fix's output changes in a way the
/// texts in [`fingerprint`] do not show.
const VERSION: &str = "fixes-v1";

/// What the fixes write, for cache keys: a changed init script rebuilds
/// the tiers that carry it.
pub fn fingerprint() -> String {
    format!("{VERSION}\0{INIT_SCRIPT}\0{NSSWITCH}")
}

/// Where the init fix installs its entrypoint.
pub const INIT_PATH: &str = "/usr/local/bin/strata-init";

/// The host's zoneinfo, used when the image has no tzdata of its own.
const HOST_ZONEINFO: &str = "/usr/share/zoneinfo";

#[derive(Debug, thiserror::Error)]
pub enum FixError {
    #[error(
        "fix timezone: zone `{zone}` is neither in the image (/usr/share/zoneinfo) nor on the build host ({HOST_ZONEINFO})"
    )]
    UnknownZone { zone: String },
    #[error(
        "fix init: the image has no /bin/sh for {INIT_PATH} (add busybox or a shell in this or a parent tier)"
    )]
    NoShell,
    #[error("fix {fix}: {source}")]
    Tree { fix: &'static str, source: TreeError },
}

type Result<T> = std::result::Result<T, FixError>;

/// Applies the tier's fixes and returns their names, in order.
pub fn apply(
    fixes: &Fixes,
    tree: &mut Tree,
    config: &mut ImageConfig,
    parent: &BTreeMap<String, Entry>,
    changes: &ConfigChanges,
) -> Result<Vec<String>> {
    let mut applied = Vec::new();
    if let Some(zone) = &fixes.timezone {
        timezone(zone, tree, config, parent)?;
        applied.push("timezone".to_string());
    }
    if let Some(enc) = &fixes.encoding {
        encoding(enc, config);
        applied.push("encoding".to_string());
    }
    if fixes.hostname {
        hostname(tree, config, parent)?;
        applied.push("hostname".to_string());
    }
    if let Some(jvm) = &fixes.jvm {
        let mut opts = vec![format!("-XX:MaxRAMPercentage={:.1}", jvm.max_ram_percentage)];
        if let Some(p) = jvm.initial_ram_percentage {
            opts.push(format!("-XX:InitialRAMPercentage={p:.1}"));
        }
        if jvm.exit_on_oom {
            opts.push("-XX:+ExitOnOutOfMemoryError".to_string());
        }
        opts.extend(jvm.extra.iter().cloned());
        // Fixed heap and PermGen sizes defeat the percentages; drop them
        // wherever the image sets JVM options.
        for var in ["JAVA_TOOL_OPTIONS", "JAVA_OPTS", "CATALINA_OPTS"] {
            if let Some(v) = config.env(var) {
                let kept = strip_fixed_sizes(v);
                config.set_env(var, &kept);
            }
        }
        add_java_options(config, &opts);
        applied.push("jvm".to_string());
    }
    if fixes.init {
        init(tree, config, parent, changes)?;
        applied.push("init".to_string());
    }
    Ok(applied)
}

fn inline(tree: &mut Tree, fix: &'static str, path: &str, body: &str, mode: u32) -> Result<()> {
    let bytes: Arc<[u8]> = Arc::from(body.as_bytes());
    tree.insert(
        ImagePath::parse(path).expect("fix paths are constants"),
        NodeKind::File {
            size: bytes.len() as u64,
            content: Content::Inline(bytes),
        },
        Meta { mode, uid: 0, gid: 0 },
    )
    .map_err(|source| FixError::Tree { fix, source })
}

fn exists(tree: &Tree, parent: &BTreeMap<String, Entry>, path: &str) -> bool {
    let p = ImagePath::parse(path).expect("constant path");
    match tree.get(&p) {
        Some(n) => !matches!(n.kind, NodeKind::Whiteout),
        None => parent
            .get(p.as_str())
            .is_some_and(|e| e.kind != EntryKind::Whiteout),
    }
}

/// `/etc/localtime` (a link into the image's zoneinfo, or a copy of the
/// host's zone file), `/etc/timezone` and `TZ`.
fn timezone(
    zone: &str,
    tree: &mut Tree,
    config: &mut ImageConfig,
    parent: &BTreeMap<String, Entry>,
) -> Result<()> {
    let in_image = format!("/usr/share/zoneinfo/{zone}");
    let localtime = ImagePath::parse("/etc/localtime").expect("constant path");
    if exists(tree, parent, &in_image) {
        tree.insert(
            localtime,
            NodeKind::Symlink(in_image),
            Meta {
                mode: 0o777,
                uid: 0,
                gid: 0,
            },
        )
        .map_err(|source| FixError::Tree {
            fix: "timezone",
            source,
        })?;
    } else {
        let host = Path::new(HOST_ZONEINFO).join(zone);
        let real = std::fs::canonicalize(&host).map_err(|_| FixError::UnknownZone {
            zone: zone.to_string(),
        })?;
        let md = std::fs::metadata(&real).map_err(|_| FixError::UnknownZone {
            zone: zone.to_string(),
        })?;
        tree.insert(
            localtime,
            NodeKind::File {
                content: Content::Host(real),
                size: md.len(),
            },
            Meta::FILE,
        )
        .map_err(|source| FixError::Tree {
            fix: "timezone",
            source,
        })?;
    }
    inline(tree, "timezone", "/etc/timezone", &format!("{zone}\n"), 0o644)?;
    config.set_env("TZ", zone);
    Ok(())
}

/// `LANG`/`LC_ALL` and the JVM's file and path encodings.
fn encoding(enc: &str, config: &mut ImageConfig) {
    let locale = format!("C.{enc}");
    config.set_env("LANG", &locale);
    config.set_env("LC_ALL", &locale);
    add_java_options(
        config,
        &[
            format!("-Dfile.encoding={enc}"),
            format!("-Dsun.jnu.encoding={enc}"),
        ],
    );
}

/// Makes the container's hostname resolvable so that Java's
/// `InetAddress.getLocalHost()` works when `/etc/hosts` lacks it: the init
/// script adds it at start (see [`INIT_SCRIPT`]), `/etc/nsswitch.conf`
/// consults files first, and `/etc/sysconfig/network` exists for tools
/// that read it.
fn hostname(tree: &mut Tree, config: &mut ImageConfig, parent: &BTreeMap<String, Entry>) -> Result<()> {
    if !exists(tree, parent, "/etc/nsswitch.conf") {
        inline(tree, "hostname", "/etc/nsswitch.conf", NSSWITCH, 0o644)?;
    }
    inline(
        tree,
        "hostname",
        "/etc/sysconfig/network",
        "NETWORKING=yes\n",
        0o644,
    )?;
    config.set_env("STRATA_HOSTNAME_FIX", "1");
    Ok(())
}

const NSSWITCH: &str = "# written by strata's hostname fix\n\
passwd: files\n\
group: files\n\
shadow: files\n\
hosts: files dns\n\
networks: files\n\
protocols: files\n\
services: files\n";

/// The entrypoint strata bakes in. It runs as PID 1 only until its final
/// `exec`, so the image's command becomes PID 1 and receives SIGTERM from
/// `docker stop` directly.
pub const INIT_SCRIPT: &str = r#"#!/bin/sh
# strata-init: baked in by strata's `init` fix.
# 1. With the hostname fix, make $(hostname) resolvable when /etc/hosts lacks it
#    (Java's InetAddress.getLocalHost() throws UnknownHostException otherwise).
# 2. exec the command, so it becomes PID 1 and gets SIGTERM from `docker stop`.
if [ "${STRATA_HOSTNAME_FIX:-0}" = 1 ]; then
    h=$(cat /proc/sys/kernel/hostname 2>/dev/null)
    if [ -n "$h" ] && ! grep -q "[[:space:]]$h\([[:space:]]\|\$\)" /etc/hosts 2>/dev/null; then
        if [ -w /etc/hosts ]; then
            printf '127.0.0.1\t%s\n' "$h" >> /etc/hosts
        else
            echo "strata-init: $h is not in /etc/hosts and /etc/hosts is not writable" >&2
        fi
    fi
fi
# 3. With STRATA_RUN_AS=USER, drop root after the fixes above, still by exec.
if [ -n "${STRATA_RUN_AS:-}" ] && [ "$(id -u)" = 0 ]; then
    if command -v su-exec >/dev/null 2>&1; then
        exec su-exec "$STRATA_RUN_AS" "$@"
    elif setpriv --help 2>&1 | grep -q reuid; then
        exec setpriv --reuid="$STRATA_RUN_AS" --regid="$STRATA_RUN_AS" --init-groups "$@"
    fi
    # busybox su execs the shell, which execs the command: no process stays
    # in between, so the command is still PID 1.
    exec su -m -s /bin/sh "$STRATA_RUN_AS" -c 'exec "$@"' strata-init "$@"
fi
exec "$@"
"#;

/// Installs [`INIT_SCRIPT`] and makes it the entrypoint, in front of the
/// tier's own entrypoint when it declares one.
fn init(
    tree: &mut Tree,
    config: &mut ImageConfig,
    parent: &BTreeMap<String, Entry>,
    changes: &ConfigChanges,
) -> Result<()> {
    if !exists(tree, parent, "/bin/sh") {
        return Err(FixError::NoShell);
    }
    inline(tree, "init", INIT_PATH, INIT_SCRIPT, 0o755)?;
    let mut ep = vec![INIT_PATH.to_string()];
    if let Some(own) = &changes.entrypoint {
        ep.extend(own.iter().filter(|a| a.as_str() != INIT_PATH).cloned());
    }
    config.config.entrypoint = Some(ep);
    Ok(())
}

/// The option's identity for replacement: `-Dkey`, `-XX:Name`, `-Xmx`.
fn option_key(opt: &str) -> String {
    if let Some(rest) = opt.strip_prefix("-XX:") {
        let name = rest.trim_start_matches(['+', '-']);
        return format!("-XX:{}", name.split('=').next().unwrap_or(name));
    }
    for p in ["-Xmx", "-Xms", "-Xss", "-Xmn"] {
        if opt.starts_with(p) {
            return p.to_string();
        }
    }
    opt.split('=').next().unwrap_or(opt).to_string()
}

/// Adds options to `JAVA_TOOL_OPTIONS`, replacing earlier ones with the
/// same key so tiers can refine what their parents set.
pub fn add_java_options(config: &mut ImageConfig, opts: &[String]) {
    let keys: Vec<String> = opts.iter().map(|o| option_key(o)).collect();
    let mut all: Vec<String> = config
        .env("JAVA_TOOL_OPTIONS")
        .unwrap_or("")
        .split_whitespace()
        .filter(|o| !keys.contains(&option_key(o)))
        .map(str::to_string)
        .collect();
    all.extend(opts.iter().cloned());
    config.set_env("JAVA_TOOL_OPTIONS", &all.join(" "));
}

fn strip_fixed_sizes(v: &str) -> String {
    v.split_whitespace()
        .filter(|o| {
            !(o.starts_with("-Xmx")
                || o.starts_with("-Xms")
                || o.starts_with("-XX:MaxPermSize")
                || o.starts_with("-XX:PermSize"))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::JvmFix;

    fn config() -> ImageConfig {
        ImageConfig::empty("linux", "amd64")
    }

    #[test]
    fn java_options_replace_by_key() {
        let mut c = config();
        c.set_env(
            "JAVA_TOOL_OPTIONS",
            "-Dfile.encoding=ASCII -XX:MaxRAMPercentage=50.0 -Dx=1",
        );
        add_java_options(
            &mut c,
            &["-Dfile.encoding=UTF-8".into(), "-XX:MaxRAMPercentage=75.0".into()],
        );
        assert_eq!(
            c.env("JAVA_TOOL_OPTIONS"),
            Some("-Dx=1 -Dfile.encoding=UTF-8 -XX:MaxRAMPercentage=75.0")
        );
    }

    #[test]
    fn jvm_fix_drops_fixed_heap_sizes() {
        let mut c = config();
        c.set_env("CATALINA_OPTS", "-Xmx2g -XX:MaxPermSize=256m -Dkeep=1");
        let fixes = Fixes {
            jvm: Some(JvmFix {
                max_ram_percentage: 75.0,
                initial_ram_percentage: None,
                exit_on_oom: true,
                extra: vec![],
            }),
            ..Fixes::default()
        };
        let mut tree = Tree::new();
        apply(
            &fixes,
            &mut tree,
            &mut c,
            &BTreeMap::new(),
            &ConfigChanges::default(),
        )
        .unwrap();
        assert_eq!(c.env("CATALINA_OPTS"), Some("-Dkeep=1"));
        assert_eq!(
            c.env("JAVA_TOOL_OPTIONS"),
            Some("-XX:MaxRAMPercentage=75.0 -XX:+ExitOnOutOfMemoryError")
        );
    }

    #[test]
    fn encoding_sets_locale_and_java() {
        let mut c = config();
        encoding("UTF-8", &mut c);
        assert_eq!(c.env("LANG"), Some("C.UTF-8"));
        assert_eq!(c.env("LC_ALL"), Some("C.UTF-8"));
        assert_eq!(
            c.env("JAVA_TOOL_OPTIONS"),
            Some("-Dfile.encoding=UTF-8 -Dsun.jnu.encoding=UTF-8")
        );
    }

    #[test]
    fn init_needs_a_shell_and_wraps_the_entrypoint() {
        let mut c = config();
        let mut tree = Tree::new();
        let fixes = Fixes {
            init: true,
            ..Fixes::default()
        };
        let none = BTreeMap::new();
        assert!(matches!(
            apply(&fixes, &mut tree, &mut c, &none, &ConfigChanges::default()),
            Err(FixError::NoShell)
        ));
        tree.insert(
            ImagePath::parse("bin/sh").unwrap(),
            NodeKind::Symlink("busybox".into()),
            Meta::FILE,
        )
        .unwrap();
        let changes = ConfigChanges {
            entrypoint: Some(vec!["/app/run".into()]),
            ..ConfigChanges::default()
        };
        apply(&fixes, &mut tree, &mut c, &none, &changes).unwrap();
        assert_eq!(
            c.config.entrypoint,
            Some(vec![INIT_PATH.to_string(), "/app/run".to_string()])
        );
    }
}
