//! One stage: its base, ONBUILD triggers, then each instruction in order.
//! Metadata instructions only change the config (meta.rs); RUN (run_op.rs),
//! COPY, ADD (copy_op.rs) and a WORKDIR that creates a directory are cached
//! steps (cached.rs) that may add a layer.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use anyhow::{Context as _, Result};
use kiln_parser::shell::Lexer;
use kiln_parser::{Command, Healthcheck, Instruction, InstructionKind};
use kiln_store::LayerInfo;
use serde_json::json;

use super::copy_op::CopyArgs;
use super::inputs::{MetaChange, MkdirInputs, SourceInputs, StepInputs};
use super::plan::{platform_args, Base};
use super::state::{index_env, StageState};
use super::{Builder, StageResult};
use crate::error::Failure;
use crate::fsutil::{self, RootView};

impl Builder {
    pub(super) fn lexer(&self) -> Lexer {
        Lexer::new(self.escape)
    }

    pub(super) fn expand(&self, st: &StageState, word: &str, line: usize) -> Result<String> {
        self.lexer()
            .process_word(word, &st.scope_env())
            .map_err(|e| self.located(line, &e.to_string()))
    }

    /// An error that shows where in the Dockerfile it happened, BuildKit's way.
    pub fn located(&self, line: usize, msg: &str) -> anyhow::Error {
        anyhow::Error::new(Failure::new(1, self.located_text(line, msg)))
    }

    /// [`Builder::located`] for an error whose cause chain is kept (the
    /// message shows it on one line; the chain stays inspectable).
    pub fn located_cause(&self, line: usize, err: anyhow::Error) -> anyhow::Error {
        let text = self.located_text(line, &format!("{err:#}"));
        let cause: Box<dyn std::error::Error + Send + Sync> = err.into();
        anyhow::Error::new(Failure {
            cause: Some(cause),
            ..Failure::new(1, text)
        })
    }

    fn located_text(&self, line: usize, msg: &str) -> String {
        let src = &self.opts.dockerfile_src;
        let lines: Vec<&str> = src.lines().collect();
        let mut out = String::new();
        out.push_str(&format!("{}:{}\n", self.opts.dockerfile_name, line));
        out.push_str("--------------------\n");
        let lo = line.saturating_sub(2).max(1);
        let hi = (line + 2).min(lines.len());
        for n in lo..=hi {
            let marker = if n == line { ">>>" } else { "   " };
            out.push_str(&format!(
                "{marker} {n:>3} | {}\n",
                lines.get(n - 1).copied().unwrap_or("")
            ));
        }
        out.push_str("--------------------\n");
        out.push_str(&format!("ERROR: {msg}"));
        out
    }

    pub(super) fn snapshots(&self, layers: &[LayerInfo]) -> Result<Vec<PathBuf>> {
        layers
            .iter()
            .rev()
            .map(|l| {
                self.store
                    .ensure_snapshot(l)
                    .with_context(|| format!("unpacking layer {}", l.digest))
            })
            .collect()
    }

    pub(super) fn view(&self, layers: &[LayerInfo]) -> Result<RootView> {
        Ok(RootView::new(self.snapshots(layers)?))
    }

    pub fn run_stage(&self, i: usize) -> Result<StageResult> {
        let ps = &self.plan.stages[i];
        let total = ps.stage.instructions.len() + 1;
        let label = ps.label();
        let base_name = match &ps.base {
            Base::Scratch => "scratch".to_string(),
            Base::Stage(j) => self.plan.stages[*j].label(),
            Base::Image(n) => n.clone(),
        };
        let id = self
            .progress
            .start(&format!("[{label} 1/{total}] FROM {base_name}"));
        let (config, layers, base_key, base_manifest) = self
            .base_of(&ps.base)
            .map_err(|e| self.located(ps.stage.span.line, &format!("{e:#}")))?;
        self.progress.done(id, std::time::Duration::ZERO);
        let mut st = StageState {
            last_created: config.created.clone(),
            config,
            layers,
            key: base_key,
            args: BTreeMap::new(),
            cmd_set: false,
            all_cached: true,
            hits: Vec::new(),
            place: format!("{}#{}", self.dockerfile_path, label),
            pending: Vec::new(),
            meta_bytes: 0,
            env_index: HashMap::new(),
        };
        st.env_index = index_env(&st.config.config.env);
        if let Base::Image(name) = &ps.base {
            // The base is a step of its own for the cache's story: a new
            // digest under the same name is what `--explain` reports.
            let manifest = base_manifest.clone().unwrap_or_default();
            let inputs = StepInputs::Source(SourceInputs {
                image: name.clone(),
                id: manifest,
            });
            let source = format!("{}:{}", self.opts.dockerfile_name, ps.stage.span.line);
            let result = json!({ "config": st.config, "layers": st.layers });
            self.record_meta(
                &mut st,
                &format!("FROM {name}"),
                &source,
                "",
                inputs,
                result,
            )?;
        }
        // The image's ONBUILD triggers run first, and are not inherited.
        let triggers = std::mem::take(&mut st.config.config.on_build);
        for t in triggers {
            let text = format!("FROM scratch\n{t}\n");
            let df = kiln_parser::parse(&text)
                .map_err(|e| self.located(ps.stage.span.line, &format!("ONBUILD {t}: {e}")))?;
            let stages = kiln_parser::parse_stages(&df)
                .map_err(|e| self.located(ps.stage.span.line, &format!("ONBUILD {t}: {e}")))?;
            for mut ins in stages.stages.into_iter().flat_map(|s| s.instructions) {
                ins.span = ps.stage.span;
                self.exec(&mut st, &ins, &format!("[{label} ONBUILD]"))?;
            }
        }
        let ran = ps
            .stage
            .instructions
            .iter()
            .enumerate()
            .try_for_each(|(n, ins)| {
                let pos = format!("[{label} {}/{total}]", n + 2);
                self.exec(&mut st, ins, &pos)
            });
        // The steps that ran before a failure keep their records.
        self.flush_records(&mut st)?;
        ran?;
        if !st.hits.is_empty() {
            self.store.cache_touch(&st.hits)?;
        }
        Ok(StageResult {
            config: st.config,
            layers: st.layers,
            key: st.key,
        })
    }

    pub(super) fn exec(&self, st: &mut StageState, ins: &Instruction, pos: &str) -> Result<()> {
        let line = ins.span.line;
        match &ins.kind {
            InstructionKind::Env(kvs) => {
                // Every pair sees the environment from before the
                // instruction, as in BuildKit.
                let env = st.scope_env();
                let lx = self.lexer();
                let mut pairs = Vec::new();
                for kv in kvs {
                    let k = lx
                        .process_word(&kv.key, &env)
                        .map_err(|e| self.located(line, &e.to_string()))?;
                    if k.is_empty() {
                        return Err(self.located(line, "ENV names can not be blank"));
                    }
                    let v = lx
                        .process_word(&kv.value, &env)
                        .map_err(|e| self.located(line, &e.to_string()))?;
                    pairs.push((k, v));
                }
                let change: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
                for (k, v) in pairs {
                    st.args.remove(&k);
                    st.set_env(&k, &v);
                }
                self.meta(st, ins, MetaChange::Env(change))?;
            }
            InstructionKind::Arg(decls) => {
                for d in decls {
                    let value = if let Some(v) = self.opts.build_args.get(&d.name) {
                        self.used_args
                            .lock()
                            .expect("used args")
                            .insert(d.name.clone());
                        Some(v.clone())
                    } else if let Some(def) = &d.default {
                        let v = self
                            .lexer()
                            .process_word(def, &st.scope_env())
                            .map_err(|e| self.located(line, &format!("ARG {}: {e}", d.name)))?;
                        Some(v)
                    } else if let Some(Some(g)) = self.plan.global_args.get(&d.name) {
                        Some(g.clone())
                    } else {
                        platform_args().get(&d.name).cloned()
                    };
                    st.args.insert(d.name.clone(), value);
                }
                // ARGs do not change the config, but they do change the
                // environment of every later RUN: that is in RUN's key.
                // BuildKit records them in the history. The key takes the
                // ARGs this line declares; the chain carries earlier ones.
                let args = decls
                    .iter()
                    .map(|d| (d.name.clone(), st.args[&d.name].clone()))
                    .collect();
                self.meta(st, ins, MetaChange::Args(args))?;
            }
            InstructionKind::Label(kvs) => {
                let mut labels = BTreeMap::new();
                for kv in kvs {
                    let k = self.expand(st, &kv.key, line)?;
                    let v = self.expand(st, &kv.value, line)?;
                    labels.insert(k, v);
                }
                st.config.config.labels.extend(labels.clone());
                self.meta(st, ins, MetaChange::Labels(labels))?;
            }
            InstructionKind::Maintainer(m) => {
                st.config.author = Some(m.clone());
                self.meta(st, ins, MetaChange::Maintainer(m.clone()))?;
            }
            InstructionKind::User(u) => {
                let u = self.expand(st, u, line)?;
                // Refused here, where the line is known, rather than when a
                // later RUN or `kiln run` resolves it.
                kiln_runner::user::check_spec(&u)
                    .map_err(|e| self.located(line, &e.to_string()))?;
                st.config.config.user = Some(u.clone());
                self.meta(st, ins, MetaChange::User(u))?;
            }
            InstructionKind::Expose(ports) => {
                let env = st.scope_env();
                let mut added = Vec::new();
                for p in ports {
                    let words = self
                        .lexer()
                        .process_words(p, &env)
                        .map_err(|e| self.located(line, &e.to_string()))?;
                    for w in words {
                        let (port, proto) = match w.split_once('/') {
                            Some((p, proto)) => (p.to_string(), proto.to_ascii_lowercase()),
                            None => (w.clone(), "tcp".to_string()),
                        };
                        let ok = port.split('-').all(|n| n.parse::<u16>().is_ok())
                            && matches!(proto.as_str(), "tcp" | "udp" | "sctp");
                        if !ok {
                            return Err(self.located(
                                line,
                                &format!(
                                    "invalid port {w:?} in EXPOSE (expected PORT[/tcp|udp|sctp])"
                                ),
                            ));
                        }
                        added.push(format!("{port}/{proto}"));
                    }
                }
                for p in &added {
                    st.config.config.exposed_ports.insert(p.clone(), json!({}));
                }
                self.meta(st, ins, MetaChange::Ports(added))?;
            }
            InstructionKind::Volume(vols) => {
                let mut added = Vec::new();
                for v in vols {
                    let v = self.expand(st, v, line)?;
                    if v.is_empty() {
                        return Err(
                            self.located(line, "VOLUME specified can not be an empty string")
                        );
                    }
                    st.config.config.volumes.insert(v.clone(), json!({}));
                    added.push(v);
                }
                self.meta(st, ins, MetaChange::Volumes(added))?;
            }
            InstructionKind::StopSignal(s) => {
                let s = self.expand(st, s, line)?;
                st.config.config.stop_signal = Some(s.clone());
                self.meta(st, ins, MetaChange::Stopsignal(s))?;
            }
            InstructionKind::Shell(sh) => {
                st.config.config.shell = Some(sh.clone());
                self.meta(st, ins, MetaChange::Shell(sh.clone()))?;
            }
            InstructionKind::Cmd(c) => {
                let argv = st.argv(c);
                st.config.config.cmd = Some(argv.clone());
                st.cmd_set = true;
                self.meta(st, ins, MetaChange::Cmd(argv))?;
            }
            InstructionKind::Entrypoint(c) => {
                let argv = st.argv(c);
                st.config.config.entrypoint = Some(argv.clone());
                if !st.cmd_set {
                    st.config.config.cmd = None;
                }
                self.meta(st, ins, MetaChange::Entrypoint(argv))?;
            }
            InstructionKind::Healthcheck(h) => {
                let v = match h {
                    Healthcheck::None => json!({"Test": ["NONE"]}),
                    Healthcheck::Check {
                        test,
                        interval,
                        timeout,
                        start_period,
                        start_interval,
                        retries,
                    } => {
                        let test = match test {
                            Command::Exec(v) => {
                                let mut t = vec!["CMD".to_string()];
                                t.extend(v.iter().cloned());
                                t
                            }
                            Command::Shell(s) => vec!["CMD-SHELL".to_string(), s.clone()],
                        };
                        let mut v = json!({ "Test": test });
                        let ns = |d: &std::time::Duration| d.as_nanos() as u64;
                        if let Some(d) = interval {
                            v["Interval"] = json!(ns(d));
                        }
                        if let Some(d) = timeout {
                            v["Timeout"] = json!(ns(d));
                        }
                        if let Some(d) = start_period {
                            v["StartPeriod"] = json!(ns(d));
                        }
                        if let Some(d) = start_interval {
                            v["StartInterval"] = json!(ns(d));
                        }
                        if let Some(r) = retries {
                            v["Retries"] = json!(r);
                        }
                        v
                    }
                };
                st.config.config.healthcheck = Some(
                    serde_json::from_value(v.clone())
                        .map_err(|e| self.located(line, &format!("HEALTHCHECK: {e}")))?,
                );
                self.meta(st, ins, MetaChange::Healthcheck(v))?;
            }
            InstructionKind::Onbuild(t) => {
                // Stored for images built FROM this one; BuildKit writes
                // no history entry for it.
                st.config.config.on_build.push(t.clone());
                self.meta_key(st, ins, MetaChange::Onbuild(t.clone()))?;
            }
            InstructionKind::Workdir(w) => {
                let w = self.expand(st, w, line)?;
                let abs = if w.starts_with('/') {
                    fsutil::clean_abs(&w)
                } else {
                    fsutil::clean_abs(&format!("{}/{}", st.workdir(), w))
                };
                st.config.config.working_dir = Some(abs.clone());
                // BuildKit creates the directory (owned by the USER); an
                // existing one leaves an empty diff, so no layer.
                let view = self.view(&st.layers)?;
                if view.stat(&abs)?.is_some() {
                    self.meta(st, ins, MetaChange::Workdir(abs))?;
                } else {
                    let owner = match &st.config.config.user {
                        Some(u) if !u.is_empty() => Some(
                            fsutil::resolve_user(&view, u)
                                .map_err(|e| self.located(line, &format!("{e:#}")))?,
                        ),
                        _ => None,
                    };
                    let inputs = StepInputs::Mkdir(MkdirInputs {
                        mkdir: abs.clone(),
                        owner: owner.map(|(u, g)| format!("{u}:{g}")),
                    });
                    self.cached_step(st, ins, pos, inputs, |b, _st, _id| {
                        let pending = b.store.new_snapshot()?;
                        let (comps, _) = view.resolve(&abs, true)?;
                        fsutil::ensure_dirs(pending.upper(), &view, &comps, owner)?;
                        Ok(Some(b.store.commit_snapshot(pending, &b.layer_options())?))
                    })?;
                }
            }
            InstructionKind::Run(r) => self.exec_run(st, ins, r, pos)?,
            InstructionKind::Copy(c) => {
                let req = CopyArgs {
                    add: false,
                    sources: &c.sources,
                    dest: &c.dest,
                    heredocs: &c.heredocs,
                    from: c.from.as_deref(),
                    chown: c.chown.as_deref(),
                    chmod: c.chmod.as_deref(),
                    exclude: &c.exclude,
                    parents: c.parents,
                    unpack: false,
                    link: c.link,
                    checksum: None,
                    keep_git_dir: false,
                };
                self.exec_copy(st, ins, pos, req)?;
            }
            InstructionKind::Add(a) => {
                let req = CopyArgs {
                    add: true,
                    sources: &a.sources,
                    dest: &a.dest,
                    heredocs: &a.heredocs,
                    from: None,
                    chown: a.chown.as_deref(),
                    chmod: a.chmod.as_deref(),
                    exclude: &a.exclude,
                    parents: false,
                    unpack: a.unpack.unwrap_or(true),
                    link: a.link,
                    checksum: a.checksum.as_deref(),
                    keep_git_dir: a.keep_git_dir,
                };
                self.exec_copy(st, ins, pos, req)?;
            }
        }
        Ok(())
    }
}
