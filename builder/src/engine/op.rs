//! Ops: each step of a stage that may add a layer is a value with two
//! sides, as BuildKit's solver `Op` has (`CacheMap` + `Exec`): the inputs
//! its cache key is made of, and how it produces its layer on a miss. The
//! cache protocol ([`Builder::cached_step`]) takes any op and knows nothing
//! of what it does; metadata steps (ENV, LABEL, ...) are ops with no exec:
//! their [`MetaChange`](super::inputs::MetaChange) is all there is.

use anyhow::Result;
use kiln_store::LayerInfo;

use super::copy::{self, CopyPlan};
use super::inputs::{ExecInputs, FileInputs, MkdirInputs, StepInputs};
use super::lazy_view::LazyView;
use super::run_op::RunStep;
use super::Builder;
use crate::fsutil;
use crate::progress::StepId;

pub(super) trait Op {
    /// What the step's key is made of.
    fn cache_map(&self) -> StepInputs;
    /// Produces the step's layer over the stage's current root (None: the
    /// step changed nothing).
    fn exec(self, b: &Builder, id: StepId) -> Result<Option<LayerInfo>>;
}

/// RUN: a process run by the build's executor over the stage's layers.
pub(super) struct ExecOp {
    pub inputs: ExecInputs,
    pub step: RunStep,
    pub layers: Vec<LayerInfo>,
}

impl Op for ExecOp {
    fn cache_map(&self) -> StepInputs {
        StepInputs::Exec(self.inputs.clone())
    }

    fn exec(self, b: &Builder, id: StepId) -> Result<Option<LayerInfo>> {
        b.run_step(self.step, &self.layers, id)
    }
}

/// COPY and ADD: the planned items written into a new snapshot.
pub(super) struct FileOp {
    pub inputs: FileInputs,
    pub plan: CopyPlan,
    /// The stage's root, for destinations that exist already.
    pub view: LazyView,
}

impl Op for FileOp {
    fn cache_map(&self) -> StepInputs {
        StepInputs::File(self.inputs.clone())
    }

    fn exec(self, b: &Builder, _id: StepId) -> Result<Option<LayerInfo>> {
        let pending = b.store.new_snapshot()?;
        copy::execute(
            &self.plan,
            pending.upper(),
            self.view.get()?,
            &b.store.layer_limits(),
        )?;
        // A COPY that changes nothing still makes its (empty) layer, as
        // in BuildKit 0.13.
        Ok(Some(
            b.store.commit_snapshot(pending, &b.opts.layer_options())?,
        ))
    }
}

/// A WORKDIR: creates its directory (owned by the USER) unless it exists;
/// either way a layer of its own, an empty one for an existing directory,
/// as BuildKit 0.13 makes.
pub(super) struct MkdirOp {
    pub inputs: MkdirInputs,
    pub view: LazyView,
    pub owner: Option<(u32, u32)>,
    /// Known already when the key needed it (a USER to own it).
    pub exists: Option<bool>,
}

impl Op for MkdirOp {
    fn cache_map(&self) -> StepInputs {
        StepInputs::Mkdir(self.inputs.clone())
    }

    fn exec(self, b: &Builder, _id: StepId) -> Result<Option<LayerInfo>> {
        let pending = b.store.new_snapshot()?;
        let view = self.view.get()?;
        let exists = match self.exists {
            Some(e) => e,
            None => view
                .stat(&self.inputs.mkdir)?
                .is_some_and(|f| f.meta.is_dir()),
        };
        if !exists {
            let (comps, _) = view.resolve(&self.inputs.mkdir, true)?;
            fsutil::ensure_dirs(pending.upper(), view, &comps, self.owner)?;
        }
        Ok(Some(
            b.store.commit_snapshot(pending, &b.opts.layer_options())?,
        ))
    }
}
