//! SOURCE_DATE_EPOCH as BuildKit (>= 0.11) and buildx read it: from
//! `--build-arg SOURCE_DATE_EPOCH=...` or the environment; it dates the
//! config and history, clamps the file times of new layers, and reaches
//! `ARG SOURCE_DATE_EPOCH`. The same Dockerfile, context and epoch give
//! the same image ID in two separate roots.

mod common;

use std::os::unix::fs::MetadataExt;

use common::{write_tree, Kiln, Run};
use serde_json::Value;

const EPOCH: &str = "1700000000";
const EPOCH_TIME: &str = "2023-11-14T22:13:20Z";

fn setup() -> Option<Kiln> {
    common::root_with_busybox("kiln build runs containers: needs root")
}

fn context() -> tempfile::TempDir {
    let ctx = tempfile::tempdir().unwrap();
    write_tree(
        ctx.path(),
        &[
            ("app.txt", "hello\n"),
            (
                "Dockerfile",
                "FROM busybox\nARG SOURCE_DATE_EPOCH\nCOPY app.txt /app/\n\
                 RUN echo \"$SOURCE_DATE_EPOCH\" > /epoch && touch /made\n",
            ),
        ],
    );
    ctx
}

fn inspect(k: &Kiln, name: &str) -> Value {
    serde_json::from_str(&k.run(&["inspect", name]).ok().stdout()).unwrap()
}

#[test]
fn the_build_arg_dates_config_history_and_files_and_reaches_arg() {
    let Some(k) = setup() else { return };
    let ctx = context();
    let out = tempfile::tempdir().unwrap();
    let arg = format!("SOURCE_DATE_EPOCH={EPOCH}");
    let spec = format!("type=local,dest={}", out.path().display());
    let r = k
        .build_dir(
            ctx.path(),
            &["-t", "sde:1", "--build-arg", &arg, "--output", &spec],
        )
        .ok();
    assert!(!r.stderr().contains("were not consumed"), "{}", r.stderr());
    let img = inspect(&k, "sde:1");
    assert_eq!(img[0]["Created"], EPOCH_TIME);
    let history = img[0]["History"].as_array().unwrap();
    let last = history.last().unwrap();
    assert_eq!(last["created"], EPOCH_TIME, "{last}");
    assert_eq!(
        std::fs::read_to_string(out.path().join("epoch")).unwrap(),
        format!("{EPOCH}\n")
    );
    for f in ["made", "epoch", "app/app.txt"] {
        let m = std::fs::symlink_metadata(out.path().join(f)).unwrap();
        assert!(
            m.mtime() <= EPOCH.parse::<i64>().unwrap(),
            "{f}: mtime {}",
            m.mtime()
        );
    }
}

#[test]
fn the_same_epoch_gives_the_same_image_in_two_roots() {
    let Some(a) = setup() else { return };
    // The same base in both roots: saved from one, loaded into the other
    // (a base built twice is dated twice).
    let b = Kiln::new();
    let saved = tempfile::tempdir().unwrap();
    let file = saved.path().join("busybox.tar");
    a.run(&["save", "-o", file.to_str().unwrap(), "busybox"])
        .ok();
    b.run(&["load", "-i", file.to_str().unwrap()]).ok();
    let ctx = context();
    let arg = format!("SOURCE_DATE_EPOCH={EPOCH}");
    let id = |k: &Kiln| -> String {
        k.build_dir(ctx.path(), &["-q", "--no-cache", "--build-arg", &arg])
            .ok()
            .stdout()
            .trim()
            .to_string()
    };
    let first = id(&a);
    assert!(first.starts_with("sha256:"), "{first}");
    assert_eq!(first, id(&b), "two roots, one epoch: one image");
}

#[test]
fn the_environment_counts_as_the_build_arg_and_a_bad_value_is_refused() {
    let Some(k) = setup() else { return };
    let ctx = context();
    let run = |env: &str, extra: &[&str]| -> Run {
        let mut c = k.cmd();
        c.env("SOURCE_DATE_EPOCH", env)
            .args(["build", "--progress=plain", "-t", "sde:env"])
            .args(extra)
            .arg(ctx.path());
        Run {
            out: c.output().unwrap(),
        }
    };
    run(EPOCH, &[]).ok();
    assert_eq!(inspect(&k, "sde:env")[0]["Created"], EPOCH_TIME);
    let r = run("yesterday", &[]).fails();
    assert!(
        r.stderr()
            .contains("SOURCE_DATE_EPOCH in the environment=\"yesterday\" is not a number"),
        "{}",
        r.stderr()
    );
    // The build arg wins over the environment, as with buildx.
    let r = run("yesterday", &["--build-arg", "SOURCE_DATE_EPOCH=-5"]).fails();
    assert!(
        r.stderr().contains("--build-arg SOURCE_DATE_EPOCH=\"-5\""),
        "{}",
        r.stderr()
    );
}
