//! User and group IDs through the binary: numeric IDs outside runc's range
//! (0 to 2^31-1) are refused wherever they are read (USER, `--chown`,
//! `kiln run -u`, the image's /etc/passwd) instead of running as root.

mod common;

use common::{require, write_tree, Kiln};

const RANGE: &str = "uids and gids must be in range 0-2147483647";

fn setup() -> Option<Kiln> {
    if !require(common::is_root(), "builds and containers need root") {
        return None;
    }
    let k = Kiln::new();
    if !k.with_busybox() {
        return None;
    }
    Some(k)
}

fn build(k: &Kiln, dockerfile: &str) -> common::Run {
    let ctx = tempfile::tempdir().unwrap();
    write_tree(ctx.path(), &[("Dockerfile", dockerfile), ("f", "x")]);
    k.run(&[
        "build",
        "--progress=plain",
        "-t",
        "ids:t",
        ctx.path().to_str().unwrap(),
    ])
}

#[test]
fn user_out_of_range_fails_the_build_at_its_line() {
    let Some(k) = setup() else { return };
    for id in ["4294967295", "2147483648", "-1", "0:4294967295"] {
        let r = build(&k, &format!("FROM busybox\nUSER {id}\nRUN id -u\n")).fails();
        let e = r.stderr();
        assert!(e.contains(RANGE), "{id}: {e}");
        assert!(e.contains("Dockerfile:2"), "{id}: {e}");
    }
    let r = build(&k, "FROM busybox\nCOPY --chown=4294967295 f /f\n").fails();
    assert!(r.stderr().contains(RANGE), "{}", r.stderr());
    // The largest valid ID builds and runs as itself.
    build(
        &k,
        "FROM busybox\nUSER 2147483647\nRUN test \"$(id -u)\" = 2147483647\n",
    )
    .ok();
}

#[test]
fn run_u_out_of_range_is_refused_and_the_maximum_accepted() {
    let Some(k) = setup() else { return };
    for id in ["4294967295", "2147483648", "1000:4294967295"] {
        let r = k.run(&["run", "--rm", "-u", id, "busybox", "id", "-u"]);
        assert_eq!(r.code(), 125, "{id}: {}", r.stderr());
        assert!(r.stderr().contains(RANGE), "{id}: {}", r.stderr());
        assert_eq!(r.stdout(), "", "{id}: nothing ran");
    }
    let r = k
        .run(&["run", "--rm", "-u", "2147483647", "busybox", "id", "-u"])
        .ok();
    assert_eq!(r.stdout(), "2147483647\n");
}

#[test]
fn passwd_entry_out_of_range_names_file_and_line() {
    let Some(k) = setup() else { return };
    // The image's passwd gets an entry whose uid would wrap to -1.
    build(
        &k,
        "FROM busybox\nRUN echo 'big:x:4294967295:0::/:/bin/sh' >> /etc/passwd\n",
    )
    .ok();
    let lines = k
        .run(&["run", "--rm", "ids:t", "wc", "-l", "/etc/passwd"])
        .ok()
        .stdout();
    let n: usize = lines.split_whitespace().next().unwrap().parse().unwrap();
    let want = format!("/etc/passwd line {n}");
    let r = k.run(&["run", "--rm", "-u", "big", "ids:t", "id", "-u"]);
    assert_eq!(r.code(), 125, "{}", r.stderr());
    assert!(r.stderr().contains(&want), "{}", r.stderr());
    assert!(r.stderr().contains(RANGE), "{}", r.stderr());
    assert_eq!(r.stdout(), "");
    // The same entry selected by a build: USER then RUN, and --chown.
    for df in [
        "FROM ids:t\nUSER big\nRUN id -u\n",
        "FROM ids:t\nCOPY --chown=big f /f\n",
    ] {
        let r = build(&k, df).fails();
        assert!(r.stderr().contains(&want), "{df}: {}", r.stderr());
    }
}
