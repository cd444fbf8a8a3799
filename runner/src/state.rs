//! Named containers with state on disk: detached (`run -d`, run by the
//! monitor in [`crate::monitor`]) and foreground runs, `ps`, `stop`, `rm`,
//! `logs`.
//!
//! ```text
//! <state_dir>/.lock                flock: name reservation
//! <state_dir>/<id>/config.json     written once at creation
//! <state_dir>/<id>/state.json      status, pids + start times, exit code (temp + rename)
//! <state_dir>/<id>/container.log   json-lines {"log","stream","time"} like Docker's json-file
//! <state_dir>/<id>/monitor.log     the monitor's own diagnostics
//! <state_dir>/<id>/health.json     the HEALTHCHECK's state (docker's State.Health)
//! <state_dir>/<id>/stopped         `kiln stop`/`rm -f` came: no restart by the policy
//! <state_dir>/<id>/scratch/        stubs, generated /etc files, scratch upper
//! ```
//! Liveness is "the supervising process (monitor, or the helper of a
//! foreground run) is alive *and* has the start time we recorded", so a
//! reused PID is never mistaken for the container.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::cgroups::{self, Placed, Placement, Resources};
use crate::error::RunError;
use crate::health::{HealthConfig, HealthState};
use crate::helper::{self, random_hex, Event};
use crate::logs::LogOptions;
use crate::names;
use crate::ports::{self, PortMapping};
use crate::proto::{Msg, MsgReader};
use crate::ps::now;
use crate::restart::RestartPolicy;
use crate::{ContainerSpec, RunnerConfig, Stdio};

/// How `run` presents the container (ps columns, stop signal, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunOptions {
    /// `--name`; None picks a random `adjective_noun`.
    pub name: Option<String>,
    /// Shown in ps.
    pub image: String,
    /// Shown in ps.
    pub command: String,
    /// Published ports (private or none network).
    pub ports: Vec<PortMapping>,
    /// The image's STOPSIGNAL ("SIGTERM", "TERM", "15"); default SIGTERM.
    pub stop_signal: Option<String>,
    /// `--rm`: remove the container when it exits.
    pub auto_remove: bool,
    /// `-t`: a pseudo-terminal (foreground only, when stdin is a terminal).
    pub tty: bool,
    /// `-i`: keep stdin (foreground only; detached stdin is /dev/null).
    pub interactive: bool,
    /// `--memory`, `--cpus`, ...: checked (dockerd's rules) and written
    /// into the container's cgroups when it is created.
    #[serde(default)]
    pub resources: Resources,
    /// `--restart`: carried out by the monitor (detached containers).
    #[serde(default)]
    pub restart: RestartPolicy,
    /// The HEALTHCHECK to run (image's under `--health-*`); None: none.
    #[serde(default)]
    pub healthcheck: Option<HealthConfig>,
    /// With `auto_remove`, a command (absolute program, then arguments)
    /// the monitor runs once a detached container is gone: how the caller
    /// removes what it made for it (`run -d --rm`'s anonymous volumes).
    #[serde(default)]
    pub on_removed: Vec<String>,
}

/// What `ps` knows about a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerStatus {
    Created,
    /// `pid`: the container's PID 1 as seen from the host.
    Running {
        pid: i32,
    },
    Exited {
        code: i32,
        finished: i64,
    },
    /// Exited with `code` at `finished`; the monitor starts it again after
    /// its backoff (docker's `Restarting (1) 2 seconds ago`).
    Restarting {
        code: i32,
        finished: i64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    /// 64 hex digits.
    pub id: String,
    pub name: String,
    pub image: String,
    pub command: String,
    /// Unix seconds.
    pub created: i64,
    /// Unix seconds when the process started (== created before that).
    pub started: i64,
    pub status: ContainerStatus,
    pub ports: Vec<PortMapping>,
    /// The kernel's OOM killer killed a process of the container.
    pub oom_killed: bool,
    /// The limits as applied (docker's defaults filled in).
    pub resources: Resources,
    /// The cgroups the container got, one per hierarchy.
    pub cgroups: Vec<Placed>,
    /// What runs, as given to `run`.
    pub spec: ContainerSpec,
    /// `--rm`.
    pub auto_remove: bool,
    /// `--restart`.
    pub restart_policy: RestartPolicy,
    /// Restarts by the policy so far (docker's `RestartCount`).
    pub restart_count: u32,
    /// The health check the container runs, and its state (docker's
    /// `State.Health`) once it has one.
    pub healthcheck: Option<HealthConfig>,
    pub health: Option<HealthState>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Config {
    pub id: String,
    pub name: String,
    pub created: i64,
    pub opts: RunOptions,
    pub spec: ContainerSpec,
    pub detached: bool,
    /// The user-mode stack of a private network, found by the caller (the
    /// monitor has no PATH).
    #[serde(default)]
    pub stack: Option<crate::net::Stack>,
    /// The cgroups made for `opts.resources` (removed with the container).
    #[serde(default)]
    pub cgroups: Placement,
    /// How the monitor makes the container's root (the caller's setting:
    /// the monitor runs with a cleared environment).
    #[serde(default)]
    pub snapshotter: crate::Snapshotter,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Phase {
    Created,
    Running,
    /// Between an exit and the restart the policy asked for.
    Restarting,
    Exited,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct State {
    pub phase: Phase,
    /// The process whose life is the container's (monitor or helper).
    pub supervisor_pid: i32,
    pub supervisor_start: u64,
    /// The container's PID 1.
    pub pid: i32,
    pub pid_start: u64,
    pub started: i64,
    pub exit_code: Option<i32>,
    pub finished: i64,
    #[serde(default)]
    pub oom_killed: bool,
    #[serde(default)]
    pub restart_count: u32,
}

impl State {
    pub(crate) fn created() -> State {
        State {
            phase: Phase::Created,
            supervisor_pid: 0,
            supervisor_start: 0,
            pid: 0,
            pid_start: 0,
            started: 0,
            exit_code: None,
            finished: 0,
            oom_killed: false,
            restart_count: 0,
        }
    }
}

/// Start time (clock ticks since boot) of a process, from /proc/<pid>/stat.
pub(crate) fn proc_start_time(pid: i32) -> Option<u64> {
    if pid <= 0 {
        return None;
    }
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may contain spaces and ')': split after the last ')'.
    let rest = &s[s.rfind(')')? + 1..];
    // Field 3 (state) is rest's first; starttime is field 22.
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn alive(pid: i32, start: u64) -> bool {
    start != 0 && proc_start_time(pid) == Some(start)
}

/// Write temp + rename: readers see the old or the new file, never a torn
/// one. Not fsync'd: this is runtime state, re-derived from the liveness
/// check after a crash, and an fsync per state change would dominate the
/// cost of a short `run` on a busy disk.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<(), RunError> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let r = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        fs::rename(&tmp, path)
    })();
    r.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        RunError::io(format!("writing {}", path.display()), e)
    })
}

pub(crate) fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, RunError> {
    let data =
        fs::read(path).map_err(|e| RunError::io(format!("reading {}", path.display()), e))?;
    serde_json::from_slice(&data).map_err(|e| RunError::State {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// A signal number from "SIGTERM", "TERM", "term" or "15" (STOPSIGNAL forms).
pub fn parse_signal(s: &str) -> Result<i32, RunError> {
    let bad = || RunError::BadSignal(s.to_string());
    if let Ok(n) = s.parse::<i32>() {
        return SIGNALS
            .iter()
            .find(|(_, sig)| *sig == n)
            .map(|(_, sig)| *sig)
            .ok_or_else(bad);
    }
    let up = s.to_ascii_uppercase();
    let name = up.strip_prefix("SIG").unwrap_or(&up);
    SIGNALS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, sig)| *sig)
        .ok_or_else(bad)
}

/// Linux's standard signals by name (without `SIG`), as `docker kill -s`
/// and `STOPSIGNAL` name them.
const SIGNALS: [(&str, i32); 31] = [
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("ILL", libc::SIGILL),
    ("TRAP", libc::SIGTRAP),
    ("ABRT", libc::SIGABRT),
    ("BUS", libc::SIGBUS),
    ("FPE", libc::SIGFPE),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("SEGV", libc::SIGSEGV),
    ("USR2", libc::SIGUSR2),
    ("PIPE", libc::SIGPIPE),
    ("ALRM", libc::SIGALRM),
    ("TERM", libc::SIGTERM),
    ("STKFLT", libc::SIGSTKFLT),
    ("CHLD", libc::SIGCHLD),
    ("CONT", libc::SIGCONT),
    ("STOP", libc::SIGSTOP),
    ("TSTP", libc::SIGTSTP),
    ("TTIN", libc::SIGTTIN),
    ("TTOU", libc::SIGTTOU),
    ("URG", libc::SIGURG),
    ("XCPU", libc::SIGXCPU),
    ("XFSZ", libc::SIGXFSZ),
    ("VTALRM", libc::SIGVTALRM),
    ("PROF", libc::SIGPROF),
    ("WINCH", libc::SIGWINCH),
    ("IO", libc::SIGIO),
    ("PWR", libc::SIGPWR),
    ("SYS", libc::SIGSYS),
];

impl ContainerStatus {
    /// Running, or between an exit and its restart (what `ps` lists).
    pub fn is_up(&self) -> bool {
        matches!(
            self,
            ContainerStatus::Running { .. } | ContainerStatus::Restarting { .. }
        )
    }
}

/// `kiln stop` (or `rm -f`) asked the container to end: no restart.
pub(crate) fn stop_requested(dir: &Path) -> bool {
    dir.join("stopped").exists()
}

fn request_stop(dir: &Path) -> Result<(), RunError> {
    fs::write(dir.join("stopped"), b"")
        .map_err(|e| RunError::io(format!("marking {} stopped", dir.display()), e))
}

/// The containers under one state dir.
#[derive(Debug)]
pub struct Containers {
    cfg: RunnerConfig,
    dir: PathBuf,
}

struct Lock(#[allow(dead_code)] File);

impl Containers {
    /// `state_dir` is `<kiln root>/containers`; created if missing.
    pub fn open(cfg: RunnerConfig, state_dir: &Path) -> Result<Containers, RunError> {
        fs::create_dir_all(state_dir)
            .map_err(|e| RunError::io(format!("creating {}", state_dir.display()), e))?;
        let c = Containers {
            cfg,
            dir: state_dir.to_path_buf(),
        };
        c.sweep_half_created();
        Ok(c)
    }

    /// A container dir without config.json is one whose creation was
    /// interrupted (config.json is written right after mkdir, under the
    /// lock). Remove those older than a minute.
    fn sweep_half_created(&self) {
        let Ok(ids) = self.ids() else { return };
        for id in ids {
            let dir = self.dir.join(&id);
            if dir.join("config.json").exists() {
                continue;
            }
            let old = fs::metadata(&dir)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > Duration::from_secs(60));
            if old {
                let _ = fs::remove_dir_all(&dir);
            }
        }
    }

    fn lock(&self) -> Result<Lock, RunError> {
        let p = self.dir.join(".lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(|e| RunError::io(format!("opening {}", p.display()), e))?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| RunError::io(format!("locking {}", p.display()), e.into()))?;
        Ok(Lock(f))
    }

    fn ids(&self) -> Result<Vec<String>, RunError> {
        let mut out = Vec::new();
        let rd = fs::read_dir(&self.dir)
            .map_err(|e| RunError::io(format!("reading {}", self.dir.display()), e))?;
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()) {
                out.push(n);
            }
        }
        Ok(out)
    }

    fn config(&self, id: &str) -> Result<Config, RunError> {
        read_json(&self.dir.join(id).join("config.json"))
    }

    fn state(&self, id: &str) -> Result<State, RunError> {
        match read_json(&self.dir.join(id).join("state.json")) {
            Err(RunError::Io { cause, .. }) if cause.kind() == std::io::ErrorKind::NotFound => {
                Ok(State::created())
            }
            r => r,
        }
    }

    /// Reserve the name and write config.json + state.json under the lock.
    fn create(
        &self,
        spec: &ContainerSpec,
        opts: &RunOptions,
        detached: bool,
    ) -> Result<Config, RunError> {
        helper::validate(spec)?;
        if spec.network == crate::NetworkMode::Host && !opts.ports.is_empty() {
            return Err(RunError::InvalidSpec(
                "published ports need a private network: with --network host the container \
                 already uses the host's ports"
                    .into(),
            ));
        }
        if let Some(sig) = &opts.stop_signal {
            parse_signal(sig)?;
        }
        if !opts.restart.is_none() && (opts.auto_remove || !detached) {
            return Err(RunError::InvalidSpec(
                "a restart policy needs a detached container without auto-remove \
                 (its monitor restarts it)"
                    .into(),
            ));
        }
        let stack = match spec.network {
            crate::NetworkMode::Private => Some(crate::net::find_stack()?),
            _ => None,
        };
        if let Some(n) = &opts.name {
            if !names::valid_name(n) {
                return Err(RunError::InvalidName(n.clone()));
            }
        }
        let mut resources = opts.resources.clone();
        for w in resources.check(host_cpus()).map_err(RunError::Limits)? {
            eprintln!("WARNING: {w}");
        }
        let _lock = self.lock()?;
        let mut taken = Vec::new();
        for id in self.ids()? {
            if let Ok(c) = self.config(&id) {
                taken.push((c.name, id));
            }
        }
        let name = match &opts.name {
            Some(n) => {
                if let Some((_, id)) = taken.iter().find(|(t, _)| t == n) {
                    return Err(RunError::NameInUse {
                        name: n.clone(),
                        id: id.clone(),
                    });
                }
                n.clone()
            }
            None => {
                let mut tries = 0u32;
                loop {
                    let mut r = [0u8; 4];
                    getrandom::fill(&mut r).map_err(|e| RunError::Helper(e.to_string()))?;
                    let mut n = names::random_name(u32::from_le_bytes(r));
                    if tries > 10 {
                        n = format!("{n}{}", tries);
                    }
                    if !taken.iter().any(|(t, _)| *t == n) {
                        break n;
                    }
                    tries += 1;
                }
            }
        };
        let id = random_hex(32)?;
        let dir = self.dir.join(&id);
        helper::private_dir(&dir)?;
        fs::create_dir_all(dir.join("scratch"))
            .map_err(|e| RunError::io(format!("creating {}", dir.display()), e))?;
        let placement = match make_cgroups(&id, &resources) {
            Ok(p) => p,
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let mut opts = opts.clone();
        opts.resources = resources;
        let cfg = Config {
            id,
            name,
            created: now(),
            opts,
            spec: spec.clone(),
            detached,
            stack,
            cgroups: placement,
            snapshotter: self.cfg.snapshotter,
        };
        let saved = serde_json::to_vec_pretty(&cfg)
            .map_err(|e| RunError::Helper(e.to_string()))
            .and_then(|bytes| write_atomic(&dir.join("config.json"), &bytes))
            .and_then(|()| save_state(&dir, &State::created()));
        if let Err(e) = saved {
            drop_cgroups(&cfg.cgroups);
            let _ = fs::remove_dir_all(&dir);
            return Err(e);
        }
        Ok(cfg)
    }

    /// Start a detached container: a monitor process (re-exec'd, own
    /// session) runs it, logs its output and serves its ports. Returns the
    /// full ID once the process is running and the ports are bound; a port
    /// in use or an exec failure is an error here and leaves nothing behind.
    pub fn run_detached(&self, spec: ContainerSpec, opts: RunOptions) -> Result<String, RunError> {
        let cfg = self.create(&spec, &opts, true)?;
        let dir = self.dir.join(&cfg.id);
        let result = self.start_monitor(&dir);
        if result.is_err() {
            drop_cgroups(&cfg.cgroups);
            let _ = fs::remove_dir_all(&dir);
        }
        result.map(|()| cfg.id)
    }

    fn start_monitor(&self, dir: &Path) -> Result<(), RunError> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("monitor.log"))
            .map_err(|e| RunError::io("creating monitor.log", e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| RunError::io("dup monitor.log", e))?;
        let dir_s = dir
            .to_str()
            .ok_or_else(|| RunError::InvalidSpec("state dir is not UTF-8".into()))?;
        let (mut child, sock) = helper::spawn_helper(
            &self.cfg,
            "monitor",
            &[dir_s],
            Stdio {
                stdin: None,
                stdout: Some(log.into()),
                stderr: Some(log2.into()),
            },
            None,
        )?;
        // The first monitor process forks the real one and exits at once.
        let _ = child.wait();
        let mut reader = MsgReader::new(&sock);
        loop {
            match reader.next() {
                Ok(Some(Msg::Ready)) => return Ok(()),
                Ok(Some(Msg::PortInUse { ip, port })) => {
                    return Err(RunError::PortInUse { ip, port })
                }
                Ok(Some(Msg::Error { message, code })) => {
                    return Err(match code {
                        Some(code) => RunError::Exec { message, code },
                        None => RunError::Setup(message),
                    })
                }
                Ok(Some(_)) => continue,
                Ok(None) => {
                    let why = fs::read_to_string(dir.join("monitor.log")).unwrap_or_default();
                    return Err(RunError::Helper(format!(
                        "the container monitor exited before the container started{}{}",
                        if why.trim().is_empty() { "" } else { ": " },
                        why.trim()
                    )));
                }
                Err(e) => return Err(RunError::Helper(e)),
            }
        }
    }

    /// Run in the foreground with the caller's stdio (stdin only with
    /// `interactive`), listed by `ps` while it runs. Published ports are
    /// served from this process while the container runs.
    pub fn run_foreground(&self, spec: ContainerSpec, opts: RunOptions) -> Result<i32, RunError> {
        let cfg = self.create(&spec, &opts, false)?;
        let dir = self.dir.join(&cfg.id);
        let bound = match ports::bind_all(&opts.ports) {
            Ok(b) => b,
            Err(e) => {
                drop_cgroups(&cfg.cgroups);
                let _ = fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let dup = |fd: BorrowedFd<'_>| {
            rustix::io::fcntl_dupfd_cloexec(fd, 3).map_err(|e| RunError::io("dup stdio", e.into()))
        };
        let stdin = if opts.interactive {
            Some(dup(rustix::stdio::stdin())?)
        } else {
            None
        };
        let tty = opts.tty
            && (rustix::termios::isatty(rustix::stdio::stdin())
                || rustix::termios::isatty(rustix::stdio::stdout()));
        let stdio = Stdio {
            stdin,
            stdout: Some(dup(rustix::stdio::stdout())?),
            stderr: Some(dup(rustix::stdio::stderr())?),
        };
        let mut proxy: Option<ports::ProxyHandle> = None;
        let mut prober: Option<crate::health::Prober> = None;
        let mut bound = Some(bound);
        let mut state_err = None;
        let result = helper::run_foreground(
            &self.cfg,
            &spec,
            stdio,
            Some(helper::Named {
                scratch: &dir.join("scratch"),
                id: &cfg.id,
                tty,
                interactive: opts.interactive,
                cgroups: cfg.cgroups.dirs(),
            }),
            &mut |ev| match ev {
                Event::Started { helper, pid } => {
                    let st = State {
                        phase: Phase::Running,
                        supervisor_pid: helper,
                        supervisor_start: proc_start_time(helper).unwrap_or(0),
                        pid,
                        pid_start: proc_start_time(pid).unwrap_or(0),
                        started: now(),
                        exit_code: None,
                        finished: 0,
                        oom_killed: false,
                        restart_count: 0,
                    };
                    if let Err(e) = save_state(&dir, &st) {
                        state_err = Some(e);
                    }
                    prober = start_prober(&dir, &cfg, (pid, st.pid_start));
                    if let Some(b) = bound.take() {
                        if !b.is_empty() {
                            match File::open(format!("/proc/{pid}/ns/net")) {
                                Ok(ns) => proxy = Some(ports::serve(b, ns.into())),
                                Err(e) => state_err = Some(RunError::io("container netns", e)),
                            }
                        }
                    }
                }
            },
        );
        if let Some(p) = prober {
            p.stop();
        }
        if let Some(p) = proxy {
            p.shutdown();
        }
        let code = match &result {
            Ok(c) => *c,
            Err(e) => e.exit_code().unwrap_or(125),
        };
        let oom_killed = cgroups::oom_killed(&cgroups::HostFs, &cfg.cgroups);
        drop_cgroups(&cfg.cgroups);
        if opts.auto_remove {
            let _ = fs::remove_dir_all(&dir);
        } else {
            let mut st = self.state(&cfg.id).unwrap_or_else(|_| State::created());
            st.phase = Phase::Exited;
            st.exit_code = Some(code);
            st.finished = now();
            st.oom_killed = oom_killed;
            save_state(&dir, &st)?;
        }
        if let Some(e) = state_err {
            return Err(e);
        }
        result
    }

    /// One container by name, ID or unique ID prefix.
    pub fn inspect(&self, name_or_id_prefix: &str) -> Result<ContainerInfo, RunError> {
        let id = self.resolve(name_or_id_prefix)?;
        self.info(&id)
    }

    fn info(&self, id: &str) -> Result<ContainerInfo, RunError> {
        let c = self.config(id)?;
        let st = self.state(id)?;
        let status = match st.phase {
            Phase::Created => ContainerStatus::Created,
            Phase::Running
                if alive(st.supervisor_pid, st.supervisor_start) || alive(st.pid, st.pid_start) =>
            {
                ContainerStatus::Running { pid: st.pid }
            }
            Phase::Running => {
                // The supervisor died without recording an exit (killed, or
                // the machine rebooted); its cgroups are empty now.
                drop_cgroups(&c.cgroups);
                let finished = fs::metadata(self.dir.join(id).join("state.json"))
                    .ok()
                    .and_then(|m| m.modified().ok())
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(st.started);
                ContainerStatus::Exited {
                    code: 255,
                    finished,
                }
            }
            Phase::Restarting if alive(st.supervisor_pid, st.supervisor_start) => {
                ContainerStatus::Restarting {
                    code: st.exit_code.unwrap_or(255),
                    finished: st.finished,
                }
            }
            // A monitor killed during the backoff: exited, for good.
            Phase::Restarting | Phase::Exited => ContainerStatus::Exited {
                code: st.exit_code.unwrap_or(255),
                finished: st.finished,
            },
        };
        let health = match (&c.opts.healthcheck, &status) {
            (Some(_), ContainerStatus::Created) | (None, _) => None,
            (Some(_), _) => crate::health::load(&self.dir.join(id)),
        };
        Ok(ContainerInfo {
            id: c.id,
            name: c.name,
            image: c.opts.image,
            command: c.opts.command,
            created: c.created,
            started: if st.started > 0 {
                st.started
            } else {
                c.created
            },
            status,
            ports: c.opts.ports,
            oom_killed: st.oom_killed,
            resources: c.opts.resources,
            cgroups: c.cgroups.cgroups,
            spec: c.spec,
            auto_remove: c.opts.auto_remove,
            restart_policy: c.opts.restart,
            restart_count: st.restart_count,
            healthcheck: c.opts.healthcheck,
            health,
        })
    }

    /// Running containers, or all with `all`; newest first.
    pub fn list(&self, all: bool) -> Result<Vec<ContainerInfo>, RunError> {
        let mut out = Vec::new();
        for id in self.ids()? {
            match self.info(&id) {
                Ok(i) => {
                    if all || i.status.is_up() {
                        out.push(i)
                    }
                }
                // Being removed or half-created right now.
                Err(_) => continue,
            }
        }
        out.sort_by(|a, b| b.created.cmp(&a.created).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// A name, a full ID or a unique ID prefix to the full ID. Names win
    /// over ID prefixes (Docker's rule).
    pub fn resolve(&self, name_or_id_prefix: &str) -> Result<String, RunError> {
        // Docker prints names with a leading '/' in places; accept it.
        let q = name_or_id_prefix
            .strip_prefix('/')
            .unwrap_or(name_or_id_prefix);
        if q.is_empty() {
            return Err(RunError::NoSuchContainer(q.to_string()));
        }
        let ids = self.ids()?;
        if ids.iter().any(|id| id == q) {
            return Ok(q.to_string());
        }
        for id in &ids {
            if let Ok(c) = self.config(id) {
                if c.name == q {
                    return Ok(id.clone());
                }
            }
        }
        let m: Vec<&String> = ids.iter().filter(|id| id.starts_with(q)).collect();
        match m.len() {
            0 => Err(RunError::NoSuchContainer(q.to_string())),
            1 => Ok(m[0].clone()),
            _ => Err(RunError::AmbiguousPrefix {
                prefix: q.to_string(),
                matches: m
                    .iter()
                    .map(|id| id[..12].to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// Send the stop signal, SIGKILL after `timeout`, and wait until the
    /// container is gone. Stopping a stopped container is not an error.
    pub fn stop(&self, id: &str, timeout: Duration) -> Result<(), RunError> {
        let id = self.resolve(id)?;
        let c = self.config(&id)?;
        let sig = parse_signal(c.opts.stop_signal.as_deref().unwrap_or("SIGTERM"))?;
        self.end(&id, sig, timeout)
    }

    /// Stop for good: mark the container stopped (its monitor restarts
    /// it no more, whatever the policy), then signal its process, SIGKILL
    /// after `timeout`, and wait for the supervisor to record the exit.
    fn end(&self, id: &str, sig: i32, timeout: Duration) -> Result<(), RunError> {
        let st = self.state(id)?;
        let up = matches!(st.phase, Phase::Running | Phase::Restarting);
        if !up || !(alive(st.supervisor_pid, st.supervisor_start) || alive(st.pid, st.pid_start)) {
            return Ok(());
        }
        request_stop(&self.dir.join(id))?;
        let supervisor = pidfd(st.supervisor_pid, st.supervisor_start);
        let deadline = Instant::now() + timeout + Duration::from_secs(20);
        loop {
            // Read again each time: the monitor may have just restarted it
            // (and then sees the mark and kills the new process itself).
            let st = self.state(id)?;
            if st.phase == Phase::Running {
                if let Some(pfd) = pidfd(st.pid, st.pid_start) {
                    let _ = send_signal(&pfd, sig);
                    if !wait_pidfd(&pfd, timeout) {
                        let _ = send_signal(&pfd, libc::SIGKILL);
                        wait_pidfd(&pfd, Duration::from_secs(10));
                    }
                }
            }
            // The supervisor records the exit and then exits.
            match &supervisor {
                Some(s) if Instant::now() < deadline => {
                    if wait_pidfd(s, Duration::from_millis(100)) {
                        return Ok(());
                    }
                }
                _ => return Ok(()),
            }
        }
    }

    /// Remove a container. A running one is refused unless `force`, which
    /// kills it first.
    pub fn remove(&self, id: &str, force: bool) -> Result<(), RunError> {
        let id = self.resolve(id)?;
        let info = self.info(&id)?;
        match info.status {
            ContainerStatus::Running { .. } if !force => {
                return Err(RunError::ContainerRunning(info.name))
            }
            ContainerStatus::Restarting { .. } if !force => {
                return Err(RunError::ContainerRestarting(info.name))
            }
            ContainerStatus::Running { .. } | ContainerStatus::Restarting { .. } => {
                self.end(&id, libc::SIGKILL, Duration::from_secs(10))?
            }
            _ => {}
        }
        if let Ok(c) = self.config(&id) {
            cgroups::remove(&cgroups::HostFs, &c.cgroups).map_err(RunError::Limits)?;
        }
        let dir = self.dir.join(&id);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(RunError::io(format!("removing {}", dir.display()), e)),
        }
    }

    /// Run another process in a running container (`docker exec`): its
    /// exit code, or 0 once started with `detach`.
    pub fn exec(&self, name: &str, opts: crate::ExecOptions) -> Result<i32, RunError> {
        let (c, st) = self.running(name)?;
        let job =
            crate::exec::ExecJob::new(&c.spec, (st.pid, st.pid_start), c.cgroups.dirs(), &opts)?;
        crate::exec::start(&self.cfg, &job, opts.interactive)
    }

    /// The host PID of a running container's PID 1.
    pub fn main_pid(&self, name: &str) -> Result<i32, RunError> {
        Ok(self.running(name)?.1.pid)
    }

    /// The host PIDs of a running container's processes (`kiln top`).
    pub fn pids(&self, name: &str) -> Result<std::collections::BTreeSet<i32>, RunError> {
        let (_, st) = self.running(name)?;
        crate::top::pids_in_namespace_of(st.pid)
    }

    /// `kiln cp CONTAINER:SRC DEST`: the bytes of file content copied.
    pub fn copy_from(
        &self,
        name: &str,
        src: &str,
        dest: &str,
        opts: crate::CpOptions,
    ) -> Result<u64, RunError> {
        self.running_root(name)?.copy_out(src, dest, opts)
    }

    /// `kiln cp SRC CONTAINER:DEST`.
    pub fn copy_to(
        &self,
        name: &str,
        src: &str,
        dest: &str,
        opts: crate::CpOptions,
    ) -> Result<u64, RunError> {
        self.running_root(name)?.copy_in(src, dest, opts)
    }

    /// The root of a running container, checked to be its PID 1's still.
    fn running_root(&self, name: &str) -> Result<crate::cp::Root, RunError> {
        let (_, st) = self.running(name).map_err(|e| match e {
            RunError::NotRunning(n) => RunError::Copy(format!(
                "container {n} is not running: kiln cp reaches the files of a running \
                 container only (start it again, or get an image's files with \
                 `kiln build --output` or `kiln save`)"
            )),
            e => e,
        })?;
        let root = crate::cp::Root::of(st.pid)?;
        // Opened after the check: make sure the PID was not reused.
        if !alive(st.pid, st.pid_start) {
            return Err(RunError::NotRunning(name.to_string()));
        }
        Ok(root)
    }

    /// A running container's config and state; docker's errors otherwise.
    fn running(&self, name: &str) -> Result<(Config, State), RunError> {
        let id = self.resolve(name)?;
        let c = self.config(&id)?;
        let st = self.state(&id)?;
        if st.phase == Phase::Restarting && alive(st.supervisor_pid, st.supervisor_start) {
            return Err(RunError::Restarting(name.to_string()));
        }
        if st.phase != Phase::Running || !alive(st.pid, st.pid_start) {
            return Err(RunError::NotRunning(name.to_string()));
        }
        Ok((c, st))
    }

    /// Write the container's output (stdout and stderr, in order) to `out`.
    /// With `follow`, keep going until the container has exited. Only
    /// detached containers have logs (a foreground run's output went to
    /// its caller).
    pub fn logs(&self, id: &str, follow: bool, out: &mut dyn Write) -> Result<(), RunError> {
        let opts = LogOptions {
            follow,
            ..Default::default()
        };
        self.logs_with(id, &opts, out, None)
    }

    /// `kiln logs` with its filters; the container's stderr goes to `err`
    /// when given (what `docker logs` does with its own stderr).
    pub fn logs_with<'a>(
        &self,
        id: &str,
        opts: &LogOptions,
        out: &'a mut dyn Write,
        err: Option<&'a mut dyn Write>,
    ) -> Result<(), RunError> {
        let id = self.resolve(id)?;
        let path = self.dir.join(&id).join("container.log");
        let mut sink = crate::logs::Sink { out, err };
        crate::logs::show(&path, opts, &mut sink, &mut || {
            self.info(&id).is_ok_and(|i| i.status.is_up())
        })
    }
}

/// The HEALTHCHECK's probe loop for a container that has one (its
/// monitor's, or the caller's of a foreground run).
pub(crate) fn start_prober(
    dir: &Path,
    cfg: &Config,
    pid: (i32, u64),
) -> Option<crate::health::Prober> {
    let hc = cfg.opts.healthcheck.clone()?;
    let job = hc.argv().and_then(|args| {
        let opts = crate::ExecOptions {
            args,
            ..Default::default()
        };
        crate::exec::ExecJob::new(&cfg.spec, pid, cfg.cgroups.dirs(), &opts)
            .map_err(|e| e.to_string())
    });
    match job {
        Ok(job) => Some(crate::health::Prober::start(dir.to_path_buf(), hc, job)),
        Err(e) => {
            eprintln!("kiln: no health check: {e}");
            None
        }
    }
}

/// The container's cgroups for its (checked) limits; none without limits.
fn make_cgroups(id: &str, res: &Resources) -> Result<Placement, RunError> {
    if res.is_empty() {
        return Ok(Placement::default());
    }
    let fs = cgroups::HostFs;
    let host = cgroups::detect(&fs).map_err(RunError::Limits)?;
    let p = cgroups::create(&fs, &host, id, res).map_err(RunError::Limits)?;
    for w in &p.warnings {
        eprintln!("WARNING: {w}");
    }
    Ok(p)
}

/// Best effort: a cgroup that is still busy is retried by the next
/// `ps`/`rm` (for a container whose supervisor died) or stays for `rm`.
pub(crate) fn drop_cgroups(p: &Placement) {
    let _ = cgroups::remove(&cgroups::HostFs, p);
}

/// CPUs this process may run on (Go's `runtime.NumCPU`, which dockerd's
/// `--cpus` range check uses).
fn host_cpus() -> usize {
    rustix::thread::sched_getaffinity(None)
        .map(|s| s.count() as usize)
        .ok()
        .filter(|n| *n > 0)
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1)
}

pub(crate) fn save_state(dir: &Path, st: &State) -> Result<(), RunError> {
    let bytes = serde_json::to_vec(st).map_err(|e| RunError::Helper(e.to_string()))?;
    write_atomic(&dir.join("state.json"), &bytes)
}

/// A pidfd for `pid` if it is still the process that started at `start`.
fn pidfd(pid: i32, start: u64) -> Option<OwnedFd> {
    let p = rustix::process::Pid::from_raw(pid)?;
    let fd = rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok()?;
    // Checked after opening: the pidfd pins the process we verified.
    if proc_start_time(pid) == Some(start) {
        Some(fd)
    } else {
        None
    }
}

fn send_signal(pfd: &OwnedFd, sig: i32) -> std::io::Result<()> {
    // SAFETY: pidfd_send_signal with a valid pidfd and no siginfo.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Wait until the process behind `pfd` exits; false on timeout.
fn wait_pidfd(pfd: &OwnedFd, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut fds = [rustix::event::PollFd::new(
            pfd,
            rustix::event::PollFlags::IN,
        )];
        let ts = rustix::event::Timespec {
            tv_sec: left.as_secs() as i64,
            tv_nsec: left.subsec_nanos() as i64,
        };
        match rustix::event::poll(&mut fds, Some(&ts)) {
            Ok(n) if n > 0 => return true,
            Ok(_) => return false,
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return false,
        }
    }
}

#[allow(dead_code)]
fn _assert_fd_traits(_: &dyn AsFd, _: UnixStream, _: OwnedFd) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_like_docker() {
        assert_eq!(parse_signal("SIGTERM").unwrap(), libc::SIGTERM);
        assert_eq!(parse_signal("term").unwrap(), libc::SIGTERM);
        assert_eq!(parse_signal("9").unwrap(), libc::SIGKILL);
        assert_eq!(parse_signal("SIGQUIT").unwrap(), libc::SIGQUIT);
        assert!(parse_signal("SIGNOPE").is_err());
        assert!(parse_signal("99").is_err());
        assert!(parse_signal("0").is_err());
        assert_eq!(parse_signal("sigwinch").unwrap(), libc::SIGWINCH);
        assert_eq!(parse_signal("31").unwrap(), libc::SIGSYS);
        assert!(parse_signal("SIG").is_err());
    }

    #[test]
    fn start_time_of_self_is_stable() {
        let me = std::process::id() as i32;
        let a = proc_start_time(me).unwrap();
        assert_eq!(proc_start_time(me), Some(a));
        assert!(alive(me, a));
        assert!(!alive(me, a + 1));
        assert!(!alive(0, a));
    }

    #[test]
    fn half_created_containers_are_swept_after_a_minute() {
        let t = tempfile::tempdir().unwrap();
        let old = t.path().join("0".repeat(64));
        let fresh = t.path().join("1".repeat(64));
        fs::create_dir_all(old.join("scratch")).unwrap();
        fs::create_dir_all(fresh.join("scratch")).unwrap();
        let past = rustix::fs::Timestamps {
            last_access: rustix::fs::Timespec {
                tv_sec: 1_000_000_000,
                tv_nsec: 0,
            },
            last_modification: rustix::fs::Timespec {
                tv_sec: 1_000_000_000,
                tv_nsec: 0,
            },
        };
        rustix::fs::utimensat(rustix::fs::CWD, &old, &past, rustix::fs::AtFlags::empty()).unwrap();
        Containers::open(RunnerConfig::default(), t.path()).unwrap();
        assert!(!old.exists(), "interrupted creation swept");
        assert!(fresh.exists(), "a creation in progress is left alone");
    }

    #[test]
    fn resolve_names_and_prefixes() {
        let t = tempfile::tempdir().unwrap();
        let c = Containers::open(RunnerConfig::default(), t.path()).unwrap();
        for (id, name) in [
            ("ab".repeat(32), "web"),
            (format!("abc{}", "0".repeat(61)), "db"),
            ("cd".repeat(32), "ab"),
        ] {
            let d = t.path().join(&id);
            fs::create_dir_all(&d).unwrap();
            let cfg = Config {
                id: id.clone(),
                name: name.into(),
                created: 1,
                opts: RunOptions::default(),
                spec: ContainerSpec::default(),
                detached: true,
                stack: None,
                cgroups: Placement::default(),
                snapshotter: Default::default(),
            };
            fs::write(d.join("config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
        }
        assert_eq!(c.resolve("web").unwrap(), "ab".repeat(32));
        // A name wins over an ID prefix.
        assert_eq!(c.resolve("ab").unwrap(), "cd".repeat(32));
        assert_eq!(c.resolve("abc").unwrap(), format!("abc{}", "0".repeat(61)));
        let e = c.resolve("a").unwrap_err().to_string();
        assert!(e.starts_with("ambiguous container prefix \"a\""), "{e}");
        assert_eq!(
            c.resolve("zz").unwrap_err().to_string(),
            "No such container: zz"
        );
        let list = c.list(true).unwrap();
        assert_eq!(list.len(), 3);
        assert!(list.iter().all(|i| i.status == ContainerStatus::Created));
        assert!(c.list(false).unwrap().is_empty());
    }
}
