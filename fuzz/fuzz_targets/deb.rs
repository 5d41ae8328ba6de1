//! Debian packages (`ar` + `data.tar[.gz|.xz|.zst]`) through the
//! builder's package reader: a package is refused or gives a tree in
//! which no entry escapes the image root.
#![no_main]

use std::io::Read;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use strata::build::source::{Stage, add_deb_reader};
use strata::build::tree::Tree;

const LIMIT: u64 = 8 << 20;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut stage = Stage::new(dir.path().to_path_buf());
    let mut tree = Tree::new();
    if add_deb_reader(&mut tree, &mut stage, Path::new("fuzz.deb"), data.take(LIMIT)).is_ok() {
        strata_fuzz::check_tree(&tree);
    }
});
