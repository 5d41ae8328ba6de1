//! Pulling: the manifest (the platform's, from an index), then its
//! config and layers into the store, each hashed as it streams.

use std::io::Read;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::blocking::RequestBuilder;
use reqwest::header;

use super::{
    BlobOutcome, Client, ClientError, Event, MAX_MANIFEST, Reference, Report, Req, Result, backoff,
    content_type, image_blobs, pull_scope, settled,
};
use crate::digest::Digest;
use crate::oci::{Descriptor, Index, MEDIA_DOCKER_LIST, MEDIA_INDEX, Manifest};
use crate::store::{Store, StoreError};

impl Client {
    /// Pulls `source` into `store`: the manifest (for an index, the one for
    /// `platform`, e.g. `linux/amd64`), its config and layers. Blobs the
    /// store has are not fetched again.
    pub fn pull(
        &self,
        store: &Store,
        source: &Reference,
        platform: &str,
        events: &(dyn Fn(Event) + Sync),
    ) -> Result<Report> {
        let (mut desc, mut bytes) =
            self.fetch_manifest(source, &source.reference(), source.digest.as_ref(), events)?;
        if desc.media_type == MEDIA_INDEX || desc.media_type == MEDIA_DOCKER_LIST {
            let index: Index = serde_json::from_slice(&bytes).map_err(|e| ClientError::BadManifest {
                reference: source.to_string(),
                why: format!("not an image index: {e}"),
            })?;
            let pick = index
                .manifests
                .iter()
                .find(|m| {
                    m.platform
                        .as_ref()
                        .is_some_and(|p| format!("{}/{}", p.os, p.architecture) == platform)
                })
                .ok_or_else(|| ClientError::NoPlatform {
                    reference: source.to_string(),
                    platform: platform.to_string(),
                    available: index
                        .manifests
                        .iter()
                        .filter_map(|m| m.platform.as_ref())
                        .map(|p| format!("{}/{}", p.os, p.architecture))
                        .collect::<Vec<_>>()
                        .join(", "),
                })?;
            let digest = pick.digest.clone();
            (desc, bytes) = self.fetch_manifest(source, &digest.to_string(), Some(&digest), events)?;
        }
        let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| ClientError::BadManifest {
            reference: source.to_string(),
            why: format!("not an image manifest: {e}"),
        })?;
        let blobs = image_blobs(&m);
        let results = self.parallel(&blobs, |role, d| {
            let started = Instant::now();
            let outcome = if store.has(&d.digest) {
                BlobOutcome::Present
            } else {
                self.pull_blob(store, &source.repository, d, events)?;
                BlobOutcome::Transferred
            };
            Ok(settled(events, role, d, outcome, started))
        })?;
        // The manifest last: a store holding it holds the whole image.
        store.put(&bytes, Some(&desc.digest))?;
        Ok(Report::new(desc, &blobs, results))
    }

    fn fetch_manifest(
        &self,
        source: &Reference,
        reference: &str,
        expected: Option<&Digest>,
        events: &dyn Fn(Event),
    ) -> Result<(Descriptor, Vec<u8>)> {
        let url = self.url(&format!("/v2/{}/manifests/{reference}", source.repository));
        let scopes = [pull_scope(&source.repository)];
        let mut r = self.expect(
            &Req {
                method: reqwest::Method::GET,
                url: url.clone(),
                scopes: &scopes,
                build: &|b| b.header(header::ACCEPT, crate::oci::MANIFEST_ACCEPT),
                retry: true,
            },
            &[StatusCode::OK],
            events,
        )?;
        let media = content_type(r.headers());
        let mut bytes = Vec::new();
        (&mut r)
            .take(MAX_MANIFEST as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| ClientError::Http {
                method: "GET",
                url: url.clone(),
                reason: e.to_string(),
            })?;
        if bytes.len() > MAX_MANIFEST {
            return Err(ClientError::BadManifest {
                reference: source.to_string(),
                why: format!("the manifest is larger than {MAX_MANIFEST} bytes"),
            });
        }
        let algorithm = expected.map_or(crate::digest::Algorithm::Sha256, |d| d.algorithm());
        let mut h = algorithm.hasher();
        h.update(&bytes);
        let actual = h.finish();
        if let Some(e) = expected
            && e != &actual
        {
            return Err(ClientError::DigestMismatch {
                what: format!("manifest of {source}"),
                expected: e.clone(),
                actual,
            });
        }
        // The body's own mediaType wins over a generic Content-Type.
        let declared = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v["mediaType"].as_str().map(str::to_string));
        let media = declared.or(media).ok_or_else(|| ClientError::BadManifest {
            reference: source.to_string(),
            why: "the manifest names no media type".into(),
        })?;
        let size = bytes.len() as u64;
        Ok((Descriptor::new(&media, actual, size), bytes))
    }

    /// Streams one blob into the store, verifying its digest; a dropped
    /// connection resumes with a `Range` request when the registry allows.
    fn pull_blob(&self, store: &Store, repo: &str, d: &Descriptor, events: &dyn Fn(Event)) -> Result<()> {
        let url = self.url(&format!("/v2/{repo}/blobs/{}", d.digest));
        let scopes = [pull_scope(repo)];
        let mut w = store.writer_with(d.digest.algorithm())?;
        let mut failures = 0;
        let mut buf = vec![0u8; 1 << 17];
        let mut last_report = Instant::now();
        'request: loop {
            let from = w.count();
            let range = format!("bytes={from}-");
            let build = |b: RequestBuilder| {
                if from > 0 {
                    b.header(header::RANGE, range.as_str())
                } else {
                    b
                }
            };
            let mut r = self.expect(
                &Req {
                    method: reqwest::Method::GET,
                    url: url.clone(),
                    scopes: &scopes,
                    build: &build,
                    retry: true,
                },
                &[StatusCode::OK, StatusCode::PARTIAL_CONTENT],
                events,
            )?;
            if from > 0 && r.status() == StatusCode::OK {
                // The registry ignored the range: start over.
                w = store.writer_with(d.digest.algorithm())?;
            }
            loop {
                match r.read(&mut buf) {
                    Ok(0) => break 'request,
                    Ok(n) => {
                        std::io::Write::write_all(&mut w, &buf[..n]).map_err(|e| {
                            ClientError::Store(StoreError::Io {
                                path: store.root().join("tmp"),
                                source: e,
                            })
                        })?;
                        if last_report.elapsed() > Duration::from_millis(200) {
                            last_report = Instant::now();
                            events(Event::Bytes {
                                digest: d.digest.clone(),
                                done: w.count(),
                                total: d.size,
                            });
                        }
                    }
                    Err(e) if failures + 1 < self.options.attempts => {
                        failures += 1;
                        events(Event::Retry {
                            what: format!("GET {url}"),
                            attempt: failures,
                            reason: e.to_string(),
                        });
                        std::thread::sleep(backoff(failures));
                        continue 'request;
                    }
                    Err(e) => {
                        return Err(ClientError::Http {
                            method: "GET",
                            url,
                            reason: e.to_string(),
                        });
                    }
                }
            }
        }
        events(Event::Bytes {
            digest: d.digest.clone(),
            done: w.count(),
            total: d.size,
        });
        match w.commit(Some(&d.digest)) {
            Ok(_) => Ok(()),
            Err(StoreError::DigestMismatch { expected, actual, .. }) => Err(ClientError::DigestMismatch {
                what: format!("blob of {repo}"),
                expected,
                actual,
            }),
            Err(e) => Err(e.into()),
        }
    }
}
