//! `ADD <git repository>`: a repository served by `git daemon` on
//! 127.0.0.1. Branches, tags, commits and `:subdir`, `--keep-git-dir`, the
//! cache keyed by the commit the reference names (a new commit is a miss,
//! none is a hit), and clear errors.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Child, Command};

use common::{is_root, require, step_outcomes, write_tree, Kiln};

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=kiln",
            "-c",
            "user.email=kiln@example.invalid",
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `git daemon` exporting `base` on a free port of 127.0.0.1.
fn daemon(base: &Path) -> (Daemon, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // git-daemon itself, not `git daemon` (whose child would outlive a
    // kill and hold the test's output open).
    let exec_path = Command::new("git").arg("--exec-path").output().unwrap();
    let exec_path = String::from_utf8_lossy(&exec_path.stdout)
        .trim()
        .to_string();
    let child = Command::new(Path::new(&exec_path).join("git-daemon"))
        .arg("--export-all")
        .arg("--reuseaddr")
        .arg("--listen=127.0.0.1")
        .arg(format!("--port={port}"))
        .arg(format!("--base-path={}", base.display()))
        .arg(base)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    (Daemon(child), port)
}

#[test]
fn add_a_git_repository_by_branch_tag_and_subdir() {
    if !require(is_root(), "builds run containers: run as root")
        || !require(
            Command::new("git").arg("--version").output().is_ok(),
            "git is not installed (scripts/deps.sh installs it)",
        )
    {
        return;
    }
    let k = Kiln::new();
    if !k.with_busybox() {
        return;
    }
    let base = tempfile::tempdir().unwrap();
    let repo = base.path().join("repo.git");
    fs::create_dir(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    write_tree(
        &repo,
        &[
            ("README", "first\n"),
            ("sub/inner.txt", "inside\n"),
            ("run.sh", "#!/bin/sh\necho ran\n"),
        ],
    );
    std::os::unix::fs::symlink("README", repo.join("link")).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(repo.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    }
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "first"]);
    git(&repo, &["tag", "-a", "v1", "-m", "v1"]);
    let first = git(&repo, &["rev-parse", "HEAD"]);
    let (_d, port) = daemon(base.path());
    let url = format!("git://127.0.0.1:{port}/repo.git");

    let ctx = tempfile::tempdir().unwrap();
    let df = |body: &str| {
        write_tree(
            ctx.path(),
            &[("Dockerfile", format!("FROM busybox\n{body}"))],
        )
    };
    let build = |tag: &str| {
        k.run(&[
            "build",
            "--progress=plain",
            "-t",
            tag,
            ctx.path().to_str().unwrap(),
        ])
    };
    let sh = |tag: &str, cmd: &str| {
        k.run(&["run", "--rm", tag, "sh", "-c", cmd])
            .ok()
            .stdout()
            .trim()
            .to_string()
    };

    // A branch: the tree, modes and links as committed, no .git.
    df(&format!("ADD {url}#main /src\n"));
    build("g:1").ok();
    assert_eq!(
        sh("g:1", "cat /src/README /src/sub/inner.txt"),
        "first\ninside"
    );
    assert_eq!(sh("g:1", "/src/run.sh"), "ran");
    assert_eq!(sh("g:1", "readlink /src/link"), "README");
    assert_eq!(sh("g:1", "test -e /src/.git && echo yes || echo no"), "no");
    // The commit's time on every file: the same commit, the same layer.
    let ct = git(&repo, &["log", "-1", "--format=%ct"]);
    assert_eq!(sh("g:1", "stat -c %Y /src/README"), ct);

    // Nothing new in the repository: a cache hit.
    let again = build("g:1").ok();
    assert!(
        step_outcomes(&again.stderr())
            .iter()
            .any(|(l, o)| l.contains("ADD") && o == "CACHED"),
        "{}",
        again.stderr()
    );

    // A new commit on the branch: the ADD runs again and sees it.
    fs::write(repo.join("README"), "second\n").unwrap();
    git(&repo, &["commit", "-q", "-am", "second"]);
    let moved = build("g:2").ok();
    assert!(
        step_outcomes(&moved.stderr())
            .iter()
            .any(|(l, o)| l.contains("ADD") && o == "RAN"),
        "{}",
        moved.stderr()
    );
    assert_eq!(sh("g:2", "cat /src/README"), "second");

    // A tag with a subdir, a commit, --keep-git-dir.
    df(&format!(
        "ADD {url}#v1:sub /t\nADD {url}#{first} /c\nADD --keep-git-dir=true {url}#main /k\n"
    ));
    build("g:3").ok();
    assert_eq!(sh("g:3", "ls /t"), "inner.txt");
    assert_eq!(sh("g:3", "cat /c/README"), "first");
    assert_eq!(sh("g:3", "test -d /k/.git && echo yes"), "yes");

    // Errors name the repository and the reference.
    df(&format!("ADD {url}#no-such-branch /x\n"));
    let err = build("g:4").fails();
    assert!(
        err.stderr().contains("no-such-branch") && err.stderr().contains("repo.git"),
        "{}",
        err.stderr()
    );
    df(&format!("COPY {url}#main /x\n"));
    let err = build("g:5").fails();
    assert!(err.stderr().contains("use ADD"), "{}", err.stderr());
}
