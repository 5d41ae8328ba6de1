//! OCI manifests, indexes, configs and descriptors as a registry receives
//! them from a push or reads them from an imported layout: what parses
//! prints back to JSON that parses to the same value, and prints the same
//! bytes again (deterministic JSON); a pushed manifest's media type is
//! decided without a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;
use strata::oci::{Descriptor, ImageConfig, Index, Manifest, listing::Entry, to_json};

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(data: &[u8]) {
    let Ok(v) = serde_json::from_slice::<T>(data) else {
        return;
    };
    let bytes = to_json(&v);
    let again: T = serde_json::from_slice(&bytes).expect("printed JSON parses");
    assert_eq!(again, v, "round trip changed the value");
    assert_eq!(to_json(&again), bytes, "JSON is not deterministic");
}

fuzz_target!(|data: &[u8]| {
    round_trip::<Manifest>(data);
    round_trip::<Index>(data);
    round_trip::<ImageConfig>(data);
    round_trip::<Descriptor>(data);
    round_trip::<Vec<Entry>>(data);
    // The registry's push path: a JSON value, its media type, then the
    // typed manifest or index.
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        for ct in [
            None,
            Some(strata::oci::MEDIA_MANIFEST),
            Some(strata::oci::MEDIA_INDEX),
        ] {
            let _ = strata::registry::manifest_media_type(value.get("mediaType"), ct);
        }
        let _ = serde_json::from_value::<Manifest>(value.clone());
        let _ = serde_json::from_value::<Index>(value);
    }
});
