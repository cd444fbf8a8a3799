//! `kiln build --reproducible` / `--check-reproducible`: a second build in
//! a fresh root, without cache, must give the same image, or the first
//! difference is named.

mod common;

use common::{write_tree, Kiln};

fn setup() -> Option<Kiln> {
    common::root_with_busybox("kiln build runs containers: needs root")
}

#[test]
fn a_deterministic_build_checks_out_and_says_which_epoch_it_used() {
    let Some(k) = setup() else { return };
    let ctx = tempfile::tempdir().unwrap();
    write_tree(
        ctx.path(),
        &[
            ("app.py", "print('hi')\n"),
            (
                "Dockerfile",
                "FROM busybox\nWORKDIR /app\nCOPY app.py .\nRUN echo built > /built && chmod 600 /built\nENV MODE=prod\n",
            ),
        ],
    );
    let r = k
        .build_dir(ctx.path(), &["-t", "rep:1", "--check-reproducible"])
        .ok();
    let err = r.stderr();
    assert!(
        err.contains("--reproducible: SOURCE_DATE_EPOCH=0, from no SOURCE_DATE_EPOCH given"),
        "{err}"
    );
    assert!(
        err.contains("reproducible: the second build gave the same image sha256:"),
        "{err}"
    );
    let inspect: serde_json::Value =
        serde_json::from_str(&k.run(&["inspect", "rep:1"]).ok().stdout()).unwrap();
    assert_eq!(inspect[0]["Created"], "1970-01-01T00:00:00Z");
}

#[test]
fn a_build_that_writes_the_time_fails_the_check_naming_the_file() {
    let Some(k) = setup() else { return };
    let ctx = tempfile::tempdir().unwrap();
    write_tree(
        ctx.path(),
        &[(
            "Dockerfile",
            // The time and a random id: busybox's date has no %N, and two
            // builds can fall in the same second.
            "FROM busybox\nRUN echo same > /same\nRUN date > /built-at && cat /proc/sys/kernel/random/uuid >> /built-at\n",
        )],
    );
    let r = k
        .build_dir(
            ctx.path(),
            &[
                "--check-reproducible",
                "--build-arg",
                "SOURCE_DATE_EPOCH=1700000000",
            ],
        )
        .fails();
    let err = r.stderr();
    assert!(
        err.contains("not reproducible: a second build in a fresh root gave"),
        "{err}"
    );
    assert!(
        err.contains("layer 3 (RUN date > /built-at && cat /proc/sys/kernel/random/uuid >> /built-at): /built-at: content sha256:"),
        "{err}"
    );
    assert!(
        !err.contains("SOURCE_DATE_EPOCH=0"),
        "the given epoch is used: {err}"
    );
}

#[test]
fn the_flask_example_is_reproducible_with_reproducible() {
    if !common::require(common::is_root(), "kiln build needs root") {
        return;
    }
    let wheels = common::repo_root().join("fixtures/flask/wheels");
    if !common::require(
        std::fs::read_dir(&wheels).is_ok_and(|mut d| d.next().is_some()),
        "fixtures/flask/wheels is empty: run fixtures/flask/fetch-wheels.sh (scripts/test.sh does)",
    ) {
        return;
    }
    let k = Kiln::new();
    if !k.with_python() {
        return;
    }
    // pip's .pyc files embed their sources' mtimes unless SOURCE_DATE_EPOCH
    // is set for the RUN step, which --reproducible does.
    let flask = common::repo_root().join("fixtures/flask");
    let r = k
        .build_dir(&flask, &["-t", "flask_app:rep", "--check-reproducible"])
        .ok();
    assert!(
        r.stderr()
            .contains("reproducible: the second build gave the same image"),
        "{}",
        r.stderr()
    );
}

#[test]
fn images_read_by_copy_from_and_mount_from_come_to_the_second_build() {
    let Some(k) = setup() else { return };
    let ctx = tempfile::tempdir().unwrap();
    write_tree(
        ctx.path(),
        &[(
            "Dockerfile",
            "FROM scratch\nCOPY --from=busybox:latest /bin/busybox /bin/busybox\n\
             FROM busybox\nRUN --mount=from=busybox,target=/b cp /b/etc/passwd /p\n",
        )],
    );
    let r = k.build_dir(ctx.path(), &["--check-reproducible"]).ok();
    assert!(
        r.stderr()
            .contains("reproducible: the second build gave the same image"),
        "{}",
        r.stderr()
    );
}
