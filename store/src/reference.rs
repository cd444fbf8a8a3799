//! Image references parsed the way Docker parses them
//! (distribution/reference's `ParseNormalizedNamed` + implicit `:latest`).

use std::fmt;

use crate::digest::Digest;

/// The default registry for names without a domain.
pub const DEFAULT_DOMAIN: &str = "docker.io";
const LEGACY_DOMAIN: &str = "index.docker.io";
const OFFICIAL_PREFIX: &str = "library/";
const NAME_TOTAL_MAX: usize = 255;

/// A parsed image reference: `[domain/]path[:tag][@digest]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    domain: String,
    path: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

/// Why a reference was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    #[error("invalid reference format: reference is empty")]
    Empty,
    /// The input does not follow the grammar; it is kept for the caller,
    /// who names it (the message does not, so that it is not said twice).
    #[error("invalid reference format")]
    InvalidFormat(String),
    #[error("invalid reference format: repository name ({0}) must be lowercase")]
    Uppercase(String),
    #[error("invalid reference format: repository name must not be longer than 255 characters")]
    NameTooLong,
    #[error("invalid reference format: tag {0:?} must match [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}")]
    InvalidTag(String),
    /// The digest's message is part of this one, so it is not also given
    /// as the source (a chain printed with `{:#}` would say it twice).
    #[error("invalid reference format: {0}")]
    InvalidDigest(crate::digest::DigestError),
    #[error("invalid repository name ({0}), cannot specify 64-byte hexadecimal strings")]
    HexName(String),
}

/// Parses `s` as Docker does; a reference with neither tag nor digest gets
/// the implicit tag `latest`.
pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
    if s.is_empty() {
        return Err(ReferenceError::Empty);
    }
    let bad = || ReferenceError::InvalidFormat(s.to_string());
    let (rest, digest) = match s.split_once('@') {
        Some((r, d)) => (
            r,
            Some(d.parse::<Digest>().map_err(ReferenceError::InvalidDigest)?),
        ),
        None => (s, None),
    };
    // A tag is after the last ':' that comes after the last '/'.
    let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(t) = tag {
        if !valid_tag(t) {
            return Err(ReferenceError::InvalidTag(t.to_string()));
        }
    }
    if name.is_empty() {
        return Err(bad());
    }
    if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ReferenceError::HexName(name.to_string()));
    }
    let (domain, path) = split_domain(name);
    if !valid_domain(&domain) {
        return Err(bad());
    }
    if path.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(ReferenceError::Uppercase(path));
    }
    if !path.split('/').all(valid_path_component) {
        return Err(bad());
    }
    if domain.len() + 1 + path.len() > NAME_TOTAL_MAX {
        return Err(ReferenceError::NameTooLong);
    }
    let tag = match (tag, &digest) {
        (Some(t), _) => Some(t.to_string()),
        (None, None) => Some("latest".to_string()),
        (None, Some(_)) => None,
    };
    Ok(Reference {
        domain,
        path,
        tag,
        digest,
    })
}

/// A first component is a registry only if it looks like a host name
/// (`.` or `:` in it, or `localhost`); anything else is the first path
/// component on Docker Hub, so `UPPER/x` is a path that must be lowercase
/// (as Docker 20.10's daemon says), not a registry called `UPPER`.
fn split_domain(name: &str) -> (String, String) {
    let (mut domain, mut path) = match name.split_once('/') {
        Some((d, p)) if d.contains(['.', ':']) || d == "localhost" => {
            (d.to_string(), p.to_string())
        }
        _ => (DEFAULT_DOMAIN.to_string(), name.to_string()),
    };
    if domain == LEGACY_DOMAIN {
        domain = DEFAULT_DOMAIN.to_string();
    }
    if domain == DEFAULT_DOMAIN && !path.contains('/') {
        path = format!("{OFFICIAL_PREFIX}{path}");
    }
    (domain, path)
}

fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || c == b'-')
}

fn valid_domain(d: &str) -> bool {
    // `host[:port]`; an IPv6 host is bracketed and has colons of its own.
    let (host, port) = match d.find(']') {
        Some(i) if d.starts_with('[') => match &d[i + 1..] {
            "" => (d, None),
            rest => match rest.strip_prefix(':') {
                Some(p) => (&d[..=i], Some(p)),
                None => return false,
            },
        },
        _ => match d.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (d, None),
        },
    };
    if let Some(p) = port {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    if host.starts_with('[') && host.ends_with(']') {
        let inner = &host[1..host.len() - 1];
        return !inner.is_empty() && inner.bytes().all(|b| b.is_ascii_hexdigit() || b == b':');
    }
    !host.is_empty()
        && host.split('.').all(|c| {
            let b = c.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|&x| x.is_ascii_alphanumeric() || x == b'-')
        })
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`
fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__", or one or more "-".
        let start = i;
        while i < b.len() && !is_alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

impl Reference {
    /// The familiar name without tag/digest: `busybox`, `user/app`,
    /// `localhost:5000/a/b` (what `docker images` shows as REPOSITORY).
    pub fn repository(&self) -> String {
        if self.domain == DEFAULT_DOMAIN {
            self.path
                .strip_prefix(OFFICIAL_PREFIX)
                .unwrap_or(&self.path)
                .to_string()
        } else {
            format!("{}/{}", self.domain, self.path)
        }
    }

    /// The short form Docker shows: `flask_app:0.1`, `name@sha256:...`.
    pub fn familiar(&self) -> String {
        let mut s = self.repository();
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(d.as_str());
        }
        s
    }

    /// The fully qualified name: `docker.io/library/busybox:latest`.
    pub fn full(&self) -> String {
        let mut s = format!("{}/{}", self.domain, self.path);
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(d.as_str());
        }
        s
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }
    /// The path inside the registry (`library/busybox`).
    pub fn path(&self) -> &str {
        &self.path
    }
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// The same repository with neither tag nor digest: what a manifest
    /// pushed by its digest is addressed as.
    pub fn repository_only(&self) -> Reference {
        Reference {
            domain: self.domain.clone(),
            path: self.path.clone(),
            tag: None,
            digest: None,
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.familiar())
    }
}

impl std::str::FromStr for Reference {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn familiar_forms() {
        let cases = [
            (
                "flask_app:0.1",
                "flask_app:0.1",
                "docker.io/library/flask_app:0.1",
            ),
            (
                "busybox",
                "busybox:latest",
                "docker.io/library/busybox:latest",
            ),
            (
                "docker.io/library/busybox",
                "busybox:latest",
                "docker.io/library/busybox:latest",
            ),
            (
                "index.docker.io/user/app:v1",
                "user/app:v1",
                "docker.io/user/app:v1",
            ),
            (
                "localhost:5000/a/b:t",
                "localhost:5000/a/b:t",
                "localhost:5000/a/b:t",
            ),
            ("localhost/x", "localhost/x:latest", "localhost/x:latest"),
            (
                "quay.io/org/img-name_x.y__z:1.0-rc",
                "quay.io/org/img-name_x.y__z:1.0-rc",
                "quay.io/org/img-name_x.y__z:1.0-rc",
            ),
            ("[::1]:5000/a:t", "[::1]:5000/a:t", "[::1]:5000/a:t"),
        ];
        for (input, fam, full) in cases {
            let r = parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.familiar(), fam, "{input}");
            assert_eq!(r.full(), full, "{input}");
        }
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let r = parse(&format!("busybox@{d}")).unwrap();
        assert_eq!(r.tag(), None);
        assert_eq!(r.digest().unwrap().as_str(), d);
        assert_eq!(r.familiar(), format!("busybox@{d}"));
        assert_eq!(r.repository(), "busybox");
    }

    /// (input, Ok(full name) or Err(the message)) in the grammar of
    /// distribution/reference, normalized as Docker does.
    #[test]
    fn grammar_table() {
        let d = "sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";
        let long_ok = format!("{}a:t", "a/".repeat(122));
        let long_bad = format!("{}a:t", "a/".repeat(123));
        let cases: Vec<(String, Result<String, &str>)> = vec![
            ("test_com".into(), Ok("docker.io/library/test_com:latest".into())),
            ("test.com:tag".into(), Ok("docker.io/library/test.com:tag".into())),
            ("test.com:5000".into(), Ok("docker.io/library/test.com:5000".into())),
            ("test.com/repo:tag".into(), Ok("test.com/repo:tag".into())),
            ("test:5000/repo".into(), Ok("test:5000/repo:latest".into())),
            (format!("test:5000/repo:tag@{d}"), Ok(format!("test:5000/repo:tag@{d}"))),
            ("lowercase:Uppercase".into(), Ok("docker.io/library/lowercase:Uppercase".into())),
            ("sub-dom1.foo.com/bar/baz/quux:some-long-tag".into(),
                Ok("sub-dom1.foo.com/bar/baz/quux:some-long-tag".into())),
            ("b.gcr.io/test.example.com/my-app:test.example.com".into(),
                Ok("b.gcr.io/test.example.com/my-app:test.example.com".into())),
            ("xn--n3h.com/myimage:xn--n3h.com".into(), Ok("xn--n3h.com/myimage:xn--n3h.com".into())),
            ("foo/foo_bar.com:8080".into(), Ok("docker.io/foo/foo_bar.com:8080".into())),
            ("192.168.1.1:5000/repo:5050".into(), Ok("192.168.1.1:5000/repo:5050".into())),
            ("[2001:db8::1]:5000/repo".into(), Ok("[2001:db8::1]:5000/repo:latest".into())),
            ("[2001:db8::1]/repo".into(), Ok("[2001:db8::1]/repo:latest".into())),
            ("Foo.example/x".into(), Ok("Foo.example/x:latest".into())),
            ("a-b--c/d__e.f_g".into(), Ok("docker.io/a-b--c/d__e.f_g:latest".into())),
            ("x:_T.-1".into(), Ok("docker.io/library/x:_T.-1".into())),
            (format!("x:{}", "t".repeat(128)), Ok(format!("docker.io/library/x:{}", "t".repeat(128)))),
            (long_ok.clone(), Ok(format!("docker.io/{long_ok}"))),
            ("".into(), Err("invalid reference format: reference is empty")),
            (":justtag".into(), Err("invalid reference format")),
            (format!("@{d}"), Err("invalid reference format")),
            ("aa/asdf$$^/aa".into(), Err("invalid reference format")),
            ("[2001:db8::1]:tag".into(), Err("invalid reference format")),
            ("[fe80::1%eth0]:5000/repo".into(), Err("invalid reference format")),
            ("a___b".into(), Err("invalid reference format")),
            ("a_-b".into(), Err("invalid reference format")),
            ("a./b".into(), Err("invalid reference format")),
            ("-x.com/a".into(), Err("invalid reference format")),
            ("x.com:/a".into(), Err("invalid reference format")),
            ("x.com:50a/a".into(), Err("invalid reference format")),
            ("a/b/".into(), Err("invalid reference format")),
            ("a b".into(), Err("invalid reference format")),
            ("Uppercase:tag".into(),
                Err("invalid reference format: repository name (library/Uppercase) must be lowercase")),
            ("UPPER/x".into(),
                Err("invalid reference format: repository name (UPPER/x) must be lowercase")),
            ("Upper/lower:tag".into(),
                Err("invalid reference format: repository name (Upper/lower) must be lowercase")),
            ("upper/X".into(),
                Err("invalid reference format: repository name (upper/X) must be lowercase")),
            ("localhost/Foo".into(),
                Err("invalid reference format: repository name (Foo) must be lowercase")),
            ("test:5000/Uppercase/lowercase:tag".into(),
                Err("invalid reference format: repository name (Uppercase/lowercase) must be lowercase")),
            (long_bad, Err("invalid reference format: repository name must not be longer than 255 characters")),
            (format!("x:{}", "t".repeat(129)), Err("tag")),
            ("x:.t".into(), Err("tag \".t\" must match")),
            ("repo@sha256:ffff".into(), Err("invalid digest")),
            ("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".into(),
                Err("cannot specify 64-byte hexadecimal strings")),
        ];
        for (input, want) in cases {
            match (parse(&input), want) {
                (Ok(r), Ok(full)) => assert_eq!(r.full(), full, "{input}"),
                (Err(e), Err(msg)) => {
                    assert!(e.to_string().contains(msg), "{input}: {e} lacks {msg:?}")
                }
                (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn malformed() {
        assert_eq!(parse(""), Err(ReferenceError::Empty));
        assert!(matches!(
            parse("Flask:1"),
            Err(ReferenceError::Uppercase(_))
        ));
        assert!(matches!(
            parse("a:b:c"),
            Err(ReferenceError::InvalidFormat(_))
        ));
        assert!(matches!(parse("a:"), Err(ReferenceError::InvalidTag(_))));
        assert!(matches!(parse("a:-x"), Err(ReferenceError::InvalidTag(_))));
        assert!(matches!(
            parse("a@sha256:../../x"),
            Err(ReferenceError::InvalidDigest(_))
        ));
        assert!(matches!(
            parse("a//b"),
            Err(ReferenceError::InvalidFormat(_))
        ));
        assert!(matches!(parse("-a"), Err(ReferenceError::InvalidFormat(_))));
        assert!(matches!(
            parse("a..b"),
            Err(ReferenceError::InvalidFormat(_))
        ));
        assert!(matches!(
            parse("a b"),
            Err(ReferenceError::InvalidFormat(_))
        ));
        assert!(matches!(
            parse(&"a".repeat(300)),
            Err(ReferenceError::NameTooLong)
        ));
        assert!(matches!(
            parse(&"a".repeat(64)),
            Err(ReferenceError::HexName(_))
        ));
        assert!(parse(&format!("a:{}", "t".repeat(129))).is_err());
    }
}
