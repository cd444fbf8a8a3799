//! `.dockerignore` files, matched with the semantics of moby's
//! `patternmatcher` (what BuildKit and `docker build` use):
//!
//! - `*` matches any run of characters except `/`, `?` one character
//!   except `/`, `[...]` a character class, `\` escapes the next character;
//! - `**` matches any number of directories (including none); a leading
//!   `**/` makes a suffix match, a trailing `/**` a prefix match;
//! - `!pattern` re-includes what earlier patterns excluded; the last
//!   matching pattern wins;
//! - a path is excluded when one of its parent directories is;
//! - patterns are cleaned like Go's `filepath.Clean` and made relative
//!   (a leading `/` is dropped); lines starting with `#` are comments.
//!
//! The translation of a pattern to a regular expression is written here,
//! as moby does it; only the final expression is run by the `regex` crate.

use regex::Regex;

/// An invalid pattern (malformed `[...]` class, trailing `\`, a lone `!`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PatternError {
    pub message: String,
    pub pattern: String,
}

/// Reads a `.dockerignore` file into cleaned patterns, as BuildKit's
/// `ignorefile.ReadAll`: a BOM is dropped, lines starting with `#` are
/// comments, blank lines are skipped, whitespace around a pattern (and
/// after a leading `!`) is trimmed, patterns are cleaned and a leading `/`
/// removed.
pub fn parse(text: &str) -> Vec<String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let mut pattern = line.trim();
        if pattern.is_empty() {
            continue;
        }
        let invert = pattern.starts_with('!');
        if invert {
            pattern = pattern[1..].trim();
        }
        let mut p = String::new();
        if !pattern.is_empty() {
            p = clean(pattern);
            if p.len() > 1 && p.starts_with('/') {
                p.remove(0);
            }
        }
        out.push(if invert { format!("!{p}") } else { p });
    }
    out
}

/// Go's `path.Clean`: the shortest equivalent path, lexically.
pub fn clean(p: &str) -> String {
    if p.is_empty() {
        return ".".into();
    }
    let rooted = p.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => match parts.last() {
                Some(&last) if last != ".." => {
                    parts.pop();
                }
                _ if rooted => {}
                _ => parts.push(".."),
            },
            s => parts.push(s),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

#[derive(Debug, Clone)]
enum Kind {
    Exact,
    Prefix,
    Suffix,
    Regex(Regex),
}

#[derive(Debug, Clone)]
struct Pattern {
    cleaned: String,
    exclusion: bool,
    kind: Kind,
}

/// A compiled list of `.dockerignore` patterns.
#[derive(Debug, Clone, Default)]
pub struct PatternMatcher {
    patterns: Vec<Pattern>,
    exclusions: bool,
}

impl PatternMatcher {
    /// Compiles patterns (as returned by [`parse`]; they are trimmed and
    /// cleaned again, as moby does).
    pub fn new(patterns: &[String]) -> Result<Self, PatternError> {
        let mut pm = PatternMatcher::default();
        for p in patterns {
            let p = p.trim();
            if p.is_empty() {
                continue;
            }
            let mut p = clean(p);
            let mut exclusion = false;
            if let Some(rest) = p.strip_prefix('!') {
                if rest.is_empty() {
                    return Err(PatternError {
                        message: "illegal exclusion pattern: \"!\"".into(),
                        pattern: p.clone(),
                    });
                }
                exclusion = true;
                p = rest.to_string();
                pm.exclusions = true;
            }
            validate(&p).map_err(|m| PatternError {
                message: m.into(),
                pattern: p.clone(),
            })?;
            let kind = compile(&p).map_err(|m| PatternError {
                message: m,
                pattern: p.clone(),
            })?;
            pm.patterns.push(Pattern {
                cleaned: p,
                exclusion,
                kind,
            });
        }
        Ok(pm)
    }

    /// Whether `rel_path` (relative to the context root, `/`-separated) is
    /// excluded: the last pattern that matches it or one of its parent
    /// directories decides.
    pub fn matches(&self, rel_path: &str) -> bool {
        let mut matched = false;
        let parent = match rel_path.rfind('/') {
            Some(i) => clean(&rel_path[..i]),
            None => ".".to_string(),
        };
        let parent_dirs: Vec<&str> = parent.split('/').collect();
        for p in &self.patterns {
            // An inclusion cannot change an already-excluded path, and an
            // exclusion only matters for an excluded path.
            if p.exclusion != matched {
                continue;
            }
            let mut m = p.matches(rel_path);
            if !m && parent != "." {
                for i in 1..=parent_dirs.len() {
                    if p.matches(&parent_dirs[..i].join("/")) {
                        m = true;
                        break;
                    }
                }
            }
            if m {
                matched = !p.exclusion;
            }
        }
        matched
    }

    /// Whether any pattern is an exception (`!`). Then a directory that is
    /// excluded may still contain included files, so a walker cannot skip
    /// excluded directories wholesale.
    pub fn has_exclusions(&self) -> bool {
        self.exclusions
    }
}

impl Pattern {
    fn matches(&self, path: &str) -> bool {
        match &self.kind {
            Kind::Exact => path == self.cleaned,
            Kind::Prefix => path.starts_with(&self.cleaned[..self.cleaned.len() - 2]),
            Kind::Suffix => {
                let suffix = &self.cleaned[2..];
                path.ends_with(suffix) || suffix.strip_prefix('/').is_some_and(|s| path == s)
            }
            Kind::Regex(re) => re.is_match(path),
        }
    }
}

/// The checks Go's `filepath.Match` makes on a pattern: classes closed and
/// well-formed, no trailing escape.
fn validate(p: &str) -> Result<(), &'static str> {
    const BAD: &str = "syntax error in pattern";
    let c: Vec<char> = p.chars().collect();
    let n = c.len();
    let get_esc = |i: &mut usize| -> Result<char, &'static str> {
        if *i >= n || c[*i] == '-' || c[*i] == ']' {
            return Err(BAD);
        }
        if c[*i] == '\\' {
            *i += 1;
            if *i >= n {
                return Err(BAD);
            }
        }
        let ch = c[*i];
        *i += 1;
        if *i >= n {
            return Err(BAD);
        }
        Ok(ch)
    };
    let mut i = 0;
    while i < n {
        match c[i] {
            '\\' => {
                if i + 1 >= n {
                    return Err(BAD);
                }
                i += 2;
            }
            '[' => {
                i += 1;
                if i < n && c[i] == '^' {
                    i += 1;
                }
                let mut nrange = 0;
                loop {
                    if i < n && c[i] == ']' && nrange > 0 {
                        i += 1;
                        break;
                    }
                    let lo = get_esc(&mut i)?;
                    if i < n && c[i] == '-' {
                        i += 1;
                        let hi = get_esc(&mut i)?;
                        if hi < lo {
                            return Err(BAD);
                        }
                    }
                    nrange += 1;
                }
            }
            _ => i += 1,
        }
    }
    Ok(())
}

fn compile(p: &str) -> Result<Kind, String> {
    let c: Vec<char> = p.chars().collect();
    let mut re = String::from("^");
    let mut kind = 0u8; // 0 exact, 1 prefix, 2 suffix, 3 regex
    let mut i = 0;
    let mut idx = 0;
    while i < c.len() {
        let ch = c[i];
        i += 1;
        match ch {
            '*' if c.get(i) == Some(&'*') => {
                i += 1;
                if c.get(i) == Some(&'/') {
                    i += 1;
                }
                if i >= c.len() {
                    if kind == 0 {
                        kind = 1;
                    } else {
                        re.push_str(".*");
                        kind = 3;
                    }
                } else {
                    re.push_str("(.*/)?");
                    kind = 3;
                }
                if idx == 0 {
                    kind = 2;
                }
            }
            '*' => {
                re.push_str("[^/]*");
                kind = 3;
            }
            '?' => {
                re.push_str("[^/]");
                kind = 3;
            }
            '.' | '+' | '(' | ')' | '|' | '{' | '}' | '$' => {
                re.push('\\');
                re.push(ch);
            }
            '\\' => {
                if let Some(&next) = c.get(i) {
                    i += 1;
                    re.push('\\');
                    re.push(next);
                    kind = 3;
                } else {
                    re.push_str("\\\\");
                }
            }
            '[' | ']' => {
                re.push(ch);
                kind = 3;
            }
            _ => re.push(ch),
        }
        idx += 1;
    }
    Ok(match kind {
        0 => Kind::Exact,
        1 => Kind::Prefix,
        2 => Kind::Suffix,
        _ => {
            re.push('$');
            Kind::Regex(Regex::new(&re).map_err(|e| format!("invalid pattern {p:?}: {e}"))?)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pm(pats: &[&str]) -> PatternMatcher {
        PatternMatcher::new(&pats.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn clean_like_go() {
        assert_eq!(clean("a//b/./c/.."), "a/b");
        assert_eq!(clean("/../a"), "/a");
        assert_eq!(clean("../../a"), "../../a");
        assert_eq!(clean("a/.."), ".");
        assert_eq!(clean(""), ".");
    }

    #[test]
    fn read_all() {
        let text = "\u{feff}# comment\n  \n/abs/path/\n! keep \n./a/../b\n #notcomment\n";
        assert_eq!(parse(text), ["abs/path", "!keep", "b", "#notcomment"]);
    }

    #[test]
    fn matching() {
        let m = pm(&["*.md", "!README.md", "build/**", "**/*.pyc", "docs"]);
        assert!(m.matches("a.md"));
        assert!(!m.matches("README.md"));
        assert!(!m.matches("sub/a.md"), "* does not cross /");
        assert!(m.matches("build/x/y"));
        assert!(!m.matches("build"), "build/** is a prefix match on build/");
        assert!(m.matches("x/y/z.pyc"));
        assert!(m.matches("z.pyc"));
        assert!(m.matches("docs/deep/file"), "parent excluded");
        assert!(m.has_exclusions());
    }

    #[test]
    fn last_match_wins_and_classes() {
        let m = pm(&["!a", "a"]);
        assert!(m.matches("a"));
        let m = pm(&["a", "!a"]);
        assert!(!m.matches("a"));
        let m = pm(&["file[0-9].txt", "?.log"]);
        assert!(m.matches("file3.txt"));
        assert!(!m.matches("filex.txt"));
        assert!(m.matches("x.log"));
        assert!(!m.matches("xy.log"));
    }

    #[test]
    fn bad_patterns() {
        for p in ["[", "a[", "[]", "[z-a]", "a\\", "!"] {
            assert!(PatternMatcher::new(&[p.to_string()]).is_err(), "{p}");
        }
    }
}
