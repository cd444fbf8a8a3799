//! One stage: its base, ONBUILD triggers, then each instruction in order.
//! Metadata instructions only change the config; RUN, COPY, ADD and a
//! WORKDIR that creates a directory are cached steps that may add a layer.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{anyhow, Context as _, Result};
use kiln_parser::shell::Lexer;
use kiln_parser::{Command, Healthcheck, Instruction, InstructionKind, Mount, Sharing};
use kiln_runner::{ContainerSpec, MountKind, MountSpec, NetworkMode, RootFs, Stdio};
use kiln_store::{CacheRecord, History, ImageConfig, LayerInfo};
use serde_json::{json, Value};

use super::copy::{self, CopyRequest, Source};
use super::key;
use super::plan::{platform_args, resolve_from, Base, PROXY_ARGS};
use super::NetworkArg;
use super::{Builder, Secret, StageResult};
use crate::error::Failure;
use crate::fsutil::{self, RootView};
use crate::progress::StepId;

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub struct StageState {
    pub config: ImageConfig,
    pub layers: Vec<LayerInfo>,
    pub key: String,
    /// ARGs declared in this stage: name -> value (None: declared, unset).
    pub args: BTreeMap<String, Option<String>>,
    /// CMD was set in this stage (then ENTRYPOINT keeps it).
    pub cmd_set: bool,
    pub all_cached: bool,
    /// `created` of the newest layer step, given to metadata entries so a
    /// cached rebuild reproduces the same config byte for byte.
    pub last_created: Option<String>,
    pub hits: Vec<String>,
    /// Where the stage is: Dockerfile path and stage name. Cache records
    /// carry it so that explanations compare a step with its own past,
    /// not with another project's step at the same line.
    pub place: String,
    /// Records of metadata steps not yet written: a run of them is written
    /// in one transaction (see [`Builder::flush_records`]).
    pub pending: Vec<CacheRecord>,
    /// Bytes of metadata the stage's steps have set so far (see
    /// [`METADATA_MAX`]).
    pub meta_bytes: usize,
    /// Where each variable of `config.config.env` is: ENV and expansion
    /// look a name up instead of searching the list (see
    /// [`StageState::set_env`]; rebuilt whenever the config is replaced).
    pub env_index: HashMap<String, usize>,
}

/// The most metadata (ENV, ARG, LABEL, ... values, as recorded) one stage
/// may set: the largest image config kiln's own registry client accepts
/// (`kiln_store::registry::CONFIG_MAX`, 8 MiB), so that what kiln builds
/// can be pulled back. Many words each under the word limit
/// (`kiln_parser::shell::MAX_WORD_BYTES`) stop here.
pub const METADATA_MAX: usize = kiln_store::registry::CONFIG_MAX as usize;

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

fn epoch_rfc3339(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn history(created: Option<String>, created_by: &str, empty: bool) -> History {
    let mut v = json!({
        "created_by": created_by,
        "comment": "kiln.dockerfile.v0",
    });
    if let Some(c) = created {
        v["created"] = json!(c);
    }
    if empty {
        v["empty_layer"] = json!(true);
    }
    serde_json::from_value(v).expect("history entries always deserialise")
}

/// The name of a `K=V` (or bare `K`) environment entry.
fn env_name(e: &str) -> &str {
    e.split_once('=').map_or(e, |(n, _)| n)
}

/// Where each variable of `env` is (its last entry, the one that counts).
fn index_env(env: &[String]) -> HashMap<String, usize> {
    env.iter()
        .enumerate()
        .map(|(i, e)| (env_name(e).to_string(), i))
        .collect()
}

fn env_lookup<'a>(config: &'a ImageConfig, k: &str) -> Option<&'a str> {
    config
        .config
        .env
        .iter()
        .find_map(|e| e.split_once('=').filter(|(n, _)| *n == k).map(|(_, v)| v))
}

fn default_shell() -> Vec<String> {
    vec!["/bin/sh".into(), "-c".into()]
}

/// The variables a word of this stage sees, looked up where they live
/// instead of copied into a map for every word: an ARG in scope with a
/// value wins, else the image's ENV (see [`StageState::expand_env`]).
pub struct ScopeEnv<'a>(&'a StageState);

impl kiln_parser::shell::Env for ScopeEnv<'_> {
    fn lookup(&self, name: &str) -> Option<&str> {
        if let Some(Some(v)) = self.0.args.get(name) {
            return Some(v);
        }
        let e = self.0.config.config.env.get(*self.0.env_index.get(name)?)?;
        Some(e.split_once('=').map_or("", |(_, v)| v))
    }
}

impl StageState {
    /// Sets `k=v` in the config's environment, in place if it is there.
    fn set_env(&mut self, k: &str, v: &str) {
        let entry = format!("{k}={v}");
        let env = &mut self.config.config.env;
        match self.env_index.get(k) {
            Some(&i) if i < env.len() => env[i] = entry,
            _ => {
                self.env_index.insert(k.to_string(), env.len());
                env.push(entry);
            }
        }
    }

    /// Takes `config` as the stage's config (a cached step's result).
    fn replace_config(&mut self, config: ImageConfig) {
        self.env_index = index_env(&config.config.env);
        self.config = config;
    }

    pub fn scope_env(&self) -> ScopeEnv<'_> {
        ScopeEnv(self)
    }

    /// Variables for word expansion: the image's ENV, then the ARGs in
    /// scope. Whichever was declared last wins: an ENV removes the ARG of
    /// the same name from scope, and an ARG declared after an ENV shadows
    /// it (what BuildKit does, whatever its reference says).
    fn expand_env(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        for e in &self.config.config.env {
            match e.split_once('=') {
                Some((k, v)) => m.insert(k.to_string(), v.to_string()),
                None => m.insert(e.clone(), String::new()),
            };
        }
        for (k, v) in &self.args {
            if let Some(v) = v {
                m.insert(k.clone(), v.clone());
            }
        }
        m
    }

    fn shell(&self) -> Vec<String> {
        self.config
            .config
            .shell
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(default_shell)
    }

    /// The argv of a CMD/ENTRYPOINT: exec form as is, shell form through
    /// the stage's SHELL.
    fn argv(&self, c: &Command) -> Vec<String> {
        match c {
            Command::Exec(v) => v.clone(),
            Command::Shell(s) => {
                let mut v = self.shell();
                v.push(s.clone());
                v
            }
        }
    }

    fn workdir(&self) -> String {
        self.config
            .config
            .working_dir
            .clone()
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".into())
    }
}

impl Builder {
    fn lexer(&self) -> Lexer {
        Lexer::new(self.escape)
    }

    fn expand(&self, st: &StageState, word: &str, line: usize) -> Result<String> {
        self.lexer()
            .process_word(word, &st.scope_env())
            .map_err(|e| self.located(line, &e.to_string()))
    }

    /// An error that shows where in the Dockerfile it happened, BuildKit's way.
    pub fn located(&self, line: usize, msg: &str) -> anyhow::Error {
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
        anyhow::Error::new(Failure::new(1, out))
    }

    fn snapshots(&self, layers: &[LayerInfo]) -> Result<Vec<PathBuf>> {
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

    fn view(&self, layers: &[LayerInfo]) -> Result<RootView> {
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
            let inputs = json!({ "image": name, "id": manifest });
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

    /// Metadata instructions: a new config, a history entry, a new key.
    /// `change` is what the instruction did (e.g. `{"labels": {"a": "1"}}`).
    fn meta(&self, st: &mut StageState, ins: &Instruction, change: Value) -> Result<()> {
        self.push_meta_history(st, ins);
        self.meta_key(st, ins, change)
    }

    fn push_meta_history(&self, st: &mut StageState, ins: &Instruction) {
        let created = self
            .opts
            .source_date_epoch
            .map(epoch_rfc3339)
            .or_else(|| st.last_created.clone());
        st.config
            .history
            .push(history(created, &ins.original, true));
    }

    /// The key of a metadata step chains its parent's key with the change
    /// alone: the parent's key already stands for the whole config before
    /// it, so the step costs the size of its change, not of the config.
    fn meta_key(&self, st: &mut StageState, ins: &Instruction, change: Value) -> Result<()> {
        let size = key::canonical(&change).len();
        st.meta_bytes = st.meta_bytes.saturating_add(size);
        if st.meta_bytes > METADATA_MAX {
            return Err(self.located(
                ins.span.line,
                &format!(
                    "the stage's metadata grows past {METADATA_MAX} bytes with this \
                     instruction ({size} bytes), the largest image config kiln accepts"
                ),
            ));
        }
        let source = format!("{}:{}", self.opts.dockerfile_name, ins.span.line);
        let parent = st.key.clone();
        self.record_meta(st, &ins.original, &source, &parent, change, Value::Null)
    }

    /// A step with no layer (metadata, ARG, FROM): its key chains on, and a
    /// record keeps its inputs so a later miss can be explained. Written
    /// once: a rebuild that hits it writes nothing. An empty `parent` is
    /// the FROM of an image, whose key is the base's own; only that record
    /// keeps a `result` (the base's config and layers, for `--cache-to`).
    fn record_meta(
        &self,
        st: &mut StageState,
        description: &str,
        source: &str,
        parent: &str,
        inputs: Value,
        result: Value,
    ) -> Result<()> {
        let k = if parent.is_empty() {
            st.key.clone()
        } else {
            key::step_key(parent, description, &inputs)
        };
        let hit = self.store.cache_has(&k)?;
        if !hit {
            let now = chrono::Utc::now().timestamp();
            st.pending.push(CacheRecord {
                key: k.clone(),
                parent: (!parent.is_empty()).then(|| parent.to_string()),
                description: description.to_string(),
                source: source.to_string(),
                stage: st.place.clone(),
                inputs: inputs.clone(),
                result,
                layer: None,
                created: now,
                last_used: now,
                hits: 0,
            });
        } else {
            st.hits.push(k.clone());
        }
        self.trace
            .lock()
            .expect("trace")
            .push(super::explain::StepTrace {
                stage: st.place.clone(),
                key: k.clone(),
                parent: parent.to_string(),
                description: description.to_string(),
                source: source.to_string(),
                inputs,
                hit,
                args: st.args.keys().cloned().collect(),
                meta: true,
            });
        st.key = k;
        Ok(())
    }

    /// Writes the records of the metadata steps since the last write.
    fn flush_records(&self, st: &mut StageState) -> Result<()> {
        if !st.pending.is_empty() {
            self.store.cache_put_many(&st.pending)?;
            st.pending.clear();
        }
        Ok(())
    }

    fn exec(&self, st: &mut StageState, ins: &Instruction, pos: &str) -> Result<()> {
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
                self.meta(st, ins, json!({ "env": change }))?;
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
                let args: BTreeMap<&str, &Option<String>> = decls
                    .iter()
                    .map(|d| (d.name.as_str(), &st.args[&d.name]))
                    .collect();
                let change = json!({ "args": args });
                self.meta(st, ins, change)?;
            }
            InstructionKind::Label(kvs) => {
                let mut labels = BTreeMap::new();
                for kv in kvs {
                    let k = self.expand(st, &kv.key, line)?;
                    let v = self.expand(st, &kv.value, line)?;
                    labels.insert(k, v);
                }
                let change = json!({ "labels": labels });
                st.config.config.labels.extend(labels);
                self.meta(st, ins, change)?;
            }
            InstructionKind::Maintainer(m) => {
                st.config.author = Some(m.clone());
                self.meta(st, ins, json!({ "maintainer": m }))?;
            }
            InstructionKind::User(u) => {
                let u = self.expand(st, u, line)?;
                // Refused here, where the line is known, rather than when a
                // later RUN or `kiln run` resolves it.
                kiln_runner::user::check_spec(&u)
                    .map_err(|e| self.located(line, &e.to_string()))?;
                st.config.config.user = Some(u.clone());
                self.meta(st, ins, json!({ "user": u }))?;
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
                self.meta(st, ins, json!({ "ports": added }))?;
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
                self.meta(st, ins, json!({ "volumes": added }))?;
            }
            InstructionKind::StopSignal(s) => {
                let s = self.expand(st, s, line)?;
                st.config.config.stop_signal = Some(s.clone());
                self.meta(st, ins, json!({ "stopsignal": s }))?;
            }
            InstructionKind::Shell(sh) => {
                st.config.config.shell = Some(sh.clone());
                self.meta(st, ins, json!({ "shell": sh }))?;
            }
            InstructionKind::Cmd(c) => {
                let argv = st.argv(c);
                st.config.config.cmd = Some(argv.clone());
                st.cmd_set = true;
                self.meta(st, ins, json!({ "cmd": argv }))?;
            }
            InstructionKind::Entrypoint(c) => {
                let argv = st.argv(c);
                st.config.config.entrypoint = Some(argv.clone());
                if !st.cmd_set {
                    st.config.config.cmd = None;
                }
                self.meta(st, ins, json!({ "entrypoint": argv }))?;
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
                self.meta(st, ins, json!({ "healthcheck": v }))?;
            }
            InstructionKind::Onbuild(t) => {
                // Stored for images built FROM this one; BuildKit writes
                // no history entry for it.
                st.config.config.on_build.push(t.clone());
                self.meta_key(st, ins, json!({ "onbuild": t }))?;
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
                    self.meta(st, ins, json!({ "workdir": abs }))?;
                } else {
                    let owner = match &st.config.config.user {
                        Some(u) if !u.is_empty() => Some(
                            fsutil::resolve_user(&view, u)
                                .map_err(|e| self.located(line, &format!("{e:#}")))?,
                        ),
                        _ => None,
                    };
                    let inputs =
                        json!({ "mkdir": abs, "owner": owner.map(|(u, g)| format!("{u}:{g}")) });
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

    pub fn layer_options(&self) -> kiln_store::LayerOptions {
        kiln_store::LayerOptions {
            source_date_epoch: self.opts.source_date_epoch,
            ..Default::default()
        }
    }

    /// The cached-step protocol: key from parent + step + inputs; on a hit
    /// take the recorded result; on a miss run `exec`, add the layer and
    /// history entry, and record the result with its inputs.
    fn cached_step(
        &self,
        st: &mut StageState,
        ins: &Instruction,
        pos: &str,
        inputs: Value,
        exec: impl FnOnce(&Builder, &mut StageState, StepId) -> Result<Option<LayerInfo>>,
    ) -> Result<()> {
        self.flush_records(st)?;
        let step = ins.original.clone();
        let k = key::step_key(&st.key, &step, &inputs);
        let mut trace = super::explain::StepTrace {
            stage: st.place.clone(),
            key: k.clone(),
            parent: st.key.clone(),
            description: ins.original.clone(),
            source: format!("{}:{}", self.opts.dockerfile_name, ins.span.line),
            inputs: inputs.clone(),
            hit: true,
            args: st.args.keys().cloned().collect(),
            meta: false,
        };
        let id = self.progress.start(&format!("{pos} {}", ins.original));
        if !self.opts.no_cache {
            if let Some(rec) = self.store.cache_get(&k)? {
                if let Some((config, layers)) = self.restore(&rec) {
                    st.replace_config(config);
                    st.layers = layers;
                    st.key = k.clone();
                    st.last_created = st
                        .config
                        .history
                        .last()
                        .and_then(|h| h.created.clone())
                        .or(st.last_created.take());
                    st.hits.push(k);
                    self.trace.lock().expect("trace").push(trace);
                    self.progress.cached(id);
                    return Ok(());
                }
            }
        }
        st.all_cached = false;
        trace.hit = false;
        self.trace.lock().expect("trace").push(trace);
        let t0 = Instant::now();
        let layer = match exec(self, st, id) {
            Ok(l) => l,
            Err(e) => {
                self.progress.error(id, step_error_line(&format!("{e:#}")));
                if e.downcast_ref::<Failure>().is_some() {
                    return Err(e);
                }
                return Err(self.located(ins.span.line, &format!("{e:#}")));
            }
        };
        let created = self
            .opts
            .source_date_epoch
            .map(epoch_rfc3339)
            .unwrap_or_else(now_rfc3339);
        let parent = std::mem::replace(&mut st.key, k.clone());
        st.config.history.push(history(
            Some(created.clone()),
            &ins.original,
            layer.is_none(),
        ));
        if let Some(l) = &layer {
            st.layers.push(l.clone());
        }
        st.config.rootfs.diff_ids = st.layers.iter().map(|l| l.diff_id.clone()).collect();
        st.last_created = Some(created);
        let now = chrono::Utc::now().timestamp();
        self.store.cache_put(&CacheRecord {
            key: k,
            parent: Some(parent),
            description: ins.original.clone(),
            source: format!("{}:{}", self.opts.dockerfile_name, ins.span.line),
            stage: st.place.clone(),
            inputs,
            result: json!({ "config": st.config, "layers": st.layers }),
            layer,
            created: now,
            last_used: now,
            hits: 0,
        })?;
        self.progress.done(id, t0.elapsed());
        Ok(())
    }

    /// A cache record's result, if every layer it names is still stored.
    fn restore(&self, rec: &CacheRecord) -> Option<(ImageConfig, Vec<LayerInfo>)> {
        let config: ImageConfig = serde_json::from_value(rec.result.get("config")?.clone()).ok()?;
        let layers: Vec<LayerInfo> =
            serde_json::from_value(rec.result.get("layers")?.clone()).ok()?;
        if layers.iter().all(|l| self.store.has_blob(&l.digest)) {
            Some((config, layers))
        } else {
            None
        }
    }

    fn resolve_source(
        &self,
        st: &StageState,
        from: &str,
        line: usize,
    ) -> Result<(RootView, Value)> {
        let from = self.expand(st, from, line)?;
        let base = resolve_from(&from, &self.plan.stages, self.plan.stages.len());
        let layers = match base {
            Base::Stage(i) => self.stage_result(i)?.layers.clone(),
            Base::Scratch => vec![],
            // Resolved while the step's cache key is made, outside the
            // step's own error handling: located here, as FROM's base is.
            Base::Image(name) => {
                self.resolve_image(&name)
                    .map_err(|e| self.located(line, &format!("{e:#}")))?
                    .layers
            }
        };
        let ids: Vec<String> = layers.iter().map(|l| l.diff_id.to_string()).collect();
        Ok((self.view(&layers)?, json!({ "from": from, "layers": ids })))
    }

    fn exec_copy(
        &self,
        st: &mut StageState,
        ins: &Instruction,
        pos: &str,
        c: CopyArgs,
    ) -> Result<()> {
        let line = ins.span.line;
        let env = st.expand_env();
        let lx = self.lexer();
        let mut sources = Vec::new();
        let mut heredoc_bodies = Vec::new();
        for h in c.heredocs {
            let content = h.effective_content();
            let body = if h.expand {
                lx.process_word(&content, &env)
                    .map_err(|e| self.located(line, &e.to_string()))?
            } else {
                content
            };
            heredoc_bodies.push((h.name.clone(), body.into_bytes()));
        }
        for s in c.sources {
            sources.push(
                lx.process_word(s, &env)
                    .map_err(|e| self.located(line, &e.to_string()))?,
            );
        }
        let dest_raw = lx
            .process_word(c.dest, &env)
            .map_err(|e| self.located(line, &e.to_string()))?;
        let dest_is_dir_hint =
            dest_raw.ends_with('/') || dest_raw == "." || dest_raw.ends_with("/.");
        let dest = if dest_raw.starts_with('/') {
            dest_raw.clone()
        } else {
            format!("{}/{}", st.workdir(), dest_raw)
        };
        let view = self.view(&st.layers)?;
        let chown = match c.chown {
            Some(spec) => {
                let spec = self.expand(st, spec, line)?;
                Some(
                    fsutil::resolve_user(&view, &spec)
                        .map_err(|e| self.located(line, &format!("{e:#}")))?,
                )
            }
            None => None,
        };
        let chmod = match c.chmod {
            Some(m) => {
                Some(copy::parse_chmod(m).map_err(|e| self.located(line, &format!("{e:#}")))?)
            }
            None => None,
        };
        let exclude = c
            .exclude
            .iter()
            .map(|e| self.expand(st, e, line))
            .collect::<Result<Vec<_>>>()?;
        let downloads = if c.add
            && sources.iter().any(|s| {
                s.starts_with("http://")
                    || s.starts_with("https://")
                    || super::git::parse(s).is_some()
            }) {
            Some(
                tempfile::Builder::new()
                    .prefix("kiln-add-")
                    .tempdir_in(self.store.root().join("tmp"))?,
            )
        } else {
            None
        };
        let checksum = match c.checksum {
            Some(cs) => Some(self.expand(st, cs, line)?),
            None => None,
        };
        let req = CopyRequest {
            checksum,
            download_dir: downloads.as_ref().map(|d| d.path().to_path_buf()),
            add: c.add,
            sources,
            dest,
            dest_is_dir_hint,
            heredoc_bodies,
            chown,
            chmod,
            exclude,
            parents: c.parents,
            unpack: c.unpack,
            keep_git_dir: c.keep_git_dir,
        };
        let (inputs, plan) = match c.from {
            Some(from) => {
                let (src_view, id) = self.resolve_source(st, from, line)?;
                let (inputs, plan) = copy::plan_copy(Source::View(&src_view), id, &req, &view)
                    .map_err(|e| self.located(line, &format!("{e:#}")))?;
                (inputs, plan)
            }
            None => copy::plan_copy(Source::Context(&self.ctx), json!("context"), &req, &view)
                .map_err(|e| self.located(line, &format!("{e:#}")))?,
        };
        let mut inputs = inputs;
        inputs["link"] = json!(c.link);
        self.cached_step(st, ins, pos, inputs, |b, _st, _id| {
            let pending = b.store.new_snapshot()?;
            copy::execute(&plan, pending.upper(), &view, &b.store.layer_limits())?;
            if fsutil::dir_is_empty(pending.upper())? {
                return Ok(None);
            }
            Ok(Some(b.store.commit_snapshot(pending, &b.layer_options())?))
        })
    }

    fn exec_run(
        &self,
        st: &mut StageState,
        ins: &Instruction,
        r: &kiln_parser::Run,
        pos: &str,
    ) -> Result<()> {
        let line = ins.span.line;
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
        // env: image ENV, then ARGs in scope that ENV does not set.
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
        let key_env = env.clone();
        for p in PROXY_ARGS {
            if let Some(v) = self.opts.build_args.get(*p) {
                env.push(format!("{p}={v}"));
            }
        }
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
        let mut mounts = Vec::new();
        let mut mount_inputs = Vec::new();
        let mut binds: Vec<(usize, BindPrep, bool)> = Vec::new();
        let mut secret_env: Vec<(String, PathBuf)> = Vec::new();
        let mut keep: Vec<tempfile::TempDir> = Vec::new();
        let mut relays: Vec<super::ssh::AgentRelay> = Vec::new();
        let mut ssh_auth_sock: Option<String> = None;
        let mut locks: Vec<nix::fcntl::Flock<std::fs::File>> = Vec::new();
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
        for m in &r.mounts {
            match m {
                Mount::Bind {
                    target,
                    source,
                    from,
                    readwrite,
                } => {
                    let target = abs_target(&exp(target)?);
                    let source = exp(source.as_deref().unwrap_or("."))?;
                    // What the mount shows is prepared only if the step
                    // runs (a cache hit needs just the inputs).
                    let (prep, id) = match from {
                        None => {
                            let rel = self.bind_source_in_context(&source, line)?;
                            let listing = self.ctx.describe_subtree(&rel)?;
                            let digest = blake3::hash(serde_json::to_string(&listing)?.as_bytes())
                                .to_hex()
                                .to_string();
                            (
                                BindPrep::Context(rel.clone()),
                                json!({"context": rel, "content": digest}),
                            )
                        }
                        Some(f) => {
                            let (view, id) = self.resolve_source(st, f, line)?;
                            let (comps, found) = view.resolve(&source, true)?;
                            if found.is_none() {
                                return Err(self.located(
                                    line,
                                    &format!("RUN --mount from={f}: {source:?} not found"),
                                ));
                            }
                            (
                                BindPrep::View(view, comps),
                                json!({"from": id, "source": source}),
                            )
                        }
                    };
                    mount_inputs.push(
                        json!({"type": "bind", "target": target, "source": id, "rw": readwrite}),
                    );
                    binds.push((mounts.len(), prep, *readwrite));
                    mounts.push(MountSpec {
                        target,
                        kind: MountKind::Bind {
                            source: PathBuf::new(),
                            readonly: !readwrite,
                        },
                    });
                }
                Mount::Cache {
                    target,
                    id,
                    sharing,
                    mode,
                    uid,
                    gid,
                    readonly,
                    from,
                    source,
                } => {
                    let target = abs_target(&exp(target)?);
                    let cid = id.clone().unwrap_or_else(|| target.clone());
                    // from= seeds the cache with a stage's or image's files
                    // the first time; as in BuildKit, the cache belongs to
                    // (id, base): another base starts another cache.
                    let seed = match (from, source) {
                        (None, None) => None,
                        (None, Some(_)) => {
                            return Err(self.located(
                                line,
                                "RUN --mount=type=cache: source= needs from= (the stage or image it is a path of)",
                            ))
                        }
                        (Some(f), src) => {
                            let src = exp(src.as_deref().unwrap_or("/"))?;
                            let (view, base_id) = self.resolve_source(st, f, line)?;
                            let (comps, found) = view.resolve(&src, true)?;
                            if !found.is_some_and(|f| f.meta.is_dir()) {
                                return Err(self.located(
                                    line,
                                    &format!("RUN --mount=type=cache from={f}: {src:?} is not a directory there"),
                                ));
                            }
                            Some((view, comps, base_id, src))
                        }
                    };
                    let name = match &seed {
                        None => cid.clone(),
                        Some((_, _, base_id, src)) => format!("{cid}\0{base_id}\0{src}"),
                    };
                    let dir = self
                        .store
                        .root()
                        .join("cachemounts")
                        .join(&blake3::hash(name.as_bytes()).to_hex().as_str()[..32]);
                    match &seed {
                        Some((view, comps, _, _)) if !dir.exists() => {
                            // Filled beside and renamed: a concurrent build
                            // sees a whole seed or none.
                            std::fs::create_dir_all(self.store.root().join("cachemounts"))?;
                            let tmp = tempfile::Builder::new()
                                .prefix("kiln-cache-seed-")
                                .tempdir_in(self.store.root().join("tmp"))?;
                            materialize(view, comps, tmp.path())?;
                            let filled = tmp.keep();
                            if std::fs::rename(&filled, &dir).is_err() {
                                // Another build seeded it first.
                                let _ = std::fs::remove_dir_all(&filled);
                            }
                        }
                        _ => std::fs::create_dir_all(&dir)?,
                    }
                    std::fs::write(dir.with_extension("id"), &cid)?;
                    if let Some((_, _, base_id, src)) = &seed {
                        mount_inputs.push(json!({"type": "cache-seed", "target": target, "from": base_id, "source": src}));
                    }
                    let host = match sharing {
                        Sharing::Shared => dir.clone(),
                        Sharing::Locked | Sharing::Private => {
                            let lf = std::fs::OpenOptions::new()
                                .create(true)
                                .truncate(false)
                                .write(true)
                                .open(dir.with_extension("lock"))?;
                            use nix::fcntl::{Flock, FlockArg};
                            let locked =
                                if *sharing == Sharing::Locked {
                                    Some(Flock::lock(lf, FlockArg::LockExclusive).map_err(
                                        |(_, e)| anyhow!("locking cache mount {cid}: {e}"),
                                    )?)
                                } else {
                                    Flock::lock(lf, FlockArg::LockExclusiveNonblock).ok()
                                };
                            match locked {
                                Some(l) => {
                                    locks.push(l);
                                    dir.clone()
                                }
                                None => {
                                    let tmp = tempfile::Builder::new()
                                        .prefix("kiln-cache-")
                                        .tempdir_in(self.store.root().join("tmp"))?;
                                    let p = tmp.path().to_path_buf();
                                    keep.push(tmp);
                                    p
                                }
                            }
                        }
                    };
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
                    mount_inputs.push(
                        json!({"type": "cache", "target": target, "id": cid, "ro": readonly}),
                    );
                    mounts.push(MountSpec {
                        target,
                        kind: MountKind::Bind {
                            source: host,
                            readonly: *readonly,
                        },
                    });
                }
                Mount::Tmpfs { target, size } => {
                    let target = abs_target(&exp(target)?);
                    mount_inputs.push(json!({"type": "tmpfs", "target": target, "size": size}));
                    mounts.push(MountSpec {
                        target,
                        kind: MountKind::Tmpfs { size: *size },
                    });
                }
                Mount::Secret {
                    id,
                    target,
                    env: as_env,
                    required,
                    mode,
                    uid,
                    gid,
                } => {
                    let sid = id
                        .clone()
                        .or_else(|| {
                            target
                                .as_ref()
                                .and_then(|t| t.rsplit('/').next().map(String::from))
                        })
                        .ok_or_else(|| {
                            self.located(line, "RUN --mount=type=secret needs id= or target=")
                        })?;
                    let Some(secret) = self.opts.secrets.get(&sid) else {
                        if *required {
                            return Err(self.located(line, &format!("secret {sid} not found: pass it with --secret id={sid},src=FILE")));
                        }
                        continue;
                    };
                    let tmp = tempfile::Builder::new()
                        .prefix("kiln-secret-")
                        .tempdir_in(self.store.root().join("tmp"))?;
                    let file = tmp.path().join("secret");
                    let data = match secret {
                        Secret::File(p) => std::fs::read(p).with_context(|| {
                            format!("reading secret {sid} from {}", p.display())
                        })?,
                        Secret::Env(v) => std::env::var(v)
                            .map_err(|_| {
                                anyhow!("secret {sid}: environment variable {v} is not set")
                            })?
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
                        mount_inputs.push(json!({"type": "secret", "id": sid, "env": e}));
                        if target.is_none() {
                            keep.push(tmp);
                            continue;
                        }
                    }
                    let t = target
                        .clone()
                        .map(|t| abs_target(&t))
                        .unwrap_or_else(|| format!("/run/secrets/{sid}"));
                    mount_inputs.push(json!({"type": "secret", "id": sid, "target": t}));
                    mounts.push(MountSpec {
                        target: t,
                        kind: MountKind::Bind {
                            source: file,
                            readonly: true,
                        },
                    });
                    keep.push(tmp);
                }
                Mount::Ssh {
                    id,
                    target,
                    required,
                    mode,
                    uid,
                    gid,
                } => {
                    let sid = id.clone().unwrap_or_else(|| "default".to_string());
                    let Some(agent) = self.opts.ssh.get(&sid) else {
                        if *required {
                            return Err(self.located(line, &format!("no SSH agent for id {sid}: pass --ssh {sid}[=SOCKET] (without a socket: $SSH_AUTH_SOCK)")));
                        }
                        continue;
                    };
                    // BuildKit's default place, numbered per step.
                    let t = target
                        .clone()
                        .map(|t| abs_target(&t))
                        .unwrap_or_else(|| format!("/run/buildkit/ssh_agent.{}", relays.len()));
                    let tmp = tempfile::Builder::new()
                        .prefix("kiln-ssh-")
                        .tempdir_in(self.store.root().join("tmp"))?;
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
                    mount_inputs.push(json!({"type": "ssh", "id": sid, "target": t}));
                    mounts.push(MountSpec {
                        target: t,
                        kind: MountKind::Bind {
                            source: sock,
                            readonly: false,
                        },
                    });
                    keep.push(tmp);
                }
            }
        }
        if let Some((target, content)) = &script_file {
            let tmp = tempfile::Builder::new()
                .prefix("kiln-heredoc-")
                .tempdir_in(self.store.root().join("tmp"))?;
            let file = tmp.path().join("script");
            std::fs::write(&file, content)?;
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755))?;
            }
            mount_inputs.push(json!({"type": "heredoc", "target": target, "content": content}));
            mounts.push(MountSpec {
                target: target.clone(),
                kind: MountKind::Bind {
                    source: file,
                    readonly: true,
                },
            });
            keep.push(tmp);
        }
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
        let net_name = match network {
            NetworkMode::Host => "host",
            NetworkMode::None => "none",
            // BuildKit keys the mode too (ExecOp.Network).
            NetworkMode::Private => "default",
        };
        let inputs = json!({
            "argv": argv,
            "env": key_env,
            "user": user,
            "workdir": workdir,
            "network": net_name,
            "mounts": mount_inputs,
        });
        let layers = st.layers.clone();
        let res = self.cached_step(st, ins, pos, inputs, |b, _st, id| {
            let mut mounts = mounts;
            let mut scratch = Vec::new();
            for (i, prep, rw) in binds {
                let host = b.prepare_bind(prep, rw, &mut scratch)?;
                if let MountKind::Bind { source, .. } = &mut mounts[i].kind {
                    *source = host;
                }
            }
            let lowers = b.snapshots(&layers)?;
            let pending = b.store.new_snapshot()?;
            let spec = ContainerSpec {
                rootfs: RootFs {
                    lowers,
                    upper: Some((pending.upper().to_path_buf(), pending.work().to_path_buf())),
                },
                args: argv.clone(),
                env,
                cwd: workdir.clone(),
                user,
                hostname: Some("kiln".into()),
                network,
                mounts,
                readonly_rootfs: false,
                // RUN gets the default filter, as under BuildKit.
                seccomp_unconfined: false,
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
            if fsutil::dir_is_empty(pending.upper())? {
                return Ok(None);
            }
            Ok(Some(b.store.commit_snapshot(pending, &b.layer_options())?))
        });
        drop(relays);
        drop(keep);
        drop(locks);
        res
    }

    /// Runs a RUN container, streaming its output to the progress display
    /// and keeping the last lines for an error message.
    fn run_container(&self, spec: &ContainerSpec, id: StepId) -> Result<(i32, Vec<String>)> {
        let (r, w): (OwnedFd, OwnedFd) = nix::unistd::pipe().map_err(|e| anyhow!("pipe: {e}"))?;
        let w2 = w.try_clone()?;
        let tail = std::thread::scope(|s| -> Result<(i32, Vec<String>)> {
            let reader = s.spawn(move || {
                let mut tail: std::collections::VecDeque<String> = Default::default();
                let f = std::fs::File::from(r);
                for line in BufReader::new(f).split(b'\n') {
                    let Ok(line) = line else { break };
                    let text = String::from_utf8_lossy(&line).into_owned();
                    self.progress.log(id, &text);
                    if tail.len() == 20 {
                        tail.pop_front();
                    }
                    tail.push_back(text);
                }
                tail.into_iter().collect::<Vec<_>>()
            });
            let code = kiln_runner::run(
                &self.runner,
                spec,
                Stdio {
                    stdin: None,
                    stdout: Some(w),
                    stderr: Some(w2),
                },
            );
            let tail = reader.join().unwrap_or_default();
            let code = code.map_err(|e| anyhow!("{e}"))?;
            Ok((code, tail))
        })?;
        Ok(tail)
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
        let tmp = || {
            tempfile::Builder::new()
                .prefix("kiln-bind-")
                .tempdir_in(self.store.root().join("tmp"))
        };
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

/// What a failed step's progress line says: the message itself, not the
/// `Dockerfile:N` heading of a located error (which follows in full).
fn step_error_line(msg: &str) -> &str {
    let msg = msg.rsplit_once("\nERROR: ").map_or(msg, |(_, m)| m);
    msg.lines().next().unwrap_or("")
}

/// Whether the real tree at `path` holds more entries than the context
/// kept of it (then `.dockerignore` excluded something below it).
fn has_excluded(path: &std::path::Path, kept: usize) -> Result<bool> {
    let meta = std::fs::symlink_metadata(path)?;
    if !meta.is_dir() {
        return Ok(false);
    }
    let mut count = 1;
    let mut todo = vec![path.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            count += 1;
            if count > kept {
                return Ok(true);
            }
            if e.file_type()?.is_dir() {
                todo.push(e.path());
            }
        }
    }
    Ok(false)
}

struct CopyArgs<'a> {
    add: bool,
    sources: &'a [String],
    dest: &'a str,
    heredocs: &'a [kiln_parser::Heredoc],
    from: Option<&'a str>,
    chown: Option<&'a str>,
    chmod: Option<&'a str>,
    exclude: &'a [String],
    parents: bool,
    unpack: bool,
    link: bool,
    checksum: Option<&'a str>,
    keep_git_dir: bool,
}

/// Copies the tree at `comps` of a view into `dest` (for bind mounts from
/// another stage).
fn materialize(view: &RootView, comps: &[String], dest: &std::path::Path) -> Result<()> {
    let found = view.resolve(&format!("/{}", comps.join("/")), true)?.1;
    let Some(found) = found else { return Ok(()) };
    if !found.meta.is_dir() {
        let name = comps.last().cloned().unwrap_or_else(|| "file".into());
        std::fs::copy(&found.real, dest.join(name))?;
        return Ok(());
    }
    let mut comps = comps.to_vec();
    fn rec(view: &RootView, comps: &mut Vec<String>, dest: &std::path::Path) -> Result<()> {
        for (name, real) in view.read_dir(comps)? {
            let m = std::fs::symlink_metadata(&real)?;
            let d = dest.join(&name);
            if m.is_dir() {
                std::fs::create_dir(&d)?;
                comps.push(name);
                rec(view, comps, &d)?;
                comps.pop();
            } else if m.file_type().is_symlink() {
                std::os::unix::fs::symlink(std::fs::read_link(&real)?, &d)?;
            } else if m.is_file() {
                std::fs::copy(&real, &d)?;
            }
        }
        Ok(())
    }
    rec(view, &mut comps, dest)
}
