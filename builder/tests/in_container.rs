//! kiln packaged as an image built by kiln itself (the repository's
//! Dockerfile), run under Docker as an ordinary user without
//! `--privileged` and without added capabilities (issue 14, item 4): it
//! builds the Flask example from a base in a registry and pushes it, and
//! what the host pulls serves the page. Under Docker's defaults each
//! refusal is a one-screen error naming the option that lifts it. Needs
//! root, the python base, the Flask wheels, the test registry and a Docker
//! engine: Debian 12's Docker 20.10, which scripts/test.sh starts (the
//! Debian 13 engine runs dockerd under chroot, and the kernel refuses user
//! namespaces to every container of a chrooted engine).

mod common;

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{is_root, require, Kiln, Registry};

const DOCKER: &str = "/usr/bin/docker";
/// What lets kiln work in a container: a user namespace (seccomp, AppArmor)
/// and a /proc of its own for RUN (systempaths).
const UNCONFINED: [&str; 6] = [
    "--security-opt",
    "seccomp=unconfined",
    "--security-opt",
    "apparmor=unconfined",
    "--security-opt",
    "systempaths=unconfined",
];

fn docker_up() -> bool {
    Path::new(DOCKER).is_file()
        && Command::new(DOCKER)
            .arg("info")
            .output()
            .is_ok_and(|o| o.status.success())
}

fn docker(args: &[&str]) -> Output {
    Command::new(DOCKER).args(args).output().expect("docker")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Everyone may read the tree (the container's user is uid 1000).
fn world_readable(p: &Path) {
    for e in walkdir::WalkDir::new(p) {
        let e = e.unwrap();
        let mode = if e.file_type().is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(mode)).unwrap();
    }
}

/// The repository's Dockerfile with this build's binaries, built by `k`
/// and loaded into Docker as `tag`.
fn build_kiln_image(k: &Kiln, tag: &str) {
    let ctx = tempfile::tempdir().unwrap();
    let bin = ctx.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::copy(common::kiln_bin(), bin.join("kiln")).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_kiln-helper"), bin.join("kiln-helper")).unwrap();
    std::fs::copy(
        common::repo_root().join("Dockerfile"),
        ctx.path().join("Dockerfile"),
    )
    .unwrap();
    k.build_dir(ctx.path(), &["-t", tag, "--build-arg", "KILN_DIR=bin"])
        .ok();
    let tar = ctx.path().join("kiln.tar");
    k.run(&["save", "-o", tar.to_str().unwrap(), tag]).ok();
    let load = docker(&["load", "-i", tar.to_str().unwrap()]);
    assert!(load.status.success(), "{}", text(&load));
}

/// The Flask example with its base from `reg`.
fn flask_context(reg: &str) -> tempfile::TempDir {
    let ctx = tempfile::tempdir().unwrap();
    let src = common::repo_root().join("fixtures/flask");
    for f in ["app.py", "requirements.txt"] {
        std::fs::copy(src.join(f), ctx.path().join(f)).unwrap();
    }
    std::fs::create_dir(ctx.path().join("wheels")).unwrap();
    for w in std::fs::read_dir(src.join("wheels")).unwrap() {
        let w = w.unwrap().path();
        std::fs::copy(&w, ctx.path().join("wheels").join(w.file_name().unwrap())).unwrap();
    }
    let df = std::fs::read_to_string(src.join("Dockerfile")).unwrap();
    let df = df.replace(
        "FROM python:3.11-slim",
        &format!("FROM {reg}/library/python:3.11-slim"),
    );
    std::fs::write(ctx.path().join("Dockerfile"), df).unwrap();
    world_readable(ctx.path());
    ctx
}

#[test]
fn kiln_in_an_unprivileged_container_builds_and_pushes_the_flask_example() {
    let wheels = common::repo_root().join("fixtures/flask/wheels");
    if !require(is_root(), "building and loading images needs root")
        || !require(
            docker_up(),
            "no Docker engine (scripts/test.sh starts one with fixtures/docker/start-dockerd.sh)",
        )
        || !require(
            std::fs::read_dir(&wheels).is_ok_and(|mut d| d.next().is_some()),
            "fixtures/flask/wheels is empty: run fixtures/flask/fetch-wheels.sh (scripts/test.sh does)",
        )
    {
        return;
    }
    let k = Kiln::new();
    if !k.with_python() {
        return;
    }
    let Some(reg) = Registry::start(false) else {
        return;
    };
    let tag = "kiln:in-container-test";
    build_kiln_image(&k, tag);
    // As uid 1000, no added capability: it starts.
    let v = docker(&["run", "--rm", "--user", "1000", tag, "--version"]);
    assert!(v.status.success(), "{}", text(&v));

    // The base in the registry, as a CI fleet has it.
    let base = format!("{}/library/python:3.11-slim", reg.addr);
    k.run(&["tag", "python:3.11-slim", &base]).ok();
    k.run(&["push", "-q", &base]).ok();
    let ctx = flask_context(&reg.addr);
    let mount = format!("{}:/src:ro", ctx.path().display());
    let app = format!("{}/flask_app:0.1", reg.addr);
    let build = |opts: &[&str]| {
        let mut a = vec!["run", "--rm", "--user", "1000", "--network", "host"];
        a.extend_from_slice(opts);
        a.extend_from_slice(&["-v", &mount, tag, "build", "--network", "none"]);
        a.extend_from_slice(&["--push", "-t", &app, "/src"]);
        docker(&a)
    };

    // Docker's default seccomp profile refuses the user namespace.
    let r = build(&[]);
    let err = text(&r);
    assert_eq!(r.status.code(), Some(125), "{err}");
    assert!(
        err.contains("needs a user namespace")
            && err.contains("--security-opt seccomp=unconfined --security-opt apparmor=unconfined"),
        "{err}"
    );
    // With the namespace allowed, Docker's masked /proc refuses RUN's own.
    let r = build(&UNCONFINED[..4]);
    let err = text(&r);
    assert!(!r.status.success());
    assert!(
        err.contains("--security-opt systempaths=unconfined"),
        "{err}"
    );

    // With all three: built (pip ran in a RUN step) and pushed.
    let started = Instant::now();
    let r = build(&UNCONFINED);
    assert!(r.status.success(), "{}", text(&r));
    eprintln!("in-container Flask build + push: {:?}", started.elapsed());

    // The store in the container's own root (overlayfs, no volume): the
    // kernel refuses it as an overlay upper dir, kiln says so once and
    // builds on copied snapshots.
    let started = Instant::now();
    let mut opts = UNCONFINED.to_vec();
    opts.extend_from_slice(&["-e", "KILN_ROOT=/tmp/kiln"]);
    let r = build(&opts);
    let out = text(&r);
    assert!(r.status.success(), "{out}");
    assert_eq!(out.matches("overlayfs was refused").count(), 1, "{out}");
    eprintln!(
        "in-container build, store on overlayfs: {:?}",
        started.elapsed()
    );

    // What the host pulls from the registry serves the page.
    let deploy = Kiln::new();
    deploy.run(&["pull", "-q", &app]).ok();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let publish = format!("127.0.0.1:{port}:5000");
    let id = deploy
        .run(&["run", "-d", "-p", &publish, &app])
        .ok()
        .stdout()
        .trim()
        .to_string();
    let mut page = None;
    for _ in 0..150 {
        page = common::http_get(port).filter(|p| p.contains("200"));
        if page.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    deploy.run(&["rm", "-f", &id]).ok();
    let _ = docker(&["rmi", "-f", tag]);
    let page = page.unwrap_or_else(|| panic!("no answer on {port}"));
    assert!(page.contains("Hello, World!"), "{page}");
}
