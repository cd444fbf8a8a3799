//! Per-instruction argument parsers (BuildKit's `line_parsers.go`) and the
//! command/flag splitter (`split_command.go`).

use nom::bytes::complete::take_while1;
use nom::character::complete::satisfy;
use nom::combinator::recognize;
use nom::{IResult, Parser};

/// Error produced while turning one instruction line into arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LineError {
    pub message: String,
    pub hint: Option<String>,
}

/// BuildKit's `[\t\v\f\r ]` class (the separator of whitespace-delimited
/// arguments).
pub(crate) fn is_token_ws(c: char) -> bool {
    matches!(c, '\t' | '\u{b}' | '\u{c}' | '\r' | ' ')
}

/// Go's `strings.TrimSpace`.
pub(crate) fn trim_space(s: &str) -> &str {
    s.trim_matches(char::is_whitespace)
}

fn ws_run(i: &str) -> IResult<&str, &str> {
    take_while1(is_token_ws).parse(i)
}

/// Splits `s` at the first run of token whitespace (`Split(s, 2)`).
pub(crate) fn split_first_ws(s: &str) -> (&str, Option<&str>) {
    match s.find(is_token_ws) {
        None => (s, None),
        Some(i) => match ws_run(&s[i..]) {
            Ok((rest, _)) => (&s[..i], Some(rest)),
            Err(_) => (s, None),
        },
    }
}

/// Splits on runs of token whitespace (`Split(s, -1)`); `s` is trimmed.
pub(crate) fn split_ws(s: &str) -> Vec<String> {
    s.split(is_token_ws)
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

/// An instruction keyword: the first token of the line.
pub(crate) fn keyword(i: &str) -> IResult<&str, &str> {
    recognize((
        satisfy(|c| !is_token_ws(c)),
        nom::bytes::complete::take_till(is_token_ws),
    ))
    .parse(i)
}

/// `splitCommand`: keyword, flags, and the rest of the line (trimmed).
pub(crate) fn split_command(line: &str) -> (String, Vec<String>, String) {
    let trimmed = trim_space(line);
    let (cmd, rest) = match keyword(trimmed) {
        Ok((rest, cmd)) => (cmd, rest),
        Err(_) => ("", trimmed),
    };
    let rest = rest.trim_start_matches(is_token_ws);
    if rest.is_empty() {
        return (cmd.to_string(), Vec::new(), String::new());
    }
    let (args, flags) = extract_builder_flags(rest);
    (cmd.to_string(), flags, trim_space(args).to_string())
}

#[derive(PartialEq, Clone, Copy)]
enum Phase {
    Spaces,
    Word,
    Quote,
}

/// Collects leading `--flag[=value]` words; returns the rest of the line
/// and the flags. A bare `--` ends the flags. Quotes and `\` inside a flag
/// are processed (and removed), as BuildKit does.
pub(crate) fn extract_builder_flags(line: &str) -> (&str, Vec<String>) {
    let chars: Vec<(usize, char)> = line.char_indices().collect();
    let n = chars.len();
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut word = String::new();
    let mut quote = '\0';
    let mut blank_ok = false;
    let mut p = 0;
    while p <= n {
        let mut ch = if p < n { chars[p].1 } else { '\0' };
        if phase == Phase::Spaces {
            if p == n {
                break;
            }
            if ch.is_whitespace() {
                p += 1;
                continue;
            }
            if ch != '-' || p + 1 == n || chars[p + 1].1 != '-' {
                return (&line[chars[p].0..], words);
            }
            phase = Phase::Word;
        }
        if p == n {
            if word != "--" && (blank_ok || !word.is_empty()) {
                words.push(word);
            }
            break;
        }
        if phase == Phase::Word {
            if ch.is_whitespace() {
                phase = Phase::Spaces;
                if word == "--" {
                    return (&line[chars[p].0..], words);
                }
                if blank_ok || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                word.clear();
                blank_ok = false;
                p += 1;
                continue;
            }
            if ch == '\'' || ch == '"' {
                quote = ch;
                blank_ok = true;
                phase = Phase::Quote;
                p += 1;
                continue;
            }
            if ch == '\\' {
                if p + 1 == n {
                    p += 1;
                    continue;
                }
                p += 1;
                ch = chars[p].1;
            }
            word.push(ch);
            p += 1;
            continue;
        }
        // Phase::Quote
        if ch == quote {
            phase = Phase::Word;
            p += 1;
            continue;
        }
        if ch == '\\' {
            if p + 1 == n {
                phase = Phase::Word;
                p += 1;
                continue;
            }
            p += 1;
            ch = chars[p].1;
        }
        word.push(ch);
        p += 1;
    }
    ("", words)
}

/// `parseWords`: splits on whitespace, keeping quotes and escapes in the
/// words (they are processed later by the shell lexer).
pub(crate) fn parse_words(rest: &str, escape: char) -> Vec<String> {
    let chars: Vec<char> = rest.chars().collect();
    let n = chars.len();
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut word = String::new();
    let mut quote = '\0';
    let mut blank_ok = false;
    let mut p = 0;
    while p <= n {
        let mut ch = if p < n { chars[p] } else { '\0' };
        if phase == Phase::Spaces {
            if p == n {
                break;
            }
            if ch.is_whitespace() {
                p += 1;
                continue;
            }
            phase = Phase::Word;
        }
        if p == n {
            if blank_ok || !word.is_empty() {
                words.push(word);
            }
            break;
        }
        if phase == Phase::Word {
            if ch.is_whitespace() {
                phase = Phase::Spaces;
                if blank_ok || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                word.clear();
                blank_ok = false;
                p += 1;
                continue;
            }
            if ch == '\'' || ch == '"' {
                quote = ch;
                blank_ok = true;
                phase = Phase::Quote;
            }
            if ch == escape {
                if p + 1 == n {
                    p += 1;
                    continue;
                }
                word.push(ch);
                p += 1;
                ch = chars[p];
            }
            word.push(ch);
            p += 1;
            continue;
        }
        // Phase::Quote
        if ch == quote {
            phase = Phase::Word;
        }
        if ch == escape && quote != '\'' {
            if p + 1 == n {
                phase = Phase::Word;
                p += 1;
                continue;
            }
            p += 1;
            word.push(ch);
            ch = chars[p];
        }
        word.push(ch);
        p += 1;
    }
    words
}

/// Outcome of parsing an instruction's arguments.
#[derive(Debug, Default)]
pub(crate) struct Args {
    pub args: Vec<String>,
    pub json: bool,
}

const NOT_STRING_ARRAY: &str =
    "when using JSON array syntax, arrays must be comprised of strings only";

/// `parseJSON`: `Ok(Some)` for a JSON array of strings, `Ok(None)` when the
/// text is not JSON (the caller falls back), `Err` for a JSON array with
/// non-string elements. Like Go's `json.Decoder`, text after the first
/// JSON value is ignored.
fn parse_json(rest: &str) -> Result<Option<Vec<String>>, LineError> {
    let rest = rest.trim_start_matches(char::is_whitespace);
    if !rest.starts_with('[') {
        return Ok(None);
    }
    let mut stream = serde_json::Deserializer::from_str(rest).into_iter::<serde_json::Value>();
    match stream.next() {
        Some(Ok(serde_json::Value::Array(items))) => {
            let mut out = Vec::with_capacity(items.len());
            for v in items {
                match v {
                    serde_json::Value::String(s) => out.push(s),
                    _ => {
                        return Err(LineError {
                            message: NOT_STRING_ARRAY.into(),
                            hint: Some("quote every element: [\"a\", \"b\"]".into()),
                        })
                    }
                }
            }
            Ok(Some(out))
        }
        _ => Ok(None),
    }
}

/// `parseMaybeJSON` (RUN, CMD, ENTRYPOINT, SHELL): JSON array, or the whole
/// rest as one shell-form argument.
pub(crate) fn maybe_json(rest: &str) -> Result<Args, LineError> {
    if rest.is_empty() {
        return Ok(Args::default());
    }
    Ok(match parse_json(rest)? {
        Some(args) => Args { args, json: true },
        None => Args {
            args: vec![rest.to_string()],
            json: false,
        },
    })
}

/// `parseMaybeJSONToList` (ADD, COPY, VOLUME): JSON array, or
/// whitespace-separated words.
pub(crate) fn maybe_json_to_list(rest: &str) -> Result<Args, LineError> {
    Ok(match parse_json(rest)? {
        Some(args) => Args { args, json: true },
        None => Args {
            args: split_ws(rest),
            json: false,
        },
    })
}

/// `parseStringsWhitespaceDelimited` (FROM, EXPOSE).
pub(crate) fn whitespace_delimited(rest: &str) -> Args {
    Args {
        args: split_ws(rest),
        json: false,
    }
}

/// `parseString` (MAINTAINER, USER, WORKDIR, STOPSIGNAL): the rest as one
/// argument.
pub(crate) fn string(rest: &str) -> Args {
    Args {
        args: if rest.is_empty() {
            Vec::new()
        } else {
            vec![rest.to_string()]
        },
        json: false,
    }
}

/// `parseNameOrNameVal` (ARG): words, raw.
pub(crate) fn name_or_name_val(rest: &str, escape: char) -> Args {
    Args {
        args: parse_words(rest, escape),
        json: false,
    }
}

/// `parseNameVal` (ENV, LABEL): `name value ""` triples for the legacy
/// `KEY value` form, `name value "="` triples for `k=v ...`.
pub(crate) fn name_val(rest: &str, key: &str, escape: char) -> Result<Args, LineError> {
    let words = parse_words(rest, escape);
    if words.is_empty() {
        return Ok(Args::default());
    }
    if !words[0].contains('=') {
        let (k, v) = split_first_ws(rest);
        let Some(v) = v else {
            return Err(LineError {
                message: format!("{key} must have two arguments"),
                hint: Some(format!("write {key} {k}=<value> (or {key} {k} <value>)")),
            });
        };
        return Ok(Args {
            args: vec![k.to_string(), v.to_string(), String::new()],
            json: false,
        });
    }
    let mut args = Vec::with_capacity(words.len() * 3);
    for w in words {
        let Some((k, v)) = w.split_once('=') else {
            return Err(LineError {
                message: format!(
                    "Syntax error - can't find = in {}. Must be of the form: name=value",
                    crate::quote::go_quote(&w)
                ),
                hint: Some("quote or escape spaces inside values: name=\"a b\"".into()),
            });
        };
        args.push(k.to_string());
        args.push(v.to_string());
        args.push("=".to_string());
    }
    Ok(Args { args, json: false })
}

/// `parseHealthConfig`: the type word (`CMD`, `NONE`, ...) then the
/// command as for `parseMaybeJSON`.
pub(crate) fn health(rest: &str) -> Result<Args, LineError> {
    let sep = rest.find(char::is_whitespace).unwrap_or(rest.len());
    if sep == 0 {
        return Ok(Args::default());
    }
    let typ = &rest[..sep];
    let next = rest[sep..].trim_start_matches(char::is_whitespace);
    let cmd = maybe_json(next)?;
    let mut args = Vec::with_capacity(1 + cmd.args.len());
    args.push(typ.to_string());
    args.extend(cmd.args);
    Ok(Args {
        args,
        json: cmd.json,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags() {
        assert_eq!(
            extract_builder_flags("--a=b --c -- --d x"),
            (" --d x", vec!["--a=b".to_string(), "--c".to_string()])
        );
        assert_eq!(
            extract_builder_flags("--x=\"a b\" y"),
            ("y", vec!["--x=a b".to_string()])
        );
        assert_eq!(
            extract_builder_flags("--only"),
            ("", vec!["--only".to_string()])
        );
        assert_eq!(extract_builder_flags("-x"), ("-x", vec![]));
    }

    #[test]
    fn words_keep_quotes() {
        assert_eq!(
            parse_words("abc=\"123 456\" def", '\\'),
            ["abc=\"123 456\"", "def"]
        );
        assert_eq!(parse_words("a\\ b c", '\\'), ["a\\ b", "c"]);
        assert_eq!(parse_words("''", '\\'), ["''"]);
    }

    #[test]
    fn json_forms() {
        assert_eq!(
            maybe_json("[\"a\", \"b\"] trailing").unwrap().args,
            ["a", "b"]
        );
        assert!(!maybe_json("['a']").unwrap().json);
        assert_eq!(maybe_json("[1]").unwrap_err().message, NOT_STRING_ARRAY);
    }

    #[test]
    fn name_val_errors() {
        assert_eq!(
            name_val("A", "ENV", '\\').unwrap_err().message,
            "ENV must have two arguments"
        );
        assert!(name_val("a=b c", "ENV", '\\')
            .unwrap_err()
            .message
            .starts_with("Syntax error - can't find = in \"c\""));
    }
}
