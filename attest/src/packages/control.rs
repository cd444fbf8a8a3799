//! The "Key: value" paragraph format shared by dpkg's status file (Debian
//! control syntax) and Python's METADATA (email headers): fields, lines that
//! start with a space or tab continue the field above, a blank line ends
//! a paragraph.

/// One paragraph's fields, in order; a key may repeat (`Classifier`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Paragraph(pub(crate) Vec<(String, String)>);

impl Paragraph {
    /// The first value of `key` (case-insensitive, as both formats are),
    /// trimmed; `None` when absent or empty.
    pub(crate) fn get<'a>(&'a self, key: &'a str) -> Option<&'a str> {
        self.all(key).next()
    }

    /// Every value of `key`, trimmed, empty ones left out.
    pub(crate) fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
    }
}

/// Every paragraph of `text`.
pub(crate) fn paragraphs(text: &str) -> Vec<Paragraph> {
    let mut out = Vec::new();
    let mut cur = Paragraph::default();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !cur.0.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = cur.0.last_mut() {
                v.push('\n');
                v.push_str(line.trim());
            }
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            cur.0.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    if !cur.0.is_empty() {
        out.push(cur);
    }
    out
}

/// The header paragraph only (email format: the body after the first blank
/// line is the description, which may contain anything).
pub(crate) fn headers(text: &str) -> Paragraph {
    let end = text
        .find("\n\n")
        .or_else(|| text.find("\r\n\r\n"))
        .unwrap_or(text.len());
    paragraphs(&text[..end])
        .into_iter()
        .next()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuations_repeats_and_blank_lines() {
        let p = paragraphs(
            "Package: a\nDescription: one\n two\n\n\nPackage: b\nX: 1\nx: 2\nnot a field\n",
        );
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].get("package"), Some("a"));
        assert_eq!(p[0].get("Description"), Some("one\ntwo"));
        assert_eq!(p[1].all("X").collect::<Vec<_>>(), ["1", "2"]);
        assert_eq!(p[1].get("missing"), None);
    }

    #[test]
    fn headers_stop_at_the_body() {
        let h = headers("Name: flask\nVersion: 3.0\n\nLicense: not a header\n");
        assert_eq!(h.get("name"), Some("flask"));
        assert_eq!(h.get("license"), None);
        assert_eq!(headers(""), Paragraph::default());
    }
}
