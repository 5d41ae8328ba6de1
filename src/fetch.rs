//! Downloads of URL sources into the store, checked against the digest the
//! config pins. A download is cached by that digest: a second build never
//! touches the network. A wrong digest stores nothing.

use std::io::{self, Read};
use std::path::PathBuf;
use std::time::Duration;

use crate::digest::Digest;
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("downloading {url}: {reason}")]
    Http { url: String, reason: String },
    #[error("downloading {url}: server answered {status}")]
    Status { url: String, status: u16 },
    #[error("downloading {url}: expected {expected}, got {actual} ({size} bytes); nothing was stored")]
    DigestMismatch {
        url: String,
        expected: Digest,
        actual: Digest,
        size: u64,
    },
    #[error(transparent)]
    Store(StoreError),
}

/// Returns the store path of `url`'s content, downloading it when the
/// store does not already hold `digest`. `progress` gets bytes so far.
pub fn fetch(
    store: &Store,
    url: &str,
    digest: &Digest,
    progress: &dyn Fn(u64),
) -> Result<PathBuf, FetchError> {
    if store.has(digest) {
        return Ok(store.blob_path(digest));
    }
    let http = |reason: String| FetchError::Http {
        url: url.to_string(),
        reason,
    };
    let client = reqwest::blocking::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .timeout(None)
        .user_agent(concat!("strata/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| http(e.to_string()))?;
    let mut resp = client.get(url).send().map_err(|e| http(e.to_string()))?;
    if !resp.status().is_success() {
        return Err(FetchError::Status {
            url: url.to_string(),
            status: resp.status().as_u16(),
        });
    }
    let mut w = store.writer_with(digest.algorithm()).map_err(FetchError::Store)?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match resp.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(http(e.to_string())),
        };
        io::Write::write_all(&mut w, &buf[..n]).map_err(|e| {
            FetchError::Store(StoreError::Io {
                path: store.root().to_path_buf(),
                source: e,
            })
        })?;
        progress(w.count());
    }
    match w.commit(Some(digest)) {
        Ok(_) => Ok(store.blob_path(digest)),
        Err(StoreError::DigestMismatch {
            expected,
            actual,
            size,
        }) => Err(FetchError::DigestMismatch {
            url: url.to_string(),
            expected,
            actual,
            size,
        }),
        Err(e) => Err(FetchError::Store(e)),
    }
}
