//! A network namespace made by a forked child, for root of a user namespace
//! (rootless kiln).
//!
//! The stack (pasta, slirp4netns) must run in the host's network namespace
//! and reach the new one through an fd. As real root the helper unshares,
//! then starts the stack with `setns` back to the host's namespace; root of
//! a user namespace may not `setns` into the host's namespace (it belongs
//! to the machine's user namespace), so here a child makes the namespace,
//! the helper starts the stack from where it still is, and only then joins
//! the child's namespace, which it may: our user namespace owns it.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;

use nix::sys::wait::waitpid;
use nix::unistd::{fork, ForkResult};

/// A new network namespace with `lo` up and 169.254.0.0/16 prohibited,
/// as an open `/proc/<pid>/ns/net`. The caller must be single-threaded.
pub(crate) fn make() -> Result<File, String> {
    let (res_r, res_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| format!("pipe: {e}"))?;
    let (hold_r, hold_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| format!("pipe: {e}"))?;
    // SAFETY: the helper is single-threaded; the child makes the namespace,
    // reports, waits for EOF and exits.
    match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            drop(res_r);
            drop(hold_w);
            let msg = match configure() {
                Ok(()) => "ok".to_string(),
                Err(e) => e,
            };
            let _ = File::from(res_w).write_all(msg.as_bytes());
            let mut b = [0u8; 1];
            let _ = File::from(hold_r).read(&mut b);
            // SAFETY: _exit in a forked child.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            drop(res_w);
            drop(hold_r);
            let mut msg = String::new();
            let _ = File::from(res_r).read_to_string(&mut msg);
            let ns = if msg == "ok" {
                File::open(format!("/proc/{child}/ns/net"))
                    .map_err(|e| format!("opening the new network namespace: {e}"))
            } else {
                Err(msg)
            };
            drop::<OwnedFd>(hold_w);
            let _ = waitpid(child, None);
            ns
        }
    }
}

fn configure() -> Result<(), String> {
    // SAFETY: a forked child of a single-threaded process.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }
        .map_err(|e| format!("unshare(CLONE_NEWNET): {e}"))?;
    crate::mounts::loopback_up()?;
    super::route::prohibit_v4([169, 254, 0, 0], 16)
        .map_err(|e| format!("adding the route that refuses 169.254.0.0/16: {e}"))
}

/// The stack opens /dev/net/tun as the user (root of our namespace is no
/// one to a device node of the machine's root): say so before it fails
/// with "Failed to open tun socket".
pub(crate) fn check_tun() -> Result<(), String> {
    use rustix::fs::{Access, Mode};
    match rustix::fs::access("/dev/net/tun", Access::READ_OK | Access::WRITE_OK) {
        Ok(()) => Ok(()),
        Err(e) => {
            let mode = rustix::fs::stat("/dev/net/tun")
                .map(|st| format!("mode {:o}", Mode::from_raw_mode(st.st_mode).bits() & 0o777))
                .unwrap_or_else(|_| "missing".to_string());
            Err(format!(
                "the rootless private network needs /dev/net/tun to be readable and writable \
                 by you, and it is not ({e}; {mode}): Debian's udev makes it 0666 \
                 (chmod 0666 /dev/net/tun as root, or modprobe tun if it is missing), or use \
                 --network host or --network none"
            ))
        }
    }
}
