//! The escape cases of issue 4: /proc/self/fd tricks, overwriting the
//! runtime binary through /proc/<pid>/exe, and image symlinks at mount
//! targets.

mod common;

use std::os::unix::fs::symlink;
use std::path::PathBuf;

use common::*;
use kiln_runner::{MountKind, MountSpec, RunError};

macro_rules! need_root {
    ($name:expr) => {
        if !can_run($name) {
            return;
        }
    };
}

const HOST_MARKER: &str = "kiln-host-marker-escape";

fn host_marker() -> PathBuf {
    let p = std::env::current_dir().unwrap().join(HOST_MARKER);
    std::fs::write(&p, "host").unwrap();
    p
}

#[test]
fn workdir_in_proc_self_fd_sees_nothing_of_the_host() {
    need_root!("workdir_in_proc_self_fd_sees_nothing_of_the_host");
    let marker = host_marker();
    for n in 0..16 {
        let mut s = sh("ls -a; ls -a ..; ls -a ../..");
        s.cwd = format!("/proc/self/fd/{n}");
        let r = run(&s);
        eprintln!(
            "cwd fd {n}: {:?}",
            r.as_ref().map(|o| &o.stdout).map_err(|e| e.to_string())
        );
        match r {
            Ok(o) => {
                assert!(
                    !o.stdout.contains(HOST_MARKER),
                    "fd {n} reached the host: {}",
                    o.stdout
                );
                assert!(
                    !o.stdout.contains("Cargo.toml"),
                    "fd {n} reached the host: {}",
                    o.stdout
                );
            }
            Err(e) => assert!(
                matches!(e, RunError::Setup(_) | RunError::Exec { .. }),
                "fd {n}: {e}"
            ),
        }
    }
    std::fs::remove_file(marker).unwrap();
}

#[test]
fn command_from_proc_self_fd_sees_nothing_of_the_host() {
    need_root!("command_from_proc_self_fd_sees_nothing_of_the_host");
    for n in 3..16 {
        let r = run(&spec(&[&format!("/proc/self/fd/{n}")]));
        assert!(r.is_err(), "fd {n} is executable in the container");
    }
    // And from a shell: no fd beyond 2 is open in the container's process.
    let out = ok(&sh(
        "ls /proc/self/fd | tr '\\n' ' '; ls /proc/1/fd 2>&1 | head -1",
    ));
    let first = out.lines().next().unwrap();
    // 0 1 2, plus the fd ls itself uses for the directory.
    let fds: Vec<u32> = first
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    assert!(
        fds.iter().filter(|f| **f > 3).count() == 0,
        "leaked fds: {out}"
    );
    assert!(
        out.contains("Permission denied") || out.lines().nth(1).is_none(),
        "{out}"
    );
}

#[test]
fn writing_proc_pid_exe_leaves_the_runtime_binary_unchanged() {
    need_root!("writing_proc_pid_exe_leaves_the_runtime_binary_unchanged");
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_kiln-runner-testbin"));
    let before = std::fs::read(&bin).unwrap();
    let out = ok(&sh("for p in /proc/[0-9]*; do \
           (echo pwned > $p/exe) 2>/dev/null && echo WROTE $p; \
           (echo pwned >> $p/exe) 2>/dev/null && echo APPENDED $p; \
           cat $p/exe > /dev/null 2>&1 && echo READ $p; \
         done; echo end"));
    eprintln!("{out}");
    // The container's own binaries may be readable; PID 1 (our init, the
    // helper) must not be writable or even readable.
    assert!(!out.contains("/proc/1\n"), "init's exe reachable: {out}");
    assert!(
        !out.contains("WROTE /proc/1") && !out.contains("APPENDED /proc/1"),
        "{out}"
    );
    let after = std::fs::read(&bin).unwrap();
    assert!(before == after, "the helper binary was modified");
}

/// A one-layer image on top of busybox holding the given symlinks.
fn image_with_symlinks(links: &[(&str, &str)]) -> (tempfile::TempDir, kiln_runner::ContainerSpec) {
    let layer = tempfile::tempdir().unwrap();
    for (at, to) in links {
        let p = layer.path().join(at.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        symlink(to, &p).unwrap();
    }
    let mut s = sh("true");
    s.rootfs.lowers.insert(0, layer.path().to_path_buf());
    (layer, s)
}

#[test]
fn resolv_conf_symlink_to_a_host_path_stays_in_the_container() {
    need_root!("resolv_conf_symlink_to_a_host_path_stays_in_the_container");
    let host = tempfile::tempdir().unwrap();
    let victim = host.path().join("victim");
    std::fs::write(&victim, "host data\n").unwrap();
    let v = victim.to_str().unwrap();
    let (_layer, mut s) = image_with_symlinks(&[("/etc/resolv.conf", v), ("/etc/hosts", v)]);
    s.args = vec![
        "/bin/sh".into(),
        "-c".into(),
        "grep -c nameserver /etc/resolv.conf; echo evil > /etc/resolv.conf; \
         echo evil > /etc/hosts; readlink /etc/resolv.conf"
            .into(),
    ];
    let out = ok(&s);
    assert!(
        out.starts_with(|c: char| c.is_ascii_digit() && c != '0'),
        "{out}"
    );
    assert!(out.ends_with(&format!("{v}\n")), "{out}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "host data\n");
}

#[test]
fn proc_symlink_in_the_image_is_refused() {
    need_root!("proc_symlink_in_the_image_is_refused");
    for (at, to) in [("/proc", "/"), ("/dev", "/"), ("/sys", "/tmp")] {
        let (_layer, s) = image_with_symlinks(&[(at, to)]);
        match run(&s) {
            Err(RunError::Setup(m)) => assert!(m.contains("is a symlink in the image"), "{m}"),
            other => panic!(
                "{at} -> {to}: expected refusal, got {:?}",
                other.map(|o| o.code)
            ),
        }
    }
}

#[test]
fn mount_target_behind_a_symlink_resolves_inside_the_root() {
    need_root!("mount_target_behind_a_symlink_resolves_inside_the_root");
    let host = tempfile::tempdir().unwrap();
    let hostdir = host.path().join("d");
    std::fs::create_dir_all(&hostdir).unwrap();
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("f"), "inside\n").unwrap();
    let (_layer, mut s) = image_with_symlinks(&[
        ("/mnt/link", hostdir.to_str().unwrap()),
        ("/up", "../../../.."),
    ]);
    s.mounts = vec![
        MountSpec {
            target: "/mnt/link/m".into(),
            kind: MountKind::Bind {
                source: src.path().to_path_buf(),
                readonly: true,
            },
        },
        MountSpec {
            target: "/up/tmp/t".into(),
            kind: MountKind::Tmpfs { size: None },
        },
    ];
    s.args = vec![
        "/bin/sh".into(),
        "-c".into(),
        format!(
            "cat {}/m/f; grep -c ' /tmp/t ' /proc/mounts",
            hostdir.display()
        ),
    ];
    let out = ok(&s);
    assert_eq!(out, "inside\n1\n");
    assert_eq!(
        std::fs::read_dir(&hostdir).unwrap().count(),
        0,
        "host dir touched"
    );
    assert!(!std::path::Path::new("/tmp/t").exists());
}

/// The runc CVE-2019-5736 vector: a container whose command is
/// `/proc/self/exe` re-executes the runtime's own binary inside the
/// container, as an ordinary (dumpable) process that could open its exe for
/// writing, directly or later through an O_PATH fd. Here the binary is only
/// reachable through a read-only mount (and busy: PID 1 runs it).
#[test]
fn exec_of_proc_self_exe_cannot_write_the_runtime_binary() {
    need_root!("exec_of_proc_self_exe_cannot_write_the_runtime_binary");
    // The helper is dynamically linked: give the image the host's loader
    // and libraries (what `ldd` lists) so that it can run in there.
    let libs = tempfile::tempdir().unwrap();
    let ldd = std::process::Command::new("ldd")
        .arg(env!("CARGO_BIN_EXE_kiln-runner-testbin"))
        .output()
        .unwrap();
    for word in String::from_utf8_lossy(&ldd.stdout).split_whitespace() {
        if word.starts_with('/') && std::path::Path::new(word).exists() {
            let dst = libs.path().join(word.trim_start_matches('/'));
            std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
            std::fs::copy(word, &dst).unwrap();
        }
    }
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_kiln-runner-testbin"));
    let before = std::fs::read(&bin).unwrap();
    let mut s = spec(&["/proc/self/exe", "write-own-exe"]);
    s.rootfs.lowers.insert(0, libs.path().to_path_buf());
    let out = ok(&s);
    assert_eq!(
        out.trim(),
        format!("open-errno={} mount=ro", libc::ETXTBSY),
        "{out}"
    );
    // Also as root with a shell: O_PATH now, write after the process ended.
    let mut s = sh("/proc/self/exe write-own-exe >/dev/null; \
        exec 5</proc/self/exe; sleep 0; echo x >> /proc/self/fd/5 && echo WROTE");
    s.rootfs.lowers.insert(0, libs.path().to_path_buf());
    let o = run(&s).unwrap();
    assert!(!o.stdout.contains("WROTE"), "{}", o.stdout);
    assert!(
        before == std::fs::read(&bin).unwrap(),
        "the helper binary was modified"
    );
}
