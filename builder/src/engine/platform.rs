//! Build and target platforms as BuildKit's Dockerfile frontend sees them:
//! `os/arch[/variant]` normalised as containerd normalises it (`aarch64`
//! = `arm64`, arm64's `v8` is no variant, `arm` is `arm/v7`), and the
//! automatic platform ARGs (`BUILDPLATFORM` ... `TARGETVARIANT`).

use std::collections::BTreeMap;
use std::fmt;

use anyhow::{bail, Result};

/// Architectures kiln knows how to name (and, emulated, to check).
const KNOWN_ARCHES: &[&str] = &[
    "amd64", "386", "arm64", "arm", "ppc64le", "s390x", "riscv64",
];

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Platform {
    pub os: String,
    pub arch: String,
    /// `None` for no variant (arm64's `v8` is none, as in containerd).
    pub variant: Option<String>,
}

impl Platform {
    /// The machine kiln runs on: BuildKit's build platform.
    pub fn host() -> Platform {
        let arch = kiln_runner::platform::host_arch().to_string();
        let variant = (arch == "arm").then(|| "v7".to_string());
        Platform {
            os: "linux".into(),
            arch,
            variant,
        }
    }

    /// Parses `os/arch[/variant]` (or `os/arch`), normalising names.
    pub fn parse(s: &str) -> Result<Platform> {
        let p = kiln_store::registry::Platform::parse(s.trim()).map_err(|_| {
            anyhow::anyhow!(
                "invalid platform {s:?}: expected os/arch[/variant], e.g. linux/amd64, linux/arm64, linux/arm/v7"
            )
        })?;
        if p.os != "linux" {
            bail!(
                "platform {s:?}: kiln builds Linux images only (os {:?})",
                p.os
            );
        }
        if !KNOWN_ARCHES.contains(&p.architecture.as_str()) {
            bail!(
                "platform {s:?}: unknown architecture {:?} (known: {})",
                p.architecture,
                KNOWN_ARCHES.join(", ")
            );
        }
        let variant = match (p.architecture.as_str(), p.variant) {
            ("arm64", Some(v)) if v == "v8" => None,
            (_, v) => v,
        };
        Ok(Platform {
            os: p.os,
            arch: p.architecture,
            variant,
        })
    }

    /// A comma-separated `--platform` list, duplicates dropped, in order.
    pub fn parse_list(list: &[String]) -> Result<Vec<Platform>> {
        let mut out: Vec<Platform> = Vec::new();
        for item in list.iter().flat_map(|s| s.split(',')) {
            if item.trim().is_empty() {
                continue;
            }
            let p = Platform::parse(item).map_err(|e| anyhow::anyhow!("--platform: {e}"))?;
            if !out.contains(&p) {
                out.push(p);
            }
        }
        Ok(out)
    }

    /// The directory BuildKit names for this platform in a multi-platform
    /// local or tar output: `linux_amd64`, `linux_arm_v7`.
    pub fn dir_name(&self) -> String {
        self.to_string().replace('/', "_")
    }

    /// As the registry client and the store match index entries.
    pub fn to_registry(&self) -> kiln_store::registry::Platform {
        kiln_store::registry::Platform {
            os: self.os.clone(),
            architecture: self.arch.clone(),
            variant: self
                .variant
                .clone()
                .or_else(|| (self.arch == "arm64").then(|| "v8".to_string())),
        }
    }

    /// Whether an image config's platform is this one.
    pub fn matches_config(&self, cfg: &kiln_store::ImageConfig) -> bool {
        let variant = match (cfg.architecture.as_str(), cfg.variant.as_deref()) {
            ("arm64", Some("v8")) | (_, Some("")) => None,
            (_, v) => v,
        };
        cfg.os == self.os
            && cfg.architecture == self.arch
            && (variant.is_none() || self.variant.is_none() || variant == self.variant.as_deref())
    }

    /// The platform of an image config (what BuildKit's implicit target
    /// detects from a base).
    pub fn of_config(cfg: &kiln_store::ImageConfig) -> Platform {
        let s = match &cfg.variant {
            Some(v) if !v.is_empty() => format!("{}/{}/{v}", cfg.os, cfg.architecture),
            _ => format!("{}/{}", cfg.os, cfg.architecture),
        };
        Platform::parse(&s).unwrap_or(Platform {
            os: cfg.os.clone(),
            arch: cfg.architecture.clone(),
            variant: cfg.variant.clone(),
        })
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.variant {
            Some(v) => write!(f, "{}/{}/{v}", self.os, self.arch),
            None => write!(f, "{}/{}", self.os, self.arch),
        }
    }
}

/// The ARGs BuildKit defines in the global scope of every build: FROM
/// lines see them; a stage sees one only after `ARG NAME` without a value.
pub fn platform_args(build: &Platform, target: &Platform) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for (prefix, p) in [("BUILD", build), ("TARGET", target)] {
        m.insert(format!("{prefix}PLATFORM"), p.to_string());
        m.insert(format!("{prefix}OS"), p.os.clone());
        m.insert(format!("{prefix}ARCH"), p.arch.clone());
        m.insert(
            format!("{prefix}VARIANT"),
            p.variant.clone().unwrap_or_default(),
        );
    }
    m
}

/// BuildKit's name for a stage's platform in progress lines of a
/// multi-platform build: `linux/amd64`, or `linux/amd64->arm64` for a
/// stage of the build platform that declares the target's ARGs.
pub fn progress_prefix(stage: &Platform, target: Option<&Platform>) -> String {
    match target {
        Some(t) if t.os == stage.os && t.arch != stage.arch => {
            let mut av = t.arch.clone();
            if let Some(v) = &t.variant {
                av.push('/');
                av.push_str(v);
            }
            format!("{stage}->{av}")
        }
        Some(t) if t.os != stage.os => format!("{stage}->{t}"),
        _ => stage.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_are_normalised_as_containerd_does() {
        let p = |s| Platform::parse(s).unwrap().to_string();
        assert_eq!(p("linux/amd64"), "linux/amd64");
        assert_eq!(p("linux/x86_64"), "linux/amd64");
        assert_eq!(p("linux/aarch64"), "linux/arm64");
        assert_eq!(p("linux/arm64/v8"), "linux/arm64");
        assert_eq!(p("linux/arm"), "linux/arm/v7");
        assert_eq!(p("linux/arm/v6"), "linux/arm/v6");
        assert_eq!(
            Platform::parse("linux/arm/v7").unwrap().dir_name(),
            "linux_arm_v7"
        );
        for bad in ["arm64", "linux", "linux/vax", "windows/amd64", "linux//x"] {
            assert!(Platform::parse(bad).is_err(), "{bad}");
        }
        let list = Platform::parse_list(&["linux/amd64,linux/arm64".into(), "linux/amd64".into()])
            .unwrap();
        assert_eq!(list.len(), 2);
    }

    #[test]
    fn platform_args_are_buildkits_eight() {
        let amd = Platform::parse("linux/amd64").unwrap();
        let arm = Platform::parse("linux/arm/v7").unwrap();
        let a = platform_args(&amd, &arm);
        assert_eq!(a.len(), 8);
        assert_eq!(a["BUILDPLATFORM"], "linux/amd64");
        assert_eq!(a["BUILDVARIANT"], "");
        assert_eq!(a["TARGETPLATFORM"], "linux/arm/v7");
        assert_eq!(a["TARGETARCH"], "arm");
        assert_eq!(a["TARGETVARIANT"], "v7");
        assert_eq!(progress_prefix(&amd, Some(&arm)), "linux/amd64->arm/v7");
        assert_eq!(progress_prefix(&amd, Some(&amd)), "linux/amd64");
        assert_eq!(progress_prefix(&amd, None), "linux/amd64");
    }
}
