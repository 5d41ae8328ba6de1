//! What a registry request's path and headers go through: path routing,
//! `Range`, `Content-Range`, digests, repository names and tags. Every
//! route names a repository and reference that rebuild the path; a range
//! that parses lies inside the blob; a digest that parses prints back
//! identically; a valid name or tag has only the characters the
//! distribution spec allows.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata::digest::Digest;
use strata::registry::parse::{content_range_value, range_value, route_parts};
use strata::registry::{valid_name, valid_tag};

fuzz_target!(|data: &[u8]| {
    // The blob size for `Range` comes from the first 8 bytes.
    let size = data
        .get(..8)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()));
    if let Some(Ok((start, end))) = range_value(data.get(8..).unwrap_or_default(), size) {
        assert!(
            start <= end && end < size,
            "range {start}-{end} outside a blob of {size}"
        );
    }
    if let Some(Ok((start, end))) = content_range_value(data) {
        assert!(start <= end, "content range {start}-{end}");
    }
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Some((kind, name, reference)) = route_parts(s) {
        let rebuilt = match kind {
            "blob" => format!("{name}/blobs/{reference}"),
            "upload" => format!("{name}/blobs/uploads/{reference}"),
            "manifest" => format!("{name}/manifests/{reference}"),
            "referrers" => format!("{name}/referrers/{reference}"),
            "tags" => format!("{name}/tags/list"),
            "uploads" if s.ends_with('/') => format!("{name}/blobs/uploads/"),
            "uploads" => format!("{name}/blobs/uploads"),
            other => panic!("unknown route {other}"),
        };
        assert_eq!(rebuilt, s, "route {kind} lost part of the path");
    }
    if let Ok(d) = s.parse::<Digest>() {
        assert_eq!(d.to_string(), s, "digest did not print back identically");
        assert_eq!(Digest::from_hex(d.algorithm(), d.hex()).as_ref(), Ok(&d));
    }
    if valid_name(s) {
        assert!(s.len() <= 255);
        assert!(
            s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b))
        );
        assert!(!s.starts_with('/') && !s.ends_with('/') && !s.contains("//"));
    }
    if valid_tag(s) {
        assert!(s.len() <= 128 && !s.starts_with(['.', '-']));
        assert!(
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        );
    }
});
