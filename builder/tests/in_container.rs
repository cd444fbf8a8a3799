//! kiln packaged as an image built by kiln itself (the repository's
//! Dockerfile), run under Docker as an ordinary user without added
//! privileges (issue 14, item 4): it starts, and under Docker's default
//! seccomp profile, which refuses user namespaces, a build stops with the
//! one-screen error that names the option granting them. Needs root, the
//! python base and a Docker engine (scripts/test.sh starts Debian 12's
//! Docker 20.10 and sets KILN_DOCKER=1; the Debian 13 engine runs under
//! chroot, where the kernel refuses user namespaces to every container).

mod common;

use std::path::Path;
use std::process::Command;

use common::{is_root, require, write_tree, Kiln};

const DOCKER: &str = "/usr/bin/docker";

fn docker_up() -> bool {
    Path::new(DOCKER).is_file()
        && Command::new(DOCKER)
            .arg("info")
            .output()
            .is_ok_and(|o| o.status.success())
}

fn docker(args: &[&str]) -> std::process::Output {
    Command::new(DOCKER).args(args).output().expect("docker")
}

#[test]
fn kiln_runs_in_an_unprivileged_container_and_names_what_the_default_profile_refuses() {
    if !require(is_root(), "building and loading images needs root")
        || !require(
            docker_up(),
            "no Docker engine (scripts/test.sh starts one with fixtures/docker/start-dockerd.sh)",
        )
    {
        return;
    }
    let k = Kiln::new();
    if !k.with_python() {
        return;
    }
    // The repository's Dockerfile, with this build's binaries.
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
    let tag = "kiln:in-container-test";
    k.build_dir(ctx.path(), &["-t", tag, "--build-arg", "KILN_DIR=bin"])
        .ok();
    let tar = ctx.path().join("kiln.tar");
    k.run(&["save", "-o", tar.to_str().unwrap(), tag]).ok();
    let load = docker(&["load", "-i", tar.to_str().unwrap()]);
    assert!(
        load.status.success(),
        "{}",
        String::from_utf8_lossy(&load.stderr)
    );

    // As uid 1000, no added capability: it starts.
    let v = docker(&["run", "--rm", "--user", "1000", tag, "--version"]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    assert!(String::from_utf8_lossy(&v.stdout).starts_with("kiln "));

    // Docker's default seccomp profile refuses user namespaces: one line
    // that names the options granting them.
    let app = tempfile::tempdir().unwrap();
    write_tree(
        app.path(),
        &[("Dockerfile", "FROM scratch\nCOPY Dockerfile /\n")],
    );
    let mount = format!("{}:/ctx:ro", app.path().display());
    let r = docker(&[
        "run", "--rm", "--user", "1000", "-v", &mount, tag, "build", "/ctx",
    ]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(125), "{err}");
    assert!(
        err.contains("needs a user namespace")
            && err.contains("--security-opt seccomp=unconfined --security-opt apparmor=unconfined"),
        "{err}"
    );
    assert!(err.lines().count() <= 3, "one screen: {err}");
    let _ = docker(&["rmi", "-f", tag]);
}
