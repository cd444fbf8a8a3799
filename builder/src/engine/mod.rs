//! `kiln build`: Dockerfile -> plan -> stages run concurrently over the
//! content-addressed cache -> an image in the store, tagged.

mod copy;
pub mod explain;
mod git;
mod key;
pub mod plan;
mod portable;
mod ssh;
mod stage;

use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use kiln_parser::dockerignore::{self, PatternMatcher};
use kiln_store::{ImageConfig, LayerInfo, Store};

use crate::cli::{self, PullPolicy};
use crate::context::BuildContext;
use crate::error::{utf8_text, Failure};
use crate::progress::{Mode, Progress};
use plan::{Base, Plan};

pub type BuildArgs = BTreeMap<String, String>;

/// What a finished stage hands to the stages that read from it.
#[derive(Debug, Clone)]
pub struct StageResult {
    pub config: ImageConfig,
    pub layers: Vec<LayerInfo>,
    /// The cache key of the stage's last step.
    pub key: String,
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
    pub network: cli::NetworkArg,
    pub secrets: HashMap<String, Secret>,
    /// `--ssh`: agent socket per ID.
    pub ssh: HashMap<String, PathBuf>,
    pub labels: BTreeMap<String, String>,
    pub source_date_epoch: Option<i64>,
}

type Slot = (Mutex<Option<Result<Arc<StageResult>, String>>>, Condvar);

pub struct Builder {
    pub store: Arc<Store>,
    pub opts: Options,
    pub ctx: BuildContext,
    pub progress: Progress,
    pub plan: Plan,
    pub escape: char,
    pub runner: kiln_runner::RunnerConfig,
    /// Absolute path of the Dockerfile ("-" for stdin), for cache records.
    pub dockerfile_path: String,
    slots: Vec<Slot>,
    /// Build args some ARG consumed (for the unused-arg warning).
    pub used_args: Mutex<std::collections::BTreeSet<String>>,
    /// Every step as the cache saw it, in order per stage, for `--explain`.
    pub trace: Mutex<Vec<explain::StepTrace>>,
    /// Registries, for bases that are not local and for `--pull=always`.
    pub access: crate::cmd_registry::Access,
    /// One pull per base name per build, however many stages name it.
    pulls: Mutex<HashMap<String, PullCell>>,
}

type PullCell = Arc<std::sync::OnceLock<std::result::Result<kiln_store::ImageRecord, String>>>;

fn parse_kv(s: &str, what: &str) -> Result<(String, String)> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => bail!("invalid {what} {s:?}: expected KEY=VALUE"),
    }
}

fn parse_secret(spec: &str) -> Result<(String, Secret)> {
    let mut id = None;
    let mut src = None;
    let mut env = None;
    for part in spec.split(',') {
        let (k, v) = parse_kv(part, "--secret field")?;
        match k.as_str() {
            "id" => id = Some(v),
            "src" | "source" => src = Some(v),
            "env" => env = Some(v),
            "type" => {}
            other => bail!("--secret: unknown field {other:?} (expected id, src, env)"),
        }
    }
    let id = id.ok_or_else(|| anyhow!("--secret {spec:?}: id= is required"))?;
    let secret = match (src, env) {
        (Some(p), _) => Secret::File(PathBuf::from(p)),
        (None, Some(e)) => Secret::Env(e),
        (None, None) => Secret::Env(id.clone()),
    };
    Ok((id, secret))
}

/// What `--network host` exposes, said once per build.
pub const HOST_NETWORK_NOTE: &str = "note: --network host: RUN steps share the host's network: \
     every service on the host's loopback (127.0.0.1, ::1) and every host port is reachable";

pub fn cmd_build(
    store: Store,
    args: cli::BuildArgs,
    access: crate::cmd_registry::Access,
) -> Result<ExitCode> {
    // Dockerfile and context.
    let (context_dir, dockerfile_name, src, dockerfile_path) = if args.context == "-" {
        let mut b = Vec::new();
        std::io::stdin().read_to_end(&mut b)?;
        (None, "-".to_string(), utf8_text(b, "-")?, "-".to_string())
    } else {
        let dir = PathBuf::from(&args.context);
        if !dir.is_dir() {
            bail!(
                "unable to prepare context: path {:?} not found",
                args.context
            );
        }
        let (name, path) = match args.file.as_deref() {
            Some("-") => ("-".to_string(), None),
            Some(f) => (f.to_string(), Some(PathBuf::from(f))),
            None => ("Dockerfile".to_string(), Some(dir.join("Dockerfile"))),
        };
        let abs = path
            .as_ref()
            .and_then(|p| std::fs::canonicalize(p).ok())
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "-".to_string());
        let bytes = match path {
            None => {
                let mut b = Vec::new();
                std::io::stdin().read_to_end(&mut b)?;
                b
            }
            Some(p) => std::fs::read(&p)
                .map_err(|e| anyhow!("failed to read dockerfile: open {}: {e}", p.display()))?,
        };
        let src = utf8_text(bytes, &name)?;
        (Some(dir), name, src, abs)
    };

    if args.push && args.tags.is_empty() {
        return Err(
            Failure::new(1, "kiln: --push needs at least one -t NAME:TAG to push to").into(),
        );
    }
    let mut build_args = BuildArgs::new();
    for a in &args.build_args {
        match a.split_once('=') {
            Some((k, v)) => {
                build_args.insert(k.to_string(), v.to_string());
            }
            None => {
                if let Ok(v) = std::env::var(a) {
                    build_args.insert(a.clone(), v);
                }
            }
        }
    }
    let mut labels = BTreeMap::new();
    for l in &args.labels {
        let (k, v) = parse_kv(l, "--label")?;
        labels.insert(k, v);
    }
    let mut secrets = HashMap::new();
    for s in &args.secrets {
        let (id, secret) = parse_secret(s)?;
        secrets.insert(id, secret);
    }
    let ssh = ssh::parse_ssh_flags(&args.ssh)?;
    let cache_to = args
        .cache_to
        .as_deref()
        .map(portable::parse_cache_to)
        .transpose()?;
    let cache_from = args
        .cache_from
        .iter()
        .map(|s| portable::parse_cache_from(s))
        .collect::<Result<Vec<_>>>()?;
    let outputs = args
        .outputs
        .iter()
        .map(|o| parse_output(o))
        .collect::<Result<Vec<_>>>()?;
    let source_date_epoch = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.is_empty() => Some(
            v.parse::<i64>()
                .map_err(|_| anyhow!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds"))?,
        ),
        _ => None,
    };

    let mode = if args.quiet {
        Mode::Quiet
    } else {
        match args.progress {
            cli::Progress::Plain => Mode::Plain,
            cli::Progress::Tty => Mode::Tty,
            cli::Progress::Auto => {
                if std::io::stderr().is_terminal() {
                    Mode::Tty
                } else {
                    Mode::Plain
                }
            }
        }
    };
    if args.network == cli::NetworkArg::Host {
        eprintln!("{}", HOST_NETWORK_NOTE);
    }
    let progress = Progress::new(mode);

    // Parse.
    let df =
        kiln_parser::parse(&src).map_err(|e| Failure::new(1, e.render(&src, &dockerfile_name)))?;
    for w in &df.warnings {
        progress.warn(&format!(
            "{}:{}: {}",
            dockerfile_name, w.span.line, w.message
        ));
    }
    let escape = df.directives.escape;
    let stages = kiln_parser::parse_stages(&df)
        .map_err(|e| Failure::new(1, e.render(&src, &dockerfile_name)))?;
    let plan = plan::plan(stages, escape, &build_args, args.target.as_deref())?;

    // Context: one scan, .dockerignore applied.
    let store = Arc::new(store);
    let _lease = store.lease()?;
    let ctx = match &context_dir {
        None => BuildContext::empty(),
        Some(dir) => {
            let id = progress.start("[internal] load build context");
            let started = std::time::Instant::now();
            let patterns = read_dockerignore(dir, args.file.as_deref())?;
            let matcher = PatternMatcher::new(&patterns)
                .map_err(|e| anyhow!("invalid .dockerignore: {e}"))?;
            let ctx = BuildContext::scan(dir, &matcher, Some(&store))?;
            progress.done(id, started.elapsed());
            ctx
        }
    };

    // A cache to start from: verified on import; what fails verification
    // (or a missing cache) is a warning, and those steps simply run.
    for src in &cache_from {
        if let portable::Location::Local(dir) = src {
            if !dir.exists() {
                progress.warn(&format!(
                    "--cache-from {src}: no such cache, building without it"
                ));
                continue;
            }
        }
        let id = progress.start(&format!("importing cache from {src}"));
        let started = std::time::Instant::now();
        match portable::import(&store, src, &access) {
            Ok(imp) => {
                for w in &imp.warnings {
                    progress.warn(&format!("--cache-from {src}: {w}"));
                }
                progress.info(&format!(
                    "imported {} cache records from {src}",
                    imp.records
                ));
                progress.done(id, started.elapsed());
            }
            Err(e) => {
                progress.done(id, started.elapsed());
                progress.warn(&format!("--cache-from {src}: {e:#}; building without it"))
            }
        }
    }

    let builder = Builder {
        slots: (0..plan.stages.len())
            .map(|_| (Mutex::new(None), Condvar::new()))
            .collect(),
        store: store.clone(),
        opts: Options {
            dockerfile_name,
            dockerfile_src: src,
            build_args,
            no_cache: args.no_cache,
            pull: args.pull,
            network: args.network,
            secrets,
            ssh,
            labels,
            source_date_epoch,
        },
        ctx,
        progress,
        plan,
        escape,
        runner: kiln_runner::RunnerConfig {
            scratch_root: store.root().join("tmp"),
            // One namespace and stack for every RUN of the build, started
            // by the first RUN that needs it, stopped with the builder.
            shared_net: Some(kiln_runner::SharedNet::new()),
            ..Default::default()
        },
        dockerfile_path,
        used_args: Mutex::new(Default::default()),
        trace: Mutex::new(Vec::new()),
        access,
        pulls: Mutex::new(HashMap::new()),
    };

    let result = builder.run_all();
    builder.ctx.save_stat_cache(&builder.store)?;
    let result = result?;

    // Unused --build-arg: BuildKit warns, it does not fail.
    {
        let used = builder.used_args.lock().expect("used args");
        let unused: Vec<&String> = builder
            .opts
            .build_args
            .keys()
            .filter(|k| {
                !used.contains(*k)
                    && !plan::PROXY_ARGS.contains(&k.as_str())
                    && !builder.plan.global_args.contains_key(*k)
            })
            .collect();
        if !unused.is_empty() {
            builder.progress.warn(&format!(
                "one or more build-args {:?} were not consumed",
                unused
            ));
        }
    }

    // The image.
    let mut config = result.config.clone();
    for (k, v) in &builder.opts.labels {
        config.config.labels.insert(k.clone(), v.clone());
    }
    config.rootfs.diff_ids = result.layers.iter().map(|l| l.diff_id.clone()).collect();
    config.created = config
        .history
        .iter()
        .rev()
        .find_map(|h| h.created.clone())
        .or(config.created.clone());
    let id = builder.progress.start("exporting to image");
    let image = builder.store.write_image(&config, &result.layers)?;
    for t in &args.tags {
        builder
            .store
            .tag(t, &image.manifest_digest)
            .map_err(|e| anyhow!("invalid tag {t:?}: {e}"))?;
        builder.progress.info(&format!("naming to {t}"));
    }
    builder
        .progress
        .info(&format!("writing image {} done", image.config_digest));
    builder.progress.done(id, Duration::ZERO);
    for out in &outputs {
        export_output(&builder.store, &image, &result.layers, out, &args.tags)?;
    }
    if args.push {
        let opts = kiln_store::registry::PushOptions {
            compression: crate::cmd_registry::compression(args.compression),
            ..Default::default()
        };
        for t in &args.tags {
            let id = builder.progress.start(&format!("pushing {t}"));
            let started = std::time::Instant::now();
            match crate::cmd_registry::push_image(
                &builder.store,
                &builder.access,
                &image,
                t,
                &opts,
                true,
            ) {
                Ok(r) => {
                    builder.progress.log(
                        id,
                        &format!(
                            "{t}: digest: {} size: {}",
                            r.manifest_digest, r.manifest_size
                        ),
                    );
                    builder.progress.done(id, started.elapsed());
                }
                Err(e) => {
                    builder.progress.error(id, &format!("{e:#}"));
                    return Err(e.context(format!("pushing {t}")));
                }
            }
        }
    }
    if let Some(f) = &args.iidfile {
        std::fs::write(f, image.config_digest.to_string())
            .with_context(|| format!("writing --iidfile {}", f.display()))?;
    }
    let took = builder.progress.elapsed();
    if args.quiet {
        println!("{}", image.config_digest);
    } else {
        builder.progress.info(&format!(
            "built {} in {:.3}s{}",
            image.config_digest.short(),
            took.as_secs_f64(),
            if args.tags.is_empty() {
                String::new()
            } else {
                format!(" as {}", args.tags.join(", "))
            }
        ));
    }
    if let Some(to) = &cache_to {
        let trace = builder.trace.lock().expect("trace").clone();
        let keys: Vec<String> = if to.max {
            trace.iter().map(|t| t.key.clone()).collect()
        } else {
            // The target's own chain, from its last step back to its base.
            let mut keys = Vec::new();
            let mut cur = Some(result.key.clone());
            while let Some(k) = cur.filter(|k| !k.is_empty()) {
                cur = trace.iter().find(|t| t.key == k).map(|t| t.parent.clone());
                keys.push(k);
            }
            keys
        };
        let n = portable::export(&builder.store, &keys, to, &builder.access)
            .with_context(|| format!("--cache-to {}", to.dest))?;
        builder
            .progress
            .info(&format!("exported {n} cache records to {}", to.dest));
    }
    let report = builder.explain()?;
    if !report.missed.is_empty() {
        // This build wrote records and layers: checkpoint now, while the
        // build's own time dwarfs it, rather than in the next (cached) one.
        if let Err(e) = builder.store.checkpoint() {
            builder
                .progress
                .warn(&format!("checkpointing the metadata database: {e}"));
        }
    }
    save_report(&builder.store, &image.config_digest, &report)?;
    if args.explain {
        eprint!("{}", render_report(&report));
    }
    Ok(ExitCode::SUCCESS)
}

/// What a build leaves for `kiln cache why`: each step that was not a
/// cache hit, with the reason.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Report {
    pub image: String,
    pub steps: usize,
    pub missed: Vec<(String, String)>,
}

pub fn render_report(r: &Report) -> String {
    if r.missed.is_empty() {
        return format!("explain: all {} steps were cache hits\n", r.steps);
    }
    let mut s = "explain: why steps were not cache hits:\n".to_string();
    for (step, why) in &r.missed {
        s.push_str(&format!("  {step}: {why}\n"));
    }
    s
}

fn report_path(store: &Store, image: &kiln_store::Digest) -> PathBuf {
    store
        .root()
        .join("builds")
        .join(format!("{}.json", image.hex()))
}

/// Kept under `<root>/builds/`, one file per image (the last build that
/// produced it), written atomically.
fn save_report(store: &Store, image: &kiln_store::Digest, r: &Report) -> Result<()> {
    let dir = store.root().join("builds");
    std::fs::create_dir_all(&dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(&dir)?;
    serde_json::to_writer(&mut tmp, r)?;
    tmp.persist(report_path(store, image))
        .map_err(|e| anyhow!("saving the build report: {e}"))?;
    Ok(())
}

pub fn load_report(store: &Store, image: &kiln_store::Digest) -> Result<Option<Report>> {
    match std::fs::read(report_path(store, image)) {
        Ok(b) => Ok(Some(serde_json::from_slice(&b)?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// `.dockerignore` rules: `<Dockerfile>.dockerignore` next to the
/// Dockerfile wins over the context's `.dockerignore`, as in BuildKit.
fn read_dockerignore(dir: &Path, dockerfile: Option<&str>) -> Result<Vec<String>> {
    if let Some(f) = dockerfile.filter(|f| *f != "-") {
        let specific = format!("{f}.dockerignore");
        if let Ok(bytes) = std::fs::read(&specific) {
            return Ok(dockerignore::parse(&utf8_text(bytes, &specific)?));
        }
    }
    match std::fs::read(dir.join(".dockerignore")) {
        Ok(bytes) => Ok(dockerignore::parse(&utf8_text(bytes, ".dockerignore")?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(vec![]),
        Err(e) => Err(anyhow!("reading .dockerignore: {e}")),
    }
}

#[derive(Debug)]
pub enum Output {
    Local(PathBuf),
    Tar(PathBuf),
    Oci(PathBuf),
    Docker(PathBuf),
}

fn parse_output(spec: &str) -> Result<Output> {
    let mut ty = None;
    let mut dest = None;
    for part in spec.split(',') {
        let (k, v) = parse_kv(part, "--output field")?;
        match k.as_str() {
            "type" => ty = Some(v),
            "dest" => dest = Some(PathBuf::from(v)),
            other => bail!("--output: unsupported field {other:?} (kiln knows type= and dest=)"),
        }
    }
    let dest = dest.ok_or_else(|| anyhow!("--output {spec:?}: dest= is required"))?;
    Ok(match ty.as_deref() {
        Some("local") => Output::Local(dest),
        Some("tar") => Output::Tar(dest),
        Some("oci") => Output::Oci(dest),
        Some("docker") => Output::Docker(dest),
        other => bail!(
            "--output type {:?} is not supported (local, tar, oci, docker)",
            other.unwrap_or("")
        ),
    })
}

fn export_output(
    store: &Store,
    image: &kiln_store::ImageRecord,
    layers: &[LayerInfo],
    out: &Output,
    tags: &[String],
) -> Result<()> {
    match out {
        Output::Local(dir) => {
            std::fs::create_dir_all(dir)?;
            flatten_into(store, layers, dir)
        }
        Output::Tar(file) => {
            let tmp = tempfile::Builder::new()
                .prefix("kiln-output-")
                .tempdir_in(store.root().join("tmp"))?;
            flatten_into(store, layers, tmp.path())?;
            let mut f = std::fs::File::create(file)?;
            let opts = kiln_store::LayerOptions {
                compression: kiln_store::Compression::None,
                ..Default::default()
            };
            kiln_store::layer::write_layer(tmp.path(), &opts, &mut f)?;
            Ok(())
        }
        Output::Oci(file) | Output::Docker(file) => {
            let format = if matches!(out, Output::Oci(_)) {
                kiln_store::ArchiveFormat::Oci
            } else {
                kiln_store::ArchiveFormat::Docker
            };
            let refs: Vec<String> = if tags.is_empty() {
                vec![image.config_digest.to_string()]
            } else {
                tags.to_vec()
            };
            let mut f = std::fs::File::create(file)?;
            store.save(&refs, format, &mut f)?;
            Ok(())
        }
    }
}

/// Applies the layers in order into `dir` (whiteouts delete).
pub fn flatten_into(store: &Store, layers: &[LayerInfo], dir: &Path) -> Result<()> {
    for l in layers {
        let mut blob = store.open_blob(&l.digest)?;
        let diff_id = kiln_store::layer::apply_layer(
            &mut blob,
            dir,
            kiln_store::layer::WhiteoutMode::Apply,
            &store.layer_limits(),
        )
        .with_context(|| format!("layer {} cannot be unpacked", l.digest))?;
        if diff_id != l.diff_id {
            bail!(
                "layer {} unpacked to {} but the image says {}",
                l.digest,
                diff_id,
                l.diff_id
            );
        }
    }
    Ok(())
}

impl Builder {
    /// Explains every step of this build that was not a cache hit.
    fn explain(&self) -> Result<Report> {
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
        Ok(Report {
            image: String::new(),
            steps: trace.iter().filter(|t| !t.meta).count(),
            missed,
        })
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

    /// Runs every needed stage, each in its own thread as soon as the
    /// stages it reads from are done; returns the target's result.
    fn run_all(&self) -> Result<Arc<StageResult>> {
        let order = self.plan.order.clone();
        std::thread::scope(|scope| {
            for &i in &order {
                scope.spawn(move || {
                    let r = self.run_stage_after_deps(i);
                    let (lock, cv) = &self.slots[i];
                    *lock.lock().expect("stage slot") =
                        Some(r.map(Arc::new).map_err(|e| format!("{e:#}")));
                    cv.notify_all();
                });
            }
        });
        self.wait_stage(self.plan.target)
            .map_err(|e| anyhow::Error::new(Failure::new(1, e)))
    }

    fn wait_stage(&self, i: usize) -> std::result::Result<Arc<StageResult>, String> {
        let (lock, cv) = &self.slots[i];
        let mut g = lock.lock().expect("stage slot");
        loop {
            if let Some(r) = g.as_ref() {
                return r.clone();
            }
            g = cv.wait(g).expect("stage slot");
        }
    }

    /// The finished result of a stage this one depends on.
    pub fn stage_result(&self, i: usize) -> Result<Arc<StageResult>> {
        self.wait_stage(i).map_err(|e| anyhow!("{e}"))
    }

    fn run_stage_after_deps(&self, i: usize) -> Result<StageResult> {
        for &d in &self.plan.stages[i].deps {
            if let Err(e) = self.wait_stage(d) {
                // The dependency's own error is reported by its thread.
                bail!("{e}");
            }
        }
        self.run_stage(i)
    }

    /// Resolves a base image: the local store first (unless
    /// `--pull=always`), then its registry (unless `--pull=never`). Each
    /// name is pulled at most once per build.
    pub fn resolve_image(&self, name: &str) -> Result<kiln_store::ImageRecord> {
        if self.opts.pull != PullPolicy::Always {
            if let Some(img) = self.store.resolve_image(name)? {
                return Ok(img);
            }
            if self.opts.pull == PullPolicy::Never {
                bail!(
                    "failed to resolve source metadata for {name}: no such image in the local store (--pull=never was given)"
                );
            }
        }
        let cell = self
            .pulls
            .lock()
            .expect("pulls")
            .entry(name.to_string())
            .or_default()
            .clone();
        let pulled = cell.get_or_init(|| {
            let id = self.progress.start(&format!("[internal] pull {name}"));
            let started = std::time::Instant::now();
            let events = |e: kiln_store::registry::Event| {
                if let kiln_store::registry::Event::BlobDone { digest, outcome } = e {
                    self.progress
                        .log(id, &format!("{}: {outcome}", digest.short()));
                }
            };
            let r = crate::cmd_registry::pull_into(
                &self.store,
                &self.access,
                name,
                &kiln_store::registry::Platform::host(),
                &events,
            );
            match &r {
                Ok(_) => self.progress.done(id, started.elapsed()),
                Err(e) => self.progress.error(id, &format!("{e:#}")),
            }
            r.map_err(|e| format!("{e:#}"))
        });
        match pulled {
            Ok(img) => Ok(img.clone()),
            Err(e) if self.opts.pull == PullPolicy::Always => {
                bail!("failed to resolve source metadata for {name}: {e}")
            }
            Err(e) => bail!(
                "failed to resolve source metadata for {name}: not in the local store, and pulling it failed: {e}"
            ),
        }
    }

    /// Where a stage's base comes from, with its config and layers.
    pub fn base_of(
        &self,
        base: &Base,
    ) -> Result<(ImageConfig, Vec<LayerInfo>, String, Option<String>)> {
        match base {
            Base::Scratch => Ok((
                key::scratch_config(),
                vec![],
                key::hash_str("scratch"),
                None,
            )),
            Base::Stage(i) => {
                let r = self.stage_result(*i)?;
                Ok((r.config.clone(), r.layers.clone(), r.key.clone(), None))
            }
            Base::Image(name) => {
                let img = self.resolve_image(name)?;
                // Keyed on the image ID (its config digest): the same image
                // loaded from another archive format keeps its ID.
                let k = key::hash_str(&format!("image {}", img.config_digest));
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

/// `kiln cache why IMAGE|KEY`: the explanation kept from the build that
/// made an image, or, for a cache record, how it differs from the nearest
/// earlier record at the same place in the same Dockerfile.
pub fn cache_why(store: &Store, target: &str) -> Result<ExitCode> {
    if let Some(img) = store.resolve_image(target)? {
        return match load_report(store, &img.config_digest)? {
            Some(r) => {
                print!("{}", render_report(&r));
                Ok(ExitCode::SUCCESS)
            }
            None => Err(Failure::new(
                1,
                format!(
                    "kiln: no build report for {target} ({}): it was not built by kiln on this root",
                    img.config_digest.short()
                ),
            )
            .into()),
        };
    }
    let prefix = target.trim_start_matches("blake3:");
    if prefix.len() < 6 || !prefix.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(Failure::new(
            1,
            format!("kiln: {target:?} is neither an image nor a cache key (give at least 6 hex digits of a key from `kiln cache ls`)"),
        )
        .into());
    }
    let found = store.cache_by_prefix(prefix, 2)?;
    let rec = match found.as_slice() {
        [] => {
            return Err(Failure::new(1, format!("kiln: no cache record with key {prefix}")).into())
        }
        [one] => one,
        many => {
            return Err(Failure::new(
                1,
                format!(
                    "kiln: key prefix {prefix} is ambiguous ({} or more records)",
                    many.len()
                ),
            )
            .into())
        }
    };
    let trace = explain::StepTrace {
        stage: rec.stage.clone(),
        key: rec.key.clone(),
        parent: rec.parent.clone().unwrap_or_default(),
        description: rec.description.clone(),
        source: rec.source.clone(),
        inputs: rec.inputs.clone(),
        hit: false,
        args: vec![],
        meta: rec.layer.is_none(),
    };
    let mut nearest = |q: kiln_store::NearestQuery| Ok(store.cache_nearest(&q)?);
    let why = explain::explain_step(&trace, None, &mut nearest, Some(rec.created), false)?;
    println!(
        "{} ({}), key {}:\n  {}",
        rec.description,
        rec.source,
        &rec.key[..12],
        why
    );
    Ok(ExitCode::SUCCESS)
}
