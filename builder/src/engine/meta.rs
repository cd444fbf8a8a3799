//! Metadata steps (ENV, ARG, LABEL, USER, CMD, ...): no layer, a key that
//! chains the parent's with the change alone, and a record kept for
//! `--explain`.

use std::collections::BTreeMap;

use anyhow::Result;
use kiln_parser::{Command, Healthcheck, Instruction, InstructionKind};
use kiln_store::CacheRecord;
use serde_json::{json, Value};

use super::inputs::{MetaChange, StepInputs};
use super::key;
use super::state::{epoch_rfc3339, history, StageState, METADATA_MAX};
use super::Builder;

impl Builder {
    /// Metadata instructions: a new config, a history entry, a new key.
    /// `change` is what the instruction did (e.g. `{"labels": {"a": "1"}}`).
    pub(super) fn meta(
        &self,
        st: &mut StageState,
        ins: &Instruction,
        change: MetaChange,
    ) -> Result<()> {
        self.push_meta_history(st, ins);
        self.meta_key(st, ins, change)
    }

    pub(super) fn push_meta_history(&self, st: &mut StageState, ins: &Instruction) {
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
    pub(super) fn meta_key(
        &self,
        st: &mut StageState,
        ins: &Instruction,
        change: MetaChange,
    ) -> Result<()> {
        let change = StepInputs::Meta(change);
        let size = key::canonical(&change.to_value()).len();
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
    pub(super) fn record_meta(
        &self,
        st: &mut StageState,
        description: &str,
        source: &str,
        parent: &str,
        inputs: StepInputs,
        result: Value,
    ) -> Result<()> {
        let inputs = inputs.to_value();
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
                origin: None,
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
                origin: None,
            });
        st.key = k;
        Ok(())
    }

    /// Writes the records of the metadata steps since the last write.
    pub(super) fn flush_records(&self, st: &mut StageState) -> Result<()> {
        if !st.pending.is_empty() {
            self.store.cache_put_many(&st.pending)?;
            st.pending.clear();
        }
        Ok(())
    }

    /// A metadata instruction applied to the stage's config; returns what
    /// it changed, for its key and record.
    pub(super) fn apply_meta(&self, st: &mut StageState, ins: &Instruction) -> Result<MetaChange> {
        let line = ins.span.line;
        match &ins.kind {
            InstructionKind::Env(kvs) => self.meta_env(st, kvs, line),
            InstructionKind::Arg(decls) => self.meta_args(st, decls, line),
            InstructionKind::Expose(ports) => self.meta_expose(st, ports, line),
            InstructionKind::Healthcheck(h) => self.meta_healthcheck(st, h, line),
            InstructionKind::Label(kvs) => {
                let mut labels = BTreeMap::new();
                for kv in kvs {
                    let k = self.expand(st, &kv.key, line)?;
                    let v = self.expand(st, &kv.value, line)?;
                    labels.insert(k, v);
                }
                st.config.config.labels.extend(labels.clone());
                Ok(MetaChange::Labels(labels))
            }
            InstructionKind::Maintainer(m) => {
                st.config.author = Some(m.clone());
                Ok(MetaChange::Maintainer(m.clone()))
            }
            InstructionKind::User(u) => {
                let u = self.expand(st, u, line)?;
                // Refused here, where the line is known, rather than when a
                // later RUN or `kiln run` resolves it.
                kiln_runner::user::check_spec(&u)
                    .map_err(|e| self.located(line, &e.to_string()))?;
                st.config.config.user = Some(u.clone());
                Ok(MetaChange::User(u))
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
                Ok(MetaChange::Volumes(added))
            }
            InstructionKind::StopSignal(s) => {
                let s = self.expand(st, s, line)?;
                st.config.config.stop_signal = Some(s.clone());
                Ok(MetaChange::Stopsignal(s))
            }
            InstructionKind::Shell(sh) => {
                st.config.config.shell = Some(sh.clone());
                Ok(MetaChange::Shell(sh.clone()))
            }
            InstructionKind::Cmd(c) => {
                let argv = st.argv(c);
                st.config.config.cmd = super::config_rules::argv_value(argv.clone());
                st.cmd_set = true;
                Ok(MetaChange::Cmd(argv))
            }
            InstructionKind::Entrypoint(c) => {
                let argv = st.argv(c);
                st.config.config.entrypoint = super::config_rules::argv_value(argv.clone());
                if !st.cmd_set {
                    st.config.config.cmd = None;
                }
                Ok(MetaChange::Entrypoint(argv))
            }
            other => unreachable!("{other:?} is not a metadata instruction"),
        }
    }

    /// ENV: every pair sees the environment from before the instruction.
    fn meta_env(
        &self,
        st: &mut StageState,
        kvs: &[kiln_parser::KeyValue],
        line: usize,
    ) -> Result<MetaChange> {
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
        Ok(MetaChange::Env(change))
    }

    /// ARG: each declared name gets its --build-arg, default, global or
    /// platform value.
    fn meta_args(
        &self,
        st: &mut StageState,
        decls: &[kiln_parser::ArgDecl],
        line: usize,
    ) -> Result<MetaChange> {
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
            } else {
                // A global ARG (declared before the first FROM), else one
                // of the automatic platform ARGs of the stage's target.
                let t = &self.plan.targets[self.plan.stages[st.node].target];
                match t.global_args.get(&d.name) {
                    Some(Some(g)) => Some(g.clone()),
                    _ => t.platform_args.get(&d.name).cloned(),
                }
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
        Ok(MetaChange::Args(args))
    }

    /// EXPOSE: ports as `PORT/proto`.
    fn meta_expose(
        &self,
        st: &mut StageState,
        ports: &[String],
        line: usize,
    ) -> Result<MetaChange> {
        let env = st.scope_env();
        let mut added = Vec::new();
        for p in ports {
            let words = self
                .lexer()
                .process_words(p, &env)
                .map_err(|e| self.located(line, &e.to_string()))?;
            for w in words {
                let keys =
                    super::config_rules::expose_keys(&w).map_err(|e| self.located(line, &e))?;
                added.extend(keys);
            }
        }
        for p in &added {
            st.config.config.exposed_ports.insert(p.clone(), json!({}));
        }
        Ok(MetaChange::Ports(added))
    }

    /// HEALTHCHECK as Docker stores it.
    fn meta_healthcheck(
        &self,
        st: &mut StageState,
        h: &Healthcheck,
        line: usize,
    ) -> Result<MetaChange> {
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
        Ok(MetaChange::Healthcheck(v))
    }
}
