//! A Dockerfile or .dockerignore that is not UTF-8: refused with the line,
//! the column and the byte, rendered on one screen with a caret under it.

use kiln_parser::decode;

#[test]
fn dockerfile_with_a_stray_byte_names_line_column_and_byte() {
    let bytes = b"FROM busybox\nRUN echo caf\xc3\xa9 \xff ok\n";
    let e = decode(bytes).unwrap_err();
    assert_eq!((e.span.line, e.span.column), (2, 15));
    let shown = String::from_utf8_lossy(bytes);
    assert_eq!(
        e.render(&shown, "Dockerfile"),
        "Dockerfile:2:15: invalid UTF-8: byte 0xff\n\
         \x20 2 | RUN echo caf\u{e9} \u{fffd} ok\n\
         \x20   |               ^\n\
         \x20 hint: the file must be UTF-8 text; convert it, e.g. with iconv\n"
    );
}

#[test]
fn latin1_and_truncated_sequences() {
    // "é" in Latin-1 is 0xe9, which starts a 3-byte sequence that "t" ends.
    let e = decode(b"# syntax=x\nLABEL a=caf\xe9t\n").unwrap_err();
    assert_eq!((e.span.line, e.span.column), (2, 12));
    assert_eq!(e.message, "invalid UTF-8: byte 0xe9");
    // Cut in the middle of "€" (e2 82 ac) at the end of the file.
    let e = decode(b"FROM a\nRUN x\xe2\x82").unwrap_err();
    assert_eq!((e.span.line, e.span.column), (2, 6));
    assert_eq!(
        e.message,
        "invalid UTF-8: the file ends inside a character (bytes 0xe2 0x82)"
    );
    // A BOM is not a column; a surrogate half is not UTF-8.
    let e = decode(b"\xef\xbb\xbfFROM \xed\xa0\x80").unwrap_err();
    assert_eq!((e.span.line, e.span.column), (1, 6));
    assert_eq!(e.message, "invalid UTF-8: byte 0xed");
}

#[test]
fn valid_text_is_returned_unchanged() {
    let src = "\u{feff}FROM a\nRUN echo \u{1F600} \u{e9}\n";
    assert_eq!(decode(src.as_bytes()).unwrap(), src);
    assert_eq!(decode(b"").unwrap(), "");
}

#[test]
fn dockerignore_bytes_are_checked_the_same_way() {
    let e = decode(b"node_modules\n*.log\nbuild\xc0\xafx\n").unwrap_err();
    assert_eq!((e.span.line, e.span.column), (3, 6));
    assert_eq!(e.message, "invalid UTF-8: byte 0xc0");
    assert!(e
        .render(
            &String::from_utf8_lossy(b"node_modules\n*.log\nbuild\xc0\xafx\n"),
            ".dockerignore"
        )
        .starts_with(".dockerignore:3:6: invalid UTF-8: byte 0xc0\n"));
}
