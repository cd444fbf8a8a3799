//! `kiln run/ps/stop/rm/logs` through the binary on the offline busybox
//! image: docker's exit codes, the detached lifecycle, and images that
//! containers use are not removed from under them.

mod common;

use common::{require, Kiln};

fn setup() -> Option<Kiln> {
    common::root_with_busybox("containers need root")
}

#[test]
fn foreground_runs_give_dockers_exit_codes() {
    let Some(k) = setup() else { return };
    let r = k.run(&["run", "--rm", "busybox", "echo", "hi"]).ok();
    assert_eq!(r.stdout(), "hi\n");
    let r = k.run(&["run", "--rm", "busybox", "sh", "-c", "exit 3"]);
    assert_eq!(r.code(), 3);
    let r = k.run(&["run", "--rm", "busybox", "no-such-command"]);
    assert_eq!(r.code(), 127, "{}", r.stderr());
    let r = k.run(&["run", "--rm", "nosuchimage:1"]);
    assert_eq!(r.code(), 125);
    assert!(
        r.stderr().contains("Unable to find image 'nosuchimage:1'"),
        "{}",
        r.stderr()
    );
    let r = k.run(&["run", "--rm", "-p", "notaport", "busybox", "true"]);
    assert_eq!(r.code(), 125, "{}", r.stderr());
    assert!(r.stderr().lines().count() <= 2, "one line: {}", r.stderr());
    // -e, -w and -u reach the process.
    let r = k
        .run(&[
            "run",
            "--rm",
            "-e",
            "A=1",
            "-w",
            "/tmp",
            "-u",
            "app",
            "busybox",
            "sh",
            "-c",
            "echo $A $(pwd) $(id -u)",
        ])
        .ok();
    assert_eq!(r.stdout(), "1 /tmp 1000\n");
}

#[test]
fn detached_lifecycle_and_images_in_use() {
    let Some(k) = setup() else { return };
    let id = k
        .run(&[
            "run",
            "-d",
            "--name",
            "web",
            "busybox",
            "sh",
            "-c",
            "echo started; sleep 100",
        ])
        .ok()
        .stdout()
        .trim()
        .to_string();
    assert_eq!(id.len(), 64);
    let ps = k.run(&["ps"]).ok().stdout();
    assert!(ps.contains("web") && ps.contains(&id[..12]), "{ps}");
    // The name is taken.
    let r = k.run(&["run", "-d", "--name", "web", "busybox", "true"]);
    assert!(!r.out.status.success());
    // A running container's image cannot be removed, even with -f.
    let r = k.run(&["rmi", "-f", "busybox"]).fails();
    assert!(r.stderr().contains("running container"), "{}", r.stderr());
    let mut logs = String::new();
    for _ in 0..50 {
        logs = k.run(&["logs", "web"]).ok().stdout();
        if logs.contains("started") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(logs.contains("started"), "{logs}");
    k.run(&["stop", "-t", "1", "web"]).ok();
    let psa = k.run(&["ps", "-a"]).ok().stdout();
    assert!(psa.contains("Exited"), "{psa}");
    // A stopped one still holds it without -f.
    let r = k.run(&["rmi", "busybox"]).fails();
    assert!(r.stderr().contains("must force"), "{}", r.stderr());
    k.run(&["rm", "web"]).ok();
    let r = k.run(&["logs", "web"]).fails();
    assert!(!r.stderr().is_empty());
    k.run(&["rmi", "busybox"]).ok();
    assert!(!k.run(&["images"]).ok().stdout().contains("busybox"));
}

/// Asks the kernel directly (ctypes) and prints each call's errno (0 = it
/// worked): unshare(CLONE_NEWUSER), keyctl, io_uring_setup, clone3, getpid.
const PROBE: &str = r#"import ctypes
libc = ctypes.CDLL(None, use_errno=True)
def call(nr, *a):
    return 0 if libc.syscall(nr, *a) >= 0 else ctypes.get_errno()
print(call(272, 0x10000000), call(250, 0, 0), call(425, 1, 0), call(435, 0, 0), call(39))
"#;

#[test]
fn the_syscall_filter_denies_what_dockers_denies() {
    if !require(common::is_root(), "running containers needs root") {
        return;
    }
    let k = Kiln::new();
    if !k.with_python() {
        return;
    }
    // The probe's errnos with these `kiln run` flags.
    let probe = |flags: &[&str]| {
        let mut args = vec!["run", "--rm"];
        args.extend_from_slice(flags);
        args.extend_from_slice(&["python:3.11-slim", "python3", "-c", PROBE]);
        k.run(&args).ok().stdout().trim().to_string()
    };
    // EPERM for a user namespace, the keyring and io_uring; ENOSYS for
    // clone3 (libc falls back to clone, which the filter can read); the
    // rest works.
    assert_eq!(probe(&[]), "1 1 1 38 0");
    // As a non-root user too (the filter is installed before the switch).
    assert_eq!(probe(&["-u", "nobody"]), "1 1 1 38 0");
    // Unconfined: the same calls reach the kernel (a user namespace needs
    // no capability; the others fail on their bad arguments, not EPERM).
    let out = probe(&["--security-opt", "seccomp=unconfined"]);
    let codes: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(codes[0], "0", "{out}");
    assert_ne!(codes[2], "1", "{out}");
    assert_ne!(codes[3], "38", "{out}");
    let bad = k
        .run(&[
            "run",
            "--rm",
            "--security-opt",
            "apparmor=x",
            "python:3.11-slim",
            "true",
        ])
        .fails();
    assert!(
        bad.stderr().contains("seccomp=unconfined"),
        "{}",
        bad.stderr()
    );
}

#[test]
fn build_steps_are_filtered_unless_the_build_says_unconfined() {
    if !require(common::is_root(), "building needs root") {
        return;
    }
    let k = Kiln::new();
    if !k.with_python() {
        return;
    }
    let ctx = tempfile::tempdir().unwrap();
    common::write_tree(
        ctx.path(),
        &[
            ("probe.py", PROBE),
            (
                "Dockerfile",
                "FROM python:3.11-slim\nCOPY probe.py /\nRUN python3 /probe.py > /errnos\n",
            ),
        ],
    );
    let errnos = |flags: &[&str]| {
        let out = tempfile::tempdir().unwrap();
        let mut extra = vec!["--no-cache"];
        extra.extend_from_slice(flags);
        k.export_dir(ctx.path(), out.path(), &extra).ok();
        std::fs::read_to_string(out.path().join("errnos"))
            .unwrap()
            .trim()
            .to_string()
    };
    // The RUN step gets Docker's filter, as under BuildKit.
    assert_eq!(errnos(&[]), "1 1 1 38 0");
    let out = errnos(&["--security-opt", "seccomp=unconfined"]);
    let codes: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(codes[0], "0", "{out}");
    assert_ne!(codes[3], "38", "{out}");
    let bad = k
        .build_dir(ctx.path(), &["--security-opt", "label=disable"])
        .fails();
    assert!(
        bad.stderr().contains("--security-opt label=disable"),
        "{}",
        bad.stderr()
    );
}

/// The host path of the helper that supervises a running container's
/// PID 1 (its parent).
fn helper_exe_of(k: &Kiln, name: &str) -> std::path::PathBuf {
    let v: serde_json::Value =
        serde_json::from_str(&k.run(&["inspect", name]).ok().stdout()).unwrap();
    common::parent_exe(v[0]["State"]["Pid"].as_i64().unwrap())
}

/// kiln starts containers through `kiln-helper` when it sits beside it,
/// was built with it and is as trusted as kiln; otherwise through itself.
#[test]
fn the_small_helper_beside_kiln_is_used_only_when_it_is_kilns_own() {
    use std::os::unix::fs::PermissionsExt;
    let Some(k) = setup() else { return };
    let dir = tempfile::tempdir().unwrap();
    let kiln = dir.path().join("kiln");
    std::fs::copy(common::kiln_bin(), &kiln).unwrap();
    let helper = dir.path().join("kiln-helper");
    let built = std::path::PathBuf::from(env!("CARGO_BIN_EXE_kiln-helper"));
    let run = |name: &str| {
        let out = std::process::Command::new(&kiln)
            .env("KILN_ROOT", k.root.path())
            .args(["run", "-d", "--name", name, "busybox", "sleep", "30"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let exe = helper_exe_of(&k, name);
        k.run(&["rm", "-f", name]).ok();
        exe
    };
    // No helper: kiln itself.
    assert_eq!(run("none"), kiln);
    std::fs::copy(&built, &helper).unwrap();
    assert_eq!(run("own"), helper);
    // Writable by its group: not trusted.
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o775)).unwrap();
    assert_eq!(run("loose"), kiln);
    // Another build's helper (its build ID differs): not used.
    std::fs::write(&helper, "#!/bin/sh\necho 0000000000000000\n").unwrap();
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(run("stale"), kiln);
}
