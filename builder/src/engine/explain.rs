//! Why a step missed the cache, in words a person reads at a glance: the
//! nearest earlier record for the same position, and the inputs that
//! differ between it and this build's step. Records are looked up one by
//! one through indexes, never read all: a build's explanation costs its
//! own missed steps, not the size of the cache.

use std::collections::{BTreeMap, HashMap};

use kiln_store::{CacheNear, CacheRecord, NearestQuery};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One step of a build as the cache saw it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepTrace {
    pub stage: String,
    pub key: String,
    pub parent: String,
    pub description: String,
    pub source: String,
    pub inputs: Value,
    pub hit: bool,
    /// Names of the build args in scope (to word env changes).
    pub args: Vec<String>,
    /// A step that makes no layer (metadata, ARG, FROM).
    pub meta: bool,
    /// A hit on an imported record: the `--cache-from` source it came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

/// Finds the newest earlier record near a step (an indexed lookup in the
/// store; a list in tests).
pub type Nearest<'a> = dyn FnMut(NearestQuery) -> anyhow::Result<Option<CacheRecord>> + 'a;

fn first_word(s: &str) -> &str {
    s.split_whitespace().next().unwrap_or(s)
}

/// For each step of this build, the first missed step up its parent
/// chain whose own parent was not missed: the step whose change it
/// inherits (`None` when its parent was not missed). One pass over the
/// build, in order: a parent is traced before its children.
pub fn root_causes(this_build: &[StepTrace]) -> Vec<Option<usize>> {
    let mut missed: HashMap<&str, usize> = HashMap::new();
    let mut roots: Vec<Option<usize>> = Vec::with_capacity(this_build.len());
    for (i, t) in this_build.iter().enumerate() {
        let root = missed
            .get(t.parent.as_str())
            .filter(|&&p| p != i)
            .map(|&p| roots.get(p).copied().flatten().unwrap_or(p));
        roots.push(root);
        if !t.hit {
            missed.entry(t.key.as_str()).or_insert(i);
        }
    }
    roots
}

/// Why `t` missed, given the root cause of its miss in this build (see
/// [`root_causes`]) and the records the cache holds, looked up one at a
/// time: the newest with the same parent (and the same instruction, if
/// any), else the newest at the same place in the same stage. Only records
/// created at or before `before` count, when given.
pub fn explain_step(
    t: &StepTrace,
    root: Option<&StepTrace>,
    nearest: &mut Nearest,
    before: Option<i64>,
    no_cache: bool,
) -> anyhow::Result<String> {
    if no_cache && t.source != "base" {
        return Ok("--no-cache was given".into());
    }
    if let Some(root) = root {
        return Ok(format!(
            "parent step changed (see {} at {})",
            first_word(&root.description),
            root.source
        ));
    }
    let by_parent = CacheNear::Parent(&t.parent);
    let query = |near, description| NearestQuery {
        near,
        description,
        not_key: &t.key,
        created_at_most: before,
    };
    if let Some(r) = nearest(query(by_parent, Some(&t.description)))? {
        return Ok(diff_inputs(&r.inputs, &t.inputs, &t.args).join(", "));
    }
    if let Some(r) = nearest(query(by_parent, None))? {
        // A metadata instruction's text is its change (`LABEL a=2` after
        // `LABEL a=1`): what it set is told, not the text.
        if t.meta && first_word(&r.description) == first_word(&t.description) {
            let d = diff_inputs(&r.inputs, &t.inputs, &t.args);
            if d != ["inputs changed"] {
                return Ok(d.join(", "));
            }
        }
        return Ok(format!("instruction changed (was `{}`)", r.description));
    }
    let by_place = CacheNear::Place {
        stage: &t.stage,
        source: &t.source,
    };
    if let Some(r) = nearest(query(by_place, Some(&t.description)))? {
        if r.inputs != t.inputs {
            return Ok(diff_inputs(&r.inputs, &t.inputs, &t.args).join(", "));
        }
        return Ok("an earlier step's result changed since this step last ran".into());
    }
    Ok("first build of this step: no earlier cache record".into())
}

fn short(h: &str) -> String {
    h.chars().take(8).collect::<String>() + ".."
}

/// One line of a COPY listing: "f 644 123 <blake3>", "l -> target", "d 755".
fn describe_file_change(path: &str, old: &str, new: &str) -> String {
    let o: Vec<&str> = old.split(' ').collect();
    let n: Vec<&str> = new.split(' ').collect();
    match (o.first(), n.first()) {
        (Some(&"f"), Some(&"f")) if o.len() == 4 && n.len() == 4 => {
            let mut what = Vec::new();
            if o[3] != n[3] {
                what.push(format!("content blake3 {} -> {}", short(o[3]), short(n[3])));
            }
            if o[1] != n[1] {
                what.push(format!("mode {} -> {}", o[1], n[1]));
            }
            if what.is_empty() {
                what.push(format!("size {} -> {}", o[2], n[2]));
            }
            format!("{path} changed ({})", what.join(", "))
        }
        _ => format!("{path} changed ({old} -> {new})"),
    }
}

pub fn list_names(names: &[String]) -> String {
    const MAX: usize = 5;
    let mut s = names
        .iter()
        .take(MAX)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > MAX {
        s.push_str(&format!(" and {} more", names.len() - MAX));
    }
    s
}

/// How a change of a source kept as a digest is worded.
pub const LARGE_SOURCE_CHANGED: &str = "the copied files changed";

fn diff_listing(src: &str, old: &Value, new: &Value, out: &mut Vec<String>) {
    let (Some(o), Some(n)) = (old.as_object(), new.as_object()) else {
        if old != new {
            out.push("the copied files changed".into());
        }
        return;
    };
    // A listing summarised as a digest (huge sources).
    if o.contains_key("digest") || n.contains_key("digest") {
        if old != new {
            out.push(format!(
                "{LARGE_SOURCE_CHANGED} ({} -> {} entries)",
                o.get("entries").and_then(Value::as_u64).unwrap_or(0),
                n.get("entries").and_then(Value::as_u64).unwrap_or(0)
            ));
        }
        return;
    }
    let mut changed = Vec::new();
    let mut added = Vec::new();
    let mut removed = Vec::new();
    for (k, v) in n {
        match o.get(k) {
            None => added.push(k.clone()),
            Some(ov) if ov != v => changed.push(describe_file_change(
                if k == "." { src } else { k },
                ov.as_str().unwrap_or(""),
                v.as_str().unwrap_or(""),
            )),
            _ => {}
        }
    }
    for k in o.keys() {
        if !n.contains_key(k) {
            removed.push(k.clone());
        }
    }
    out.extend(changed.into_iter().take(10));
    if !added.is_empty() {
        out.push(format!(
            "{} file{} added: {}",
            added.len(),
            if added.len() == 1 { "" } else { "s" },
            list_names(&added)
        ));
    }
    if !removed.is_empty() {
        out.push(format!(
            "{} file{} removed: {}",
            removed.len(),
            if removed.len() == 1 { "" } else { "s" },
            list_names(&removed)
        ));
    }
}

fn env_map(v: &Value) -> BTreeMap<String, String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(|e| match e.split_once('=') {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    None => (e.to_string(), String::new()),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn diff_env(old: &Value, new: &Value, args: &[String], out: &mut Vec<String>) {
    let o = env_map(old);
    let n = env_map(new);
    for (k, v) in &n {
        let what = if args.contains(k) { "build arg" } else { "env" };
        match o.get(k) {
            None => out.push(format!("{what} {k} added ({v:?})")),
            Some(ov) if ov != v => out.push(format!("{what} {k} changed ({ov:?} -> {v:?})")),
            _ => {}
        }
    }
    for k in o.keys() {
        if !n.contains_key(k) {
            out.push(format!("env {k} removed"));
        }
    }
}

/// A LABEL step keeps the labels it sets: each one that differs is named.
fn diff_labels(old: &Value, new: &Value, out: &mut Vec<String>) {
    let empty = serde_json::Map::new();
    let o = old.as_object().unwrap_or(&empty);
    let n = new.as_object().unwrap_or(&empty);
    for (k, v) in n {
        match o.get(k) {
            None => out.push(format!("label {k} added ({v})")),
            Some(ov) if ov != v => out.push(format!("label {k} changed ({ov} -> {v})")),
            _ => {}
        }
    }
    for k in o.keys().filter(|k| !n.contains_key(*k)) {
        out.push(format!("label {k} removed"));
    }
}

/// The input differences between an earlier record and this step, most
/// telling first. `args` names the build args in scope (to word env
/// changes as build-arg changes).
pub fn diff_inputs(old: &Value, new: &Value, args: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let (Some(o), Some(n)) = (old.as_object(), new.as_object()) else {
        if old != new {
            out.push("inputs changed".into());
        }
        return out;
    };
    let mut keys: Vec<&String> = o.keys().chain(n.keys()).collect();
    keys.sort();
    keys.dedup();
    for k in keys {
        let ov = o.get(k).unwrap_or(&Value::Null);
        let nv = n.get(k).unwrap_or(&Value::Null);
        if ov == nv {
            continue;
        }
        match k.as_str() {
            "files" => {
                let (Some(of), Some(nf)) = (ov.as_object(), nv.as_object()) else {
                    out.push("the copied sources changed".into());
                    continue;
                };
                for (src, listing) in nf {
                    match of.get(src) {
                        Some(ol) => {
                            let name = src.split(" -> ").next().unwrap_or(src);
                            let name = if name.is_empty() { "." } else { name };
                            diff_listing(name, ol, listing, &mut out)
                        }
                        None => out.push(format!("new source {src}")),
                    }
                }
                for src in of.keys() {
                    if !nf.contains_key(src) {
                        out.push(format!("source {src} no longer copied"));
                    }
                }
            }
            "env" => diff_env(ov, nv, args, &mut out),
            "labels" => diff_labels(ov, nv, &mut out),
            "argv" => out.push("the command changed".into()),
            "mounts" => {
                let oa = ov.as_array().cloned().unwrap_or_default();
                let na = nv.as_array().cloned().unwrap_or_default();
                for m in &na {
                    let target = m.get("target").and_then(Value::as_str).unwrap_or("?");
                    let before = oa
                        .iter()
                        .find(|x| x.get("target").and_then(Value::as_str) == Some(target));
                    match before {
                        None => out.push(format!("mount {target} added")),
                        Some(b) if b != m => {
                            let what = if b.get("source") != m.get("source") {
                                "its content changed"
                            } else {
                                "its options changed"
                            };
                            out.push(format!("mount {target}: {what}"));
                        }
                        _ => {}
                    }
                }
                for m in &oa {
                    let target = m.get("target").and_then(Value::as_str).unwrap_or("?");
                    if !na
                        .iter()
                        .any(|x| x.get("target").and_then(Value::as_str) == Some(target))
                    {
                        out.push(format!("mount {target} removed"));
                    }
                }
            }
            "image" | "id" | "manifest" => out.push(format!(
                "base image digest changed ({} -> {})",
                ov.as_str().unwrap_or("?"),
                nv.as_str().unwrap_or("?")
            )),
            "args" => {
                let a = ov.as_object().cloned().unwrap_or_default();
                let b = nv.as_object().cloned().unwrap_or_default();
                for (name, v) in &b {
                    if a.get(name) != Some(v) {
                        out.push(format!(
                            "build arg {name} changed ({} -> {})",
                            a.get(name)
                                .map(|x| x.to_string())
                                .unwrap_or_else(|| "unset".into()),
                            v
                        ));
                    }
                }
            }
            other => out.push(format!("{other} changed ({ov} -> {nv})")),
        }
    }
    if out.is_empty() {
        out.push("inputs changed".into());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_changed_file_is_named_with_its_hashes() {
        let old = json!({"files": {"app.py -> /app/app.py": {".": "f 644 10 1a2b3c4d5e6f"}}, "dest": "/app/"});
        let new = json!({"files": {"app.py -> /app/app.py": {".": "f 644 11 9f3c0000aaaa"}}, "dest": "/app/"});
        let d = diff_inputs(&old, &new, &[]);
        assert_eq!(
            d,
            vec!["app.py changed (content blake3 1a2b3c4d.. -> 9f3c0000..)"]
        );
    }

    #[test]
    fn added_files_are_listed_and_untouched_ones_not_blamed() {
        let old = json!({"files": {". -> /app": {"a": "f 644 1 aa", "b": "f 644 1 bb"}}});
        let new = json!({"files": {". -> /app": {"a": "f 644 1 aa", "b": "f 644 1 bb", "static/x.css": "f 644 1 cc", "static/y.js": "f 644 1 dd"}}});
        let d = diff_inputs(&old, &new, &[]);
        assert_eq!(d, vec!["2 files added: static/x.css, static/y.js"]);
    }

    #[test]
    fn a_build_arg_change_is_worded_as_such() {
        let old = json!({"argv": ["sh"], "env": ["PATH=/bin", "PIP_INDEX=a"]});
        let new = json!({"argv": ["sh"], "env": ["PATH=/bin", "PIP_INDEX=b"]});
        let d = diff_inputs(&old, &new, &["PIP_INDEX".to_string()]);
        assert_eq!(d, vec!["build arg PIP_INDEX changed (\"a\" -> \"b\")"]);
    }

    #[test]
    fn a_label_change_names_the_label_and_both_values() {
        let old = json!({"labels": {"a": "1", "b": "x", "gone": "y"}});
        let new = json!({"labels": {"a": "2", "b": "x", "new": "z"}});
        let d = diff_inputs(&old, &new, &[]);
        assert_eq!(
            d,
            vec![
                "label a changed (\"1\" -> \"2\")",
                "label new added (\"z\")",
                "label gone removed"
            ]
        );
    }

    fn trace(key: &str, parent: &str, hit: bool) -> StepTrace {
        StepTrace {
            stage: "s".into(),
            key: key.into(),
            parent: parent.into(),
            description: format!("LABEL {key}"),
            source: "Dockerfile:1".into(),
            inputs: Value::Null,
            hit,
            args: vec![],
            meta: true,
            origin: None,
        }
    }

    #[test]
    fn root_causes_follow_the_missed_chain_to_its_first_step() {
        // base (hit) -> a (missed) -> b -> c (missed); d hit; e's parent d.
        let t = vec![
            trace("base", "", true),
            trace("a", "base", false),
            trace("b", "a", false),
            trace("c", "b", false),
            trace("d", "base", true),
            trace("e", "d", false),
        ];
        assert_eq!(
            root_causes(&t),
            vec![None, None, Some(1), Some(1), None, None]
        );
    }

    #[test]
    fn base_image_changes_show_both_digests() {
        let d = diff_inputs(
            &json!({"id": "sha256:ab"}),
            &json!({"id": "sha256:cd"}),
            &[],
        );
        assert_eq!(
            d,
            vec!["base image digest changed (sha256:ab -> sha256:cd)"]
        );
    }
}
