//! `kiln parse` through the binary: BuildKit's parser conformance cases
//! reproduced byte for byte, and diagnostics a person can act on.

mod common;

use common::Kiln;
use std::path::PathBuf;

fn conformance_dir() -> Option<PathBuf> {
    kiln_testkit::require_conformance().map(|d| d.join("buildkit/parser/testfiles"))
}

#[test]
fn sexpr_output_reproduces_every_buildkit_result_file() {
    let Some(dir) = conformance_dir() else {
        return;
    };
    let k = Kiln::new();
    let mut cases = 0;
    let mut failures = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let case = entry.unwrap().path();
        let expected = match std::fs::read_to_string(case.join("result")) {
            Ok(s) => s,
            Err(_) => continue,
        };
        cases += 1;
        let r = k.run(&[
            "parse",
            "--format",
            "sexpr",
            "-f",
            case.join("Dockerfile").to_str().unwrap(),
        ]);
        if !r.out.status.success() || r.stdout() != expected {
            failures.push(format!(
                "{}: exit {}\n--- expected\n{}--- got\n{}{}",
                case.display(),
                r.code(),
                expected,
                r.stdout(),
                r.stderr()
            ));
        }
    }
    assert_eq!(cases, 33, "expected the 33 BuildKit cases");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_typo_gives_line_column_caret_and_a_suggestion() {
    let k = Kiln::new();
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("Dockerfile"), "FROM busybox\nRUNN echo hi\n").unwrap();
    let r = k.run(&["parse", d.path().to_str().unwrap()]).fails();
    assert_eq!(r.code(), 1);
    let e = r.stderr();
    assert!(e.contains(":2:"), "line number missing: {e}");
    assert!(e.contains("RUNN echo hi"), "offending line missing: {e}");
    assert!(e.contains('^'), "caret missing: {e}");
    assert!(e.contains("did you mean RUN"), "suggestion missing: {e}");
    assert!(e.lines().count() < 25, "not one screen: {e}");
}

#[test]
fn an_unterminated_heredoc_and_an_unknown_flag_are_located() {
    let k = Kiln::new();
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("Dockerfile");
    std::fs::write(&f, "FROM busybox\nRUN <<EOF\necho hi\n").unwrap();
    let r = k.run(&["parse", "-f", f.to_str().unwrap()]).fails();
    assert_eq!(r.code(), 1);
    assert!(r.stderr().contains("EOF"), "{}", r.stderr());
    assert!(r.stderr().contains(":2"), "{}", r.stderr());

    std::fs::write(&f, "FROM busybox\nCOPY --chmood=755 a /b\n").unwrap();
    let r = k.run(&["parse", "-f", f.to_str().unwrap()]).fails();
    assert_eq!(r.code(), 1);
    assert!(r.stderr().contains("chmood"), "{}", r.stderr());
    assert!(r.stderr().contains(":2"), "{}", r.stderr());

    std::fs::write(&f, "FROM busybox\nRUN --mount=type=bind,target= true\n").unwrap();
    let r = k.run(&["parse", "-f", f.to_str().unwrap()]).fails();
    assert_eq!(r.code(), 1);
    assert!(r.stderr().contains(":2"), "{}", r.stderr());
}

#[test]
fn json_output_has_spans() {
    let k = Kiln::new();
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("Dockerfile"),
        "FROM busybox AS base\nRUN echo hi\n",
    )
    .unwrap();
    let r = k
        .run(&["parse", "--format", "json", d.path().to_str().unwrap()])
        .ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout()).unwrap();
    let text = v.to_string();
    assert!(text.contains("\"line\":2"), "{text}");
    assert!(text.contains("echo hi"), "{text}");
}
