//! What the helper processes tell their parent, one JSON object per line on
//! a socket or pipe, and the job the caller hands the helper.

use std::io::{BufRead, BufReader, Read};
use std::os::fd::BorrowedFd;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::ContainerSpec;

/// The container job a helper runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Job {
    pub spec: ContainerSpec,
    /// Private dir for generated files, mount stubs, the rootfs mount point
    /// and (if the spec has none) the upper dir.
    pub scratch: PathBuf,
    pub hostname: String,
    /// stdin is a terminal that should become the controlling terminal.
    pub tty: bool,
    /// PID of the process the helper's parent must be (checked after
    /// setting the parent-death signal, to close the race with its death).
    pub supervisor: i32,
    /// Use mount(2) for the overlay as on kernels before 6.8 (set by the
    /// caller from `KILN_RUNNER_LEGACY_OVERLAY=1`; for tests and debugging).
    #[serde(default)]
    pub legacy_overlay: bool,
    /// With [`crate::NetworkMode::Private`]: the stack to start, or the
    /// shared namespace to join.
    #[serde(default)]
    pub net: crate::net::NetPlan,
    /// cgroup dirs (one per hierarchy) the container's PID 1 joins.
    #[serde(default)]
    pub cgroups: Vec<PathBuf>,
    /// A copied root (the native snapshotter) to bind-mount instead of
    /// mounting an overlay of the spec's lowers.
    #[serde(default)]
    pub copied_root: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Msg {
    /// The container's PID 1, as the host sees it.
    Pid(i32),
    /// The user's process was exec'd.
    Running,
    /// Setup or exec failed; `code` is set for exec failures (126/127).
    Error { message: String, code: Option<i32> },
    /// Setup failed because the kernel refused the overlay mount (the
    /// caller may retry with a copied root).
    OverlayRefused { message: String },
    /// The container is gone; its exit code.
    Exited(i32),
    /// (monitor) The container is running and its ports are served.
    Ready,
    /// (monitor) A published port could not be bound.
    PortInUse { ip: std::net::IpAddr, port: u16 },
}

/// Write one message with a single `write(2)` (messages are far below the
/// pipe atomicity limit), retrying on EINTR. Errors are ignored: a reader
/// that went away is not the writer's problem.
pub(crate) fn send(fd: BorrowedFd<'_>, msg: &Msg) {
    let mut line = match serde_json::to_vec(msg) {
        Ok(l) => l,
        Err(_) => return,
    };
    line.push(b'\n');
    let mut off = 0;
    while off < line.len() {
        match rustix::io::write(fd, &line[off..]) {
            Ok(n) => off += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return,
        }
    }
}

/// Reads messages until EOF.
pub(crate) struct MsgReader<R: Read> {
    inner: BufReader<R>,
}

impl<R: Read> MsgReader<R> {
    pub fn new(r: R) -> Self {
        MsgReader {
            inner: BufReader::new(r),
        }
    }

    /// Next message; `Ok(None)` at EOF; an unparsable line is an error.
    pub fn next(&mut self) -> Result<Option<Msg>, String> {
        let mut line = String::new();
        loop {
            line.clear();
            match self.inner.read_line(&mut line) {
                Ok(0) => return Ok(None),
                Ok(_) if line.trim().is_empty() => continue,
                Ok(_) => {
                    return serde_json::from_str(line.trim())
                        .map(Some)
                        .map_err(|e| format!("bad message {:?}: {e}", line.trim()))
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}
