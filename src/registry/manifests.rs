//! Manifests of a repository: pushing them (their structure as the image
//! spec has it, what they may name within the [`ManifestPolicy`]),
//! serving them with the media type this repository recorded, and the
//! referrers of a subject. A manifest is stored, as pushed, only when
//! `oci-spec`'s types read it and every blob it names is in the
//! repository, except what the policy lets through: foreign
//! (non-distributable) layers with `urls`, and manifests an index names,
//! when sparse indexes are allowed. Pushed bytes are never re-written.

use std::fs;
use std::path::{Path, PathBuf};

use super::state::{MAX_MANIFEST, Registry, RegistryError, Result, valid_tag};
use crate::digest::Digest;
use crate::oci::{Index, Manifest};
use crate::store::StoreError;

/// What a manifest push may leave out.
#[derive(Debug, Clone, Copy, Default)]
pub struct ManifestPolicy {
    /// Refuse layers that are non-distributable (`…layer.nondistributable.…`,
    /// Docker's foreign layers) unless their blob was pushed like any
    /// other; by default they are accepted when they carry `urls`.
    pub refuse_foreign_layers: bool,
    /// Accept an index that names manifests this repository does not have
    /// (refused by default).
    pub allow_sparse_index: bool,
}

/// Whether a layer of this media type is one clients fetch from its
/// `urls` instead of the registry.
pub fn is_foreign_layer(media_type: &str) -> bool {
    media_type.starts_with("application/vnd.oci.image.layer.nondistributable.")
        || media_type.starts_with("application/vnd.docker.image.rootfs.foreign.diff.tar")
}

/// The digests of a manifest's foreign layers that say where to fetch
/// them (a non-empty `urls`).
fn foreign_layers(manifest: &serde_json::Value) -> Vec<Digest> {
    let Some(layers) = manifest.get("layers").and_then(|l| l.as_array()) else {
        return Vec::new();
    };
    layers
        .iter()
        .filter(|l| l["mediaType"].as_str().is_some_and(is_foreign_layer))
        .filter(|l| l["urls"].as_array().is_some_and(|u| !u.is_empty()))
        .filter_map(|l| l["digest"].as_str()?.parse().ok())
        .collect()
}

/// Checks a pushed manifest or index against the image spec's own
/// structure with the `oci-spec` crate: every field the spec defines must
/// have its type, including those strata's types do not model (`subject`,
/// `artifactType`, `urls`, `data`, a platform's `variant`), and
/// `schemaVersion` must be 2. strata's types check the rest (digests it
/// can verify, what a manifest names); the bytes are stored as pushed.
pub fn check_structure(bytes: &[u8], value: &serde_json::Value, is_index: bool) -> Result<()> {
    let invalid = |why: String| RegistryError::ManifestInvalid(why);
    let version = value.get("schemaVersion");
    if version.and_then(|v| v.as_u64()) != Some(2) {
        return Err(invalid(format!(
            "`schemaVersion` is {}, not 2",
            version.map_or("missing".to_string(), |v| v.to_string())
        )));
    }
    if is_index {
        serde_json::from_slice::<oci_spec::image::ImageIndex>(bytes)
            .map_err(|e| invalid(format!("not an image index: {e}")))?;
    } else {
        serde_json::from_slice::<oci_spec::image::ImageManifest>(bytes)
            .map_err(|e| invalid(format!("not an image manifest: {e}")))?;
    }
    Ok(())
}

/// What the referrers API lists of a manifest with a `subject`, besides
/// its media type, digest and size (distribution spec 1.1): its
/// `artifactType`; when that is missing or empty, an image manifest's
/// config media type, and nothing for an index; and its annotations.
fn referrer_fields(
    manifest: &serde_json::Value,
    is_index: bool,
) -> serde_json::Map<String, serde_json::Value> {
    fn non_empty(v: Option<&serde_json::Value>) -> Option<&str> {
        v.and_then(|a| a.as_str()).filter(|a| !a.is_empty())
    }
    let own = non_empty(manifest.get("artifactType"));
    let from_config = || non_empty(manifest.get("config").and_then(|c| c.get("mediaType")));
    let artifact_type = if is_index { own } else { own.or_else(from_config) };
    let mut fields = serde_json::Map::new();
    if let Some(a) = artifact_type {
        fields.insert("artifactType".into(), a.into());
    }
    if let Some(a) = manifest
        .get("annotations")
        .filter(|a| a.as_object().is_some_and(|m| !m.is_empty()))
    {
        fields.insert("annotations".into(), a.clone());
    }
    fields
}

/// What a manifest push stored.
pub struct PutManifest {
    pub digest: Digest,
    /// The manifest's `subject`, echoed as `OCI-Subject`.
    pub subject: Option<Digest>,
}

/// Manifest media types this registry stores and serves.
const MANIFEST_TYPES: [&str; 4] = [
    crate::oci::MEDIA_MANIFEST,
    crate::oci::MEDIA_INDEX,
    crate::oci::MEDIA_DOCKER_MANIFEST,
    crate::oci::MEDIA_DOCKER_LIST,
];

/// The media type of a pushed manifest: its own `mediaType` when it has
/// one (a `Content-Type` that says otherwise is refused), else the
/// `Content-Type` it was pushed with, else an OCI image manifest. Only
/// manifest types are accepted.
pub fn manifest_media_type(body: Option<&serde_json::Value>, content_type: Option<&str>) -> Result<String> {
    let media = match (body, content_type) {
        (Some(v), ct) => {
            let Some(m) = v.as_str() else {
                return Err(RegistryError::ManifestInvalid(
                    "`mediaType` is not a string".into(),
                ));
            };
            if let Some(ct) = ct
                && ct != m
            {
                return Err(RegistryError::ManifestInvalid(format!(
                    "Content-Type `{ct}` contradicts the manifest's mediaType `{m}`"
                )));
            }
            m
        }
        (None, Some(ct)) => ct,
        (None, None) => crate::oci::MEDIA_MANIFEST,
    };
    if !MANIFEST_TYPES.contains(&media) {
        return Err(RegistryError::ManifestInvalid(format!(
            "`{media}` is not a manifest media type ({})",
            MANIFEST_TYPES.join(", ")
        )));
    }
    Ok(media.to_string())
}

impl Registry {
    fn manifest_marker(repo: &Path, d: &Digest) -> PathBuf {
        repo.join("_manifests").join(d.algorithm().name()).join(d.hex())
    }

    /// The manifest bytes and the media type this repository serves them
    /// with.
    pub fn manifest(&self, name: &str, reference: &str) -> Result<(Digest, Vec<u8>, String)> {
        let d = self.resolve(name, reference)?;
        let bytes = self.store().read_blob(&d)?;
        let recorded = fs::read_to_string(Self::manifest_marker(&self.repo(name)?, &d)).unwrap_or_default();
        let media = if !recorded.trim().is_empty() {
            recorded.trim().to_string()
        } else {
            // Pushed before media types were kept per repository: the
            // body's own type, then the old store-wide record.
            serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("mediaType")?.as_str().map(str::to_string))
                .or_else(|| {
                    self.store()
                        .read_meta("media-type", d.hex())
                        .map(|m| String::from_utf8_lossy(&m).into_owned())
                })
                .unwrap_or_else(|| crate::oci::MEDIA_MANIFEST.to_string())
        };
        Ok((d, bytes, media))
    }

    /// Whether `d` is a manifest of the repository at `repo`.
    fn has_manifest(&self, repo: &Path, d: &Digest) -> bool {
        Self::manifest_marker(repo, d).is_file() && self.store().has(d)
    }

    /// Stores a manifest after checking that everything it names exists
    /// (within the [`ManifestPolicy`]), and points `tags` at it as well as
    /// `reference` when that is a tag. Nothing is stored when a tag is
    /// invalid.
    pub fn put_manifest(
        &self,
        name: &str,
        reference: &str,
        bytes: &[u8],
        content_type: Option<&str>,
        tags: &[String],
    ) -> Result<PutManifest> {
        let repo = self.repo(name)?;
        if let Some(bad) = tags.iter().find(|t| !valid_tag(t)) {
            return Err(RegistryError::TagInvalid(bad.clone()));
        }
        if bytes.len() > MAX_MANIFEST {
            return Err(RegistryError::ManifestTooLarge);
        }
        let expected = if reference.contains(':') {
            Some(
                reference
                    .parse::<Digest>()
                    .map_err(|_| RegistryError::DigestInvalid(reference.to_string()))?,
            )
        } else if valid_tag(reference) {
            None
        } else {
            return Err(RegistryError::TagInvalid(reference.to_string()));
        };
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| RegistryError::ManifestInvalid(e.to_string()))?;
        let media = manifest_media_type(value.get("mediaType"), content_type)?;
        // A manifest with a `subject` is a referrer of that subject.
        let subject: Option<Digest> = value
            .get("subject")
            .and_then(|s| s.get("digest"))
            .and_then(|d| d.as_str())
            .and_then(|d| d.parse().ok());
        let is_index = media == crate::oci::MEDIA_INDEX || media == crate::oci::MEDIA_DOCKER_LIST;
        check_structure(bytes, &value, is_index)?;
        let referrer = subject.as_ref().map(|_| referrer_fields(&value, is_index));
        if is_index {
            let index: Index =
                serde_json::from_value(value).map_err(|e| RegistryError::ManifestInvalid(e.to_string()))?;
            for m in &index.manifests {
                if !self.has_manifest(&repo, &m.digest) && !self.manifest_policy.allow_sparse_index {
                    return Err(RegistryError::ManifestBlobUnknown(m.digest.clone()));
                }
            }
        } else {
            let foreign = foreign_layers(&value);
            let m: Manifest =
                serde_json::from_value(value).map_err(|e| RegistryError::ManifestInvalid(e.to_string()))?;
            for d in std::iter::once(&m.config).chain(&m.layers) {
                if self.has_blob(&repo, &d.digest) {
                    continue;
                }
                if !foreign.contains(&d.digest) {
                    return Err(RegistryError::ManifestBlobUnknown(d.digest.clone()));
                }
                if self.manifest_policy.refuse_foreign_layers {
                    return Err(RegistryError::ForeignLayerRefused(d.digest.clone()));
                }
            }
        }
        let (d, _) = self.store().put(bytes, expected.as_ref()).map_err(|e| match e {
            StoreError::DigestMismatch { expected, actual, .. } => {
                RegistryError::DigestMismatch { expected, actual }
            }
            other => other.into(),
        })?;
        // The media type is the repository's record of the manifest: a push
        // elsewhere never changes it.
        Self::write_small(&Self::manifest_marker(&repo, &d), media.as_bytes())?;
        let named = expected.is_none().then_some(reference);
        for tag in named.into_iter().chain(tags.iter().map(String::as_str)) {
            Self::write_small(&repo.join("_tags").join(tag), d.to_string().as_bytes())?;
        }
        if let (Some(sub), Some(mut desc)) = (&subject, referrer) {
            desc.insert("mediaType".into(), media.as_str().into());
            desc.insert("digest".into(), d.to_string().into());
            desc.insert("size".into(), bytes.len().into());
            let path = Self::referrers_dir(&repo, sub).join(d.hex());
            Self::write_small(&path, serde_json::Value::Object(desc).to_string().as_bytes())?;
        }
        Ok(PutManifest { digest: d, subject })
    }

    fn referrers_dir(repo: &Path, subject: &Digest) -> PathBuf {
        repo.join("_referrers")
            .join(subject.algorithm().name())
            .join(subject.hex())
    }

    /// Descriptors of the manifests whose `subject` is `subject`, filtered
    /// by artifact type when given. An unknown subject has no referrers.
    pub fn referrers(
        &self,
        name: &str,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<serde_json::Value>> {
        let repo = self.repo(name)?;
        let mut out: Vec<serde_json::Value> = fs::read_dir(Self::referrers_dir(&repo, subject))
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| fs::read(e.path()).ok())
                    .filter_map(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                    .filter(|d| {
                        // Only referrers whose manifest is still in the repository.
                        d["digest"]
                            .as_str()
                            .and_then(|x| x.parse::<Digest>().ok())
                            .is_some_and(|x| {
                                repo.join("_manifests")
                                    .join(x.algorithm().name())
                                    .join(x.hex())
                                    .is_file()
                            })
                    })
                    .filter(|d| artifact_type.is_none_or(|a| d["artifactType"].as_str() == Some(a)))
                    .collect()
            })
            .unwrap_or_default();
        out.sort_by(|a, b| a["digest"].as_str().cmp(&b["digest"].as_str()));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifests_own_media_type_wins_and_must_agree() {
        use crate::oci::{MEDIA_DOCKER_MANIFEST, MEDIA_MANIFEST};
        let own = serde_json::json!(MEDIA_MANIFEST);
        let t = |body, ct| manifest_media_type(body, ct).map_err(|e| e.to_string());
        assert_eq!(t(Some(&own), None).unwrap(), MEDIA_MANIFEST);
        assert_eq!(t(Some(&own), Some(MEDIA_MANIFEST)).unwrap(), MEDIA_MANIFEST);
        let e = t(Some(&own), Some("text/plain")).unwrap_err();
        assert!(
            e.contains("`text/plain` contradicts") && e.contains(MEDIA_MANIFEST),
            "{e}"
        );
        assert_eq!(
            t(None, Some(MEDIA_DOCKER_MANIFEST)).unwrap(),
            MEDIA_DOCKER_MANIFEST
        );
        assert_eq!(t(None, None).unwrap(), MEDIA_MANIFEST);
        assert!(t(None, Some("text/plain")).is_err());
        assert!(t(Some(&serde_json::json!("text/plain")), None).is_err());
    }

    #[test]
    fn malformed_spec_fields_are_refused_and_docker_shapes_accepted() {
        let d = Digest::sha256_of(b"{}").to_string();
        let config =
            format!(r#"{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{d}","size":2}}"#);
        let manifest = |extra: &str| {
            let layers = if extra.starts_with(",\"layers\"") {
                ""
            } else {
                r#","layers":[]"#
            };
            format!(r#"{{"schemaVersion":2,"config":{config}{layers}{extra}}}"#)
        };
        let check = |body: &str, is_index| {
            let v: serde_json::Value = serde_json::from_str(body).unwrap();
            check_structure(body.as_bytes(), &v, is_index).map_err(|e| e.to_string())
        };
        for (extra, why) in [
            (r#","subject":{"digest":5}"#, "expected a string"),
            (
                r#","subject":{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:abc","size":3}"#,
                "digest length",
            ),
            (
                &format!(
                    r#","subject":{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{d}"}}"#
                ),
                "missing field `size`",
            ),
            (r#","artifactType":5"#, "expected a string"),
            (
                &format!(r#","layers":[{{"mediaType":"x/y","digest":"{d}","size":2,"urls":"https://x"}}]"#),
                "expected a sequence",
            ),
            (
                &format!(r#","layers":[{{"mediaType":"x/y","digest":"{d}","size":2,"data":7}}]"#),
                "expected a string",
            ),
        ] {
            let e = check(&manifest(extra), false).unwrap_err();
            assert!(
                e.starts_with("manifest is invalid: not an image manifest: ") && e.contains(why),
                "{extra}: {e}"
            );
        }
        let e = check(
            &manifest("").replace(r#""schemaVersion":2"#, r#""schemaVersion":3"#),
            false,
        )
        .unwrap_err();
        assert!(e.contains("`schemaVersion` is 3, not 2"), "{e}");
        let e = check(r#"{"manifests":[]}"#, true).unwrap_err();
        assert!(e.contains("`schemaVersion` is missing"), "{e}");
        let e = check(
            &format!(
                r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"x/y","digest":"{d}","size":2,"platform":{{"architecture":"arm","os":"linux","variant":5}}}}]}}"#
            ),
            true,
        )
        .unwrap_err();
        assert!(e.contains("not an image index: invalid type: integer `5`"), "{e}");

        // What clients really push: an artifact with the empty config and
        // embedded data, Docker's schema 2 with a foreign layer, Docker's
        // list with `os.version`/`os.features` (which oci-spec ignores).
        let empty = format!(
            r#"{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{d}","size":2,"data":"e30="}}"#
        );
        check(
            &format!(
                r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/vnd.example","config":{empty},"layers":[{empty}],"subject":{config},"annotations":{{"a":"b"}}}}"#
            ),
            false,
        )
        .unwrap();
        check(
            &format!(
                r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"{d}","size":2}},"layers":[{{"mediaType":"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip","digest":"{d}","size":2,"urls":["https://x/y"]}}]}}"#
            ),
            false,
        )
        .unwrap();
        check(
            &format!(
                r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[{{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","digest":"{d}","size":2,"platform":{{"architecture":"amd64","os":"windows","os.version":"10.0.17763.1","os.features":["win32k"]}}}}]}}"#
            ),
            true,
        )
        .unwrap();
    }

    #[test]
    fn a_referrer_lists_its_artifact_type_else_its_config_type_and_its_annotations() {
        use serde_json::json;
        let config = json!({ "mediaType": "application/vnd.example.config" });
        let listed =
            |m: serde_json::Value, is_index| serde_json::Value::Object(referrer_fields(&m, is_index));
        assert_eq!(
            listed(
                json!({ "artifactType": "application/vnd.example.sbom", "config": config }),
                false
            ),
            json!({ "artifactType": "application/vnd.example.sbom" })
        );
        // Missing or empty: the config's media type, for an image manifest.
        for own in [json!({}), json!({ "artifactType": "" })] {
            let mut m = own.clone();
            m["config"] = config.clone();
            m["annotations"] = json!({ "a": "1" });
            assert_eq!(
                listed(m, false),
                json!({ "artifactType": "application/vnd.example.config", "annotations": { "a": "1" } })
            );
            // An index has no config: no artifactType at all.
            assert_eq!(listed(own, true), json!({}));
        }
        assert_eq!(
            listed(json!({ "artifactType": "application/vnd.example.bundle" }), true),
            json!({ "artifactType": "application/vnd.example.bundle" })
        );
        // Null or empty annotations are no annotations.
        assert_eq!(listed(json!({ "annotations": null }), true), json!({}));
        assert_eq!(listed(json!({ "annotations": {} }), true), json!({}));
    }

    #[test]
    fn foreign_layers_are_the_non_distributable_ones_with_urls() {
        let d = Digest::sha256_of(b"x");
        let m = serde_json::json!({ "layers": [
            { "mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", "digest": d.to_string(), "urls": ["https://x/y"] },
            { "mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", "digest": Digest::sha256_of(b"y").to_string(), "urls": [] },
            { "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": Digest::sha256_of(b"z").to_string(), "urls": ["https://x/z"] },
        ]});
        assert_eq!(foreign_layers(&m), vec![d]);
        assert!(is_foreign_layer(
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
        ));
        assert!(!is_foreign_layer("application/vnd.oci.image.layer.v1.tar+zstd"));
    }
}
