//! Go's `strconv.Quote`, needed to print the s-expression format that
//! BuildKit's parser tests use.

use std::fmt::Write;

/// Quotes `s` the way Go's `strconv.Quote` does: double quotes, `\"` and
/// `\\`, the C escapes `\a \b \f \n \r \t \v`, other control characters as
/// `\xNN`, non-printable characters as `\uNNNN` / `\UNNNNNNNN`, and
/// printable Unicode as is.
///
/// "Printable" follows Go's `unicode.IsPrint` for everything a Dockerfile
/// realistically contains (controls, format characters such as U+200B and
/// U+FEFF, non-ASCII spaces, private use, non-characters); exotic
/// unassigned code points are treated as printable.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if is_print(c) => out.push(c),
            c if (c as u32) < 0x80 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if (c as u32) < 0x10000 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\U{:08x}", c as u32);
            }
        }
    }
    out.push('"');
    out
}

/// Go's `%q` of a string slice: `["a" "b"]`.
pub fn go_quote_slice(items: &[String]) -> String {
    let mut out = String::from("[");
    for (i, s) in items.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(&go_quote(s));
    }
    out.push(']');
    out
}

fn is_print(c: char) -> bool {
    let u = c as u32;
    if u < 0x20 || (0x7f..0xa1).contains(&u) || u == 0xad {
        return false;
    }
    if c == ' ' {
        return true;
    }
    !matches!(u,
        0x0600..=0x0605 | 0x061c | 0x06dd | 0x070f | 0x1680 | 0x180e
        | 0x2000..=0x200f | 0x2028..=0x202f | 0x205f..=0x206f | 0x3000
        | 0xd800..=0xf8ff | 0xfdd0..=0xfdef | 0xfeff | 0xfff9..=0xfffb
        | 0xe0000..=0xe007f | 0xf0000..=0x10ffff)
        && (u & 0xfffe) != 0xfffe
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_like_go() {
        assert_eq!(go_quote("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(go_quote("\u{0}\t\n♥"), r#""\x00\t\n♥""#);
        assert_eq!(go_quote("\u{feff}\u{a0}"), r#""\ufeff\u00a0""#);
        assert_eq!(
            go_quote_slice(&["--a=b".into(), "c".into()]),
            r#"["--a=b" "c"]"#
        );
    }
}
