//! Cache keys: key = blake3(parent key, canonical step, inputs). Inputs are
//! a JSON object with sorted keys, kept in the cache record so a miss can
//! be explained input by input.

use kiln_store::ImageConfig;
use serde_json::{json, Value};

/// Bumped whenever what a step's result means changes, so old records of
/// an incompatible kiln are never hit. v2: every RUN, COPY, ADD and
/// WORKDIR makes a layer, an empty one included (v1 dropped empty diffs, so
/// its records hold other layer lists and histories). v3: directory modes
/// and mtimes of COPY and ADD as BuildKit 0.13 makes them. v4: --chmod on
/// copied directories, hard links kept. v5: config values (empty CMD and
/// ENTRYPOINT lists, EXPOSE ranges, WORKDIR as written). v6: bind mounts
/// from a stage keep metadata; RUN keeps /dev /proc /sys from scratch.
/// v7: a file where COPY or WORKDIR needs a directory fails the step. v8:
/// COPY of a directory writes through a symlink at its destination. v9:
/// fifos and device nodes of a stage are copied. v10: the root of every
/// chain names the stage's platform (multi-platform builds), so a stage
/// built for linux/arm64 never hits one built for linux/amd64.
const KEY_VERSION: &str = "kiln-cache-v10";

pub fn hash_str(s: &str) -> String {
    blake3::hash(format!("{KEY_VERSION}\0{s}").as_bytes())
        .to_hex()
        .to_string()
}

/// serde_json's map is ordered (BTreeMap) unless `preserve_order` is on, so
/// `to_string` of a Value is canonical: sorted keys, no spaces.
pub fn canonical(v: &Value) -> String {
    v.to_string()
}

pub fn step_key(parent: &str, step: &str, inputs: &Value) -> String {
    let mut h = blake3::Hasher::new();
    h.update(KEY_VERSION.as_bytes());
    h.update(b"\0");
    h.update(parent.as_bytes());
    h.update(b"\0");
    h.update(step.as_bytes());
    h.update(b"\0");
    h.update(canonical(inputs).as_bytes());
    h.finalize().to_hex().to_string()
}

/// The config of `FROM scratch`: nothing but the platform.
pub fn scratch_config(platform: &super::platform::Platform) -> ImageConfig {
    let mut v = json!({
        "architecture": platform.arch,
        "os": platform.os,
        // What BuildKit gives an image built FROM scratch.
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "WorkingDir": "/"
        },
        "rootfs": {"type": "layers", "diff_ids": []},
        "history": []
    });
    if let Some(var) = &platform.variant {
        v["variant"] = json!(var);
    }
    serde_json::from_value(v).expect("a minimal image config always deserialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_depends_on_parent_step_and_inputs_not_on_map_order() {
        let a = step_key("p", "RUN", &json!({"a": 1, "b": [1, 2]}));
        let b = step_key("p", "RUN", &json!({"b": [1, 2], "a": 1}));
        assert_eq!(a, b);
        assert_ne!(a, step_key("q", "RUN", &json!({"a": 1, "b": [1, 2]})));
        assert_ne!(a, step_key("p", "COPY", &json!({"a": 1, "b": [1, 2]})));
        assert_ne!(a, step_key("p", "RUN", &json!({"a": 2, "b": [1, 2]})));
    }

    #[test]
    fn scratch_config_is_empty() {
        let c = scratch_config(&super::super::platform::Platform::host());
        assert!(c.rootfs.diff_ids.is_empty());
        assert_eq!(c.config.env.len(), 1, "only the default PATH");
        assert_eq!(c.config.working_dir.as_deref(), Some("/"));
    }
}
