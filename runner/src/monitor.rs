//! The monitor of a detached container: one process per container (kiln
//! has no daemon) that starts it, logs its output, serves its ports, runs
//! its HEALTHCHECK, records its exit and restarts it by its `--restart`
//! policy (docker's restart manager: [`crate::restart`]).
//!
//! The container dies with its monitor (the helper's parent-death signal),
//! so a killed monitor leaves an exited container that nothing restarts,
//! and nothing starts containers after a reboot.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::RunError;
use crate::health::Prober;
use crate::helper::{self, REPORT_FD};
use crate::logs::LogEntry;
use crate::ports::{self, Bound, ProxyHandle};
use crate::proto::{send, Job, Msg, MsgReader};
use crate::ps::now;
use crate::restart::RestartManager;
use crate::state::{
    drop_cgroups, proc_start_time, read_json, save_state, start_prober, stop_requested, Config,
    Phase, State,
};
use crate::{RunnerConfig, Stdio};

/// Entry of the monitor helper: argv = [container dir]; fd 3 = the caller.
pub(crate) fn monitor_main(args: &[std::ffi::OsString]) -> i32 {
    let dir = match args.first() {
        Some(d) => PathBuf::from(d),
        None => {
            eprintln!("kiln-runner monitor: no container dir");
            return 125;
        }
    };
    // Detach: own session, and a grandchild so the caller can reap us now.
    let _ = rustix::process::setsid();
    // SAFETY: single-threaded (fresh exec), so the child may run Rust code.
    match unsafe { libc::fork() } {
        0 => {}
        -1 => {
            let e = std::io::Error::last_os_error();
            eprintln!("kiln-runner monitor: fork: {e}");
            return 125;
        }
        _ => return 0,
    }
    match monitor(&dir) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("kiln-runner monitor: {e}");
            1
        }
    }
}

fn caller() -> BorrowedFd<'static> {
    // SAFETY: fd 3 is the socket to the caller, open until we close it.
    unsafe { BorrowedFd::borrow_raw(REPORT_FD) }
}

/// How one start of the container ended.
enum Run {
    /// It ran (or, after the first start, failed to start) and exited.
    /// `oom_kills`: the memory cgroup's count before this start.
    Exited {
        code: i32,
        ran: Duration,
        oom_kills: u64,
    },
    /// The first start failed: the caller is told once all is cleaned up.
    Failed { message: String, code: Option<i32> },
}

struct Monitor<'a> {
    dir: &'a Path,
    cfg: Config,
    out_w: OwnedFd,
    err_w: OwnedFd,
    /// The published ports, bound, for the next start.
    ports: Option<Vec<Bound>>,
    caller_open: bool,
    /// The container's root is a copy (the native snapshotter, or overlayfs
    /// was refused at the first start).
    copy: bool,
}

fn monitor(dir: &Path) -> Result<(), RunError> {
    let _ = rustix::io::fcntl_setfd(caller(), rustix::io::FdFlags::CLOEXEC);
    // Do not pin the caller's working directory for the container's life.
    let _ = std::env::set_current_dir("/");
    let cfg: Config = read_json(&dir.join("config.json"))?;
    let bound = match ports::bind_all(&cfg.opts.ports) {
        Ok(b) => b,
        Err(e) => {
            let _ = fs::remove_dir_all(dir);
            match e {
                RunError::PortInUse { ip, port } => send(caller(), &Msg::PortInUse { ip, port }),
                other => send(
                    caller(),
                    &Msg::Error {
                        message: other.to_string(),
                        code: None,
                    },
                ),
            }
            return Ok(());
        }
    };
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("container.log"))
        .map_err(|e| RunError::io("creating container.log", e))?;
    let pipe = || {
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| RunError::io("pipe", e.into()))
    };
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let log = Arc::new(Mutex::new(log));
    // One pair of pipes for every start: the log is one stream, as docker's.
    let writers = [(out_r, "stdout"), (err_r, "stderr")].map(|(fd, stream)| {
        let log = log.clone();
        std::thread::spawn(move || log_stream(fd, stream, &log))
    });
    let mut restarts = RestartManager::new(cfg.opts.restart);
    let mut m = Monitor {
        dir,
        cfg,
        out_w,
        err_w,
        ports: Some(bound),
        caller_open: true,
        copy: false,
    };
    m.copy = m.cfg.snapshotter.copies();
    let result = loop {
        let (code, ran, before) = match m.run_once(restarts.count) {
            Err(e) => break Err(e),
            Ok(Run::Failed { message, code }) => break Ok(Some((message, code))),
            Ok(Run::Exited {
                code,
                ran,
                oom_kills,
            }) => (code, ran, oom_kills),
        };
        let oom = oom_kills(&m.cfg) > before;
        let Some(delay) = restarts.should_restart(code, stop_requested(dir), ran) else {
            break record_exit(dir, &m.cfg, code, oom).map(|()| None);
        };
        if let Err(e) = record_restarting(dir, code, restarts.count, oom) {
            break Err(e);
        }
        if !m.backoff(delay) {
            break record_exit(dir, &m.cfg, code, oom).map(|()| None);
        }
        if let Err(e) = m.rebind() {
            eprintln!("kiln-runner monitor: not restarting: {e}");
            break record_exit(dir, &m.cfg, code, oom).map(|()| None);
        }
    };
    let cfg = m.cfg.clone();
    // The log writers end when the last write ends close.
    drop(m);
    for w in writers {
        let _ = w.join();
    }
    match result? {
        None => Ok(()),
        Some((message, code)) => {
            // Relayed after cleanup, so a retry with the same name works as
            // soon as run_detached returns.
            drop_cgroups(&cfg.cgroups);
            let _ = fs::remove_dir_all(dir);
            let code = code.filter(|c| *c == 126 || *c == 127);
            send(caller(), &Msg::Error { message, code });
            Ok(())
        }
    }
}

impl Monitor<'_> {
    /// Start the container once and wait for its exit. The helper is
    /// spawned from this (main) thread: its parent-death signal follows
    /// this thread, which lives as long as the monitor.
    fn run_once(&mut self, restart_count: u32) -> Result<Run, RunError> {
        let cfg = &self.cfg;
        let oom_before = oom_kills(cfg);
        let me = std::process::id() as i32;
        let mut job = Job {
            spec: cfg.spec.clone(),
            scratch: self.dir.join("scratch"),
            hostname: helper::default_hostname(&cfg.spec, cfg.id[..12].to_string()),
            tty: false,
            supervisor: me,
            legacy_overlay: helper::legacy_overlay_requested(),
            net: crate::net::NetPlan {
                stack: cfg.stack.clone(),
                join: None,
            },
            cgroups: cfg.cgroups.dirs(),
            copied_root: None,
        };
        if self.copy {
            let work = crate::mounts::layout_of(&job).work;
            let targets = crate::mounts::wanted_targets(&job).map_err(RunError::Setup)?;
            let root = crate::snapshot::prepare_kept(&cfg.spec.rootfs.lowers, &work, &targets)
                .map_err(RunError::Setup)?;
            job.copied_root = Some(root);
        }
        let dup = |fd: &OwnedFd| {
            rustix::io::fcntl_dupfd_cloexec(fd.as_fd(), 3)
                .map_err(|e| RunError::io("dup", e.into()))
        };
        let stdio = Stdio {
            stdin: None,
            stdout: Some(dup(&self.out_w)?),
            stderr: Some(dup(&self.err_w)?),
        };
        let (mut child, mut sock) =
            helper::spawn_helper(&RunnerConfig::default(), "container", &[], stdio, None)?;
        let payload = serde_json::to_vec(&job).map_err(|e| RunError::Helper(e.to_string()))?;
        sock.write_all(&payload)
            .and_then(|()| sock.shutdown(std::net::Shutdown::Write))
            .map_err(|e| RunError::io("sending the job", e))?;
        let mut reader = MsgReader::new(&sock);
        let (mut code, mut pid, mut failed, mut message) = (None, 0, false, String::new());
        let mut refused = None;
        let mut started = Instant::now();
        let mut proxy: Option<ProxyHandle> = None;
        let mut prober: Option<Prober> = None;
        loop {
            match reader.next() {
                Ok(Some(Msg::Pid(p))) => pid = p,
                Ok(Some(Msg::Running)) => {
                    started = Instant::now();
                    let st = State {
                        phase: Phase::Running,
                        supervisor_pid: me,
                        supervisor_start: proc_start_time(me).unwrap_or(0),
                        pid,
                        pid_start: proc_start_time(pid).unwrap_or(0),
                        started: now(),
                        exit_code: None,
                        finished: 0,
                        oom_killed: false,
                        restart_count,
                    };
                    save_state(self.dir, &st)?;
                    if stop_requested(self.dir) {
                        // `kiln stop` came while this start was under way.
                        let _ = rustix::process::kill_process(
                            rustix::process::Pid::from_raw(pid).expect("the container's pid"),
                            rustix::process::Signal::KILL,
                        );
                    }
                    proxy = self.serve_ports(pid)?;
                    prober = start_prober(self.dir, &self.cfg, (pid, st.pid_start));
                    if self.caller_open {
                        send(caller(), &Msg::Ready);
                        // SAFETY: closing our end of the caller's socket;
                        // nothing else uses fd 3 in this process.
                        unsafe { libc::close(REPORT_FD) };
                        self.caller_open = false;
                    }
                }
                Ok(Some(Msg::Error {
                    message: m,
                    code: c,
                })) => {
                    failed = true;
                    if self.caller_open {
                        code = code.or(c);
                        message = m;
                    } else {
                        eprintln!("kiln-runner monitor: restart failed: {m}");
                    }
                }
                Ok(Some(Msg::OverlayRefused { message: m })) => {
                    failed = true;
                    refused = Some(m);
                }
                Ok(Some(Msg::Exited(c))) => {
                    code = if failed { code.or(Some(c)) } else { Some(c) };
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        let status = child.wait();
        if let Some(p) = prober {
            p.stop();
        }
        if let Some(p) = proxy {
            p.shutdown();
        }
        if let Some(reason) = refused {
            if self.cfg.snapshotter == crate::Snapshotter::Auto && !self.copy {
                eprintln!(
                    "kiln-runner monitor: overlayfs was refused ({reason}); the container runs \
                     on a copied root"
                );
                self.copy = true;
                return self.run_once(restart_count);
            }
            message = crate::snapshot::overlay_only_error(&reason);
        }
        if failed && self.caller_open {
            return Ok(Run::Failed { message, code });
        }
        let code = code.unwrap_or(match status {
            Ok(st) => st.code().unwrap_or(255),
            Err(_) => 255,
        });
        Ok(Run::Exited {
            code,
            ran: started.elapsed(),
            oom_kills: oom_before,
        })
    }

    fn serve_ports(&mut self, pid: i32) -> Result<Option<ProxyHandle>, RunError> {
        match self.ports.take() {
            Some(b) if !b.is_empty() => {
                let ns = File::open(format!("/proc/{pid}/ns/net"))
                    .map_err(|e| RunError::io("opening the container's netns", e))?;
                Ok(Some(ports::serve(b, ns.into())))
            }
            _ => Ok(None),
        }
    }

    /// Wait `delay` before a restart; false if `kiln stop` came meanwhile.
    fn backoff(&self, delay: Duration) -> bool {
        let end = Instant::now() + delay;
        loop {
            if stop_requested(self.dir) {
                return false;
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
    }

    /// Bind the published ports again for the next start (the proxy of
    /// the last one may take a moment to let go of them).
    fn rebind(&mut self) -> Result<(), RunError> {
        if self.cfg.opts.ports.is_empty() {
            return Ok(());
        }
        let mut tries = 0;
        loop {
            match ports::bind_all(&self.cfg.opts.ports) {
                Ok(b) => {
                    self.ports = Some(b);
                    return Ok(());
                }
                Err(e) if tries >= 40 => return Err(e),
                Err(_) => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }
}

/// Between an exit and the restart: docker's `Restarting (CODE)`.
fn oom_kills(cfg: &Config) -> u64 {
    crate::cgroups::oom_kills(&crate::cgroups::HostFs, &cfg.cgroups)
}

fn record_restarting(dir: &Path, code: i32, count: u32, oom: bool) -> Result<(), RunError> {
    let mut st: State = read_json(&dir.join("state.json")).unwrap_or_else(|_| State::created());
    st.phase = Phase::Restarting;
    st.pid = 0;
    st.pid_start = 0;
    st.exit_code = Some(code);
    st.finished = now();
    st.restart_count = count;
    st.oom_killed = oom;
    save_state(dir, &st)
}

/// After the container is gone for good: the exit in state.json (with
/// whether the last run was OOM-killed), or nothing with `--rm`; its
/// cgroups go.
fn record_exit(dir: &Path, cfg: &Config, code: i32, oom_killed: bool) -> Result<(), RunError> {
    drop_cgroups(&cfg.cgroups);
    if cfg.opts.auto_remove {
        let _ = fs::remove_dir_all(dir);
        run_on_removed(&cfg.opts.on_removed);
        return Ok(());
    }
    let mut st: State = read_json(&dir.join("state.json")).unwrap_or_else(|_| State::created());
    st.phase = Phase::Exited;
    st.exit_code = Some(code);
    st.finished = now();
    st.oom_killed = oom_killed;
    save_state(dir, &st)
}

/// The caller's clean-up for an auto-removed container; its failure is
/// the caller's to report (its output goes to the monitor's log).
fn run_on_removed(argv: &[String]) {
    let Some((prog, args)) = argv.split_first() else {
        return;
    };
    let r = std::process::Command::new(prog)
        .args(args)
        .stdin(std::process::Stdio::null())
        .status();
    if let Err(e) = r {
        eprintln!("kiln monitor: running {prog} after removal: {e}");
    }
}

/// Copy one stream into the json-lines log, a record per line (a trailing
/// partial line is written at EOF, long lines are split at 16 KiB).
fn log_stream(fd: OwnedFd, stream: &str, log: &Mutex<File>) {
    let mut r = BufReader::new(File::from(fd));
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = match r.by_ref().take(16 * 1024).read_until(b'\n', &mut line) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => 0,
        };
        if n == 0 {
            return;
        }
        let entry = LogEntry {
            log: String::from_utf8_lossy(&line).into_owned(),
            stream: stream.to_string(),
            time: humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string(),
        };
        if let (Ok(mut j), Ok(mut f)) = (serde_json::to_vec(&entry), log.lock()) {
            j.push(b'\n');
            let _ = f.write_all(&j);
        }
    }
}
