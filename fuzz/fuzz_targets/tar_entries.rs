//! Tar streams (plain, or gzip/xz/zstd as sniffed) through the builder's
//! archive reader and the layer listing reader: whatever the entries,
//! what the builder accepts never escapes the image root (no `..`, no
//! absolute path, nothing below a symlink, no symlink climbing above `/`,
//! hard links only to files of the tree), and a listing holds only
//! normalized relative paths.
#![no_main]

use std::io::{BufReader, Read};
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use strata::build::source::{Stage, add_layer_tar, decompress};
use strata::build::tree::Tree;

/// Decompressed bytes past this are cut off: a bomb costs time, not a
/// finding.
const LIMIT: u64 = 8 << 20;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut stage = Stage::new(dir.path().to_path_buf());
    let mut tree = Tree::new();
    if let Ok(r) = decompress(BufReader::new(data)) {
        if add_layer_tar(&mut tree, &mut stage, Path::new("fuzz.tar"), r.take(LIMIT)).is_ok() {
            strata_fuzz::check_tree(&tree);
        }
    }
    if let Ok(entries) = strata::oci::listing::read_tar(data) {
        for e in &entries {
            assert!(!e.path.starts_with('/'), "listing path {:?} is absolute", e.path);
            assert!(
                e.path.is_empty() || e.path.split('/').all(|c| !c.is_empty() && c != "." && c != ".."),
                "listing path {:?} is not normalized",
                e.path
            );
        }
        let _ = strata::oci::listing::merge([entries.as_slice()]);
    }
});
