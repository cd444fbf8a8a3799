//! Python distributions: every `NAME-VERSION.dist-info/METADATA` in the
//! image (site-packages of any interpreter, virtualenvs included).

use std::collections::BTreeMap;

use super::control::headers;
use super::{text, Ecosystem, Package};
use crate::license;

pub(super) fn packages(files: &BTreeMap<String, Vec<u8>>) -> Vec<Package> {
    files
        .iter()
        .filter(|(p, _)| p.ends_with(".dist-info/METADATA"))
        .filter_map(|(p, bytes)| package(p, &text(bytes)))
        .collect()
}

fn package(path: &str, metadata: &str) -> Option<Package> {
    let h = headers(metadata);
    let name = h.get("Name")?.to_string();
    let version = h.get("Version")?.to_string();
    let supplier = h
        .get("Author-email")
        .or_else(|| h.get("Author"))
        .or_else(|| h.get("Maintainer-email"))
        .map(str::to_string);
    let homepage = h.get("Home-page").map(str::to_string).or_else(|| {
        h.all("Project-URL")
            .find_map(|u| u.split_once(',').map(|(_, url)| url.trim().to_string()))
    });
    Some(Package {
        ecosystem: Ecosystem::Python,
        name,
        version,
        arch: None,
        license: declared_license(&h),
        supplier,
        homepage,
        source: None,
        found_in: path.to_string(),
        distro: None,
    })
}

/// PEP 639's `License-Expression` is SPDX already; else a short `License`
/// field; else the `License ::` trove classifiers.
fn declared_license(h: &super::control::Paragraph) -> Option<String> {
    if let Some(e) = h.get("License-Expression") {
        return Some(license::from_expression(e));
    }
    if let Some(l) = h.get("License") {
        // Some projects paste the whole licence text into the field.
        if !l.contains('\n') && l.len() <= 100 && l != "UNKNOWN" {
            return Some(license::from_name(l));
        }
    }
    let from_classifiers: Vec<String> = h
        .all("Classifier")
        .filter_map(|c| c.strip_prefix("License ::"))
        .map(|c| license::from_classifier(c.trim()))
        .collect();
    license::all_of(&from_classifiers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(meta: &str) -> Package {
        let f: BTreeMap<String, Vec<u8>> = [(
            "usr/local/lib/python3.11/site-packages/x-1.dist-info/METADATA".to_string(),
            meta.as_bytes().to_vec(),
        )]
        .into();
        let mut p = packages(&f);
        assert_eq!(p.len(), 1, "{meta}");
        p.remove(0)
    }

    #[test]
    fn licence_from_expression_field_or_classifiers() {
        let p = one("Metadata-Version: 2.4\nName: Flask\nVersion: 3.0.3\nLicense-Expression: BSD-3-Clause\nProject-URL: Source, https://github.com/pallets/flask/\n\nLicense: not-a-header\n");
        assert_eq!((p.name.as_str(), p.version.as_str()), ("Flask", "3.0.3"));
        assert_eq!(p.license.as_deref(), Some("BSD-3-Clause"));
        assert_eq!(
            p.homepage.as_deref(),
            Some("https://github.com/pallets/flask/")
        );
        let p = one("Name: blinker\nVersion: 1.8\nClassifier: License :: OSI Approved :: MIT License\nClassifier: Programming Language :: Python\n");
        assert_eq!(p.license.as_deref(), Some("MIT"));
        let p = one("Name: a\nVersion: 1\nLicense: Apache 2.0\n");
        assert_eq!(p.license.as_deref(), Some("Apache-2.0"));
        let p = one(
            "Name: a\nVersion: 1\nLicense: Copyright (c) 2010\n   Permission is hereby granted\n",
        );
        assert_eq!(p.license, None);
    }

    #[test]
    fn metadata_without_name_or_version_is_skipped() {
        let f: BTreeMap<String, Vec<u8>> = [
            ("a.dist-info/METADATA".to_string(), b"Version: 1\n".to_vec()),
            ("b.dist-info/METADATA".to_string(), vec![0xff, 0xfe, 0]),
        ]
        .into();
        assert!(packages(&f).is_empty());
    }
}
