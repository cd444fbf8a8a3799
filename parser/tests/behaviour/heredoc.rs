use kiln_parser::{parse_stages, Heredoc, InstructionKind};

use crate::parse_ok;

fn doc(name: &str, content: &str, expand: bool, chomp: bool, fd: Option<u32>) -> Heredoc {
    Heredoc {
        name: name.into(),
        content: content.into(),
        expand,
        chomp,
        fd,
    }
}

/// The cases of BuildKit's TestParseExtractsHeredoc.
#[test]
fn extracts_heredocs_like_buildkit() {
    // In BuildKit the parser keeps the `INVALID` line of this test as an
    // (unknown) instruction that only the typed layer rejects; kiln rejects
    // unknown instructions while parsing, so that line is left out.
    let src = "
FROM alpine:3.6

ENV NAME=me

RUN ls

USER <<INVALID

RUN <<EMPTY
EMPTY

RUN 3<<EMPTY2
EMPTY2

RUN \"<<NOHEREDOC\"

RUN <<INDENT
\tfoo
\tbar
INDENT

RUN <<-UNINDENT
\tbaz
\tquux
UNINDENT

RUN <<-UNINDENT2
\tbaz
\tquux
\tUNINDENT2

RUN <<-EXPAND
\texpand $NAME
EXPAND

RUN <<-'NOEXPAND'
\tdon't expand $NAME
NOEXPAND

RUN <<COPY
echo hello world
echo foo bar
COPY

RUN <<COMMENT
# internal comment
echo hello world
echo foo bar # trailing comment
COMMENT

RUN --mount=type=cache,target=/foo <<MOUNT
echo hello
MOUNT

COPY <<FILE1 <<FILE2 /dest
content 1
FILE1
content 2
FILE2

COPY <<EOF /quotes
\"foo\"
'bar'
EOF

COPY <<X <<Y /dest
Y
X
X
Y

RUN <<COMPLEX python3
print('hello world')
COMPLEX

COPY <<file.txt /dest
hello world
file.txt

RUN <<eo'f'
echo foo
eof

RUN <<eo\\'f
echo foo
eo'f

RUN <<'e'o\\'f
echo foo
eo'f

RUN <<'one two'
echo bar
one two

RUN <<$EOF
$EOF

RUN <<  EOF
EOF

RUN <<  EOF  > foo
EOF
\t";
    let want: Vec<Vec<Heredoc>> = vec![
        vec![],
        vec![],
        vec![],
        vec![doc("EMPTY", "", true, false, None)],
        vec![doc("EMPTY2", "", true, false, Some(3))],
        vec![],
        vec![doc("INDENT", "\tfoo\n\tbar\n", true, false, None)],
        vec![doc("UNINDENT", "\tbaz\n\tquux\n", true, true, None)],
        vec![doc("UNINDENT2", "\tbaz\n\tquux\n", true, true, None)],
        vec![doc("EXPAND", "\texpand $NAME\n", true, true, None)],
        vec![doc("NOEXPAND", "\tdon't expand $NAME\n", false, true, None)],
        vec![doc(
            "COPY",
            "echo hello world\necho foo bar\n",
            true,
            false,
            None,
        )],
        vec![doc(
            "COMMENT",
            "# internal comment\necho hello world\necho foo bar # trailing comment\n",
            true,
            false,
            None,
        )],
        vec![doc("MOUNT", "echo hello\n", true, false, None)],
        vec![
            doc("FILE1", "content 1\n", true, false, None),
            doc("FILE2", "content 2\n", true, false, None),
        ],
        vec![doc("EOF", "\"foo\"\n'bar'\n", true, false, None)],
        vec![
            doc("X", "Y\n", true, false, None),
            doc("Y", "X\n", true, false, None),
        ],
        vec![doc("COMPLEX", "print('hello world')\n", true, false, None)],
        vec![doc("file.txt", "hello world\n", true, false, None)],
        vec![doc("eof", "echo foo\n", false, false, None)],
        vec![doc("eo'f", "echo foo\n", true, false, None)],
        vec![doc("eo'f", "echo foo\n", false, false, None)],
        vec![doc("one two", "echo bar\n", false, false, None)],
        vec![doc("$EOF", "", true, false, None)],
        vec![doc("EOF", "", true, false, None)],
        vec![doc("EOF", "", true, false, None)],
    ];
    let df = parse_ok(src);
    let got: Vec<Vec<Heredoc>> = df
        .nodes
        .iter()
        .skip(1)
        .map(|n| n.heredocs.clone())
        .collect();
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "instruction {}: {}", i + 2, df.nodes[i + 1].original);
    }
}

#[test]
fn json_form_has_no_heredocs() {
    let df = parse_ok("FROM a\nRUN [\"whoami\"]\nRUN [\"<<EOF\"]\nRUN [\"<<'EOF'\"]\n");
    assert!(df.nodes.iter().all(|n| n.heredocs.is_empty()));
    assert_eq!(
        df.nodes.len(),
        4,
        "no lines were swallowed as heredoc bodies"
    );
}

#[test]
fn heredoc_spans_cover_the_body_and_crlf_is_kept() {
    let src = "FROM a\r\nRUN <<EOF\r\necho hi\r\nEOF\r\nRUN after\r\n";
    let df = parse_ok(src);
    assert_eq!(df.nodes[1].span.line, 2);
    assert_eq!(df.nodes[1].span.end_line, 4);
    assert_eq!(df.nodes[1].heredocs[0].content, "echo hi\r\n");
    assert_eq!(df.nodes[2].args, ["after"]);
    assert_eq!(df.nodes[2].span.line, 5);
}

#[test]
fn onbuild_heredoc() {
    let df = parse_ok("FROM a\nONBUILD RUN <<EOF\necho x\nEOF\n");
    let n = &df.nodes[1];
    assert_eq!(n.heredocs[0].content, "echo x\n");
    assert_eq!(n.inner.as_ref().unwrap().heredocs, n.heredocs);
}

#[test]
fn chomp_applies_to_content_on_request() {
    let df = parse_ok("FROM a\nCOPY <<-EOT /x\n\thello\n\t\tworld\n\tEOT\n");
    let h = &df.nodes[1].heredocs[0];
    assert_eq!(h.content, "\thello\n\t\tworld\n");
    assert_eq!(h.effective_content(), "hello\nworld\n");
}

#[test]
fn typed_copy_and_run_get_heredocs() {
    let df = parse_ok(
        "FROM a\nCOPY <<one.txt src.txt <<'two' /dest/\n1\none.txt\n2\ntwo\nRUN 3<<A cat /dev/fd/3\nx\nA\n",
    );
    let st = parse_stages(&df).unwrap();
    let ins = &st.stages[0].instructions;
    let InstructionKind::Copy(c) = &ins[0].kind else {
        panic!("{:?}", ins[0].kind)
    };
    assert_eq!(c.dest, "/dest/");
    assert_eq!(c.sources, ["src.txt"]);
    assert_eq!(c.heredocs.len(), 2);
    assert_eq!(
        (c.heredocs[0].name.as_str(), c.heredocs[0].content.as_str()),
        ("one.txt", "1\n")
    );
    assert!(!c.heredocs[1].expand);
    let InstructionKind::Run(r) = &ins[1].kind else {
        panic!("{:?}", ins[1].kind)
    };
    assert_eq!(r.heredocs[0].fd, Some(3));
    assert_eq!(r.heredocs[0].content, "x\n");
}

#[test]
fn heredoc_as_destination_is_an_error() {
    let df = parse_ok("FROM a\nCOPY a <<EOF\nx\nEOF\n");
    let e = parse_stages(&df).unwrap_err();
    assert_eq!(e.message, "COPY cannot accept a heredoc as a destination");
}

#[test]
fn unterminated_heredoc() {
    let src = "FROM a\n\n\nRUN <<EOF\necho never ends\n";
    let e = kiln_parser::parse(src).unwrap_err();
    assert_eq!(e.message, "unterminated heredoc EOF started at line 4");
    assert_eq!((e.span.line, e.span.column, e.span.end_line), (4, 5, 5));
    let r = e.render(src, "Dockerfile");
    assert_eq!(
        r,
        "Dockerfile:4:5: unterminated heredoc EOF started at line 4\n  4 | RUN <<EOF\n    |     ^^^^^\n  5 | echo never ends\n  hint: end the heredoc with a line containing only EOF\n"
    );
    // The second of two heredocs is the unterminated one.
    let e = kiln_parser::parse("FROM a\nCOPY <<A <<-'B' /d\na\nA\n").unwrap_err();
    assert_eq!(e.message, "unterminated heredoc B started at line 2");
    assert_eq!(e.span.column, 10);
}
