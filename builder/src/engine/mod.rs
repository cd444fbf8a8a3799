//! `kiln build`: Dockerfile -> plan -> stages run concurrently over the
//! content-addressed cache -> an image in the store, tagged.

mod bind_prep;
pub mod cache_spec;
mod cached;
mod config_rules;
mod copy;
mod copy_op;
pub mod executor;
pub mod explain;
mod git;
pub mod inline;
pub mod inputs;
pub mod key;
mod lazy_view;
mod meta;
mod meta_apply;
mod op;
pub mod options;
pub mod output;
pub mod plan;
pub mod platform;
pub mod portable;
mod preflight;
pub mod registry_gc;
pub mod report;
mod run_mounts;
mod run_op;
pub mod scheduler;
mod source;
pub mod ssh;
mod stage;
mod state;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Result};
use kiln_store::{ImageConfig, LayerInfo, Store};

use crate::context::BuildContext;
use crate::error::Failure;
use crate::progress::Progress;
pub use options::{BuildArgs, NetworkArg, Options, PullPolicy, Secret};
use plan::{Base, Plan};
use report::Report;

/// What a finished stage hands to the stages that read from it.
#[derive(Debug, Clone)]
pub struct StageResult {
    pub config: ImageConfig,
    pub layers: Vec<LayerInfo>,
    /// The cache key of the stage's last step.
    pub key: String,
}

pub struct Builder {
    pub store: Arc<Store>,
    pub opts: Options,
    pub ctx: BuildContext,
    pub progress: Progress,
    pub plan: Plan,
    /// The Dockerfile's name, text and escape character.
    pub src: source::Source,
    /// Runs the processes of RUN steps.
    pub executor: Arc<dyn executor::Executor>,
    /// Absolute path of the Dockerfile ("-" for stdin), for cache records.
    pub dockerfile_path: String,
    /// Each stage's result once it has finished.
    outcomes: scheduler::Outcomes<StageResult>,
    /// Build args some ARG consumed (for the unused-arg warning).
    pub used_args: Mutex<std::collections::BTreeSet<String>>,
    /// Every step as the cache saw it, in order per stage, for `--explain`.
    pub trace: Mutex<Vec<explain::StepTrace>>,
    /// Registries, for bases that are not local and for `--pull=always`.
    pub access: crate::registry::Access,
    /// One pull per base name and platform per build, however many
    /// stages name it.
    pulls: Mutex<HashMap<(String, Option<platform::Platform>), PullCell>>,
    /// Images the build read (FROM, COPY --from, RUN --mount from=): (name,
    /// manifest digest, platform), for provenance and --check-reproducible.
    pub bases: Mutex<Vec<(String, kiln_store::Digest, String)>>,
}

type PullCell = Arc<std::sync::OnceLock<std::result::Result<kiln_store::ImageRecord, String>>>;

impl Builder {
    /// A builder for one build of `plan`; its RUN steps share one network
    /// namespace and stack, started by the first RUN that needs it.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<Store>,
        opts: Options,
        ctx: BuildContext,
        progress: Progress,
        plan: Plan,
        escape: char,
        dockerfile_path: String,
        access: crate::registry::Access,
    ) -> Builder {
        let executor = Arc::new(executor::namespaces::NamespaceExecutor::new(
            store.scratch_dir(),
            opts.seccomp_unconfined,
        ));
        Builder {
            outcomes: scheduler::Outcomes::new(plan.stages.len()),
            src: source::Source::new(&opts.dockerfile_name, &opts.dockerfile_src, escape),
            store,
            opts,
            ctx,
            progress,
            plan,
            executor,
            dockerfile_path,
            used_args: Mutex::new(Default::default()),
            trace: Mutex::new(Vec::new()),
            access,
            pulls: Mutex::new(HashMap::new()),
            bases: Mutex::new(Vec::new()),
        }
    }

    /// Explains every step of this build that was not a cache hit.
    pub fn explain(&self) -> Result<Report> {
        let trace = self.trace.lock().expect("trace").clone();
        let roots = explain::root_causes(&trace);
        let mut nearest = |q: kiln_store::NearestQuery| Ok(self.store.cache_nearest(&q)?);
        // A metadata step that only inherits a change is noise: the steps
        // that can be expensive, and the root causes, are what is shown.
        let missed = trace
            .iter()
            .zip(&roots)
            .filter(|(t, root)| !t.hit && (!t.meta || root.is_none()))
            .map(|(t, root)| {
                let root = root.map(|r| &trace[r]);
                let mut why =
                    explain::explain_step(t, root, &mut nearest, None, self.opts.no_cache)?;
                if why.contains(explain::LARGE_SOURCE_CHANGED) {
                    if let Some(h) = self.large_source_hint(t) {
                        why.push_str("; ");
                        why.push_str(&h);
                    }
                }
                Ok((format!("{} ({})", t.description, t.source), why))
            })
            .collect::<Result<_>>()?;
        let hits: Vec<(String, Option<String>)> = trace
            .iter()
            .filter(|t| t.hit && !t.meta)
            .map(|t| {
                (
                    format!("{} ({})", t.description, t.source),
                    t.origin.clone(),
                )
            })
            .collect();
        let imported = hits.iter().any(|(_, o)| o.is_some());
        Ok(Report {
            image: String::new(),
            steps: trace.iter().filter(|t| !t.meta).count(),
            missed,
            hits: if imported { hits } else { Vec::new() },
        })
    }

    /// The cache keys of `result`'s own chain, from its last step back to
    /// its base (what `mode=min` and the inline cache export).
    pub fn chain_keys(&self, result: &StageResult) -> Vec<String> {
        let trace = self.trace.lock().expect("trace");
        let mut keys: Vec<String> = Vec::new();
        let mut cur = Some(result.key.clone());
        while let Some(k) = cur.filter(|k| !k.is_empty() && !keys.contains(k)) {
            cur = trace.iter().find(|t| t.key == k).map(|t| t.parent.clone());
            keys.push(k);
        }
        keys
    }

    /// A COPY source too large to keep its listing in the key says only
    /// that its files changed; the scan of this build knows which files it
    /// had to read again and which are gone.
    fn large_source_hint(&self, t: &explain::StepTrace) -> Option<String> {
        let files = t.inputs.get("files")?.as_object()?;
        let (mut read, mut gone) = (Vec::new(), Vec::new());
        for (src, listing) in files {
            if listing.get("digest").is_none() {
                continue;
            }
            let rel = src.split(" -> ").next().unwrap_or("");
            let rel = rel.trim_start_matches("./").trim_end_matches('/');
            let (r, g) = self.ctx.changed_under(if rel == "." { "" } else { rel });
            read.extend(r);
            gone.extend(g);
        }
        let mut parts = Vec::new();
        if !read.is_empty() {
            parts.push(format!(
                "read again this build (new, or changed on disk): {}",
                explain::list_names(&read)
            ));
        }
        if !gone.is_empty() {
            parts.push(format!("gone: {}", explain::list_names(&gone)));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }

    /// Runs every needed stage of every target platform on at most
    /// `--max-parallelism` workers, each as soon as the stages it reads
    /// from are done; returns each target's result, in the order of
    /// `plan.targets`. Before any step runs, every base image is resolved
    /// for its platform and every platform with RUN steps is checked to
    /// run here. A failure keeps its cause chain (see
    /// [`scheduler::NodeError`]).
    pub fn run_all(&self) -> Result<Vec<Arc<StageResult>>> {
        self.preflight()?;
        let deps: Vec<_> = self.plan.stages.iter().map(|s| s.deps.clone()).collect();
        let names: Vec<String> = self
            .plan
            .stages
            .iter()
            .map(|s| match self.plan.multi_platform {
                true => format!("{} ({})", s.label(), s.platform),
                false => s.label(),
            })
            .collect();
        let graph = scheduler::Graph {
            nodes: &self.plan.order,
            deps: &deps,
            names: &names,
        };
        scheduler::run(&graph, self.opts.max_parallelism, &self.outcomes, |i| {
            self.run_stage(i)
        });
        self.plan
            .targets
            .iter()
            .map(|t| match self.outcomes.get(t.node) {
                Some(Ok(r)) => Ok(r),
                Some(Err(e)) => {
                    // What was always shown: the failing stage's own error.
                    let shown = e.message();
                    Err(Failure::caused_by(1, shown, scheduler::SharedError(e)).into())
                }
                None => unreachable!("the scheduler gives every node an outcome"),
            })
            .collect()
    }

    /// The finished result of a stage this one reads from. The planner
    /// made it a dependency, so it has finished; a stage named only at run
    /// time (a `--from` in a variable of the stage) is refused if it has
    /// not, rather than waited for while holding a worker.
    pub fn stage_result(&self, i: usize) -> Result<Arc<StageResult>> {
        match self.outcomes.get(i) {
            Some(Ok(r)) => Ok(r),
            Some(Err(e)) => Err(scheduler::SharedError(e).into()),
            None => bail!(
                "stage {} is read here but was not known to be needed when the build was planned \
                 (is its name in a variable set inside the stage?): name the stage directly",
                self.plan.stages[i].label()
            ),
        }
    }

    /// Resolves an image node `node` reads: the local store first (unless
    /// `--pull=always`), then its registry (unless `--pull=never`), for the
    /// node's platform. Each name is pulled at most once per platform and
    /// build.
    pub fn resolve_image(&self, name: &str, node: usize) -> Result<kiln_store::ImageRecord> {
        let want = self.plan.wanted_platform(node).cloned();
        let img = self.resolve_image_uncounted(name, want.as_ref())?;
        // Every image the build read (FROM, COPY --from, RUN --mount
        // from=): provenance lists them, a reproducibility check needs them.
        let mut bases = self.bases.lock().expect("bases");
        let entry = (
            name.to_string(),
            img.manifest_digest.clone(),
            kiln_store::indexes::platform_of(&img.config),
        );
        if !bases.contains(&entry) {
            bases.push(entry);
        }
        Ok(img)
    }

    fn resolve_image_uncounted(
        &self,
        name: &str,
        want: Option<&platform::Platform>,
    ) -> Result<kiln_store::ImageRecord> {
        let mut local_other = None;
        if self.opts.pull != PullPolicy::Always {
            let found = match want {
                None => self.store.resolve_image(name)?,
                Some(p) => self.store.resolve_image_for(name, &p.to_string())?,
            };
            match found {
                Some(img) if want.is_none_or(|p| p.matches_config(&img.config)) => return Ok(img),
                Some(img) => local_other = Some(kiln_store::indexes::platform_of(&img.config)),
                None => {}
            }
            if self.opts.pull == PullPolicy::Never {
                match (local_other, want) {
                    (Some(have), Some(p)) => bail!(
                        "failed to resolve source metadata for {name}: the local image is for {have}, not {p}, and --pull=never was given (import or pull it for {p}: kiln pull --platform {p} {name})"
                    ),
                    _ => bail!(
                        "failed to resolve source metadata for {name}: no such image in the local store (--pull=never was given)"
                    ),
                }
            }
        }
        let cell = self
            .pulls
            .lock()
            .expect("pulls")
            .entry((name.to_string(), want.cloned()))
            .or_default()
            .clone();
        let pulled = cell.get_or_init(|| {
            let what = match want {
                Some(p) if self.plan.multi_platform => format!("{name} for {p}"),
                _ => name.to_string(),
            };
            let id = self.progress.start(&format!("[internal] pull {what}"));
            let started = std::time::Instant::now();
            let events = |e: kiln_store::registry::Event| {
                if let kiln_store::registry::Event::BlobDone { digest, outcome } = e {
                    self.progress
                        .log(id, &format!("{}: {outcome}", digest.short()));
                }
            };
            let r = crate::registry::pull_lazy_into(
                &self.store,
                &self.access,
                name,
                &want.map_or_else(kiln_store::registry::Platform::host, |p| p.to_registry()),
                &events,
            );
            match &r {
                Ok(_) => self.progress.done(id, started.elapsed()),
                Err(e) => self.progress.error(id, &format!("{e:#}")),
            }
            r.map_err(|e| format!("{e:#}"))
        });
        match pulled {
            Ok(img) if want.is_none_or(|p| p.matches_config(&img.config)) => Ok(img.clone()),
            Ok(img) => bail!(
                "failed to resolve source metadata for {name}: it has no image for {} (the registry gave {})",
                want.expect("a platform was wanted"),
                kiln_store::indexes::platform_of(&img.config)
            ),
            Err(e) if self.opts.pull == PullPolicy::Always => {
                bail!("failed to resolve source metadata for {name}: {e}")
            }
            Err(e) => match (local_other, want) {
                (Some(have), Some(p)) => bail!(
                    "failed to resolve source metadata for {name}: the local image is for {have}, not {p}, and pulling it for {p} failed: {e}"
                ),
                _ => bail!(
                    "failed to resolve source metadata for {name}: not in the local store, and pulling it failed: {e}"
                ),
            },
        }
    }

    /// Where node `node`'s base comes from, with its config and layers.
    /// The root of every key chain names the node's platform.
    pub fn base_of(
        &self,
        base: &Base,
        node: usize,
    ) -> Result<(ImageConfig, Vec<LayerInfo>, String, Option<String>)> {
        let platform = &self.plan.stages[node].platform;
        match base {
            Base::Scratch => Ok((
                key::scratch_config(platform),
                vec![],
                key::hash_str(&format!("scratch {platform}")),
                None,
            )),
            Base::Stage(i) => {
                let r = self.stage_result(*i)?;
                Ok((r.config.clone(), r.layers.clone(), r.key.clone(), None))
            }
            Base::Image(name) => {
                let img = self.resolve_image(name, node)?;
                // Keyed on the image ID (its config digest): the same image
                // loaded from another archive format keeps its ID.
                let k = key::hash_str(&format!("image {} {platform}", img.config_digest));
                Ok((
                    img.config,
                    img.layers,
                    k,
                    Some(img.config_digest.to_string()),
                ))
            }
        }
    }
}
