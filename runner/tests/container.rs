//! Foreground containers through the public API: isolation, users, env,
//! workdir, exit codes, mounts, network modes, and the upper dir as a plain
//! diff.

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use common::*;
use kiln_runner::{MountKind, MountSpec, NetworkMode, RootFs, RunError};

macro_rules! need_root {
    ($name:expr) => {
        if !can_run($name) {
            return;
        }
    };
}

/// Every path under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, d: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            out.push(p.strip_prefix(base).unwrap().to_string_lossy().into_owned());
            if e.file_type().unwrap().is_dir() {
                walk(base, &p, out);
            }
        }
    }
    let mut v = Vec::new();
    walk(dir, dir, &mut v);
    v.sort();
    v
}

#[test]
fn echo_and_exit_codes() {
    need_root!("echo_and_exit_codes");
    assert_eq!(ok(&spec(&["echo", "hello"])), "hello\n");
    assert_eq!(run(&sh("exit 3")).unwrap().code, 3);
    assert_eq!(run(&sh("echo oops >&2; exit 1")).unwrap().stderr, "oops\n");
    assert_eq!(run(&sh("kill -TERM $$")).unwrap().code, 128 + 15);
    assert_eq!(run(&sh("kill -KILL $$")).unwrap().code, 137);
}

#[test]
fn exec_errors_are_docker_like() {
    need_root!("exec_errors_are_docker_like");
    match run(&spec(&["no-such-cmd"])) {
        Err(e @ RunError::Exec { .. }) => {
            assert_eq!(
                e.to_string(),
                "exec: \"no-such-cmd\": executable file not found in $PATH"
            );
            assert_eq!(e.exit_code(), Some(127));
        }
        other => panic!("expected exec error, got {:?}", other.map(|o| o.code)),
    }
    let e = run(&spec(&["/etc/passwd"])).err().expect("not executable");
    assert_eq!(e.exit_code(), Some(126), "{e}");
    let e = run(&spec(&["/nope"])).err().expect("missing");
    assert_eq!(e.exit_code(), Some(127), "{e}");
    // A shell's own "not found" is just an exit code.
    assert_eq!(run(&sh("no-such-cmd")).unwrap().code, 127);
}

#[test]
fn isolation_pid_uts_mounts_and_host_files() {
    need_root!("isolation_pid_uts_mounts_and_host_files");
    let marker = std::env::temp_dir().join("kiln-host-marker-isolation");
    std::fs::write(&marker, "host").unwrap();
    let mut s = sh(
        "echo pid=$$; hostname; cat /etc/hostname; ps -o pid,comm | wc -l; \
         cat /proc/mounts | cut -d' ' -f2 | sort | tr '\\n' ' '; echo; ls /tmp; \
         test -e /proc/1/exe && readlink /proc/1/exe; echo done",
    );
    s.hostname = Some("box1".into());
    let out = ok(&s);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0], "pid=2",
        "the shell is PID 2, after our init: {out}"
    );
    assert_eq!(lines[1], "box1");
    assert_eq!(lines[2], "box1");
    // header + init + sh + ps + wc (+ maybe subshell)
    let n: usize = lines[3].trim().parse().unwrap();
    assert!(n <= 6, "too many processes visible: {out}");
    for m in [
        "/ ",
        "/proc ",
        "/dev ",
        "/dev/pts ",
        "/dev/shm ",
        "/dev/mqueue ",
        "/sys ",
        "/etc/hosts ",
        "/etc/resolv.conf ",
        "/etc/hostname ",
        "/proc/sys ",
    ] {
        assert!(lines[4].contains(m), "missing mount {m}: {}", lines[4]);
    }
    // Docker's masked paths, where this kernel has them.
    for m in [
        "/proc/kcore",
        "/proc/keys",
        "/proc/timer_list",
        "/sys/firmware",
    ] {
        if Path::new(m).exists() {
            assert!(
                lines[4].contains(&format!("{m} ")),
                "{m} not masked: {}",
                lines[4]
            );
        }
    }
    assert!(
        !out.contains("kiln-host-marker"),
        "host /tmp visible: {out}"
    );
    assert!(out.ends_with("done\n"));
    std::fs::remove_file(marker).unwrap();
}

#[test]
fn proc_dev_sys_like_docker() {
    need_root!("proc_dev_sys_like_docker");
    let out = ok(&sh("ls /dev | tr '\\n' ' '; echo; \
         echo x > /proc/sys/kernel/hostname 2>/dev/null && echo WROTE-PROC-SYS; \
         cat /proc/timer_list | wc -c; \
         touch /sys/kiln 2>/dev/null && echo WROTE-SYS; \
         echo hi > /dev/null && head -c 4 /dev/zero | wc -c; \
         grep -E '^Cap(Bnd|Eff|Prm|Inh)' /proc/self/status"));
    let lines: Vec<&str> = out.lines().collect();
    for d in [
        "core", "fd", "full", "mqueue", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin",
        "stdout", "tty", "urandom", "zero",
    ] {
        assert!(
            lines[0].split(' ').any(|x| x == d),
            "/dev/{d} missing: {}",
            lines[0]
        );
    }
    assert!(!out.contains("WROTE"), "{out}");
    assert_eq!(lines[1].trim(), "0", "/proc/timer_list is masked");
    assert_eq!(lines[2].trim(), "4");
    // Docker's 14 default capabilities = 0xa80425fb; inheritable empty.
    assert!(out.contains("CapInh:\t0000000000000000"), "{out}");
    assert!(out.contains("CapPrm:\t00000000a80425fb"), "{out}");
    assert!(out.contains("CapEff:\t00000000a80425fb"), "{out}");
    assert!(out.contains("CapBnd:\t00000000a80425fb"), "{out}");
}

#[test]
fn users_from_the_image() {
    need_root!("users_from_the_image");
    let mut s = sh("id -u; id -g; id -G; echo $HOME; grep CapEff /proc/self/status");
    s.user = Some("app".into());
    let out = ok(&s);
    assert_eq!(
        out,
        "1000\n1000\n1000 10 29\n/home/app\nCapEff:\t0000000000000000\n"
    );
    // A non-root user can write where the image lets it (copy-up into an
    // upper dir that lives in a 0700 scratch dir).
    let mut w =
        sh("echo hi > /tmp/mine && ls -n /tmp/mine | tr -s ' ' | cut -d' ' -f3,4 && cat /tmp/mine");
    w.user = Some("app".into());
    assert_eq!(ok(&w), "1000 1000\nhi\n");
    s.user = Some("1000:29".into());
    let out = ok(&s);
    assert!(out.starts_with("1000\n29\n"), "{out}");
    s.user = Some("nobody:wheel".into());
    assert!(ok(&s).starts_with("65534\n10\n"));
    s.user = Some("4242".into());
    assert!(ok(&s).starts_with("4242\n0\n"));
    s.user = Some("ghost".into());
    let e = run(&s).err().expect("unknown user");
    assert!(e.to_string().contains("unable to find user ghost"), "{e}");
}

#[test]
fn env_and_workdir() {
    need_root!("env_and_workdir");
    let mut s = sh("echo $PATH; echo $FOO; echo $HOME; pwd; ls -ld . | cut -c1-10");
    s.env = vec!["FOO=bar baz".into()];
    s.cwd = "/work/dir".into();
    let out = ok(&s);
    assert_eq!(
        out,
        format!(
            "{}\nbar baz\n/root\n/work/dir\ndrwxr-xr-x\n",
            kiln_runner::DEFAULT_PATH
        )
    );
    s.env = vec!["PATH=/bin".into(), "HOME=/h".into()];
    let out = ok(&s);
    assert!(out.starts_with("/bin\n\n/h\n"), "{out}");
}

#[test]
fn upper_dir_is_exactly_what_the_process_wrote() {
    need_root!("upper_dir_is_exactly_what_the_process_wrote");
    let t = tempfile::tempdir().unwrap();
    let (upper, work) = (t.path().join("upper"), t.path().join("work"));
    std::fs::create_dir_all(&upper).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    let mut s = sh("echo data > /new.txt; mkdir -p /srv/app; rm /bin/ls; \
         cat /etc/hosts > /dev/null; echo x > /etc/hosts; ls /proc > /dev/null");
    s.rootfs.upper = Some((upper.clone(), work));
    s.mounts.push(MountSpec {
        target: "/run/cache".into(),
        kind: MountKind::Tmpfs {
            size: Some(1 << 20),
        },
    });
    s.cwd = "/srv/app".into();
    ok(&s);
    assert_eq!(tree(&upper), ["bin", "bin/ls", "new.txt", "srv", "srv/app"]);
    let wh = std::fs::symlink_metadata(upper.join("bin/ls")).unwrap();
    assert!(
        wh.file_type().is_char_device() && wh.rdev() == 0,
        "ls is a whiteout"
    );
    assert_eq!(
        std::fs::read_to_string(upper.join("new.txt")).unwrap(),
        "data\n"
    );
}

#[test]
fn bind_tmpfs_and_secret_mounts() {
    need_root!("bind_tmpfs_and_secret_mounts");
    let t = tempfile::tempdir().unwrap();
    let cache = t.path().join("cache");
    let ctx = t.path().join("ctx");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("app.py"), "print(1)\n").unwrap();
    let secret = t.path().join("secret");
    std::fs::write(&secret, "s3cret").unwrap();
    let mut s = sh("cat /src/app.py; echo more >> /var/cache/x; cat /run/secrets/token; echo; \
         touch /src/nope 2>/dev/null || echo ro-ok; df /scratch | tail -1 | tr -s ' ' | cut -d' ' -f2");
    s.mounts = vec![
        MountSpec {
            target: "/src".into(),
            kind: MountKind::Bind {
                source: ctx.clone(),
                readonly: true,
            },
        },
        MountSpec {
            target: "/var/cache".into(),
            kind: MountKind::Bind {
                source: cache.clone(),
                readonly: false,
            },
        },
        MountSpec {
            target: "/run/secrets/token".into(),
            kind: MountKind::Bind {
                source: secret,
                readonly: true,
            },
        },
        MountSpec {
            target: "/scratch".into(),
            kind: MountKind::Tmpfs {
                size: Some(4 << 20),
            },
        },
    ];
    let out = ok(&s);
    assert_eq!(out, "print(1)\ns3cret\nro-ok\n4096\n");
    assert_eq!(std::fs::read_to_string(cache.join("x")).unwrap(), "more\n");
    assert!(!ctx.join("nope").exists());
}

#[test]
fn a_mount_under_dev_lands_on_the_dev_tmpfs() {
    need_root!("a_mount_under_dev_lands_on_the_dev_tmpfs");
    // BuildKit runs a shebang heredoc as a file mounted at /dev/pipes/NAME:
    // the target does not exist in the fresh /dev tmpfs and must be made
    // there, never in the image.
    let t = tempfile::tempdir().unwrap();
    let script = t.path().join("script");
    std::fs::write(&script, "#!/bin/sh\necho from-pipes\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut s = sh("/dev/pipes/EOF");
    s.mounts = vec![MountSpec {
        target: "/dev/pipes/EOF".into(),
        kind: MountKind::Bind {
            source: script,
            readonly: true,
        },
    }];
    assert_eq!(ok(&s), "from-pipes\n");
}

#[test]
fn network_modes() {
    need_root!("network_modes");
    let count = "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\\n' ' '";
    let mut s = sh(count);
    s.network = NetworkMode::None;
    assert_eq!(ok(&s), "lo ");
    // (NetworkMode::Private, with its user-mode stack: tests/network.rs.)
    // lo is up: a local server is reachable.
    let mut s2 = sh(
        "(echo pong | nc -l -p 7777 127.0.0.1 &); for i in $(seq 200); do \
            nc 127.0.0.1 7777 </dev/null 2>/dev/null && exit 0; usleep 50000; done; exit 1",
    );
    s2.network = NetworkMode::None;
    assert_eq!(ok(&s2), "pong\n");
    let host: Vec<String> = std::fs::read_to_string("/proc/net/dev")
        .unwrap()
        .lines()
        .skip(2)
        .map(|l| l.split(':').next().unwrap().trim().to_string())
        .collect();
    let mut h = sh("hostname");
    h.network = NetworkMode::Host;
    let host_name = rustix::system::uname()
        .nodename()
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(
        ok(&h),
        format!("{host_name}\n"),
        "host network: the host's name"
    );
    s.network = NetworkMode::Host;
    let out = ok(&s);
    for i in &host {
        assert!(
            out.contains(i.as_str()),
            "host interface {i} missing: {out}"
        );
    }
}

#[test]
fn readonly_rootfs() {
    need_root!("readonly_rootfs");
    let mut s = sh("touch /x 2>/dev/null && echo WROTE; echo ok > /tmp2/y && cat /tmp2/y");
    s.readonly_rootfs = true;
    s.mounts.push(MountSpec {
        target: "/tmp2".into(),
        kind: MountKind::Tmpfs { size: None },
    });
    assert_eq!(ok(&s), "ok\n");
}

#[test]
fn from_scratch_and_many_long_lowers() {
    need_root!("from_scratch_and_many_long_lowers");
    // No lowers at all: the binary comes in through a bind mount.
    let mut s = spec(&["/bb/busybox", "echo", "scratch"]);
    s.rootfs.lowers.clear();
    s.mounts.push(MountSpec {
        target: "/bb/busybox".into(),
        kind: MountKind::Bind {
            source: BUSYBOX.into(),
            readonly: true,
        },
    });
    assert_eq!(ok(&s), "scratch\n");

    // 150 lowers with long paths: far beyond one page of mount options.
    let t = tempfile::tempdir().unwrap();
    let mut lowers: Vec<PathBuf> = Vec::new();
    for i in 0..150 {
        let d = t.path().join(format!("{:0>120}", i));
        std::fs::create_dir_all(d.join("layers")).unwrap();
        std::fs::write(d.join("layers").join(format!("l{i}")), "").unwrap();
        std::fs::write(d.join("which"), format!("{i}")).unwrap();
        lowers.push(d);
    }
    // One path longer than fsconfig's 256-byte string limit.
    let long = t.path().join(format!("{:x<200}/{:y<200}", "", ""));
    std::fs::create_dir_all(long.join("layers")).unwrap();
    std::fs::write(long.join("layers/long"), "").unwrap();
    lowers.push(long);
    lowers.push(busybox_root().to_path_buf());
    let mut s = sh("ls /layers | wc -l; cat /which");
    s.rootfs = RootFs {
        lowers,
        upper: None,
    };
    assert_eq!(ok(&s), "151\n0");
}

#[test]
fn init_reaps_orphans() {
    need_root!("init_reaps_orphans");
    // The orphaned sleeps are re-parented to our PID 1 and must be reaped:
    // wait (up to 20 s) until no sleep is left, zombie or not, then count
    // zombies.
    let out = ok(&sh("for i in 1 2 3 4 5; do (sleep 0.01 &); done; i=0; \
         while ps -o stat,comm | grep -q sleep && [ $i -lt 2000 ]; do \
             usleep 10000; i=$((i+1)); done; \
         ps -o stat,comm | grep -c '^Z' || true"));
    assert_eq!(out, "0\n");
}

#[test]
fn many_containers_concurrently_from_threads() {
    need_root!("many_containers_concurrently_from_threads");
    let handles: Vec<_> = (0..8)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..4 {
                    let out = ok(&sh(&format!("echo {t}-{i}")));
                    assert_eq!(out, format!("{t}-{i}\n"));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn kill_switch_ends_a_running_container() {
    need_root!("kill_switch_ends_a_running_container");
    let ks = kiln_runner::KillSwitch::new();
    let ks2 = ks.clone();
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
    let h = std::thread::spawn(move || {
        kiln_runner::run_killable(
            &cfg(),
            &sh("echo up; exec sleep 1000"),
            kiln_runner::Stdio {
                stdin: None,
                stdout: Some(w),
                stderr: None,
            },
            &ks2,
        )
    });
    // Wait until the process runs, then cancel.
    let mut buf = [0u8; 3];
    std::io::Read::read_exact(&mut std::fs::File::from(r), &mut buf).unwrap();
    assert_eq!(&buf, b"up\n");
    ks.kill();
    assert_eq!(h.join().unwrap().unwrap(), 137);
    // Killed before it starts: it never runs its command.
    let ks = kiln_runner::KillSwitch::new();
    ks.kill();
    let code = kiln_runner::run_killable(&cfg(), &sh("exit 0"), Default::default(), &ks).unwrap();
    assert_eq!(code, 137);
}

#[test]
fn tty_is_a_pty_inside_the_container() {
    need_root!("tty_is_a_pty_inside_the_container");
    use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
    use std::io::{Read, Write};
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC).unwrap();
    grantpt(&master).unwrap();
    unlockpt(&master).unwrap();
    let name = ptsname(&master, Vec::new()).unwrap();
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(name.to_str().unwrap())
        .unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kiln-runner-testbin"))
        .arg("run-tty")
        .arg(state.path())
        .arg(busybox_root())
        .arg("/bin/sh")
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave)
        .spawn()
        .unwrap();
    let mut m = std::fs::File::from(master);
    m.write_all(b"echo hi-$((1+2)); tty; exit 3\n").unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    // EIO once every slave is closed.
    while let Ok(n) = m.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    let status = child.wait().unwrap();
    let out = String::from_utf8_lossy(&out);
    assert_eq!(status.code(), Some(3), "{out}");
    assert!(out.contains("hi-3"), "{out}");
    // The pty comes from the container's own devpts instance.
    assert!(out.contains("/dev/pts/0"), "{out}");
}
