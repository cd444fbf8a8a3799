//! Parse errors and warnings, and their rendering for humans.

use serde::Serialize;

use crate::Span;

/// A parse error: what went wrong, where, and (when known) how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{}:{}: {}{}", span.line, span.column, message, hint.as_ref().map(|h| format!(" ({h})")).unwrap_or_default())]
pub struct ParseError {
    pub message: String,
    pub span: Span,
    pub hint: Option<String>,
}

/// Something BuildKit accepts but warns about (for example an empty line
/// inside a continuation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warning {
    pub message: String,
    pub span: Span,
}

impl ParseError {
    pub(crate) fn new(message: impl Into<String>, span: Span) -> Self {
        ParseError {
            message: message.into(),
            span,
            hint: None,
        }
    }

    pub(crate) fn with_hint(mut self, hint: Option<String>) -> Self {
        self.hint = hint;
        self
    }

    /// Renders the error for a terminal: `file:line:column: message`, the
    /// offending source line(s) with a caret under the token at the error's
    /// column, and the hint when there is one.
    ///
    /// ```text
    /// Dockerfile:3:1: unknown instruction: RUNN
    ///   3 | RUNN x
    ///     | ^^^^
    ///   hint: did you mean RUN?
    /// ```
    pub fn render(&self, src: &str, file_name: &str) -> String {
        let src = src.strip_prefix('\u{feff}').unwrap_or(src);
        let mut out = format!(
            "{}:{}:{}: {}\n",
            file_name, self.span.line, self.span.column, self.message
        );
        let lines: Vec<&str> = src.lines().collect();
        let first = self.span.line.max(1);
        // Show at most 5 lines of a multi-line instruction: one screen.
        let last = self.span.end_line.clamp(first, first + 4);
        let width = last.to_string().len();
        for n in first..=last {
            let Some(text) = lines.get(n - 1) else { break };
            let text = shown(text.trim_end_matches('\r'));
            out.push_str(&format!("  {n:>width$} | {text}\n"));
            if n == first {
                out.push_str(&format!(
                    "  {:>width$} | {}\n",
                    "",
                    caret_line(&text, self.span.column)
                ));
            }
        }
        if let Some(h) = &self.hint {
            out.push_str(&format!("  hint: {h}\n"));
        }
        out
    }
}

/// The most of one source line an error shows: a longer line (a generated
/// `LABEL`, a line over BuildKit's limit) is cut so the error stays one screen.
const SHOWN_CHARS: usize = 200;

fn shown(text: &str) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(SHOWN_CHARS) {
        Some((cut, _)) => format!("{}...", &text[..cut]).into(),
        None => text.into(),
    }
}

/// Spaces (tabs kept, so the caret lines up) up to `column`, then one `^`
/// per character of the token that starts there.
fn caret_line(text: &str, column: usize) -> String {
    let chars: Vec<char> = text.chars().collect();
    let col = column.max(1).min(chars.len() + 1) - 1;
    let mut s: String = chars[..col]
        .iter()
        .map(|&c| if c == '\t' { '\t' } else { ' ' })
        .collect();
    let len = chars[col..]
        .iter()
        .take_while(|c| !c.is_whitespace())
        .count()
        .max(1);
    s.push_str(&"^".repeat(len));
    s
}

/// The closest candidate to `value` (case-insensitively), if it is close
/// enough to be a plausible typo.
pub(crate) fn suggest<'a>(value: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let v = value.to_lowercase();
    let mut best: Option<(usize, &str)> = None;
    for &c in candidates {
        let d = levenshtein(&v, &c.to_lowercase());
        if best.map_or(true, |(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    let (d, c) = best?;
    let limit = match v.chars().count() {
        0..=2 => 0,
        3..=4 => 1,
        _ => 2,
    };
    (d > 0 && d <= limit).then_some(c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        cur[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_shape() {
        let e = ParseError::new(
            "unknown instruction: RUNN",
            Span {
                line: 3,
                column: 1,
                end_line: 3,
            },
        )
        .with_hint(Some("did you mean RUN?".into()));
        let src = "FROM a\n\nRUNN x\n";
        assert_eq!(
            e.render(src, "Dockerfile"),
            "Dockerfile:3:1: unknown instruction: RUNN\n  3 | RUNN x\n    | ^^^^\n  hint: did you mean RUN?\n"
        );
        assert_eq!(
            e.to_string(),
            "3:1: unknown instruction: RUNN (did you mean RUN?)"
        );
    }

    #[test]
    fn render_out_of_range_does_not_panic() {
        let e = ParseError::new(
            "x",
            Span {
                line: 99,
                column: 500,
                end_line: 120,
            },
        );
        assert_eq!(e.render("a\n", "D"), "D:99:500: x\n");
        let e = ParseError::new(
            "x",
            Span {
                line: 1,
                column: 500,
                end_line: 1,
            },
        );
        assert!(e.render("ab\n", "D").contains("  1 | ab\n    |   ^\n"));
    }

    #[test]
    fn suggestions() {
        assert_eq!(suggest("RUNN", &["run", "cmd"]), Some("run"));
        assert_eq!(suggest("cpy", &["copy", "cmd"]), Some("copy"));
        assert_eq!(suggest("zzzzzz", &["run", "cmd"]), None);
        assert_eq!(suggest("x", &["run"]), None);
    }
}
