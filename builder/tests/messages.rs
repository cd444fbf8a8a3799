//! Error messages through the binary: a file that is not UTF-8 is named
//! with its line, column and byte; no message says the same thing twice.

mod common;

use common::{write_tree, Kiln};

/// Writes `files` (path, bytes) under `dir`.
fn write_bytes(dir: &std::path::Path, files: &[(&str, &[u8])]) {
    for (p, b) in files {
        std::fs::write(dir.join(p), b).unwrap();
    }
}

#[test]
fn a_dockerfile_that_is_not_utf8_is_named_by_line_column_and_byte() {
    let k = Kiln::new();
    let ctx = tempfile::tempdir().unwrap();
    let df: &[u8] = b"FROM scratch\nLABEL a=caf\xe9\n";
    write_bytes(ctx.path(), &[("Dockerfile", df)]);
    let dir = ctx.path().to_str().unwrap();
    let want = "Dockerfile:2:12: invalid UTF-8: byte 0xe9\n  2 | LABEL a=caf\u{fffd}\n";
    let r = k.run(&["build", "--progress=plain", dir]).fails();
    assert!(r.stderr().contains(want), "{}", r.stderr());
    assert!(
        !r.stderr().contains("stream did not contain"),
        "{}",
        r.stderr()
    );
    let r = k.run(&["parse", dir]).fails();
    assert!(
        r.stderr().contains(&format!("{dir}/{want}")),
        "{}",
        r.stderr()
    );
    // From stdin, the name is "-".
    let mut c = k.cmd();
    c.args(["build", "--progress=plain", "-f", "-", dir]);
    c.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), df).unwrap();
    let out = child.wait_with_output().unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(e.contains("-:2:12: invalid UTF-8: byte 0xe9"), "{e}");
}

#[test]
fn a_dockerignore_that_is_not_utf8_is_named_too() {
    let k = Kiln::new();
    let ctx = tempfile::tempdir().unwrap();
    write_tree(ctx.path(), &[("Dockerfile", "FROM scratch\nCOPY . /\n")]);
    write_bytes(ctx.path(), &[(".dockerignore", b"*.log\n\n  tmp\xff\n")]);
    let r = k
        .run(&["build", "--progress=plain", ctx.path().to_str().unwrap()])
        .fails();
    assert!(
        r.stderr()
            .contains(".dockerignore:3:6: invalid UTF-8: byte 0xff\n"),
        "{}",
        r.stderr()
    );
}

/// How many times `needle` occurs in `hay`.
fn count(hay: &str, needle: &str) -> usize {
    hay.matches(needle).count()
}

#[test]
fn store_errors_are_said_once() {
    let k = Kiln::new();
    let dir = tempfile::tempdir().unwrap();
    // Not a tar: the codec's message must not come back as its own cause.
    let junk = dir.path().join("junk.tar");
    std::fs::write(&junk, vec![b'x'; 2048]).unwrap();
    let r = k.run(&["import", junk.to_str().unwrap(), "junk:1"]).fails();
    let e = r.stderr();
    assert_eq!(count(&e, "malformed tar stream"), 1, "{e}");
    assert_eq!(e.lines().count(), 1, "{e}");
    // A bad digest in a reference: the digest's message once.
    let r = k
        .run(&["import", junk.to_str().unwrap(), "x@sha256:abc"])
        .fails();
    assert_eq!(count(&r.stderr(), "invalid digest"), 1, "{}", r.stderr());
}

#[test]
fn save_to_a_missing_directory_names_the_file_asked_for() {
    let Some(k) = with_busybox() else { return };
    let r = k
        .run(&["save", "-o", "/nonexistent-kiln/dir/x.tar", "busybox"])
        .fails();
    let e = r.stderr();
    assert!(
        e.contains("cannot write /nonexistent-kiln/dir/x.tar: No such file or directory"),
        "{e}"
    );
    assert!(!e.contains(".tmp"), "{e}");
}

#[test]
fn a_failed_step_says_why_on_its_progress_line() {
    let Some(k) = with_busybox() else { return };
    let ctx = tempfile::tempdir().unwrap();
    write_tree(ctx.path(), &[("Dockerfile", "FROM busybox\nRUN exit 3\n")]);
    let r = k
        .run(&["build", "--progress=plain", ctx.path().to_str().unwrap()])
        .fails();
    let e = r.stderr();
    let why = "process \"/bin/sh -c exit 3\" did not complete successfully: exit code: 3";
    assert!(e.contains(&format!("#3 ERROR: {why}\n")), "{e}");
    assert!(!e.contains("ERROR: Dockerfile:2"), "{e}");
    assert_eq!(count(&e, "Dockerfile:2"), 1, "{e}");
}

fn with_busybox() -> Option<Kiln> {
    if !common::require(common::is_root(), "builds need root") {
        return None;
    }
    let k = Kiln::new();
    k.with_busybox().then_some(k)
}

#[test]
fn copy_from_its_own_stage_index_fails_instead_of_waiting_forever() {
    let k = Kiln::new();
    for (df, n) in [
        ("FROM scratch\nCOPY --from=0 /x /y\n", 0),
        ("FROM scratch\nCOPY --from=1 /x /y\nFROM scratch\n", 1),
    ] {
        let ctx = tempfile::tempdir().unwrap();
        write_tree(ctx.path(), &[("Dockerfile", df)]);
        let mut child = k
            .cmd()
            .args(["build", "--progress=plain", ctx.path().to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                child.kill().unwrap();
                panic!("{df:?}: the build is still waiting after 30s");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let out = child.wait_with_output().unwrap();
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            e.contains(&format!(
                "Dockerfile:2: COPY --from={n} refers to stage {n}, which is not before this one"
            )),
            "{e}"
        );
    }
}
