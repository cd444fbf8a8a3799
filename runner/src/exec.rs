//! `exec`: another process in a running container. A fresh helper (E)
//! pins the container's PID 1 with a pidfd, joins its IPC, UTS, network,
//! PID and mount namespaces in one `setns`, takes its root (through
//! `/proc/PID/root` + chroot), and forks the process (P), which joins the
//! container's cgroups and becomes the user's command the way the
//! container's own process did: the image's users, the container's
//! environment, Docker's capabilities and the syscall filter.
//!
//! ```text
//! caller ──spawn(MARKER exec)──▶ E: pidfd, cgroup.procs, setns, chroot, fork
//!                                 └─▶ P: cgroups, setsid, seccomp, caps, uid/gid, execve
//! ```
//! E forwards signals to P, and reports `Running` then `Exited(code)`.

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow};
use nix::unistd::{fork, ForkResult};
use rustix::fs::{Mode, OFlags};
use serde::{Deserialize, Serialize};

use crate::error::RunError;
use crate::helper::{self, report, Process, CONSOLE_FD};
use crate::proto::{send, Msg, MsgReader};
use crate::user::resolve_user;
use crate::{ContainerSpec, RunnerConfig, Stdio};

/// What `docker exec` takes.
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    /// argv; `args[0]` looked up in the container's PATH.
    pub args: Vec<String>,
    /// "K=V" on top of the container's environment.
    pub env: Vec<String>,
    /// Default: the container's user.
    pub user: Option<String>,
    /// Absolute; default: the container's working directory.
    pub workdir: Option<String>,
    /// A pty (when the caller's stdin or stdout is a terminal, or with
    /// `detach`: then nobody reads it).
    pub tty: bool,
    /// Relay stdin.
    pub interactive: bool,
    /// Start it and return at once; its output goes nowhere.
    pub detach: bool,
}

/// The job E runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ExecJob {
    pub pid: i32,
    pub pid_start: u64,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub user: Option<String>,
    pub cwd: String,
    pub tty: bool,
    pub detach: bool,
    pub cgroups: Vec<PathBuf>,
    pub seccomp_unconfined: bool,
}

impl ExecJob {
    pub(crate) fn new(
        spec: &ContainerSpec,
        (pid, pid_start): (i32, u64),
        cgroups: Vec<PathBuf>,
        o: &ExecOptions,
    ) -> Result<ExecJob, RunError> {
        if o.args.is_empty() || o.args[0].is_empty() {
            return Err(RunError::InvalidSpec("no command given".into()));
        }
        let cwd = o.workdir.clone().unwrap_or_else(|| spec.cwd.clone());
        if !cwd.starts_with('/') {
            return Err(RunError::InvalidSpec(format!(
                "the working directory '{cwd}' is invalid, it needs to be an absolute path"
            )));
        }
        let mut env = spec.env.clone();
        env.extend(o.env.iter().cloned());
        let nul = |s: &String| s.contains('\0');
        if o.args.iter().any(nul) || env.iter().any(nul) || cwd.contains('\0') {
            return Err(RunError::InvalidSpec("NUL byte in argv, env or cwd".into()));
        }
        // Detached, the pty is E's to hold; attached, only when the caller
        // has a terminal to relay.
        let tty = o.tty
            && (o.detach
                || rustix::termios::isatty(rustix::stdio::stdin())
                || rustix::termios::isatty(rustix::stdio::stdout()));
        Ok(ExecJob {
            pid,
            pid_start,
            args: o.args.clone(),
            env,
            user: o.user.clone().or_else(|| spec.user.clone()),
            cwd,
            tty,
            detach: o.detach,
            cgroups,
            seccomp_unconfined: spec.seccomp_unconfined,
        })
    }
}

fn dev_null() -> Result<OwnedFd, RunError> {
    std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .map(OwnedFd::from)
        .map_err(|e| RunError::io("opening /dev/null", e))
}

/// Caller side: start E and wait for the process's exit code (with
/// `detach`, only until it runs).
pub(crate) fn start(cfg: &RunnerConfig, job: &ExecJob, interactive: bool) -> Result<i32, RunError> {
    let dup = |fd: BorrowedFd<'_>| {
        rustix::io::fcntl_dupfd_cloexec(fd, 3).map_err(|e| RunError::io("dup stdio", e.into()))
    };
    let stdio = if job.detach {
        Stdio {
            stdin: None,
            stdout: Some(dev_null()?),
            stderr: Some(dev_null()?),
        }
    } else {
        Stdio {
            stdin: if interactive {
                Some(dup(rustix::stdio::stdin())?)
            } else {
                None
            },
            stdout: Some(dup(rustix::stdio::stdout())?),
            stderr: Some(dup(rustix::stdio::stderr())?),
        }
    };
    let (console, relay) = if job.tty && !job.detach {
        let (ours, theirs) = UnixStream::pair().map_err(|e| RunError::io("socketpair", e))?;
        (
            Some(OwnedFd::from(theirs)),
            Some(crate::tty::relay(ours, interactive)),
        )
    } else {
        (None, None)
    };
    let (mut child, mut sock) = helper::spawn_helper(cfg, "exec", &[], stdio, console)?;
    let sent = serde_json::to_vec(job)
        .map_err(|e| RunError::Helper(e.to_string()))
        .and_then(|b| {
            sock.write_all(&b)
                .and_then(|()| sock.shutdown(std::net::Shutdown::Write))
                .map_err(|e| RunError::io("sending the exec job", e))
        });
    let mut result = sent.map(|()| None);
    if result.is_ok() {
        let mut reader = MsgReader::new(&sock);
        loop {
            match reader.next() {
                Ok(Some(Msg::Running)) if job.detach => {
                    result = Ok(Some(0));
                    break;
                }
                Ok(Some(Msg::Error { message, code })) => {
                    // docker exec answers 126 for any command it cannot
                    // start, a missing one included (run says 127).
                    result = Err(match code {
                        Some(_) => RunError::Exec { message, code: 126 },
                        None => RunError::Setup(message),
                    });
                    break;
                }
                Ok(Some(Msg::Exited(c))) => result = Ok(Some(c)),
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    result = Err(RunError::Helper(e));
                    break;
                }
            }
        }
    }
    if job.detach && matches!(result, Ok(Some(_))) {
        // E goes on alone (in its own session).
        return Ok(0);
    }
    let status = child
        .wait()
        .map_err(|e| RunError::io("waiting for the exec helper", e))?;
    if let Some(r) = relay {
        let _ = r.join();
    }
    result?.ok_or_else(|| {
        RunError::Helper(format!(
            "exec helper exited without reporting the process's status ({status})"
        ))
    })
}

/// A health probe (the monitor's): run `job` with its stdout and stderr
/// captured (the first 4 KiB, docker's limit), at most `timeout`. The
/// exit code, or -1 with docker's message when it ran too long (the
/// process then gets SIGTERM, and E SIGKILL a second later) or could not
/// start.
pub(crate) fn probe(
    cfg: &RunnerConfig,
    job: &ExecJob,
    timeout: std::time::Duration,
) -> Result<(i32, String), String> {
    use std::sync::{mpsc, Arc, Mutex};
    let (out_r, out_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| format!("pipe: {e}"))?;
    let out_w2 = out_w.try_clone().map_err(|e| format!("dup: {e}"))?;
    let stdio = Stdio {
        stdin: None,
        stdout: Some(out_w),
        stderr: Some(out_w2),
    };
    let (mut child, mut sock) =
        helper::spawn_helper(cfg, "exec", &[], stdio, None).map_err(|e| e.to_string())?;
    let output = Arc::new(Mutex::new(Vec::new()));
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let out = output.clone();
    std::thread::spawn(move || {
        let mut f = std::fs::File::from(out_r);
        let mut buf = [0u8; 4096];
        while let Ok(n) = f.read(&mut buf) {
            if n == 0 {
                break;
            }
            if let Ok(mut o) = out.lock() {
                let room = crate::health::MAX_OUTPUT.saturating_sub(o.len());
                o.extend_from_slice(&buf[..n.min(room)]);
            }
        }
        let _ = done_tx.send(());
    });
    let payload = serde_json::to_vec(job).map_err(|e| e.to_string())?;
    sock.write_all(&payload)
        .and_then(|()| sock.shutdown(std::net::Shutdown::Write))
        .map_err(|e| format!("sending the probe: {e}"))?;
    let (tx, rx) = mpsc::channel();
    let reader = sock.try_clone().map_err(|e| format!("dup: {e}"))?;
    std::thread::spawn(move || {
        let mut reader = MsgReader::new(reader);
        let mut r = Err("the exec helper exited without a status".to_string());
        loop {
            match reader.next() {
                Ok(Some(Msg::Exited(c))) => r = Ok(c),
                Ok(Some(Msg::Error { message, .. })) => r = Err(message),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        let _ = tx.send(r);
    });
    let result = match rx.recv_timeout(timeout) {
        Ok(r) => r,
        Err(_) => {
            let pid = child.id() as i32;
            // E forwards SIGTERM to the probe; E itself goes a second later.
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(pid).expect("a child's pid"),
                rustix::process::Signal::TERM,
            );
            if rx.recv_timeout(std::time::Duration::from_secs(1)).is_err() {
                let _ = child.kill();
            }
            let _ = child.wait();
            return Ok((
                -1,
                format!(
                    "Health check exceeded timeout ({})",
                    crate::health::format_go_duration(timeout.as_nanos() as i64)
                ),
            ));
        }
    };
    let _ = child.wait();
    // A process the probe left behind may hold the pipe: wait a little.
    let _ = done_rx.recv_timeout(std::time::Duration::from_millis(200));
    let text = output
        .lock()
        .map(|o| String::from_utf8_lossy(&o).into_owned())
        .unwrap_or_default();
    match result {
        Ok(code) => Ok((code, text)),
        Err(message) => Ok((-1, message)),
    }
}

// ---------------------------------------------------------------------------
// E, single-threaded.

pub(crate) fn exec_main() -> i32 {
    let _ = rustix::io::fcntl_setfd(report(), rustix::io::FdFlags::CLOEXEC);
    let job: Result<ExecJob, String> = (|| {
        let dup = rustix::io::fcntl_dupfd_cloexec(report(), 10).map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        std::fs::File::from(dup)
            .read_to_end(&mut buf)
            .map_err(|e| e.to_string())?;
        serde_json::from_slice(&buf).map_err(|e| e.to_string())
    })();
    let job = match job {
        Ok(j) => j,
        Err(e) => {
            let message = format!("exec: bad job: {e}");
            send(
                report(),
                &Msg::Error {
                    message,
                    code: None,
                },
            );
            return 125;
        }
    };
    if job.tty && !job.detach {
        // SAFETY: fd 4 is the console socket set up by spawn_helper.
        let c = unsafe { BorrowedFd::borrow_raw(CONSOLE_FD) };
        let _ = rustix::io::fcntl_setfd(c, rustix::io::FdFlags::CLOEXEC);
        helper::close_fds_from(CONSOLE_FD as u32 + 1);
    } else {
        helper::close_fds_from(CONSOLE_FD as u32);
    }
    if job.detach {
        let _ = rustix::process::setsid();
    }
    match exec_in(&job) {
        Ok(code) => {
            send(report(), &Msg::Exited(code));
            code
        }
        Err((message, code)) => {
            send(report(), &Msg::Error { message, code });
            code.unwrap_or(125)
        }
    }
}

/// The container's namespaces and root, by its PID 1 (pinned: a reused
/// PID is refused).
fn enter_container(job: &ExecJob) -> Result<(), String> {
    let gone = || "the container is no longer running".to_string();
    let pid = rustix::process::Pid::from_raw(job.pid).ok_or_else(gone)?;
    let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
        .map_err(|_| gone())?;
    if crate::state::proc_start_time(job.pid) != Some(job.pid_start) {
        return Err(gone());
    }
    let root = rustix::fs::open(
        format!("/proc/{}/root", job.pid),
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("opening the container's root: {e}"))?;
    let flags = libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWNS;
    // SAFETY: setns on a pidfd we own; this process is single-threaded
    // (a fresh exec), which joining a mount namespace requires.
    if unsafe { libc::setns(pidfd.as_raw_fd(), flags) } != 0 {
        return Err(format!(
            "joining the container's namespaces: {}",
            std::io::Error::last_os_error()
        ));
    }
    rustix::process::fchdir(&root).map_err(|e| format!("entering the container's root: {e}"))?;
    rustix::process::chroot(".").map_err(|e| format!("chroot to the container's root: {e}"))?;
    rustix::process::chdir("/").map_err(|e| format!("chdir /: {e}"))?;
    Ok(())
}

fn exec_in(job: &ExecJob) -> Result<i32, (String, Option<i32>)> {
    let setup = |e: String| (e, None);
    // Opened while the host's cgroup mounts are still in view.
    let procs = crate::cgroups::join::open(&job.cgroups).map_err(setup)?;
    enter_container(job).map_err(setup)?;
    let passwd = std::fs::read_to_string("/etc/passwd").ok();
    let group = std::fs::read_to_string("/etc/group").ok();
    let user = resolve_user(job.user.as_deref(), passwd.as_deref(), group.as_deref())
        .map_err(|e| (e.to_string(), Some(126)))?;
    let (env, path) = helper::process_env(&job.env, &user.home);
    // Detached with a tty, E keeps the master (and drains it) itself.
    let mut held_master = None;
    let console = if job.tty && job.detach {
        let (master, slave) = crate::tty::open_pty(user.uid).map_err(setup)?;
        held_master = Some(master);
        Some(slave)
    } else if job.tty {
        // SAFETY: fd 4 is the console socket (kept open by exec_main).
        let sock = unsafe { BorrowedFd::borrow_raw(CONSOLE_FD) };
        let slave = crate::tty::make_console(sock, user.uid).map_err(setup)?;
        // SAFETY: fd 4 is not owned by any OwnedFd in this process.
        unsafe { libc::close(CONSOLE_FD) };
        Some(slave)
    } else {
        None
    };
    let cstr = |s: &str| CString::new(s).map_err(|_| setup(format!("NUL in {s:?}")));
    let p = Process {
        argv: job.args.iter().map(|a| cstr(a)).collect::<Result<_, _>>()?,
        env: env.iter().map(|a| cstr(a)).collect::<Result<_, _>>()?,
        path,
        cwd: job.cwd.clone(),
        uid: user.uid,
        gid: user.gid,
        groups: user.groups,
        console,
        seccomp: if job.seccomp_unconfined {
            None
        } else {
            Some(crate::seccomp::program().map_err(setup)?)
        },
    };
    // E takes its signals with sigwait() (supervise) and forwards them.
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::all()), None)
        .map_err(|e| setup(format!("sigprocmask: {e}")))?;
    let (sync_r, sync_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| setup(format!("pipe: {e}")))?;
    // SAFETY: single-threaded process.
    match unsafe { fork() }.map_err(|e| setup(format!("fork: {e}")))? {
        ForkResult::Child => {
            drop(sync_r);
            let (message, code) = match crate::cgroups::join::enter(&procs) {
                Ok(()) => helper::exec_process(&p),
                Err(m) => (m, 125),
            };
            send(
                sync_w.as_fd(),
                &Msg::Error {
                    message,
                    code: Some(code),
                },
            );
            // SAFETY: _exit in a forked child, nothing to unwind.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop(sync_w);
            drop(procs);
            // The pty slave is P's alone: the relay ends when P's copies close.
            drop(p);
            let mut reader = MsgReader::new(std::fs::File::from(sync_r));
            match reader.next() {
                Ok(None) => {
                    send(report(), &Msg::Running);
                    Ok(match held_master {
                        Some(m) => crate::tty::supervise_draining(child, m),
                        None => helper::supervise(child, false),
                    })
                }
                Ok(Some(Msg::Error { message, code })) => {
                    let _ = nix::sys::wait::waitpid(child, None);
                    Err((message, code))
                }
                Ok(Some(other)) => Err(setup(format!("unexpected message {other:?}"))),
                Err(e) => Err(setup(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_job_takes_the_containers_settings_under_the_flags() {
        let spec = ContainerSpec {
            args: vec!["sleep".into()],
            env: vec!["PATH=/bin".into(), "A=1".into()],
            cwd: "/srv".into(),
            user: Some("app".into()),
            seccomp_unconfined: true,
            ..Default::default()
        };
        let o = ExecOptions {
            args: vec!["sh".into()],
            env: vec!["A=2".into()],
            ..Default::default()
        };
        let j = ExecJob::new(&spec, (42, 7), vec![], &o).unwrap();
        assert_eq!(
            j.env,
            ["PATH=/bin", "A=1", "A=2"],
            "later wins (dedup_env in E)"
        );
        assert_eq!(helper::dedup_env(&j.env), ["PATH=/bin", "A=2"]);
        assert_eq!((j.cwd.as_str(), j.user.as_deref()), ("/srv", Some("app")));
        assert!(j.seccomp_unconfined, "the container's filter setting");
        let o = ExecOptions {
            args: vec!["sh".into()],
            user: Some("0".into()),
            workdir: Some("tmp".into()),
            ..Default::default()
        };
        let e = ExecJob::new(&spec, (42, 7), vec![], &o).unwrap_err();
        assert!(
            e.to_string().contains("needs to be an absolute path"),
            "{e}"
        );
        let e = ExecJob::new(&spec, (42, 7), vec![], &ExecOptions::default()).unwrap_err();
        assert!(e.to_string().contains("no command"), "{e}");
    }
}
