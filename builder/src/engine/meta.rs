//! Metadata steps (ENV, ARG, LABEL, USER, CMD, ...): no layer, a key that
//! chains the parent's with the change alone, and a record kept for
//! `--explain`.

use anyhow::Result;
use kiln_parser::Instruction;
use kiln_store::CacheRecord;
use serde_json::Value;

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
        push_meta_history(self.opts.source_date_epoch, st, ins);
        self.meta_key(st, ins, change)
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
            return Err(self.src.located(
                ins.span.line,
                &format!(
                    "the stage's metadata grows past {METADATA_MAX} bytes with this \
                     instruction ({size} bytes), the largest image config kiln accepts"
                ),
            ));
        }
        let source = self.src.at(ins.span.line);
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
}

/// The history entry of a metadata step (`empty_layer`), stamped with
/// SOURCE_DATE_EPOCH or the stage's last time.
pub(super) fn push_meta_history(epoch: Option<i64>, st: &mut StageState, ins: &Instruction) {
    let created = epoch.map(epoch_rfc3339).or_else(|| st.last_created.clone());
    st.config
        .history
        .push(history(created, &ins.original, true));
}

/// Writes the records of the metadata steps since the last write.
pub(super) fn flush_records(store: &kiln_store::Store, st: &mut StageState) -> Result<()> {
    if !st.pending.is_empty() {
        store.cache_put_many(&st.pending)?;
        st.pending.clear();
    }
    Ok(())
}
