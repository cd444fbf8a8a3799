//! The helper processes: spawning them from the (multi-threaded) caller, and
//! what they do once re-exec'd (single-threaded).
//!
//! ```text
//! caller ──spawn(helper exe, MARKER container)──▶ H  (host namespaces)
//!   H: prepare scratch, read-only clone of its own binary, unshare(mnt,
//!      uts,ipc,pid[,net]), lo up, fork
//!   └─▶ C  PID 1 of the container: re-exec through the read-only clone
//!          (MARKER init), mounts, pivot_root, hostname, user, fork
//!         └─▶ P: setsid, seccomp filter, caps, uid/gid, chdir, close fds, execve(user argv)
//! ```
//! H forwards signals to C, C to P; C reaps every zombie and exits with P's
//! status; H reports `Exited(code)` on fd 3 and exits with it.

use std::ffi::{CString, OsString};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use nix::sys::signal::{kill, sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

use crate::error::RunError;
use crate::mounts::{self, Layout};
use crate::net::NetPlan;
use crate::proto::{send, Job, Msg, MsgReader};
use crate::user::resolve_user;
use crate::{ContainerSpec, NetworkMode, RunnerConfig, Snapshotter, Stdio, DEFAULT_PATH};

/// Hidden argv[1] that turns a process started by the runner into a helper.
pub(crate) const MARKER: &str = "__kiln-runner-helper__";
/// The fd on which a helper talks to its parent.
pub(crate) const REPORT_FD: RawFd = 3;
/// With a tty: the socket on which the pty master goes back to the caller.
pub(crate) const CONSOLE_FD: RawFd = 4;

pub(crate) fn init_hook() {
    let mut args = std::env::args_os();
    let _ = args.next();
    let first = args.next();
    if first.as_deref() == Some(std::ffi::OsStr::new(BUILD_ID_FLAG)) {
        println!("{}", crate::BUILD_ID);
        std::process::exit(0);
    }
    if first.as_deref() != Some(std::ffi::OsStr::new(MARKER)) {
        return;
    }
    let role = args.next();
    let rest: Vec<OsString> = args.collect();
    // Started through /proc/self/exe or an fd, our comm would be "exe" or
    // a number.
    let _ = rustix::thread::set_name(c"kiln-runner");
    let code = match role.as_deref().and_then(|r| r.to_str()) {
        Some("container") => container_main(),
        Some("init") => init_main(&rest),
        Some("monitor") => crate::monitor::monitor_main(&rest),
        Some("pause") => crate::pause::pause_main(),
        Some("netns") => crate::net::netns_main(&rest),
        Some("exec") => crate::exec::exec_main(),
        _ => {
            eprintln!("kiln-runner: unknown helper role {role:?}");
            125
        }
    };
    std::process::exit(code);
}

/// `HELPER --kiln-helper-build-id` prints the helper's [`crate::BUILD_ID`].
pub(crate) const BUILD_ID_FLAG: &str = "--kiln-helper-build-id";

/// Start the helper binary with `role`, the given
/// stdio, and one end of a socketpair as fd 3. The caller's fds are not
/// inherited (std's Command opens everything close-on-exec).
pub(crate) fn spawn_helper(
    cfg: &RunnerConfig,
    role: &str,
    args: &[&str],
    stdio: Stdio,
    console: Option<OwnedFd>,
) -> Result<(Child, UnixStream), RunError> {
    let (ours, theirs) = UnixStream::pair().map_err(|e| RunError::io("socketpair", e))?;
    let theirs =
        rustix::io::fcntl_dupfd_cloexec(&theirs, 10).map_err(|e| RunError::io("dup", e.into()))?;
    let raw = theirs.as_raw_fd();
    let console = match console {
        Some(c) => Some(
            rustix::io::fcntl_dupfd_cloexec(&c, 10).map_err(|e| RunError::io("dup", e.into()))?,
        ),
        None => None,
    };
    let console_raw = console.as_ref().map(|c| c.as_raw_fd());
    // Read before the fork: the child may only make async-signal-safe calls.
    let nofile = crate::snapshot::original_file_limit().map(|r| libc::rlimit {
        rlim_cur: r.current.unwrap_or(libc::RLIM_INFINITY),
        rlim_max: r.maximum.unwrap_or(libc::RLIM_INFINITY),
    });
    // The default, ourselves, gives way to a small helper built with us.
    let exe = match cfg.helper_exe.as_os_str() == "/proc/self/exe" {
        true => crate::helper_beside_current_exe().unwrap_or_else(|| cfg.helper_exe.clone()),
        false => cfg.helper_exe.clone(),
    };
    let mut cmd = Command::new(&exe);
    cmd.arg0("kiln-runner").arg(MARKER).arg(role).args(args);
    cmd.env_clear();
    cmd.stdin(match stdio.stdin {
        Some(fd) => std::process::Stdio::from(fd),
        None => std::process::Stdio::null(),
    });
    if let Some(fd) = stdio.stdout {
        cmd.stdout(fd);
    }
    if let Some(fd) = stdio.stderr {
        cmd.stderr(fd);
    }
    // SAFETY: dup2 and setrlimit are async-signal-safe; `raw` is open in the parent (and so
    // in the child) until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(raw, REPORT_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(c) = console_raw {
                if libc::dup2(c, CONSOLE_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // The caller's raised open-file limit is not the container's.
            if let Some(r) = &nofile {
                libc::setrlimit(libc::RLIMIT_NOFILE, r);
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| RunError::io(format!("starting helper {}", exe.display()), e))?;
    drop(theirs);
    drop(console);
    Ok((child, ours))
}

pub(crate) fn validate(spec: &ContainerSpec) -> Result<(), RunError> {
    if spec.args.is_empty() || spec.args[0].is_empty() {
        return Err(RunError::InvalidSpec("no command given".into()));
    }
    if !spec.cwd.starts_with('/') {
        return Err(RunError::InvalidSpec(format!(
            "working directory {:?} is not absolute",
            spec.cwd
        )));
    }
    let nul = |s: &str| s.contains('\0');
    if spec.args.iter().any(|a| nul(a)) || spec.env.iter().any(|a| nul(a)) || nul(&spec.cwd) {
        return Err(RunError::InvalidSpec("NUL byte in argv, env or cwd".into()));
    }
    for m in &spec.mounts {
        mounts::clean_target(&m.target).map_err(RunError::InvalidSpec)?;
    }
    for l in &spec.rootfs.lowers {
        if !l.is_dir() {
            return Err(RunError::InvalidSpec(format!(
                "lower dir {} is not a directory",
                l.display()
            )));
        }
    }
    Ok(())
}

/// The spec's hostname; else, with the host's network, the host's name
/// (Docker's rule); else `fallback` (the short ID, or "kiln").
pub(crate) fn default_hostname(spec: &ContainerSpec, fallback: String) -> String {
    if let Some(h) = &spec.hostname {
        return h.clone();
    }
    if spec.network == NetworkMode::Host {
        let u = rustix::system::uname();
        if let Ok(n) = u.nodename().to_str() {
            if !n.is_empty() {
                return n.to_string();
            }
        }
    }
    fallback
}

/// `KILN_RUNNER_LEGACY_OVERLAY=1`: mount the overlay the pre-6.8 way.
pub(crate) fn legacy_overlay_requested() -> bool {
    std::env::var_os("KILN_RUNNER_LEGACY_OVERLAY").is_some_and(|v| v == "1")
}

/// Random lowercase hex, `n` bytes of entropy.
pub(crate) fn random_hex(n: usize) -> Result<String, RunError> {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).map_err(|e| RunError::Helper(format!("getrandom: {e}")))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Create `dir` (and parents) with mode 0700: scratch and state dirs hold
/// the container's files, logs and generated /etc files.
pub(crate) fn private_dir(dir: &Path) -> Result<(), RunError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let ctx = || format!("creating {}", dir.display());
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(|e| RunError::io(ctx(), e))?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| RunError::io(ctx(), e))
        }
        Err(e) => Err(RunError::io(ctx(), e)),
    }
}

/// Once per process: remove `kiln-run-<pid>-*` scratch dirs whose process
/// is gone (killed before it could clean up). A dir whose PID is alive is
/// kept, even if the PID was reused: never delete a live container's dir.
fn sweep_stale_scratch(root: &Path) {
    static DONE: std::sync::Once = std::sync::Once::new();
    DONE.call_once(|| sweep_stale_scratch_now(root));
}

fn sweep_stale_scratch_now(root: &Path) {
    let Ok(rd) = std::fs::read_dir(root) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("kiln-run-")) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Removes a scratch dir when dropped.
pub(crate) struct ScratchDir(pub PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What a foreground run reports while it goes.
pub(crate) enum Event {
    /// The helper's PID (alive exactly as long as the container) and the
    /// container's PID 1, both as the host sees them.
    Started { helper: i32, pid: i32 },
}

/// A foreground run that belongs to a named container (state dir).
pub(crate) struct Named<'a> {
    /// Scratch dir inside the container's state dir (kept).
    pub scratch: &'a Path,
    pub id: &'a str,
    /// Make a pty in the container and relay it to the caller's terminal.
    pub tty: bool,
    /// Relay the caller's stdin to the pty (and put the terminal in raw mode).
    pub interactive: bool,
    /// cgroup dirs the container joins (its limits).
    pub cgroups: Vec<PathBuf>,
}

/// Foreground run; without `named`, the scratch dir is a temp dir removed
/// afterwards and the hostname defaults to "kiln". `on_event` sees the
/// container's host PID.
pub(crate) fn run_foreground(
    cfg: &RunnerConfig,
    spec: &ContainerSpec,
    stdio: Stdio,
    named: Option<Named<'_>>,
    on_event: &mut dyn FnMut(Event),
) -> Result<i32, RunError> {
    validate(spec)?;
    let mut _guard = None;
    let (scratch, hostname, tty, interactive, cgroups) = match &named {
        Some(n) => (
            n.scratch.to_path_buf(),
            n.id[..12.min(n.id.len())].to_string(),
            n.tty,
            n.interactive,
            n.cgroups.clone(),
        ),
        None => {
            sweep_stale_scratch(&cfg.scratch_root);
            let dir = cfg.scratch_root.join(format!(
                "kiln-run-{}-{}",
                std::process::id(),
                random_hex(8)?
            ));
            private_dir(&dir)?;
            _guard = Some(ScratchDir(dir.clone()));
            (dir, "kiln".to_string(), false, false, Vec::new())
        }
    };
    let mut job = Job {
        spec: spec.clone(),
        scratch,
        hostname: default_hostname(spec, hostname),
        tty,
        supervisor: std::process::id() as i32,
        legacy_overlay: legacy_overlay_requested(),
        net: net_plan(cfg, spec)?,
        cgroups,
        copied_root: None,
    };
    let copy = cfg.snapshotter.copies();
    // Overlay first, copies if the kernel refuses it: the streams are
    // kept for the second try (nothing ran in the first).
    let spare = match cfg.snapshotter == Snapshotter::Auto && !copy {
        true => Some(clone_stdio(&stdio)?),
        false => None,
    };
    let first = attempt(cfg, &mut job, stdio, interactive, copy, on_event);
    match (first, spare) {
        (Err(RunError::OverlayRefused(reason)), Some(stdio)) => {
            crate::snapshot::record_fallback(&reason);
            attempt(cfg, &mut job, stdio, interactive, true, on_event)
        }
        (Err(RunError::OverlayRefused(reason)), None) => Err(RunError::Setup(
            crate::snapshot::overlay_only_error(&reason),
        )),
        (r, _) => r,
    }
}

fn clone_stdio(s: &Stdio) -> Result<Stdio, RunError> {
    let dup = |fd: &Option<OwnedFd>| -> Result<Option<OwnedFd>, RunError> {
        fd.as_ref()
            .map(|f| f.try_clone())
            .transpose()
            .map_err(|e| RunError::io("dup", e))
    };
    Ok(Stdio {
        stdin: dup(&s.stdin)?,
        stdout: dup(&s.stdout)?,
        stderr: dup(&s.stderr)?,
    })
}

/// One start of `job`; with `copy`, on a copied root made first, whose
/// changes go to the upper dir once the container exited.
fn attempt(
    cfg: &RunnerConfig,
    job: &mut Job,
    stdio: Stdio,
    interactive: bool,
    copy: bool,
    on_event: &mut dyn FnMut(Event),
) -> Result<i32, RunError> {
    let layout = mounts::layout_of(job);
    let copied = match copy {
        true => {
            let targets = mounts::wanted_targets(job).map_err(RunError::Setup)?;
            let lowers = &job.spec.rootfs.lowers;
            Some(
                crate::snapshot::prepare(lowers, &layout.work, &targets)
                    .map_err(RunError::Setup)?,
            )
        }
        false => None,
    };
    job.copied_root = copied.as_ref().map(|c| c.root.clone());
    let (console, relay) = if job.tty {
        let (ours, theirs) = UnixStream::pair().map_err(|e| RunError::io("socketpair", e))?;
        (
            Some(OwnedFd::from(theirs)),
            Some(crate::tty::relay(ours, interactive)),
        )
    } else {
        (None, None)
    };
    // On error the console socket is dropped and the relay thread ends.
    let (mut child, mut sock) = spawn_helper(cfg, "container", &[], stdio, console)?;
    let helper = child.id() as i32;
    let result = talk(&mut sock, job, &mut |pid| {
        on_event(Event::Started { helper, pid })
    });
    let status = child
        .wait()
        .map_err(|e| RunError::io("waiting for the runner helper", e))?;
    if let Some(r) = relay {
        let _ = r.join();
    }
    let r = match result {
        (_, Some(e)) => Err(e),
        (Some(c), None) => Ok(c),
        (None, None) => Err(RunError::Helper(format!(
            "helper exited without reporting the container's status ({status})"
        ))),
    };
    match copied {
        // A scratch upper is thrown away with the scratch dir: no diff.
        Some(c) if r.is_ok() && job.spec.rootfs.upper.is_some() => c
            .diff_into(&layout.upper, &cfg.scratch_root)
            .map_err(RunError::Setup)?,
        Some(c) => c.remove(&cfg.scratch_root),
        None => {}
    }
    r
}

/// How a foreground container gets its private network: the config's
/// shared one, or a stack of its own.
fn net_plan(cfg: &RunnerConfig, spec: &ContainerSpec) -> Result<NetPlan, RunError> {
    if spec.network != NetworkMode::Private {
        return Ok(NetPlan::default());
    }
    Ok(match &cfg.shared_net {
        Some(shared) => {
            let (join, stack) = shared.join(cfg)?;
            NetPlan {
                stack: Some(stack),
                join: Some(join),
            }
        }
        None => NetPlan {
            stack: Some(crate::net::find_stack()?),
            join: None,
        },
    })
}

fn talk(
    sock: &mut UnixStream,
    job: &Job,
    on_pid: &mut dyn FnMut(i32),
) -> (Option<i32>, Option<RunError>) {
    let sent = serde_json::to_vec(job)
        .map_err(|e| RunError::Helper(e.to_string()))
        .and_then(|b| {
            sock.write_all(&b)
                .map_err(|e| RunError::io("sending the job", e))
        })
        .and_then(|()| {
            sock.shutdown(std::net::Shutdown::Write)
                .map_err(|e| RunError::io("sending the job", e))
        });
    if let Err(e) = sent {
        return (None, Some(e));
    }
    let mut reader = MsgReader::new(&*sock);
    let mut code = None;
    let mut error = None;
    loop {
        match reader.next() {
            Ok(None) => break,
            Ok(Some(Msg::Pid(p))) => on_pid(p),
            Ok(Some(Msg::Error { message, code })) => {
                error.get_or_insert(match code {
                    Some(code) => RunError::Exec { message, code },
                    None => RunError::Setup(message),
                });
            }
            Ok(Some(Msg::OverlayRefused { message })) => {
                error.get_or_insert(RunError::OverlayRefused(message));
            }
            Ok(Some(Msg::Exited(c))) => code = Some(c),
            Ok(Some(_)) => {}
            Err(e) => {
                error.get_or_insert(RunError::Helper(e));
                break;
            }
        }
    }
    (code, error)
}

// ---------------------------------------------------------------------------
// Inside the helper (single-threaded from here on).

pub(crate) fn report() -> BorrowedFd<'static> {
    // SAFETY: fd 3 is set up by spawn_helper / the monitor and stays open for
    // the helper's lifetime.
    unsafe { BorrowedFd::borrow_raw(REPORT_FD) }
}

pub(crate) fn close_fds_from(first: u32) {
    // SAFETY: close_range only closes fds; nothing else in this
    // single-threaded process owns fds above `first`.
    unsafe {
        libc::syscall(libc::SYS_close_range, first, u32::MAX, 0);
    }
}

fn cloexec_fds_from(first: u32) {
    // SAFETY: only sets FD_CLOEXEC.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
    }
}

/// H for a foreground run: fd 3 is the socket to the caller.
fn container_main() -> i32 {
    let _ = rustix::io::fcntl_setfd(report(), rustix::io::FdFlags::CLOEXEC);
    close_fds_from(CONSOLE_FD as u32 + 1);
    // Read the job through a duplicate so that the report fd stays open.
    let dup = match rustix::io::fcntl_dupfd_cloexec(report(), 10) {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("kiln-runner: no job channel: {e}");
            return 125;
        }
    };
    let mut buf = Vec::new();
    if let Err(e) = std::fs::File::from(dup).read_to_end(&mut buf) {
        eprintln!("kiln-runner: reading the job: {e}");
        return 125;
    }
    let job: Job = match serde_json::from_slice(&buf) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("kiln-runner: bad job: {e}");
            return 125;
        }
    };
    if job.tty {
        // SAFETY: fd 4 is the console socket set up by spawn_helper.
        let c = unsafe { BorrowedFd::borrow_raw(CONSOLE_FD) };
        let _ = rustix::io::fcntl_setfd(c, rustix::io::FdFlags::CLOEXEC);
    } else {
        close_fds_from(CONSOLE_FD as u32);
    }
    container_parent(&job)
}

/// The H role (also used by the monitor, in a forked child whose fd 3 is a
/// pipe to the monitor). Never returns an error: it reports and exits.
pub(crate) fn container_parent(job: &Job) -> i32 {
    // If whoever waits for us dies (the caller of run(), or the monitor), the
    // container goes too: no container outlives its supervisor unseen.
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
    if rustix::process::getppid().map(|p| p.as_raw_pid()) != Some(job.supervisor) {
        send(
            report(),
            &Msg::Error {
                message: "the runner's caller went away".into(),
                code: None,
            },
        );
        return 125;
    }
    let code = match start_container(job) {
        Ok(code) => code,
        Err(message) => {
            send(
                report(),
                &Msg::Error {
                    message,
                    code: None,
                },
            );
            125
        }
    };
    send(report(), &Msg::Exited(code));
    code
}

fn start_container(job: &Job) -> Result<i32, String> {
    let layout = mounts::prepare_host(job)?;
    // Root of a user namespace (rootless) may clone only mounts of a mount
    // namespace that namespace owns: the clone waits for our own below.
    let nested = crate::userns::current().is_nested();
    let mut exe = if nested { None } else { Some(readonly_self()?) };
    // Opened in the host's mount namespace; written by PID 1 (below).
    let cgroup_procs = crate::cgroups::join::open(&job.cgroups)?;
    // First, while still in the host's mount and PID namespaces: a stack
    // started here must not become the container's PID 1. It stops when
    // this function returns (or dies with this process).
    let _stack = crate::net::enter(job)?;
    let flags = rustix::thread::UnshareFlags::NEWNS
        | rustix::thread::UnshareFlags::NEWUTS
        | rustix::thread::UnshareFlags::NEWIPC
        | rustix::thread::UnshareFlags::NEWPID;
    // SAFETY: this process is single-threaded (a fresh exec or a fork of one).
    unsafe { rustix::thread::unshare_unsafe(flags) }.map_err(|e| format!("unshare: {e}"))?;
    // Nothing mounted from here on may propagate back to the host.
    rustix::mount::mount_change(
        "/",
        rustix::mount::MountPropagationFlags::DOWNSTREAM
            | rustix::mount::MountPropagationFlags::REC,
    )
    .map_err(|e| format!("making / rslave: {e}"))?;
    if exe.is_none() {
        exe = Some(readonly_self_by_path()?);
    }
    let exe = exe.expect("cloned above");
    mounts::mount_scratch_tmpfs(&layout)?;
    mounts::prepare(job, &layout)?;
    // All signals blocked: H and the container's init take them with
    // sigwait(), which for PID 1 is what makes them deliverable at all.
    let all = SigSet::all();
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&all), None)
        .map_err(|e| format!("sigprocmask: {e}"))?;
    // SAFETY: single-threaded process.
    let child = match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            // PID 1 dies with H, which dies with its supervisor.
            let _ = rustix::process::set_parent_process_death_signal(Some(
                rustix::process::Signal::KILL,
            ));
            // Before anything else runs: every process of the container
            // is inside its limits, H is not.
            if let Err(message) = crate::cgroups::join::enter(&cgroup_procs) {
                send(
                    report(),
                    &Msg::Error {
                        message,
                        code: None,
                    },
                );
                std::process::exit(125);
            }
            let code = container_init(job, &exe);
            std::process::exit(code);
        }
        ForkResult::Parent { child } => child,
    };
    send(report(), &Msg::Pid(child.as_raw()));
    Ok(supervise(child, false))
}

/// Wait for `child`, forwarding every other signal to it. With `reap_all`
/// (PID 1) every exited process is reaped. Returns the child's exit code,
/// 128+signal when it was killed.
pub(crate) fn supervise(child: Pid, reap_all: bool) -> i32 {
    let all = SigSet::all();
    loop {
        let sig = match all.wait() {
            Ok(s) => s,
            Err(_) => continue,
        };
        if sig != Signal::SIGCHLD {
            let _ = kill(child, sig);
            continue;
        }
        let target = if reap_all { Pid::from_raw(-1) } else { child };
        loop {
            match waitpid(target, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == child => return code,
                Ok(WaitStatus::Signaled(pid, s, _)) if pid == child => return 128 + s as i32,
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    }
}

/// The container's PID 1, first stage: re-execute the helper binary from a
/// private read-only bind mount of itself, so that no process of the
/// container can ever hold the host's binary writable.
///
/// This is the defence against CVE-2019-5736 (runc): the container's
/// process is forked from PID 1, so its `/proc/self/exe` (and a
/// `#!/proc/self/exe` script, or a command of `/proc/self/exe`) is the
/// runtime's binary. Here that file is reached only through a detached
/// read-only mount, so opening it for writing fails with EROFS, whatever
/// the path. It costs one exec, where a sealed memfd copy costs a copy of
/// the whole binary per process. PID 1 is also non-dumpable, so its own
/// `/proc/1/{exe,mem,fd}` cannot be opened from the container at all.
fn container_init(job: &Job, exe: &OwnedFd) -> i32 {
    let _ = rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable);
    let message = match reexec_readonly(job, exe) {
        Ok(never) => match never {},
        Err(m) => m,
    };
    send(
        report(),
        &Msg::Error {
            message,
            code: None,
        },
    );
    125
}

fn reexec_readonly(job: &Job, tree: &OwnedFd) -> Result<std::convert::Infallible, String> {
    // The job goes through an inherited memfd.
    let payload = serde_json::to_vec(job).map_err(|e| e.to_string())?;
    let memfd = rustix::fs::memfd_create("kiln-init-job", rustix::fs::MemfdFlags::empty())
        .map_err(|e| format!("memfd_create: {e}"))?;
    std::fs::File::from(memfd.try_clone().map_err(|e| format!("dup: {e}"))?)
        .write_all(&payload)
        .map_err(|e| format!("writing the init job: {e}"))?;
    // The report (and console) fds must survive the exec.
    for fd in [REPORT_FD, CONSOLE_FD] {
        // SAFETY: fds 3 and 4 are ours for the helper's lifetime (4 only
        // with a tty; on a closed fd this fails harmlessly).
        let b = unsafe { BorrowedFd::borrow_raw(fd) };
        let _ = rustix::io::fcntl_setfd(b, rustix::io::FdFlags::empty());
    }
    let fdnum = CString::new(memfd.as_raw_fd().to_string()).map_err(|e| e.to_string())?;
    let argv = [
        c"kiln-init".to_owned(),
        CString::new(MARKER).map_err(|e| e.to_string())?,
        c"init".to_owned(),
        fdnum,
    ];
    let env: [&std::ffi::CStr; 0] = [];
    let e = nix::unistd::execveat(tree, c"", &argv, &env, nix::fcntl::AtFlags::AT_EMPTY_PATH).err();
    Err(format!(
        "re-executing the helper read-only: {}",
        e.map(|e| e.to_string()).unwrap_or_default()
    ))
}

/// A detached read-only mount of our own binary (`open_tree` clone of
/// `/proc/self/exe`). Made before leaving the host's mount namespace: a
/// mount can only be cloned from the namespace it belongs to.
fn readonly_self() -> Result<OwnedFd, String> {
    use rustix::mount::{open_tree, OpenTreeFlags};
    let exe = rustix::fs::open(
        "/proc/self/exe",
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("/proc/self/exe: {e}"))?;
    let tree = open_tree(
        &exe,
        "",
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_EMPTY_PATH,
    )
    .map_err(|e| format!("cloning a mount of the helper binary: {e}"))?;
    mounts::set_readonly(tree.as_fd())
        .map_err(|e| format!("making the helper's mount read-only: {e}"))?;
    Ok(tree)
}

/// [`readonly_self`] in a user namespace, after the mount namespace was
/// unshared: `/proc/self/exe` names the binary on the mount of the host's
/// namespace, which can no longer be cloned, so the binary is opened by its
/// path in our copy of that mount, and must be the same file (device and
/// inode) as the one running.
fn readonly_self_by_path() -> Result<OwnedFd, String> {
    use rustix::mount::{open_tree, OpenTreeFlags};
    let path = std::fs::read_link("/proc/self/exe").map_err(|e| format!("/proc/self/exe: {e}"))?;
    let running = rustix::fs::stat("/proc/self/exe").map_err(|e| format!("/proc/self/exe: {e}"))?;
    let exe = rustix::fs::open(
        &path,
        OFlags::PATH | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )
    .map_err(|e| format!("{}: {e}", path.display()))?;
    let st = rustix::fs::fstat(&exe).map_err(|e| format!("{}: {e}", path.display()))?;
    if (st.st_dev, st.st_ino) != (running.st_dev, running.st_ino) {
        return Err(format!(
            "{} was replaced while kiln runs; run the command again",
            path.display()
        ));
    }
    let tree = open_tree(
        &exe,
        "",
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_EMPTY_PATH,
    )
    .map_err(|e| {
        format!(
            "cloning a mount of the helper binary {}: {e}",
            path.display()
        )
    })?;
    mounts::set_readonly(tree.as_fd())
        .map_err(|e| format!("making the helper's mount read-only: {e}"))?;
    Ok(tree)
}

/// PID 1, second stage (after the read-only re-exec): `args[0]` is the fd
/// of the job.
fn init_main(args: &[OsString]) -> i32 {
    let _ = rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable);
    let _ = rustix::thread::set_name(c"kiln-init");
    let job: Result<Job, String> = (|| {
        let fd: RawFd = args
            .first()
            .and_then(|a| a.to_str())
            .and_then(|a| a.parse().ok())
            .ok_or("no job fd")?;
        // SAFETY: the fd was inherited for us by the first stage.
        let mut f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let mut buf = Vec::new();
        std::io::Seek::rewind(&mut f).map_err(|e| e.to_string())?;
        f.read_to_end(&mut buf).map_err(|e| e.to_string())?;
        serde_json::from_slice(&buf).map_err(|e| e.to_string())
    })();
    let job = match job {
        Ok(j) => j,
        Err(message) => {
            send(
                report(),
                &Msg::Error {
                    message: format!("init: {message}"),
                    code: None,
                },
            );
            return 125;
        }
    };
    // Exec cleared close-on-exec fds only; put the flags back.
    let _ = rustix::io::fcntl_setfd(report(), rustix::io::FdFlags::CLOEXEC);
    if job.tty {
        // SAFETY: fd 4 is the console socket, inherited.
        let c = unsafe { BorrowedFd::borrow_raw(CONSOLE_FD) };
        let _ = rustix::io::fcntl_setfd(c, rustix::io::FdFlags::CLOEXEC);
    }
    let layout = mounts::layout_of(&job);
    match setup_and_exec(&job, &layout) {
        Ok(child) => {
            // Nothing more to say; close our copy of the report channel so
            // the reader sees EOF once H exits.
            close_fds_from(REPORT_FD as u32);
            supervise(child, true)
        }
        Err((message, _)) if mounts::overlay_was_refused() => {
            send(report(), &Msg::OverlayRefused { message });
            125
        }
        Err((message, code)) => {
            send(report(), &Msg::Error { message, code });
            code.unwrap_or(125)
        }
    }
}

pub(crate) struct Process {
    pub argv: Vec<CString>,
    pub env: Vec<CString>,
    pub path: String,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    /// The pty slave, for stdin/stdout/stderr and as controlling terminal.
    pub console: Option<OwnedFd>,
    /// The syscall filter, built before the fork.
    pub seccomp: Option<Vec<libc::sock_filter>>,
}

fn setup_and_exec(job: &Job, layout: &Layout) -> Result<Pid, (String, Option<i32>)> {
    let setup = |e: String| (e, None);
    rustix::process::umask(Mode::empty());
    mounts::setup_rootfs(job, layout).map_err(setup)?;
    rustix::system::sethostname(job.hostname.as_bytes())
        .map_err(|e| setup(format!("sethostname {:?}: {e}", job.hostname)))?;

    let passwd = std::fs::read_to_string("/etc/passwd").ok();
    let group = std::fs::read_to_string("/etc/group").ok();
    let user = resolve_user(
        job.spec.user.as_deref(),
        passwd.as_deref(),
        group.as_deref(),
    )
    .map_err(|e| setup(e.to_string()))?;

    let (env, path) = process_env(&job.spec.env, &user.home);

    // From here on files are created with Docker's umask.
    rustix::process::umask(Mode::from_raw_mode(0o022));
    std::fs::create_dir_all(&job.spec.cwd)
        .map_err(|e| setup(format!("creating working directory {}: {e}", job.spec.cwd)))?;

    let console = if job.tty {
        // SAFETY: fd 4 is the console socket (kept open by container_main).
        let sock = unsafe { BorrowedFd::borrow_raw(CONSOLE_FD) };
        let slave = crate::tty::make_console(sock, user.uid).map_err(setup)?;
        // SAFETY: fd 4 is not owned by any OwnedFd in this process.
        unsafe { libc::close(CONSOLE_FD) };
        Some(slave)
    } else {
        None
    };
    let cstr = |s: &str| CString::new(s).map_err(|_| setup(format!("NUL in {s:?}")));
    let proc_ = Process {
        argv: job
            .spec
            .args
            .iter()
            .map(|a| cstr(a))
            .collect::<Result<_, _>>()?,
        env: env.iter().map(|a| cstr(a)).collect::<Result<_, _>>()?,
        path,
        cwd: job.spec.cwd.clone(),
        uid: user.uid,
        gid: user.gid,
        groups: user.groups,
        console,
        seccomp: if job.spec.seccomp_unconfined {
            None
        } else {
            Some(crate::seccomp::program().map_err(setup)?)
        },
    };

    // P reports an exec failure on this pipe; EOF means execve succeeded.
    let (sync_r, sync_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| setup(format!("pipe: {e}")))?;
    // SAFETY: single-threaded process.
    match unsafe { fork() }.map_err(|e| setup(format!("fork: {e}")))? {
        ForkResult::Child => {
            drop(sync_r);
            let (message, code) = exec_process(&proc_);
            let msg = Msg::Error {
                message,
                code: Some(code),
            };
            send(sync_w.as_fd(), &msg);
            // SAFETY: _exit in a forked child, nothing to unwind.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop(sync_w);
            let mut reader = MsgReader::new(std::fs::File::from(sync_r));
            match reader.next() {
                Ok(None) => {
                    send(report(), &Msg::Running);
                    Ok(child)
                }
                Ok(Some(Msg::Error { message, code })) => {
                    let _ = waitpid(child, None);
                    Err((message, code))
                }
                Ok(Some(other)) => Err(setup(format!("unexpected message {other:?}"))),
                Err(e) => Err(setup(e)),
            }
        }
    }
}

use rustix::fs::{Mode, OFlags};

/// Docker's default capabilities.
const DEFAULT_CAPS: [caps::Capability; 14] = [
    caps::Capability::CAP_CHOWN,
    caps::Capability::CAP_DAC_OVERRIDE,
    caps::Capability::CAP_FSETID,
    caps::Capability::CAP_FOWNER,
    caps::Capability::CAP_MKNOD,
    caps::Capability::CAP_NET_RAW,
    caps::Capability::CAP_SETGID,
    caps::Capability::CAP_SETUID,
    caps::Capability::CAP_SETFCAP,
    caps::Capability::CAP_SETPCAP,
    caps::Capability::CAP_NET_BIND_SERVICE,
    caps::Capability::CAP_SYS_CHROOT,
    caps::Capability::CAP_KILL,
    caps::Capability::CAP_AUDIT_WRITE,
];

/// In P: become the user's process. Returns only on failure, with the
/// message and exit code Docker would give.
pub(crate) fn exec_process(p: &Process) -> (String, i32) {
    let fail = |m: String| (m, 125);
    // Signals: default dispositions (Rust ignores SIGPIPE), nothing blocked.
    for sig in Signal::iterator() {
        if sig != Signal::SIGKILL && sig != Signal::SIGSTOP {
            // SAFETY: resetting to SIG_DFL installs no handler.
            let _ = unsafe { nix::sys::signal::signal(sig, nix::sys::signal::SigHandler::SigDfl) };
        }
    }
    if let Err(e) = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None) {
        return fail(format!("sigprocmask: {e}"));
    }
    if let Err(e) = rustix::process::setsid() {
        return fail(format!("setsid: {e}"));
    }
    // While CAP_SYS_ADMIN is still held: no no_new_privs needed, so setuid
    // programs in the image keep working, as under Docker.
    if let Some(prog) = &p.seccomp {
        if let Err(e) = crate::seccomp::install(prog) {
            return fail(e);
        }
    }
    if let Some(slave) = &p.console {
        for fd in 0..3 {
            // SAFETY: dup2 of an fd we own onto the standard fds.
            if unsafe { libc::dup2(slave.as_raw_fd(), fd) } < 0 {
                return fail(format!(
                    "dup2 of the pty: {}",
                    std::io::Error::last_os_error()
                ));
            }
        }
        // SAFETY: TIOCSCTTY on our stdin, which is now the terminal.
        if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } < 0 {
            return fail(format!(
                "setting the controlling terminal: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    let keep: caps::CapsHashSet = DEFAULT_CAPS.iter().copied().collect();
    for c in caps::all() {
        if !keep.contains(&c) {
            if let Err(e) = caps::drop(None, caps::CapSet::Bounding, c) {
                // Capabilities newer than the kernel are not in the bounding set.
                if caps::has_cap(None, caps::CapSet::Bounding, c).unwrap_or(false) {
                    return fail(format!("dropping {c} from the bounding set: {e}"));
                }
            }
        }
    }
    if let Err(e) = rustix::thread::set_keep_capabilities(true) {
        return fail(format!("PR_SET_KEEPCAPS: {e}"));
    }
    let groups: Vec<nix::unistd::Gid> = p
        .groups
        .iter()
        .map(|g| nix::unistd::Gid::from_raw(*g))
        .collect();
    if let Err(e) = nix::unistd::setgroups(&groups) {
        // A single-ID user namespace (rootless without a subordinate range)
        // denies setgroups for good; the process keeps the groups it has.
        if !(e == nix::errno::Errno::EPERM && crate::userns::setgroups_denied()) {
            return fail(format!("setgroups: {e}"));
        }
    }
    let gid = nix::unistd::Gid::from_raw(p.gid);
    let uid = nix::unistd::Uid::from_raw(p.uid);
    if let Err(e) = nix::unistd::setresgid(gid, gid, gid) {
        return fail(format!("setresgid {}: {e}", p.gid));
    }
    if let Err(e) = nix::unistd::setresuid(uid, uid, uid) {
        return fail(format!("setresuid {}: {e}", p.uid));
    }
    let _ = rustix::thread::set_keep_capabilities(false);
    for (set, caps_) in [
        (caps::CapSet::Effective, keep.clone()),
        (caps::CapSet::Permitted, keep.clone()),
        (caps::CapSet::Inheritable, caps::CapsHashSet::new()),
    ] {
        if let Err(e) = caps::set(None, set, &caps_) {
            return fail(format!("setting {set:?} capabilities: {e}"));
        }
    }
    rustix::process::umask(Mode::from_raw_mode(0o022));

    // After pivot_root and with only 0-3 open, /proc/self/fd/N names nothing
    // of the host; still, refuse a cwd that is not under our root.
    if let Err(e) = rustix::process::chdir(p.cwd.as_str()) {
        return (
            format!("chdir to the working directory {}: {e}", p.cwd),
            126,
        );
    }
    match std::env::current_dir() {
        Ok(d) if d.is_absolute() => {}
        _ => {
            return (
                format!("cwd {:?} is outside the container root", p.cwd),
                126,
            )
        }
    }

    let name = match p.argv[0].to_str() {
        Ok(n) => n.to_string(),
        Err(_) => return fail("argv[0] is not UTF-8".into()),
    };
    let prog = match lookup(&name, &p.path) {
        Ok(prog) => prog,
        Err(e) => return e,
    };
    cloexec_fds_from(REPORT_FD as u32);
    let e = nix::unistd::execve(&prog, &p.argv, &p.env).err();
    let e = e.map(|e| e as i32).unwrap_or(0);
    exec_error(&name, std::io::Error::from_raw_os_error(e))
}

fn exec_error(name: &str, e: std::io::Error) -> (String, i32) {
    match e.raw_os_error() {
        Some(libc::ENOENT) => (
            format!("exec: \"{name}\": stat {name}: no such file or directory"),
            127,
        ),
        Some(libc::EACCES) | Some(libc::EPERM) => {
            (format!("exec: \"{name}\": permission denied"), 126)
        }
        _ => (format!("exec: \"{name}\": {e}"), 126),
    }
}

/// The environment a container process starts with, as Docker gives it:
/// the spec's variables (the last of each name), `PATH` and `HOME` when
/// unset; and the `PATH` that finds the command.
pub(crate) fn process_env(spec_env: &[String], home: &str) -> (Vec<String>, String) {
    let mut env = dedup_env(spec_env);
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(format!("PATH={DEFAULT_PATH}"));
    }
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={home}"));
    }
    let path = env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH)
        .to_string();
    (env, path)
}

/// Later values of a variable replace earlier ones in place (Docker's
/// `ReplaceOrAppendEnvValues`), so the process never sees a key twice.
pub(crate) fn dedup_env(env: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(env.len());
    for e in env {
        let key = e.split_once('=').map_or(e.as_str(), |(k, _)| k);
        match out
            .iter_mut()
            .find(|o| o.split_once('=').map_or(o.as_str(), |(k, _)| k) == key)
        {
            Some(slot) => *slot = e.clone(),
            None => out.push(e.clone()),
        }
    }
    out
}

/// Go's exec.LookPath inside the container (we are chrooted by now).
fn lookup(name: &str, path: &str) -> Result<CString, (String, i32)> {
    let to_c = |s: &str| CString::new(s).map_err(|_| (format!("bad path {s:?}"), 127));
    if name.contains('/') {
        return to_c(name);
    }
    for dir in path.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let cand = format!("{dir}/{name}");
        if let Ok(md) = std::fs::metadata(&cand) {
            use std::os::unix::fs::PermissionsExt;
            if md.is_file() && md.permissions().mode() & 0o111 != 0 {
                return to_c(&cand);
            }
        }
    }
    Err((
        format!("exec: \"{name}\": executable file not found in $PATH"),
        127,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_rejects_bad_specs() {
        let ok = ContainerSpec {
            args: vec!["true".into()],
            cwd: "/".into(),
            ..Default::default()
        };
        assert!(validate(&ok).is_ok());
        let mut s = ok.clone();
        s.args.clear();
        assert!(validate(&s).unwrap_err().to_string().contains("no command"));
        let mut s = ok.clone();
        s.cwd = "rel".into();
        assert!(validate(&s)
            .unwrap_err()
            .to_string()
            .contains("not absolute"));
        let mut s = ok.clone();
        s.rootfs.lowers.push(PathBuf::from("/nonexistent/kiln"));
        assert!(validate(&s)
            .unwrap_err()
            .to_string()
            .contains("not a directory"));
    }

    #[test]
    fn stale_scratch_dirs_of_dead_processes_are_swept() {
        let t = tempfile::tempdir().unwrap();
        // Above the kernel's PID limit: certainly not running.
        let dead = t.path().join("kiln-run-4194999-abc");
        let live = t
            .path()
            .join(format!("kiln-run-{}-def", std::process::id()));
        let other = t.path().join("unrelated");
        for d in [&dead, &live, &other] {
            std::fs::create_dir_all(d.join("upper")).unwrap();
        }
        sweep_stale_scratch_now(t.path());
        assert!(!dead.exists());
        assert!(live.exists() && other.exists());
    }

    #[test]
    fn env_later_values_win_in_place() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            dedup_env(&v(&["A=1", "B=2", "A=3", "C", "C=4"])),
            v(&["A=3", "B=2", "C=4"])
        );
    }

    #[test]
    fn exec_errors_match_docker() {
        assert_eq!(
            lookup("nope-kiln", "/nonexistent").unwrap_err(),
            (
                "exec: \"nope-kiln\": executable file not found in $PATH".to_string(),
                127
            )
        );
        assert_eq!(
            exec_error("/x", std::io::Error::from_raw_os_error(libc::EACCES)).1,
            126
        );
        assert_eq!(
            exec_error("/x", std::io::Error::from_raw_os_error(libc::ENOENT)).1,
            127
        );
    }
}
