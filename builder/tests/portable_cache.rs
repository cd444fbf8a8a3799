//! `--cache-to` / `--cache-from type=local`: a cache exported on one root
//! makes a fresh root's build fully cached with the same image; exporting
//! twice writes the same bytes; a tampered cache gives a warning and a
//! rebuild, never a wrong image.

mod common;

use std::fs;
use std::path::Path;

use common::{require, step_outcomes, write_tree, Kiln};

fn with_busybox_from(src: &Kiln, dst: &Kiln, tmp: &Path) {
    // The same base image (same ID) on both roots, as a registry would give.
    let archive = tmp.join("busybox.tar");
    src.run(&[
        "save",
        "--format",
        "oci",
        "-o",
        archive.to_str().unwrap(),
        "busybox:latest",
    ])
    .ok();
    dst.run(&["load", "-i", archive.to_str().unwrap()]).ok();
}

fn tree_digest(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                todo.push(e.path());
            } else {
                out.push((
                    e.path().strip_prefix(dir).unwrap().display().to_string(),
                    fs::read(e.path()).unwrap(),
                ));
            }
        }
    }
    out.sort();
    out
}

/// Two roots with the same busybox (same image ID), as a registry would
/// give two machines, and a scratch dir; `None` (after saying why) when
/// this machine cannot build.
fn two_roots() -> Option<(Kiln, Kiln, tempfile::TempDir)> {
    if !require(common::is_root(), "kiln build runs containers: needs root") {
        return None;
    }
    let a = Kiln::new();
    if !a.with_busybox() {
        return None;
    }
    let b = Kiln::new();
    let tmp = tempfile::tempdir().unwrap();
    with_busybox_from(&a, &b, tmp.path());
    Some((a, b, tmp))
}

#[test]
fn a_fresh_root_hits_an_exported_cache() {
    let Some((a, b, tmp)) = two_roots() else {
        return;
    };
    let ctx = tempfile::tempdir().unwrap();
    write_tree(
        ctx.path(),
        &[
            (
                "Dockerfile",
                "FROM busybox AS tool\nRUN echo tool > /tool\nFROM busybox\nCOPY app.txt /app/\nRUN cat /app/app.txt > /copy\nCOPY --from=tool /tool /tool\nCMD [\"cat\", \"/copy\"]\n",
            ),
            ("app.txt", "hello\n"),
        ],
    );
    let c = ctx.path().to_str().unwrap();
    let cache1 = tmp.path().join("cache1");
    let cache2 = tmp.path().join("cache2");
    let to1 = format!("type=local,dest={},mode=max", cache1.display());
    let to2 = format!("type=local,dest={},mode=max", cache2.display());
    let id_a = a
        .run(&["build", "-q", "--cache-to", &to1, "-t", "app:1", c])
        .ok()
        .stdout();
    a.run(&["build", "-q", "--cache-to", &to2, "-t", "app:1", c])
        .ok();
    assert_eq!(
        tree_digest(&cache1),
        tree_digest(&cache2),
        "two exports of one state differ"
    );

    let from1 = format!("type=local,src={}", cache1.display());
    let r = b
        .run(&[
            "build",
            "--progress=plain",
            "--cache-from",
            &from1,
            "-t",
            "app:1",
            c,
        ])
        .ok();
    let steps = common::cache_steps(&r.stderr());
    assert!(!steps.is_empty());
    assert!(
        steps.iter().all(|(_, o)| o == "CACHED"),
        "{steps:?}\n{}",
        r.stderr()
    );
    let id_b = b.run(&["build", "-q", "-t", "app:1", c]).ok().stdout();
    assert_eq!(id_a, id_b, "the same image on both roots");
    // The image runs on the root that never built it.
    let out = b.run(&["run", "--rm", "app:1"]).ok().stdout();
    assert_eq!(out, "hello\n");

    // A missing cache is a warning, not a failure.
    let r = b
        .run(&[
            "build",
            "-q",
            "--cache-from",
            "type=local,src=/nonexistent/cache",
            c,
        ])
        .ok();
    assert!(r.stderr().contains("no such cache"), "{}", r.stderr());
}

#[test]
fn a_tampered_cache_is_rebuilt_not_trusted() {
    let Some((a, b, tmp)) = two_roots() else {
        return;
    };
    let ctx = tempfile::tempdir().unwrap();
    write_tree(
        ctx.path(),
        &[("Dockerfile", "FROM busybox\nRUN echo genuine > /f\n")],
    );
    let c = ctx.path().to_str().unwrap();
    let cache = tmp.path().join("cache");
    let to = format!("type=local,dest={},mode=max", cache.display());
    a.run(&["build", "-q", "--cache-to", &to, c]).ok();
    // Flip a byte in every layer blob (the small documents stay intact).
    for e in fs::read_dir(kiln_store::oci_layout_blobs(&cache)).unwrap() {
        let p = e.unwrap().path();
        let mut bytes = fs::read(&p).unwrap();
        if bytes.first() == Some(&b'{') {
            continue;
        }
        let n = bytes.len() / 2;
        bytes[n] ^= 0xff;
        let mut perm = fs::metadata(&p).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perm.set_readonly(false);
        fs::set_permissions(&p, perm).unwrap();
        fs::write(&p, bytes).unwrap();
    }
    let from = format!("type=local,src={}", cache.display());
    let out = tempfile::tempdir().unwrap();
    let spec = format!("type=local,dest={}", out.path().display());
    let r = b
        .run(&[
            "build",
            "--progress=plain",
            "--cache-from",
            &from,
            "--output",
            &spec,
            c,
        ])
        .ok();
    assert!(r.stderr().contains("rejected"), "{}", r.stderr());
    let steps = step_outcomes(&r.stderr());
    assert!(
        steps
            .iter()
            .any(|(l, o)| l.contains("RUN echo genuine") && o == "RAN"),
        "{steps:?}"
    );
    assert_eq!(
        fs::read_to_string(out.path().join("f")).unwrap(),
        "genuine\n"
    );
}
