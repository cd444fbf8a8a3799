//! `kiln build --explain` and `kiln cache why`: each kind of change is
//! named, with the input that changed, and a change to a file a step does
//! not read is never blamed on it.

mod common;

use std::fs;
use std::path::Path;

use common::{write_tree, Kiln};

fn setup() -> Option<Kiln> {
    common::root_with_busybox("kiln build runs containers: needs root")
}

fn explain(k: &Kiln, dir: &Path, extra: &[&str]) -> String {
    let mut args = vec!["build", "--progress=plain", "--explain", "-t", "ex:1"];
    args.extend_from_slice(extra);
    args.push(dir.to_str().unwrap());
    let r = k.run(&args).ok();
    let e = r.stderr();
    e[e.find("explain:").expect("an explain section")..].to_string()
}

const DOCKERFILE: &str = "FROM busybox\nARG LEVEL=1\nCOPY app.txt /app/\nRUN echo level $LEVEL > /level\nCOPY static /static\nRUN cat /app/app.txt > /copy\n";

fn context() -> tempfile::TempDir {
    let ctx = tempfile::tempdir().unwrap();
    write_tree(
        ctx.path(),
        &[
            ("Dockerfile", DOCKERFILE),
            ("app.txt", "one\n"),
            ("static/a.css", "a\n"),
            ("unread.txt", "never copied\n"),
        ],
    );
    ctx
}

#[test]
fn every_kind_of_change_is_explained_with_its_input() {
    let Some(k) = setup() else { return };
    let ctx = context();
    let first = explain(&k, ctx.path(), &[]);
    assert!(first.contains("first build of this step"), "{first}");

    // Nothing changed.
    let same = explain(&k, ctx.path(), &[]);
    assert!(same.contains("were cache hits"), "{same}");

    // A file no step reads: nothing is blamed.
    fs::write(ctx.path().join("unread.txt"), "changed\n").unwrap();
    let unread = explain(&k, ctx.path(), &[]);
    assert!(unread.contains("were cache hits"), "{unread}");
    assert!(!unread.contains("unread.txt"), "{unread}");

    // A copied file's content.
    fs::write(ctx.path().join("app.txt"), "two\n").unwrap();
    let e = explain(&k, ctx.path(), &[]);
    assert!(
        e.contains("COPY app.txt /app/ (Dockerfile:3): app.txt changed (content blake3"),
        "{e}"
    );
    assert!(e.contains("RUN echo level $LEVEL > /level (Dockerfile:4): parent step changed (see COPY at Dockerfile:3)"), "{e}");

    // Files added to a copied directory.
    fs::write(ctx.path().join("static/x.css"), "x\n").unwrap();
    fs::write(ctx.path().join("static/y.js"), "y\n").unwrap();
    let e = explain(&k, ctx.path(), &[]);
    assert!(
        e.contains("COPY static /static (Dockerfile:5): 2 files added: x.css, y.js"),
        "{e}"
    );
    assert!(
        !e.contains("Dockerfile:3)"),
        "the unchanged COPY is not blamed: {e}"
    );

    // A build arg.
    let e = explain(&k, ctx.path(), &["--build-arg", "LEVEL=2"]);
    assert!(e.contains("build arg LEVEL changed"), "{e}");

    // --no-cache.
    let e = explain(&k, ctx.path(), &["--no-cache"]);
    assert!(e.contains("--no-cache was given"), "{e}");

    // `cache why` tells the same story later.
    let why = k.run(&["cache", "why", "ex:1"]).ok().stdout();
    assert!(why.contains("--no-cache was given"), "{why}");
}

#[test]
fn a_new_base_image_digest_is_named() {
    let Some(k) = setup() else { return };
    let ctx = tempfile::tempdir().unwrap();
    write_tree(
        ctx.path(),
        &[("Dockerfile", "FROM base:1\nRUN echo hi > /hi\n")],
    );
    let base = tempfile::tempdir().unwrap();
    write_tree(
        base.path(),
        &[("Dockerfile", "FROM busybox\nRUN echo 1 > /v\n")],
    );
    k.run(&["build", "-q", "-t", "base:1", base.path().to_str().unwrap()])
        .ok();
    explain(&k, ctx.path(), &[]);
    write_tree(
        base.path(),
        &[("Dockerfile", "FROM busybox\nRUN echo 2 > /v\n")],
    );
    k.run(&["build", "-q", "-t", "base:1", base.path().to_str().unwrap()])
        .ok();
    let e = explain(&k, ctx.path(), &[]);
    assert!(
        e.contains("FROM base:1 (Dockerfile:1): base image digest changed (sha256:"),
        "{e}"
    );
    assert!(
        e.contains("parent step changed (see FROM at Dockerfile:1)"),
        "{e}"
    );
}

#[test]
fn cache_why_on_a_key_compares_with_the_earlier_record() {
    let Some(k) = setup() else { return };
    let ctx = context();
    explain(&k, ctx.path(), &[]);
    fs::write(ctx.path().join("app.txt"), "three\n").unwrap();
    explain(&k, ctx.path(), &[]);
    let ls = k.run(&["cache", "ls", "--format", "json"]).ok().stdout();
    let v: serde_json::Value = serde_json::from_str(&ls).unwrap();
    let newest_copy = v
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            r["instruction"]
                .as_str()
                .unwrap()
                .starts_with("COPY app.txt")
        })
        .max_by_key(|r| r["created"].as_i64().unwrap())
        .unwrap();
    let key = newest_copy["key"].as_str().unwrap();
    let why = k.run(&["cache", "why", &key[..12]]).ok().stdout();
    assert!(why.contains("app.txt changed"), "{why}");
    let bad = k.run(&["cache", "why", "zz"]).fails();
    assert!(
        bad.stderr().contains("neither an image nor a cache key"),
        "{}",
        bad.stderr()
    );
}

#[test]
fn cache_du_and_prune_keep_what_images_need() {
    let Some(k) = setup() else { return };
    let ctx = context();
    explain(&k, ctx.path(), &[]);
    fs::write(ctx.path().join("app.txt"), "two\n").unwrap();
    explain(&k, ctx.path(), &[]);
    let du = k.run(&["cache", "du"]).ok().stdout();
    assert!(
        du.contains("layers") && du.contains("SHARED WITH IMAGES"),
        "{du}"
    );
    // Prune needs to be told what to remove.
    let r = k.run(&["cache", "prune"]).fails();
    assert!(r.stderr().contains("--all"), "{}", r.stderr());
    let before = k.run(&["cache", "ls", "--format", "json"]).ok().stdout();
    let n_before = serde_json::from_str::<serde_json::Value>(&before)
        .unwrap()
        .as_array()
        .unwrap()
        .len();
    k.run(&["cache", "prune", "--keep-storage", "0"]).ok();
    let after = k.run(&["cache", "ls", "--format", "json"]).ok().stdout();
    let n_after = serde_json::from_str::<serde_json::Value>(&after)
        .unwrap()
        .as_array()
        .unwrap()
        .len();
    assert!(n_after < n_before, "{n_before} -> {n_after}");
    // The tagged image still runs: its layers were not the cache's to free.
    let out = k
        .run(&["run", "--rm", "ex:1", "cat", "/copy"])
        .ok()
        .stdout();
    assert_eq!(out, "two\n");
    k.run(&["cache", "prune", "--all"]).ok();
    let ls = k.run(&["cache", "ls", "--format", "json"]).ok().stdout();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&ls).unwrap(),
        serde_json::json!([])
    );
    // With no cache, the next build runs every step again and still works.
    let e = explain(&k, ctx.path(), &[]);
    assert!(e.contains("first build of this step"), "{e}");
}

#[test]
fn a_large_source_names_the_files_read_again() {
    let Some(k) = setup() else { return };
    let ctx = tempfile::tempdir().unwrap();
    let mut files: Vec<(String, String)> = (0..300)
        .map(|i| (format!("data/f{i}.txt"), format!("file {i}\n")))
        .collect();
    files.push((
        "Dockerfile".into(),
        "FROM busybox\nCOPY data /data\nRUN ls /data | wc -l > /count\n".into(),
    ));
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect();
    write_tree(ctx.path(), &refs);
    // Files changed within a second of a scan are read again by the next
    // build (racily clean); let these settle so the first build vouches
    // for them.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    explain(&k, ctx.path(), &[]);
    fs::write(ctx.path().join("data/f123.txt"), "edited\n").unwrap();
    fs::write(ctx.path().join("data/new.txt"), "new\n").unwrap();
    fs::remove_file(ctx.path().join("data/f7.txt")).unwrap();
    let e = explain(&k, ctx.path(), &[]);
    // More than 256 entries: the key holds a digest, the scan names them.
    assert!(
        e.contains("the copied files changed (301 -> 301 entries)"),
        "{e}"
    );
    assert!(
        e.contains("read again this build (new, or changed on disk): data/f123.txt, data/new.txt"),
        "{e}"
    );
    assert!(e.contains("gone: data/f7.txt"), "{e}");
}
