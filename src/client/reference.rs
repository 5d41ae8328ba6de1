//! Image references on the command line: `HOST[:PORT]/REPO[:TAG][@DIGEST]`.

use std::fmt;
use std::str::FromStr;

use crate::digest::Digest;
use crate::registry::{valid_name, valid_tag};

/// A remote image: which registry, which repository, which tag or digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `host[:port]`, as written.
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "`{input}` is not an image reference: {why} (expected HOST[:PORT]/REPOSITORY[:TAG][@DIGEST], e.g. 127.0.0.1:5000/strata/tomcat:1.0)"
)]
pub struct BadReference {
    pub input: String,
    pub why: String,
}

impl Reference {
    /// The tag or digest to put in a `/manifests/` URL (`latest` if none).
    pub fn reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        }
    }

    /// `REPO:TAG` (or `REPO@DIGEST`): a name for the image inside a local
    /// layout, without the registry.
    pub fn local_name(&self) -> String {
        match (&self.tag, &self.digest) {
            (Some(t), _) => format!("{}:{t}", self.repository),
            (None, Some(d)) => format!("{}@{d}", self.repository),
            (None, None) => format!("{}:latest", self.repository),
        }
    }

    /// Whether the registry is on this machine's loopback, where plain HTTP
    /// is the norm (as Docker assumes for 127.0.0.0/8 and localhost).
    pub fn is_loopback(&self) -> bool {
        let host = match self.registry.rsplit_once(':') {
            Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => self.registry.as_str(),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }
}

impl FromStr for Reference {
    type Err = BadReference;

    fn from_str(s: &str) -> Result<Reference, BadReference> {
        let bad = |why: &str| BadReference {
            input: s.to_string(),
            why: why.to_string(),
        };
        let (registry, rest) = s
            .split_once('/')
            .ok_or_else(|| bad("it names no registry host"))?;
        let looks_like_host = registry.contains('.') || registry.contains(':') || registry == "localhost";
        if !looks_like_host {
            return Err(bad(&format!(
                "`{registry}` is not a registry host (a host has a dot or a port, or is localhost)"
            )));
        }
        let (rest, digest) = match rest.split_once('@') {
            Some((r, d)) => (r, Some(d.parse::<Digest>().map_err(|e| bad(&e.to_string()))?)),
            None => (rest, None),
        };
        let (repository, tag) = match rest.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r, Some(t.to_string())),
            _ => (rest, None),
        };
        if !valid_name(repository) {
            return Err(bad(&format!(
                "repository `{repository}` must be lowercase letters, digits and separators"
            )));
        }
        if let Some(t) = &tag
            && !valid_tag(t)
        {
            return Err(bad(&format!("tag `{t}` is not valid")));
        }
        Ok(Reference {
            registry: registry.to_string(),
            repository: repository.to_string(),
            tag,
            digest,
        })
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let r: Reference = "127.0.0.1:5000/strata/tomcat:1.0".parse().unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "strata/tomcat");
        assert_eq!(r.tag.as_deref(), Some("1.0"));
        assert_eq!(r.reference(), "1.0");
        assert_eq!(r.local_name(), "strata/tomcat:1.0");
        assert!(r.is_loopback());
        assert_eq!(r.to_string(), "127.0.0.1:5000/strata/tomcat:1.0");

        let d = format!("sha256:{}", "a".repeat(64));
        let r: Reference = format!("registry.example.com/app@{d}").parse().unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.reference(), d);
        assert!(!r.is_loopback());

        let r: Reference = "localhost/app".parse().unwrap();
        assert_eq!(r.reference(), "latest");
        assert!(r.is_loopback());
        assert!("[::1]:5000/app:x".parse::<Reference>().unwrap().is_loopback());
    }

    #[test]
    fn refuses_what_is_not_a_reference() {
        for bad in [
            "tomcat",
            "strata/tomcat:1.0",
            "127.0.0.1:5000/Tomcat",
            "127.0.0.1:5000/app:-x",
            "127.0.0.1:5000/app@sha256:12",
            "127.0.0.1:5000/",
        ] {
            let e = bad.parse::<Reference>().unwrap_err();
            assert!(e.to_string().contains("expected HOST"), "{bad}: {e}");
        }
    }
}
