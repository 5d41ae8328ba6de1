//! Checks shared by the fuzz targets: the properties a tree built from
//! untrusted archive bytes must have, whatever the bytes were.

use std::collections::BTreeMap;

use strata::build::tree::{NodeKind, Tree};
use strata::spec::ImagePath;

/// Resolves `target` (a symlink's) from `dir` lexically; None when it
/// climbs above the root. Independent of `tree::check_symlink`, which it
/// checks.
fn resolves_inside(dir: &ImagePath, target: &str) -> bool {
    if target.starts_with('/') {
        return true;
    }
    let mut depth: i64 = if dir.is_root() {
        0
    } else {
        dir.as_str().split('/').count() as i64
    };
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => depth += 1,
        }
    }
    true
}

/// Panics when `tree` holds an entry that could escape the image root:
/// a path with `..` or a leading `/`, an entry below a symlink or a file,
/// a relative symlink that climbs above `/`, a symlink with NUL, a hard
/// link to anything but a regular file of the tree.
pub fn check_tree(tree: &Tree) {
    let kinds: BTreeMap<&str, &NodeKind> = tree.iter().map(|(p, n)| (p.as_str(), &n.kind)).collect();
    for (path, node) in tree.iter() {
        let s = path.as_str();
        assert!(!path.is_root(), "the root is an entry");
        assert!(
            !s.starts_with('/') && !s.ends_with('/'),
            "unnormalized path {s:?}"
        );
        assert!(
            s.split('/').all(|c| !c.is_empty() && c != "." && c != ".."),
            "path {s:?} has an empty, `.` or `..` component"
        );
        for anc in path.ancestors() {
            if anc.is_root() {
                continue;
            }
            match kinds.get(anc.as_str()) {
                Some(NodeKind::Dir) => {}
                other => panic!("{s:?} lies below {:?}, which is {other:?}", anc.as_str()),
            }
        }
        match &node.kind {
            NodeKind::Symlink(target) => {
                assert!(!target.contains('\0'), "symlink {s:?} has NUL in its target");
                let dir = path.parent().unwrap_or_else(ImagePath::root);
                assert!(
                    resolves_inside(&dir, target),
                    "symlink {s:?} -> {target:?} escapes the root"
                );
            }
            NodeKind::Hardlink(t) => {
                assert!(
                    matches!(
                        kinds.get(t.as_str()),
                        Some(NodeKind::File { .. } | NodeKind::Hardlink(_))
                    ),
                    "hard link {s:?} -> {:?} names no file of the tree",
                    t.as_str()
                );
            }
            _ => {}
        }
    }
}
