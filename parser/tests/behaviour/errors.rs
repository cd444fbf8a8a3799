//! Every user-facing parse error renders on one screen with line, column,
//! caret and hint where one is known.

use kiln_parser::parse;

#[test]
fn unknown_instruction_with_suggestion() {
    let src = "FROM a\n\nRUNN x\n";
    let e = parse(src).unwrap_err();
    assert_eq!(e.message, "unknown instruction: RUNN");
    assert_eq!(e.hint.as_deref(), Some("did you mean RUN?"));
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
fn unknown_instruction_without_suggestion_and_indented() {
    let src = "FROM a\n\tfrobnicate x\n";
    let e = parse(src).unwrap_err();
    assert_eq!(e.message, "unknown instruction: frobnicate");
    assert_eq!(e.hint, None);
    assert_eq!(e.span.column, 2);
    assert_eq!(
        e.render(src, "Dockerfile"),
        "Dockerfile:2:2: unknown instruction: frobnicate\n  2 | \tfrobnicate x\n    | \t^^^^^^^^^^\n"
    );
}

#[test]
fn multi_line_instruction_shows_its_lines() {
    let src = "FROM a\nCOPPY a \\\n  b \\\n  c\n";
    let e = parse(src).unwrap_err();
    assert_eq!((e.span.line, e.span.end_line), (2, 4));
    let r = e.render(src, "Dockerfile");
    assert_eq!(
        r,
        "Dockerfile:2:1: unknown instruction: COPPY\n  2 | COPPY a \\\n    | ^^^^^\n  3 |   b \\\n  4 |   c\n  hint: did you mean COPY?\n"
    );
}

#[test]
fn env_errors() {
    let e = parse("FROM a\nENV ONLYNAME\n").unwrap_err();
    assert_eq!(e.message, "ENV must have two arguments");
    assert!(e.hint.is_some());
    let e = parse("FROM a\nENV a=b c\n").unwrap_err();
    assert_eq!(
        e.message,
        "Syntax error - can't find = in \"c\". Must be of the form: name=value"
    );
}

#[test]
fn onbuild_chaining() {
    let e = parse("FROM a\nONBUILD ONBUILD RUN x\n").unwrap_err();
    assert_eq!(
        e.message,
        "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"
    );
}

#[test]
fn errors_never_panic_on_odd_positions() {
    // An error on the last line with no trailing newline, and a BOM.
    let src = "\u{feff}FROM a\nXX";
    let e = parse(src).unwrap_err();
    let r = e.render(src, "D");
    assert!(
        r.starts_with("D:2:1: unknown instruction: XX\n  2 | XX\n    | ^^\n"),
        "{r}"
    );
}
