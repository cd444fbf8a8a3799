//! The distribution an image is built on, from `/etc/os-release` (or
//! `/usr/lib/os-release`): it names the purl namespace and `distro=`
//! qualifier of deb and apk packages.

use std::collections::BTreeMap;

/// `ID` and `VERSION_ID` of os-release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Distro {
    pub id: String,
    pub version_id: Option<String>,
}

impl Distro {
    /// `debian-12`, as purl's `distro` qualifier is written.
    pub fn qualifier(&self) -> String {
        match &self.version_id {
            Some(v) => format!("{}-{}", self.id, v),
            None => self.id.clone(),
        }
    }
}

pub(crate) fn find(files: &BTreeMap<String, Vec<u8>>) -> Option<Distro> {
    let bytes = files
        .get("etc/os-release")
        .or_else(|| files.get("usr/lib/os-release"))?;
    parse(&super::text(bytes))
}

fn parse(text: &str) -> Option<Distro> {
    let mut id = None;
    let mut version_id = None;
    for line in text.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim().trim_matches(|c| c == '"' || c == '\'').to_string();
        match k.trim() {
            "ID" if !v.is_empty() => id = Some(v),
            "VERSION_ID" if !v.is_empty() => version_id = Some(v),
            _ => {}
        }
    }
    Some(Distro {
        id: id?,
        version_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_and_alpine_and_unversioned() {
        let d =
            parse("PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nVERSION_ID=\"12\"\nID=debian\n")
                .unwrap();
        assert_eq!(d.qualifier(), "debian-12");
        let a = parse("ID=alpine\nVERSION_ID=3.19.1\n").unwrap();
        assert_eq!(a.qualifier(), "alpine-3.19.1");
        let s = parse("ID='debian'\nVERSION_CODENAME=trixie\n").unwrap();
        assert_eq!(s.qualifier(), "debian");
        assert_eq!(parse("NAME=x\n"), None);
    }
}
