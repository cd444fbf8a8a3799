//! What one build is asked to do, as the engine sees it: the binary turns
//! its flags into these.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::ValueEnum;

pub type BuildArgs = BTreeMap<String, String>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NetworkArg {
    /// Own network namespace with outbound access (pasta or slirp4netns);
    /// the host's loopback is not reachable. BuildKit's default.
    Default,
    /// The host's network: every service on its loopback is reachable.
    Host,
    /// Only `lo`.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PullPolicy {
    Never,
    Missing,
    Always,
}

pub enum Secret {
    File(PathBuf),
    Env(String),
}

pub struct Options {
    pub dockerfile_name: String,
    pub dockerfile_src: String,
    pub build_args: BuildArgs,
    pub no_cache: bool,
    pub pull: PullPolicy,
    pub network: NetworkArg,
    pub secrets: HashMap<String, Secret>,
    /// `--ssh`: agent socket per ID.
    pub ssh: HashMap<String, PathBuf>,
    pub labels: BTreeMap<String, String>,
    pub source_date_epoch: Option<i64>,
    /// `--security-opt seccomp=unconfined`: RUN steps without the syscall
    /// filter. Not part of the cache key (as under `docker build`): what a
    /// step writes does not depend on it.
    pub seccomp_unconfined: bool,
    /// `--reproducible`: RUN steps also see SOURCE_DATE_EPOCH (unless the
    /// stage sets it), so that tools that honour it (Python's py_compile,
    /// pip, dpkg, gzip -n ...) write the same bytes every time. BuildKit
    /// passes it only to stages that declare `ARG SOURCE_DATE_EPOCH`.
    pub epoch_in_run: bool,
    /// How many stages may run at once (at least 1).
    pub max_parallelism: usize,
    /// `--explain`: a hit on an imported record says where it came from.
    pub explain: bool,
}

impl Options {
    /// How the build's layers are written (times clamped to
    /// SOURCE_DATE_EPOCH when it is set).
    pub fn layer_options(&self) -> kiln_store::LayerOptions {
        kiln_store::LayerOptions {
            source_date_epoch: self.source_date_epoch,
            ..Default::default()
        }
    }
}

pub fn parse_kv(s: &str, what: &str) -> Result<(String, String)> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => bail!("invalid {what} {s:?}: expected KEY=VALUE"),
    }
}

/// The default `--max-parallelism`: the machine's cores.
pub fn default_parallelism() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
