//! Reading a container's files back, so no report rests on a command's
//! exit code alone: the shell script that describes paths as the
//! container has them (with nothing but `sh`, `stat`, `sha256sum` and
//! `readlink`, which busybox and coreutils both have), and the pure
//! comparison of that description with what an image says. Used after
//! every hotfix (each changed path must match the target image, each
//! deleted path must be gone), after every restore (the paths must be as
//! they were before), and by `strata status --verify` (drift).
//!
//! The description of one path is a line `N KIND …` (N its index in the
//! list asked for): `absent`, `dir MODE UID GID`, `file MODE UID GID SIZE
//! SHA256`, `link TARGET` or `other`.

use std::collections::BTreeMap;

use crate::oci::listing::{Entry, EntryKind};

use super::plan::quote;

/// The staging and restore directories a hotfix makes in a container:
/// none may outlive the hotfix.
pub const LEFTOVER_GLOBS: &str = "/.strata-hotfix-* /.strata-restore-*";

/// A script that prints one description line per path (relative to `/`),
/// then `leftover PATH` for every staging directory still present.
pub fn describe_script(paths: &[String]) -> String {
    let mut s = describe_body(paths);
    s.push_str("exit 0\n");
    s
}

/// [`describe_script`] without its final `exit`, to run before or after
/// other commands in one exec.
pub fn describe_body(paths: &[String]) -> String {
    let mut s = String::from(
        "d() {\n  if [ -L \"$2\" ]; then echo \"$1 link $(readlink \"$2\")\"\n  elif [ -d \"$2\" ]; then echo \"$1 dir $(stat -c '%a %u %g' \"$2\")\"\n  elif [ -f \"$2\" ]; then h=$(sha256sum < \"$2\"); echo \"$1 file $(stat -c '%a %u %g %s' \"$2\") ${h%% *}\"\n  elif [ -e \"$2\" ]; then echo \"$1 other\"\n  else echo \"$1 absent\"; fi\n}\n",
    );
    for (i, p) in paths.iter().enumerate() {
        s.push_str(&format!("d {i} {}\n", quote(&format!("/{p}"))));
    }
    s.push_str(&format!(
        "for x in {LEFTOVER_GLOBS}; do if [ -e \"$x\" ]; then echo \"leftover $x\"; fi; done\n"
    ));
    s
}

/// A script that lists every path under `roots` (absolute, existing or
/// not), one per line, relative to `/`: what `strata status --verify`
/// describes next.
pub fn list_script(roots: &[String]) -> String {
    let list: Vec<String> = roots.iter().map(|r| quote(r)).collect();
    format!(
        "for r in {}; do if [ -e \"$r\" ]; then find \"$r\" -mindepth 1; fi; done | sed 's|^/||'\nexit 0\n",
        list.join(" ")
    )
}

/// The line an image entry should produce (without its index).
pub fn expected(e: Option<&Entry>) -> String {
    match e {
        None => "absent".into(),
        Some(e) => match e.kind {
            EntryKind::Dir => format!("dir {:o} {} {}", e.mode & 0o7777, e.uid, e.gid),
            EntryKind::File | EntryKind::Hardlink => format!(
                "file {:o} {} {} {} {}",
                e.mode & 0o7777,
                e.uid,
                e.gid,
                e.size,
                e.digest.as_ref().map(|d| d.hex().to_string()).unwrap_or_default()
            ),
            EntryKind::Symlink => format!("link {}", e.link.as_deref().unwrap_or("")),
            _ => "other".into(),
        },
    }
}

/// What the script printed, by index, and the leftovers it found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Described {
    pub lines: BTreeMap<usize, String>,
    pub leftovers: Vec<String>,
}

pub fn parse(output: &str) -> Described {
    let mut d = Described::default();
    for line in output.lines() {
        if let Some(l) = line.strip_prefix("leftover ") {
            d.leftovers.push(l.to_string());
            continue;
        }
        let Some((i, rest)) = line.split_once(' ') else {
            continue;
        };
        if let Ok(i) = i.parse() {
            d.lines.insert(i, rest.to_string());
        }
    }
    d
}

/// Each path whose description differs from `want` (same order as the
/// paths given to [`describe_script`]), and each leftover, as a phrase.
pub fn mismatches(paths: &[String], want: &[String], got: &Described) -> Vec<String> {
    let mut out = Vec::new();
    for (i, (p, w)) in paths.iter().zip(want).enumerate() {
        let g = got.lines.get(&i).map(String::as_str).unwrap_or("(no answer)");
        if g != w {
            out.push(match (w.as_str(), g) {
                ("absent", _) => format!("/{p} should be gone but is there ({g})"),
                (_, "absent") => format!("/{p} is missing (expected {w})"),
                _ => format!("/{p} is `{g}`, expected `{w}`"),
            });
        }
    }
    for l in &got.leftovers {
        out.push(format!("{l} was left behind"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;

    #[test]
    fn descriptions_compare_with_the_image() {
        let f = Entry {
            path: "srv/a".into(),
            kind: EntryKind::File,
            mode: 0o100644,
            uid: 0,
            gid: 0,
            size: 4,
            link: None,
            digest: Some(Digest::sha256_of(b"abc\n")),
        };
        let want = vec![expected(Some(&f)), expected(None)];
        let hex = Digest::sha256_of(b"abc\n").hex().to_string();
        let paths = vec!["srv/a".to_string(), "srv/gone".to_string()];
        let ok = parse(&format!("0 file 644 0 0 4 {hex}\n1 absent\n"));
        assert!(mismatches(&paths, &want, &ok).is_empty());
        let bad = parse("0 file 600 0 0 4 00\n1 file 644 0 0 6 11\nleftover /.strata-hotfix-x\n");
        let m = mismatches(&paths, &want, &bad);
        assert_eq!(m.len(), 3, "{m:?}");
        assert!(m[1].contains("should be gone"), "{m:?}");
        assert!(m[2].contains("/.strata-hotfix-x"), "{m:?}");
        let s = describe_script(&paths);
        assert!(s.contains("d 1 '/srv/gone'"), "{s}");
    }
}
