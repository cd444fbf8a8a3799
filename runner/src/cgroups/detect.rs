//! Where each cgroup controller is on this host: a v1 hierarchy of its own
//! (or shared, `cpu,cpuacct`), the unified (v2) hierarchy, or nowhere.
//! Read from `/proc/self/mountinfo`, `/proc/cgroups` and the v2 root's
//! `cgroup.controllers`; the parsers are pure.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The controllers kiln's limits use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Controller {
    Memory,
    Cpu,
    Pids,
}

impl Controller {
    pub const ALL: [Controller; 3] = [Controller::Memory, Controller::Cpu, Controller::Pids];

    /// The kernel's name (`/proc/cgroups`, mount options, cgroup.controllers).
    pub fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Cpu => "cpu",
            Controller::Pids => "pids",
        }
    }
}

impl fmt::Display for Controller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Version {
    V1,
    V2,
}

/// A mounted cgroup filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMount {
    pub version: Version,
    pub mount_point: PathBuf,
    /// The cgroup of the hierarchy that is mounted there ("/" normally).
    pub root: String,
    /// v1: the controllers bound to the hierarchy (from the super options).
    pub controllers: Vec<String>,
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup and cgroup2 mounts of a `/proc/self/mountinfo`.
pub fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let l: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        if l.len() < 6 || r.len() < 3 {
            continue;
        }
        let version = match r[0] {
            "cgroup" => Version::V1,
            "cgroup2" => Version::V2,
            _ => continue,
        };
        let known = [
            "memory",
            "cpu",
            "pids",
            "cpuacct",
            "cpuset",
            "devices",
            "freezer",
            "blkio",
            "net_cls",
            "net_prio",
            "perf_event",
            "hugetlb",
            "rdma",
            "misc",
        ];
        let controllers = match version {
            Version::V1 => r[2]
                .split(',')
                .filter(|o| known.contains(o))
                .map(str::to_string)
                .collect(),
            Version::V2 => Vec::new(),
        };
        out.push(CgroupMount {
            version,
            mount_point: PathBuf::from(unescape(l[4])),
            root: unescape(l[3]),
            controllers,
        });
    }
    out
}

/// A line of `/proc/cgroups`: name, hierarchy ID (0: v2 or unmounted),
/// enabled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelController {
    pub name: String,
    pub hierarchy: u32,
    pub enabled: bool,
}

pub fn parse_proc_cgroups(text: &str) -> Vec<KernelController> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some(KernelController {
                name: f.first()?.to_string(),
                hierarchy: f.get(1)?.parse().ok()?,
                enabled: *f.get(3)? == "1",
            })
        })
        .collect()
}

/// Where one controller is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Location {
    /// A hierarchy mounted at `mount`: kiln's cgroups go in `mount/kiln/<id>`.
    At { version: Version, mount: PathBuf },
    /// Not usable here, and why.
    Absent(String),
}

/// What was detected on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub controllers: Vec<(Controller, Location)>,
    /// The unified hierarchy, if mounted, and the controllers it offers.
    pub unified: Option<(PathBuf, Vec<String>)>,
}

impl Host {
    /// `v2_controllers` reads the v2 mount's `cgroup.controllers`.
    pub fn locate(
        mounts: &[CgroupMount],
        kernel: &[KernelController],
        v2_controllers: &mut dyn FnMut(&std::path::Path) -> Option<String>,
    ) -> Host {
        // A hierarchy mounted twice (a bind mount of a sub-cgroup): prefer
        // the mount of its root.
        let mut v1: Vec<&CgroupMount> =
            mounts.iter().filter(|m| m.version == Version::V1).collect();
        v1.sort_by_key(|m| m.root != "/");
        let unified = mounts
            .iter()
            .filter(|m| m.version == Version::V2)
            .min_by_key(|m| m.root != "/")
            .map(|m| {
                let list = v2_controllers(&m.mount_point).unwrap_or_default();
                (
                    m.mount_point.clone(),
                    list.split_whitespace()
                        .map(str::to_string)
                        .collect::<Vec<_>>(),
                )
            });
        let controllers = Controller::ALL
            .iter()
            .map(|&c| {
                let name = c.name();
                if let Some(m) = v1.iter().find(|m| m.controllers.iter().any(|x| x == name)) {
                    return (
                        c,
                        Location::At {
                            version: Version::V1,
                            mount: m.mount_point.clone(),
                        },
                    );
                }
                if let Some((mount, list)) = &unified {
                    if list.iter().any(|x| x == name) {
                        return (
                            c,
                            Location::At {
                                version: Version::V2,
                                mount: mount.clone(),
                            },
                        );
                    }
                }
                let why = match kernel.iter().find(|k| k.name == name) {
                    None => "this kernel has no such controller".to_string(),
                    Some(k) if !k.enabled => {
                        "it is disabled (cgroup_disable= on the kernel command line)".to_string()
                    }
                    Some(k) if k.hierarchy != 0 => format!(
                        "it is bound to v1 hierarchy {} which is not mounted here",
                        k.hierarchy
                    ),
                    Some(_) if unified.is_some() => {
                        "it is neither mounted as v1 nor offered by the v2 hierarchy".to_string()
                    }
                    Some(_) => "no cgroup filesystem offers it".to_string(),
                };
                (c, Location::Absent(why))
            })
            .collect();
        Host {
            controllers,
            unified,
        }
    }

    pub fn location(&self, c: Controller) -> &Location {
        static UNKNOWN: Location = Location::Absent(String::new());
        self.controllers
            .iter()
            .find(|(x, _)| *x == c)
            .map(|(_, l)| l)
            .unwrap_or(&UNKNOWN)
    }
}

impl fmt::Display for Host {
    /// "memory: cgroup v1 at /sys/fs/cgroup/memory, cpu: ..., pids: absent
    /// (...); unified (v2) hierarchy at /sys/fs/cgroup/unified offering hugetlb".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .controllers
            .iter()
            .map(|(c, l)| match l {
                Location::At { version, mount } => format!(
                    "{c}: cgroup {} at {}",
                    if *version == Version::V1 { "v1" } else { "v2" },
                    mount.display()
                ),
                Location::Absent(why) => format!("{c}: absent ({why})"),
            })
            .collect();
        write!(f, "{}", parts.join(", "))?;
        match &self.unified {
            Some((m, list)) if list.is_empty() => write!(
                f,
                "; unified (v2) hierarchy at {} offering no controllers",
                m.display()
            ),
            Some((m, list)) => write!(
                f,
                "; unified (v2) hierarchy at {} offering {}",
                m.display(),
                list.join(" ")
            ),
            None => write!(f, "; no unified (v2) hierarchy"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine's: v1 controllers each on their own, v2 beside them.
    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const PROC_CGROUPS: &str = "\
#subsys_name\thierarchy\tnum_cgroups\tenabled
cpuset\t3\t1\t1
cpu\t1\t1\t1
cpuacct\t2\t1\t1
memory\t4\t52\t1
hugetlb\t0\t1\t1
pids\t8\t1\t1
";
    /// Debian 12's: one cgroup2 mount with systemd.
    const UNIFIED: &str = "\
26 22 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    #[test]
    fn hybrid_hierarchy_puts_each_controller_on_v1() {
        let m = parse_mountinfo(HYBRID);
        assert_eq!(m.len(), 6, "tmpfs is not a cgroup mount");
        assert_eq!(m[0].controllers, vec!["cpu"]);
        assert_eq!(
            m[4].controllers,
            Vec::<String>::new(),
            "name=systemd is no controller"
        );
        let k = parse_proc_cgroups(PROC_CGROUPS);
        assert_eq!(
            k[3],
            KernelController {
                name: "memory".into(),
                hierarchy: 4,
                enabled: true
            }
        );
        let h = Host::locate(&m, &k, &mut |p| {
            assert_eq!(p, std::path::Path::new("/sys/fs/cgroup/unified"));
            Some("hugetlb\n".into())
        });
        assert_eq!(
            h.location(Controller::Memory),
            &Location::At {
                version: Version::V1,
                mount: "/sys/fs/cgroup/memory".into()
            }
        );
        assert_eq!(
            h.location(Controller::Cpu),
            &Location::At {
                version: Version::V1,
                mount: "/sys/fs/cgroup/cpu".into()
            }
        );
        assert_eq!(
            h.to_string(),
            "memory: cgroup v1 at /sys/fs/cgroup/memory, cpu: cgroup v1 at /sys/fs/cgroup/cpu, \
             pids: cgroup v1 at /sys/fs/cgroup/pids; unified (v2) hierarchy at \
             /sys/fs/cgroup/unified offering hugetlb"
        );
    }

    #[test]
    fn pure_v2_offers_what_cgroup_controllers_lists() {
        let m = parse_mountinfo(UNIFIED);
        assert_eq!(m[0].version, Version::V2);
        let k = parse_proc_cgroups("#subsys_name\thierarchy\tnum_cgroups\tenabled\nmemory\t0\t90\t1\ncpu\t0\t90\t1\npids\t0\t90\t1\n");
        let h = Host::locate(&m, &k, &mut |_| Some("cpuset cpu io memory pids\n".into()));
        for c in Controller::ALL {
            assert_eq!(
                h.location(c),
                &Location::At {
                    version: Version::V2,
                    mount: "/sys/fs/cgroup".into()
                }
            );
        }
    }

    #[test]
    fn a_missing_controller_says_why() {
        let m = parse_mountinfo(UNIFIED);
        let k = parse_proc_cgroups("memory\t0\t1\t0\ncpu\t5\t1\t1\n");
        let h = Host::locate(&m, &k, &mut |_| Some("io".into()));
        let Location::Absent(why) = h.location(Controller::Memory) else {
            panic!()
        };
        assert!(why.contains("cgroup_disable="), "{why}");
        let Location::Absent(why) = h.location(Controller::Cpu) else {
            panic!()
        };
        assert!(why.contains("hierarchy 5 which is not mounted"), "{why}");
        let Location::Absent(why) = h.location(Controller::Pids) else {
            panic!()
        };
        assert_eq!(why, "this kernel has no such controller");
        assert!(h.to_string().contains("offering io"));
    }

    #[test]
    fn co_mounted_and_escaped_mount_points() {
        let m = parse_mountinfo(
            "1 0 0:1 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n\
             2 0 0:2 /sub /mnt/my\\040cg rw - cgroup cgroup rw,pids\n\
             3 0 0:2 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n",
        );
        assert_eq!(m[0].controllers, vec!["cpu", "cpuacct"]);
        assert_eq!(m[1].mount_point, PathBuf::from("/mnt/my cg"));
        let h = Host::locate(&m, &[], &mut |_| None);
        assert_eq!(
            h.location(Controller::Pids),
            &Location::At {
                version: Version::V1,
                mount: "/sys/fs/cgroup/pids".into()
            },
            "the hierarchy's root mount wins over a bind of a sub-cgroup"
        );
        assert!(h.to_string().ends_with("no unified (v2) hierarchy"));
    }
}
