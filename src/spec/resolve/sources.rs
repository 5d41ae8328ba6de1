//! Resolving where a tier's files come from: base images, sources
//! (local paths and globs, URLs with their digests, Debian packages,
//! inline content) and the modes and owners they are given.

use std::path::{Path, PathBuf};

use toml::Spanned;

use super::Ctx;
use crate::digest::Digest;
use crate::spec::plan::*;
use crate::spec::raw;
use crate::spec::{Result, SpecError};

pub(super) fn base_image(cx: &Ctx, b: &Spanned<String>) -> Result<BaseImage> {
    let v = b.get_ref();
    let split = |rest: &str| -> (PathBuf, Option<String>) {
        // DIR[:REF]; a REF never contains `/`, so split at the last `:` only
        // when what follows has no slash.
        match rest.rsplit_once(':') {
            Some((p, r)) if !r.contains('/') && !p.is_empty() => (cx.host_path(p), Some(r.to_string())),
            _ => (cx.host_path(rest), None),
        }
    };
    let img = if let Some(rest) = v.strip_prefix("oci:") {
        let (dir, reference) = split(rest);
        BaseImage::OciLayout { dir, reference }
    } else if let Some(rest) = v.strip_prefix("docker-archive:") {
        // docker-archive references are REPO:TAG, which contain a colon
        // themselves, so the path ends at the first `.tar:`.
        let (path, reference) = match rest.find(".tar:") {
            Some(i) => (cx.host_path(&rest[..i + 4]), Some(rest[i + 5..].to_string())),
            None => (cx.host_path(rest), None),
        };
        BaseImage::DockerArchive { path, reference }
    } else {
        return Err(cx.bad(
            cx.loc(b),
            "base",
            v,
            "`oci:DIR[:REF]` or `docker-archive:FILE.tar[:REPO:TAG]`",
        ));
    };
    let path = match &img {
        BaseImage::OciLayout { dir, .. } => dir,
        BaseImage::DockerArchive { path, .. } => path,
    };
    if !path.exists() {
        return Err(SpecError::MissingFile {
            at: cx.loc(b),
            key: "base".to_string(),
            path: path.clone(),
        });
    }
    Ok(img)
}

fn mode(cx: &Ctx, key: &str, s: &Spanned<String>) -> Result<u32> {
    match u32::from_str_radix(s.get_ref().trim_start_matches("0o"), 8) {
        Ok(m) if m <= 0o7777 => Ok(m),
        _ => Err(cx.bad(cx.loc(s), key, s.get_ref(), "an octal mode such as \"0644\"")),
    }
}

pub(super) fn owner(cx: &Ctx, key: &str, s: &Spanned<String>) -> Result<(u32, u32)> {
    let v = s.get_ref();
    let parsed = match v.split_once(':') {
        Some((u, g)) => u.parse().ok().zip(g.parse().ok()),
        None => v.parse().ok().map(|u| (u, u)),
    };
    parsed.ok_or_else(|| cx.bad(cx.loc(s), key, v, "a numeric owner \"UID:GID\""))
}

fn origin(cx: &Ctx, key: &str, s: &Spanned<String>, digest: &Option<Digest>) -> Result<Origin> {
    let v = s.get_ref();
    if v.starts_with("http://") || v.starts_with("https://") {
        if digest.is_none() {
            return Err(SpecError::MissingDigest {
                at: cx.loc(s),
                key: key.to_string(),
            });
        }
        return Ok(Origin::Url(v.clone()));
    }
    if v.contains("://") {
        return Err(cx.bad(cx.loc(s), key, v, "a local path or an http(s) URL"));
    }
    let path = cx.host_path(v);
    if v.contains(['*', '?', '[']) {
        return glob_one(cx, key, s, &path).map(Origin::Local);
    }
    if !path.exists() {
        return Err(SpecError::MissingFile {
            at: cx.loc(s),
            key: key.to_string(),
            path,
        });
    }
    Ok(Origin::Local(path))
}

/// Resolves a file-name glob (in the last path component only) to exactly
/// one file, so `openjdk-17-jre-headless_*.deb` survives version bumps.
fn glob_one(cx: &Ctx, key: &str, s: &Spanned<String>, path: &Path) -> Result<PathBuf> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let pattern = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let glob = globset::Glob::new(&pattern).map_err(|e| SpecError::BadGlob {
        at: cx.loc(s),
        key: key.to_string(),
        pattern: s.get_ref().clone(),
        reason: e.kind().to_string(),
    })?;
    let m = glob.compile_matcher();
    let mut found: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .filter(|e| m.is_match(e.file_name()))
            .map(|e| e.path())
            .collect(),
        Err(_) => Vec::new(),
    };
    found.sort();
    if found.len() == 1 {
        return Ok(found.remove(0));
    }
    Err(SpecError::GlobMatches {
        at: cx.loc(s),
        key: key.to_string(),
        pattern: path.display().to_string(),
        count: found.len(),
        matches: found,
    })
}

pub(super) fn source(cx: &Ctx, s: &Spanned<raw::Source>) -> Result<Source> {
    let at = cx.loc(s);
    let r = s.get_ref();
    let kinds: Vec<(&str, bool)> = vec![
        ("path", r.path.is_some()),
        ("tar", r.tar.is_some()),
        ("deb", r.deb.is_some()),
        ("war", r.war.is_some()),
        ("content", r.content.is_some()),
        ("symlink", r.symlink.is_some()),
        ("dir", r.dir.is_some()),
    ];
    let found: Vec<String> = kinds
        .iter()
        .filter(|(_, set)| *set)
        .map(|(k, _)| k.to_string())
        .collect();
    if found.len() != 1 {
        return Err(SpecError::SourceKind { at, found });
    }
    let kind_name = found[0].clone();

    let digest = match (&r.sha256, &r.sha512) {
        (Some(_), Some(d)) => {
            return Err(cx.bad(cx.loc(d), "sha512", d.get_ref(), "allowed together with sha256"));
        }
        (Some(d), None) => Some(parse_digest(cx, "sha256", "sha256", d)?),
        (None, Some(d)) => Some(parse_digest(cx, "sha512", "sha512", d)?),
        (None, None) => None,
    };
    let not_for = |key: &str, set: bool, allowed: &[&str]| -> Result<()> {
        if set && !allowed.contains(&kind_name.as_str()) {
            return Err(SpecError::KeyNotForKind {
                at: at.clone(),
                key: key.to_string(),
                kind: kind_name.clone(),
            });
        }
        Ok(())
    };
    not_for("sha256/sha512", digest.is_some(), &["tar", "deb"])?;
    not_for("strip_components", r.strip_components.is_some(), &["tar"])?;
    not_for("strip_prefix", r.strip_prefix.is_some(), &["tar", "deb", "path"])?;
    not_for("include", !r.include.is_empty(), &["tar", "deb", "path", "war"])?;
    not_for("exclude", !r.exclude.is_empty(), &["tar", "deb", "path", "war"])?;
    not_for("paths", r.paths.is_some(), &["symlink"])?;
    not_for(
        "dest",
        r.dest.is_some(),
        &["path", "tar", "deb", "war", "content"],
    )?;

    let dest = match &r.dest {
        Some(d) => cx.image_path("dest", d)?,
        None => ImagePath::root(),
    };
    let kind = if let Some(p) = &r.path {
        let path = cx.host_path(p.get_ref());
        if !path.exists() {
            return Err(SpecError::MissingFile {
                at: cx.loc(p),
                key: "path".to_string(),
                path,
            });
        }
        SourceKind::Path(path)
    } else if let Some(t) = &r.tar {
        SourceKind::Tar(origin(cx, "tar", t, &digest)?)
    } else if let Some(d) = &r.deb {
        SourceKind::Deb(origin(cx, "deb", d, &digest)?)
    } else if let Some(w) = &r.war {
        let path = cx.host_path(w.get_ref());
        if !path.exists() {
            return Err(SpecError::MissingFile {
                at: cx.loc(w),
                key: "war".to_string(),
                path,
            });
        }
        SourceKind::War(path)
    } else if let Some(c) = &r.content {
        if dest.is_root() {
            return Err(cx.bad(at.clone(), "dest", "/", "a file path (content needs `dest`)"));
        }
        SourceKind::Content(c.get_ref().clone())
    } else if let Some(target) = &r.symlink {
        let Some(paths) = &r.paths else {
            return Err(cx.bad(cx.loc(target), "paths", "(missing)", "a list of link paths"));
        };
        let list = paths
            .get_ref()
            .iter()
            .map(|p| match ImagePath::parse(p) {
                Ok(ip) if !ip.is_root() => Ok(ip),
                Ok(_) => Err(cx.bad(cx.loc(paths), "paths", p, "a path below the root")),
                Err(reason) => Err(SpecError::BadPath {
                    at: cx.loc(paths),
                    key: "paths".to_string(),
                    path: p.clone(),
                    reason,
                }),
            })
            .collect::<Result<Vec<_>>>()?;
        if target.get_ref().is_empty() {
            return Err(cx.bad(cx.loc(target), "symlink", "", "a link target"));
        }
        SourceKind::Symlink {
            target: target.get_ref().clone(),
            paths: list,
        }
    } else if let Some(dirs) = &r.dir {
        let list = dirs
            .get_ref()
            .iter()
            .map(|p| {
                ImagePath::parse(p).map_err(|reason| SpecError::BadPath {
                    at: cx.loc(dirs),
                    key: "dir".to_string(),
                    path: p.clone(),
                    reason,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        SourceKind::Dir(list)
    } else {
        unreachable!("exactly one kind was checked above")
    };

    let globs = |key: &str, list: &[Spanned<String>]| -> Result<Vec<String>> {
        list.iter()
            .map(|g| {
                let pat = g.get_ref().trim_start_matches('/').to_string();
                globset::GlobBuilder::new(&pat)
                    .literal_separator(true)
                    .build()
                    .map_err(|e| SpecError::BadGlob {
                        at: cx.loc(g),
                        key: key.to_string(),
                        pattern: g.get_ref().clone(),
                        reason: e.kind().to_string(),
                    })?;
                Ok(pat)
            })
            .collect()
    };
    let filter = Filter {
        include: globs("include", &r.include)?,
        exclude: globs("exclude", &r.exclude)?,
        strip_components: r.strip_components.as_ref().map(|s| *s.get_ref()).unwrap_or(0),
        strip_prefix: r
            .strip_prefix
            .as_ref()
            .map(|p| cx.image_path("strip_prefix", p))
            .transpose()?,
    };
    let attrs = Attrs {
        mode: r.mode.as_ref().map(|m| mode(cx, "mode", m)).transpose()?,
        dir_mode: r.dir_mode.as_ref().map(|m| mode(cx, "dir_mode", m)).transpose()?,
        owner: r.owner.as_ref().map(|o| owner(cx, "owner", o)).transpose()?,
    };
    Ok(Source {
        kind,
        digest,
        dest,
        filter,
        attrs,
        at,
    })
}

fn parse_digest(cx: &Ctx, key: &str, algo: &str, s: &Spanned<String>) -> Result<Digest> {
    let v = s.get_ref();
    let full = if v.contains(':') {
        v.clone()
    } else {
        format!("{algo}:{v}")
    };
    let d: Digest = full.parse().map_err(|source| SpecError::BadDigest {
        at: cx.loc(s),
        key: key.to_string(),
        source,
    })?;
    if d.algorithm().name() != algo {
        return Err(cx.bad(cx.loc(s), key, v, "a digest of the algorithm the key names"));
    }
    Ok(d)
}
