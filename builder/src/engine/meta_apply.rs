//! Metadata instructions (ENV, ARG, LABEL, USER, EXPOSE, HEALTHCHECK,
//! CMD, ...) applied to a stage's config, with BuildKit's expansion rules
//! and errors; what each changed is returned for its key and record
//! (meta.rs).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use anyhow::Result;
use kiln_parser::{Command, Healthcheck, Instruction, InstructionKind};
use serde_json::json;

use super::inputs::MetaChange;
use super::options::BuildArgs;
use super::plan::Plan;
use super::source::Source;
use super::state::StageState;
use super::Builder;

/// What applying a metadata instruction reads: the Dockerfile (for
/// expansion and errors), the build args (and who used them), the plan
/// (global and platform ARGs).
pub(super) struct MetaApply<'a> {
    src: &'a Source,
    build_args: &'a BuildArgs,
    used_args: &'a Mutex<BTreeSet<String>>,
    plan: &'a Plan,
}

impl<'a> MetaApply<'a> {
    pub(super) fn of(b: &'a Builder) -> MetaApply<'a> {
        MetaApply {
            src: &b.src,
            build_args: &b.opts.build_args,
            used_args: &b.used_args,
            plan: &b.plan,
        }
    }

    /// A metadata instruction applied to the stage's config; returns what
    /// it changed, for its key and record.
    pub(super) fn apply(&self, st: &mut StageState, ins: &Instruction) -> Result<MetaChange> {
        let line = ins.span.line;
        match &ins.kind {
            InstructionKind::Env(kvs) => self.env(st, kvs, line),
            InstructionKind::Arg(decls) => self.args(st, decls, line),
            InstructionKind::Expose(ports) => self.expose(st, ports, line),
            InstructionKind::Healthcheck(h) => self.healthcheck(st, h, line),
            InstructionKind::Label(kvs) => {
                let mut labels = BTreeMap::new();
                for kv in kvs {
                    let k = self.src.expand(st, &kv.key, line)?;
                    let v = self.src.expand(st, &kv.value, line)?;
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
                let u = self.src.expand(st, u, line)?;
                // Refused here, where the line is known, rather than when a
                // later RUN or `kiln run` resolves it.
                kiln_runner::user::check_spec(&u)
                    .map_err(|e| self.src.located(line, &e.to_string()))?;
                st.config.config.user = Some(u.clone());
                Ok(MetaChange::User(u))
            }
            InstructionKind::Volume(vols) => {
                let mut added = Vec::new();
                for v in vols {
                    let v = self.src.expand(st, v, line)?;
                    if v.is_empty() {
                        return Err(self
                            .src
                            .located(line, "VOLUME specified can not be an empty string"));
                    }
                    st.config.config.volumes.insert(v.clone(), json!({}));
                    added.push(v);
                }
                Ok(MetaChange::Volumes(added))
            }
            InstructionKind::StopSignal(s) => {
                let s = self.src.expand(st, s, line)?;
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
    fn env(
        &self,
        st: &mut StageState,
        kvs: &[kiln_parser::KeyValue],
        line: usize,
    ) -> Result<MetaChange> {
        // Every pair sees the environment from before the
        // instruction, as in BuildKit.
        let env = st.scope_env();
        let lx = self.src.lexer();
        let mut pairs = Vec::new();
        for kv in kvs {
            let k = lx
                .process_word(&kv.key, &env)
                .map_err(|e| self.src.located(line, &e.to_string()))?;
            if k.is_empty() {
                return Err(self.src.located(line, "ENV names can not be blank"));
            }
            let v = lx
                .process_word(&kv.value, &env)
                .map_err(|e| self.src.located(line, &e.to_string()))?;
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
    fn args(
        &self,
        st: &mut StageState,
        decls: &[kiln_parser::ArgDecl],
        line: usize,
    ) -> Result<MetaChange> {
        for d in decls {
            let value = if let Some(v) = self.build_args.get(&d.name) {
                self.used_args
                    .lock()
                    .expect("used args")
                    .insert(d.name.clone());
                Some(v.clone())
            } else if let Some(def) = &d.default {
                let v = self
                    .src
                    .lexer()
                    .process_word(def, &st.scope_env())
                    .map_err(|e| self.src.located(line, &format!("ARG {}: {e}", d.name)))?;
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
    fn expose(&self, st: &mut StageState, ports: &[String], line: usize) -> Result<MetaChange> {
        let env = st.scope_env();
        let mut added = Vec::new();
        for p in ports {
            let words = self
                .src
                .lexer()
                .process_words(p, &env)
                .map_err(|e| self.src.located(line, &e.to_string()))?;
            for w in words {
                let keys =
                    super::config_rules::expose_keys(&w).map_err(|e| self.src.located(line, &e))?;
                added.extend(keys);
            }
        }
        for p in &added {
            st.config.config.exposed_ports.insert(p.clone(), json!({}));
        }
        Ok(MetaChange::Ports(added))
    }

    /// HEALTHCHECK as Docker stores it.
    fn healthcheck(&self, st: &mut StageState, h: &Healthcheck, line: usize) -> Result<MetaChange> {
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
                .map_err(|e| self.src.located(line, &format!("HEALTHCHECK: {e}")))?,
        );
        Ok(MetaChange::Healthcheck(v))
    }
}
