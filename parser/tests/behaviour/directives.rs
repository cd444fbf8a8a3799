use kiln_parser::parse;

use crate::parse_ok;

#[test]
fn syntax_escape_check_are_read() {
    let df = parse_ok("# syntax=docker/dockerfile:1.7\n# escape=`\n# check=skip=JSONArgsRecommended\nFROM a\nRUN echo `\n  hi\n");
    assert_eq!(
        df.directives.syntax.as_deref(),
        Some("docker/dockerfile:1.7")
    );
    assert_eq!(
        df.directives.check.as_deref(),
        Some("skip=JSONArgsRecommended")
    );
    assert_eq!(df.directives.escape, '`');
    assert_eq!(df.nodes[1].args, ["echo   hi"]);
}

#[test]
fn directive_names_are_case_insensitive_and_spacing_is_free() {
    let df = parse_ok("#  ESCAPE  =  `  \nFROM a\n");
    assert_eq!(df.directives.escape, '`');
}

#[test]
fn directives_stop_after_a_blank_line_comment_or_instruction() {
    for src in [
        "\n# escape=`\nFROM a\n",
        "# a comment\n# escape=`\nFROM a\n",
        "FROM a\n# escape=`\n",
        "# unknown=1\n# escape=`\nFROM a\n",
    ] {
        let df = parse_ok(src);
        assert_eq!(df.directives.escape, '\\', "{src:?}");
    }
}

#[test]
fn bom_and_leading_whitespace_before_a_directive() {
    let df = parse_ok("\u{feff}  # escape=`\nFROM a\n");
    assert_eq!(df.directives.escape, '`');
}

#[test]
fn repeated_directive_is_an_error() {
    let e = parse("# syntax=a\n# syntax=b\nFROM a\n").unwrap_err();
    assert_eq!(e.message, "only one syntax parser directive can be used");
    assert_eq!(e.span.line, 2);
}

#[test]
fn invalid_escape_is_an_error() {
    let e = parse("# escape=x\nFROM a\n").unwrap_err();
    assert_eq!(e.message, "invalid escape token 'x' does not match ` or \\");
    assert_eq!(e.span.line, 1);
    assert!(e.hint.is_some());
}

#[test]
fn a_directive_after_instructions_is_a_comment() {
    let df = parse_ok("FROM a\n# syntax=x\n# syntax=y\n");
    assert_eq!(df.directives.syntax, None);
    assert_eq!(df.nodes.len(), 1);
}
