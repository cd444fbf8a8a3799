//! One stage: its base, ONBUILD triggers, then each instruction in order.
//! Metadata instructions only change the config (meta.rs); RUN (run_op.rs),
//! COPY, ADD (copy_op.rs) and a WORKDIR that creates a directory are cached
//! steps (cached.rs) that may add a layer.

use std::collections::{BTreeMap, HashMap};

use anyhow::Result;
use kiln_parser::{Instruction, InstructionKind};
use serde_json::json;

use super::copy_op::CopyArgs;
use super::inputs::{MetaChange, MkdirInputs, SourceInputs, StepInputs};
use super::op::MkdirOp;
use super::plan::Base;
use super::state::{index_env, StageState};
use super::{Builder, StageResult};
use crate::fsutil;

impl Builder {
    pub fn run_stage(&self, i: usize) -> Result<StageResult> {
        let ps = &self.plan.stages[i];
        let label = ps.label();
        let steps = StepNumbers::new(
            ps,
            self.plan.dockerfile_stages,
            self.plan.platform_prefix(i),
        );
        // BuildKit shows FROM only for an image (a source of its own).
        let from = match &ps.base {
            Base::Image(n) => Some(self.progress.start(&format!(
                "{} FROM {}",
                steps.label(1),
                kiln_store::reference::parse(n).map_or_else(|_| n.clone(), |r| r.full())
            ))),
            _ => None,
        };
        let (mut config, layers, base_key, base_manifest) = self
            .base_of(&ps.base, i)
            .map_err(|e| self.src.located(ps.stage.span.line, &format!("{e:#}")))?;
        super::inline::strip(&mut config);
        if let Some(id) = from {
            self.progress.done(id, std::time::Duration::ZERO);
        }
        let mut st = StageState {
            node: i,
            last_created: config.created.clone(),
            config,
            layers,
            key: base_key,
            args: BTreeMap::new(),
            cmd_set: false,
            all_cached: true,
            hits: Vec::new(),
            // A foreign platform's steps are explained against their own
            // past, not against the host's at the same line.
            place: if ps.platform == super::platform::Platform::host() {
                format!("{}#{}", self.dockerfile_path, label)
            } else {
                format!("{}#{}@{}", self.dockerfile_path, label, ps.platform)
            },
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
            let df = kiln_parser::parse(&text).map_err(|e| {
                self.src
                    .located(ps.stage.span.line, &format!("ONBUILD {t}: {e}"))
            })?;
            let stages = kiln_parser::parse_stages(&df).map_err(|e| {
                self.src
                    .located(ps.stage.span.line, &format!("ONBUILD {t}: {e}"))
            })?;
            for mut ins in stages.stages.into_iter().flat_map(|s| s.instructions) {
                ins.span = ps.stage.span;
                self.exec(&mut st, &ins, &format!("[{label} ONBUILD]"))?;
            }
        }
        let mut n = steps.first;
        let ran = ps.stage.instructions.iter().try_for_each(|ins| {
            if is_filesystem_step(&ins.kind) {
                n += 1;
            }
            self.exec(&mut st, ins, &steps.label(n))
        });
        // The steps that ran before a failure keep their records.
        super::meta::flush_records(&self.store, &mut st)?;
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

    /// How progress lines of a multi-platform build name node `i`'s
    /// platform (`linux/arm64`, `linux/amd64->arm64`); none otherwise.
    pub(super) fn exec(&self, st: &mut StageState, ins: &Instruction, pos: &str) -> Result<()> {
        match &ins.kind {
            InstructionKind::Run(r) => self.exec_run(st, ins, r, pos),
            InstructionKind::Copy(c) => self.exec_copy(st, ins, pos, CopyArgs::copy(c)),
            InstructionKind::Add(a) => self.exec_copy(st, ins, pos, CopyArgs::add(a)),
            InstructionKind::Workdir(w) => self.exec_workdir(st, ins, w, pos),
            InstructionKind::Onbuild(t) => {
                // Stored for images built FROM this one; BuildKit writes
                // no history entry for it.
                st.config.config.on_build.push(t.clone());
                self.meta_key(st, ins, MetaChange::Onbuild(t.clone()))
            }
            _ => {
                let change = super::meta_apply::MetaApply::of(self).apply(st, ins)?;
                self.meta(st, ins, change)
            }
        }
    }

    /// WORKDIR: a metadata step for `/`, else a cached step that makes a
    /// layer (creating the directory, owned by the USER, when it is not
    /// there), as BuildKit 0.13 does.
    fn exec_workdir(
        &self,
        st: &mut StageState,
        ins: &Instruction,
        w: &str,
        pos: &str,
    ) -> Result<()> {
        let line = ins.span.line;
        let w = self.src.expand(st, w, line)?;
        let abs = if w.starts_with('/') {
            fsutil::clean_abs(&w)
        } else {
            fsutil::clean_abs(&format!("{}/{}", st.workdir(), w))
        };
        st.config.config.working_dir = Some(super::config_rules::working_dir_value(&w, &abs));
        // BuildKit makes the directory (owned by the USER) in a layer of
        // its own, an empty one when it exists; only `/` gets no mkdir and
        // so no layer.
        let view = super::lazy_view::LazyView::new(self.store.clone(), &st.layers);
        if abs == "/" {
            // No layer, but a step of its own in BuildKit's progress.
            let id = self.progress.start(&format!("{pos} {}", ins.original));
            self.meta(st, ins, MetaChange::Workdir(abs))?;
            let hit = self
                .trace
                .lock()
                .expect("trace")
                .last()
                .is_some_and(|t| t.hit);
            if hit && !self.opts.no_cache {
                self.progress.cached(id);
            } else {
                self.progress.done(id, std::time::Duration::ZERO);
            }
            Ok(())
        } else {
            // Whether it exists matters for the key only with a USER (its
            // owner); without one the root is looked into only on a miss.
            let user = st.config.config.user.clone().filter(|u| !u.is_empty());
            let exists = match &user {
                Some(_) => Some(view.get()?.stat(&abs)?.is_some_and(|f| f.meta.is_dir())),
                None => None,
            };
            // An existing directory is left as it is: no owner to find.
            let owner = match &user {
                Some(u) if exists == Some(false) => Some(
                    fsutil::resolve_user(view.get()?, u)
                        .map_err(|e| self.src.located(line, &format!("{e:#}")))?,
                ),
                _ => None,
            };
            let op = MkdirOp {
                inputs: MkdirInputs {
                    mkdir: abs,
                    owner: owner.map(|(u, g)| format!("{u}:{g}")),
                },
                view,
                owner,
                exists,
            };
            self.cached_step(st, ins, pos, op)
        }
    }
}

/// Whether BuildKit counts an instruction in a stage's `[n/N]`: the steps
/// that are filesystem operations (FROM of an image is counted apart).
fn is_filesystem_step(kind: &InstructionKind) -> bool {
    matches!(
        kind,
        InstructionKind::Run(_)
            | InstructionKind::Copy(_)
            | InstructionKind::Add(_)
            | InstructionKind::Workdir(_)
    )
}

/// How progress lines number a stage's steps, as BuildKit does: `[2/4]`,
/// `[build 2/4]` when the Dockerfile has several stages, the number
/// padded to the width of the total (`[ 1/11]`).
struct StepNumbers {
    prefix: String,
    total: usize,
    /// The number before the first instruction's: 1 after FROM an image.
    first: usize,
}

impl StepNumbers {
    fn new(ps: &super::plan::PlannedStage, stages: usize, platform: Option<String>) -> StepNumbers {
        let first = usize::from(matches!(ps.base, Base::Image(_)));
        let steps = ps
            .stage
            .instructions
            .iter()
            .filter(|i| is_filesystem_step(&i.kind))
            .count();
        let mut prefix = platform.map(|p| p + " ").unwrap_or_default();
        if stages > 1 {
            prefix.push_str(&ps.label());
            prefix.push(' ');
        }
        StepNumbers {
            prefix,
            total: first + steps,
            first,
        }
    }

    fn label(&self, n: usize) -> String {
        let width = self.total.to_string().len();
        format!("[{}{n:>width$}/{}]", self.prefix, self.total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `[n/N]` of each numbered line of each stage: FROM of an image,
    /// then every filesystem step, as a build shows them.
    fn numbers(df: &str) -> Vec<Vec<String>> {
        let parsed = kiln_parser::parse(df).unwrap();
        let stages = kiln_parser::parse_stages(&parsed).unwrap();
        let plan = super::super::plan::plan(stages, '\\', &Default::default(), None).unwrap();
        plan.stages
            .iter()
            .map(|ps| {
                let steps = StepNumbers::new(ps, plan.dockerfile_stages, None);
                let mut n = steps.first;
                let mut out: Vec<String> = (n == 1).then(|| steps.label(1)).into_iter().collect();
                for ins in &ps.stage.instructions {
                    if is_filesystem_step(&ins.kind) {
                        n += 1;
                        out.push(steps.label(n));
                    }
                }
                out
            })
            .collect()
    }

    // What BuildKit 0.13 (Docker 26.1) printed for the same Dockerfiles.
    #[test]
    fn steps_are_numbered_as_buildkit_numbers_them() {
        let one =
            "FROM scratch\nCOPY f /f\nENV A=1\nWORKDIR /w\nLABEL x=1\nCOPY g /g\nWORKDIR /w\n";
        assert_eq!(numbers(one), [["[1/4]", "[2/4]", "[3/4]", "[4/4]"]]);
        let named_alone = "FROM scratch AS only\nCOPY f /f\n";
        assert_eq!(numbers(named_alone), [["[1/1]"]]);
        let two = "FROM scratch AS build\nCOPY f /f\nENV A=1\nFROM scratch\n\
                   COPY --from=build /f /f2\nCOPY g /g\nONBUILD RUN x\n";
        assert_eq!(
            numbers(two),
            [vec!["[build 1/1]"], vec!["[stage-1 1/2]", "[stage-1 2/2]"]]
        );
        let from_stage = "FROM scratch AS a\nCOPY f /f\nFROM a\nCOPY g /g\nWORKDIR /x\n";
        assert_eq!(numbers(from_stage)[1], ["[stage-1 1/2]", "[stage-1 2/2]"]);
        let mut eleven = "FROM busybox\n".to_string();
        for i in 1..=10 {
            eleven.push_str(&format!("COPY f /f{i}\n"));
        }
        let n = &numbers(&eleven)[0];
        assert_eq!(
            (n[0].as_str(), n[5].as_str(), n[10].as_str()),
            ("[ 1/11]", "[ 6/11]", "[11/11]")
        );
    }
}
