//! `run -t`: the pseudo-terminal is made *inside* the container (from its own
//! devpts instance, like runc's console socket), so `tty` in the container
//! names a `/dev/pts/N` that exists there. Its master comes back to the
//! caller over a socket with SCM_RIGHTS; the caller puts its own terminal in
//! raw mode and copies both ways.

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;

use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// In the container (after pivot_root): a new pty; returns the slave for the
/// process and sends the master over `console`.
pub(crate) fn make_console(console: BorrowedFd<'_>, uid: u32) -> Result<OwnedFd, String> {
    let (master, slave) = open_pty(uid)?;
    let fds = [master.as_fd()];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    control.push(SendAncillaryMessage::ScmRights(&fds));
    sendmsg(
        console,
        &[IoSlice::new(b"m")],
        &mut control,
        SendFlags::empty(),
    )
    .map_err(|e| format!("sending the pty master: {e}"))?;
    Ok(slave)
}

/// In the container: a new pty from its devpts, the slave owned by `uid`;
/// (master, slave).
pub(crate) fn open_pty(uid: u32) -> Result<(OwnedFd, OwnedFd), String> {
    use rustix::pty::{ioctl_tiocgptpeer, openpt, unlockpt, OpenptFlags};
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)
        .map_err(|e| format!("opening /dev/ptmx: {e}"))?;
    unlockpt(&master).map_err(|e| format!("unlockpt: {e}"))?;
    let slave = ioctl_tiocgptpeer(&master, OpenptFlags::RDWR | OpenptFlags::NOCTTY)
        .map_err(|e| format!("opening the pty peer: {e}"))?;
    rustix::fs::fchown(&slave, Some(rustix::fs::Uid::from_raw(uid)), None)
        .map_err(|e| format!("chown of the pty: {e}"))?;
    Ok((master, slave))
}

/// `exec -d -t`'s E: nobody is attached, so E holds the master and reads
/// and drops what the process writes (docker discards it too) while it
/// supervises the child as [`crate::helper::supervise`] does. One thread
/// with a signalfd: a process that joined a PID namespace cannot start
/// threads (clone with CLONE_THREAD is EINVAL there).
pub(crate) fn supervise_draining(child: nix::unistd::Pid, master: OwnedFd) -> i32 {
    use nix::sys::signal::{kill, SigSet, Signal};
    use nix::sys::signalfd::{SfdFlags, SignalFd};
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    use rustix::event::{poll, PollFd, PollFlags};
    let Ok(sfd) = SignalFd::with_flags(&SigSet::all(), SfdFlags::SFD_CLOEXEC) else {
        return crate::helper::supervise(child, false);
    };
    let mut master = Some(std::fs::File::from(master));
    let mut buf = [0u8; 4096];
    loop {
        let mut fds = vec![PollFd::new(&sfd, PollFlags::IN)];
        if let Some(m) = &master {
            fds.push(PollFd::new(m, PollFlags::IN));
        }
        match poll(&mut fds, None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return crate::helper::supervise(child, false),
        }
        let (sig_ready, pty_ready) = (
            !fds[0].revents().is_empty(),
            fds.get(1).is_some_and(|f| !f.revents().is_empty()),
        );
        drop(fds);
        if pty_ready {
            // EIO (or 0) once every slave fd is closed: stop reading.
            if let Some(m) = master.as_mut() {
                if !matches!(m.read(&mut buf), Ok(n) if n > 0) {
                    master = None;
                }
            }
        }
        if !sig_ready {
            continue;
        }
        let Ok(Some(info)) = sfd.read_signal() else {
            continue;
        };
        match Signal::try_from(info.ssi_signo as i32) {
            Ok(Signal::SIGCHLD) => {}
            Ok(sig) => {
                let _ = kill(child, sig);
                continue;
            }
            Err(_) => continue,
        }
        loop {
            match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => return code,
                Ok(WaitStatus::Signaled(_, s, _)) => return 128 + s as i32,
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    }
}

fn recv_master(sock: &UnixStream) -> Option<OwnedFd> {
    let mut buf = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    recvmsg(sock, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC).ok()?;
    // The first fd passed is the master; any other is dropped (closed).
    let mut drain = control.drain();
    drain.find_map(|m| match m {
        RecvAncillaryMessage::ScmRights(mut fds) => fds.next(),
        _ => None,
    })
}

/// Restores the caller's terminal when dropped.
struct RawMode(Option<rustix::termios::Termios>);

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            let _ = rustix::termios::tcsetattr(
                rustix::stdio::stdin(),
                rustix::termios::OptionalActions::Now,
                t,
            );
        }
    }
}

/// Caller side: wait for the master, then relay the terminal until the
/// container's side closes. Join the handle after the container exited.
pub(crate) fn relay(console: UnixStream, interactive: bool) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let Some(master) = recv_master(&console) else {
            return;
        };
        let stdin = rustix::stdio::stdin();
        if let Ok(ws) = rustix::termios::tcgetwinsize(stdin) {
            let _ = rustix::termios::tcsetwinsize(&master, ws);
        }
        let saved = if interactive {
            rustix::termios::tcgetattr(stdin).ok()
        } else {
            None
        };
        let _raw = RawMode(saved.clone());
        if let Some(mut t) = saved {
            t.make_raw();
            let _ = rustix::termios::tcsetattr(stdin, rustix::termios::OptionalActions::Now, &t);
        }
        let mut to_master = match master.try_clone() {
            Ok(m) => std::fs::File::from(m),
            Err(_) => return,
        };
        // stdin -> master. This thread may stay blocked in read(0) after
        // the container is gone; it holds nothing but the master copy.
        if interactive {
            let _ = std::thread::Builder::new()
                .name("tty-stdin".into())
                .spawn(move || {
                    let mut buf = [0u8; 4096];
                    let mut input = std::io::stdin().lock();
                    while let Ok(n) = input.read(&mut buf) {
                        if n == 0 || to_master.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
        } else {
            drop(to_master);
        }
        // Window size changes: polled (a library should not install a
        // SIGWINCH handler in its caller); setting it on the master sends
        // SIGWINCH to the container's foreground process group.
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        if let (Ok(m), true) = (master.try_clone(), rustix::termios::isatty(stdin)) {
            let done = done.clone();
            let _ = std::thread::Builder::new()
                .name("tty-winsize".into())
                .spawn(move || {
                    let mut last = rustix::termios::tcgetwinsize(rustix::stdio::stdin()).ok();
                    while !done.load(std::sync::atomic::Ordering::Relaxed) {
                        std::thread::sleep(std::time::Duration::from_millis(250));
                        let now = rustix::termios::tcgetwinsize(rustix::stdio::stdin()).ok();
                        let changed = match (&now, &last) {
                            (Some(a), Some(b)) => (a.ws_row, a.ws_col) != (b.ws_row, b.ws_col),
                            _ => false,
                        };
                        if changed {
                            if let Some(ws) = now {
                                let _ = rustix::termios::tcsetwinsize(&m, ws);
                            }
                            last = now;
                        }
                    }
                });
        }
        // master -> stdout until EIO (all slave fds closed).
        let mut from = std::fs::File::from(master);
        let mut out = std::io::stdout();
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || out.write_all(&buf[..n]).is_err() {
                break;
            }
            let _ = out.flush();
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
    })
}
