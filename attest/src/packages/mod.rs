//! Packages found in an image's files: Debian (`/var/lib/dpkg/status`, and
//! distroless' `/var/lib/dpkg/status.d/*`), Python distributions
//! (`*.dist-info/METADATA`) and Alpine (`/lib/apk/db/installed`).

mod apk;
mod control;
mod dpkg;
mod os_release;
mod python;

use std::collections::BTreeMap;

pub use os_release::Distro;

/// Which package manager a package belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Ecosystem {
    Deb,
    Apk,
    Python,
}

impl Ecosystem {
    /// The purl type (`pkg:deb/...`).
    pub fn purl_type(self) -> &'static str {
        match self {
            Ecosystem::Deb => "deb",
            Ecosystem::Apk => "apk",
            Ecosystem::Python => "pypi",
        }
    }
}

/// One installed package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub ecosystem: Ecosystem,
    pub name: String,
    pub version: String,
    /// The architecture the package manager recorded (`amd64`, `all`).
    pub arch: Option<String>,
    /// The licence as an SPDX expression (see [`crate::license`]).
    pub license: Option<String>,
    /// Maintainer or author, as recorded.
    pub supplier: Option<String>,
    pub homepage: Option<String>,
    /// The source package, where it differs from the package's name.
    pub source: Option<String>,
    /// The file the package was found in, relative to the image root.
    pub found_in: String,
    /// The distribution (from os-release) for deb and apk packages.
    pub distro: Option<Distro>,
}

/// Whether a path (relative to the image root, no leading `/`) is one the
/// package readers need.
pub fn wanted(path: &str) -> bool {
    path == "var/lib/dpkg/status"
        || (path.starts_with("var/lib/dpkg/status.d/") && !path.ends_with(".md5sums"))
        || path == "lib/apk/db/installed"
        || path == "etc/os-release"
        || path == "usr/lib/os-release"
        || path.ends_with(".dist-info/METADATA")
        || dpkg::is_copyright_file(path)
}

/// Every package the files describe, sorted by ecosystem, name, version.
pub fn find_packages(files: &BTreeMap<String, Vec<u8>>) -> Vec<Package> {
    let distro = os_release::find(files);
    let mut out = dpkg::packages(files, distro.as_ref());
    out.extend(apk::packages(files, distro.as_ref()));
    out.extend(python::packages(files));
    out.sort_by(|a, b| {
        (a.ecosystem, &a.name, &a.version, &a.found_in).cmp(&(
            b.ecosystem,
            &b.name,
            &b.version,
            &b.found_in,
        ))
    });
    out
}

/// Text of a file, lossily: package databases are meant to be UTF-8, and
/// one bad byte must not lose the whole database.
fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wanted_picks_the_databases_and_nothing_else() {
        for p in [
            "var/lib/dpkg/status",
            "var/lib/dpkg/status.d/tzdata",
            "lib/apk/db/installed",
            "usr/local/lib/python3.11/site-packages/flask-3.0.0.dist-info/METADATA",
            "usr/share/doc/libc6/copyright",
            "etc/os-release",
        ] {
            assert!(wanted(p), "{p}");
        }
        for p in [
            "var/lib/dpkg/status-old",
            "var/lib/dpkg/status.d/tzdata.md5sums",
            "usr/share/doc/libc6/changelog.gz",
            "usr/share/doc/libc6/x/copyright",
            "etc/passwd",
            "x.dist-info/RECORD",
        ] {
            assert!(!wanted(p), "{p}");
        }
    }
}
