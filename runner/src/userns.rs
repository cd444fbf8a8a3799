//! Rootless kiln: the calling process moves itself into a user namespace
//! in which it is root, so that everything kiln does afterwards (unpacking
//! layers with their owners, overlay mounts, the containers' namespaces)
//! works as it does for real root, within the IDs the namespace maps.
//!
//! The map is podman's and rootlesskit's: container (namespace) ID 0 is the
//! user's own ID, IDs 1..=N are the user's subordinate range from
//! `/etc/subuid` and `/etc/subgid`, written by the setuid `newuidmap` and
//! `newgidmap` of Debian's `uidmap` package. A user without a range, or a
//! machine without those tools, gets the one map an unprivileged process
//! may write itself, `0 <uid> 1`; then nothing can own a file as another
//! ID, which [`Entered::warnings`] says.
//!
//! Entering happens once, at the start of `main`, while the process is
//! single-threaded (`unshare(CLONE_NEWUSER)` refuses a threaded caller): a
//! forked child, still in the host's namespace, runs the map tools on its
//! parent and exits. Every later kiln process enters a namespace of its own
//! with the same map, so all of them see the same owners in the store.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};

/// One line of a uid or gid map: `count` IDs from `inside` map to
/// `outside`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub inside: u32,
    pub outside: u32,
    pub count: u32,
}

/// What entering did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entered {
    pub uid_map: Vec<IdRange>,
    pub gid_map: Vec<IdRange>,
    /// To be shown to the user (`kiln: warning: ...`).
    pub warnings: Vec<String>,
}

/// The user namespace the process is in, from `/proc/self/uid_map`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserNs {
    /// The machine's own: IDs are host IDs.
    Initial,
    /// A namespace of its own; `mapped` IDs in all (1: a single-ID map).
    Nested { mapped: u64 },
}

impl UserNs {
    pub fn current() -> UserNs {
        std::fs::read_to_string("/proc/self/uid_map")
            .map(|t| Self::from_map(&t))
            .unwrap_or(UserNs::Initial)
    }

    fn from_map(text: &str) -> UserNs {
        let ranges = parse_map(text);
        match ranges.as_slice() {
            [] => UserNs::Initial,
            [r] if r.inside == 0 && r.outside == 0 && r.count == u32::MAX => UserNs::Initial,
            _ => UserNs::Nested {
                mapped: ranges.iter().map(|r| u64::from(r.count)).sum(),
            },
        }
    }

    pub fn is_nested(&self) -> bool {
        matches!(self, UserNs::Nested { .. })
    }
}

/// Cached for the process: the namespace never changes after `main`'s start.
pub fn current() -> &'static UserNs {
    static NS: std::sync::OnceLock<UserNs> = std::sync::OnceLock::new();
    NS.get_or_init(UserNs::current)
}

/// Whether `id` is mapped in this process's gid map (for mount options that
/// name a group, like devpts' `gid=5`).
pub fn gid_is_mapped(id: u32) -> bool {
    match std::fs::read_to_string("/proc/self/gid_map") {
        Ok(t) => parse_map(&t)
            .iter()
            .any(|r| id >= r.inside && u64::from(id) < u64::from(r.inside) + u64::from(r.count)),
        Err(_) => true,
    }
}

/// Whether this user namespace forbids `setgroups` (a single-ID map the
/// process wrote itself).
pub fn setgroups_denied() -> bool {
    std::fs::read_to_string("/proc/self/setgroups").is_ok_and(|s| s.trim() == "deny")
}

pub(crate) fn parse_map(text: &str) -> Vec<IdRange> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace().map(|n| n.parse::<u32>().ok());
            Some(IdRange {
                inside: f.next()??,
                outside: f.next()??,
                count: f.next()??,
            })
        })
        .collect()
}

/// The first range of `/etc/subuid`-format `text` for the user, named or by
/// number, as `(start, count)`. Lines are `name:start:count`.
pub fn subordinate_range(text: &str, name: Option<&str>, id: u32) -> Option<(u32, u32)> {
    let id_s = id.to_string();
    text.lines().find_map(|l| {
        let mut f = l.trim().splitn(3, ':');
        let who = f.next()?;
        if who != id_s && Some(who) != name {
            return None;
        }
        let start: u32 = f.next()?.trim().parse().ok()?;
        let count: u32 = f.next()?.trim().parse().ok()?;
        (count > 0 && start.checked_add(count).is_some()).then_some((start, count))
    })
}

fn user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 2 && f[2] == uid.to_string()).then(|| f[0].to_string())
    })
}

/// `newuidmap` and the like: `PATH`, then where Debian puts them.
fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/bin", "/usr/sbin"].iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// What the machine says about the user, read once.
struct Facts {
    uid: u32,
    gid: u32,
    name: Option<String>,
    subuid: String,
    subgid: String,
    tools: bool,
}

impl Facts {
    fn of_machine(uid: u32, gid: u32) -> Facts {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        Facts {
            uid,
            gid,
            name: user_name(uid),
            subuid: read("/etc/subuid"),
            subgid: read("/etc/subgid"),
            tools: find_tool("newuidmap").is_some() && find_tool("newgidmap").is_some(),
        }
    }
}

/// The maps for the user and what stands in the way of a full one.
fn plan(f: &Facts) -> (Vec<IdRange>, Vec<IdRange>, Option<String>) {
    let (uid, gid) = (f.uid, f.gid);
    let name = f.name.clone();
    let who = name.clone().unwrap_or_else(|| uid.to_string());
    let sub_u = subordinate_range(&f.subuid, name.as_deref(), uid);
    // /etc/subgid is keyed by user name or uid too, not by gid.
    let sub_g = subordinate_range(&f.subgid, name.as_deref(), uid);
    let single = |id| {
        vec![IdRange {
            inside: 0,
            outside: id,
            count: 1,
        }]
    };
    let why = match (sub_u, sub_g) {
        (None, _) => Some(format!("user {who} has no subordinate uids in /etc/subuid")),
        (_, None) => Some(format!("user {who} has no subordinate gids in /etc/subgid")),
        _ if !f.tools => Some(
            "newuidmap/newgidmap are not installed (Debian: apt-get install uidmap)".to_string(),
        ),
        _ => None,
    };
    match (sub_u, sub_g, why) {
        (Some((us, uc)), Some((gs, gc)), None) => {
            let full = |own, start, count| {
                vec![
                    IdRange {
                        inside: 0,
                        outside: own,
                        count: 1,
                    },
                    IdRange {
                        inside: 1,
                        outside: start,
                        count,
                    },
                ]
            };
            (full(uid, us, uc), full(gid, gs, gc), None)
        }
        (_, _, why) => (single(uid), single(gid), why),
    }
}

/// Moves this process into a new user namespace where it is root, unless
/// it is root already (real root, or root of a namespace it was started
/// in). Must be called while the process is single-threaded.
pub fn enter_rootless() -> Result<Option<Entered>, String> {
    let uid = rustix::process::getuid().as_raw();
    let gid = rustix::process::getgid().as_raw();
    if uid == 0 {
        return Ok(None);
    }
    let (uid_map, gid_map, why) = plan(&Facts::of_machine(uid, gid));
    let mut warnings = Vec::new();
    let pause_dir = crate::pause::dir(uid);
    let joined = pause_dir
        .as_deref()
        .is_some_and(|d| crate::pause::join(d, uid, &uid_map, &gid_map));
    match &why {
        _ if joined => {}
        None => map_with_tools(&uid_map, &gid_map)?,
        Some(_) => map_self(uid, gid)?,
    }
    if !joined {
        if let Some(d) = &pause_dir {
            crate::pause::start(d);
        }
    }
    match &why {
        None => {}
        Some(why) => {
            warnings.push(format!(
                "{why}: only your own IDs are mapped (container root is you), so chown to \
                 another user in a RUN step fails and files that base images give to other \
                 users belong to root in this store; add a range (usermod --add-subuids \
                 100000-165535 --add-subgids 100000-165535 {}) for builds as a root build \
                 makes them",
                user_name(uid).unwrap_or_else(|| uid.to_string())
            ));
        }
    }
    if let Some(r) = uid_map.get(1).filter(|r| r.count < 65535) {
        warnings.push(format!(
            "the subordinate uid range has {} IDs: container IDs above {} cannot own files",
            r.count, r.count
        ));
    }
    Ok(Some(Entered {
        uid_map,
        gid_map,
        warnings,
    }))
}

/// This process is in the user namespace of `pid`.
pub(crate) fn in_user_namespace_of(pid: i32) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (
        std::fs::metadata(format!("/proc/{pid}/ns/user")),
        std::fs::metadata("/proc/self/ns/user"),
    ) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Rootless `exec`, `cp` and `top`: join the user namespace of the running
/// process `pid` (a container's PID 1, in the namespace the `kiln run`
/// that started it made), where this user is root, instead of making a
/// new one that would have no power over the container. False when this
/// process is in that namespace already. Must be called while the process
/// is single-threaded.
pub fn join_user_namespace_of(pid: i32) -> Result<bool, String> {
    use std::os::fd::AsRawFd;
    if in_user_namespace_of(pid) {
        return Ok(false);
    }
    let theirs = format!("/proc/{pid}/ns/user");
    let ns = std::fs::File::open(&theirs)
        .map_err(|e| format!("opening the container's user namespace ({theirs}): {e}"))?;
    // SAFETY: setns on an fd we own; the caller guarantees one thread.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWUSER) } != 0 {
        return Err(format!(
            "joining the container's user namespace: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(true)
}

fn unshare_user() -> Result<(), String> {
    // SAFETY: the caller guarantees a single-threaded process.
    match unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWUSER) } {
        Ok(()) => Ok(()),
        Err(e) => Err(unshare_error(e)),
    }
}

/// One screen on why the kernel refused, and what allows it.
pub fn unshare_error(e: rustix::io::Errno) -> String {
    let hint = match e {
        rustix::io::Errno::NOSPC => {
            "the limit of user namespaces is reached (sysctl user.max_user_namespaces)".to_string()
        }
        rustix::io::Errno::INVAL => "the process is threaded (a kiln bug)".to_string(),
        _ => {
            let mut why = Vec::new();
            if read_sysctl("kernel/unprivileged_userns_clone").as_deref() == Some("0") {
                why.push("sysctl kernel.unprivileged_userns_clone=0 forbids it (set it to 1)");
            }
            if read_sysctl("kernel/apparmor_restrict_unprivileged_userns").as_deref() == Some("1") {
                why.push(
                    "AppArmor restricts unprivileged user namespaces \
                     (sysctl kernel.apparmor_restrict_unprivileged_userns=0)",
                );
            }
            if read_sysctl("user/max_user_namespaces").as_deref() == Some("0") {
                why.push("sysctl user.max_user_namespaces=0 forbids it");
            }
            if why.is_empty() && seccomp_filtered() != Some(false) {
                why.push(
                    "in a container, the default seccomp and AppArmor profiles refuse it: run \
                     the container with --security-opt seccomp=unconfined --security-opt \
                     apparmor=unconfined",
                );
            }
            if why.is_empty() {
                // No filter is active, and no sysctl forbids it: what is
                // left is the kernel's own rule for chrooted processes, or
                // an LSM.
                why.push(
                    "no seccomp filter is active and no sysctl forbids it, so the kernel refused \
                     it for this process: a process chrooted below its mount namespace's root \
                     may not create one (a container of an engine that itself runs under \
                     chroot is), nor one an AppArmor or SELinux policy confines \
                     (--security-opt apparmor=unconfined)",
                );
            }
            why.join("; ")
        }
    };
    format!(
        "rootless kiln needs a user namespace, and creating one failed ({e}): {hint}; or run \
         kiln as root"
    )
}

/// Whether a seccomp filter applies to this process (`Seccomp:` of
/// /proc/self/status: 0 none, 1 strict, 2 filter); None if unknown.
fn seccomp_filtered() -> Option<bool> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let mode = status.lines().find_map(|l| l.strip_prefix("Seccomp:"))?;
    Some(mode.trim() != "0")
}

fn read_sysctl(name: &str) -> Option<String> {
    std::fs::read_to_string(Path::new("/proc/sys").join(name))
        .ok()
        .map(|s| s.trim().to_string())
}

/// The single-ID map an unprivileged process may write for itself.
fn map_self(uid: u32, gid: u32) -> Result<(), String> {
    unshare_user()?;
    let write = |file: &str, text: String| {
        std::fs::write(format!("/proc/self/{file}"), text)
            .map_err(|e| format!("writing /proc/self/{file}: {e}"))
    };
    write("setgroups", "deny".into())?;
    write("uid_map", format!("0 {uid} 1\n"))?;
    write("gid_map", format!("0 {gid} 1\n"))
}

fn map_args(pid: i32, map: &[IdRange]) -> Vec<String> {
    let mut a = vec![pid.to_string()];
    for r in map {
        a.extend([r.inside, r.outside, r.count].map(|n| n.to_string()));
    }
    a
}

/// A child in the host's namespace runs newuidmap/newgidmap on us once we
/// have unshared.
fn map_with_tools(uid_map: &[IdRange], gid_map: &[IdRange]) -> Result<(), String> {
    let me = rustix::process::getpid().as_raw_nonzero().get();
    let (go_r, go_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| format!("pipe: {e}"))?;
    let (err_r, err_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| format!("pipe: {e}"))?;
    let tools = [
        (find_tool("newuidmap"), map_args(me, uid_map)),
        (find_tool("newgidmap"), map_args(me, gid_map)),
    ];
    // SAFETY: the caller guarantees a single-threaded process; the child
    // only reads a pipe, runs two programs and exits.
    match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            drop(go_w);
            drop(err_r);
            let mut b = [0u8; 1];
            let mut go = std::fs::File::from(go_r);
            let code = match go.read(&mut b) {
                Ok(1) => run_tools(&tools, &err_w),
                _ => 1, // the parent could not unshare and said so itself
            };
            // SAFETY: _exit in a forked child: nothing of the parent's to unwind.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop(go_r);
            drop(err_w);
            let unshared = unshare_user();
            let mut go = std::fs::File::from(go_w);
            if unshared.is_ok() {
                let _ = go.write_all(b"1");
            }
            drop(go);
            let mut msg = String::new();
            let _ = std::fs::File::from(err_r).read_to_string(&mut msg);
            let status = waitpid(child, None).map_err(|e| format!("waitpid: {e}"))?;
            unshared?;
            if status != WaitStatus::Exited(child, 0) {
                return Err(format!("mapping the user namespace's IDs: {}", msg.trim()));
            }
            // Supplementary groups of the host would show as nobody.
            nix::unistd::setgroups(&[]).map_err(|e| format!("setgroups: {e}"))?;
            Ok(())
        }
    }
}

/// Both map helpers at once (each is a set-uid or file-capability program
/// whose start is most of entering the namespace), then their verdicts.
fn run_tools(tools: &[(Option<PathBuf>, Vec<String>)], err: &impl AsFd) -> i32 {
    let mut started = Vec::new();
    for (tool, args) in tools {
        let Some(tool) = tool else { return 1 };
        started.push((tool, args));
    }
    let children: Vec<_> = started
        .iter()
        .map(|(tool, args)| {
            std::process::Command::new(tool)
                .args(args.iter())
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
        })
        .collect();
    let mut failed = None;
    for ((tool, args), child) in started.into_iter().zip(children) {
        let msg = match child.and_then(|c| c.wait_with_output()) {
            Ok(o) if o.status.success() => continue,
            Ok(o) => format!(
                "{} {} failed: {}",
                tool.display(),
                args.join(" "),
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => format!("running {}: {e}", tool.display()),
        };
        failed.get_or_insert(msg);
    }
    match failed {
        None => 0,
        Some(msg) => {
            let _ = rustix::io::write(err, msg.as_bytes());
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_found_by_name_or_uid() {
        let t = "alice:100000:65536\n1001:200000:1000\nbob:x:1\n";
        assert_eq!(
            subordinate_range(t, Some("alice"), 1000),
            Some((100000, 65536))
        );
        assert_eq!(
            subordinate_range(t, Some("carol"), 1001),
            Some((200000, 1000))
        );
        assert_eq!(subordinate_range(t, Some("bob"), 5), None);
        assert_eq!(subordinate_range("", None, 5), None);
        assert_eq!(subordinate_range("x:4294967295:2\n", Some("x"), 1), None);
    }

    #[test]
    fn the_initial_namespace_is_told_from_a_nested_one() {
        assert_eq!(
            UserNs::from_map("         0          0 4294967295\n"),
            UserNs::Initial
        );
        assert_eq!(
            UserNs::from_map("0 1001 1\n1 200000 65536\n"),
            UserNs::Nested { mapped: 65537 }
        );
        assert_eq!(UserNs::from_map("0 1001 1\n"), UserNs::Nested { mapped: 1 });
    }

    fn facts(subuid: &str, subgid: &str, tools: bool) -> Facts {
        Facts {
            uid: 1001,
            gid: 1002,
            name: Some("alice".into()),
            subuid: subuid.into(),
            subgid: subgid.into(),
            tools,
        }
    }

    #[test]
    fn a_range_and_the_tools_give_the_full_map() {
        let (u, g, why) = plan(&facts("alice:100000:65536\n", "alice:300000:65536\n", true));
        assert_eq!(why, None);
        assert_eq!(
            map_args(1, &u),
            ["1", "0", "1001", "1", "1", "100000", "65536"]
        );
        assert_eq!(
            map_args(1, &g),
            ["1", "0", "1002", "1", "1", "300000", "65536"]
        );
    }

    #[test]
    fn without_a_range_or_the_tools_only_the_users_own_id_is_mapped() {
        let single = |id| {
            vec![IdRange {
                inside: 0,
                outside: id,
                count: 1,
            }]
        };
        let (u, g, why) = plan(&facts("bob:100000:65536\n", "alice:1:2\n", true));
        assert_eq!((u, g), (single(1001), single(1002)));
        assert_eq!(
            why.unwrap(),
            "user alice has no subordinate uids in /etc/subuid"
        );
        let (_, _, why) = plan(&facts("alice:100000:65536\n", "", true));
        assert_eq!(
            why.unwrap(),
            "user alice has no subordinate gids in /etc/subgid"
        );
        let (u, _, why) = plan(&facts(
            "alice:100000:65536\n",
            "alice:100000:65536\n",
            false,
        ));
        assert_eq!(u, single(1001));
        assert!(why.unwrap().contains("apt-get install uidmap"));
    }

    #[test]
    fn tool_arguments_list_every_range() {
        let m = [
            IdRange {
                inside: 0,
                outside: 1001,
                count: 1,
            },
            IdRange {
                inside: 1,
                outside: 200000,
                count: 65536,
            },
        ];
        assert_eq!(
            map_args(42, &m),
            ["42", "0", "1001", "1", "1", "200000", "65536"]
        );
    }
}
