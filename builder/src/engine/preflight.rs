//! Before any step runs: every stage's base image is resolved for the
//! stage's platform, and every platform whose programs a RUN step starts
//! is checked to run here (natively, or emulated through a binfmt_misc
//! handler), so that a missing base or emulator is the first thing a user
//! reads, never "exec format error" from inside a step.

use anyhow::Result;
use kiln_parser::InstructionKind;

use super::plan::Base;
use super::platform::Platform;
use super::Builder;
use crate::error::Failure;

impl Builder {
    pub(super) fn preflight(&self) -> Result<()> {
        // What each node's programs are built for: its base image's
        // platform (the ELF files a RUN starts are the image's).
        let mut runs_as: Vec<Option<Platform>> = vec![None; self.plan.stages.len()];
        for &n in &self.plan.order {
            let ps = &self.plan.stages[n];
            let p = match &ps.base {
                Base::Scratch => ps.platform.clone(),
                Base::Stage(j) => runs_as[*j].clone().unwrap_or_else(|| ps.platform.clone()),
                Base::Image(name) => {
                    let img = self
                        .resolve_image(name, n)
                        .map_err(|e| self.src.located(ps.stage.span.line, &format!("{e:#}")))?;
                    Platform::of_config(&img.config)
                }
            };
            runs_as[n] = Some(p);
        }
        let mut checked: Vec<Platform> = Vec::new();
        for &n in &self.plan.order {
            let ps = &self.plan.stages[n];
            let has_run = ps
                .stage
                .instructions
                .iter()
                .any(|i| matches!(i.kind, InstructionKind::Run(_)));
            let Some(p) = runs_as[n].as_ref().filter(|_| has_run) else {
                continue;
            };
            if checked.contains(p) {
                continue;
            }
            checked.push(p.clone());
            match kiln_runner::platform::check(&p.os, &p.arch, p.variant.as_deref()) {
                Ok(kiln_runner::platform::Execution::Native) => {}
                Ok(kiln_runner::platform::Execution::Emulated { handler, .. }) => {
                    self.progress.info(&format!(
                        "{p}: RUN steps run under emulation ({handler}), several times slower than native"
                    ));
                }
                Err(e) => {
                    return Err(Failure::new(
                        1,
                        format!(
                            "kiln: stage {} has RUN steps for {p}, which cannot run on this machine: {e}",
                            ps.label()
                        ),
                    )
                    .into())
                }
            }
        }
        Ok(())
    }
}
