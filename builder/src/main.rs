//! `kiln`: the command line. Parses flags (cli.rs), opens the store, and
//! hands each verb to the module that implements it.

mod build;
mod cli;
mod cmd_containers;
mod cmd_images;
mod cmd_registry;
mod context;
mod error;
mod fsutil;
mod progress;

use std::io::Read;
use std::process::ExitCode;

use clap::Parser;

use crate::cli::{CacheCommand, Cli, Command, ParseFormat, SystemCommand};
use crate::error::Failure;

fn main() -> ExitCode {
    // Must come first: a re-executed runner helper never returns from here.
    kiln_runner::init_hook();
    let cli = Cli::parse();
    match dispatch(cli) {
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

fn open_store(cli_root: &Option<std::path::PathBuf>) -> anyhow::Result<kiln_store::Store> {
    let root = cli_root
        .clone()
        .unwrap_or_else(kiln_store::Store::default_root);
    kiln_store::Store::open(&root)
        .map_err(|e| anyhow::anyhow!("cannot open kiln root {}: {e}", root.display()))
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let access = cmd_registry::Access::new(&cli.registry);
    match cli.command {
        Command::Parse(args) => cmd_parse(args),
        Command::Build(args) => {
            let store = open_store(&cli.root)?;
            let counter = store.cache_counter();
            let r = build::cmd_build(store, args, access);
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
        Command::Images(args) => cmd_images::images(&open_store(&cli.root)?, &args),
        Command::Rmi(args) => cmd_images::rmi(&open_store(&cli.root)?, &args),
        Command::Tag { source, target } => {
            cmd_images::tag(&open_store(&cli.root)?, &source, &target)
        }
        Command::Inspect { images } => cmd_images::inspect(&open_store(&cli.root)?, &images),
        Command::History(args) => cmd_images::history(&open_store(&cli.root)?, &args),
        Command::Save(args) => cmd_images::save(&open_store(&cli.root)?, &args),
        Command::Load(args) => cmd_images::load(&open_store(&cli.root)?, &args),
        Command::Import { file, reference } => {
            cmd_images::import(&open_store(&cli.root)?, &file, &reference)
        }
        Command::Run(args) => cmd_containers::run(&open_store(&cli.root)?, &access, args),
        Command::Ps(args) => cmd_containers::ps(&open_store(&cli.root)?, &args),
        Command::Stop(args) => cmd_containers::stop(&open_store(&cli.root)?, &args),
        Command::Rm(args) => cmd_containers::rm(&open_store(&cli.root)?, &args),
        Command::Logs(args) => cmd_containers::logs(&open_store(&cli.root)?, &args),
        Command::Cache { command } => match command {
            CacheCommand::Ls { format, filters } => {
                cmd_images::cache_ls(&open_store(&cli.root)?, format, &filters)
            }
            CacheCommand::Du => cmd_images::cache_du(&open_store(&cli.root)?),
            CacheCommand::Why { target } => build::cache_why(&open_store(&cli.root)?, &target),
            CacheCommand::Prune {
                all,
                keep_storage,
                filters,
            } => cmd_images::cache_prune(
                &open_store(&cli.root)?,
                all,
                keep_storage.as_deref(),
                &filters,
            ),
        },
        Command::System { command } => {
            let store = open_store(&cli.root)?;
            match command {
                SystemCommand::Df => cmd_images::system_df(&store),
                SystemCommand::Fsck { repair } => cmd_images::system_fsck(&store, repair),
                SystemCommand::Prune { all } => cmd_images::system_prune(&store, all),
            }
        }
        Command::Pull(args) => cmd_registry::cmd_pull(&open_store(&cli.root)?, &access, &args),
        Command::Push(args) => cmd_registry::cmd_push(&open_store(&cli.root)?, &access, &args),
        Command::Login(args) => cmd_registry::cmd_login(&access, &args),
        Command::Logout(args) => cmd_registry::cmd_logout(&args),
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
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        ("-".to_string(), s)
    } else {
        let s = std::fs::read_to_string(&path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        (path.display().to_string(), s)
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
