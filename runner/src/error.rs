//! The crate's error type. Every message is one line, fit to be printed by
//! the CLI as-is (`kiln: <message>`).

use std::net::IpAddr;
use std::path::PathBuf;

/// Everything that can go wrong in the runner.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// An I/O error on the caller's side, with what we were doing.
    /// `cause`, not a `#[source]`: the message already ends with it, and
    /// a chain printed with `{:#}` would say it twice.
    #[error("{context}: {cause}")]
    Io {
        context: String,
        cause: std::io::Error,
    },
    /// Container setup failed inside the helper (mounts, namespaces, user, ...).
    #[error("container setup failed: {0}")]
    Setup(String),
    /// The kernel refused the overlay mount of the container's root.
    #[error("container setup failed: {0}")]
    OverlayRefused(String),
    /// The container's process could not be executed. `code` is what Docker
    /// reports as the exit status in that case: 127 not found, 126 not executable.
    #[error("{message}")]
    Exec { message: String, code: i32 },
    #[error("invalid port spec {spec:?}: {reason}")]
    BadPortSpec { spec: String, reason: String },
    #[error("port {port} is already in use on {ip}")]
    PortInUse { ip: IpAddr, port: u16 },
    #[error("cannot publish {ip}:{port}: {reason}")]
    PortBind {
        ip: IpAddr,
        port: u16,
        reason: String,
    },
    #[error("No such container: {0}")]
    NoSuchContainer(String),
    #[error("ambiguous container prefix {prefix:?}: matches {matches}")]
    AmbiguousPrefix { prefix: String, matches: String },
    #[error("the container name \"{name}\" is already in use by container \"{id}\"")]
    NameInUse { name: String, id: String },
    #[error("invalid container name {0:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-]* is allowed")]
    InvalidName(String),
    #[error(
        "cannot remove container {0}: container is running: stop the container before removing or force remove"
    )]
    ContainerRunning(String),
    #[error(
        "You cannot remove a restarting container {0}. Stop the container before attempting removal or force remove"
    )]
    ContainerRestarting(String),
    /// `exec` into a container between an exit and its restart.
    #[error("Container {0} is restarting, wait until the container is running")]
    Restarting(String),
    /// `exec` into a container that is not running (docker's words).
    #[error("Container {0} is not running")]
    NotRunning(String),
    #[error("invalid signal {0:?}")]
    BadSignal(String),
    #[error("invalid container spec: {0}")]
    InvalidSpec(String),
    /// The helper process died or spoke nonsense.
    #[error("runner helper: {0}")]
    Helper(String),
    /// A private network needs pasta or slirp4netns and neither is installed.
    #[error(
        "the private network needs a user-mode network stack, but neither pasta nor slirp4netns \
         is in PATH ({searched}): install Debian's passt package (apt-get install passt) or \
         slirp4netns, or use --network host (the host's network, its loopback services \
         included) or --network none (no network)"
    )]
    NoNetworkStack { searched: String },
    /// A resource limit that is invalid or that this host cannot enforce.
    #[error("{0}")]
    Limits(String),
    /// `kiln top`: ps failed, or its output has no PID column.
    #[error("{0}")]
    Top(String),
    /// `kiln cp`: what could not be copied, and why.
    #[error("{0}")]
    Copy(String),
    #[error("corrupt container state in {path}: {reason}")]
    State { path: PathBuf, reason: String },
}

impl RunError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        RunError::Io {
            context: context.into(),
            cause: source,
        }
    }

    /// The exit status a CLI should use for this error when it is about the
    /// container's process (Docker: 127 command not found, 126 not executable);
    /// `None` for errors that are not about the process.
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            RunError::Exec { code, .. } => Some(*code),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_say_their_cause_once() {
        let e = RunError::io("reading /x", std::io::Error::from_raw_os_error(2));
        assert!(std::error::Error::source(&e).is_none());
        assert_eq!(
            e.to_string(),
            format!("reading /x: {}", std::io::Error::from_raw_os_error(2))
        );
    }
}
