//! Licence names as package databases write them (Debian's DEP-5 short
//! names, Python's free-text `License` field and trove classifiers, apk's
//! expressions) turned into SPDX licence expressions. A name with no SPDX
//! identifier becomes `LicenseRef-<name>`, which the SPDX document then
//! declares; nothing is guessed from licence prose.

/// Common SPDX identifiers, for case normalisation of names that are
/// already identifiers (`mit` → `MIT`).
const KNOWN: &[&str] = &[
    "0BSD",
    "AGPL-3.0-only",
    "AGPL-3.0-or-later",
    "Apache-1.1",
    "Apache-2.0",
    "Artistic-1.0",
    "Artistic-1.0-Perl",
    "Artistic-2.0",
    "BSD-2-Clause",
    "BSD-3-Clause",
    "BSD-4-Clause",
    "BSL-1.0",
    "CC-BY-4.0",
    "CC-BY-SA-4.0",
    "CC0-1.0",
    "curl",
    "EPL-2.0",
    "GFDL-1.2-or-later",
    "GFDL-1.3-or-later",
    "GPL-1.0-or-later",
    "GPL-2.0-only",
    "GPL-2.0-or-later",
    "GPL-3.0-only",
    "GPL-3.0-or-later",
    "HPND",
    "ISC",
    "LGPL-2.0-only",
    "LGPL-2.0-or-later",
    "LGPL-2.1-only",
    "LGPL-2.1-or-later",
    "LGPL-3.0-only",
    "LGPL-3.0-or-later",
    "MIT",
    "MIT-0",
    "MPL-1.1",
    "MPL-2.0",
    "OpenSSL",
    "PSF-2.0",
    "Python-2.0",
    "Unicode-DFS-2016",
    "Unlicense",
    "X11",
    "Zlib",
    "ZPL-2.1",
];

/// Names that are not identifiers but mean exactly one (compared after
/// [`squash`]: lower case, no spaces, dashes or dots).
const ALIASES: &[(&str, &str)] = &[
    ("expat", "MIT"),
    ("mitlicense", "MIT"),
    ("apache20", "Apache-2.0"),
    ("apachelicense20", "Apache-2.0"),
    ("apachelicenseversion20", "Apache-2.0"),
    ("asl20", "Apache-2.0"),
    ("bsd2clause", "BSD-2-Clause"),
    ("bsd3clause", "BSD-3-Clause"),
    ("newbsd", "BSD-3-Clause"),
    ("simplifiedbsd", "BSD-2-Clause"),
    ("psf", "PSF-2.0"),
    ("psf2", "PSF-2.0"),
    ("pythonsoftwarefoundationlicense", "PSF-2.0"),
    ("mozillapubliclicense20mpl20", "MPL-2.0"),
    ("mpl2", "MPL-2.0"),
    ("isclicenseiscl", "ISC"),
    ("artistic", "Artistic-1.0"),
    ("zlibzlibpnglicense", "Zlib"),
    ("gnugeneralpubliclicensev2gplv2", "GPL-2.0-only"),
    ("gnugeneralpubliclicensev3gplv3", "GPL-3.0-only"),
    ("gnugeneralpubliclicensev2orlatergplv2+", "GPL-2.0-or-later"),
    ("gnugeneralpubliclicensev3orlatergplv3+", "GPL-3.0-or-later"),
    ("gnulessergeneralpubliclicensev2lgplv2", "LGPL-2.0-only"),
    ("gnulessergeneralpubliclicensev3lgplv3", "LGPL-3.0-only"),
    (
        "gnulessergeneralpubliclicensev2orlaterlgplv2+",
        "LGPL-2.0-or-later",
    ),
    (
        "gnulessergeneralpubliclicensev3orlaterlgplv3+",
        "LGPL-3.0-or-later",
    ),
    ("theunlicenseunlicense", "Unlicense"),
    ("boostsoftwarelicense10bsl10", "BSL-1.0"),
];

fn squash(s: &str) -> String {
    s.chars()
        .filter(|c| !matches!(c, ' ' | '-' | '.' | '_' | '(' | ')'))
        .flat_map(char::to_lowercase)
        .collect()
}

/// One licence name (not an expression) as an SPDX id or `LicenseRef-`.
pub fn from_name(name: &str) -> String {
    let name = name.trim();
    if let Some(k) = KNOWN.iter().find(|k| k.eq_ignore_ascii_case(name)) {
        return k.to_string();
    }
    if let Some(id) = gnu_short_name(name) {
        return id;
    }
    let s = squash(name);
    if let Some((_, id)) = ALIASES.iter().find(|(a, _)| *a == s) {
        return id.to_string();
    }
    license_ref(name)
}

/// `GPL-2`, `GPL-2+`, `LGPL-2.1+`, `AGPL-3` (Debian's short names).
fn gnu_short_name(name: &str) -> Option<String> {
    let (family, rest) = ["AGPL-", "LGPL-", "GPL-", "GFDL-"]
        .iter()
        .find_map(|f| name.strip_prefix(f).map(|r| (&f[..f.len() - 1], r)))?;
    let (ver, later) = match rest.strip_suffix('+') {
        Some(v) => (v, true),
        None => (rest, false),
    };
    if ver.is_empty() || !ver.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return None;
    }
    let ver = if ver.contains('.') {
        ver.to_string()
    } else {
        format!("{ver}.0")
    };
    let suffix = if later { "or-later" } else { "only" };
    Some(format!("{family}-{ver}-{suffix}"))
}

/// `LicenseRef-` + the name with every character SPDX does not allow in an
/// id replaced by `-`.
pub fn license_ref(name: &str) -> String {
    let body: String = name
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let body = body.trim_matches('-');
    if body.is_empty() {
        "NOASSERTION".to_string()
    } else {
        format!("LicenseRef-{body}")
    }
}

/// A DEP-5 `License:` value (`GPL-2+ or Artistic`, `BSD-3-clause and Expat`):
/// each name mapped, the operators kept.
pub fn from_debian(value: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut name: Vec<&str> = Vec::new();
    let flush = |name: &mut Vec<&str>, out: &mut Vec<String>| {
        if !name.is_empty() {
            out.push(from_name(&name.join(" ")));
            name.clear();
        }
    };
    for tok in value.split_whitespace() {
        let tok = tok.trim_end_matches(',');
        match tok.to_ascii_lowercase().as_str() {
            "or" | "and" => {
                flush(&mut name, &mut out);
                out.push(tok.to_ascii_uppercase());
            }
            _ => name.push(tok),
        }
    }
    flush(&mut name, &mut out);
    out.join(" ")
}

/// A field that claims to be an SPDX expression (PEP 639, apk): kept when it
/// is one syntactically (ids normalised in case), else the whole value as
/// one `LicenseRef-`.
pub fn from_expression(e: &str) -> String {
    let spaced = e.replace('(', " ( ").replace(')', " ) ");
    let mut out: Vec<String> = Vec::new();
    // Operands and operators alternate: `(` and an id where an operand is
    // due, `)` and an operator after one; anything else is not SPDX.
    let mut want_operand = true;
    let mut depth = 0usize;
    for tok in spaced.split_whitespace() {
        let op = tok.to_ascii_uppercase();
        match (tok, want_operand) {
            ("(", true) => depth += 1,
            (")", false) if depth > 0 => depth -= 1,
            (_, false) if matches!(op.as_str(), "AND" | "OR" | "WITH") => {
                want_operand = true;
                out.push(op);
                continue;
            }
            // An exception id (`Classpath-exception-2.0`) is not a licence.
            (t, true) if is_id(t) && out.last().is_some_and(|l| l == "WITH") => {
                want_operand = false;
                out.push(t.to_string());
                continue;
            }
            (t, true) if is_id(t) => {
                want_operand = false;
                out.push(from_name(t));
                continue;
            }
            _ => return from_name(e),
        }
        out.push(tok.to_string());
    }
    if out.is_empty() {
        return "NOASSERTION".to_string();
    }
    if want_operand || depth != 0 {
        return from_name(e);
    }
    out.join(" ").replace("( ", "(").replace(" )", ")")
}

fn is_id(t: &str) -> bool {
    !t.is_empty()
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+' | ':'))
}

/// A trove classifier after `License ::` (`OSI Approved :: MIT License`).
pub fn from_classifier(c: &str) -> String {
    let last = c.rsplit("::").next().unwrap_or(c).trim();
    from_name(last)
}

/// Several expressions that all apply, as one (`A AND (B OR C)`).
pub fn all_of(exprs: &[String]) -> Option<String> {
    let parts: Vec<&String> = exprs.iter().filter(|e| *e != "NOASSERTION").collect();
    match parts.as_slice() {
        [] => None,
        [one] => Some(one.to_string()),
        many => Some(
            many.iter()
                .map(|e| {
                    if e.contains(' ') {
                        format!("({e})")
                    } else {
                        e.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join(" AND "),
        ),
    }
}

/// The `LicenseRef-` ids an expression uses.
pub fn refs(expr: &str) -> impl Iterator<Item = &str> {
    expr.split(|c: char| c.is_whitespace() || c == '(' || c == ')')
        .filter(|t| t.starts_with("LicenseRef-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_short_names() {
        assert_eq!(from_debian("GPL-2+"), "GPL-2.0-or-later");
        assert_eq!(from_debian("GPL-2"), "GPL-2.0-only");
        assert_eq!(from_debian("LGPL-2.1+"), "LGPL-2.1-or-later");
        assert_eq!(
            from_debian("GPL-1+ or Artistic"),
            "GPL-1.0-or-later OR Artistic-1.0"
        );
        assert_eq!(
            from_debian("BSD-3-clause and Expat"),
            "BSD-3-Clause AND MIT"
        );
        assert_eq!(from_debian("public-domain"), "LicenseRef-public-domain");
        assert_eq!(
            from_debian("GPL-2+ with OpenSSL exception"),
            "LicenseRef-GPL-2--with-OpenSSL-exception"
        );
    }

    #[test]
    fn python_names_classifiers_and_expressions() {
        assert_eq!(from_name("Apache 2.0"), "Apache-2.0");
        assert_eq!(from_name("mit"), "MIT");
        assert_eq!(from_name("BSD"), "LicenseRef-BSD");
        assert_eq!(from_classifier("OSI Approved :: MIT License"), "MIT");
        assert_eq!(
            from_classifier("OSI Approved :: Apache Software License"),
            "LicenseRef-Apache-Software-License"
        );
        assert_eq!(
            from_expression("MIT OR (Apache-2.0 AND bsd-3-clause)"),
            "MIT OR (Apache-2.0 AND BSD-3-Clause)"
        );
        assert_eq!(
            from_expression("GPL-2.0-only WITH Classpath-exception-2.0"),
            "GPL-2.0-only WITH Classpath-exception-2.0"
        );
        assert_eq!(
            from_expression("Dual: see file"),
            "LicenseRef-Dual--see-file"
        );
        assert_eq!(from_expression(""), "NOASSERTION");
        assert_eq!(from_expression("MIT OR"), "LicenseRef-MIT-OR");
        assert_eq!(from_expression("(MIT"), "LicenseRef-MIT");
    }

    #[test]
    fn combining_and_refs() {
        let all = all_of(&[
            "MIT".into(),
            "GPL-2.0-only OR MIT".into(),
            "NOASSERTION".into(),
        ])
        .unwrap();
        assert_eq!(all, "MIT AND (GPL-2.0-only OR MIT)");
        assert_eq!(all_of(&[]), None);
        let e = "MIT AND (LicenseRef-a OR LicenseRef-b)";
        assert_eq!(
            refs(e).collect::<Vec<_>>(),
            ["LicenseRef-a", "LicenseRef-b"]
        );
        assert_eq!(license_ref("  "), "NOASSERTION");
    }
}
