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

#[test]
fn a_line_over_buildkits_limit_is_refused_naming_the_line() {
    // BuildKit's own case: a LABEL value of 64 KiB on the third line.
    let label = "a".repeat(65_536);
    let src = format!("\n\t\tFROM image\n\t\tLABEL test={label}\n");
    let err = kiln_parser::parse(&src).unwrap_err();
    assert!(
        err.message
            .starts_with("dockerfile line greater than max allowed size of 65535"),
        "{}",
        err.message
    );
    assert_eq!(err.span.line, 3);
    let shown = err.render(&src, "Dockerfile");
    assert!(shown.len() < 1_000, "one screen, not the line: {shown}");
    assert!(shown.starts_with("Dockerfile:3:1: dockerfile line greater"));
}

#[test]
fn the_line_limit_is_exact_and_counts_comments_and_heredocs() {
    let at = |n: usize| "b".repeat(n);
    // 65,535 bytes before the newline is the longest line BuildKit reads.
    let ok = format!("FROM a\nRUN {}\n", at(65_535 - 4));
    assert!(kiln_parser::parse(&ok).is_ok());
    let ok_crlf_last = format!("FROM a\r\nRUN {}", at(65_535 - 4));
    assert!(kiln_parser::parse(&ok_crlf_last).is_ok());
    for long in [
        format!("FROM a\nRUN {}\n", at(65_536 - 4)),
        format!("FROM a\n# {}\n", at(65_536 - 2)),
        format!("FROM a\nRUN <<EOF\n{}\nEOF\n", at(65_536)),
        // CR counts: it is part of the line to BuildKit's scanner.
        format!("FROM a\r\nRUN {}\r\n", at(65_535 - 4)),
    ] {
        let err = kiln_parser::parse(&long).unwrap_err();
        assert!(
            err.message.contains("max allowed size of 65535"),
            "{}",
            err.message
        );
    }
}
