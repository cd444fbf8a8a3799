//! The inline build cache (`--cache-to type=inline`): the cache records of
//! the image's own steps carried in its config, under the top-level key
//! [`CONFIG_KEY`], as BuildKit carries its own under
//! `moby.buildkit.cache.v0`. Pushing the image pushes its cache; `--cache-from
//! IMAGE` on another machine reads the config and nothing else: the layers
//! the records name are the image's own, known remotely until a step or an
//! exporter needs their bytes.
//!
//! The document names layers by diffID, never by blob digest: the image's
//! manifest says which blob holds each (a push may have recompressed them),
//! so a runner that imports the records, hits every step and exports again
//! writes the same config, and the image keeps its ID.

use std::collections::HashMap;

use anyhow::{anyhow, bail, Result};
use kiln_store::{CacheRecord, ImageConfig, LayerInfo, Store};
use serde_json::{json, Value};

use super::portable::{layers_of, put_new, record_from_json, record_json};

/// The image config key of kiln's inline cache.
pub const CONFIG_KEY: &str = "kiln.cache.v1";
/// BuildKit's (its cache keys are its own: kiln cannot use them).
pub const BUILDKIT_KEY: &str = "moby.buildkit.cache.v0";

/// The diffID of a layer descriptor as the records keep it.
fn diff_id_of(v: &Value) -> Value {
    v.get("diff_id").cloned().unwrap_or(Value::Null)
}

/// Every layer a record names (its result's layers, its own layer)
/// replaced by `f`; None when `f` is.
fn map_layers(mut v: Value, f: impl Fn(&Value) -> Option<Value>) -> Option<Value> {
    if let Some(layers) = v
        .get_mut("result")
        .and_then(|r| r.get_mut("layers"))
        .and_then(Value::as_array_mut)
    {
        for l in layers.iter_mut() {
            *l = f(l)?;
        }
    }
    if let Some(l) = v.get_mut("layer").filter(|l| !l.is_null()) {
        *l = f(l)?;
    }
    Some(v)
}

/// A record as the inline document keeps it: its layers by diffID.
fn to_inline(r: &CacheRecord) -> Value {
    map_layers(record_json(r), |l| Some(diff_id_of(l))).expect("diff_id_of always gives a value")
}

/// A record of the inline document back, its layers the image's (`by_diff`);
/// `None` when it names a layer the image does not have.
fn from_inline(
    v: &Value,
    by_diff: &HashMap<&str, &LayerInfo>,
    origin: &str,
) -> Option<CacheRecord> {
    let resolve = |d: &Value| -> Option<Value> {
        let l = by_diff.get(d.as_str()?)?;
        serde_json::to_value(l).ok()
    };
    record_from_json(&map_layers(v.clone(), resolve)?, origin)
}

/// The inline cache document of the records `keys` names (the image's
/// chain of steps), sorted by key so the same records give the same bytes.
/// `epoch` (SOURCE_DATE_EPOCH): the records are dated by it, as the image
/// is, so that a build again from scratch gives the same config.
pub fn document(store: &Store, keys: &[String], epoch: Option<i64>) -> Result<Value> {
    let mut records = Vec::new();
    for k in keys {
        if let Some(r) = store.cache_get(k)? {
            records.push(r);
        }
    }
    records.sort_by(|a, b| a.key.cmp(&b.key));
    records.dedup_by(|a, b| a.key == b.key);
    if let Some(t) = epoch {
        for r in &mut records {
            r.created = t;
        }
    }
    Ok(json!({
        "records": records.iter().map(to_inline).collect::<Vec<_>>(),
    }))
}

/// `config` with the inline cache `doc` in it.
pub fn attach(config: &mut ImageConfig, doc: Value) {
    config.extra.insert(CONFIG_KEY.to_string(), doc);
}

/// A base image's config as a stage starts from it: without the inline
/// caches it carries (kiln's or BuildKit's), which describe the base's
/// build, not this one.
pub fn strip(config: &mut ImageConfig) {
    config.extra.remove(CONFIG_KEY);
    config.extra.remove(BUILDKIT_KEY);
}

/// Imports the inline cache of an image config (`config`: its bytes;
/// `layers`: the image's layers, what the records' diffIDs resolve to).
/// Returns the records new to the store and the warnings.
pub fn import_config(
    store: &Store,
    config: &[u8],
    layers: &[LayerInfo],
    origin: &str,
) -> Result<(usize, Vec<String>)> {
    let v: Value =
        serde_json::from_slice(config).map_err(|e| anyhow!("its config is not JSON: {e}"))?;
    let Some(doc) = v.get(CONFIG_KEY) else {
        if v.get(BUILDKIT_KEY).is_some() {
            bail!("its config carries BuildKit's inline cache ({BUILDKIT_KEY}), whose keys kiln cannot use; build it with kiln and --cache-to type=inline");
        }
        bail!("its config carries no inline cache (build it with --cache-to type=inline)");
    };
    let by_diff: HashMap<&str, &LayerInfo> =
        layers.iter().map(|l| (l.diff_id.as_str(), l)).collect();
    let mut warnings = Vec::new();
    let mut recs = Vec::new();
    let list = doc
        .get("records")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut foreign = 0;
    for r in list {
        match from_inline(r, &by_diff, origin) {
            Some(rec)
                if layers_of(&rec)
                    .iter()
                    .all(|l| store.blob_available(&l.digest)) =>
            {
                recs.push(rec)
            }
            _ => foreign += 1,
        }
    }
    if foreign > 0 {
        warnings.push(format!(
            "{foreign} inline cache records ignored: invalid, or naming layers the image does not have"
        ));
    }
    Ok((put_new(store, recs)?, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(n: u8) -> LayerInfo {
        let hex = |c: u8| format!("sha256:{}", format!("{c:02x}").repeat(32));
        LayerInfo {
            digest: hex(n).parse().unwrap(),
            diff_id: hex(n + 100).parse().unwrap(),
            size: 10,
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
        }
    }

    #[test]
    fn layers_travel_by_diff_id_and_come_back_as_the_images() {
        let local = layer(1);
        let rec = CacheRecord {
            key: "a".repeat(64),
            parent: Some("b".repeat(64)),
            description: "RUN x".into(),
            source: "Dockerfile:2".into(),
            stage: "/d/Dockerfile#0".into(),
            inputs: json!({"argv": ["x"]}),
            result: json!({"config": {"os": "linux"}, "layers": [local]}),
            layer: Some(local.clone()),
            created: 7,
            last_used: 9,
            hits: 3,
            origin: None,
        };
        let v = to_inline(&rec);
        assert_eq!(v["layer"], json!(local.diff_id.to_string()));
        assert_eq!(v["result"]["layers"], json!([local.diff_id.to_string()]));
        // The pushed image holds the same diffID in another blob.
        let pushed = LayerInfo {
            digest: layer(2).digest,
            ..local.clone()
        };
        let by_diff: HashMap<&str, &LayerInfo> = [(pushed.diff_id.as_str(), &pushed)].into();
        let back = from_inline(&v, &by_diff, "type=registry,ref=h/a:1").unwrap();
        assert_eq!(back.layer, Some(pushed.clone()));
        assert_eq!(back.result["layers"], json!([pushed]));
        assert_eq!(back.created, 7);
        assert_eq!(back.hits, 0);
        assert_eq!(back.origin.as_deref(), Some("type=registry,ref=h/a:1"));
        // A layer the image does not have: the record is not imported.
        assert!(from_inline(&v, &HashMap::new(), "o").is_none());
    }

    #[test]
    fn a_base_images_inline_caches_are_not_inherited() {
        let mut c = ImageConfig::default();
        attach(&mut c, json!({"records": []}));
        c.extra.insert(BUILDKIT_KEY.into(), json!("e30="));
        c.extra.insert("other".into(), json!(1));
        strip(&mut c);
        assert_eq!(c.extra.keys().collect::<Vec<_>>(), vec!["other"]);
    }
}
