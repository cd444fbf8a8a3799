//! `kiln build` end to end, through the binary, on the offline busybox
//! base: what the image holds, what the cache reuses, what runs in
//! parallel, and the errors a user gets. Needs root (containers, overlay).

mod common;

use std::fs;
use std::path::Path;

use common::{require, step_outcomes, write_tree, Kiln};

fn setup() -> Option<Kiln> {
    common::root_with_busybox("kiln build runs containers: needs root")
}

fn build(k: &Kiln, dir: &Path, extra: &[&str]) -> common::Run {
    k.build_dir(dir, extra)
}

fn export(k: &Kiln, dir: &Path, out: &Path, extra: &[&str]) -> common::Run {
    k.export_dir(dir, out, extra)
}

#[test]
fn run_copy_env_workdir_make_the_expected_image_and_a_rebuild_is_fully_cached() {
    let Some(k) = setup() else { return };
    let ctx = tempfile::tempdir().unwrap();
    write_tree(
        ctx.path(),
        &[
            (
                "Dockerfile",
                "FROM busybox\nENV GREETING=hello\nRUN echo \"$GREETING from run\" > /greeting\nCOPY app.txt /app/\nWORKDIR /app\nRUN cat app.txt > copy-of-app.txt\nCMD [\"cat\", \"/greeting\"]\n",
            ),
            ("app.txt", "version 1\n"),
        ],
    );
    let out = tempfile::tempdir().unwrap();
    let r = export(&k, ctx.path(), out.path(), &["-t", "demo:1"]).ok();
    assert_eq!(
        fs::read_to_string(out.path().join("greeting")).unwrap(),
        "hello from run\n"
    );
    assert_eq!(
        fs::read_to_string(out.path().join("app/copy-of-app.txt")).unwrap(),
        "version 1\n"
    );
    let first = r.stderr();
    assert!(
        !step_outcomes(&first).iter().any(|(_, o)| o == "CACHED"),
        "a cold build has no hits:\n{first}"
    );

    // Nothing changed: every step is a hit and the image is the same.
    let id1 = k.run(&["images", "-q"]).ok().stdout();
    let r = build(&k, ctx.path(), &["-t", "demo:1"]).ok();
    let steps = common::cache_steps(&r.stderr());
    assert!(!steps.is_empty(), "{}", r.stderr());
    assert!(
        steps.iter().all(|(_, o)| o == "CACHED"),
        "rebuild should be fully cached: {steps:?}"
    );
    let id2 = k.run(&["images", "-q"]).ok().stdout();
    assert_eq!(id1, id2, "a cached rebuild must give the same image ID");

    // app.txt edited: the COPY and what follows rebuild, the first RUN not.
    fs::write(ctx.path().join("app.txt"), "version 2\n").unwrap();
    let r = build(&k, ctx.path(), &["-t", "demo:1"]).ok();
    let steps = step_outcomes(&r.stderr());
    let outcome = |needle: &str| {
        steps
            .iter()
            .find(|(l, _)| l.contains(needle))
            .map(|(_, o)| o.clone())
            .unwrap_or_else(|| panic!("no step {needle} in {steps:?}"))
    };
    assert_eq!(outcome("RUN echo"), "CACHED");
    assert_eq!(outcome("COPY app.txt"), "RAN");
    assert_eq!(outcome("RUN cat app.txt"), "RAN");
}

#[test]
fn mtime_only_changes_do_not_invalidate_copy() {
    let Some(k) = setup() else { return };
    let ctx = tempfile::tempdir().unwrap();
    write_tree(
        ctx.path(),
        &[("Dockerfile", "FROM busybox\nCOPY f /f\n"), ("f", "same\n")],
    );
    build(&k, ctx.path(), &[]).ok();
    let t = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
    fs::File::options()
        .write(true)
        .open(ctx.path().join("f"))
        .unwrap()
        .set_modified(t)
        .unwrap();
    let r = build(&k, ctx.path(), &[]).ok();
    let steps = step_outcomes(&r.stderr());
    assert!(
        steps
            .iter()
            .any(|(l, o)| l.contains("COPY f") && o == "CACHED"),
        "{steps:?}"
    );
}

#[test]
fn independent_stages_run_at_the_same_time() {
    let Some(k) = setup() else { return };
    let ctx = tempfile::tempdir().unwrap();
    // Each stage records when it started and finished; the final stage
    // copies both records. Overlapping intervals prove concurrency without
    // asserting any duration.
    write_tree(
        ctx.path(),
        &[(
            "Dockerfile",
            "FROM busybox AS a\nRUN cut -d' ' -f1 /proc/uptime > /start && sleep 2 && cut -d' ' -f1 /proc/uptime > /end\n\
             FROM busybox AS b\nRUN cut -d' ' -f1 /proc/uptime > /start && sleep 2 && cut -d' ' -f1 /proc/uptime > /end\n\
             FROM busybox\nCOPY --from=a /start /a.start\nCOPY --from=a /end /a.end\n\
             COPY --from=b /start /b.start\nCOPY --from=b /end /b.end\n",
        )],
    );
    let out = tempfile::tempdir().unwrap();
    export(&k, ctx.path(), out.path(), &[]).ok();
    let (a0, a1, b0, b1) = stage_windows(out.path());
    assert!(
        a0 < b1 && b0 < a1,
        "stages a [{a0},{a1}] and b [{b0},{b1}] did not overlap"
    );
}

#[test]
fn max_parallelism_one_runs_independent_stages_one_after_the_other() {
    let Some(k) = setup() else { return };
    let ctx = tempfile::tempdir().unwrap();
    // Two stages like those above, which overlap by default (their RUNs
    // differ, so neither is a cache hit of the other): with one worker,
    // one ends before the other starts.
    write_tree(
        ctx.path(),
        &[(
            "Dockerfile",
            "FROM busybox AS a\nRUN echo a && cut -d' ' -f1 /proc/uptime > /start && sleep 1 && cut -d' ' -f1 /proc/uptime > /end\n\
             FROM busybox AS b\nRUN echo b && cut -d' ' -f1 /proc/uptime > /start && sleep 1 && cut -d' ' -f1 /proc/uptime > /end\n\
             FROM busybox\nCOPY --from=a /start /a.start\nCOPY --from=a /end /a.end\n\
             COPY --from=b /start /b.start\nCOPY --from=b /end /b.end\n",
        )],
    );
    let out = tempfile::tempdir().unwrap();
    export(
        &k,
        ctx.path(),
        out.path(),
        &["--max-parallelism", "1", "--no-cache"],
    )
    .ok();
    let (a0, a1, b0, b1) = stage_windows(out.path());
    assert!(
        a1 <= b0 || b1 <= a0,
        "stages a [{a0},{a1}] and b [{b0},{b1}] overlapped with one worker"
    );
    let r = build(&k, ctx.path(), &["--max-parallelism", "0"]).fails();
    assert!(r.stderr().contains("--max-parallelism"), "{}", r.stderr());
}

#[test]
fn target_builds_only_what_it_needs() {
    let Some(k) = setup() else { return };
    let ctx = tempfile::tempdir().unwrap();
    write_tree(
        ctx.path(),
        &[(
            "Dockerfile",
            "FROM busybox AS never\nRUN exit 3\nFROM busybox AS wanted\nRUN echo ok > /ok\nFROM never\n",
        )],
    );
    let out = tempfile::tempdir().unwrap();
    export(&k, ctx.path(), out.path(), &["--target", "wanted"]).ok();
    assert_eq!(fs::read_to_string(out.path().join("ok")).unwrap(), "ok\n");
    let r = build(&k, ctx.path(), &["--target", "nope"]).fails();
    assert!(r.stderr().contains("nope"), "{}", r.stderr());
}

#[test]
fn a_failing_run_reports_its_exit_code_and_output() {
    let Some(k) = setup() else { return };
    let ctx = tempfile::tempdir().unwrap();
    write_tree(
        ctx.path(),
        &[(
            "Dockerfile",
            "FROM busybox\nRUN echo about to fail && echo on-stderr >&2 && exit 7\n",
        )],
    );
    let r = build(&k, ctx.path(), &[]).fails();
    let e = r.stderr();
    assert!(e.contains("exit code: 7"), "{e}");
    assert!(e.contains("on-stderr"), "{e}");
    assert!(e.contains("Dockerfile:2"), "{e}");
}

#[test]
fn copy_cannot_reach_outside_the_context() {
    let Some(k) = setup() else { return };
    let ctx = tempfile::tempdir().unwrap();
    write_tree(
        ctx.path(),
        &[("Dockerfile", "FROM busybox\nCOPY ../secret /x\n")],
    );
    let r = build(&k, ctx.path(), &[]).fails();
    assert!(
        r.stderr().contains("outside the build context"),
        "{}",
        r.stderr()
    );
}

#[test]
fn a_missing_base_image_is_a_clear_error() {
    if !require(common::is_root(), "needs root") {
        return;
    }
    let k = Kiln::new();
    let ctx = tempfile::tempdir().unwrap();
    write_tree(
        ctx.path(),
        &[("Dockerfile", "FROM nosuchimage:1.0\nRUN true\n")],
    );
    let r = build(&k, ctx.path(), &[]).fails();
    assert!(r.stderr().contains("nosuchimage:1.0"), "{}", r.stderr());
    assert!(r.stderr().lines().count() < 25, "{}", r.stderr());
}

#[test]
fn build_args_secrets_and_cache_mounts() {
    let Some(k) = setup() else { return };
    let ctx = tempfile::tempdir().unwrap();
    let secret = ctx.path().join("token.txt");
    write_tree(
        ctx.path(),
        &[(
            "Dockerfile",
            "FROM busybox\nARG WHO=nobody\nRUN echo \"hi $WHO\" > /who\n\
             RUN --mount=type=secret,id=tok cat /run/secrets/tok | wc -c > /secret-len\n\
             RUN --mount=type=cache,target=/cache echo x >> /cache/log && wc -l < /cache/log > /cache-lines\n",
        )],
    );
    fs::write(&secret, "s3cr3t").unwrap();
    let out = tempfile::tempdir().unwrap();
    let sec = format!("id=tok,src={}", secret.display());
    export(
        &k,
        ctx.path(),
        out.path(),
        &[
            "--build-arg",
            "WHO=kiln",
            "--secret",
            &sec,
            "--build-arg",
            "UNUSED=1",
        ],
    )
    .ok();
    assert_eq!(
        fs::read_to_string(out.path().join("who")).unwrap(),
        "hi kiln\n"
    );
    assert_eq!(
        fs::read_to_string(out.path().join("secret-len"))
            .unwrap()
            .trim(),
        "6"
    );
    assert!(!out.path().join("run/secrets/tok").exists());
    assert!(
        !out.path().join("cache/log").exists(),
        "cache mount content leaked into the image"
    );
    // The secret never reaches the image's files.
    let hay = walk_contents(out.path());
    assert!(!hay.contains("s3cr3t"));
    // A second build with --no-cache sees the cache mount's earlier content.
    let out2 = tempfile::tempdir().unwrap();
    let r = export(
        &k,
        ctx.path(),
        out2.path(),
        &["--no-cache", "--build-arg", "WHO=kiln", "--secret", &sec],
    )
    .ok();
    assert_eq!(
        fs::read_to_string(out2.path().join("cache-lines"))
            .unwrap()
            .trim(),
        "2",
        "{}",
        r.stderr()
    );
}

#[test]
fn cache_mounts_seeded_from_a_stage() {
    let Some(k) = setup() else { return };
    let ctx = tempfile::tempdir().unwrap();
    let dockerfile = |seed: &str| {
        format!(
            "FROM busybox AS seed\nRUN mkdir -p /seed/sub && echo {seed} > /seed/sub/a\n\
             FROM busybox\nARG ROUND\n\
             RUN --mount=type=cache,id=c1,target=/c,from=seed,source=/seed echo run >> /c/log && cat /c/sub/a /c/log > /out\n"
        )
    };
    write_tree(ctx.path(), &[("Dockerfile", dockerfile("seeded"))]);
    let out = |extra: &[&str]| {
        let o = tempfile::tempdir().unwrap();
        export(&k, ctx.path(), o.path(), extra).ok();
        let text = fs::read_to_string(o.path().join("out")).unwrap();
        assert!(!o.path().join("c").exists(), "cache content leaked");
        text
    };
    // Seeded from the stage the first time...
    assert_eq!(out(&[]), "seeded\nrun\n");
    // ...then it is a cache: what the last run left is still there (the
    // step runs again for another ROUND; the seed stage is a cache hit, so
    // the base is the same; a rebuilt seed would be another cache).
    assert_eq!(out(&["--build-arg", "ROUND=2"]), "seeded\nrun\nrun\n");
    // Another seed is another cache (BuildKit keys it by id and base).
    write_tree(ctx.path(), &[("Dockerfile", dockerfile("other"))]);
    assert_eq!(out(&[]), "other\nrun\n");
    // source= without from= has nothing to be a path of.
    write_tree(
        ctx.path(),
        &[(
            "Dockerfile",
            "FROM busybox\nRUN --mount=type=cache,target=/c,source=/x true\n",
        )],
    );
    let r = build(&k, ctx.path(), &[]).fails();
    assert!(r.stderr().contains("source= needs from="), "{}", r.stderr());
}

fn walk_contents(dir: &Path) -> String {
    let mut s = String::new();
    for e in walkdir(dir) {
        if let Ok(c) = fs::read(&e) {
            s.push_str(&String::from_utf8_lossy(&c));
        }
    }
    s
}

fn walkdir(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                todo.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    out
}

use common::serve;

#[test]
fn add_fetches_urls_and_verifies_checksums() {
    let Some(k) = setup() else { return };
    let port = serve("payload from the web\n");
    let sum = "8be666cf0bd0f97a98446b929b5383db0106f6ec8120b44fbc1c4cf7637d658a";
    let ctx = tempfile::tempdir().unwrap();
    write_tree(
        ctx.path(),
        &[(
            "Dockerfile",
            &format!(
                "FROM busybox\nADD http://127.0.0.1:{port}/dir/file.txt /web/\nADD --checksum=sha256:{sum} http://127.0.0.1:{port}/x /checked.txt\n"
            ),
        )],
    );
    let out = tempfile::tempdir().unwrap();
    export(&k, ctx.path(), out.path(), &[]).ok();
    let f = out.path().join("web/file.txt");
    assert_eq!(fs::read_to_string(&f).unwrap(), "payload from the web\n");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&f).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(out.path().join("checked.txt").is_file());

    write_tree(
        ctx.path(),
        &[(
            "Dockerfile",
            &format!(
                "FROM busybox\nADD --checksum=sha256:{} http://127.0.0.1:{port}/x /c\n",
                "0".repeat(64)
            ),
        )],
    );
    let r = build(&k, ctx.path(), &[]).fails();
    assert!(r.stderr().contains("checksum mismatch"), "{}", r.stderr());
}

#[test]
fn bind_mounts_of_the_context_hide_dockerignored_files() {
    let Some(k) = setup() else { return };
    let ctx = tempfile::tempdir().unwrap();
    write_tree(
        ctx.path(),
        &[
            (
                "Dockerfile",
                "FROM busybox\nRUN --mount=type=bind,target=/ctx ls -A /ctx/src | tr '\\n' ' ' > /seen\n\
                 RUN --mount=type=bind,source=src,target=/rw,rw touch /rw/new && ls -A /rw | tr '\\n' ' ' > /seen-rw\n",
            ),
            (".dockerignore", "src/secret.env\n"),
            ("src/app.py", "print(1)\n"),
            ("src/secret.env", "TOKEN=hunter2\n"),
        ],
    );
    let out = tempfile::tempdir().unwrap();
    export(&k, ctx.path(), out.path(), &[]).ok();
    assert_eq!(
        fs::read_to_string(out.path().join("seen")).unwrap(),
        "app.py "
    );
    assert_eq!(
        fs::read_to_string(out.path().join("seen-rw")).unwrap(),
        "app.py new "
    );
    // Writes to a read-write bind mount are dropped, never reach the context.
    assert!(!ctx.path().join("src/new").exists());
}

#[test]
fn outputs_iidfile_labels_and_a_dockerfile_from_stdin() {
    let Some(k) = setup() else { return };
    let ctx = tempfile::tempdir().unwrap();
    write_tree(
        ctx.path(),
        &[("Dockerfile", "FROM busybox\nRUN echo out > /out\n")],
    );
    let dir = tempfile::tempdir().unwrap();
    let iid = dir.path().join("iid");
    let tar = dir.path().join("fs.tar");
    let oci = dir.path().join("oci.tar");
    let dock = dir.path().join("docker.tar");
    let r = build(
        &k,
        ctx.path(),
        &[
            "--iidfile",
            iid.to_str().unwrap(),
            "--label",
            "org.example.team=builds",
            "--output",
            &format!("type=tar,dest={}", tar.display()),
            "--output",
            &format!("type=oci,dest={}", oci.display()),
            "--output",
            &format!("type=docker,dest={}", dock.display()),
            "-t",
            "outs:1",
        ],
    )
    .ok();
    let id = fs::read_to_string(&iid).unwrap();
    assert!(id.starts_with("sha256:") && id.len() == 71, "{id}");
    let inspect = k.run(&["inspect", "outs:1"]).ok().stdout();
    assert!(inspect.contains("org.example.team"), "{inspect}");
    assert!(inspect.contains(&id), "{inspect}\n{}", r.stderr());
    // The tar output is the flattened filesystem.
    let list = std::process::Command::new("tar")
        .arg("tf")
        .arg(&tar)
        .output()
        .unwrap();
    let names = String::from_utf8_lossy(&list.stdout);
    assert!(
        names.lines().any(|l| l.trim_start_matches("./") == "out"),
        "{names}"
    );
    // The archives load into a fresh root.
    for a in [&oci, &dock] {
        let other = Kiln::new();
        let r = other.run(&["load", "-i", a.to_str().unwrap()]).ok();
        assert!(r.stdout().contains("Loaded"), "{}", r.stdout());
    }
    // `kiln build -`: the Dockerfile on stdin, no context.
    let mut child = k
        .cmd()
        .args(["build", "-q", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"FROM busybox\nRUN echo from-stdin > /s\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("sha256:"));
}

#[test]
fn cache_prune_all_keeps_the_cache_mount_of_a_running_build() {
    let Some(k) = setup() else { return };
    let ctx = tempfile::tempdir().unwrap();
    write_tree(
        ctx.path(),
        &[(
            "Dockerfile",
            "FROM busybox\nRUN --mount=type=cache,id=busy,target=/c echo kept > /c/mark && sleep 4\n",
        )],
    );
    let mut running = k
        .cmd()
        .args(["build", "--progress=plain", ctx.path().to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The mount exists (and is listed) once the build has taken it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !k
        .run(&["cache", "du"])
        .ok()
        .stdout()
        .contains("cache mount busy")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the build never took its cache mount"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let pruned = k.run(&["cache", "prune", "--all"]).ok().stdout();
    assert!(
        pruned.contains("cache mount busy: in use, kept"),
        "{pruned}"
    );
    assert!(running.wait().unwrap().success());
    // What the build wrote is still there for the next one.
    write_tree(
        ctx.path(),
        &[(
            "Dockerfile",
            "FROM busybox\nRUN --mount=type=cache,id=busy,target=/c cp /c/mark /mark\n",
        )],
    );
    let out = tempfile::tempdir().unwrap();
    export(&k, ctx.path(), out.path(), &[]).ok();
    assert_eq!(
        fs::read_to_string(out.path().join("mark")).unwrap(),
        "kept\n"
    );
    // With no build running, --all empties it.
    let pruned = k.run(&["cache", "prune", "--all"]).ok().stdout();
    assert!(pruned.contains("cache mount busy: removed"), "{pruned}");
}

/// BuildKit 0.13 leaves `ENTRYPOINT []` and `CMD []` out of the config (as
/// if never set), which image_tree.py's normalised config.json cannot show
/// (it reads an empty list as null): checked on kiln's own config here.
#[test]
fn empty_entrypoint_and_cmd_lists_leave_the_keys_out() {
    let Some(k) = setup() else { return };
    let ctx = tempfile::tempdir().unwrap();
    write_tree(
        ctx.path(),
        &[(
            "Dockerfile",
            "FROM busybox\nENTRYPOINT [\"/bin/sh\"]\nCMD [\"-c\", \"true\"]\nENTRYPOINT []\nCMD []\n",
        )],
    );
    build(&k, ctx.path(), &["-t", "empty-lists:1"]).ok();
    let out = k.run(&["inspect", "empty-lists:1"]).ok().stdout();
    let v: serde_json::Value = serde_json::from_str(&out).expect("inspect prints JSON");
    let cfg = &v[0]["Config"];
    assert!(cfg.get("Entrypoint").is_none_or(|e| e.is_null()), "{cfg}");
    assert!(cfg.get("Cmd").is_none_or(|e| e.is_null()), "{cfg}");
}

/// Hard links inside one copied source stay hard links (BuildKit 0.13; the
/// fixture cases cover links made in a stage, since git keeps none in a
/// context). Two sources naming one inode give two files.
#[test]
fn hard_links_in_the_context_stay_hard_links() {
    let Some(k) = setup() else { return };
    let ctx = tempfile::tempdir().unwrap();
    write_tree(
        ctx.path(),
        &[
            ("d/a", "one\n"),
            (
                "Dockerfile",
                "FROM busybox\nCOPY d /x/\nCOPY d/a d/b /two/\n\
                 RUN stat -c '%h' /x/a /x/b /x/sub/c /two/a /two/b > /links.txt\n",
            ),
        ],
    );
    fs::create_dir(ctx.path().join("d/sub")).unwrap();
    fs::hard_link(ctx.path().join("d/a"), ctx.path().join("d/b")).unwrap();
    fs::hard_link(ctx.path().join("d/a"), ctx.path().join("d/sub/c")).unwrap();
    let out = tempfile::tempdir().unwrap();
    export(&k, ctx.path(), out.path(), &[]).ok();
    let links = fs::read_to_string(out.path().join("links.txt")).unwrap();
    assert_eq!(
        links, "3\n3\n3\n1\n1\n",
        "link counts of /x/a /x/b /x/sub/c /two/a /two/b"
    );
}

/// When stages a and b ran (their `/start` and `/end` uptimes, copied to
/// a.start, a.end, b.start, b.end in an exported build).
fn stage_windows(out: &std::path::Path) -> (f64, f64, f64, f64) {
    let read = |n: &str| -> f64 {
        fs::read_to_string(out.join(n))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    (
        read("a.start"),
        read("a.end"),
        read("b.start"),
        read("b.end"),
    )
}
