//! `kiln build` and `kiln cache why`: flags -> engine options, the build,
//! then what is done with its image (tags, outputs, push, cache export).

use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context as _, Result};
use kiln_builder::context::BuildContext;
use kiln_builder::engine::options::{default_parallelism, parse_kv};
use kiln_builder::engine::output::parse_output;
use kiln_builder::engine::platform::Platform;
use kiln_builder::engine::report::{load_report, render_report, save_report};
use kiln_builder::engine::{
    explain, plan, portable, ssh, BuildArgs, Builder, Options, Secret, StageResult,
};
use kiln_builder::error::{utf8_text, Failure};
use kiln_builder::progress::{Mode, Progress};
use kiln_parser::dockerignore::{self, PatternMatcher};
use kiln_store::Store;

use crate::cli;

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
    access: kiln_builder::registry::Access,
) -> Result<ExitCode> {
    let (context_dir, dockerfile_name, src, dockerfile_path) = read_dockerfile(&args)?;
    let flags = Flags::parse(&args)?;
    let attest = crate::attach::AttestRequest::parse(
        args.sbom.as_deref(),
        args.provenance.as_deref(),
        &args.attest,
    )?;
    let started_on = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let progress = progress_for(&args);
    if let Some(n) = &flags.epoch_note {
        progress.info(n);
    }
    if flags.platforms.len() > 1 {
        multi_platform_limits(&args, &attest)?;
    }
    let (plan, escape) = plan_build(
        &src,
        &dockerfile_name,
        &flags.build_args,
        &args,
        &flags.platforms,
        &progress,
    )?;
    // Context: one scan, .dockerignore applied.
    let store = Arc::new(store);
    let _lease = store.lease()?;
    let ctx = scan_context(&store, context_dir.as_deref(), &args, &progress)?;
    import_caches(&store, &flags.cache_from, &access, &progress);
    let builder = Builder::new(
        store.clone(),
        Options {
            dockerfile_name,
            dockerfile_src: src,
            build_args: flags.build_args,
            no_cache: args.no_cache,
            pull: args.pull,
            network: args.network,
            secrets: flags.secrets,
            ssh: flags.ssh,
            labels: flags.labels,
            source_date_epoch: flags.source_date_epoch,
            seccomp_unconfined: flags.seccomp_unconfined,
            epoch_in_run: args.reproducible || args.check_reproducible,
            max_parallelism: args
                .max_parallelism
                .map_or_else(default_parallelism, |n| n as usize),
            explain: args.explain,
        },
        ctx,
        progress,
        plan,
        escape,
        dockerfile_path,
        access,
    );
    let results = builder.run_all();
    builder.ctx.save_stat_cache(&builder.store)?;
    let results = results?;
    warn_unused_args(&builder);
    let inline = matches!(
        flags.cache_to,
        Some(portable::CacheTo {
            dest: portable::Location::Inline,
            ..
        })
    );
    let built = crate::build_result::write_images(
        &builder,
        &results,
        &args,
        &flags.outputs,
        &attest,
        started_on,
        inline,
    )?;
    if args.check_reproducible {
        check_reproducible(
            &builder,
            &built.images[0],
            &args,
            flags.source_date_epoch.unwrap_or(0),
        )?;
    }
    if args.push {
        let what = match &built.index {
            Some(i) => kiln_builder::registry::Pushable::Index(i),
            None => kiln_builder::registry::Pushable::Image(&built.images[0]),
        };
        push_tags(&builder, what, &args)?;
    }
    if let Some(f) = &args.iidfile {
        std::fs::write(f, built.id().to_string())
            .with_context(|| format!("writing --iidfile {}", f.display()))?;
    }
    let took = builder.progress.elapsed();
    if args.quiet {
        println!("{}", built.id());
    } else {
        builder.progress.info(&format!(
            "built {} in {:.3}s{}",
            built.id().short(),
            took.as_secs_f64(),
            if args.tags.is_empty() {
                String::new()
            } else {
                format!(" as {}", args.tags.join(", "))
            }
        ));
    }
    if let Some(to) = flags.cache_to.as_ref().filter(|_| !inline) {
        export_cache(&builder, &results, to)?;
    }
    finish_report(&builder, &built.images, args.explain)?;
    Ok(ExitCode::SUCCESS)
}

/// The Dockerfile's name (in messages), text and absolute path (in cache
/// records), and the context directory (None: `-`, no context).
fn read_dockerfile(args: &cli::BuildArgs) -> Result<(Option<PathBuf>, String, String, String)> {
    Ok(if args.context == "-" {
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
    })
}

/// The build's flags, parsed and checked before anything runs.
struct Flags {
    build_args: BuildArgs,
    labels: BTreeMap<String, String>,
    secrets: HashMap<String, Secret>,
    ssh: HashMap<String, PathBuf>,
    cache_to: Option<portable::CacheTo>,
    cache_from: Vec<portable::Location>,
    outputs: Vec<kiln_builder::engine::output::Output>,
    /// `--platform`: none for the host's, implicitly.
    platforms: Vec<Platform>,
    source_date_epoch: Option<i64>,
    /// `--security-opt seccomp=unconfined`.
    seccomp_unconfined: bool,
    /// Where `--reproducible` took the epoch from, when it chose one.
    epoch_note: Option<String>,
}

impl Flags {
    fn parse(args: &cli::BuildArgs) -> Result<Flags> {
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
        let mut cache_from = Vec::new();
        for s in &args.cache_from {
            cache_from.extend(portable::parse_cache_from(s)?);
        }
        let outputs = args
            .outputs
            .iter()
            .map(|o| parse_output(o))
            .collect::<Result<Vec<_>>>()?;
        let platforms = Platform::parse_list(&args.platforms)?;
        let seccomp_unconfined = crate::security_opt::seccomp_unconfined(&args.security_opt)
            .map_err(|e| Failure::new(1, e))?;
        let mut source_date_epoch = source_date_epoch(&mut build_args)?;
        let mut epoch_note = None;
        if (args.reproducible || args.check_reproducible) && source_date_epoch.is_none() {
            let ctx = (args.context != "-").then(|| Path::new(&args.context));
            let (t, why) = crate::reproduce::default_epoch(ctx);
            build_args.insert("SOURCE_DATE_EPOCH".into(), t.to_string());
            source_date_epoch = Some(t);
            epoch_note = Some(format!("--reproducible: SOURCE_DATE_EPOCH={t}, from {why}"));
        }

        Ok(Flags {
            build_args,
            labels,
            secrets,
            ssh,
            cache_to,
            cache_from,
            outputs,
            platforms,
            source_date_epoch,
            seccomp_unconfined,
            epoch_note,
        })
    }
}

/// What a build of several platforms does not do yet, said before it
/// starts rather than half-way.
fn multi_platform_limits(
    args: &cli::BuildArgs,
    attest: &crate::attach::AttestRequest,
) -> Result<()> {
    let refuse = |what: &str| -> Result<()> {
        Err(Failure::new(
            1,
            format!("kiln: {what} with several --platform values is not built yet: build one platform at a time for it"),
        )
        .into())
    };
    if attest.any() {
        return refuse("--sbom/--provenance/--attest");
    }
    if args.check_reproducible {
        return refuse("--check-reproducible");
    }
    Ok(())
}

/// SOURCE_DATE_EPOCH as BuildKit (>= 0.11) and buildx read it: the build
/// arg, else the environment, which then also becomes the build arg (buildx
/// passes it on), so `ARG SOURCE_DATE_EPOCH` in a stage sees it. It dates
/// the config and history and clamps the file times of new layers (what
/// BuildKit 0.13 does with `rewrite-timestamp=true`).
fn source_date_epoch(build_args: &mut BuildArgs) -> Result<Option<i64>> {
    const NAME: &str = "SOURCE_DATE_EPOCH";
    let (value, from) = match build_args.get(NAME) {
        Some(v) => (v.clone(), "--build-arg SOURCE_DATE_EPOCH"),
        None => match std::env::var(NAME) {
            Ok(v) if !v.is_empty() => {
                build_args.insert(NAME.to_string(), v.clone());
                (v, "SOURCE_DATE_EPOCH in the environment")
            }
            _ => return Ok(None),
        },
    };
    if value.is_empty() {
        return Ok(None);
    }
    value
        .parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .map(Some)
        .ok_or_else(|| anyhow!("{from}={value:?} is not a number of seconds since 1970"))
}

/// The progress display `--progress` and `-q` ask for (and the note that
/// `--network host` gets).
fn progress_for(args: &cli::BuildArgs) -> Progress {
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
    Progress::new(mode)
}

/// The Dockerfile parsed, its warnings shown, and the stages planned.
fn plan_build(
    src: &str,
    dockerfile_name: &str,
    build_args: &BuildArgs,
    args: &cli::BuildArgs,
    platforms: &[Platform],
    progress: &Progress,
) -> Result<(plan::Plan, char)> {
    let df =
        kiln_parser::parse(src).map_err(|e| Failure::new(1, e.render(src, dockerfile_name)))?;
    for w in &df.warnings {
        progress.warn(&format!(
            "{}:{}: {}",
            dockerfile_name, w.span.line, w.message
        ));
    }
    let escape = df.directives.escape;
    let stages = kiln_parser::parse_stages(&df)
        .map_err(|e| Failure::new(1, e.render(src, dockerfile_name)))?;
    let plan = plan::plan_platforms(
        stages,
        escape,
        build_args,
        args.target.as_deref(),
        platforms,
    )?;
    Ok((plan, escape))
}

fn scan_context(
    store: &Arc<Store>,
    context_dir: Option<&Path>,
    args: &cli::BuildArgs,
    progress: &Progress,
) -> Result<BuildContext> {
    Ok(match context_dir {
        None => BuildContext::empty(),
        Some(dir) => {
            let id = progress.start("[internal] load build context");
            let started = std::time::Instant::now();
            let patterns = read_dockerignore(dir, args.file.as_deref())?;
            let matcher = PatternMatcher::new(&patterns)
                .map_err(|e| anyhow!("invalid .dockerignore: {e}"))?;
            let ctx = BuildContext::scan(dir, &matcher, Some(store))?;
            progress.done(id, started.elapsed());
            ctx
        }
    })
}

/// A cache to start from: verified on import; what fails verification
/// (or a missing cache) is a warning, and those steps simply run.
fn import_caches(
    store: &Arc<Store>,
    cache_from: &[portable::Location],
    access: &kiln_builder::registry::Access,
    progress: &Progress,
) {
    for src in cache_from {
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
        match portable::import(store, src, access) {
            Ok(imp) => {
                for w in &imp.warnings {
                    progress.warn(&format!("--cache-from {src}: {w}"));
                }
                progress.info(&format!(
                    "imported {} cache records from {}",
                    imp.records, imp.origin
                ));
                progress.done(id, started.elapsed());
            }
            Err(e) => {
                progress.done(id, started.elapsed());
                progress.warn(&format!("--cache-from {src}: {e:#}; building without it"))
            }
        }
    }
}

/// Unused --build-arg: BuildKit warns, it does not fail.
fn warn_unused_args(builder: &Builder) {
    {
        let used = builder.used_args.lock().expect("used args");
        let unused: Vec<&String> = builder
            .opts
            .build_args
            .keys()
            .filter(|k| {
                !used.contains(*k)
                    && !plan::PROXY_ARGS.contains(&k.as_str())
                    // Consumed by the build itself, as BuildKit's frontend does.
                    && k.as_str() != "SOURCE_DATE_EPOCH"
                    && !builder.plan.global_arg_names().any(|g| g == *k)
            })
            .collect();
        if !unused.is_empty() {
            builder.progress.warn(&format!(
                "one or more build-args {:?} were not consumed",
                unused
            ));
        }
    }
}

/// `--check-reproducible`: the second build, shown as a step of its own.
fn check_reproducible(
    builder: &Builder,
    image: &kiln_store::ImageRecord,
    args: &cli::BuildArgs,
    epoch: i64,
) -> Result<()> {
    let bases = builder.bases.lock().expect("bases").clone();
    let id = builder
        .progress
        .start("[check] building again in a fresh root, without cache");
    let started = std::time::Instant::now();
    if let Err(e) = crate::reproduce::check(&builder.store, image, &bases, args, epoch) {
        builder.progress.error(id, "the check failed (below)");
        return Err(Failure::new(1, format!("kiln: {e:#}")).into());
    }
    builder.progress.done(id, started.elapsed());
    builder.progress.info(&format!(
        "reproducible: the second build gave the same image {}",
        image.config_digest
    ));
    Ok(())
}

fn push_tags(
    builder: &Builder,
    what: kiln_builder::registry::Pushable,
    args: &cli::BuildArgs,
) -> Result<()> {
    let opts = kiln_store::registry::PushOptions {
        compression: crate::cmd_registry::compression(args.compression),
        ..Default::default()
    };
    for t in &args.tags {
        let id = builder.progress.start(&format!("pushing {t}"));
        let started = std::time::Instant::now();
        match kiln_builder::registry::push_image(
            &builder.store,
            &builder.access,
            what,
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
    Ok(())
}

/// `--cache-to`: every step's record (mode=max) or the target's chain.
fn export_cache(
    builder: &Builder,
    results: &[Arc<StageResult>],
    to: &portable::CacheTo,
) -> Result<()> {
    let keys: Vec<String> = if to.max {
        let trace = builder.trace.lock().expect("trace");
        trace.iter().map(|t| t.key.clone()).collect()
    } else {
        let mut keys = Vec::new();
        for result in results {
            for k in builder.chain_keys(result) {
                if !keys.contains(&k) {
                    keys.push(k);
                }
            }
        }
        keys
    };
    let (n, notes) = portable::export(&builder.store, &keys, to, &builder.access)
        .with_context(|| format!("--cache-to {}", to.dest))?;
    builder
        .progress
        .info(&format!("exported {n} cache records to {}", to.dest));
    for note in notes {
        builder
            .progress
            .info(&format!("--cache-to {}: {note}", to.dest));
    }
    Ok(())
}

/// The explanation kept for `kiln cache why`, and shown with `--explain`.
fn finish_report(
    builder: &Builder,
    images: &[kiln_store::ImageRecord],
    explain: bool,
) -> Result<()> {
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
    for image in images {
        save_report(&builder.store, &image.config_digest, &report)?;
    }
    if explain {
        eprint!("{}", render_report(&report));
    }
    Ok(())
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
        origin: rec.origin.clone(),
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
    if let Some(o) = &rec.origin {
        println!("  imported from {o}");
    }
    Ok(ExitCode::SUCCESS)
}
