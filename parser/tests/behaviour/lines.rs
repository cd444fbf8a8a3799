//! Line handling: continuations, comments, whitespace, CRLF, spans, JSON.

use crate::parse_ok;

#[test]
fn keywords_are_case_insensitive() {
    let df = parse_ok("from a\nRuN echo\nCopy --FROM=x a b\n");
    let kws: Vec<&str> = df.nodes.iter().map(|n| n.keyword.as_str()).collect();
    assert_eq!(kws, ["from", "run", "copy"]);
    assert_eq!(df.nodes[2].flags, ["--FROM=x"]);
}

#[test]
fn comments_inside_continuations_are_dropped_and_spans_cover_them() {
    let src = "FROM a\n  RUN apt-get update \\\n# comment\n    && apt-get install x \\\n\n    && done\nRUN next\n";
    let df = parse_ok(src);
    let run = &df.nodes[1];
    assert_eq!(
        run.args,
        ["apt-get update     && apt-get install x     && done"]
    );
    assert_eq!(
        (run.span.line, run.span.column, run.span.end_line),
        (2, 3, 6)
    );
    assert_eq!(df.nodes[2].span.line, 7);
    assert_eq!(df.warnings.len(), 1, "the empty continuation line warns");
    assert!(df.warnings[0]
        .message
        .starts_with("Empty continuation line found in: RUN apt-get"));
}

#[test]
fn crlf_and_trailing_escape_at_eof() {
    let df = parse_ok("FROM a\r\nRUN a \\\r\n  b \\");
    assert_eq!(df.nodes[1].args, ["a   b"]);
    assert_eq!(df.nodes[1].original, "RUN a   b ");
}

#[test]
fn escaped_escape_is_not_a_continuation() {
    let df = parse_ok("FROM a\nENV C x\\\\\nENV D y\n");
    assert_eq!(df.nodes[1].args, ["C", "x\\\\", ""]);
    assert_eq!(df.nodes.len(), 3);
}

#[test]
fn json_and_shell_forms() {
    let df = parse_ok(
        "FROM a\nCMD [\"a\", \"b c\"]\nCMD a  b\nENTRYPOINT [\"x\"] trailing\nCMD [\"a\", 'b']\n",
    );
    assert!(df.nodes[1].json);
    assert_eq!(df.nodes[1].args, ["a", "b c"]);
    assert!(!df.nodes[2].json);
    assert_eq!(df.nodes[2].args, ["a  b"]);
    assert!(
        df.nodes[3].json,
        "text after the JSON value is ignored, as Go's json.Decoder does"
    );
    assert!(!df.nodes[4].json);
}

#[test]
fn non_string_json_array_is_an_error() {
    let e = kiln_parser::parse("FROM a\nCMD [\"a\", 1]\n").unwrap_err();
    assert_eq!(
        e.message,
        "when using JSON array syntax, arrays must be comprised of strings only"
    );
    assert_eq!(e.span.line, 2);
}

#[test]
fn flags_end_at_double_dash_and_at_the_first_non_flag() {
    let df =
        parse_ok("FROM a\nCOPY --from=b -- --weird /x\nRUN --network=none echo --not-a-flag\n");
    assert_eq!(df.nodes[1].flags, ["--from=b"]);
    assert_eq!(df.nodes[1].args, ["--weird", "/x"]);
    assert_eq!(df.nodes[2].flags, ["--network=none"]);
    assert_eq!(df.nodes[2].args, ["echo --not-a-flag"]);
}

#[test]
fn onbuild_sexpr_and_inner_span() {
    let df = parse_ok("FROM a\nONBUILD   COPY --from=b . /\n");
    assert_eq!(
        df.nodes[1].to_sexpr(),
        "(onbuild (copy [\"--from=b\"] \".\" \"/\"))"
    );
    let inner = df.nodes[1].inner.as_ref().unwrap();
    assert_eq!((inner.span.line, inner.span.column), (2, 11));
}

#[test]
fn env_forms() {
    let df = parse_ok("FROM a\nENV A=1 B=\"two words\"\nENV LEGACY some value\nLABEL a.b=c\n");
    assert_eq!(df.nodes[1].args, ["A", "1", "=", "B", "\"two words\"", "="]);
    assert_eq!(df.nodes[2].args, ["LEGACY", "some value", ""]);
    assert_eq!(df.nodes[3].args, ["a.b", "c", "="]);
}

#[test]
fn to_json_is_stable_and_has_spans() {
    let df = parse_ok("FROM a AS b\nRUN echo\n");
    let j = df.to_json();
    assert_eq!(j["directives"]["escape"], "\\");
    assert_eq!(j["nodes"][0]["keyword"], "from");
    assert_eq!(j["nodes"][0]["args"][2], "b");
    assert_eq!(j["nodes"][1]["span"]["line"], 2);
    assert_eq!(j["nodes"][1]["span"]["column"], 1);
    assert_eq!(j["nodes"][1]["json"], false);
    assert_eq!(j["warnings"].as_array().map(Vec::len), Some(0));
}

#[test]
fn empty_file_is_an_error() {
    let e = kiln_parser::parse("# just a comment\n\n").unwrap_err();
    assert_eq!(e.message, "file with no instructions");
}
