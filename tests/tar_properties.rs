//! Property tests of the layer writer: the same tree always gives the same
//! bytes, insertion order never matters, and a reader sees exactly what was
//! written (paths, kinds, sizes, content digests).

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;
use strata::build::layer::write_tar;
use strata::build::tree::{Content, Meta, NodeKind, Tree};
use strata::digest::Digest;
use strata::oci::listing::{EntryKind, read_tar};
use strata::spec::ImagePath;

fn path() -> impl Strategy<Value = String> {
    // Short components so paths collide into shared directories; one long
    // component now and then to exercise PAX records.
    prop::collection::vec(prop_oneof![9 => "[a-c]{1,3}", 1 => "[x]{90,130}"], 1..4).prop_map(|v| v.join("/"))
}

fn files() -> impl Strategy<Value = BTreeMap<String, Vec<u8>>> {
    prop::collection::btree_map(path(), prop::collection::vec(any::<u8>(), 0..2000), 1..24)
}

/// Builds a tree, skipping paths that would sit below an existing file
/// (the tree refuses those, as it should).
fn tree(files: &[(String, Vec<u8>)]) -> (Tree, BTreeMap<String, Vec<u8>>) {
    let mut t = Tree::new();
    let mut kept = BTreeMap::new();
    for (p, body) in files {
        let ip = ImagePath::parse(p).unwrap();
        let bytes: Arc<[u8]> = Arc::from(body.as_slice());
        let node = NodeKind::File {
            size: bytes.len() as u64,
            content: Content::Inline(bytes),
        };
        if t.insert(ip, node, Meta::FILE).is_ok() {
            kept.retain(|k: &String, _| !k.starts_with(&format!("{p}/")));
            kept.insert(p.clone(), body.clone());
        }
    }
    // Drop files that a later insert turned into directories.
    kept.retain(|p, _| {
        matches!(
            t.get(&ImagePath::parse(p).unwrap()).map(|n| &n.kind),
            Some(NodeKind::File { .. })
        )
    });
    (t, kept)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn same_tree_same_bytes_whatever_the_insertion_order(files in files(), epoch in 0i64..2_000_000_000) {
        let forward: Vec<_> = files.clone().into_iter().collect();
        let mut backward = forward.clone();
        backward.reverse();
        let (a, kept_a) = tree(&forward);
        let (b, kept_b) = tree(&backward);
        prop_assume!(kept_a == kept_b);
        let (mut out_a, mut out_b) = (Vec::new(), Vec::new());
        write_tar(&a, &|_| None, epoch, &mut out_a).unwrap();
        write_tar(&b, &|_| None, epoch, &mut out_b).unwrap();
        prop_assert_eq!(Digest::sha256_of(&out_a), Digest::sha256_of(&out_b));
    }

    #[test]
    fn what_is_written_is_what_is_read(files in files()) {
        let list: Vec<_> = files.into_iter().collect();
        let (t, kept) = tree(&list);
        let mut out = Vec::new();
        write_tar(&t, &|_| None, 0, &mut out).unwrap();
        prop_assert_eq!(out.len() % 512, 0);
        let read = read_tar(&out[..]).unwrap();
        let read_files: BTreeMap<String, (u64, Digest)> = read
            .iter()
            .filter(|e| e.kind == EntryKind::File)
            .map(|e| (e.path.clone(), (e.size, e.digest.clone().unwrap())))
            .collect();
        let expected: BTreeMap<String, (u64, Digest)> = kept
            .iter()
            .map(|(p, b)| (p.clone(), (b.len() as u64, Digest::sha256_of(b))))
            .collect();
        prop_assert_eq!(read_files, expected);
        // Parents come before children, and every entry appears once.
        let paths: Vec<&String> = read.iter().map(|e| &e.path).collect();
        let mut sorted = paths.clone();
        sorted.sort();
        sorted.dedup();
        prop_assert_eq!(paths, sorted);
    }
}
