//! `layers.toml` (first byte even) and app specs `deploy/apps/NAME.toml`
//! (odd): any text is read into a checked plan or refused with an error
//! that names the file; never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    if which % 2 == 0 {
        // A directory that does not exist: relative sources resolve to
        // nothing on this host, so the target reads no real files.
        let path = Path::new("/nonexistent-strata-fuzz/layers.toml");
        if let Err(e) = strata::spec::parse(path, text, &[]) {
            let msg = e.to_string();
            assert!(!msg.is_empty());
        }
    } else {
        let path = Path::new("/nonexistent-strata-fuzz/apps/web.toml");
        if let Err(e) = strata::deploy::spec::parse(path, text) {
            let msg = e.to_string();
            assert!(!msg.is_empty());
        }
    }
});
