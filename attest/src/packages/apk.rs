//! Alpine packages: `/lib/apk/db/installed`, one record per package of
//! single-letter fields (`P:` name, `V:` version, `A:` arch, `L:` licence,
//! `o:` origin, `m:` maintainer, `U:` url), records split by blank lines.

use std::collections::BTreeMap;

use super::{text, Distro, Ecosystem, Package};
use crate::license;

const INSTALLED: &str = "lib/apk/db/installed";

pub(super) fn packages(files: &BTreeMap<String, Vec<u8>>, distro: Option<&Distro>) -> Vec<Package> {
    let Some(bytes) = files.get(INSTALLED) else {
        return Vec::new();
    };
    let db = text(bytes);
    let mut out = Vec::new();
    let mut rec: BTreeMap<char, String> = BTreeMap::new();
    for line in db.lines().chain(std::iter::once("")) {
        if line.trim().is_empty() {
            if let Some(p) = package(&rec, distro) {
                out.push(p);
            }
            rec.clear();
            continue;
        }
        let mut chars = line.chars();
        if let (Some(k), Some(':')) = (chars.next(), chars.next()) {
            // The first value of a key wins; file lists (F:, R:) repeat.
            rec.entry(k)
                .or_insert_with(|| chars.as_str().trim().to_string());
        }
    }
    out
}

fn package(rec: &BTreeMap<char, String>, distro: Option<&Distro>) -> Option<Package> {
    let get = |k: char| rec.get(&k).filter(|v| !v.is_empty()).cloned();
    let name = get('P')?;
    Some(Package {
        ecosystem: Ecosystem::Apk,
        version: get('V')?,
        arch: get('A'),
        license: get('L').map(|l| license::from_expression(&l)),
        supplier: get('m'),
        homepage: get('U'),
        source: get('o').filter(|o| *o != name),
        name,
        found_in: INSTALLED.to_string(),
        distro: distro.cloned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_with_origin_and_licence() {
        let db = "C:Q1abc=\nP:musl\nV:1.2.4-r2\nA:x86_64\nL:MIT\no:musl\nm:Natanael Copa <ncopa@alpinelinux.org>\nF:lib\nR:libc.musl-x86_64.so.1\n\nP:busybox-binsh\nV:1.36.1-r15\nA:x86_64\nL:GPL-2.0-only\no:busybox\n\nP:nover\n";
        let f: BTreeMap<String, Vec<u8>> = [(INSTALLED.to_string(), db.as_bytes().to_vec())].into();
        let p = packages(&f, None);
        assert_eq!(p.len(), 2);
        assert_eq!(
            (p[0].name.as_str(), p[0].version.as_str()),
            ("musl", "1.2.4-r2")
        );
        assert_eq!(p[0].source, None);
        assert_eq!(p[1].source.as_deref(), Some("busybox"));
        assert_eq!(p[1].license.as_deref(), Some("GPL-2.0-only"));
    }
}
