//! The process that holds rootless kiln's user namespace between commands
//! (podman's "pause process"). Making a namespace costs a fork and the two
//! set-uid map helpers, about 3 ms, on every command; joining one that a
//! process of ours keeps alive is one `setns`. The first rootless command
//! that makes a namespace leaves `kiln-pause` in it, which does nothing
//! but exist; later commands join its namespace when it is ours and maps
//! exactly the IDs they would map (a changed /etc/subuid gets a new one).
//!
//! Where: `$XDG_RUNTIME_DIR/kiln/`, else `/tmp/kiln-<uid>/`, a directory
//! that must be the user's own and closed to everybody else (otherwise
//! the pause process is not used and every command makes its namespace,
//! as before). `pause.pid` names the process; `pause.lock` is held by it
//! (flock), so that two commands never start two of them.
//! `pkill -u $USER -x kiln-pause` ends it; the next command starts another.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use crate::userns::IdRange;

/// The pause process's argv[0] and comm.
const NAME: &str = "kiln-pause";

/// This user's pause directory, made if missing; None when it is not
/// safely ours. Call before entering a namespace (it compares owners with
/// the real uid).
pub(crate) fn dir(uid: u32) -> Option<PathBuf> {
    let d = match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        Some(r) if owned_private(&r, uid) => r.join("kiln"),
        _ => PathBuf::from(format!("/tmp/kiln-{uid}")),
    };
    if std::fs::symlink_metadata(&d).is_err() {
        let _ = std::fs::DirBuilder::new().mode(0o700).create(&d);
    }
    owned_private(&d, uid).then_some(d)
}

/// A real directory (not a symlink), owned by `uid`, closed to others.
fn owned_private(d: &Path, uid: u32) -> bool {
    std::fs::symlink_metadata(d)
        .is_ok_and(|m| m.is_dir() && m.uid() == uid && m.mode() & 0o077 == 0)
}

/// Joins the namespace of this user's pause process if there is one that
/// maps `uid_map`/`gid_map`. Must be called single-threaded, before any
/// namespace was entered. False: make one (and then [`start`]).
pub(crate) fn join(d: &Path, uid: u32, uid_map: &[IdRange], gid_map: &[IdRange]) -> bool {
    let Some(pid) = live_pause(d, uid) else {
        return false;
    };
    let maps = |f: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/{f}"))
            .ok()
            .map(|t| crate::userns::parse_map(&t))
    };
    if maps("uid_map").as_deref() != Some(uid_map) || maps("gid_map").as_deref() != Some(gid_map) {
        // Made for other ranges: it goes, and a new one is made.
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid).expect("a positive pid"),
            rustix::process::Signal::TERM,
        );
        return false;
    }
    let Ok(ns) = std::fs::File::open(format!("/proc/{pid}/ns/user")) else {
        return false;
    };
    // SAFETY: setns on an fd we own; the caller guarantees one thread.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWUSER) } != 0 {
        return false;
    }
    // As after making one: no supplementary groups of the host (refused,
    // harmlessly, where setgroups is denied: a single-ID map).
    let _ = nix::unistd::setgroups(&[]);
    true
}

/// The pid in `pause.pid` when it is this user's pause process.
fn live_pause(d: &Path, uid: u32) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(d.join("pause.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    if pid <= 1 {
        return None;
    }
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let owner = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u32>().ok());
    // A killed one stays a zombie until reaped; its namespace lives on
    // with it, but nothing would keep it after that.
    let alive = status
        .lines()
        .find_map(|l| l.strip_prefix("State:"))
        .is_some_and(|v| !v.trim_start().starts_with(['Z', 'X']));
    (comm.trim() == NAME && owner == Some(uid) && alive).then_some(pid)
}

/// Leaves a pause process in the namespace this process just made. Best
/// effort: without one, the next command makes its own namespace. Must be
/// called single-threaded.
pub(crate) fn start(d: &Path) {
    let Ok(lock) = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(d.join("pause.lock"))
    else {
        return;
    };
    let lock = OwnedFd::from(lock);
    // Held: another command is starting one, or a pause process with other
    // maps is still going.
    if rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        return;
    }
    let exe = crate::helper_beside_current_exe().unwrap_or_else(|| PathBuf::from("/proc/self/exe"));
    let pidfile = d.join("pause.pid");
    // SAFETY: single-threaded (the caller's guarantee); the child only
    // forks again and exits, the grandchild writes a file and execs.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            let _ = nix::sys::wait::waitpid(child, None);
        }
        Ok(nix::unistd::ForkResult::Child) => {
            // SAFETY: a fork of a single-threaded child, as above.
            let code = match unsafe { nix::unistd::fork() } {
                Ok(nix::unistd::ForkResult::Child) => become_pause(&exe, &pidfile, lock),
                _ => 0,
            };
            // SAFETY: _exit in a forked child: nothing to unwind.
            unsafe { libc::_exit(code) }
        }
        Err(_) => {}
    }
}

/// The grandchild: own session, the lock as fd 3, its pid in the pid
/// file, then the pause role of the helper binary.
fn become_pause(exe: &Path, pidfile: &Path, lock: OwnedFd) -> i32 {
    let _ = nix::unistd::setsid();
    let _ = std::env::set_current_dir("/");
    // SAFETY: dup2 onto fd 3, which nothing else in this process owns.
    if lock.as_raw_fd() != 3 && unsafe { libc::dup2(lock.as_raw_fd(), 3) } < 0 {
        return 1;
    }
    // dup2 onto itself (the lock may be fd 3 already) keeps close-on-exec.
    // SAFETY: fd 3 is open (above) and stays open for this process's life.
    let three = unsafe { std::os::fd::BorrowedFd::borrow_raw(3) };
    if rustix::io::fcntl_setfd(three, rustix::io::FdFlags::empty()).is_err() {
        return 1;
    }
    std::mem::forget(lock);
    let tmp = pidfile.with_extension(format!("pid.{}", std::process::id()));
    let written = std::fs::write(&tmp, format!("{}\n", std::process::id()))
        .and_then(|()| std::fs::rename(&tmp, pidfile));
    if written.is_err() {
        return 1;
    }
    let null = std::fs::File::open("/dev/null").ok();
    for fd in 0..3 {
        if let Some(n) = &null {
            // SAFETY: dup2 of /dev/null over the standard streams.
            unsafe { libc::dup2(n.as_raw_fd(), fd) };
        }
    }
    drop(null);
    crate::helper::close_fds_from(4);
    // exec keeps fd 3 (dup2 cleared its close-on-exec flag): the lock is
    // held for as long as the pause process lives.
    let _ = std::process::Command::new(exe)
        .arg0(NAME)
        .arg(crate::helper::MARKER)
        .arg("pause")
        .env_clear()
        .exec();
    1
}

/// The pause role: exist. SIGTERM (or SIGKILL) ends it.
pub(crate) fn pause_main() -> i32 {
    let _ = rustix::thread::set_name(c"kiln-pause");
    // exec keeps the signal mask, and kiln's main blocks signals.
    let _ = nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    );
    for sig in [
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGINT,
    ] {
        // SAFETY: the default disposition installs no handler.
        let _ = unsafe { nix::sys::signal::signal(sig, nix::sys::signal::SigHandler::SigDfl) };
    }
    loop {
        // SAFETY: pause() only waits for a signal.
        unsafe { libc::pause() };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pause_dir_must_be_ours_and_closed() {
        let t = tempfile::tempdir().unwrap();
        let me = rustix::process::getuid().as_raw();
        let d = t.path().join("p");
        std::fs::DirBuilder::new().mode(0o700).create(&d).unwrap();
        assert!(owned_private(&d, me));
        assert!(!owned_private(&d, me + 1), "someone else's");
        std::fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        assert!(!owned_private(&d, me), "open to others");
        let l = t.path().join("link");
        std::os::unix::fs::symlink(&d, &l).unwrap();
        assert!(!owned_private(&l, me), "a symlink");
    }
}
