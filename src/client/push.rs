//! Pushing: blobs the registry lacks (mounted from a sibling repository
//! when it can), whole or in chunks that resume after a dropped
//! connection, several at once; then the manifest.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::time::Instant;

use reqwest::StatusCode;
use reqwest::blocking::RequestBuilder;
use reqwest::header;

use super::{
    BlobOutcome, Client, ClientError, Event, Reference, Report, Req, Result, backoff, image_blobs, meta_name,
    push_scope, retryable, settled, with_digest,
};
use crate::digest::Digest;
use crate::oci::{Descriptor, Manifest};
use crate::store::{Store, StoreError};

impl Client {
    /// Pushes the image `manifest` (from `store`) to `target`. `mount_from`
    /// names repositories of the same registry worth trying to mount from,
    /// besides those this store remembers pushing the blob to.
    pub fn push(
        &self,
        store: &Store,
        manifest: &Descriptor,
        target: &Reference,
        mount_from: &[String],
        events: &(dyn Fn(Event) + Sync),
    ) -> Result<Report> {
        let bytes = store.read_blob(&manifest.digest)?;
        let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| ClientError::BadManifest {
            reference: manifest.digest.to_string(),
            why: e.to_string(),
        })?;
        let blobs = image_blobs(&m);
        for (_, d) in &blobs {
            if !store.has(&d.digest) {
                return Err(StoreError::NotFound(d.digest.clone()).into());
            }
        }
        let known = self.known_locations(store);
        let results = self.parallel(&blobs, |role, d| {
            let started = Instant::now();
            let mut candidates: Vec<String> = mount_from.to_vec();
            if let Some(repos) = known.get(&d.digest.to_string()) {
                candidates.extend(repos.iter().cloned());
            }
            candidates.retain(|r| r != &target.repository);
            candidates.dedup();
            let outcome = self.push_blob(store, &target.repository, d, &candidates, events)?;
            Ok(settled(events, role, d, outcome, started))
        })?;
        self.remember(store, &target.repository, blobs.iter().map(|(_, d)| &d.digest));

        let media = m
            .media_type
            .clone()
            .unwrap_or_else(|| manifest.media_type.clone());
        let path = format!("/v2/{}/manifests/{}", target.repository, target.reference());
        let scopes = [push_scope(&target.repository)];
        let body = bytes.clone();
        let build =
            move |b: RequestBuilder| b.header(header::CONTENT_TYPE, media.as_str()).body(body.clone());
        let r = self.expect(
            &Req {
                method: reqwest::Method::PUT,
                url: self.url(&path),
                scopes: &scopes,
                build: &build,
                retry: true,
            },
            &[StatusCode::CREATED, StatusCode::OK, StatusCode::ACCEPTED],
            events,
        )?;
        if let Some(d) = r
            .headers()
            .get("Docker-Content-Digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<Digest>().ok())
            && d != manifest.digest
        {
            return Err(ClientError::DigestMismatch {
                what: "manifest".into(),
                expected: manifest.digest.clone(),
                actual: d,
            });
        }
        Ok(Report::new(manifest.clone(), &blobs, results))
    }

    fn push_blob(
        &self,
        store: &Store,
        repo: &str,
        d: &Descriptor,
        mount_from: &[String],
        events: &dyn Fn(Event),
    ) -> Result<BlobOutcome> {
        let scopes = [push_scope(repo)];
        let head = self.send(
            &Req {
                method: reqwest::Method::HEAD,
                url: self.url(&format!("/v2/{repo}/blobs/{}", d.digest)),
                scopes: &scopes,
                build: &|b| b,
                retry: true,
            },
            events,
        )?;
        if head.status() == StatusCode::OK {
            return Ok(BlobOutcome::Present);
        }
        let mut session = None;
        for from in mount_from {
            let scopes = [push_scope(repo), format!("repository:{from}:pull")];
            let url = self.url(&format!(
                "/v2/{repo}/blobs/uploads/?mount={}&from={from}",
                d.digest
            ));
            let r = self.expect(
                &Req {
                    method: reqwest::Method::POST,
                    url: url.clone(),
                    scopes: &scopes,
                    build: &|b| b.header(header::CONTENT_LENGTH, "0"),
                    retry: true,
                },
                &[StatusCode::CREATED, StatusCode::ACCEPTED],
                events,
            )?;
            if r.status() == StatusCode::CREATED {
                return Ok(BlobOutcome::Mounted(from.clone()));
            }
            // Not mounted: the registry opened an upload session instead.
            // Keep the last one for the upload; close the others.
            let location = self.location(&r, &url)?;
            if let Some(stale) = session.replace(location) {
                let mut b = self.http.delete(&stale);
                if let Some(v) = self.auth.header(&scopes) {
                    b = b.header(header::AUTHORIZATION, v);
                }
                let _ = b.send();
            }
        }
        let path = store.blob_path(&d.digest);
        let mut failures = 0;
        loop {
            let location = match session.take() {
                Some(l) => l,
                None => self.start_upload(repo, &scopes, events)?,
            };
            let r = if d.size > self.options.chunk_size {
                self.upload_chunked(&location, &path, d, &scopes, events)
            } else {
                self.upload_whole(&location, &path, d, &scopes, events)
            };
            match r {
                Ok(()) => return Ok(BlobOutcome::Transferred),
                Err(e) if retryable(&e) && failures + 1 < self.options.attempts => {
                    failures += 1;
                    events(Event::Retry {
                        what: format!("upload of {}", d.digest),
                        attempt: failures,
                        reason: e.to_string(),
                    });
                    std::thread::sleep(backoff(failures));
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn start_upload(&self, repo: &str, scopes: &[String], events: &dyn Fn(Event)) -> Result<String> {
        let url = self.url(&format!("/v2/{repo}/blobs/uploads/"));
        let r = self.expect(
            &Req {
                method: reqwest::Method::POST,
                url: url.clone(),
                scopes,
                build: &|b| b.header(header::CONTENT_LENGTH, "0"),
                retry: true,
            },
            &[StatusCode::ACCEPTED],
            events,
        )?;
        self.location(&r, &url)
    }

    /// One PUT with the whole blob.
    fn upload_whole(
        &self,
        location: &str,
        path: &std::path::Path,
        d: &Descriptor,
        scopes: &[String],
        events: &dyn Fn(Event),
    ) -> Result<()> {
        let url = with_digest(location, &d.digest);
        let size = d.size;
        let open_err = |e: std::io::Error| {
            ClientError::Store(StoreError::Io {
                path: path.to_path_buf(),
                source: e,
            })
        };
        // Small blobs: read once, so the request can be built again after
        // an auth challenge.
        let bytes = std::fs::read(path).map_err(open_err)?;
        let build = |b: RequestBuilder| {
            b.header(header::CONTENT_TYPE, "application/octet-stream")
                .header(header::CONTENT_LENGTH, size.to_string())
                .body(bytes.clone())
        };
        self.expect(
            &Req {
                method: reqwest::Method::PUT,
                url,
                scopes,
                build: &build,
                retry: false,
            },
            &[StatusCode::CREATED],
            events,
        )?;
        events(Event::Bytes {
            digest: d.digest.clone(),
            done: size,
            total: size,
        });
        Ok(())
    }

    /// PATCHes of `chunk_size`, resuming from the registry's own count
    /// after a failure, then the closing PUT.
    fn upload_chunked(
        &self,
        location: &str,
        path: &std::path::Path,
        d: &Descriptor,
        scopes: &[String],
        events: &dyn Fn(Event),
    ) -> Result<()> {
        let io_err = |e: std::io::Error| {
            ClientError::Store(StoreError::Io {
                path: path.to_path_buf(),
                source: e,
            })
        };
        let mut file = File::open(path).map_err(io_err)?;
        let mut location = location.to_string();
        let mut offset = 0u64;
        let mut failures = 0;
        let mut buf = vec![0u8; self.options.chunk_size as usize];
        while offset < d.size {
            let len = (d.size - offset).min(self.options.chunk_size) as usize;
            file.seek(SeekFrom::Start(offset)).map_err(io_err)?;
            file.read_exact(&mut buf[..len]).map_err(io_err)?;
            let chunk = bytes::Bytes::copy_from_slice(&buf[..len]);
            let range = format!("{offset}-{}", offset + len as u64 - 1);
            let build = |b: RequestBuilder| {
                b.header(header::CONTENT_TYPE, "application/octet-stream")
                    .header(header::CONTENT_LENGTH, len.to_string())
                    .header(header::CONTENT_RANGE, range.as_str())
                    .body(chunk.clone())
            };
            let sent = self.expect(
                &Req {
                    method: reqwest::Method::PATCH,
                    url: location.clone(),
                    scopes,
                    build: &build,
                    retry: false,
                },
                &[StatusCode::ACCEPTED, StatusCode::NO_CONTENT],
                events,
            );
            match sent {
                Ok(r) => {
                    location = self.location(&r, &location)?;
                    offset += len as u64;
                    events(Event::Bytes {
                        digest: d.digest.clone(),
                        done: offset,
                        total: d.size,
                    });
                }
                Err(e) if retryable(&e) && failures + 1 < self.options.attempts => {
                    failures += 1;
                    events(Event::Retry {
                        what: format!("chunk {range} of {}", d.digest),
                        attempt: failures,
                        reason: e.to_string(),
                    });
                    std::thread::sleep(backoff(failures));
                    // Ask the registry how much it kept and go on from there.
                    let (loc, have) = self.upload_status(&location, scopes, events)?;
                    location = loc;
                    offset = have;
                }
                Err(e) => return Err(e),
            }
        }
        let url = with_digest(&location, &d.digest);
        self.expect(
            &Req {
                method: reqwest::Method::PUT,
                url,
                scopes,
                build: &|b| b.header(header::CONTENT_LENGTH, "0"),
                retry: true,
            },
            &[StatusCode::CREATED],
            events,
        )?;
        Ok(())
    }

    /// GET on an upload session: its (new) location and bytes received.
    fn upload_status(
        &self,
        location: &str,
        scopes: &[String],
        events: &dyn Fn(Event),
    ) -> Result<(String, u64)> {
        let r = self.expect(
            &Req {
                method: reqwest::Method::GET,
                url: location.to_string(),
                scopes,
                build: &|b| b,
                retry: true,
            },
            &[StatusCode::NO_CONTENT, StatusCode::OK, StatusCode::ACCEPTED],
            events,
        )?;
        let have = r
            .headers()
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim_start_matches("bytes=").split_once('-'))
            .and_then(|(_, end)| end.parse::<u64>().ok())
            .map(|end| end + 1)
            .unwrap_or(0);
        let loc = if r.headers().contains_key(header::LOCATION) {
            self.location(&r, location)?
        } else {
            location.to_string()
        };
        Ok((loc, have))
    }

    /// Which repositories of this registry this store has pushed each blob
    /// to (digest → repositories), for cross-repository mounts.
    fn known_locations(&self, store: &Store) -> BTreeMap<String, Vec<String>> {
        store
            .read_meta("pushed", &meta_name(&self.registry))
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn remember<'a>(&self, store: &Store, repo: &str, digests: impl Iterator<Item = &'a Digest>) {
        let mut known = self.known_locations(store);
        for d in digests {
            let repos = known.entry(d.to_string()).or_default();
            if !repos.iter().any(|r| r == repo) {
                repos.push(repo.to_string());
            }
        }
        // A lost record only costs a mount later: not worth failing a push.
        if let Err(e) = store.write_meta(
            "pushed",
            &meta_name(&self.registry),
            &serde_json::to_vec(&known).unwrap_or_default(),
        ) {
            tracing::warn!("could not record pushed blobs: {e}");
        }
    }
}
