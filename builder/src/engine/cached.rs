//! The cached-step protocol every layer step goes through: key, hit or
//! run, record.

use std::time::Instant;

use anyhow::Result;
use kiln_parser::Instruction;
use kiln_store::{CacheRecord, ImageConfig, LayerInfo};
use serde_json::json;

use super::key;
use super::op::Op;
use super::state::{epoch_rfc3339, history, now_rfc3339, StageState};
use super::Builder;
use crate::error::Failure;

impl Builder {
    /// The cached-step protocol: key from parent + step + the op's inputs;
    /// on a hit take the recorded result; on a miss run the op, add the
    /// layer and history entry, and record the result with its inputs.
    pub(super) fn cached_step(
        &self,
        st: &mut StageState,
        ins: &Instruction,
        pos: &str,
        op: impl Op,
    ) -> Result<()> {
        let inputs = op.cache_map().to_value();
        super::meta::flush_records(&self.store, st)?;
        let step = ins.original.clone();
        let k = key::step_key(&st.key, &step, &inputs);
        let mut trace = super::explain::StepTrace {
            stage: st.place.clone(),
            key: k.clone(),
            parent: st.key.clone(),
            description: ins.original.clone(),
            source: self.src.at(ins.span.line),
            inputs: inputs.clone(),
            hit: true,
            args: st.args.keys().cloned().collect(),
            meta: false,
            origin: None,
        };
        let id = self.progress.start(&format!("{pos} {}", ins.original));
        if !self.opts.no_cache {
            if let Some(rec) = self.store.cache_get(&k)? {
                if let Some((config, layers)) = restore(&self.store, &rec) {
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
                    let from = self.opts.explain.then_some(rec.origin.as_deref()).flatten();
                    self.progress.cached_from(id, from);
                    trace.origin = rec.origin;
                    self.trace.lock().expect("trace").push(trace);
                    return Ok(());
                }
            }
        }
        st.all_cached = false;
        trace.hit = false;
        self.trace.lock().expect("trace").push(trace);
        let t0 = Instant::now();
        let layer = match op.exec(self, id) {
            Ok(l) => l,
            Err(e) => {
                self.progress.error(id, step_error_line(&format!("{e:#}")));
                if e.downcast_ref::<Failure>().is_some() {
                    return Err(e);
                }
                return Err(self.src.located_cause(ins.span.line, e));
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
            source: self.src.at(ins.span.line),
            stage: st.place.clone(),
            inputs,
            result: json!({ "config": st.config, "layers": st.layers }),
            layer,
            created: now,
            last_used: now,
            hits: 0,
            origin: None,
        })?;
        self.progress.done(id, t0.elapsed());
        Ok(())
    }
}

/// What a failed step's progress line says: the message itself, not the
/// `Dockerfile:N` heading of a located error (which follows in full).
fn step_error_line(msg: &str) -> &str {
    let msg = msg.rsplit_once("\nERROR: ").map_or(msg, |(_, m)| m);
    msg.lines().next().unwrap_or("")
}

/// A cache record's result, if every layer it names is still stored
/// or known remotely (fetched only if a later step runs on it or an
/// exporter reads it).
fn restore(store: &kiln_store::Store, rec: &CacheRecord) -> Option<(ImageConfig, Vec<LayerInfo>)> {
    let config: ImageConfig = serde_json::from_value(rec.result.get("config")?.clone()).ok()?;
    let layers: Vec<LayerInfo> = serde_json::from_value(rec.result.get("layers")?.clone()).ok()?;
    if layers.iter().all(|l| store.blob_available(&l.digest)) {
        Some((config, layers))
    } else {
        None
    }
}
