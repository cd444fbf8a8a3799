//! kiln-runner: run a process in a container made from plain paths.
//!
//! The container is an overlay mount of the given lower dirs (top-most first)
//! and an upper/work dir, in new mount, PID, UTS, IPC (and, unless
//! [`NetworkMode::Host`], network) namespaces, with `/proc`, `/dev`, `/sys`
//! set up the way Docker does and the old root detached after `pivot_root`.
//! The runner knows nothing of images or the store.
//!
//! # Process model
//! The caller may be multi-threaded, so it is never forked for container
//! setup. Each container starts by re-executing the helper binary
//! ([`RunnerConfig::helper_exe`], whose `main` must call [`init_hook`] first)
//! with a hidden first argument. The single-threaded helper unshares the
//! namespaces and forks the container's PID 1 (a small init that reaps
//! zombies and forwards signals), which re-executes itself from a private
//! read-only mount of the binary (so nothing in the container can ever open
//! the runtime's binary for writing: CVE-2019-5736) and then forks and execs
//! the user's process. Setup errors come back to the caller over a socket as
//! one-line messages.
//!
//! # Files that must not land in the layer
//! `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf` are generated outside
//! the rootfs and bind-mounted. Mount points the image lacks (these files,
//! `/proc`, `/dev`, `/sys`, targets of extra mounts) are created in a private
//! *stub* directory that is added as the bottom-most overlay lower, so they
//! exist in the merged view without ever being written to the upper dir.
//! (BuildKit instead creates the stubs in the rootfs and deletes them after
//! the run; the bottom lower avoids that cleanup and its races.)

pub mod cgroups;
mod copyup;
mod cp;
mod cp_tree;
mod error;
mod exec;
pub mod health;
mod helper;
mod logs;
mod monitor;
mod mounts;
mod names;
pub mod net;
mod pause;
pub mod platform;
pub mod ports;
mod proto;
mod ps;
pub mod restart;
mod rootless_fs;
mod seccomp;
mod snapshot;
mod state;
mod syscall_table;
mod top;
mod tty;
pub mod user;
pub mod userns;

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use cp::CpOptions;
pub use error::RunError;
pub use exec::ExecOptions;
pub use health::{HealthConfig, HealthResult, HealthState};
pub use logs::{parse_log_time, parse_tail, LogOptions};
pub use net::{find_stack, SharedNet, Stack, StackKind};
pub use ports::{parse_port_spec, PortMapping, Protocol};
pub use ps::{format_ps_table, human_duration};
pub use restart::RestartPolicy;
pub use snapshot::{take_fallback_warning, wait_for_cleanup, Snapshotter};
pub use state::{parse_signal, ContainerInfo, ContainerStatus, Containers, RunOptions};
pub use top::ps_lines;

/// Call this first thing in `main()`. It returns immediately unless this
/// process was started by the runner as one of its helpers, in which case
/// it runs the helper and exits the process.
pub fn init_hook() {
    helper::init_hook()
}

/// The runner's helper protocol as built: a hash of this crate's sources.
pub const BUILD_ID: &str = env!("KILN_RUNNER_BUILD_ID");

/// `kiln-helper` beside the running binary, when it is a helper built from
/// the same runner sources ([`BUILD_ID`]) and as trusted as the binary
/// itself (owned by root or by us, writable by nobody else). Executing a
/// small helper instead of a large caller twice per container is most of
/// a container's start-up (bench/README.md, profile 7). Looked up once
/// per process.
pub fn helper_beside_current_exe() -> Option<PathBuf> {
    static FOUND: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    FOUND
        .get_or_init(|| {
            let exe = std::env::current_exe().ok()?;
            // The helper itself (a monitor) re-executes itself.
            if exe.file_name()? == "kiln-helper" {
                return None;
            }
            let helper = exe.parent()?.join("kiln-helper");
            trusted_helper(&helper).then_some(helper)
        })
        .clone()
}

/// (device, inode, trusted owner) of `kiln-helper` as the machine saw it
/// before this process entered a user namespace: inside one, root's files
/// show as the overflow uid, which says nothing about who may write them.
static HELPER_OWNER: std::sync::OnceLock<Option<(u64, u64, bool)>> = std::sync::OnceLock::new();

/// Call before entering a user namespace (rootless kiln does it first
/// thing): notes who owns the `kiln-helper` beside the running binary, so
/// that one installed by root (the usual case) is still used inside.
pub fn note_helper_owner() {
    use std::os::unix::fs::MetadataExt;
    HELPER_OWNER.get_or_init(|| {
        let exe = std::env::current_exe().ok()?;
        let m = std::fs::metadata(exe.parent()?.join("kiln-helper")).ok()?;
        let me = rustix::process::geteuid().as_raw();
        Some((m.dev(), m.ino(), m.uid() == 0 || m.uid() == me))
    });
}

fn trusted_helper(p: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = std::fs::metadata(p) else {
        return false;
    };
    let me = rustix::process::geteuid().as_raw();
    let noted = matches!(HELPER_OWNER.get(), Some(Some((dev, ino, true)))
        if (*dev, *ino) == (m.dev(), m.ino()));
    let owner_ok = m.uid() == 0 || m.uid() == me || noted;
    if !m.is_file() || !owner_ok || m.mode() & 0o022 != 0 || m.mode() & 0o111 == 0 {
        return false;
    }
    std::process::Command::new(p)
        .arg(helper::BUILD_ID_FLAG)
        .env_clear()
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout.trim_ascii() == BUILD_ID.as_bytes())
}

/// How to start helpers.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// The binary to re-execute as the helper; its `main` must call
    /// [`init_hook`] first. Default: `/proc/self/exe`, the running binary,
    /// or [`helper_beside_current_exe`] when there is one.
    pub helper_exe: PathBuf,
    /// Where foreground containers get their scratch dir (generated /etc
    /// files, mount stubs, the upper dir when none is given). Default: the
    /// system temp dir.
    pub scratch_root: PathBuf,
    /// Containers with [`NetworkMode::Private`] run through this config join
    /// this one network (started on first use, stopped when the last clone
    /// is dropped) instead of getting a stack each: a build's RUN steps.
    pub shared_net: Option<SharedNet>,
    /// How containers get their root: overlayfs, or copies where the
    /// kernel refuses it. Default: `KILN_SNAPSHOTTER`, else auto.
    pub snapshotter: Snapshotter,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            // Resolved by the kernel when the helper is spawned: always the
            // binary this process runs, even if the file was replaced since.
            helper_exe: PathBuf::from("/proc/self/exe"),
            scratch_root: std::env::temp_dir(),
            shared_net: None,
            snapshotter: Snapshotter::from_env().unwrap_or_default(),
        }
    }
}

/// Network namespace of the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum NetworkMode {
    /// Share the host's network namespace: every service on the host's
    /// loopback is reachable, and the host's ports are the container's.
    Host,
    /// Own namespace with only `lo` (up); published ports are proxied in.
    #[default]
    None,
    /// Own namespace with `lo` and outbound TCP/UDP through a user-mode
    /// stack (pasta or slirp4netns, see [`net`]); the host's loopback and
    /// 169.254.0.0/16 are not reachable. Published ports are proxied in.
    Private,
}

/// What to mount at a [`MountSpec::target`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MountKind {
    /// Bind a host file or directory (recursive). Used for build context,
    /// other stages, cache mounts and secret files.
    Bind { source: PathBuf, readonly: bool },
    /// A fresh tmpfs, `size` in bytes (None: the kernel default).
    Tmpfs { size: Option<u64> },
    /// A volume's data directory (bound like [`MountKind::Bind`]). With
    /// `copy_up`, an empty `source` is first filled from what the image
    /// has at the target, keeping owners, modes and times (Docker's
    /// copy-up of a fresh volume); a non-empty one is left alone.
    Volume {
        source: PathBuf,
        readonly: bool,
        copy_up: bool,
    },
}

/// An extra mount inside the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountSpec {
    /// Absolute path inside the container. Symlinks on the way are resolved
    /// inside the container root, never on the host.
    pub target: String,
    pub kind: MountKind,
}

/// The container's root filesystem as overlay layers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RootFs {
    /// Lower dirs, top-most first (overlay's `lowerdir` order). May be empty
    /// (FROM scratch).
    pub lowers: Vec<PathBuf>,
    /// `(upper, work)` on the same filesystem, the work dir empty. None: the
    /// runner makes a scratch upper (in the container's state dir when
    /// detached, in a temp dir in the foreground) and deletes it with the
    /// container.
    ///
    /// After the run the upper dir is the diff: overlay whiteouts (0/0
    /// character devices; with a copied root on a filesystem that refuses
    /// them, overlayfs itself, OCI's empty `.wh.NAME` files, root's, 0644),
    /// `trusted.overlay.opaque=y` directories, and
    /// overlay's bookkeeping xattrs (`trusted.overlay.origin`, `.impure`,
    /// `.uuid`) that a layer writer must drop. No mount point, stub or
    /// generated /etc file is ever in it. The work dir keeps an empty
    /// `work/` (mode 000) for the caller to delete.
    pub upper: Option<(PathBuf, PathBuf)>,
}

/// What to run and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ContainerSpec {
    pub rootfs: RootFs,
    /// argv, already resolved from ENTRYPOINT/CMD/SHELL; `args[0]` is looked
    /// up in the container's PATH when it contains no `/`.
    pub args: Vec<String>,
    /// "K=V"; PATH gets Docker's default when missing, HOME the user's.
    pub env: Vec<String>,
    /// Absolute; created (as root) if missing.
    pub cwd: String,
    /// "name", "uid", "name:group", "uid:gid"; None = root.
    pub user: Option<String>,
    /// Default: the host's name with [`NetworkMode::Host`] (Docker's rule),
    /// else the first 12 chars of the container id, or "kiln" for [`run`].
    pub hostname: Option<String>,
    pub network: NetworkMode,
    pub mounts: Vec<MountSpec>,
    pub readonly_rootfs: bool,
    /// Run without the syscall filter (`--security-opt seccomp=unconfined`).
    #[serde(default)]
    pub seccomp_unconfined: bool,
}

/// The container process's standard streams. `None` for stdin means
/// `/dev/null` (what a build wants); `None` for stdout/stderr means the
/// caller's own.
#[derive(Debug, Default)]
pub struct Stdio {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// Run a container in the foreground and return its exit code (128+signal
/// when killed by a signal). Blocking; safe to call from many threads at once.
pub fn run(cfg: &RunnerConfig, spec: &ContainerSpec, stdio: Stdio) -> Result<i32, RunError> {
    helper::run_foreground(cfg, spec, stdio, None, &mut |_| {})
}

/// Like [`run`], but `kill` can end the container from another thread
/// (a cancelled build): its PID 1 gets SIGKILL, so `run` returns 137.
pub fn run_killable(
    cfg: &RunnerConfig,
    spec: &ContainerSpec,
    stdio: Stdio,
    kill: &KillSwitch,
) -> Result<i32, RunError> {
    helper::run_foreground(cfg, spec, stdio, None, &mut |ev| match ev {
        helper::Event::Started { pid, .. } => kill.started(pid),
    })
}

/// Ends a [`run_killable`] container from another thread, whether it has
/// started yet or not. One switch per run.
#[derive(Debug, Clone, Default)]
pub struct KillSwitch {
    inner: std::sync::Arc<std::sync::Mutex<KillState>>,
}

#[derive(Debug, Default)]
struct KillState {
    killed: bool,
    pidfd: Option<OwnedFd>,
}

impl KillSwitch {
    pub fn new() -> KillSwitch {
        KillSwitch::default()
    }

    /// SIGKILL the container now, or as soon as it starts.
    pub fn kill(&self) {
        if let Ok(mut st) = self.inner.lock() {
            st.killed = true;
            if let Some(fd) = &st.pidfd {
                let _ = rustix::process::pidfd_send_signal(fd, rustix::process::Signal::KILL);
            }
        }
    }

    fn started(&self, pid: i32) {
        let fd = rustix::process::Pid::from_raw(pid).and_then(|p| {
            rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok()
        });
        if let Ok(mut st) = self.inner.lock() {
            if st.killed {
                if let Some(fd) = &fd {
                    let _ = rustix::process::pidfd_send_signal(fd, rustix::process::Signal::KILL);
                }
            }
            st.pidfd = fd;
        }
    }
}

/// Docker's default PATH, used when the image sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
