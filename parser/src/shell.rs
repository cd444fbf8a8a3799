//! Word expansion, as BuildKit's `frontend/dockerfile/shell` lexer does it.
//!
//! Later build steps use [`Lexer`] to substitute variables in instruction
//! arguments: `$v`, `${v}`, `${v:-w}`, `${v-w}`, `${v:+w}`, `${v+w}`,
//! `${v:?m}`, `${v?m}`, `${v#p}`, `${v##p}`, `${v%p}`, `${v%%p}`,
//! `${v/p/r}`, `${v//p/r}`, single and double quotes and the escape
//! character. Behaviour follows BuildKit byte for byte where the
//! conformance vectors (`envVarTest`) pin it down; see the notes on
//! [`Lexer`] for the few deliberate differences.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use regex::Regex;

/// Maximum nesting of `${...}` inside `${...}` words. BuildKit has no limit
/// (Go grows its stacks); we refuse pathological input instead of
/// overflowing the stack.
const MAX_NESTING: usize = 200;

/// The longest word an expansion may produce: Linux's `MAX_ARG_STRLEN`
/// (32 pages, 131,072 bytes), the longest single argument or `K=V`
/// variable a program can be started with, so no word a build can use is
/// cut off by it. BuildKit has no limit of its own here: a chain of
/// `ARG a1=${a0}${a0}...` doubles (or worse) per line and would take all
/// memory; the expansion stops as soon as the word grows past this.
pub const MAX_WORD_BYTES: usize = 128 << 10;

/// How much of a word an error message quotes.
const QUOTED_WORD_MAX: usize = 80;

/// A variable environment for expansion.
pub trait Env {
    /// The value of `name`, or `None` when the variable is not set.
    /// A variable that is set but empty returns `Some("")`.
    fn lookup(&self, name: &str) -> Option<&str>;
}

impl Env for HashMap<String, String> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.get(name).map(String::as_str)
    }
}

impl Env for BTreeMap<String, String> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.get(name).map(String::as_str)
    }
}

/// Later entries win, as with BuildKit's `BuildEnvs` over a `KEY=VALUE` list.
impl Env for [(String, String)] {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Env for Vec<(String, String)> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.as_slice().lookup(name)
    }
}

/// An environment with no variables at all.
#[derive(Debug, Clone, Copy, Default)]
pub struct EmptyEnv;

impl Env for EmptyEnv {
    fn lookup(&self, _name: &str) -> Option<&str> {
        None
    }
}

/// A failed expansion: bad substitution syntax, unterminated quote, or a
/// `${v?msg}` / `${v:?msg}` whose variable is unset (or empty).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ExpandError {
    pub message: String,
}

/// The shell-word lexer.
///
/// Differences from BuildKit, all on input BuildKit itself mishandles:
/// nesting of `${` deeper than 200 levels is an error instead of unbounded
/// recursion.
#[derive(Debug, Clone)]
pub struct Lexer {
    escape: char,
    raw_quotes: bool,
    raw_escapes: bool,
    skip_unset_env: bool,
    skip_process_quotes: bool,
    max_word: usize,
}

/// Everything a single run of the lexer produces.
struct Output {
    word: String,
    words: Vec<String>,
    matches: BTreeSet<String>,
}

impl Lexer {
    /// A lexer using `escape` (`\` or `` ` ``) as the escape character.
    pub fn new(escape: char) -> Self {
        Lexer {
            escape,
            raw_quotes: false,
            raw_escapes: false,
            skip_unset_env: false,
            skip_process_quotes: false,
            max_word: MAX_WORD_BYTES,
        }
    }

    /// The longest word (in bytes) an expansion may produce before it
    /// stops with an error; [`MAX_WORD_BYTES`] unless set.
    pub fn max_word(mut self, bytes: usize) -> Self {
        self.max_word = bytes;
        self
    }

    /// Keep quote characters in the output (BuildKit's `RawQuotes`).
    pub fn raw_quotes(mut self, on: bool) -> Self {
        self.raw_quotes = on;
        self
    }

    /// Keep escape characters in the output (BuildKit's `RawEscapes`).
    pub fn raw_escapes(mut self, on: bool) -> Self {
        self.raw_escapes = on;
        self
    }

    /// Leave references to unset variables as written (BuildKit's
    /// `SkipUnsetEnv`).
    pub fn skip_unset_env(mut self, on: bool) -> Self {
        self.skip_unset_env = on;
        self
    }

    /// Treat quotes as ordinary characters (BuildKit's `SkipProcessQuotes`).
    pub fn skip_process_quotes(mut self, on: bool) -> Self {
        self.skip_process_quotes = on;
        self
    }

    /// The escape character this lexer was made with.
    pub fn escape(&self) -> char {
        self.escape
    }

    /// Single-word mode: expand `word`, keeping whitespace between words.
    pub fn process_word(&self, word: &str, env: &dyn Env) -> Result<String, ExpandError> {
        self.run(word, env).map(|o| o.word)
    }

    /// Word-splitting mode: expand `word` and split the result on
    /// whitespace, except whitespace that was quoted or escaped. Whitespace
    /// coming out of a variable's value splits too.
    pub fn process_words(&self, word: &str, env: &dyn Env) -> Result<Vec<String>, ExpandError> {
        self.run(word, env).map(|o| o.words)
    }

    /// Like [`Lexer::process_word`], and also returns the names of the
    /// variables that were referenced and found in `env`.
    pub fn process_word_with_matches(
        &self,
        word: &str,
        env: &dyn Env,
    ) -> Result<(String, BTreeSet<String>), ExpandError> {
        self.run(word, env).map(|o| (o.word, o.matches))
    }

    fn run(&self, word: &str, env: &dyn Env) -> Result<Output, ExpandError> {
        let mut sw = ShellWord {
            lex: self,
            chars: word.chars().collect(),
            pos: 0,
            env,
            raw_escapes: self.raw_escapes,
            matches: BTreeSet::new(),
            depth: 0,
        };
        match sw.process_stop_on(None, self.raw_escapes) {
            Ok((w, ws)) => Ok(Output {
                word: w,
                words: ws,
                matches: sw.matches,
            }),
            Err(msg) => Err(ExpandError {
                message: format!("failed to process {}: {}", quote_short(word), msg),
            }),
        }
    }
}

/// `word` quoted for an error, its first characters only when it is long.
fn quote_short(word: &str) -> String {
    match word.char_indices().nth(QUOTED_WORD_MAX) {
        None => crate::quote::go_quote(word),
        Some((cut, _)) => format!(
            "{}... ({} bytes)",
            crate::quote::go_quote(&word[..cut]),
            word.len()
        ),
    }
}

impl Default for Lexer {
    fn default() -> Self {
        Lexer::new('\\')
    }
}

#[derive(Default)]
struct Words {
    word: String,
    words: Vec<String>,
    in_word: bool,
}

impl Words {
    fn add_char(&mut self, ch: char) {
        if ch.is_whitespace() {
            if self.in_word && !self.word.is_empty() {
                self.words.push(std::mem::take(&mut self.word));
                self.in_word = false;
            }
        } else {
            self.add_raw_char(ch);
        }
    }

    fn add_raw_char(&mut self, ch: char) {
        self.word.push(ch);
        self.in_word = true;
    }

    fn add_string(&mut self, s: &str) {
        for ch in s.chars() {
            self.add_char(ch);
        }
    }

    fn add_raw_string(&mut self, s: &str) {
        self.word.push_str(s);
        self.in_word = true;
    }

    fn finish(mut self) -> Vec<String> {
        if !self.word.is_empty() {
            self.words.push(std::mem::take(&mut self.word));
        }
        self.words
    }
}

struct ShellWord<'a> {
    lex: &'a Lexer,
    chars: Vec<char>,
    pos: usize,
    env: &'a dyn Env,
    raw_escapes: bool,
    matches: BTreeSet<String>,
    depth: usize,
}

type Res<T> = Result<T, String>;

impl ShellWord<'_> {
    /// An error once a word being built is longer than the lexer allows.
    fn bounded(&self, len: usize) -> Res<()> {
        let max = self.lex.max_word;
        if len > max {
            return Err(format!(
                "the expansion grows past {max} bytes, the limit of one word \
                 (the longest argument or variable a program can be given)"
            ));
        }
        Ok(())
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.chars.get(self.pos).copied();
        if c.is_some() {
            self.pos += 1;
        }
        c
    }

    fn process_stop_on(
        &mut self,
        stop: Option<char>,
        raw_escapes: bool,
    ) -> Res<(String, Vec<String>)> {
        let saved = self.raw_escapes;
        self.raw_escapes = raw_escapes;
        let r = self.process_stop_on_inner(stop);
        self.raw_escapes = saved;
        r
    }

    fn process_stop_on_inner(&mut self, stop: Option<char>) -> Res<(String, Vec<String>)> {
        let mut result = String::new();
        let mut words = Words::default();
        let quotes = !self.lex.skip_process_quotes;
        while let Some(ch) = self.peek() {
            if Some(ch) == stop {
                self.pos += 1;
                return Ok((result, words.finish()));
            }
            if ch == '$' {
                let tmp = self.process_dollar()?;
                self.bounded(result.len() + tmp.len())?;
                result.push_str(&tmp);
                words.add_string(&tmp);
            } else if ch == '<' {
                let tmp = self.process_possible_heredoc();
                result.push_str(&tmp);
                words.add_raw_string(&tmp);
            } else if quotes && ch == '\'' {
                let tmp = self.process_single_quote()?;
                result.push_str(&tmp);
                words.add_raw_string(&tmp);
            } else if quotes && ch == '"' {
                let tmp = self.process_double_quote()?;
                result.push_str(&tmp);
                words.add_raw_string(&tmp);
            } else {
                self.pos += 1;
                if ch == self.lex.escape {
                    if self.raw_escapes {
                        words.add_raw_char(ch);
                        result.push(ch);
                    }
                    // The escape character escapes the next one; at the
                    // end of the word it simply disappears.
                    match self.next() {
                        None => break,
                        Some(c) => {
                            words.add_raw_char(c);
                            result.push(c);
                        }
                    }
                } else {
                    words.add_char(ch);
                    result.push(ch);
                }
            }
        }
        if let Some(s) = stop {
            return Err(format!(
                "unexpected end of statement while looking for matching {s}"
            ));
        }
        Ok((result, words.finish()))
    }

    /// `<<` keeps the blanks that follow it in the same word, so that
    /// `<< EOF` is one word (a heredoc marker) when splitting.
    fn process_possible_heredoc(&mut self) -> String {
        self.pos += 1;
        if self.peek() != Some('<') {
            return "<".into();
        }
        self.pos += 1;
        let mut out = String::from("<<");
        while let Some(c @ (' ' | '\t' | '\r' | '\n')) = self.peek() {
            out.push(c);
            self.pos += 1;
        }
        out
    }

    fn process_single_quote(&mut self) -> Res<String> {
        // Everything up to the next single quote is literal; a single quote
        // cannot be escaped inside single quotes.
        let mut result = String::new();
        let open = self.next();
        if self.lex.raw_quotes {
            result.extend(open);
        }
        loop {
            match self.next() {
                None => {
                    return Err(
                        "unexpected end of statement while looking for matching single-quote"
                            .into(),
                    )
                }
                Some('\'') => {
                    if self.lex.raw_quotes {
                        result.push('\'');
                    }
                    return Ok(result);
                }
                Some(c) => result.push(c),
            }
        }
    }

    fn process_double_quote(&mut self) -> Res<String> {
        // Everything up to the next unescaped double quote is literal, except
        // `$` expansions; the escape character only escapes `"`, `$` and
        // itself, and is kept before anything else.
        let mut result = String::new();
        let open = self.next();
        if self.lex.raw_quotes {
            result.extend(open);
        }
        loop {
            match self.peek() {
                None => {
                    return Err(
                        "unexpected end of statement while looking for matching double-quote"
                            .into(),
                    )
                }
                Some('"') => {
                    self.pos += 1;
                    if self.lex.raw_quotes {
                        result.push('"');
                    }
                    return Ok(result);
                }
                Some('$') => {
                    let v = self.process_dollar()?;
                    self.bounded(result.len() + v.len())?;
                    result.push_str(&v);
                }
                Some(mut ch) => {
                    self.pos += 1;
                    if ch == self.lex.escape {
                        if self.raw_escapes {
                            result.push(ch);
                        }
                        match self.peek() {
                            None => continue,
                            Some(n) if n == '"' || n == '$' || n == self.lex.escape => {
                                self.pos += 1;
                                ch = n;
                            }
                            Some(_) => {}
                        }
                    }
                    result.push(ch);
                }
            }
        }
    }

    fn process_dollar(&mut self) -> Res<String> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return Err(format!(
                "substitutions nested more than {MAX_NESTING} levels deep"
            ));
        }
        let r = self.process_dollar_inner();
        self.depth -= 1;
        r
    }

    fn get_env(&mut self, name: &str) -> Option<String> {
        match self.env.lookup(name) {
            Some(v) => {
                self.matches.insert(name.to_string());
                Some(v.to_string())
            }
            None => None,
        }
    }

    fn process_dollar_inner(&mut self) -> Res<String> {
        self.pos += 1; // the '$'
        if self.peek() != Some('{') {
            let name = self.process_name();
            if name.is_empty() {
                return Ok("$".into());
            }
            return Ok(match self.get_env(&name) {
                Some(v) => v,
                None if self.lex.skip_unset_env => format!("${name}"),
                None => String::new(),
            });
        }
        self.pos += 1; // the '{'
        match self.peek() {
            None => return Err("syntax error: missing '}'".into()),
            Some('{' | '}' | ':') => return Err("syntax error: bad substitution".into()),
            Some(_) => {}
        }
        let name = self.process_name();
        let Some(ch) = self.next() else {
            return Err("syntax error: missing '}'".into());
        };
        match ch {
            '}' => Ok(match self.get_env(&name) {
                Some(v) => v,
                None if self.lex.skip_unset_env => format!("${{{name}}}"),
                None => String::new(),
            }),
            ':' | '+' | '-' | '?' | '#' | '%' => self.process_modifier(&name, ch),
            '/' => self.process_substitution(&name),
            _ => Err(format!("unsupported modifier ({ch}) in substitution")),
        }
    }

    /// `${name:-word}` and the other modifiers, after the name; `ch` is the
    /// first character after it.
    fn process_modifier(&mut self, name: &str, mut ch: char) -> Res<String> {
        let mut chs = ch.to_string();
        let mut null_is_unset = false;
        if ch == ':' {
            null_is_unset = true;
            match self.next() {
                Some(c) => {
                    ch = c;
                    chs.push(c);
                }
                None => return Err("syntax error: missing '}'".into()),
            }
        }
        let raw = ch == '#' || ch == '%';
        let word = match self.process_stop_on(Some('}'), raw) {
            Ok((w, _)) => w,
            Err(e) => {
                if self.peek().is_none() {
                    return Err("syntax error: missing '}'".into());
                }
                return Err(e);
            }
        };
        let value = self.get_env(name);
        if self.lex.skip_unset_env && value.is_none() {
            return Ok(format!("${{{name}{chs}{word}}}"));
        }
        let empty = value.as_deref().map_or(true, str::is_empty);
        match ch {
            '-' => {
                if value.is_none() || (null_is_unset && empty) {
                    Ok(word)
                } else {
                    Ok(value.unwrap_or_default())
                }
            }
            '+' => {
                if value.is_none() || (null_is_unset && empty) {
                    Ok(String::new())
                } else {
                    Ok(word)
                }
            }
            '?' => match value {
                None => Err(format!(
                    "{name}: {}",
                    if word.is_empty() {
                        "is not allowed to be unset"
                    } else {
                        &word
                    }
                )),
                Some(v) if null_is_unset && v.is_empty() => Err(format!(
                    "{name}: {}",
                    if word.is_empty() {
                        "is not allowed to be empty"
                    } else {
                        &word
                    }
                )),
                Some(v) => Ok(v),
            },
            '#' | '%' => {
                let (pattern, greedy) = match word.strip_prefix(ch) {
                    Some(rest) => (rest.to_string(), true),
                    None => (word.clone(), false),
                };
                let value = value.unwrap_or_default();
                if ch == '%' {
                    trim_suffix(&pattern, &value, greedy)
                } else {
                    trim_prefix(&pattern, &value, greedy)
                }
            }
            _ => Err(format!("unsupported modifier ({chs}) in substitution")),
        }
    }

    /// `${name/pattern/replacement}` and `${name//pattern/replacement}`.
    fn process_substitution(&mut self, name: &str) -> Res<String> {
        let replace_all = self.peek() == Some('/');
        if replace_all {
            self.pos += 1;
        }
        let pattern = match self.process_stop_on(Some('/'), true) {
            Ok((w, _)) => w,
            Err(e) => {
                if self.peek().is_none() {
                    return Err("syntax error: missing '/' in ${}".into());
                }
                return Err(e);
            }
        };
        let replacement = match self.process_stop_on(Some('}'), true) {
            Ok((w, _)) => w,
            Err(e) => {
                if self.peek().is_none() {
                    return Err("syntax error: missing '}'".into());
                }
                return Err(e);
            }
        };
        let value = match self.get_env(name) {
            Some(v) => v,
            None if self.lex.skip_unset_env => {
                return Ok(format!("${{{name}/{pattern}/{replacement}}}"));
            }
            // An unset variable is matched as the empty string.
            None => String::new(),
        };
        let re = shell_pattern_to_regex(&pattern, true, false)
            .map_err(|e| format!("invalid pattern ({pattern}) in substitution: {e}"))?;
        if replace_all {
            // Every match may be replaced by a long word: count
            // before building what could be far past the limit.
            let n = re.find_iter(&value).take(self.lex.max_word + 1).count();
            self.bounded(
                value
                    .len()
                    .saturating_add(n.saturating_mul(replacement.len())),
            )?;
            Ok(re.replace_all(&value, replacement.as_str()).into_owned())
        } else if let Some(m) = re.find(&value) {
            Ok(format!(
                "{}{}{}",
                &value[..m.start()],
                replacement,
                &value[m.end()..]
            ))
        } else {
            Ok(value)
        }
    }

    fn process_name(&mut self) -> String {
        // A name is letters, digits and '_'; a leading digit makes it a
        // positional parameter (all digits), and a special parameter is a
        // single character.
        let mut name = String::new();
        while let Some(ch) = self.peek() {
            if name.is_empty() && ch.is_numeric() {
                while let Some(d) = self.peek() {
                    if !d.is_numeric() {
                        break;
                    }
                    name.push(d);
                    self.pos += 1;
                }
                return name;
            }
            if name.is_empty() && is_special_param(ch) {
                self.pos += 1;
                return ch.to_string();
            }
            if !ch.is_alphabetic() && !ch.is_numeric() && ch != '_' {
                break;
            }
            name.push(ch);
            self.pos += 1;
        }
        name
    }
}

fn is_special_param(c: char) -> bool {
    matches!(c, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0')
}

/// Translates a shell pattern (`*`, `?`, `\` escapes; no bracket
/// expressions, as in BuildKit) into a regular expression.
fn shell_pattern_to_regex(pattern: &str, greedy: bool, anchored: bool) -> Result<Regex, String> {
    let mut out = String::with_capacity(pattern.len() + 4);
    if anchored {
        out.push('^');
    }
    let star = if greedy { ".*" } else { ".*?" };
    let mut it = pattern.chars().peekable();
    while let Some(tok) = it.next() {
        match tok {
            '*' => out.push_str(star),
            '?' => out.push('.'),
            '\\' => {
                // `}` and `/` are escaped only to get them through ${...};
                // the escape is not part of the pattern.
                if matches!(it.peek(), Some('}' | '/')) {
                    continue;
                }
                match it.next() {
                    Some(c @ ('*' | '?' | '\\')) => {
                        out.push('\\');
                        out.push(c);
                    }
                    Some(c) => return Err(format!("invalid escape '\\{c}'")),
                    None => return Err("invalid escape '\\' at end of pattern".into()),
                }
            }
            '[' | ']' | '{' | '}' | '.' | '+' | '(' | ')' | '|' | '^' | '$' => {
                out.push('\\');
                out.push(tok);
            }
            c => {
                // Other characters are literal; escape anything the regex
                // syntax would otherwise interpret.
                let mut buf = [0u8; 4];
                out.push_str(&regex::escape(c.encode_utf8(&mut buf)));
            }
        }
    }
    Regex::new(&out).map_err(|e| e.to_string())
}

fn trim_prefix(pattern: &str, value: &str, greedy: bool) -> Res<String> {
    let re = shell_pattern_to_regex(pattern, greedy, true)
        .map_err(|e| format!("invalid pattern ({pattern}) in substitution: {e}"))?;
    Ok(match re.find(value) {
        Some(m) => value[m.end()..].to_string(),
        None => value.to_string(),
    })
}

/// Reverses a pattern, keeping each `\x` escape pair in order.
fn reverse_pattern(pattern: &str) -> String {
    let runes: Vec<char> = pattern.chars().collect();
    let mut out = vec!['\0'; runes.len()];
    let last = runes.len().saturating_sub(1);
    let mut i = 0;
    while i < runes.len() {
        let tok = runes[i];
        let out_idx = last - i;
        if tok == '\\' && i != last {
            out[out_idx - 1] = tok;
            out[out_idx] = runes[i + 1];
            i += 2;
        } else {
            out[out_idx] = tok;
            i += 1;
        }
    }
    out.into_iter().collect()
}

fn trim_suffix(pattern: &str, value: &str, greedy: bool) -> Res<String> {
    // Regular expressions find leftmost matches only, so the shortest or
    // longest suffix is found by reversing pattern and value.
    let rp = reverse_pattern(pattern);
    let rv: String = value.chars().rev().collect();
    let s = trim_prefix(&rp, &rv, greedy)?;
    Ok(s.chars().rev().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Vec<(String, String)> {
        vec![
            ("PWD".into(), "/home".into()),
            ("X".into(), "a.b.c".into()),
            ("E".into(), String::new()),
        ]
    }

    fn w(s: &str) -> String {
        Lexer::new('\\').process_word(s, &env()).unwrap()
    }

    #[test]
    fn prefix_suffix_replace() {
        assert_eq!(w("${X#*.}"), "b.c");
        assert_eq!(w("${X##*.}"), "c");
        assert_eq!(w("${X%.*}"), "a.b");
        assert_eq!(w("${X%%.*}"), "a");
        assert_eq!(w("${X/./-}"), "a-b.c");
        assert_eq!(w("${X//./-}"), "a-b-c");
        assert_eq!(w("${X/nomatch/-}"), "a.b.c");
        assert_eq!(w("${UNSET/a/b}"), "");
    }

    #[test]
    fn word_splitting() {
        let l = Lexer::new('\\');
        let e = vec![("V".to_string(), "a b".to_string())];
        assert_eq!(
            l.process_words("x $V 'c d' e\\ f", &e).unwrap(),
            ["x", "a", "b", "c d", "e f"]
        );
        assert_eq!(l.process_words("  ", &e).unwrap(), Vec::<String>::new());
        assert_eq!(
            l.process_words("cat <<  EOF > f", &e).unwrap(),
            ["cat", "<<  EOF", ">", "f"]
        );
        assert_eq!(l.process_word("a < b <<c", &e).unwrap(), "a < b <<c");
    }

    #[test]
    fn matches_only_found_names() {
        let (s, m) = Lexer::new('\\')
            .process_word_with_matches("$PWD $NOPE ${E:-x}", &env())
            .unwrap();
        assert_eq!(s, "/home  x");
        assert_eq!(m.into_iter().collect::<Vec<_>>(), ["E", "PWD"]);
    }

    #[test]
    fn backtick_escape() {
        let l = Lexer::new('`');
        assert_eq!(l.process_word("a`$PWD\\x", &env()).unwrap(), "a$PWD\\x");
    }

    #[test]
    fn error_messages() {
        let l = Lexer::new('\\');
        let e = l.process_word("${E:?must be set}", &env()).unwrap_err();
        assert_eq!(
            e.message,
            "failed to process \"${E:?must be set}\": E: must be set"
        );
        let e = l.process_word("${N?}", &env()).unwrap_err();
        assert!(
            e.message.ends_with("N: is not allowed to be unset"),
            "{}",
            e.message
        );
        let e = l.process_word("${N", &env()).unwrap_err();
        assert!(
            e.message.ends_with("syntax error: missing '}'"),
            "{}",
            e.message
        );
    }

    #[test]
    fn a_doubling_chain_stops_at_the_word_limit() {
        // a0 is 1,000 bytes; each next one is ten of the previous.
        let mut env: Vec<(String, String)> = vec![("a0".into(), "x".repeat(1000))];
        let lx = Lexer::default();
        let mut failed = None;
        for i in 1..12 {
            let word = format!("${{a{}}}", i - 1).repeat(10);
            match lx.process_word(&word, &env) {
                Ok(v) => env.push((format!("a{i}"), v)),
                Err(e) => {
                    failed = Some((i, e.message));
                    break;
                }
            }
        }
        let (i, msg) = failed.expect("the chain must hit the limit");
        // a2 is 100,000 bytes (under 128 KiB), a3 would be 1,000,000.
        assert_eq!(i, 3, "{msg}");
        assert!(msg.contains("grows past 131072 bytes"), "{msg}");
        assert!(msg.starts_with("failed to process \"${a2}${a2}"), "{msg}");
        assert!(
            msg.len() < 400,
            "the message quotes a long word short: {msg}"
        );
    }

    #[test]
    fn replace_all_is_bounded_before_it_builds_the_word() {
        let env = vec![("v".to_string(), "ab".repeat(1000))];
        let lx = Lexer::default().max_word(10_000);
        // 1,000 matches of "a", each replaced by 100 bytes: 102,000.
        let word = format!("${{v//a/{}}}", "y".repeat(100));
        let e = lx.process_word(&word, &env).unwrap_err();
        assert!(e.message.contains("grows past 10000 bytes"), "{e}");
        // The same under the limit works.
        let ok = Lexer::default().process_word(&word, &env).unwrap();
        assert_eq!(ok.len(), 1000 * 101);
    }

    #[test]
    fn quoted_variables_count_towards_the_limit() {
        let env = vec![("v".to_string(), "z".repeat(600))];
        let lx = Lexer::default().max_word(1000);
        assert!(lx.process_word("\"$v\"", &env).is_ok());
        let e = lx.process_word("\"$v$v\"", &env).unwrap_err();
        assert!(e.message.contains("grows past 1000 bytes"), "{e}");
        let e = lx.process_word("$v$v", &env).unwrap_err();
        assert!(e.message.contains("grows past 1000 bytes"), "{e}");
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let s = "${a:-".repeat(100_000);
        assert!(Lexer::new('\\').process_word(&s, &env()).is_err());
    }

    #[test]
    fn skip_unset_keeps_references() {
        let l = Lexer::new('\\').skip_unset_env(true);
        assert_eq!(
            l.process_word("$A ${B} ${C:-x} $PWD", &env()).unwrap(),
            "$A ${B} ${C:-x} /home"
        );
    }
}
