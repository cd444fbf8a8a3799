//! Package URLs (purl) for the packages found: `pkg:deb/debian/libc6@...`,
//! `pkg:pypi/flask@3.0.3`, `pkg:apk/alpine/musl@...`, in purl's canonical
//! form (percent-encoded, qualifiers sorted by key).

use crate::packages::{Ecosystem, Package};

/// The purl of a package.
pub fn purl(p: &Package) -> String {
    let (namespace, name) = match p.ecosystem {
        Ecosystem::Deb => (
            Some(p.distro.as_ref().map_or("debian", |d| d.id.as_str())),
            p.name.clone(),
        ),
        Ecosystem::Apk => (
            Some(p.distro.as_ref().map_or("alpine", |d| d.id.as_str())),
            p.name.clone(),
        ),
        // The pypi type's name rule: lower case, `_` as `-`.
        Ecosystem::Python => (None, p.name.to_ascii_lowercase().replace('_', "-")),
    };
    let mut out = format!("pkg:{}/", p.ecosystem.purl_type());
    if let Some(ns) = namespace {
        out.push_str(&encode(ns));
        out.push('/');
    }
    out.push_str(&encode(&name));
    out.push('@');
    out.push_str(&encode(&p.version));
    let mut q: Vec<(&str, String)> = Vec::new();
    if p.ecosystem != Ecosystem::Python {
        if let Some(a) = &p.arch {
            q.push(("arch", a.clone()));
        }
        if let Some(d) = &p.distro {
            q.push(("distro", d.qualifier()));
        }
        if let Some(s) = &p.source {
            q.push(("upstream", s.clone()));
        }
    }
    q.sort();
    for (i, (k, v)) in q.iter().enumerate() {
        out.push(if i == 0 { '?' } else { '&' });
        out.push_str(k);
        out.push('=');
        out.push_str(&encode(v));
    }
    out
}

/// Percent-encodes everything but purl's unreserved characters.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packages::Distro;

    fn pkg(e: Ecosystem, name: &str, version: &str) -> Package {
        Package {
            ecosystem: e,
            name: name.into(),
            version: version.into(),
            arch: None,
            license: None,
            supplier: None,
            homepage: None,
            source: None,
            found_in: String::new(),
            distro: None,
        }
    }

    #[test]
    fn deb_with_epoch_plus_and_qualifiers() {
        let mut p = pkg(Ecosystem::Deb, "libc6", "1:2.36-9+deb12u4");
        p.arch = Some("amd64".into());
        p.source = Some("glibc".into());
        p.distro = Some(Distro {
            id: "debian".into(),
            version_id: Some("12".into()),
        });
        assert_eq!(
            purl(&p),
            "pkg:deb/debian/libc6@1%3A2.36-9%2Bdeb12u4?arch=amd64&distro=debian-12&upstream=glibc"
        );
    }

    #[test]
    fn pypi_names_are_normalised_and_apk_has_its_namespace() {
        assert_eq!(
            purl(&pkg(Ecosystem::Python, "Typing_Extensions", "4.12.2")),
            "pkg:pypi/typing-extensions@4.12.2"
        );
        let mut a = pkg(Ecosystem::Apk, "musl", "1.2.4-r2");
        a.arch = Some("x86_64".into());
        assert_eq!(purl(&a), "pkg:apk/alpine/musl@1.2.4-r2?arch=x86_64");
    }
}
