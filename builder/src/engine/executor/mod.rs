//! The executor seam: "run this process in this root with these mounts,
//! network and user; give me its exit status". The RUN op prepares an
//! [`ExecSpec`] and hands it to whichever [`Executor`] the build has: today
//! the namespaces + overlayfs one of `kiln-runner` ([`namespaces`]); a
//! rootless or emulated executor is another implementation, and the unit
//! tests use a fake that needs no root.
//!
//! Rootless builds need no executor of their own: an ordinary user's kiln
//! moves itself into a user namespace where it is root at the start of
//! `main` (`kiln_runner::userns`), so [`namespaces::NamespaceExecutor`]
//! runs there unchanged and the runner adapts what a user namespace does
//! differently (overlay's `userxattr`, bound device nodes, the network
//! namespace made in a child).

pub mod namespaces;

use std::path::PathBuf;

use anyhow::Result;

/// The network a process gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// A namespace of its own with outbound access (shared by the build).
    Private,
    /// The host's network.
    Host,
    /// Only `lo`.
    None,
}

impl Network {
    /// The mode's name in a cache key (BuildKit keys it too).
    pub fn key_name(self) -> &'static str {
        match self {
            Network::Host => "host",
            Network::None => "none",
            Network::Private => "default",
        }
    }
}

/// A mount of the process, beside its root filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Absolute path in the container.
    pub target: String,
    pub kind: MountKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountKind {
    Bind { source: PathBuf, readonly: bool },
    Tmpfs { size: Option<u64> },
}

/// One process to run over a root made of layers.
#[derive(Debug, Clone)]
pub struct ExecSpec {
    /// Read-only layer trees, topmost first.
    pub lowers: Vec<PathBuf>,
    /// Where the process's changes to its root go (the new snapshot), and
    /// the overlay work dir beside it.
    pub upper: PathBuf,
    pub work: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    /// `user[:group]` as the image spells it; None: root.
    pub user: Option<String>,
    pub hostname: String,
    pub network: Network,
    pub mounts: Vec<Mount>,
}

/// How a process ended. Its changes are in the spec's `upper`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecStatus {
    pub code: i32,
    /// What the build should warn about once (e.g. the executor fell back
    /// to a slower way of making roots).
    pub warnings: Vec<String>,
}

/// Runs processes for RUN steps.
pub trait Executor: Send + Sync {
    /// Runs `spec` to its end, handing each line of its output (stdout
    /// and stderr together) to `output`. An error is a failure to run it
    /// at all; a process that ran and failed is an [`ExecStatus`].
    fn run(&self, spec: &ExecSpec, output: &(dyn Fn(&str) + Sync)) -> Result<ExecStatus>;
}
