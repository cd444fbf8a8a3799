//! One private network namespace and stack shared by many containers (the
//! RUN steps of a build), started on first use and torn down when the last
//! handle is dropped.
//!
//! ```text
//! caller ── thread "kiln-net" ──spawn(MARKER netns)──▶ N: unshare(net), lo up,
//!                                                        prohibit 169.254/16,
//!                                                        start the stack, Ready
//! containers: setns(/proc/N/ns/net)
//! ```
//! N lives until its socket to the caller closes (the handle is dropped, or
//! the caller died: N also has a parent-death signal tied to the thread,
//! which lives as long as the handle). The stack has one tied to N.

use std::io::Read;
use std::os::fd::BorrowedFd;
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::{find_stack, Stack};
use crate::error::RunError;
use crate::helper::{private_dir, random_hex, spawn_helper, ScratchDir, REPORT_FD};
use crate::proto::{send, Msg, MsgReader};
use crate::{RunnerConfig, Stdio};

/// A lazily started shared network; clones share it.
#[derive(Clone, Default)]
pub struct SharedNet {
    inner: Arc<Mutex<Lazy>>,
}

impl std::fmt::Debug for SharedNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedNet")
    }
}

#[derive(Default)]
enum Lazy {
    #[default]
    NotStarted,
    Up(Running),
    /// Starting failed; every later container gets the same error.
    Failed(String),
    /// No stack installed (the PATH searched).
    Missing(String),
}

struct Running {
    netns: PathBuf,
    stack: Stack,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _scratch: ScratchDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The netns helper's job (its argument, as JSON).
#[derive(Serialize, Deserialize)]
struct NetJob {
    stack: Stack,
    scratch: PathBuf,
    supervisor: i32,
}

impl SharedNet {
    pub fn new() -> SharedNet {
        SharedNet::default()
    }

    /// The namespace to join and its stack, starting them if need be.
    pub(crate) fn join(&self, cfg: &RunnerConfig) -> Result<(PathBuf, Stack), RunError> {
        let mut g = self
            .inner
            .lock()
            .map_err(|_| RunError::Helper("shared network lock poisoned".into()))?;
        if let Lazy::NotStarted = *g {
            *g = match find_stack() {
                Err(RunError::NoNetworkStack { searched }) => Lazy::Missing(searched),
                Err(e) => Lazy::Failed(e.to_string()),
                Ok(stack) => match start(cfg, stack) {
                    Ok(r) => Lazy::Up(r),
                    Err(e) => Lazy::Failed(e),
                },
            };
        }
        match &*g {
            Lazy::Up(r) => Ok((r.netns.clone(), r.stack.clone())),
            Lazy::Failed(e) => Err(RunError::Setup(format!("starting the network: {e}"))),
            Lazy::Missing(e) => Err(RunError::NoNetworkStack {
                searched: e.clone(),
            }),
            Lazy::NotStarted => unreachable!("started above"),
        }
    }

    /// PID of the process that holds the namespace (None before first use).
    pub fn holder_pid(&self) -> Option<u32> {
        let g = self.inner.lock().ok()?;
        match &*g {
            Lazy::Up(r) => r
                .netns
                .to_str()?
                .strip_prefix("/proc/")?
                .split('/')
                .next()?
                .parse()
                .ok(),
            _ => None,
        }
    }
}

fn start(cfg: &RunnerConfig, stack: Stack) -> Result<Running, String> {
    let dir = cfg.scratch_root.join(format!(
        // The kiln-run-<pid>- prefix: swept like a container's scratch dir
        // if this process is killed.
        "kiln-run-{}-net{}",
        std::process::id(),
        random_hex(8).map_err(|e| e.to_string())?
    ));
    private_dir(&dir).map_err(|e| e.to_string())?;
    let scratch = ScratchDir(dir.clone());
    let job = serde_json::to_string(&NetJob {
        stack: stack.clone(),
        scratch: dir,
        supervisor: std::process::id() as i32,
    })
    .map_err(|e| e.to_string())?;
    let (ready_tx, ready_rx) = mpsc::channel::<Result<u32, String>>();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    // Without the shared net itself: the thread must not keep it alive.
    let cfg = RunnerConfig {
        shared_net: None,
        ..cfg.clone()
    };
    // The helper's parent-death signal is tied to the thread that spawns it,
    // so that thread lives exactly as long as the network.
    let thread = std::thread::Builder::new()
        .name("kiln-net".into())
        .spawn(move || {
            let (mut child, sock) = match spawn_helper(&cfg, "netns", &[&job], quiet_stdio(), None)
            {
                Ok(x) => x,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            let ready = match MsgReader::new(&sock).next() {
                Ok(Some(Msg::Ready)) => Ok(child.id()),
                Ok(Some(Msg::Error { message, .. })) => Err(message),
                Ok(other) => Err(format!("the network helper said {other:?}")),
                Err(e) => Err(e),
            };
            let ok = ready.is_ok();
            let _ = ready_tx.send(ready);
            if ok {
                // Until the handle is dropped (the sender goes away).
                let _ = stop_rx.recv();
            }
            drop(sock);
            let _ = child.wait();
        })
        .map_err(|e| format!("starting the network thread: {e}"))?;
    match ready_rx.recv() {
        Ok(Ok(pid)) => Ok(Running {
            netns: PathBuf::from(format!("/proc/{pid}/ns/net")),
            stack,
            stop: Some(stop_tx),
            thread: Some(thread),
            _scratch: scratch,
        }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => {
            let _ = thread.join();
            Err("the network thread ended early".into())
        }
    }
}

/// /dev/null for the netns helper's output: it reports on fd 3, and must
/// not hold the caller's stdout/stderr open for the whole build.
fn quiet_stdio() -> Stdio {
    let null = || {
        std::fs::File::options()
            .write(true)
            .open("/dev/null")
            .ok()
            .map(Into::into)
    };
    Stdio {
        stdin: None,
        stdout: null(),
        stderr: null(),
    }
}

/// The netns helper (N): `args[0]` is the JSON [`NetJob`].
pub(crate) fn netns_main(args: &[std::ffi::OsString]) -> i32 {
    // SAFETY: fd 3 is the socket to the caller, set up by spawn_helper.
    let report = unsafe { BorrowedFd::borrow_raw(REPORT_FD) };
    let _ = rustix::io::fcntl_setfd(report, rustix::io::FdFlags::CLOEXEC);
    // Whatever the caller leaked to us (a pipe made without O_CLOEXEC by
    // another thread while we were spawned) must not stay open for the
    // whole build: a reader would never see its EOF.
    // SAFETY: nothing in this fresh process owns fds above the report fd.
    unsafe { libc::syscall(libc::SYS_close_range, REPORT_FD as u32 + 1, u32::MAX, 0) };
    let fail = |message: String| {
        send(
            report,
            &Msg::Error {
                message,
                code: None,
            },
        );
        125
    };
    let job: NetJob = match args
        .first()
        .and_then(|a| a.to_str())
        .map(serde_json::from_str)
    {
        Some(Ok(j)) => j,
        _ => return fail("network helper: bad job".into()),
    };
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
    if rustix::process::getppid().map(|p| p.as_raw_pid()) != Some(job.supervisor) {
        return fail("the runner's caller went away".into());
    }
    let stack = match super::stack::own_namespace_with(&job.stack, &job.scratch) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    send(report, &Msg::Ready);
    // The caller never writes: EOF (or an error) means it is done with us.
    let mut f = std::fs::File::from(match report.try_clone_to_owned() {
        Ok(fd) => fd,
        Err(_) => return 0,
    });
    let mut b = [0u8; 1];
    while let Ok(n) = f.read(&mut b) {
        if n == 0 {
            break;
        }
    }
    drop(stack);
    0
}
