//! The line-level Dockerfile parser (BuildKit's `parser.Parse`).

use std::collections::BTreeSet;

use nom::bytes::complete::{tag, take_while};
use nom::character::complete::{digit0, satisfy};
use nom::combinator::{opt, recognize, rest};
use nom::{IResult, Parser};

use crate::error::{suggest, ParseError, Warning};
use crate::line_parsers::{self as lp, LineError};
use crate::shell::{EmptyEnv, Lexer};
use crate::{Directives, Dockerfile, Heredoc, Node, Span};

/// All instruction keywords, lower case.
pub(crate) const INSTRUCTIONS: [&str; 18] = [
    "add",
    "arg",
    "cmd",
    "copy",
    "entrypoint",
    "env",
    "expose",
    "from",
    "healthcheck",
    "label",
    "maintainer",
    "onbuild",
    "run",
    "shell",
    "stopsignal",
    "user",
    "volume",
    "workdir",
];

/// State of directive recognition: directives are only recognised in the
/// comment lines at the very top of the file; the first line that is not a
/// known directive (a blank line, an ordinary comment, an instruction, an
/// unknown `# key=value`) ends them.
struct DirectiveParser {
    done: bool,
    seen: BTreeSet<String>,
}

/// `# name = value`: the part after `#`, left-trimmed.
fn directive(i: &str) -> IResult<&str, (&str, &str)> {
    let (i, name) = recognize((
        satisfy(|c| c.is_ascii_alphabetic()),
        take_while(|c: char| c.is_ascii_alphanumeric()),
    ))
    .parse(i)?;
    let (i, _) = take_while(is_re_space).parse(i)?;
    let (i, _) = tag("=").parse(i)?;
    let (i, _) = take_while(is_re_space).parse(i)?;
    let (i, value) = rest(i)?;
    Ok((i, (name, value)))
}

/// RE2's `\s`: `[\t\n\f\r ]`.
fn is_re_space(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\u{c}' | '\r' | ' ')
}

impl DirectiveParser {
    /// Returns `Some((name, value))` for a recognised directive line.
    fn parse_line(&mut self, line: &str) -> Result<Option<(String, String)>, String> {
        if self.done {
            return Ok(None);
        }
        let Some(body) = line.strip_prefix('#') else {
            self.done = true;
            return Ok(None);
        };
        let body = body.trim_start_matches(char::is_whitespace);
        let Ok((_, (name, value))) = directive(body) else {
            self.done = true;
            return Ok(None);
        };
        let value = value.trim_end_matches(is_re_space);
        if value.is_empty() {
            self.done = true;
            return Ok(None);
        }
        let name = name.to_ascii_lowercase();
        if !matches!(name.as_str(), "syntax" | "escape" | "check") {
            self.done = true;
            return Ok(None);
        }
        if !self.seen.insert(name.clone()) {
            return Err(format!("only one {name} parser directive can be used"));
        }
        Ok(Some((name, value.to_string())))
    }
}

fn trim_newline(s: &str) -> &str {
    s.trim_end_matches(['\r', '\n'])
}

fn is_comment(line: &str) -> bool {
    line.trim_start_matches(char::is_whitespace)
        .starts_with('#')
}

/// Removes a trailing line-continuation escape (and blanks after it);
/// returns the remaining text and whether the logical line ends here.
/// An escape preceded by another escape is not a continuation.
fn trim_continuation(line: &str, escape: char) -> (&str, bool) {
    let t = line.trim_end_matches([' ', '\t']);
    let Some(before) = t.strip_suffix(escape) else {
        return (line, true);
    };
    match before.chars().next_back() {
        None => ("", false),
        Some(c) if c == escape => (line, true),
        Some(_) => (before, false),
    }
}

/// `(\d*)<<(-?)\s*([^<]*)$` on a word of the instruction line.
fn heredoc_marker(i: &str) -> IResult<&str, (&str, bool, &str)> {
    let (i, fd) = digit0(i)?;
    let (i, _) = tag("<<").parse(i)?;
    let (i, dash) = opt(tag("-")).parse(i)?;
    let (i, _) = take_while(is_re_space).parse(i)?;
    let (i, name) = take_while(|c| c != '<').parse(i)?;
    if !i.is_empty() {
        return Err(nom::Err::Error(nom::error::Error::new(
            i,
            nom::error::ErrorKind::Eof,
        )));
    }
    Ok((i, (fd, dash.is_some(), name)))
}

/// BuildKit's `ParseHeredoc`: the heredoc a word introduces, if any.
pub(crate) fn parse_heredoc_word(word: &str) -> Result<Option<Heredoc>, String> {
    let Ok((_, (fd, chomp, rest))) = heredoc_marker(word) else {
        return Ok(None);
    };
    if rest.is_empty() {
        return Ok(None);
    }
    let lex = Lexer::new('\\').skip_unset_env(true);
    let words = lex.process_words(rest, &EmptyEnv).map_err(|e| e.message)?;
    if words.len() != 1 {
        return Ok(None);
    }
    let raw = lex
        .raw_quotes(true)
        .process_words(rest, &EmptyEnv)
        .map_err(|e| e.message)?;
    if raw.len() != words.len() {
        return Err(format!(
            "internal lexing of heredoc produced inconsistent results: {rest}"
        ));
    }
    let count = |s: &str| s.chars().filter(|&c| c == '\'' || c == '"').count();
    let expand = count(&words[0]) == count(&raw[0]);
    Ok(Some(Heredoc {
        name: words[0].clone(),
        content: String::new(),
        expand,
        chomp,
        fd: if fd.is_empty() { None } else { fd.parse().ok() },
    }))
}

fn heredocs_from_line(line: &str) -> Result<Vec<Heredoc>, String> {
    let lex = Lexer::new('\\')
        .raw_quotes(true)
        .raw_escapes(true)
        .skip_unset_env(true);
    // Like BuildKit, a line the lexer cannot split has no heredocs.
    let words = lex.process_words(line, &EmptyEnv).unwrap_or_default();
    let mut docs = Vec::new();
    for w in words {
        if let Some(h) = parse_heredoc_word(&w)? {
            docs.push(h);
        }
    }
    Ok(docs)
}

fn can_contain_heredoc(node: &Node) -> bool {
    let n = match (&node.inner, node.keyword.as_str()) {
        (Some(inner), "onbuild") => inner,
        _ => node,
    };
    matches!(n.keyword.as_str(), "add" | "copy" | "run") && !n.json
}

/// The column of the `<<NAME` marker on `line`, for error carets.
fn heredoc_column(line: &str, name: &str) -> Option<usize> {
    let line = trim_newline(line);
    line.match_indices("<<").find_map(|(i, _)| {
        let rest = line[i + 2..].trim_start_matches(['-', ' ', '\t', '\'', '"']);
        rest.starts_with(name)
            .then(|| line[..i].chars().count() + 1)
    })
}

/// Turns one logical line (continuations joined) into a node.
fn node_from_line(line: &str, escape: char, nested: bool) -> Result<Node, LineError> {
    let (cmd, flags, rest) = lp::split_command(line);
    let keyword = cmd.to_lowercase();
    let mut inner = None;
    let parsed = match keyword.as_str() {
        "add" | "copy" | "volume" => lp::maybe_json_to_list(&rest)?,
        "arg" => lp::name_or_name_val(&rest, escape),
        "cmd" | "entrypoint" | "run" | "shell" => lp::maybe_json(&rest)?,
        "env" => lp::name_val(&rest, "ENV", escape)?,
        "label" => lp::name_val(&rest, "LABEL", escape)?,
        "expose" | "from" => lp::whitespace_delimited(&rest),
        "healthcheck" => lp::health(&rest)?,
        "maintainer" | "stopsignal" | "user" | "workdir" => lp::string(&rest),
        "onbuild" => {
            if nested {
                return Err(LineError {
                    message: "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed".into(),
                    hint: None,
                });
            }
            if !rest.is_empty() {
                inner = Some(Box::new(node_from_line(&rest, escape, true)?));
            }
            lp::Args::default()
        }
        _ => {
            let hint =
                suggest(&cmd, &INSTRUCTIONS).map(|s| format!("did you mean {}?", s.to_uppercase()));
            return Err(LineError {
                message: format!("unknown instruction: {cmd}"),
                hint,
            });
        }
    };
    Ok(Node {
        keyword,
        flags,
        args: parsed.args,
        json: parsed.json,
        heredocs: Vec::new(),
        inner,
        original: line.to_string(),
        span: Span::default(),
    })
}

/// The longest physical line BuildKit reads, in bytes without its `\n`: its
/// line scanner holds at most 64 KiB, terminator included.
pub const MAX_LINE_BYTES: usize = 65_535;

/// BuildKit refuses a file with a longer line before it parses anything
/// (heredoc bodies and comments count: they are lines of the file too).
fn check_line_lengths(src: &str) -> Result<(), ParseError> {
    for (n, line) in src.split('\n').enumerate() {
        if line.len() > MAX_LINE_BYTES {
            return Err(ParseError::new(
                format!(
                    "dockerfile line greater than max allowed size of {MAX_LINE_BYTES} (this line has {} bytes)",
                    line.len()
                ),
                Span {
                    line: n + 1,
                    column: 1,
                    end_line: n + 1,
                },
            ));
        }
    }
    Ok(())
}

/// Parses a Dockerfile.
///
/// Errors: invalid or repeated directives, unknown instructions (with a
/// suggestion), malformed ENV/LABEL, JSON arrays of non-strings,
/// unterminated heredocs, a file without instructions, a line over
/// [`MAX_LINE_BYTES`].
pub fn parse(src: &str) -> Result<Dockerfile, ParseError> {
    check_line_lengths(src)?;
    let src = src.strip_prefix('\u{feff}').unwrap_or(src);
    let lines: Vec<&str> = src.split_inclusive('\n').collect();
    let mut dp = DirectiveParser {
        done: false,
        seen: BTreeSet::new(),
    };
    let mut directives = Directives::default();
    let mut nodes = Vec::new();
    let mut warnings = Vec::new();
    let escape_line = |n: usize| Span {
        line: n,
        column: 1,
        end_line: n,
    };

    let mut i = 0;
    while i < lines.len() {
        let raw = trim_newline(lines[i]);
        let token = raw.trim_start_matches(char::is_whitespace);
        let column = raw[..raw.len() - token.len()].chars().count() + 1;
        i += 1;
        let start_line = i;
        match dp.parse_line(token) {
            Err(msg) => return Err(ParseError::new(msg, escape_line(start_line))),
            Ok(Some((name, value))) => set_directive(&mut directives, &name, value, start_line)?,
            Ok(None) => {}
        }
        let escape = directives.escape;
        let token = if is_comment(token) { "" } else { token };
        let (first, mut eol) = trim_continuation(token, escape);
        if eol && first.is_empty() {
            continue;
        }
        let mut buf = String::from(first);
        let mut has_empty_continuation = false;
        while !eol && i < lines.len() {
            let raw = trim_newline(lines[i]);
            i += 1;
            if is_comment(raw) {
                continue;
            }
            if raw.trim_start_matches(char::is_whitespace).is_empty() {
                has_empty_continuation = true;
                continue;
            }
            let (t, e) = trim_continuation(raw, escape);
            eol = e;
            buf.push_str(t);
        }
        let mut span = Span {
            line: start_line,
            column,
            end_line: i,
        };
        if lp::trim_space(&buf).is_empty() {
            // Only an escape character (and blanks) on the line.
            continue;
        }
        if has_empty_continuation {
            warnings.push(Warning {
                message: format!("Empty continuation line found in: {buf}"),
                span,
            });
        }
        let mut node = node_from_line(&buf, escape, false).map_err(|e| ParseError {
            message: e.message,
            span,
            hint: e.hint,
        })?;

        if can_contain_heredoc(&node) && buf.contains("<<") {
            let docs = heredocs_from_line(&buf).map_err(|m| ParseError::new(m, span))?;
            for doc in docs {
                node.heredocs
                    .push(heredoc_body(&lines, &mut i, doc, start_line, column)?);
            }
            span.end_line = i;
            if let Some(inner) = node.inner.as_mut() {
                inner.heredocs = node.heredocs.clone();
            }
        }
        node.span = span;
        if let Some(inner) = node.inner.as_mut() {
            inner.span = inner_span(&buf, span);
        }
        nodes.push(node);
    }
    if nodes.is_empty() {
        return Err(ParseError::new(
            "file with no instructions",
            Span {
                line: lines.len().max(1),
                column: 1,
                end_line: lines.len().max(1),
            },
        ));
    }
    Ok(Dockerfile {
        directives,
        nodes,
        warnings,
    })
}

/// `# escape=` / `# syntax=` / `# check=`.
fn set_directive(
    directives: &mut Directives,
    name: &str,
    value: String,
    line: usize,
) -> Result<(), ParseError> {
    match name {
        "escape" => {
            directives.escape = match value.as_str() {
                "\\" => '\\',
                "`" => '`',
                _ => {
                    return Err(ParseError::new(
                        format!("invalid escape token '{value}' does not match ` or \\"),
                        Span {
                            line,
                            column: 1,
                            end_line: line,
                        },
                    )
                    .with_hint(Some("use `# escape=\\` or `# escape=``".into())))
                }
            }
        }
        "syntax" => directives.syntax = Some(value),
        _ => directives.check = Some(value),
    }
    Ok(())
}

/// Reads one heredoc's body from `lines[*i..]` up to its terminator.
fn heredoc_body(
    lines: &[&str],
    i: &mut usize,
    mut doc: Heredoc,
    start_line: usize,
    column: usize,
) -> Result<Heredoc, ParseError> {
    while *i < lines.len() {
        let line = lines[*i];
        *i += 1;
        let mut candidate = trim_newline(line);
        if doc.chomp {
            candidate = candidate.trim_start_matches('\t');
        }
        if candidate == doc.name {
            return Ok(doc);
        }
        doc.content.push_str(line);
    }
    let column = heredoc_column(lines[start_line - 1], &doc.name).unwrap_or(column);
    Err(ParseError::new(
        format!(
            "unterminated heredoc {} started at line {}",
            doc.name, start_line
        ),
        Span {
            line: start_line,
            column,
            end_line: *i,
        },
    )
    .with_hint(Some(format!(
        "end the heredoc with a line containing only {}",
        doc.name
    ))))
}

/// Where an ONBUILD trigger starts: after the keyword and its blanks.
fn inner_span(buf: &str, span: Span) -> Span {
    let offset = buf.len() - buf.trim_start_matches(char::is_whitespace).len();
    let kw_len = lp::keyword(&buf[offset..])
        .map(|(_, k)| k.chars().count())
        .unwrap_or(0);
    let after = &buf[offset..];
    let skip = after
        .char_indices()
        .skip(kw_len)
        .find(|(_, c)| !c.is_whitespace())
        .map(|(b, _)| after[..b].chars().count())
        .unwrap_or(kw_len);
    Span {
        line: span.line,
        column: span.column + skip,
        end_line: span.end_line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuation_trimming() {
        assert_eq!(trim_continuation("a \\", '\\'), ("a ", false));
        assert_eq!(trim_continuation("a \\  \t", '\\'), ("a ", false));
        assert_eq!(trim_continuation("\\", '\\'), ("", false));
        assert_eq!(trim_continuation("a\\\\", '\\'), ("a\\\\", true));
        assert_eq!(trim_continuation("a `", '`'), ("a ", false));
        assert_eq!(trim_continuation("a", '\\'), ("a", true));
    }

    #[test]
    fn heredoc_words() {
        let h = parse_heredoc_word("<<EOF").unwrap().unwrap();
        assert_eq!(
            (h.name.as_str(), h.expand, h.chomp, h.fd),
            ("EOF", true, false, None)
        );
        let h = parse_heredoc_word("3<<-'END'").unwrap().unwrap();
        assert_eq!(
            (h.name.as_str(), h.expand, h.chomp, h.fd),
            ("END", false, true, Some(3))
        );
        assert!(parse_heredoc_word("<<").unwrap().is_none());
        assert!(parse_heredoc_word("a<<EOF").unwrap().is_none());
        assert!(parse_heredoc_word("<<EOF<").unwrap().is_none());
    }

    #[test]
    fn directive_lines() {
        let mut dp = DirectiveParser {
            done: false,
            seen: BTreeSet::new(),
        };
        assert_eq!(
            dp.parse_line("# Syntax = docker/dockerfile:1  ").unwrap(),
            Some(("syntax".into(), "docker/dockerfile:1".into()))
        );
        assert!(dp.parse_line("# syntax=x").is_err());
        assert_eq!(dp.parse_line("# unknown=1").unwrap(), None);
        assert_eq!(
            dp.parse_line("# escape=`").unwrap(),
            None,
            "done after unknown"
        );
    }
}
