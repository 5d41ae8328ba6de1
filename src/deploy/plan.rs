//! The orchestrator's decisions, as plain functions over data: hotfix or
//! redeploy, which archive entries are safe to put into a container, and
//! the shell scripts that move staged files into place or restore them.
//! No I/O here: unit tests drive these directly.

use std::collections::BTreeMap;

use crate::oci::RuntimeConfig;
use crate::oci::diff::{Change, ChangeKind};
use crate::oci::listing::{Entry, EntryKind};

use super::spec::HotfixPolicy;

/// How a new image reaches a running instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The instance already runs these files.
    Nothing,
    /// Only hotfix-eligible files changed: apply them in place.
    Hotfix,
    /// Anything else: a new container with the same IP.
    Redeploy { reason: String },
}

/// What the CLI asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Hotfix when eligible, redeploy otherwise.
    #[default]
    Auto,
    /// Hotfix or fail.
    Hotfix,
    /// Always a new container, even for an eligible change.
    Redeploy,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::Hotfix => "hotfix",
            Mode::Redeploy => "redeploy",
        }
    }

    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "auto" => Some(Mode::Auto),
            "hotfix" => Some(Mode::Hotfix),
            "redeploy" => Some(Mode::Redeploy),
            _ => None,
        }
    }
}

/// Hotfix or redeploy, from the two images' runtime configs and the file
/// changes between them.
pub fn decide(
    old: &RuntimeConfig,
    new: &RuntimeConfig,
    changes: &[Change],
    policy: &HotfixPolicy,
) -> Decision {
    let runtime = |c: &RuntimeConfig| {
        let mut c = c.clone();
        // Labels describe the image; they change nothing in a container.
        c.labels.clear();
        c
    };
    if runtime(old) != runtime(new) {
        return Decision::Redeploy {
            reason: "the image's runtime config (env, command, user, ports…) changed".into(),
        };
    }
    if changes.is_empty() {
        return Decision::Nothing;
    }
    if policy.patterns.is_empty() {
        return Decision::Redeploy {
            reason: "the app declares no hotfix paths".into(),
        };
    }
    let outside: Vec<&str> = changes
        .iter()
        .filter(|c| !policy.eligible(&c.path))
        .map(|c| c.path.as_str())
        .collect();
    if let Some(first) = outside.first() {
        return Decision::Redeploy {
            reason: format!(
                "{} changed path(s) are not hotfix-eligible, e.g. /{first}",
                outside.len()
            ),
        };
    }
    if changes
        .iter()
        .any(|c| matches!(c.kind, EntryKind::Other | EntryKind::Opaque | EntryKind::Whiteout))
    {
        return Decision::Redeploy {
            reason: "the change includes special files (devices, fifos)".into(),
        };
    }
    Decision::Hotfix
}

/// Why an archive entry may not go into a container.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostileEntry {
    #[error("`{0}` is an absolute path")]
    Absolute(String),
    #[error("`{0}` climbs out of the root with `..`")]
    ParentDir(String),
    #[error("`{0}` is empty or contains a NUL byte")]
    Malformed(String),
    #[error("`{path}` lies under the symlink `{link}`: writing it would follow the link")]
    UnderSymlink { path: String, link: String },
    #[error("`{path}` links to `{target}`, outside the container's root")]
    LinkEscapes { path: String, target: String },
}

fn check_path(p: &str) -> Result<(), HostileEntry> {
    if p.is_empty() || p.contains('\0') {
        return Err(HostileEntry::Malformed(p.to_string()));
    }
    if p.starts_with('/') {
        return Err(HostileEntry::Absolute(p.to_string()));
    }
    if p.split('/').any(|c| c == "..") {
        return Err(HostileEntry::ParentDir(p.to_string()));
    }
    Ok(())
}

/// Resolves `target` of a link at `path` (both relative to the root)
/// lexically; None when it climbs above the root.
fn resolve_link(path: &str, target: &str) -> Option<String> {
    let mut parts: Vec<&str> = if target.starts_with('/') {
        vec![]
    } else {
        let mut p: Vec<&str> = path.split('/').collect();
        p.pop();
        p
    };
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

/// Checks every entry that will be written into a container: relative
/// paths without `..`; no entry below a symlink that is itself in the
/// archive or already in the container's tree (`lnk -> /etc` then
/// `lnk/x` would write `/etc/x`); hard links only to paths inside the
/// root; relative symlinks that do not climb above the root. Absolute
/// symlinks resolve inside the container's root, so they are allowed.
pub fn validate_entries(entries: &[Entry], tree: &BTreeMap<String, Entry>) -> Result<(), HostileEntry> {
    let links: std::collections::BTreeSet<&str> = entries
        .iter()
        .chain(tree.values())
        .filter(|e| e.kind == EntryKind::Symlink)
        .map(|e| e.path.as_str())
        .collect();
    for e in entries {
        check_path(&e.path)?;
        let mut prefix = String::new();
        let comps: Vec<&str> = e.path.split('/').collect();
        for c in &comps[..comps.len() - 1] {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(c);
            if links.contains(prefix.as_str()) {
                return Err(HostileEntry::UnderSymlink {
                    path: e.path.clone(),
                    link: prefix.clone(),
                });
            }
        }
        match (e.kind, e.link.as_deref()) {
            (EntryKind::Hardlink, Some(t)) => {
                check_path(t.trim_start_matches('/')).map_err(|_| HostileEntry::LinkEscapes {
                    path: e.path.clone(),
                    target: t.to_string(),
                })?;
            }
            (EntryKind::Symlink, Some(t)) if !t.starts_with('/') && resolve_link(&e.path, t).is_none() => {
                return Err(HostileEntry::LinkEscapes {
                    path: e.path.clone(),
                    target: t.to_string(),
                });
            }
            _ => {}
        }
    }
    Ok(())
}

/// Single-quotes a string for `sh`.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The top-most paths to back up before a hotfix: every modified or
/// deleted path, except those under a deleted directory (its tar holds
/// them) and modified directories (only their metadata changes, put back
/// by [`restore_script`]).
pub fn backup_paths(changes: &[Change]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut deleted_dirs: Vec<String> = Vec::new();
    for c in changes {
        if c.change == ChangeKind::Added {
            continue;
        }
        if deleted_dirs.iter().any(|d| c.path.starts_with(&format!("{d}/"))) {
            continue;
        }
        if c.change == ChangeKind::Modified && c.kind == EntryKind::Dir {
            continue;
        }
        if c.change == ChangeKind::Deleted && c.kind == EntryKind::Dir {
            deleted_dirs.push(c.path.clone());
        }
        out.push(c.path.clone());
    }
    out
}

/// The script that applies a staged hotfix: new directories first (with
/// their owner and mode), then every staged file or link renamed over its
/// target (one atomic rename each, with the mtime set to now so Tomcat and
/// Jasper notice), then deletions deepest first, then the staging directory
/// goes. `fail_after` stops it after that many moves (fault injection).
pub fn apply_script(
    stage: &str,
    changes: &[Change],
    new: &BTreeMap<String, Entry>,
    fail_after: Option<usize>,
) -> String {
    let mut s = format!("set -e\n{GONE}");
    let files = format!("{stage}/f");
    for c in changes
        .iter()
        .filter(|c| c.kind == EntryKind::Dir && c.change != ChangeKind::Deleted)
    {
        let Some(e) = new.get(&c.path) else { continue };
        let p = quote(&format!("/{}", c.path));
        s.push_str(&format!(
            "mkdir -p {p}\nchown {}:{} {p}\nchmod {:o} {p}\n",
            e.uid,
            e.gid,
            e.mode & 0o7777,
        ));
    }
    for (moves, c) in changes
        .iter()
        .filter(|c| c.kind != EntryKind::Dir && c.change != ChangeKind::Deleted)
        .enumerate()
    {
        let target = quote(&format!("/{}", c.path));
        let staged = quote(&format!("{files}/{}", c.path));
        if fail_after == Some(moves) {
            s.push_str(
                "echo 'injected fault: stopped while moving (STRATA_FAULT=hotfix-move)' >&2\nexit 70\n",
            );
        }
        // A directory (or a link to one) in the way would swallow the file.
        s.push_str(&format!(
            "if [ -d {target} ] && [ ! -L {target} ]; then gone {target}; fi\n"
        ));
        if c.kind == EntryKind::File || c.kind == EntryKind::Hardlink {
            s.push_str(&format!("touch -c {staged}\n"));
        }
        s.push_str(&format!("mv -f {staged} {target}\n"));
    }
    let mut deleted: Vec<&Change> = changes
        .iter()
        .filter(|c| c.change == ChangeKind::Deleted)
        .collect();
    deleted.sort_by_key(|c| std::cmp::Reverse(c.path.len()));
    for c in deleted {
        s.push_str(&format!("gone {}\n", quote(&format!("/{}", c.path))));
    }
    s.push_str(&format!("rm -rf {}\n", quote(stage)));
    s
}

/// A shell function that removes a path until it is really gone. On an
/// overlay whose upper copy replaced the image's file (fuse-overlayfs
/// here), one `rm` removes the upper copy and the image's version comes
/// back; the second one leaves a whiteout. Bounded, and it fails when the
/// path is still there.
pub const GONE: &str = "gone() {\n  for _ in 1 2 3 4; do\n    if [ -e \"$1\" ] || [ -L \"$1\" ]; then rm -rf \"$1\"; else return 0; fi\n  done\n  if [ -e \"$1\" ] || [ -L \"$1\" ]; then echo \"$1 is still there after 4 removals\" >&2; return 1; fi\n}\n";

/// The script that undoes a partly applied hotfix before the backups are
/// uploaded again: added paths go (deepest first), modified directories
/// get their old owner and mode back, the staging directory goes.
pub fn restore_script(stage: &str, changes: &[Change], old: &BTreeMap<String, Entry>) -> String {
    let mut s = format!("set -e\n{GONE}");
    let mut added: Vec<&Change> = changes.iter().filter(|c| c.change == ChangeKind::Added).collect();
    added.sort_by_key(|c| std::cmp::Reverse(c.path.len()));
    for c in added {
        s.push_str(&format!("gone {}\n", quote(&format!("/{}", c.path))));
    }
    for c in changes
        .iter()
        .filter(|c| c.change == ChangeKind::Modified && c.kind == EntryKind::Dir)
    {
        if let Some(e) = old.get(&c.path) {
            let p = quote(&format!("/{}", c.path));
            s.push_str(&format!(
                "chown {}:{} {p}; chmod {:o} {p}\n",
                e.uid,
                e.gid,
                e.mode & 0o7777
            ));
        }
    }
    s.push_str(&format!("rm -rf {}\n", quote(stage)));
    s
}

/// The script whose stdout is a tar of every path (relative to `/`) that
/// exists in the container: the backup taken before a hotfix.
pub fn backup_script(paths: &[String]) -> String {
    let list: Vec<String> = paths.iter().map(|p| quote(&format!("./{p}"))).collect();
    format!(
        "cd / || exit 1\nset --\nfor p in {}; do\n  if [ -e \"$p\" ] || [ -L \"$p\" ]; then set -- \"$@\" \"$p\"; fi\ndone\nif [ $# -gt 0 ]; then exec tar -cf - \"$@\"; fi\n",
        list.join(" ")
    )
}

/// The script that puts backed-up paths (extracted under `rdir`) back
/// in place by rename; a path that was not in the backup did not exist
/// before, so it goes.
pub fn put_back_script(rdir: &str, paths: &[String]) -> String {
    let mut s = format!("set -e\n{GONE}");
    for p in paths {
        let saved = quote(&format!("{rdir}/{p}"));
        let target = quote(&format!("/{p}"));
        s.push_str(&format!(
            "if [ -e {saved} ] || [ -L {saved} ]; then if [ -d {target} ] && [ ! -L {target} ]; then gone {target}; fi; mv -f {saved} {target}; else gone {target}; fi\n"
        ));
    }
    s.push_str(&format!("rm -rf {}\n", quote(rdir)));
    s
}

/// The `sha256sum -c` list for staged regular files.
pub fn checksums(changes: &[Change]) -> String {
    let mut s = String::new();
    for c in changes {
        if let (Some(d), ChangeKind::Added | ChangeKind::Modified) = (&c.new_digest, c.change) {
            s.push_str(&format!("{}  f/{}\n", d.hex(), c.path));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;

    fn entry(path: &str, kind: EntryKind, link: Option<&str>) -> Entry {
        Entry {
            path: path.into(),
            kind,
            mode: 0o644,
            uid: 101,
            gid: 101,
            size: 1,
            link: link.map(str::to_string),
            digest: (kind == EntryKind::File).then(|| Digest::sha256_of(path.as_bytes())),
        }
    }

    fn change(path: &str, change: ChangeKind, kind: EntryKind) -> Change {
        Change {
            path: path.into(),
            change,
            kind,
            old_size: None,
            new_size: None,
            old_digest: None,
            new_digest: (kind == EntryKind::File && change != ChangeKind::Deleted)
                .then(|| Digest::sha256_of(path.as_bytes())),
        }
    }

    fn policy() -> HotfixPolicy {
        let text = "name = \"a\"\n[network]\nname = \"n\"\nsubnet = \"10.0.0.0/24\"\npool = \"10.0.0.10-10.0.0.20\"\n[hotfix]\npaths = [\"/srv/www/**\"]\n";
        super::super::spec::parse(std::path::Path::new("a.toml"), text)
            .unwrap()
            .hotfix
    }

    #[test]
    fn decides_hotfix_only_for_eligible_files_and_same_runtime() {
        let cfg = RuntimeConfig::default();
        let p = policy();
        let web = [change(
            "srv/www/index.html",
            ChangeKind::Modified,
            EntryKind::File,
        )];
        assert_eq!(decide(&cfg, &cfg, &web, &p), Decision::Hotfix);
        assert_eq!(decide(&cfg, &cfg, &[], &p), Decision::Nothing);
        let lib = [change("usr/lib/libx.so", ChangeKind::Modified, EntryKind::File)];
        assert!(
            matches!(decide(&cfg, &cfg, &lib, &p), Decision::Redeploy { reason } if reason.contains("/usr/lib/libx.so"))
        );
        let mut other = cfg.clone();
        other.env.push("A=1".into());
        assert!(matches!(
            decide(&cfg, &other, &web, &p),
            Decision::Redeploy { .. }
        ));
        let mut labelled = cfg.clone();
        labelled.labels.insert("build".into(), "2".into());
        assert_eq!(
            decide(&cfg, &labelled, &web, &p),
            Decision::Hotfix,
            "labels alone do not force a redeploy"
        );
    }

    #[test]
    fn hostile_entries_are_refused() {
        let tree = BTreeMap::from([("etc".to_string(), entry("etc", EntryKind::Dir, None))]);
        let ok = [
            entry("srv/www/a", EntryKind::File, None),
            entry("srv/www/l", EntryKind::Symlink, Some("a")),
        ];
        assert!(validate_entries(&ok, &tree).is_ok());
        let cases: Vec<Vec<Entry>> = vec![
            vec![entry("/etc/x", EntryKind::File, None)],
            vec![entry("srv/../etc/x", EntryKind::File, None)],
            vec![
                entry("srv/lnk", EntryKind::Symlink, Some("/etc")),
                entry("srv/lnk/x", EntryKind::File, None),
            ],
            vec![entry("srv/l", EntryKind::Symlink, Some("../../../etc"))],
            vec![entry("srv/h", EntryKind::Hardlink, Some("../etc/shadow"))],
        ];
        for c in cases {
            assert!(validate_entries(&c, &tree).is_err(), "{c:?}");
        }
        // A link already in the container counts too.
        let tree = BTreeMap::from([(
            "srv/www".to_string(),
            entry("srv/www", EntryKind::Symlink, Some("/etc")),
        )]);
        let e = validate_entries(&[entry("srv/www/x", EntryKind::File, None)], &tree).unwrap_err();
        assert!(matches!(e, HostileEntry::UnderSymlink { .. }), "{e}");
    }

    #[test]
    fn scripts_quote_move_and_restore() {
        let changes = vec![
            change("srv/www/it's.html", ChangeKind::Modified, EntryKind::File),
            change("srv/www/new", ChangeKind::Added, EntryKind::Dir),
            change("srv/www/new/a.jsp", ChangeKind::Added, EntryKind::File),
            change("srv/www/old", ChangeKind::Deleted, EntryKind::Dir),
            change("srv/www/old/b", ChangeKind::Deleted, EntryKind::File),
        ];
        let new = BTreeMap::from([(
            "srv/www/new".to_string(),
            entry("srv/www/new", EntryKind::Dir, None),
        )]);
        let s = apply_script("/.stage", &changes, &new, None);
        assert!(
            s.contains(r"mv -f '/.stage/f/srv/www/it'\''s.html' '/srv/www/it'\''s.html'"),
            "{s}"
        );
        assert!(s.contains("mkdir -p '/srv/www/new'\nchown 101:101"), "{s}");
        assert!(s.find("gone '/srv/www/old/b'").unwrap() < s.find("gone '/srv/www/old'\n").unwrap());
        assert!(apply_script("/.stage", &changes, &new, Some(1)).contains("exit 70"));
        assert_eq!(backup_paths(&changes), ["srv/www/it's.html", "srv/www/old"]);
        let r = restore_script("/.stage", &changes, &BTreeMap::new());
        assert!(
            r.find("'/srv/www/new/a.jsp'").unwrap() < r.find("'/srv/www/new'\n").unwrap(),
            "{r}"
        );
        assert_eq!(checksums(&changes).lines().count(), 2);
        let b = backup_script(&backup_paths(&changes));
        assert!(
            b.contains(r"for p in './srv/www/it'\''s.html' './srv/www/old'; do"),
            "{b}"
        );
        let p = put_back_script("/.r", &["srv/a b".to_string()]);
        assert!(p.contains("mv -f '/.r/srv/a b' '/srv/a b'"), "{p}");
    }
}
