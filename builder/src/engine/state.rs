//! The state of a stage while its steps run: config, layers, key chain,
//! ARGs in scope, and the environment words are expanded with.

use std::collections::{BTreeMap, HashMap};

use kiln_parser::Command;
use kiln_store::{CacheRecord, History, ImageConfig, LayerInfo};
use serde_json::json;

pub(super) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub struct StageState {
    /// The plan node this stage is.
    pub node: usize,
    pub config: ImageConfig,
    pub layers: Vec<LayerInfo>,
    pub key: String,
    /// ARGs declared in this stage: name -> value (None: declared, unset).
    pub args: BTreeMap<String, Option<String>>,
    /// CMD was set in this stage (then ENTRYPOINT keeps it).
    pub cmd_set: bool,
    pub all_cached: bool,
    /// `created` of the newest layer step, given to metadata entries so a
    /// cached rebuild reproduces the same config byte for byte.
    pub last_created: Option<String>,
    pub hits: Vec<String>,
    /// Where the stage is: Dockerfile path and stage name. Cache records
    /// carry it so that explanations compare a step with its own past,
    /// not with another project's step at the same line.
    pub place: String,
    /// Records of metadata steps not yet written: a run of them is written
    /// in one transaction (see [`super::meta::flush_records`]).
    pub pending: Vec<CacheRecord>,
    /// Bytes of metadata the stage's steps have set so far (see
    /// [`METADATA_MAX`]).
    pub meta_bytes: usize,
    /// Where each variable of `config.config.env` is: ENV and expansion
    /// look a name up instead of searching the list (see
    /// [`StageState::set_env`]; rebuilt whenever the config is replaced).
    pub env_index: HashMap<String, usize>,
}

/// The most metadata (ENV, ARG, LABEL, ... values, as recorded) one stage
/// may set: the largest image config kiln's own registry client accepts
/// (`kiln_store::registry::CONFIG_MAX`, 8 MiB), so that what kiln builds
/// can be pulled back. Many words each under the word limit
/// (`kiln_parser::shell::MAX_WORD_BYTES`) stop here.
pub const METADATA_MAX: usize = kiln_store::registry::CONFIG_MAX as usize;

pub(super) fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

pub(super) fn epoch_rfc3339(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

pub(super) fn history(created: Option<String>, created_by: &str, empty: bool) -> History {
    let mut v = json!({
        "created_by": created_by,
        "comment": "kiln.dockerfile.v0",
    });
    if let Some(c) = created {
        v["created"] = json!(c);
    }
    if empty {
        v["empty_layer"] = json!(true);
    }
    serde_json::from_value(v).expect("history entries always deserialise")
}

/// The name of a `K=V` (or bare `K`) environment entry.
pub(super) fn env_name(e: &str) -> &str {
    e.split_once('=').map_or(e, |(n, _)| n)
}

/// Where each variable of `env` is (its last entry, the one that counts).
pub(super) fn index_env(env: &[String]) -> HashMap<String, usize> {
    env.iter()
        .enumerate()
        .map(|(i, e)| (env_name(e).to_string(), i))
        .collect()
}

pub(super) fn env_lookup<'a>(config: &'a ImageConfig, k: &str) -> Option<&'a str> {
    config
        .config
        .env
        .iter()
        .find_map(|e| e.split_once('=').filter(|(n, _)| *n == k).map(|(_, v)| v))
}

pub(super) fn default_shell() -> Vec<String> {
    vec!["/bin/sh".into(), "-c".into()]
}

/// The variables a word of this stage sees, looked up where they live
/// instead of copied into a map for every word: an ARG in scope with a
/// value wins, else the image's ENV (see [`StageState::expand_env`]).
pub struct ScopeEnv<'a>(&'a StageState);

impl kiln_parser::shell::Env for ScopeEnv<'_> {
    fn lookup(&self, name: &str) -> Option<&str> {
        if let Some(Some(v)) = self.0.args.get(name) {
            return Some(v);
        }
        let e = self.0.config.config.env.get(*self.0.env_index.get(name)?)?;
        Some(e.split_once('=').map_or("", |(_, v)| v))
    }
}

impl StageState {
    /// Sets `k=v` in the config's environment, in place if it is there.
    pub(super) fn set_env(&mut self, k: &str, v: &str) {
        let entry = format!("{k}={v}");
        let env = &mut self.config.config.env;
        match self.env_index.get(k) {
            Some(&i) if i < env.len() => env[i] = entry,
            _ => {
                self.env_index.insert(k.to_string(), env.len());
                env.push(entry);
            }
        }
    }

    /// Takes `config` as the stage's config (a cached step's result).
    pub(super) fn replace_config(&mut self, config: ImageConfig) {
        self.env_index = index_env(&config.config.env);
        self.config = config;
    }

    pub fn scope_env(&self) -> ScopeEnv<'_> {
        ScopeEnv(self)
    }

    /// Variables for word expansion: the image's ENV, then the ARGs in
    /// scope. Whichever was declared last wins: an ENV removes the ARG of
    /// the same name from scope, and an ARG declared after an ENV shadows
    /// it (what BuildKit does, whatever its reference says).
    pub(super) fn expand_env(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        for e in &self.config.config.env {
            match e.split_once('=') {
                Some((k, v)) => m.insert(k.to_string(), v.to_string()),
                None => m.insert(e.clone(), String::new()),
            };
        }
        for (k, v) in &self.args {
            if let Some(v) = v {
                m.insert(k.clone(), v.clone());
            }
        }
        m
    }

    pub(super) fn shell(&self) -> Vec<String> {
        self.config
            .config
            .shell
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(default_shell)
    }

    /// The argv of a CMD/ENTRYPOINT: exec form as is, shell form through
    /// the stage's SHELL.
    pub(super) fn argv(&self, c: &Command) -> Vec<String> {
        match c {
            Command::Exec(v) => v.clone(),
            Command::Shell(s) => {
                let mut v = self.shell();
                v.push(s.clone());
                v
            }
        }
    }

    pub(super) fn workdir(&self) -> String {
        self.config
            .config
            .working_dir
            .clone()
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".into())
    }
}
