//! `--cache-to` and `--cache-from` specs, read as docker (buildx) reads
//! them: comma-separated `key=value` fields with a `type`, keys in any
//! case; a bare name is an image reference (`--cache-from a,b` is two of
//! them). The error wording for a malformed spec is docker's.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};

/// Where a build cache lives.
#[derive(Debug, Clone, PartialEq)]
pub enum Location {
    /// `type=local`: an OCI image layout directory.
    Local(PathBuf),
    /// `type=registry,ref=`: a reference in a registry
    /// (`localhost:5000/app:buildcache`) naming a kiln cache, or an image
    /// whose config carries an inline cache.
    Registry(String),
    /// `--cache-from IMAGE`: the inline cache of an image: the local
    /// store's image of that name when there is one, else the registry's.
    Image(String),
    /// `--cache-to type=inline`: in the config of the image built.
    Inline,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Local(p) => write!(f, "{}", p.display()),
            Location::Registry(r) | Location::Image(r) => f.write_str(r),
            Location::Inline => f.write_str("the image config (inline)"),
        }
    }
}

impl Location {
    /// How cache hits imported from here are attributed: the source as a
    /// spec (`type=registry,ref=host/app:cache-main`).
    pub fn origin(&self) -> String {
        match self {
            Location::Local(p) => format!("type=local,src={}", p.display()),
            Location::Registry(r) | Location::Image(r) => format!("type=registry,ref={r}"),
            Location::Inline => "type=inline".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct CacheTo {
    pub dest: Location,
    /// `mode=max`: every step of the build; `min`: the target's chain.
    pub max: bool,
}

/// A spec's fields, keys lowercased; `type` required.
fn fields(spec: &str, flag: &str) -> Result<BTreeMap<String, String>> {
    let mut m = BTreeMap::new();
    for part in spec.split(',') {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| anyhow!("{flag}: invalid value {part}"))?;
        m.insert(k.to_ascii_lowercase(), v.to_string());
    }
    if !m.contains_key("type") {
        bail!("{flag}: type required for {spec:?}");
    }
    Ok(m)
}

fn reference(flag: &str, r: &str) -> Result<String> {
    kiln_store::reference::parse(r).map_err(|e| anyhow!("{flag} ref={r}: {e}"))?;
    Ok(r.to_string())
}

/// `ref=` of a type=registry spec.
fn registry_ref(m: &BTreeMap<String, String>, spec: &str, flag: &str) -> Result<String> {
    let r = m
        .get("ref")
        .ok_or_else(|| anyhow!("{flag} {spec:?}: ref=REGISTRY/REPO:TAG is required"))?;
    reference(flag, r)
}

/// Refuses fields other than `allowed`.
fn only(m: &BTreeMap<String, String>, flag: &str, allowed: &[&str]) -> Result<()> {
    for k in m.keys() {
        if !allowed.contains(&k.as_str()) {
            bail!(
                "{flag}: unknown field {k:?} for type={} ({})",
                m["type"],
                allowed.join(", ")
            );
        }
    }
    Ok(())
}

fn unsupported(flag: &str, t: &str, known: &str) -> anyhow::Error {
    anyhow!("{flag}: cache type {t:?} is not supported (kiln knows {known})")
}

pub fn parse_cache_to(spec: &str) -> Result<CacheTo> {
    const FLAG: &str = "--cache-to";
    if !spec.contains('=') {
        // `--cache-to host/app:cache`: docker's shorthand for type=registry.
        if spec.contains(',') {
            bail!("{FLAG} {spec:?}: kiln exports to one cache destination per build");
        }
        return Ok(CacheTo {
            dest: Location::Registry(reference(FLAG, spec)?),
            max: false,
        });
    }
    let m = fields(spec, FLAG)?;
    let max = match m.get("mode").map(String::as_str) {
        None | Some("min") => false,
        Some("max") => true,
        Some(other) => bail!("{FLAG} mode={other}: expected min or max"),
    };
    let dest = match m["type"].as_str() {
        "local" => {
            only(&m, FLAG, &["type", "dest", "mode"])?;
            let d = m
                .get("dest")
                .ok_or_else(|| anyhow!("{FLAG} {spec:?}: dest=DIR is required"))?;
            Location::Local(PathBuf::from(d))
        }
        "registry" => {
            only(&m, FLAG, &["type", "ref", "mode"])?;
            Location::Registry(registry_ref(&m, spec, FLAG)?)
        }
        "inline" => {
            only(&m, FLAG, &["type", "mode"])?;
            if max {
                bail!(
                    "{FLAG} type=inline supports mode=min only (the records of the image's own steps, carried in its config); for every step use type=registry,ref=REF,mode=max"
                );
            }
            Location::Inline
        }
        other => return Err(unsupported(FLAG, other, "local, registry and inline")),
    };
    Ok(CacheTo { dest, max })
}

/// One `--cache-from` flag: one source, or several for a bare
/// comma-separated list of images.
pub fn parse_cache_from(spec: &str) -> Result<Vec<Location>> {
    const FLAG: &str = "--cache-from";
    if !spec.contains('=') {
        return spec
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| Ok(Location::Image(reference(FLAG, s)?)))
            .collect();
    }
    let m = fields(spec, FLAG)?;
    let src = match m["type"].as_str() {
        "local" => {
            only(&m, FLAG, &["type", "src"])?;
            let d = m
                .get("src")
                .ok_or_else(|| anyhow!("{FLAG} {spec:?}: src=DIR is required"))?;
            Location::Local(PathBuf::from(d))
        }
        "registry" => {
            only(&m, FLAG, &["type", "ref"])?;
            Location::Registry(registry_ref(&m, spec, FLAG)?)
        }
        "inline" => bail!(
            "{FLAG} type=inline: an inline cache is read from its image: --cache-from IMAGE or --cache-from type=registry,ref=IMAGE"
        ),
        other => return Err(unsupported(FLAG, other, "local and registry")),
    };
    Ok(vec![src])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err_to(spec: &str) -> String {
        format!("{:#}", parse_cache_to(spec).unwrap_err())
    }

    fn err_from(spec: &str) -> String {
        format!("{:#}", parse_cache_from(spec).unwrap_err())
    }

    #[test]
    fn specs_parse_like_buildkits() {
        assert_eq!(
            parse_cache_to("type=local,dest=/c,mode=max").unwrap(),
            CacheTo {
                dest: Location::Local("/c".into()),
                max: true
            }
        );
        assert!(!parse_cache_to("type=local,dest=/c").unwrap().max);
        assert!(parse_cache_to("type=local").is_err());
        assert_eq!(
            parse_cache_to("type=registry,ref=localhost:5000/app:cache,mode=max").unwrap(),
            CacheTo {
                dest: Location::Registry("localhost:5000/app:cache".into()),
                max: true
            }
        );
        assert!(parse_cache_to("type=registry,dest=/c").is_err());
        assert!(parse_cache_to("type=registry,ref=Bad/Name").is_err());
        assert!(parse_cache_to("type=s3,ref=x").is_err());
        assert_eq!(
            parse_cache_from("type=local,src=/c").unwrap(),
            vec![Location::Local("/c".into())]
        );
        assert_eq!(
            parse_cache_from("type=registry,ref=localhost:5000/app:cache").unwrap(),
            vec![Location::Registry("localhost:5000/app:cache".into())]
        );
        assert!(parse_cache_from("type=local,dest=/c").is_err());
        assert!(parse_cache_from("type=registry,src=/c").is_err());
    }

    #[test]
    fn inline_and_bare_images() {
        assert_eq!(
            parse_cache_to("type=inline").unwrap(),
            CacheTo {
                dest: Location::Inline,
                max: false
            }
        );
        assert_eq!(
            parse_cache_to("TYPE=inline,Mode=min").unwrap().dest,
            Location::Inline
        );
        // A bare name is docker's shorthand for type=registry,ref=NAME.
        assert_eq!(
            parse_cache_to("localhost:5000/app:cache").unwrap().dest,
            Location::Registry("localhost:5000/app:cache".into())
        );
        assert_eq!(
            parse_cache_from("localhost:5000/app:main").unwrap(),
            vec![Location::Image("localhost:5000/app:main".into())]
        );
        // Several images in one flag, as buildx splits them.
        assert_eq!(
            parse_cache_from("app:main,app:pr-7").unwrap(),
            vec![
                Location::Image("app:main".into()),
                Location::Image("app:pr-7".into())
            ]
        );
        assert_eq!(
            Location::Image("h:5000/app:main".into()).origin(),
            "type=registry,ref=h:5000/app:main"
        );
        assert_eq!(Location::Local("/c".into()).origin(), "type=local,src=/c");
    }

    #[test]
    fn bad_specs_get_dockers_words() {
        assert_eq!(
            err_from("type=registry,ref"),
            "--cache-from: invalid value ref"
        );
        assert_eq!(
            err_to("mode=max,ref=h/a:c"),
            "--cache-to: type required for \"mode=max,ref=h/a:c\""
        );
        assert!(err_to("type=inline,mode=max").contains("mode=min only"));
        assert!(err_to("type=inline,ref=h/a:c").contains("unknown field \"ref\""));
        assert!(err_from("type=inline").contains("--cache-from IMAGE"));
        assert!(err_from("type=gha").contains("\"gha\" is not supported"));
        assert!(err_from("Bad/Name").contains("--cache-from ref=Bad/Name"));
        assert!(err_to("a:1,b:2").contains("one cache destination"));
    }
}
