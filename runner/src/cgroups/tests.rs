//! The placement against a fake cgroup tree (no root needed).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Error, ErrorKind};

use super::*;

/// A cgroup tree in memory: `mkdir` makes the files a new cgroup of that
/// hierarchy has (`kind` says which, by mount point).
struct Fake {
    files: RefCell<BTreeMap<PathBuf, String>>,
    dirs: RefCell<BTreeSet<PathBuf>>,
    /// Files a new cgroup under this mount gets.
    kinds: Vec<(PathBuf, Vec<&'static str>)>,
}

impl Fake {
    fn new(kinds: Vec<(&str, Vec<&'static str>)>) -> Fake {
        let f = Fake {
            files: RefCell::default(),
            dirs: RefCell::default(),
            kinds: kinds
                .into_iter()
                .map(|(m, v)| (PathBuf::from(m), v))
                .collect(),
        };
        for (m, _) in &f.kinds {
            f.dirs.borrow_mut().insert(m.clone());
        }
        f
    }
    fn set(&self, p: &str, v: &str) {
        self.files.borrow_mut().insert(p.into(), v.into());
    }
    fn get(&self, p: &str) -> Option<String> {
        self.files.borrow().get(Path::new(p)).cloned()
    }
}

impl CgroupFs for Fake {
    fn read(&self, path: &Path) -> std::io::Result<String> {
        self.files
            .borrow()
            .get(path)
            .cloned()
            .ok_or_else(|| Error::from(ErrorKind::NotFound))
    }
    fn write(&self, path: &Path, value: &str) -> std::io::Result<()> {
        let mut files = self.files.borrow_mut();
        let f = files
            .get_mut(path)
            .ok_or_else(|| Error::from(ErrorKind::NotFound))?;
        if path.ends_with("cgroup.subtree_control") {
            f.push_str(&format!(" {}", value.trim_start_matches('+')));
        } else {
            *f = value.to_string();
        }
        Ok(())
    }
    fn mkdir(&self, path: &Path) -> std::io::Result<()> {
        if !self.dirs.borrow().contains(path.parent().unwrap()) {
            return Err(Error::from(ErrorKind::NotFound));
        }
        if !self.dirs.borrow_mut().insert(path.to_path_buf()) {
            return Ok(());
        }
        let (_, files) = self
            .kinds
            .iter()
            .find(|(m, _)| path.starts_with(m))
            .expect("mkdir under a known mount");
        for f in files {
            self.files.borrow_mut().insert(path.join(f), String::new());
        }
        Ok(())
    }
    fn rmdir(&self, path: &Path) -> std::io::Result<()> {
        if !self.dirs.borrow_mut().remove(path) {
            return Err(Error::from(ErrorKind::NotFound));
        }
        self.files.borrow_mut().retain(|p, _| !p.starts_with(path));
        Ok(())
    }
}

const V1_MEMORY: [&str; 4] = [
    "cgroup.procs",
    "memory.limit_in_bytes",
    "memory.memsw.limit_in_bytes",
    "memory.oom_control",
];
const V1_CPU: [&str; 4] = [
    "cgroup.procs",
    "cpu.shares",
    "cpu.cfs_period_us",
    "cpu.cfs_quota_us",
];

/// This machine: memory, cpu and pids on v1, v2 with hugetlb only.
fn hybrid(memory_files: Vec<&'static str>) -> Fake {
    let f = Fake::new(vec![
        ("/sys/fs/cgroup/memory", memory_files),
        ("/sys/fs/cgroup/cpu", V1_CPU.to_vec()),
        ("/sys/fs/cgroup/pids", vec!["cgroup.procs", "pids.max"]),
        ("/sys/fs/cgroup/unified", vec!["cgroup.procs"]),
    ]);
    f.set(
        "/proc/self/mountinfo",
        "32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n\
         35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
         39 31 0:36 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n\
         41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n",
    );
    f.set("/sys/fs/cgroup/unified/cgroup.controllers", "hugetlb\n");
    f
}

fn pure_v2() -> Fake {
    let f = Fake::new(vec![(
        "/sys/fs/cgroup",
        vec![
            "cgroup.procs",
            "cgroup.subtree_control",
            "memory.max",
            "memory.swap.max",
            "memory.events",
            "cpu.max",
            "cpu.weight",
            "pids.max",
        ],
    )]);
    f.set(
        "/proc/self/mountinfo",
        "26 22 0:23 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n",
    );
    f.set(
        "/sys/fs/cgroup/cgroup.controllers",
        "cpuset cpu io memory pids\n",
    );
    f.set("/sys/fs/cgroup/cgroup.subtree_control", "cpu");
    f
}

fn limits() -> Resources {
    Resources {
        memory: Some(32 << 20),
        nano_cpus: Some(500_000_000),
        pids_limit: Some(10),
        ..Default::default()
    }
}

#[test]
fn v1_controllers_each_get_kiln_id() {
    let f = hybrid(V1_MEMORY.to_vec());
    let host = detect(&f).unwrap();
    let p = create(&f, &host, "abc", &limits()).unwrap();
    assert_eq!(
        p.dirs(),
        vec![
            PathBuf::from("/sys/fs/cgroup/memory/kiln/abc"),
            PathBuf::from("/sys/fs/cgroup/cpu/kiln/abc"),
            PathBuf::from("/sys/fs/cgroup/pids/kiln/abc"),
        ]
    );
    assert!(p.cgroups.iter().all(|c| c.version == Version::V1));
    assert_eq!(
        f.get("/sys/fs/cgroup/memory/kiln/abc/memory.limit_in_bytes")
            .unwrap(),
        "33554432"
    );
    assert_eq!(
        f.get("/sys/fs/cgroup/memory/kiln/abc/memory.memsw.limit_in_bytes")
            .unwrap(),
        "67108864"
    );
    assert_eq!(
        f.get("/sys/fs/cgroup/cpu/kiln/abc/cpu.cfs_quota_us")
            .unwrap(),
        "50000"
    );
    assert_eq!(
        f.get("/sys/fs/cgroup/cpu/kiln/abc/cpu.cfs_period_us")
            .unwrap(),
        "100000"
    );
    assert_eq!(
        f.get("/sys/fs/cgroup/pids/kiln/abc/pids.max").unwrap(),
        "10"
    );
    assert!(p.warnings.is_empty());

    assert!(!oom_killed(&f, &p));
    f.set(
        "/sys/fs/cgroup/memory/kiln/abc/memory.oom_control",
        "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
    );
    assert!(oom_killed(&f, &p));
    remove(&f, &p).unwrap();
    assert!(!f
        .dirs
        .borrow()
        .contains(Path::new("/sys/fs/cgroup/memory/kiln/abc")));
    remove(&f, &p).unwrap();
}

#[test]
fn v2_one_cgroup_holds_every_controller() {
    let f = pure_v2();
    let host = detect(&f).unwrap();
    let mut r = limits();
    r.cpu_shares = Some(512);
    let p = create(&f, &host, "abc", &r).unwrap();
    assert_eq!(p.dirs(), vec![PathBuf::from("/sys/fs/cgroup/kiln/abc")]);
    assert_eq!(
        p.cgroups[0].controllers,
        vec![Controller::Memory, Controller::Cpu, Controller::Pids]
    );
    let root = f.get("/sys/fs/cgroup/cgroup.subtree_control").unwrap();
    assert_eq!(root, "cpu memory pids", "only what was missing is enabled");
    let kiln = f.get("/sys/fs/cgroup/kiln/cgroup.subtree_control").unwrap();
    assert_eq!(
        kiln.split_whitespace().collect::<Vec<_>>(),
        ["memory", "cpu", "pids"]
    );
    assert_eq!(
        f.get("/sys/fs/cgroup/kiln/abc/memory.max").unwrap(),
        "33554432"
    );
    assert_eq!(
        f.get("/sys/fs/cgroup/kiln/abc/memory.swap.max").unwrap(),
        "33554432"
    );
    assert_eq!(
        f.get("/sys/fs/cgroup/kiln/abc/cpu.max").unwrap(),
        "50000 100000"
    );
    assert_eq!(f.get("/sys/fs/cgroup/kiln/abc/cpu.weight").unwrap(), "59");
    f.set(
        "/sys/fs/cgroup/kiln/abc/memory.events",
        "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n",
    );
    assert!(oom_killed(&f, &p));
}

#[test]
fn a_missing_controller_is_an_error_naming_it() {
    let f = hybrid(V1_MEMORY.to_vec());
    // pids bound nowhere: not on v1, not in v2's list.
    f.set(
        "/proc/self/mountinfo",
        "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
         41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n",
    );
    f.set(
        "/proc/cgroups",
        "#subsys_name\thierarchy\tnum_cgroups\tenabled\npids\t8\t1\t1\n",
    );
    let host = detect(&f).unwrap();
    let e = create(&f, &host, "abc", &limits()).unwrap_err();
    assert!(
        e.starts_with("--cpus needs the cgroup cpu controller, which this host does not offer"),
        "{e}"
    );
    assert!(
        e.contains("detected: memory: cgroup v1 at /sys/fs/cgroup/memory"),
        "{e}"
    );
    assert!(
        !f.dirs.borrow().iter().any(|d| d.ends_with("abc")),
        "nothing left behind"
    );
    let r = Resources {
        pids_limit: Some(5),
        ..Default::default()
    };
    let e = create(&f, &host, "abc", &r).unwrap_err();
    assert!(
        e.starts_with("--pids-limit needs the cgroup pids controller"),
        "{e}"
    );
    assert!(
        e.contains("bound to v1 hierarchy 8 which is not mounted here"),
        "{e}"
    );
}

#[test]
fn swap_accounting_off_errors_only_when_asked_for() {
    // A memory hierarchy without memsw files: swapaccount=0.
    let no_swap = vec![
        "cgroup.procs",
        "memory.limit_in_bytes",
        "memory.oom_control",
    ];
    let f = hybrid(no_swap.clone());
    let host = detect(&f).unwrap();
    let r = Resources {
        memory: Some(32 << 20),
        ..Default::default()
    };
    let p = create(&f, &host, "a", &r).unwrap();
    assert_eq!(p.warnings.len(), 1);
    assert!(p.warnings[0].contains("Memory limited without swap"));
    let r = Resources {
        memory: Some(32 << 20),
        memory_swap: Some(64 << 20),
        ..Default::default()
    };
    let e = create(&f, &host, "b", &r).unwrap_err();
    assert!(
        e.starts_with("--memory-swap cannot be enforced: the cgroup memory controller"),
        "{e}"
    );
    assert!(
        e.contains("memory.memsw.limit_in_bytes: swap accounting is off"),
        "{e}"
    );
    assert!(!f
        .dirs
        .borrow()
        .contains(Path::new("/sys/fs/cgroup/memory/kiln/b")));
}

#[test]
fn oom_kill_counter_parses() {
    assert_eq!(parse_oom_kill("oom 0\noom_kill 3\n"), Some(3));
    assert_eq!(
        parse_oom_kill("oom_kill_disable 0\nunder_oom 0\noom_kill 0\n"),
        Some(0)
    );
    assert_eq!(parse_oom_kill("oom_kill_disable 1\n"), None);
}

#[test]
fn a_rootless_permission_error_says_limits_need_delegation() {
    let e = std::io::Error::from_raw_os_error(13);
    let d = std::path::Path::new("/sys/fs/cgroup/memory/kiln/abc");
    let m = super::mkdir_error(d, &e, true, &[Controller::Memory]);
    assert!(m.starts_with("rootless kiln cannot set resource limits (memory controller): /sys/fs/cgroup/memory/kiln is root's"), "{m}");
    assert!(m.contains("not built yet"), "{m}");
    let m = super::mkdir_error(d, &e, false, &[Controller::Memory]);
    assert_eq!(
        m,
        "creating cgroup /sys/fs/cgroup/memory/kiln/abc: Permission denied (os error 13)"
    );
}
