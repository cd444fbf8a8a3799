//! RUN: argv, environment and mounts prepared, keyed, and run in a
//! container over the stage's layers.

use super::bind_prep::BindPrep;
use super::executor::{ExecSpec, Mount as MountSpec, MountKind, Network as NetworkMode};
use super::inputs::ExecInputs;
use super::op::ExecOp;
use super::run_mounts::{MountCx, Prepared};
use anyhow::Result;
use kiln_parser::{Command, Instruction, Mount};

use super::plan::PROXY_ARGS;
use super::state::{env_lookup, StageState, DEFAULT_PATH};
use super::{Builder, NetworkArg};
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
        let (mut env, key_env) = run_env(&self.opts, st);
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
        let lx = self.src.lexer();
        let exp = |s: &str| -> Result<String> {
            lx.process_word(s, &env_map)
                .map_err(|e| self.src.located(line, &e.to_string()))
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
            cx.script(&mut out, target, content)?;
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
            let host = super::bind_prep::Binds::of(b).prepare(prep, rw, &mut scratch)?;
            if let MountKind::Bind { source, .. } = &mut mounts[i].kind {
                *source = host;
            }
        }
        let lowers = super::lazy_view::snapshots(&b.store, layers)?;
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
            return Err(b.src.located(line, msg.trim_end()));
        }
        // A RUN that changes nothing still makes its (empty) layer, as in
        // BuildKit 0.13; in a stage from scratch it leaves the mount points.
        fsutil::keep_runtime_mount_points(pending.upper(), &below)?;
        Ok(Some(
            b.store.commit_snapshot(pending, &b.opts.layer_options())?,
        ))
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
        for w in &status.warnings {
            self.progress.warn(w);
        }
        let tail = tail.into_inner().expect("output tail");
        Ok((status.code, tail.into_iter().collect()))
    }
}

/// A RUN's environment: the image's ENV, then the ARGs in scope that
/// ENV does not set (what the key takes), then the proxy args (not keyed).
fn run_env(opts: &super::Options, st: &StageState) -> (Vec<String>, Vec<String>) {
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
    if let (true, Some(t)) = (opts.epoch_in_run, opts.source_date_epoch) {
        if env_lookup(&st.config, "SOURCE_DATE_EPOCH").is_none()
            && !env.iter().any(|e| e.starts_with("SOURCE_DATE_EPOCH="))
        {
            env.push(format!("SOURCE_DATE_EPOCH={t}"));
        }
    }
    let key_env = env.clone();
    for p in PROXY_ARGS {
        if let Some(v) = opts.build_args.get(*p) {
            env.push(format!("{p}={v}"));
        }
    }
    (env, key_env)
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
