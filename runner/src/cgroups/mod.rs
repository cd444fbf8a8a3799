//! Resource limits through cgroups, v1 and v2 side by side: each
//! controller a container needs is found where this host has it
//! ([`detect`]), and the container gets `<hierarchy>/kiln/<id>` in each of
//! those hierarchies, with docker's limits written into it ([`limits`]).
//! All file access goes through [`fs::CgroupFs`].
//!
//! The container's PID 1 joins the cgroups right after it is forked (it
//! writes `0` into each `cgroup.procs`), so everything the container runs
//! is inside and the runner's own helper is not. The cgroups are removed
//! when the container exits and, for one whose supervisor was killed, by
//! the next `ps`/`rm`.

pub mod detect;
pub mod fs;
pub(crate) mod join;
pub mod limits;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use detect::{Controller, Host, Location, Version};
pub use fs::{CgroupFs, HostFs};
pub use limits::{parse_cpus, parse_memory, parse_memory_swap, Resources};

/// One cgroup made for a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placed {
    pub version: Version,
    /// The controllers kiln set limits with in this cgroup.
    pub controllers: Vec<Controller>,
    pub dir: PathBuf,
}

/// A container's cgroups.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub cgroups: Vec<Placed>,
    /// What could not be set and was not asked for explicitly (docker's
    /// warnings), for the caller to print.
    #[serde(default)]
    pub warnings: Vec<String>,
}

impl Placement {
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.cgroups.iter().map(|c| c.dir.clone()).collect()
    }
}

/// The host's cgroup controllers, read through `fs`.
pub fn detect(fs: &dyn CgroupFs) -> Result<Host, String> {
    let mountinfo = fs
        .read(Path::new("/proc/self/mountinfo"))
        .map_err(|e| format!("reading /proc/self/mountinfo: {e}"))?;
    // Missing only without CONFIG_CGROUPS, which the mountinfo shows too.
    let kernel = fs.read(Path::new("/proc/cgroups")).unwrap_or_default();
    Ok(Host::locate(
        &detect::parse_mountinfo(&mountinfo),
        &detect::parse_proc_cgroups(&kernel),
        &mut |m| fs.read(&m.join("cgroup.controllers")).ok(),
    ))
}

/// Make the container's cgroups and write `res` into them. On error
/// nothing is left behind; the message names the flag and the controller.
pub fn create(
    fs: &dyn CgroupFs,
    host: &Host,
    id: &str,
    res: &Resources,
) -> Result<Placement, String> {
    // One cgroup per hierarchy, with every controller it holds.
    let mut placement = Placement::default();
    for c in res.controllers() {
        let (version, mount) = match host.location(c) {
            Location::At { version, mount } => (*version, mount.clone()),
            Location::Absent(why) => {
                return Err(format!(
                    "{} needs the cgroup {c} controller, which this host does not offer: {why} \
                     (detected: {host})",
                    res.flag_for(c)
                ))
            }
        };
        let dir = mount.join("kiln").join(id);
        match placement.cgroups.iter_mut().find(|p| p.dir == dir) {
            Some(p) => p.controllers.push(c),
            None => placement.cgroups.push(Placed {
                version,
                controllers: vec![c],
                dir,
            }),
        }
    }
    let mut made = Vec::new();
    let r = (|| {
        for p in &placement.cgroups {
            make_dir(fs, p)?;
            made.push(p.dir.clone());
        }
        let mut warnings = Vec::new();
        for p in &placement.cgroups {
            warnings.extend(write_limits(fs, p, res)?);
        }
        Ok(warnings)
    })();
    match r {
        Ok(w) => {
            placement.warnings = w;
            Ok(placement)
        }
        Err(e) => {
            for d in made {
                let _ = fs.rmdir(&d);
            }
            Err(e)
        }
    }
}

/// Why a cgroup could not be made. Rootless kiln (in a user namespace of
/// its own) meets the host's hierarchy as root's: limits need a cgroup
/// delegated to the user (systemd's `Delegate=yes`), which kiln does not
/// use yet, and the message says so instead of a bare EACCES.
fn mkdir_error(d: &Path, e: &std::io::Error, rootless: bool, controllers: &[Controller]) -> String {
    let denied =
        matches!(e.kind(), std::io::ErrorKind::PermissionDenied) || e.raw_os_error() == Some(1);
    if rootless && denied {
        let names: Vec<String> = controllers.iter().map(|c| c.to_string()).collect();
        format!(
            "rootless kiln cannot set resource limits ({} controller): {} is root's, and \
             limits through a cgroup delegated to your user are not built yet; run without \
             the limit flags, or as root",
            names.join(", "),
            d.parent().unwrap_or(d).display()
        )
    } else {
        format!("creating cgroup {}: {e}", d.display())
    }
}

/// `mount/kiln/<id>`; on v2 the controllers are first enabled for the
/// children of the root and of `kiln/` (`cgroup.subtree_control`).
fn make_dir(fs: &dyn CgroupFs, p: &Placed) -> Result<(), String> {
    let parent = p.dir.parent().unwrap_or(Path::new("/"));
    let mount = parent.parent().unwrap_or(Path::new("/"));
    let mkdir = |d: &Path| {
        fs.mkdir(d)
            .map_err(|e| mkdir_error(d, &e, crate::userns::current().is_nested(), &p.controllers))
    };
    if p.version == Version::V2 {
        enable(fs, mount, &p.controllers)?;
        mkdir(parent)?;
        enable(fs, parent, &p.controllers)?;
    } else {
        mkdir(parent)?;
    }
    mkdir(&p.dir)
}

fn enable(fs: &dyn CgroupFs, dir: &Path, controllers: &[Controller]) -> Result<(), String> {
    let file = dir.join("cgroup.subtree_control");
    let on = fs.read(&file).unwrap_or_default();
    for c in controllers {
        if on.split_whitespace().any(|x| x == c.name()) {
            continue;
        }
        fs.write(&file, &format!("+{c}")).map_err(|e| {
            format!(
                "enabling the cgroup {c} controller for {}'s children ({}): {e}",
                dir.display(),
                file.display()
            )
        })?;
    }
    Ok(())
}

fn write_limits(fs: &dyn CgroupFs, p: &Placed, res: &Resources) -> Result<Vec<String>, String> {
    let mut warnings = Vec::new();
    for &c in &p.controllers {
        for s in limits::settings(res, c, p.version) {
            let path = p.dir.join(s.file);
            match fs.write(&path, &s.value) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let swap = s.file.contains("memsw") || s.file.contains("swap");
                    if swap && !s.explicit {
                        // dockerd's warning, word for word.
                        warnings.push(
                            "Your kernel does not support swap limit capabilities or the cgroup \
                             is not mounted. Memory limited without swap."
                                .into(),
                        );
                        continue;
                    }
                    let why = if swap {
                        ": swap accounting is off (a kernel built with CONFIG_MEMCG_SWAP and \
                         booted with swapaccount=1 has it)"
                    } else {
                        ": the kernel does not offer this limit"
                    };
                    return Err(format!(
                        "{} cannot be enforced: the cgroup {c} controller ({}) has no {}{why}",
                        if swap {
                            "--memory-swap"
                        } else {
                            res.flag_for(c)
                        },
                        p.dir.display(),
                        s.file
                    ));
                }
                Err(e) => {
                    return Err(format!(
                        "{}: writing {} to {}: {e}",
                        res.flag_for(c),
                        s.value,
                        path.display()
                    ))
                }
            }
        }
    }
    Ok(warnings)
}

/// The `oom_kill` counter of `memory.events` (v2) or `memory.oom_control`
/// (v1): both are "key value" lines.
pub fn parse_oom_kill(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|v| v.trim().parse().ok())
}

/// Whether the kernel's OOM killer killed a process of the container's
/// memory cgroup (what docker reports as `OOMKilled`).
pub fn oom_killed(fs: &dyn CgroupFs, placement: &Placement) -> bool {
    oom_kills(fs, placement) > 0
}

/// How many OOM kills the container's memory cgroup has counted (its
/// monitor compares them across restarts: `OOMKilled` is the last run's).
pub fn oom_kills(fs: &dyn CgroupFs, placement: &Placement) -> u64 {
    placement
        .cgroups
        .iter()
        .filter(|p| p.controllers.contains(&Controller::Memory))
        .map(|p| {
            let file = match p.version {
                Version::V1 => "memory.oom_control",
                Version::V2 => "memory.events",
            };
            fs.read(&p.dir.join(file))
                .ok()
                .and_then(|t| parse_oom_kill(&t))
                .unwrap_or(0)
        })
        .sum()
}

/// Remove the container's cgroups. Processes that are exiting still hold
/// one for a moment (EBUSY): retried for up to a second.
pub fn remove(fs: &dyn CgroupFs, placement: &Placement) -> Result<(), String> {
    for p in &placement.cgroups {
        let mut tries = 0;
        loop {
            match fs.rmdir(&p.dir) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 100 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => return Err(format!("removing cgroup {}: {e}", p.dir.display())),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
