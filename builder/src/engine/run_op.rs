//! RUN: argv, environment and mounts prepared, keyed, and run in a
//! container over the stage's layers.

use std::path::PathBuf;

use super::executor::{ExecSpec, Mount as MountSpec, MountKind, Network as NetworkMode};
use super::inputs::{BindSource, ExecInputs, MountInput};
use super::op::ExecOp;
use anyhow::{anyhow, Context as _, Result};
use kiln_parser::{Command, Instruction, Mount, Sharing};

use super::plan::PROXY_ARGS;
use super::state::{env_lookup, StageState, DEFAULT_PATH};
use super::{Builder, NetworkArg, Secret};
use crate::fsutil::{self, RootView};
use crate::progress::StepId;

impl Builder {
    pub(super) fn exec_run(
        &self,
        st: &mut StageState,
        ins: &Instruction,
        r: &kiln_parser::Run,
        pos: &str,
    ) -> Result<()> {
        let line = ins.span.line;
        let (argv, script_file) = run_argv(st, r);
        let (mut env, key_env) = self.run_env(st);
        let network = match r.network {
            Some(kiln_parser::NetworkMode::None) => NetworkMode::None,
            Some(kiln_parser::NetworkMode::Host) => NetworkMode::Host,
            _ => match self.opts.network {
                NetworkArg::Default => NetworkMode::Private,
                NetworkArg::Host => NetworkMode::Host,
                NetworkArg::None => NetworkMode::None,
            },
        };
        let workdir = st.workdir();
        let user = st.config.config.user.clone().filter(|u| !u.is_empty());

        // mounts
        let env_map = st.expand_env();
        let lx = self.lexer();
        let exp = |s: &str| -> Result<String> {
            lx.process_word(s, &env_map)
                .map_err(|e| self.located(line, &e.to_string()))
        };
        let abs_target = |t: &str| -> String {
            if t.starts_with('/') {
                fsutil::clean_abs(t)
            } else {
                fsutil::clean_abs(&format!("{workdir}/{t}"))
            }
        };
        let cx = MountCx {
            b: self,
            st,
            line,
            exp: Box::new(exp),
            abs_target: Box::new(abs_target),
        };
        let mut out = Prepared::default();
        for m in &r.mounts {
            match m {
                Mount::Bind { .. } => cx.bind(&mut out, m)?,
                Mount::Cache { .. } => cx.cache(&mut out, m)?,
                Mount::Tmpfs { .. } => cx.tmpfs(&mut out, m)?,
                Mount::Secret { .. } => cx.secret(&mut out, m)?,
                Mount::Ssh { .. } => cx.ssh(&mut out, m)?,
            }
        }
        if let Some((target, content)) = &script_file {
            self.mount_script(&mut out, target, content)?;
        }
        drop(cx);
        let Prepared {
            mounts,
            mount_inputs,
            binds,
            secret_env,
            keep,
            relays,
            ssh_auth_sock,
            locks,
        } = out;
        // Secrets exposed as env vars are read at run time, never keyed.
        for (name, file) in &secret_env {
            let v = std::fs::read_to_string(file)?;
            env.push(format!("{name}={v}"));
        }
        if let Some(t) = &ssh_auth_sock {
            if !env.iter().any(|e| e.starts_with("SSH_AUTH_SOCK=")) {
                env.push(format!("SSH_AUTH_SOCK={t}"));
            }
        }
        let net_name = network.key_name();
        let inputs = ExecInputs {
            argv: argv.clone(),
            env: key_env,
            user: user.clone(),
            workdir: workdir.clone(),
            network: net_name.to_string(),
            mounts: mount_inputs,
        };
        let layers = st.layers.clone();
        let step = RunStep {
            argv,
            env,
            workdir,
            user,
            network,
            mounts,
            binds,
            line,
        };
        let op = ExecOp {
            inputs,
            step,
            layers,
        };
        let res = self.cached_step(st, ins, pos, op);
        drop(relays);
        drop(keep);
        drop(locks);
        res
    }

    /// A RUN's environment: the image's ENV, then the ARGs in scope that
    /// ENV does not set (what the key takes), then the proxy args (not keyed).
    fn run_env(&self, st: &StageState) -> (Vec<String>, Vec<String>) {
        let mut env: Vec<String> = st.config.config.env.clone();
        if env_lookup(&st.config, "PATH").is_none() {
            env.push(format!("PATH={DEFAULT_PATH}"));
        }
        for (k, v) in &st.args {
            if let Some(v) = v {
                env.retain(|e| e.split_once('=').map(|(n, _)| n) != Some(k.as_str()));
                env.push(format!("{k}={v}"));
            }
        }
        if let (true, Some(t)) = (self.opts.epoch_in_run, self.opts.source_date_epoch) {
            if env_lookup(&st.config, "SOURCE_DATE_EPOCH").is_none()
                && !env.iter().any(|e| e.starts_with("SOURCE_DATE_EPOCH="))
            {
                env.push(format!("SOURCE_DATE_EPOCH={t}"));
            }
        }
        let key_env = env.clone();
        for p in PROXY_ARGS {
            if let Some(v) = self.opts.build_args.get(*p) {
                env.push(format!("{p}={v}"));
            }
        }
        (env, key_env)
    }

    /// Runs a RUN step that missed the cache: bind sources prepared, the
    /// process run over the stage's layers, its upper dir committed.
    pub(super) fn run_step(
        &self,
        spec: RunStep,
        layers: &[kiln_store::LayerInfo],
        id: StepId,
    ) -> Result<Option<kiln_store::LayerInfo>> {
        let b = self;
        let RunStep {
            argv,
            env,
            workdir,
            user,
            network,
            mut mounts,
            binds,
            line,
        } = spec;
        let mut scratch = Vec::new();
        for (i, prep, rw) in binds {
            let host = b.prepare_bind(prep, rw, &mut scratch)?;
            if let MountKind::Bind { source, .. } = &mut mounts[i].kind {
                *source = host;
            }
        }
        let lowers = b.snapshots(layers)?;
        let below = RootView::new(lowers.clone());
        let pending = b.store.new_snapshot()?;
        let spec = ExecSpec {
            lowers,
            upper: pending.upper().to_path_buf(),
            work: pending.work().to_path_buf(),
            args: argv.clone(),
            env,
            cwd: workdir.clone(),
            user,
            hostname: "kiln".into(),
            network,
            mounts,
        };
        let (code, tail) = b.run_container(&spec, id)?;
        if code != 0 {
            let mut msg = format!(
                "process {:?} did not complete successfully: exit code: {code}",
                argv.join(" ")
            );
            if !tail.is_empty() {
                msg.push_str("\nlast lines of its output:\n");
                for l in &tail {
                    msg.push_str("  ");
                    msg.push_str(l);
                    msg.push('\n');
                }
            }
            return Err(b.located(line, msg.trim_end()));
        }
        // A RUN that changes nothing still makes its (empty) layer, as in
        // BuildKit 0.13; in a stage from scratch it leaves the mount points.
        fsutil::keep_runtime_mount_points(pending.upper(), &below)?;
        Ok(Some(b.store.commit_snapshot(pending, &b.layer_options())?))
    }

    /// The script of `RUN <<EOF` with a shebang, as a file at `target`.
    fn mount_script(&self, out: &mut Prepared, target: &str, content: &str) -> Result<()> {
        let Prepared {
            mounts,
            mount_inputs,
            keep,
            ..
        } = out;
        let tmp = self.store.tempdir("heredoc")?;
        let file = tmp.path().join("script");
        std::fs::write(&file, content)?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755))?;
        }
        mount_inputs.push(MountInput::Heredoc {
            target: target.to_string(),
            content: content.to_string(),
        });
        mounts.push(MountSpec {
            target: target.to_string(),
            kind: MountKind::Bind {
                source: file,
                readonly: true,
            },
        });
        keep.push(tmp);
        Ok(())
    }

    /// Runs a RUN step's process through the build's executor, streaming
    /// its output to the progress display and keeping the last lines for
    /// an error message.
    fn run_container(&self, spec: &ExecSpec, id: StepId) -> Result<(i32, Vec<String>)> {
        let tail = std::sync::Mutex::new(std::collections::VecDeque::new());
        let status = self.executor.run(spec, &|line: &str| {
            self.progress.log(id, line);
            let mut t = tail.lock().expect("output tail");
            if t.len() == 20 {
                t.pop_front();
            }
            t.push_back(line.to_string());
        })?;
        let tail = tail.into_inner().expect("output tail");
        Ok((status.code, tail.into_iter().collect()))
    }
}

/// A RUN step ready to run, should it miss the cache.
pub(super) struct RunStep {
    argv: Vec<String>,
    env: Vec<String>,
    workdir: String,
    user: Option<String>,
    network: NetworkMode,
    mounts: Vec<MountSpec>,
    binds: Vec<(usize, BindPrep, bool)>,
    line: usize,
}

/// The argv of a RUN, and the script file a shebang heredoc becomes
/// (target, content).
fn run_argv(st: &StageState, r: &kiln_parser::Run) -> (Vec<String>, Option<(String, String)>) {
    // argv. `RUN <<EOF` alone makes the heredoc the script: run by the
    // shell, or, with a shebang, as a file mounted at /dev/pipes/EOF
    // (BuildKit's place for it, on the /dev tmpfs: never in a layer).
    let mut script_file: Option<(String, String)> = None;
    let argv: Vec<String> = match &r.command {
        Command::Exec(v) => v.clone(),
        Command::Shell(s) => {
            let only_heredoc = r.heredocs.len() == 1
                && s.trim()
                    .trim_start_matches("<<")
                    .trim_start_matches('-')
                    .trim_matches(|c| c == '"' || c == '\'')
                    == r.heredocs[0].name;
            if only_heredoc {
                let content = r.heredocs[0].effective_content();
                if content.starts_with("#!") {
                    let target = format!("/dev/pipes/{}", r.heredocs[0].name);
                    script_file = Some((target.clone(), content));
                    vec![target]
                } else {
                    let mut v = st.shell();
                    v.push(content);
                    v
                }
            } else if r.heredocs.is_empty() {
                st.argv(&r.command)
            } else {
                // Heredocs are handed to the shell, which expands them
                // (or not, for quoted delimiters) itself.
                let mut script = s.clone();
                script.push('\n');
                for h in &r.heredocs {
                    script.push_str(&h.content);
                    if !h.content.ends_with('\n') && !h.content.is_empty() {
                        script.push('\n');
                    }
                    script.push_str(&h.name);
                    script.push('\n');
                }
                let mut v = st.shell();
                v.push(script);
                v
            }
        }
    };
    (argv, script_file)
}

/// What the mounts of a RUN step came to: the mounts, their cache
/// inputs, and what must live until the step has run.
#[derive(Default)]
struct Prepared {
    mounts: Vec<MountSpec>,
    mount_inputs: Vec<MountInput>,
    /// Bind mounts whose source is prepared only if the step runs.
    binds: Vec<(usize, BindPrep, bool)>,
    /// Secrets exposed as environment variables: name and file.
    secret_env: Vec<(String, PathBuf)>,
    keep: Vec<tempfile::TempDir>,
    relays: Vec<super::ssh::AgentRelay>,
    ssh_auth_sock: Option<String>,
    locks: Vec<kiln_store::CacheMount>,
}

/// Word expansion in a stage's scope, located at the step's line.
type ExpandFn<'a> = Box<dyn Fn(&str) -> Result<String> + 'a>;

/// What a mount's words are read with, and the build it is for.
struct MountCx<'a> {
    b: &'a Builder,
    st: &'a StageState,
    line: usize,
    /// Word expansion in the stage's scope.
    exp: ExpandFn<'a>,
    /// A target made absolute against the WORKDIR.
    abs_target: Box<dyn Fn(&str) -> String + 'a>,
}

/// One function per mount kind: each adds the mount, its cache input, and
/// what must live until the step ran.
impl MountCx<'_> {
    /// `RUN --mount=type=bind`.
    fn bind(&self, out: &mut Prepared, m: &Mount) -> Result<()> {
        let b = self.b;
        let Mount::Bind {
            target,
            source,
            from,
            readwrite,
        } = m
        else {
            unreachable!("MountCx::bind is given bind mounts")
        };
        let Prepared {
            mounts,
            mount_inputs,
            binds,
            ..
        } = out;
        let (st, line, exp, abs_target) = (self.st, self.line, &self.exp, &self.abs_target);
        let target = abs_target(&exp(target)?);
        let source = exp(source.as_deref().unwrap_or("."))?;
        // What the mount shows is prepared only if the step
        // runs (a cache hit needs just the inputs).
        let (prep, id) = match from {
            None => {
                let rel = b.bind_source_in_context(&source, line)?;
                let listing = b.ctx.describe_subtree(&rel)?;
                let digest = blake3::hash(serde_json::to_string(&listing)?.as_bytes())
                    .to_hex()
                    .to_string();
                (
                    BindPrep::Context(rel.clone()),
                    BindSource::Context {
                        context: rel.clone(),
                        content: digest,
                    },
                )
            }
            Some(f) => {
                let (view, id) = b.resolve_source(st, f, line)?;
                let (comps, found) = view.resolve(&source, true)?;
                if found.is_none() {
                    return Err(
                        b.located(line, &format!("RUN --mount from={f}: {source:?} not found"))
                    );
                }
                (
                    BindPrep::View(view, comps),
                    BindSource::From {
                        from: id,
                        source: source.clone(),
                    },
                )
            }
        };
        mount_inputs.push(MountInput::Bind {
            target: target.clone(),
            source: id,
            rw: *readwrite,
        });
        binds.push((mounts.len(), prep, *readwrite));
        mounts.push(MountSpec {
            target,
            kind: MountKind::Bind {
                source: PathBuf::new(),
                readonly: !readwrite,
            },
        });
        Ok(())
    }

    /// `RUN --mount=type=cache`.
    fn cache(&self, out: &mut Prepared, m: &Mount) -> Result<()> {
        let b = self.b;
        let Mount::Cache {
            target,
            id,
            sharing,
            mode,
            uid,
            gid,
            readonly,
            from,
            source,
        } = m
        else {
            unreachable!("MountCx::cache is given cache mounts")
        };
        let Prepared {
            mounts,
            mount_inputs,
            locks,
            ..
        } = out;
        let (st, line, exp, abs_target) = (self.st, self.line, &self.exp, &self.abs_target);
        let target = abs_target(&exp(target)?);
        let cid = id.clone().unwrap_or_else(|| target.clone());
        // from= seeds the cache with a stage's or image's files
        // the first time; as in BuildKit, the cache belongs to
        // (id, base): another base starts another cache.
        let seed = match (from, source) {
            (None, None) => None,
            (None, Some(_)) => return Err(b.located(
                line,
                "RUN --mount=type=cache: source= needs from= (the stage or image it is a path of)",
            )),
            (Some(f), src) => {
                let src = exp(src.as_deref().unwrap_or("/"))?;
                let (view, base_id) = b.resolve_source(st, f, line)?;
                let (comps, found) = view.resolve(&src, true)?;
                if !found.is_some_and(|f| f.meta.is_dir()) {
                    return Err(b.located(
                        line,
                        &format!(
                            "RUN --mount=type=cache from={f}: {src:?} is not a directory there"
                        ),
                    ));
                }
                Some((view, comps, base_id, src))
            }
        };
        // uid/gid/mode make the base BuildKit starts the cache from (a
        // directory made so): another base, another cache.
        let made = (uid.is_some() || gid.is_some() || mode.is_some()).then(|| {
            let (u, g, m) = (uid.unwrap_or(0), gid.unwrap_or(0), mode.unwrap_or(0o755));
            format!("mkdir {u}:{g} {m:o}")
        });
        let name = match (&seed, &made) {
            (None, None) => cid.clone(),
            (None, Some(made)) => format!("{cid}\0{made}"),
            (Some((_, _, base_id, src)), _) => {
                format!("{cid}\0{}\0{src}", serde_json::to_value(base_id)?)
            }
        };
        let share = match sharing {
            Sharing::Shared => kiln_store::CacheSharing::Shared,
            Sharing::Locked => kiln_store::CacheSharing::Locked,
            Sharing::Private => kiln_store::CacheSharing::Private,
        };
        let mut fill = seed.as_ref().map(|(view, comps, _, _)| {
            move |dir: &std::path::Path| -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
                Ok(materialize(view, comps, dir)?)
            }
        });
        let held = b.store.cache().mounts().acquire(
            &name,
            &cid,
            share,
            fill.as_mut().map(|f| f as kiln_store::CacheSeed<'_>),
        )?;
        if let Some((_, _, base_id, src)) = &seed {
            mount_inputs.push(MountInput::CacheSeed {
                target: target.clone(),
                from: base_id.clone(),
                source: src.clone(),
            });
        }
        let host = held.path().to_path_buf();
        locks.push(held);
        {
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(&host)?;
            if meta.permissions().mode() & 0o7777 != mode.unwrap_or(0o755) {
                std::fs::set_permissions(
                    &host,
                    std::fs::Permissions::from_mode(mode.unwrap_or(0o755)),
                )?;
            }
            fsutil::lchown(&host, uid.unwrap_or(0), gid.unwrap_or(0))?;
        }
        mount_inputs.push(MountInput::Cache {
            target: target.clone(),
            id: cid.clone(),
            ro: *readonly,
            base: made,
        });
        mounts.push(MountSpec {
            target,
            kind: MountKind::Bind {
                source: host,
                readonly: *readonly,
            },
        });
        Ok(())
    }

    /// `RUN --mount=type=tmpfs`.
    fn tmpfs(&self, out: &mut Prepared, m: &Mount) -> Result<()> {
        let Mount::Tmpfs { target, size } = m else {
            unreachable!("MountCx::tmpfs is given tmpfs mounts")
        };
        let Prepared {
            mounts,
            mount_inputs,
            ..
        } = out;
        let (exp, abs_target) = (&self.exp, &self.abs_target);
        let target = abs_target(&exp(target)?);
        mount_inputs.push(MountInput::Tmpfs {
            target: target.clone(),
            size: *size,
        });
        mounts.push(MountSpec {
            target,
            kind: MountKind::Tmpfs { size: *size },
        });
        Ok(())
    }

    /// `RUN --mount=type=secret`.
    fn secret(&self, out: &mut Prepared, m: &Mount) -> Result<()> {
        let b = self.b;
        let Mount::Secret {
            id,
            target,
            env: as_env,
            required,
            mode,
            uid,
            gid,
        } = m
        else {
            unreachable!("MountCx::secret is given secret mounts")
        };
        let Prepared {
            mounts,
            mount_inputs,
            secret_env,
            keep,
            ..
        } = out;
        let (line, abs_target) = (self.line, &self.abs_target);
        let sid = id
            .clone()
            .or_else(|| {
                target
                    .as_ref()
                    .and_then(|t| t.rsplit('/').next().map(String::from))
            })
            .ok_or_else(|| b.located(line, "RUN --mount=type=secret needs id= or target="))?;
        let Some(secret) = b.opts.secrets.get(&sid) else {
            if *required {
                return Err(b.located(
                    line,
                    &format!("secret {sid} not found: pass it with --secret id={sid},src=FILE"),
                ));
            }
            return Ok(());
        };
        let tmp = b.store.tempdir("secret")?;
        let file = tmp.path().join("secret");
        let data = match secret {
            Secret::File(p) => std::fs::read(p)
                .with_context(|| format!("reading secret {sid} from {}", p.display()))?,
            Secret::Env(v) => std::env::var(v)
                .map_err(|_| anyhow!("secret {sid}: environment variable {v} is not set"))?
                .into_bytes(),
        };
        std::fs::write(&file, &data)?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                &file,
                std::fs::Permissions::from_mode(mode.unwrap_or(0o400)),
            )?;
            fsutil::lchown(&file, uid.unwrap_or(0), gid.unwrap_or(0))?;
        }
        // Secrets never reach the cache key: only where they go.
        if let Some(e) = as_env {
            secret_env.push((e.clone(), file.clone()));
            mount_inputs.push(MountInput::Secret {
                id: sid.clone(),
                env: Some(e.clone()),
                target: None,
            });
            if target.is_none() {
                keep.push(tmp);
                return Ok(());
            }
        }
        let t = target
            .clone()
            .map(|t| abs_target(&t))
            .unwrap_or_else(|| format!("/run/secrets/{sid}"));
        mount_inputs.push(MountInput::Secret {
            id: sid.clone(),
            env: None,
            target: Some(t.clone()),
        });
        mounts.push(MountSpec {
            target: t,
            kind: MountKind::Bind {
                source: file,
                readonly: true,
            },
        });
        keep.push(tmp);
        Ok(())
    }

    /// `RUN --mount=type=ssh`.
    fn ssh(&self, out: &mut Prepared, m: &Mount) -> Result<()> {
        let b = self.b;
        let Mount::Ssh {
            id,
            target,
            required,
            mode,
            uid,
            gid,
        } = m
        else {
            unreachable!("MountCx::ssh is given ssh mounts")
        };
        let Prepared {
            mounts,
            mount_inputs,
            relays,
            ssh_auth_sock,
            keep,
            ..
        } = out;
        let (line, abs_target) = (self.line, &self.abs_target);
        let sid = id.clone().unwrap_or_else(|| "default".to_string());
        let Some(agent) = b.opts.ssh.get(&sid) else {
            if *required {
                return Err(b.located(line, &format!("no SSH agent for id {sid}: pass --ssh {sid}[=SOCKET] (without a socket: $SSH_AUTH_SOCK)")));
            }
            return Ok(());
        };
        // BuildKit's default place, numbered per step.
        let t = target
            .clone()
            .map(|t| abs_target(&t))
            .unwrap_or_else(|| format!("/run/buildkit/ssh_agent.{}", relays.len()));
        let tmp = b.store.tempdir("ssh")?;
        let sock = tmp.path().join("agent.sock");
        relays.push(super::ssh::AgentRelay::start(
            agent,
            &sock,
            mode.unwrap_or(0o600),
            uid.unwrap_or(0),
            gid.unwrap_or(0),
        )?);
        ssh_auth_sock.get_or_insert_with(|| t.clone());
        // Which agent, not what it holds, is an input.
        mount_inputs.push(MountInput::Ssh {
            id: sid.clone(),
            target: t.clone(),
        });
        mounts.push(MountSpec {
            target: t,
            kind: MountKind::Bind {
                source: sock,
                readonly: false,
            },
        });
        keep.push(tmp);
        Ok(())
    }
}

/// What a `RUN --mount=type=bind` shows, prepared when the step runs.
enum BindPrep {
    /// A path of the build context (relative).
    Context(String),
    /// A path of another stage's or image's filesystem.
    View(RootView, Vec<String>),
}

impl Builder {
    /// A bind mount's `source=` resolved in the scanned context, as
    /// BuildKit resolves it in the context it was sent: symlinks followed
    /// but kept inside the context's root, so what is mounted is an entry
    /// of the `.dockerignore`-filtered context (a directory or a file,
    /// never a symlink), never a path of the host.
    fn bind_source_in_context(&self, source: &str, line: usize) -> Result<String> {
        let shown = fsutil::clean_abs(source);
        match self.ctx.resolve(source, true) {
            Ok(Some(rel)) => Ok(rel),
            Ok(None) => Err(self.located(
                line,
                &format!(
                    "RUN --mount=type=bind: {shown:?}: not found in the build context \
                     (symlinks resolve inside the context; is the file excluded by .dockerignore?)"
                ),
            )),
            Err(e) => Err(self.located(line, &format!("RUN --mount=type=bind: {e}"))),
        }
    }

    /// The host path to bind for a mount: the context path itself when
    /// `.dockerignore` excludes nothing below it, else a copy (hard links
    /// where possible) of just what the context holds, so an ignored file
    /// is never visible to RUN; another stage's files are materialised; a
    /// read-write mount gets a scratch copy whose writes are dropped.
    fn prepare_bind(
        &self,
        prep: BindPrep,
        rw: bool,
        scratch: &mut Vec<tempfile::TempDir>,
    ) -> Result<PathBuf> {
        let tmp = || self.store.tempdir("bind");
        match prep {
            BindPrep::Context(rel) => {
                let real = self.ctx.root.join(&rel);
                self.still_scanned(&rel, &real)?;
                let entries = self.ctx.subtree(&rel);
                if !rw && !has_excluded(&real, entries.len())? {
                    return Ok(real);
                }
                let t = tmp()?;
                let is_dir = self
                    .ctx
                    .get(&rel)
                    .map(|e| e.kind == crate::context::Kind::Dir);
                let dest_root = if is_dir == Some(true) {
                    t.path().to_path_buf()
                } else {
                    t.path().join("file")
                };
                for (k, e) in entries {
                    let sub = if *k == rel {
                        String::new()
                    } else if rel.is_empty() {
                        k.clone()
                    } else {
                        k[rel.len() + 1..].to_string()
                    };
                    let dst = if sub.is_empty() {
                        dest_root.clone()
                    } else {
                        dest_root.join(&sub)
                    };
                    let src = self.ctx.root.join(k);
                    match e.kind {
                        crate::context::Kind::Dir => {
                            std::fs::create_dir_all(&dst)?;
                        }
                        crate::context::Kind::Symlink => {
                            std::os::unix::fs::symlink(
                                e.link_target.clone().unwrap_or_default(),
                                &dst,
                            )?;
                        }
                        crate::context::Kind::File => {
                            // A hard link shares the inode: fine for a
                            // read-only mount; a read-write one gets bytes.
                            if rw || std::fs::hard_link(&src, &dst).is_err() {
                                std::fs::copy(&src, &dst)?;
                            }
                        }
                        crate::context::Kind::Other => {}
                    }
                }
                scratch.push(t);
                Ok(dest_root)
            }
            BindPrep::View(view, comps) => {
                let t = tmp()?;
                materialize(&view, &comps, t.path())?;
                let p = if view
                    .stat(&format!("/{}", comps.join("/")))?
                    .is_some_and(|f| f.meta.is_dir())
                {
                    t.path().to_path_buf()
                } else {
                    t.path()
                        .join(comps.last().cloned().unwrap_or_else(|| "file".into()))
                };
                scratch.push(t);
                // Already a private copy: writes to it are dropped with it.
                Ok(p)
            }
        }
    }

    /// `rel` (resolved, symlink-free in the scan) is still the entry the
    /// scan saw: a path swapped for a symlink since would be followed on
    /// the host when mounted.
    fn still_scanned(&self, rel: &str, real: &std::path::Path) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        let e = self.ctx.get(rel);
        let same = std::fs::symlink_metadata(real)
            .ok()
            .zip(e)
            .is_some_and(|(m, e)| {
                !m.file_type().is_symlink() && m.dev() == e.dev && m.ino() == e.ino
            });
        if !same {
            anyhow::bail!(
                "build context path \"/{rel}\" changed while the build ran ({}); build again",
                real.display()
            );
        }
        Ok(())
    }
}

/// Whether the real tree at `path` holds more entries than the context
/// kept of it (then `.dockerignore` excluded something below it).
fn has_excluded(path: &std::path::Path, kept: usize) -> Result<bool> {
    let meta = std::fs::symlink_metadata(path)?;
    if !meta.is_dir() {
        return Ok(false);
    }
    // The directory itself counts (1), as it does in `kept`.
    for (i, e) in walkdir::WalkDir::new(path)
        .min_depth(1)
        .into_iter()
        .enumerate()
    {
        e?;
        if i + 2 > kept {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Copies the tree at `comps` of a view into `dest` (for bind mounts from
/// another stage).
fn materialize(view: &RootView, comps: &[String], dest: &std::path::Path) -> Result<()> {
    // Modes, owners and mtimes kept, as a bind mount of the tree shows them.
    fsutil::materialize(view, comps, dest)
}
