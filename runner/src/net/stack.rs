//! Entering the container's network namespace in the (single-threaded)
//! helper, and starting a user-mode stack for a namespace of its own.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{route, Stack, StackKind};
use crate::proto::Job;
use crate::NetworkMode;

/// How long a stack may take to come up.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A running stack, killed (and reaped) when dropped. It also dies with the
/// process that started it (parent-death signal), so a helper killed
/// outright leaves no stack behind.
pub(crate) struct StackProc {
    child: Child,
}

impl Drop for StackProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Put the calling (single-threaded) helper into the container's network
/// namespace: the host's, a fresh one with `lo` only, a shared one, or a
/// fresh one with a stack of its own, which is returned.
pub(crate) fn enter(job: &Job) -> Result<Option<StackProc>, String> {
    match job.spec.network {
        NetworkMode::Host => Ok(None),
        NetworkMode::None => {
            unshare_net()?;
            crate::mounts::loopback_up()?;
            Ok(None)
        }
        NetworkMode::Private => {
            if let Some(path) = &job.net.join {
                let ns = File::open(path)
                    .map_err(|e| format!("opening the build's network namespace: {e}"))?;
                rustix::thread::move_into_link_name_space(
                    ns.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .map_err(|e| format!("joining the build's network namespace: {e}"))?;
                return Ok(None);
            }
            let stack = job
                .net
                .stack
                .as_ref()
                .ok_or("a private network needs a user-mode network stack")?;
            own_namespace_with(stack, &job.scratch).map(Some)
        }
    }
}

/// A fresh network namespace for the calling (single-threaded) process,
/// with `lo` up, link-local prohibited, and `stack` attached.
pub(crate) fn own_namespace_with(stack: &Stack, scratch: &Path) -> Result<StackProc, String> {
    if crate::userns::current().is_nested() {
        // Rootless: no way back into the host's namespace once we leave it.
        super::child_ns::check_tun()?;
        let ours = super::child_ns::make()?;
        let proc = attach(stack, None, &ours, scratch)?;
        rustix::thread::move_into_link_name_space(
            ours.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .map_err(|e| format!("joining the new network namespace: {e}"))?;
        return Ok(proc);
    }
    let host = File::open("/proc/self/ns/net").map_err(|e| format!("/proc/self/ns/net: {e}"))?;
    unshare_net()?;
    crate::mounts::loopback_up()?;
    route::prohibit_v4([169, 254, 0, 0], 16)
        .map_err(|e| format!("adding the route that refuses 169.254.0.0/16: {e}"))?;
    let ours = File::open("/proc/self/ns/net").map_err(|e| format!("/proc/self/ns/net: {e}"))?;
    attach(stack, Some(&host.into()), &ours, scratch)
}

fn unshare_net() -> Result<(), String> {
    // SAFETY: the helper is single-threaded.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }
        .map_err(|e| format!("unshare(CLONE_NEWNET): {e}"))
}

/// Start `stack` for the current network namespace: the stack's process
/// goes back to the host's namespace (`host`) and reaches ours through an
/// inherited fd, named as `/proc/self/fd/N`. (Pasta drops its capabilities
/// before opening the namespace, so `/proc/<our pid>/ns/net` would be
/// refused to it: we hold more capabilities than it does.)
/// With `host` None the stack starts in the caller's own namespace.
fn attach(
    stack: &Stack,
    host: Option<&OwnedFd>,
    ours: &File,
    scratch: &Path,
) -> Result<StackProc, String> {
    let ns_arg = format!("/proc/self/fd/{}", ours.as_raw_fd());
    let log_path = scratch.join(format!("{}.log", stack.kind.program()));
    let log = File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    let (ready_r, ready_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| format!("pipe: {e}"))?;
    let pid_file = scratch.join("pasta.pid");
    let mut cmd = Command::new(&stack.exe);
    match stack.kind {
        StackKind::Pasta => {
            let _ = std::fs::remove_file(&pid_file);
            // -f: stay our child; -T/-U none: no port of the host's is
            // forwarded into the namespace's loopback; --no-map-gw: the
            // gateway address is not the host; -t/-u none: published ports
            // go through kiln's own proxy; --runas 0: this pasta drops to
            // "nobody" before joining the namespace, which then fails.
            cmd.args(["-f", "-q", "-e", "--config-net", "--no-map-gw"])
                .args(["-T", "none", "-U", "none", "-t", "none", "-u", "none"])
                .args(["--runas", "0", "-P"])
                .arg(&pid_file)
                .args(["--netns", &ns_arg]);
        }
        StackKind::Slirp4netns => {
            cmd.args(["--configure", "--mtu=65520", "--disable-host-loopback"])
                .arg(format!("--ready-fd={}", ready_w.as_raw_fd()))
                .args(["--netns-type=path", &ns_arg, "tap0"]);
        }
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
    let w_fd = match stack.kind {
        StackKind::Slirp4netns => ready_w.as_raw_fd(),
        StackKind::Pasta => -1,
    };
    let (host_fd, ns_fd) = (host.map_or(-1, |h| h.as_raw_fd()), ours.as_raw_fd());
    // SAFETY: only async-signal-safe syscalls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if (host_fd >= 0 && libc::setns(host_fd, libc::CLONE_NEWNET) != 0)
                || libc::fcntl(ns_fd, libc::F_SETFD, 0) != 0
                || (w_fd >= 0 && libc::fcntl(w_fd, libc::F_SETFD, 0) != 0)
                || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("starting {}: {e}", stack.exe.display()))?;
    drop(ready_w);
    let mut proc = StackProc { child };
    let ready = match stack.kind {
        StackKind::Pasta => wait_pid_file(&mut proc.child, &pid_file),
        StackKind::Slirp4netns => wait_ready_fd(&mut proc.child, ready_r),
    };
    ready.map_err(|why| {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        format!("{} {why}{}", stack.exe.display(), log_excerpt(&log))
    })?;
    Ok(proc)
}

/// Pasta writes its PID file once the namespace's interface is configured.
fn wait_pid_file(child: &mut Child, pid_file: &Path) -> Result<(), String> {
    let start = Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(pid_file) {
            if s.ends_with('\n') {
                return Ok(());
            }
        }
        if let Ok(Some(st)) = child.try_wait() {
            return Err(format!("exited before the network was up ({st})"));
        }
        if start.elapsed() > READY_TIMEOUT {
            return Err(format!("was not ready after {READY_TIMEOUT:?}"));
        }
        std::thread::sleep(Duration::from_micros(300));
    }
}

/// slirp4netns writes "1" to its ready fd once the tap is configured.
fn wait_ready_fd(child: &mut Child, ready: OwnedFd) -> Result<(), String> {
    let mut b = [0u8; 1];
    match File::from(ready).read(&mut b) {
        Ok(1) if b[0] == b'1' => Ok(()),
        _ => {
            let st = child.wait().map(|s| s.to_string()).unwrap_or_default();
            Err(format!("exited before the network was up ({st})"))
        }
    }
}

/// The stack's own messages, without the syslog complaints of pasta.
fn log_excerpt(log: &str) -> String {
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("Failed to send"))
        .take(5)
        .collect();
    if lines.is_empty() {
        String::new()
    } else {
        format!(": {}", lines.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::log_excerpt;

    #[test]
    fn the_log_excerpt_drops_syslog_noise() {
        let log = "Failed to send 51 bytes to syslog\nCouldn't open network namespace x\n\n";
        assert_eq!(log_excerpt(log), ": Couldn't open network namespace x");
        assert_eq!(log_excerpt("Failed to send 3 bytes to syslog\n"), "");
    }
}
