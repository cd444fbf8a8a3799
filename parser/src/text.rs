//! Bytes to text: a Dockerfile or `.dockerignore` must be UTF-8, and when it
//! is not, the error says where (line, column) and which byte.
//!
//! BuildKit's parser works on bytes and passes invalid sequences through to
//! the instruction (a RUN gets them raw); kiln's parser works on text, so it
//! refuses such a file up front, naming the place instead of io's "stream
//! did not contain valid UTF-8".

use crate::{ParseError, Span};

/// `bytes` as text, or an error at the first byte that is not UTF-8. The
/// column counts characters, like every other [`Span`], so the error
/// renders (over [`String::from_utf8_lossy`] of the bytes, where the bad
/// sequence becomes one U+FFFD) with the caret under that byte.
pub fn decode(bytes: &[u8]) -> Result<&str, ParseError> {
    let err = match std::str::from_utf8(bytes) {
        Ok(s) => return Ok(s),
        Err(e) => e,
    };
    let good = &bytes[..err.valid_up_to()];
    // Valid by construction: the prefix before the first bad byte.
    let good = std::str::from_utf8(good).unwrap_or_default();
    let line_start = good.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line = good.matches('\n').count() + 1;
    let mut before = &good[line_start..];
    if line == 1 {
        before = before.strip_prefix('\u{feff}').unwrap_or(before);
    }
    let column = before.chars().count() + 1;
    let rest = &bytes[err.valid_up_to()..];
    let message = match err.error_len() {
        Some(1) => format!("invalid UTF-8: byte {}", hex_bytes(&rest[..1])),
        Some(n) => format!(
            "invalid UTF-8: incomplete character (bytes {})",
            hex_bytes(&rest[..n])
        ),
        None => format!(
            "invalid UTF-8: the file ends inside a character (bytes {})",
            hex_bytes(rest)
        ),
    };
    Err(ParseError::new(
        message,
        Span {
            line,
            column,
            end_line: line,
        },
    )
    .with_hint(Some(
        "the file must be UTF-8 text; convert it, e.g. with iconv".into(),
    )))
}

fn hex_bytes(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("0x{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_characters() {
        assert_eq!(decode(b"FROM a\n").unwrap(), "FROM a\n");
        let e = decode(b"FROM a\nRUN \xc3\xa9\xff\n").unwrap_err();
        assert_eq!((e.span.line, e.span.column), (2, 6));
        assert_eq!(e.message, "invalid UTF-8: byte 0xff");
        let e = decode(b"a\n\n  \xe2\x82x").unwrap_err();
        assert_eq!((e.span.line, e.span.column), (3, 3));
        assert_eq!(
            e.message,
            "invalid UTF-8: incomplete character (bytes 0xe2 0x82)"
        );
        let e = decode(b"\xef\xbb\xbfRUN \xfe").unwrap_err();
        assert_eq!((e.span.line, e.span.column), (1, 5));
        let e = decode(b"RUN x \xe2\x82").unwrap_err();
        assert_eq!(
            e.message,
            "invalid UTF-8: the file ends inside a character (bytes 0xe2 0x82)"
        );
    }
}
