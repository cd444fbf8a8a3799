//! `kiln`: the command line, a thin binary over the `kiln_builder` library. Parses flags (cli.rs), opens the store, and
//! hands each verb to the module that implements it.

mod attach;
mod build_result;
mod cli;
mod cmd_attest;
mod cmd_build;
mod cmd_containers;
mod cmd_images;
mod cmd_inspect_ctr;
mod cmd_registry;
mod cmd_volumes;
mod reproduce;
mod run_health;
mod run_mounts;
mod security_opt;

use std::io::Read;
use std::process::ExitCode;

use clap::Parser;

use crate::cli::{CacheCommand, Cli, Command, ParseFormat, SystemCommand};
use kiln_builder::error::{self, Failure};

fn main() -> ExitCode {
    // Must come first: a re-executed runner helper never returns from here.
    kiln_runner::init_hook();
    let cli = Cli::parse();
    if let Err(e) = kiln_runner::Snapshotter::from_env() {
        eprintln!("kiln: {e}");
        return ExitCode::from(125);
    }
    // Still single-threaded: as an ordinary user, become root of a user
    // namespace of our own (container root = the user, 1..N = its
    // subordinate range) before anything touches the store or a container.
    let need = user_namespace_need(&cli.command);
    if need != Need::No && !rustix::process::geteuid().is_root() {
        kiln_runner::note_helper_owner();
    }
    if let Need::Container(name) = &need {
        // Rootless: the container's own namespace, where we are root.
        if let Err(e) = cmd_inspect_ctr::join_rootless(&cli.root, name) {
            eprintln!("kiln: {e}");
            return ExitCode::from(125);
        }
    } else if need != Need::No {
        match kiln_runner::userns::enter_rootless() {
            Ok(Some(entered)) => {
                for w in entered.warnings {
                    eprintln!("kiln: warning: {w}");
                }
            }
            Ok(None) => {}
            // Listing and reading the store's records works as the user.
            Err(_) if need == Need::Optional => {}
            Err(e) => {
                eprintln!("kiln: {e}");
                return ExitCode::from(125);
            }
        }
    }
    let result = dispatch(cli);
    // Copied roots still being removed in the background.
    kiln_runner::wait_for_cleanup();
    match result {
        Ok(code) => code,
        Err(err) => {
            let failure = Failure::from(err);
            let text = failure.message.trim_end();
            if !text.is_empty() {
                eprintln!("{text}");
            }
            ExitCode::from(failure.code)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Need {
    /// It goes into a running container (exec, cp, top): rootless, it
    /// joins the user namespace that container runs in.
    Container(String),
    /// It unpacks layers, runs or removes containers or deletes snapshots,
    /// whose files belong to container IDs: no namespace, no command.
    Required,
    /// It only reads records and blobs: without a namespace it still works.
    Optional,
    /// It touches neither the store nor a container.
    No,
}

fn user_namespace_need(c: &Command) -> Need {
    match c {
        Command::Parse(_) | Command::Login(_) | Command::Logout(_) => Need::No,
        Command::Exec(a) => Need::Container(a.container.clone()),
        Command::Top(a) => Need::Container(a.container.clone()),
        Command::Cp(a) => match cmd_inspect_ctr::cp_container(a) {
            Some(name) => Need::Container(name.to_string()),
            // Not one container: cp's own error says so.
            None => Need::No,
        },
        Command::Images(_)
        | Command::Tag { .. }
        | Command::Inspect { .. }
        | Command::History(_)
        | Command::Sbom(_)
        | Command::Save(_)
        | Command::Ps(_)
        | Command::Logs(_)
        | Command::Port(_)
        | Command::Push(_)
        | Command::Cache {
            command: CacheCommand::Ls { .. } | CacheCommand::Du | CacheCommand::Why { .. },
        }
        | Command::System {
            command: SystemCommand::Df | SystemCommand::Fsck { repair: false },
        } => Need::Optional,
        _ => Need::Required,
    }
}

/// Rootless, a root that belongs to another user shows as the kernel's
/// overflow uid (nobody): say whose it is not.
fn foreign_owner_hint(root: &std::path::Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let overflow = std::fs::read_to_string("/proc/sys/kernel/overflowuid")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(65534);
    let nested = kiln_store::UserNs::current() != kiln_store::UserNs::Initial;
    match std::fs::metadata(root) {
        Ok(m) if nested && m.uid() == overflow => " (it belongs to another user: a rootless \
                                                     kiln uses its own user's store, \
                                                     $XDG_DATA_HOME/kiln by default)"
            .to_string(),
        _ => String::new(),
    }
}

/// Opens the store; blobs it knows remotely, not local (a lazily imported
/// registry cache, a base a build resolved without its layers) are fetched
/// through `access` when a command reads them.
fn open_store(
    cli_root: &Option<std::path::PathBuf>,
    limits: &cli::LayerLimitFlags,
    access: &cmd_registry::Access,
) -> anyhow::Result<kiln_store::Store> {
    let root = cli_root
        .clone()
        .unwrap_or_else(kiln_store::Store::default_root);
    let store = kiln_store::Store::open(&root).map_err(|e| {
        anyhow::anyhow!(
            "cannot open kiln root {}: {e}{}",
            root.display(),
            foreign_owner_hint(&root)
        )
    })?;
    if let Some(b) = store.recovered_from() {
        eprintln!(
            "kiln: warning: the metadata database was damaged (empty, truncated or corrupt); \
             it was moved to {} and rebuilt from the blobs: images are back by ID, tags and \
             cache records are lost",
            b.display()
        );
    }
    let mut l = store.layer_limits();
    if let Some(s) = &limits.max_layer_size {
        l.max_uncompressed_bytes = cmd_images::parse_size(s)
            .map_err(|e| anyhow::anyhow!("--max-layer-size / KILN_MAX_LAYER_SIZE: {e}"))?;
    }
    if let Some(n) = limits.max_layer_entries {
        l.max_entries = n;
    }
    store.set_layer_limits(l);
    store.set_remote_fetcher(access.remote_fetcher());
    Ok(store)
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let access = cmd_registry::access(&cli.registry);
    // Each command opens the store when (and only if) it needs it.
    let store = || open_store(&cli.root, &cli.limits, &access);
    match cli.command {
        Command::Parse(args) => cmd_parse(args),
        Command::Build(args) => {
            let store = store()?;
            let counter = store.cache_counter();
            let r = cmd_build::cmd_build(store, args, access);
            // What the build read of the cache, for tests and benchmarks
            // that hold a build to its own steps' records.
            if std::env::var_os("KILN_CACHE_STATS").is_some() {
                let s = counter.stats();
                eprintln!(
                    "kiln: cache reads: {} queries, {} rows, {} bytes, {} steps",
                    s.queries, s.rows, s.bytes, s.steps
                );
            }
            r
        }
        Command::Images(args) => cmd_images::images(&store()?, &args),
        Command::Rmi(args) => cmd_images::rmi(&store()?, &args),
        Command::Tag { source, target } => cmd_images::tag(&store()?, &source, &target),
        Command::Inspect {
            attestations: true,
            images,
            ..
        } => cmd_attest::inspect_attestations(&store()?, &images),
        Command::Inspect {
            images, platform, ..
        } => cmd_containers::inspect(&store()?, &images, platform),
        Command::History(args) => cmd_images::history(&store()?, &args),
        Command::Sbom(args) => cmd_attest::sbom(&store()?, &args),
        Command::Save(args) => cmd_images::save(&store()?, &args),
        Command::Load(args) => cmd_images::load(&store()?, &args),
        Command::Import(args) => cmd_images::import(&store()?, &args),
        Command::Run(args) => cmd_containers::run(&store()?, &access, args),
        Command::Ps(args) => cmd_containers::ps(&store()?, &args),
        Command::Stop(args) => cmd_containers::stop(&store()?, &args),
        Command::Rm(args) => cmd_containers::rm(&store()?, &args),
        Command::Logs(args) => cmd_inspect_ctr::logs(&store()?, &args),
        Command::Top(args) => cmd_inspect_ctr::top(&store()?, &args),
        Command::Port(args) => cmd_inspect_ctr::port(&store()?, &args),
        Command::Cp(args) => cmd_inspect_ctr::cp(&store()?, &args),
        Command::Exec(args) => cmd_containers::exec(&store()?, args),
        Command::Volume { command } => cmd_volumes::volume(&store()?, command),
        Command::Cache { command } => cache_command(command, &store, &access),
        Command::System { command } => {
            let store = store()?;
            match command {
                SystemCommand::Df => cmd_images::system_df(&store),
                SystemCommand::Fsck { repair } => cmd_images::system_fsck(&store, repair),
                SystemCommand::Prune { all } => cmd_images::system_prune(&store, all),
            }
        }
        Command::Pull(args) => cmd_registry::cmd_pull(&store()?, &access, &args),
        Command::Push(args) => cmd_registry::cmd_push(&store()?, &access, &args),
        Command::Login(args) => cmd_registry::cmd_login(&access, &args),
        Command::Logout(args) => cmd_registry::cmd_logout(&args),
    }
}

/// `kiln cache ...`: the local build cache, or with `prune --registry` a
/// registry repository's kiln caches.
fn cache_command(
    command: CacheCommand,
    open: &dyn Fn() -> anyhow::Result<kiln_store::Store>,
    access: &cmd_registry::Access,
) -> anyhow::Result<ExitCode> {
    match command {
        CacheCommand::Ls { format, filters } => cmd_images::cache_ls(&open()?, format, &filters),
        CacheCommand::Du => cmd_images::cache_du(&open()?),
        CacheCommand::Why { target } => cmd_build::cache_why(&open()?, &target),
        CacheCommand::Prune {
            registry: Some(repo),
            all,
            keep_storage,
            filters,
            keep,
            dry_run,
        } => {
            if all || keep_storage.is_some() || !filters.is_empty() {
                return Err(Failure::new(1, "kiln: cache prune --registry prunes a registry repository: --all, --keep-storage and --filter are for the local cache").into());
            }
            cmd_registry::cache_prune_registry(&open()?, access, &repo, keep, dry_run)
        }
        CacheCommand::Prune {
            all,
            keep_storage,
            filters,
            keep,
            dry_run,
            ..
        } => {
            if keep.is_some() || dry_run {
                return Err(Failure::new(
                    1,
                    "kiln: cache prune: --keep and --dry-run go with --registry REGISTRY/REPO",
                )
                .into());
            }
            cmd_images::cache_prune(&open()?, all, keep_storage.as_deref(), &filters)
        }
    }
}

fn cmd_parse(args: cli::ParseArgs) -> anyhow::Result<ExitCode> {
    let path = match (args.file, args.path) {
        (Some(f), _) => f,
        (None, Some(p)) if p.is_dir() => p.join("Dockerfile"),
        (None, Some(p)) => p,
        (None, None) => "Dockerfile".into(),
    };
    let (name, src) = if path.as_os_str() == "-" {
        let mut b = Vec::new();
        std::io::stdin().read_to_end(&mut b)?;
        ("-".to_string(), error::utf8_text(b, "-")?)
    } else {
        let b = std::fs::read(&path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let name = path.display().to_string();
        let s = error::utf8_text(b, &name)?;
        (name, s)
    };
    let df = kiln_parser::parse(&src).map_err(|e| Failure::new(1, e.render(&src, &name)))?;
    // The typed layer validates flags per instruction. The s-expression dump
    // is BuildKit's raw-parser format (flags kept whatever their name), so
    // only the JSON form, which a build would use, is held to it.
    if args.format == ParseFormat::Json {
        kiln_parser::parse_stages(&df).map_err(|e| Failure::new(1, e.render(&src, &name)))?;
    }
    for w in &df.warnings {
        eprintln!(
            "warning: {}:{}:{}: {}",
            name, w.span.line, w.span.column, w.message
        );
    }
    match args.format {
        ParseFormat::Sexpr => print!("{}", df.to_sexpr()),
        ParseFormat::Json => println!("{}", serde_json::to_string_pretty(&df.to_json())?),
    }
    Ok(ExitCode::SUCCESS)
}
