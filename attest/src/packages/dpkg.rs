//! Debian packages: `/var/lib/dpkg/status` (and distroless' one-file-per-
//! package `/var/lib/dpkg/status.d/`), with licences from each package's
//! machine-readable `/usr/share/doc/PKG/copyright` where it has one.

use std::collections::BTreeMap;

use super::control::{paragraphs, Paragraph};
use super::{text, Distro, Ecosystem, Package};
use crate::license;

const STATUS: &str = "var/lib/dpkg/status";
const STATUS_D: &str = "var/lib/dpkg/status.d/";

/// `usr/share/doc/NAME/copyright`, exactly.
pub(super) fn is_copyright_file(path: &str) -> bool {
    path.strip_prefix("usr/share/doc/")
        .and_then(|r| r.strip_suffix("/copyright"))
        .is_some_and(|name| !name.is_empty() && !name.contains('/'))
}

pub(super) fn packages(files: &BTreeMap<String, Vec<u8>>, distro: Option<&Distro>) -> Vec<Package> {
    let mut out = Vec::new();
    for (path, bytes) in files {
        let listed_by_status_d = path.starts_with(STATUS_D);
        if path != STATUS && !listed_by_status_d {
            continue;
        }
        for p in paragraphs(&text(bytes)) {
            if !installed(&p, listed_by_status_d) {
                continue;
            }
            if let Some(pkg) = package(&p, path, files, distro) {
                out.push(pkg);
            }
        }
    }
    out
}

/// dpkg keeps removed-but-configured and half-installed packages in the
/// status file too; only `... installed` ones are in the image. A
/// distroless status.d file has no Status field: being there is the record.
fn installed(p: &Paragraph, status_d: bool) -> bool {
    match p.get("Status") {
        Some(s) => s.split_whitespace().nth(2) == Some("installed"),
        None => status_d,
    }
}

fn package(
    p: &Paragraph,
    found_in: &str,
    files: &BTreeMap<String, Vec<u8>>,
    distro: Option<&Distro>,
) -> Option<Package> {
    let name = p.get("Package")?.to_string();
    let version = p.get("Version")?.to_string();
    let source = p
        .get("Source")
        .and_then(|s| s.split_whitespace().next())
        .filter(|s| *s != name)
        .map(str::to_string);
    let license = files
        .get(&format!("usr/share/doc/{name}/copyright"))
        .and_then(|c| copyright_license(&text(c)));
    Some(Package {
        ecosystem: Ecosystem::Deb,
        name,
        version,
        arch: p.get("Architecture").map(str::to_string),
        license,
        supplier: p.get("Maintainer").map(str::to_string),
        homepage: p.get("Homepage").map(str::to_string),
        source,
        found_in: found_in.to_string(),
        distro: distro.cloned(),
    })
}

/// The licences a DEP-5 copyright file names in its `License:` fields, as
/// one SPDX expression (AND of the distinct ones, in order of appearance).
/// A free-form copyright file (no `License:` fields) gives `None`: it is
/// not guessed from prose.
fn copyright_license(text: &str) -> Option<String> {
    let mut seen: Vec<String> = Vec::new();
    for line in text.lines() {
        let Some(v) = line.strip_prefix("License:") else {
            continue;
        };
        let v = v.trim();
        if v.is_empty() {
            continue;
        }
        let expr = license::from_debian(v);
        if !seen.contains(&expr) {
            seen.push(expr);
        }
    }
    license::all_of(&seen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(entries: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        entries
            .iter()
            .map(|(p, t)| (p.to_string(), t.as_bytes().to_vec()))
            .collect()
    }

    const STATUS_TEXT: &str = "\
Package: libc6
Status: install ok installed
Priority: optional
Architecture: amd64
Multi-Arch: same
Source: glibc (2.36-9+deb12u4)
Version: 2.36-9+deb12u4
Maintainer: GNU Libc Maintainers <debian-glibc@lists.debian.org>
Description: GNU C Library: Shared libraries
 Contains the standard libraries.
Homepage: https://www.gnu.org/software/libc/libc.html

Package: gone
Status: deinstall ok config-files
Version: 1.0
Architecture: amd64

Package: base-files
Status: install ok installed
Version: 12.4+deb12u5
Architecture: amd64
";

    #[test]
    fn installed_packages_only_with_source_and_licence() {
        let f = files(&[
            (STATUS, STATUS_TEXT),
            (
                "usr/share/doc/libc6/copyright",
                "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\nFiles: *\nLicense: LGPL-2.1+\n\nFiles: x/*\nLicense: GPL-2+\n .\n text\n\nFiles: y/*\nLicense: LGPL-2.1+\n",
            ),
            ("usr/share/doc/base-files/copyright", "This is free-form prose, GPL somewhere.\n"),
        ]);
        let p = packages(&f, None);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].name, "libc6");
        assert_eq!(p[0].version, "2.36-9+deb12u4");
        assert_eq!(p[0].arch.as_deref(), Some("amd64"));
        assert_eq!(p[0].source.as_deref(), Some("glibc"));
        assert_eq!(
            p[0].license.as_deref(),
            Some("LGPL-2.1-or-later AND GPL-2.0-or-later")
        );
        assert_eq!(p[1].name, "base-files");
        assert_eq!(p[1].license, None);
        assert_eq!(p[1].source, None);
    }

    #[test]
    fn distroless_status_d_files_need_no_status_field() {
        let f = files(&[
            (
                "var/lib/dpkg/status.d/tzdata",
                "Package: tzdata\nVersion: 2024a-0+deb12u1\nArchitecture: all\n",
            ),
            ("var/lib/dpkg/status.d/broken", "no fields at all\n"),
        ]);
        let p = packages(&f, None);
        assert_eq!(p.len(), 1);
        assert_eq!(
            (p[0].name.as_str(), p[0].found_in.as_str()),
            ("tzdata", "var/lib/dpkg/status.d/tzdata")
        );
    }

    #[test]
    fn copyright_paths() {
        assert!(is_copyright_file("usr/share/doc/libc6/copyright"));
        assert!(!is_copyright_file("usr/share/doc//copyright"));
        assert!(!is_copyright_file("usr/share/doc/a/b/copyright"));
    }
}
