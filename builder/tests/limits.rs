//! `kiln run --memory/--memory-swap/--cpus/--cpu-shares/--pids-limit`
//! through the binary on the offline busybox image: the kernel really
//! enforces them (OOM kill, fork refused), the cgroup files hold docker's
//! values, and the cgroups go away with the container.

mod common;

use std::path::{Path, PathBuf};

use common::{require, Kiln};
use kiln_runner::cgroups::{self, Controller, Location};
use serde_json::Value;

/// Root, the busybox image, and the controllers the test needs on this
/// host (v1 or v2).
fn setup(needs: &[Controller]) -> Option<Kiln> {
    let k = common::root_with_busybox("cgroup limits need root")?;
    let host = cgroups::detect(&cgroups::HostFs).expect("mountinfo");
    for c in needs {
        let ok = matches!(host.location(*c), Location::At { .. });
        if !require(ok, &format!("no cgroup {c} controller here ({host})")) {
            return None;
        }
    }
    Some(k)
}

fn inspect(k: &Kiln, name: &str) -> Value {
    let v: Value = serde_json::from_str(&k.run(&["inspect", name]).ok().stdout()).unwrap();
    v[0].clone()
}

/// The container's cgroup dirs, as `inspect` reports them.
fn cgroup_dirs(c: &Value) -> Vec<(String, Vec<String>, PathBuf)> {
    c["Cgroups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["Version"].as_str().unwrap().to_string(),
                g["Controllers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c.as_str().unwrap().to_string())
                    .collect(),
                PathBuf::from(g["Path"].as_str().unwrap()),
            )
        })
        .collect()
}

fn dir_of(c: &Value, controller: &str) -> (String, PathBuf) {
    cgroup_dirs(c)
        .into_iter()
        .find(|(_, cs, _)| cs.iter().any(|x| x == controller))
        .map(|(v, _, d)| (v, d))
        .unwrap_or_else(|| panic!("no {controller} cgroup in {c}"))
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.join(file).display()))
        .trim()
        .to_string()
}

#[test]
fn allocating_past_the_memory_limit_is_an_oom_kill() {
    let Some(k) = setup(&[Controller::Memory]) else {
        return;
    };
    // dd's 96 MiB buffer is touched by the read from /dev/zero: past the
    // 32m limit and past memory+swap (docker's default 64m) on a host with swap.
    let r = k.run(&[
        "run",
        "--name",
        "hog",
        "--memory",
        "32m",
        "busybox",
        "dd",
        "if=/dev/zero",
        "of=/dev/null",
        "bs=96M",
        "count=1",
    ]);
    assert_eq!(r.code(), 137, "{}", r.stderr());
    let ps = k.run(&["ps", "-a"]).ok().stdout();
    assert!(ps.contains("Exited (137)"), "{ps}");
    let c = inspect(&k, "hog");
    assert_eq!(c["State"]["OOMKilled"], true, "{c}");
    assert_eq!(c["State"]["ExitCode"], 137);
    assert_eq!(c["HostConfig"]["Memory"], 32 << 20);
    assert_eq!(
        c["HostConfig"]["MemorySwap"],
        64 << 20,
        "docker's default: twice --memory"
    );
    let (_, dir) = dir_of(&c, "memory");
    assert!(
        dir.ends_with(format!("kiln/{}", c["Id"].as_str().unwrap())),
        "{}",
        dir.display()
    );
    assert!(
        !dir.exists(),
        "the cgroup is removed when the container exits"
    );

    // Detached: the monitor records it the same way. Under the limit the
    // same command is fine and not OOMKilled.
    k.run(&[
        "run",
        "-d",
        "--name",
        "hog2",
        "-m",
        "32m",
        "busybox",
        "dd",
        "if=/dev/zero",
        "of=/dev/null",
        "bs=96M",
        "count=1",
    ])
    .ok();
    let r = k.run(&[
        "run",
        "--name",
        "fits",
        "--memory",
        "128m",
        "busybox",
        "dd",
        "if=/dev/zero",
        "of=/dev/null",
        "bs=96M",
        "count=1",
    ]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(inspect(&k, "fits")["State"]["OOMKilled"], false);
    let mut c = Value::Null;
    for _ in 0..100 {
        c = inspect(&k, "hog2");
        if c["State"]["Status"] == "exited" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(c["State"]["ExitCode"], 137, "{c}");
    assert_eq!(c["State"]["OOMKilled"], true, "{c}");
    k.run(&["rm", "hog", "hog2", "fits"]).ok();
}

#[test]
fn pids_limit_makes_fork_fail_inside() {
    let Some(k) = setup(&[Controller::Pids]) else {
        return;
    };
    let script = "for i in $(seq 1 20); do sleep 30 & done; echo all started";
    let r = k.run(&[
        "run",
        "--rm",
        "--pids-limit",
        "10",
        "busybox",
        "sh",
        "-c",
        script,
    ]);
    assert_ne!(r.code(), 0);
    assert!(r.stderr().contains("can't fork"), "{}", r.stderr());
    assert!(!r.stdout().contains("all started"));
    // Without the limit the same script starts all twenty.
    let r = k
        .run(&[
            "run",
            "--rm",
            "--pids-limit",
            "-1",
            "busybox",
            "sh",
            "-c",
            script,
        ])
        .ok();
    assert!(r.stdout().contains("all started"));
}

#[test]
fn cpu_and_other_limits_are_in_the_cgroup_files() {
    let Some(k) = setup(&[Controller::Memory, Controller::Cpu, Controller::Pids]) else {
        return;
    };
    k.run(&[
        "run",
        "-d",
        "--name",
        "box",
        "--cpus",
        "0.5",
        "--cpu-shares",
        "512",
        "--memory",
        "64m",
        "--memory-swap",
        "-1",
        "--pids-limit",
        "50",
        "busybox",
        "sleep",
        "100",
    ])
    .ok();
    let c = inspect(&k, "box");
    assert_eq!(c["HostConfig"]["NanoCpus"], 500_000_000);
    assert_eq!(c["HostConfig"]["CpuQuota"], 50_000);
    assert_eq!(c["HostConfig"]["MemorySwap"], -1);
    let (v, cpu) = dir_of(&c, "cpu");
    if v == "v1" {
        assert_eq!(read(&cpu, "cpu.cfs_quota_us"), "50000");
        assert_eq!(read(&cpu, "cpu.cfs_period_us"), "100000");
        assert_eq!(read(&cpu, "cpu.shares"), "512");
    } else {
        assert_eq!(read(&cpu, "cpu.max"), "50000 100000");
        assert_eq!(
            read(&cpu, "cpu.weight"),
            "59",
            "runc's conversion of 512 shares"
        );
    }
    let (v, mem) = dir_of(&c, "memory");
    if v == "v1" {
        assert_eq!(
            read(&mem, "memory.limit_in_bytes"),
            (64u64 << 20).to_string()
        );
        // -1: unlimited, which v1 shows as its page-rounded maximum.
        assert!(read(&mem, "memory.memsw.limit_in_bytes").len() > 15);
    } else {
        assert_eq!(read(&mem, "memory.max"), (64u64 << 20).to_string());
        assert_eq!(read(&mem, "memory.swap.max"), "max");
    }
    let (_, pids) = dir_of(&c, "pids");
    assert_eq!(read(&pids, "pids.max"), "50");
    // The container's process is in them (the host's view of its cgroups).
    let pid = c["State"]["Pid"].as_i64().unwrap();
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let id = c["Id"].as_str().unwrap();
    assert!(own.contains(&format!("/kiln/{id}")), "{own}");
    let procs = read(&pids, "cgroup.procs");
    assert!(procs.lines().any(|p| p == pid.to_string()), "{procs}");

    k.run(&["rm", "-f", "box"]).ok();
    for (_, _, d) in cgroup_dirs(&c) {
        assert!(!d.exists(), "{} removed with the container", d.display());
    }
}

#[test]
fn a_killed_monitors_cgroups_are_removed_by_the_next_ps() {
    let Some(k) = setup(&[Controller::Pids]) else {
        return;
    };
    k.run(&[
        "run",
        "-d",
        "--name",
        "orphan",
        "--pids-limit",
        "20",
        "busybox",
        "sleep",
        "100",
    ])
    .ok();
    let c = inspect(&k, "orphan");
    let (_, dir) = dir_of(&c, "pids");
    assert!(dir.is_dir());
    // PID 1 of the container <- its helper <- the monitor.
    let ppid = |pid: i64| -> i64 {
        let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let rest = &s[s.rfind(')').unwrap() + 2..];
        rest.split(' ').nth(1).unwrap().parse().unwrap()
    };
    let monitor = ppid(ppid(c["State"]["Pid"].as_i64().unwrap()));
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(monitor as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let mut gone = false;
    for _ in 0..100 {
        let ps = k.run(&["ps", "-a"]).ok().stdout();
        if ps.contains("Exited") && !dir.exists() {
            gone = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(gone, "{} still there", dir.display());
    k.run(&["rm", "orphan"]).ok();
}

#[test]
fn bad_limits_are_dockers_errors() {
    let Some(k) = common::root_with_busybox("containers need root") else {
        return;
    };
    let cases: [(&[&str], &str); 7] = [
        (
            &["--memory", "abc"],
            "invalid argument \"abc\" for \"-m, --memory\" flag: invalid size: 'abc'",
        ),
        (&["--memory", "5m"], "Minimum memory limit allowed is 6MB"),
        (
            &["-m", "64m", "--memory-swap", "32m"],
            "Minimum memoryswap limit should be larger than memory limit",
        ),
        (
            &["--memory-swap", "64m"],
            "You should always set the Memory limit when using Memoryswap limit",
        ),
        (&["--cpus", "1000"], "Range of CPUs is from 0.01 to"),
        (&["--cpus", "x"], "failed to parse x as a rational number"),
        (
            &["--pids-limit", "many"],
            "invalid argument \"many\" for \"--pids-limit\" flag",
        ),
    ];
    for (flags, msg) in cases {
        let mut args = vec!["run", "--rm"];
        args.extend_from_slice(flags);
        args.extend_from_slice(&["busybox", "true"]);
        let r = k.run(&args);
        assert_eq!(r.code(), 125, "{flags:?}: {}", r.stderr());
        assert!(r.stderr().contains(msg), "{flags:?}: {}", r.stderr());
        assert!(r.stderr().lines().count() <= 2, "one line: {}", r.stderr());
    }
    // Nothing was left behind.
    assert!(k.run(&["ps", "-a", "-q"]).ok().stdout().trim().is_empty());
}
