//! Container verbs: the CLI resolves an image to its snapshot dirs and
//! config and hands the runner plain paths (the runner knows nothing of
//! images): run, ps, stop, rm, logs.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use kiln_runner::{ContainerSpec, Containers, NetworkMode, RootFs, RunOptions, RunnerConfig};
use kiln_store::Store;

use crate::cli::{LogsArgs, PsArgs, RmArgs, RunArgs, RunNetwork, StopArgs};
use crate::error::Failure;

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub(crate) fn containers(store: &Store) -> Result<Containers> {
    let dir = store.containers_dir();
    let cfg = RunnerConfig {
        scratch_root: store.scratch_dir(),
        ..Default::default()
    };
    Ok(Containers::open(cfg, &dir)?)
}

/// `docker run` fails with 125 when the run itself cannot start.
fn run_failure(msg: impl Into<String>) -> anyhow::Error {
    Failure::new(125, msg).into()
}

/// An image for another architecture runs under emulation when a handler
/// is registered (and docker's warning says so); otherwise the user is
/// told how to register one before anything starts.
fn check_platform(cfg: &kiln_store::ImageConfig) -> Result<()> {
    use kiln_runner::platform::{check, host_arch, Execution};
    let os = if cfg.os.is_empty() {
        "linux"
    } else {
        cfg.os.as_str()
    };
    let arch = if cfg.architecture.is_empty() {
        host_arch()
    } else {
        cfg.architecture.as_str()
    };
    match check(os, arch, cfg.variant.as_deref()) {
        Ok(Execution::Native) => Ok(()),
        Ok(Execution::Emulated { handler, .. }) => {
            eprintln!(
                "WARNING: The requested image's platform ({os}/{arch}) does not match the detected \
                 host platform (linux/{}): running it under emulation ({handler})",
                host_arch()
            );
            Ok(())
        }
        Err(e) => Err(run_failure(format!("kiln: {e}"))),
    }
}

/// 126/127 when the command cannot be executed (not found, not
/// executable), else 125: docker's codes, which scripts rely on.
fn runner_failure(e: kiln_runner::RunError) -> anyhow::Error {
    let code = e.exit_code().map(|c| c as u8).unwrap_or(125);
    Failure::new(code, format!("kiln: {e}")).into()
}

fn read_env_file(path: &std::path::Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| run_failure(format!("kiln: open {}: {e}", path.display())))?;
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(expand_env_arg(line));
    }
    Ok(out)
}

/// `-e NAME` takes NAME's value from kiln's own environment, as docker does.
fn expand_env_arg(e: &str) -> String {
    if e.contains('=') {
        e.to_string()
    } else {
        match std::env::var(e) {
            Ok(v) => format!("{e}={v}"),
            Err(_) => e.to_string(),
        }
    }
}

fn set_env(env: &mut Vec<String>, entry: String) {
    let name = entry.split('=').next().unwrap_or("").to_string();
    env.retain(|e| e.split('=').next() != Some(name.as_str()));
    if entry.contains('=') {
        env.push(entry);
    }
}

pub fn run(store: &Store, access: &crate::cmd_registry::Access, args: RunArgs) -> Result<ExitCode> {
    // --platform (multi-platform builds): the index's image for it.
    let platform = args
        .platform
        .as_deref()
        .map(kiln_builder::engine::platform::Platform::parse)
        .transpose()
        .map_err(|e| run_failure(format!("kiln: --platform: {e:#}")))?;
    let found = crate::cmd_images::resolve_for_platform(store, &args.image, platform.as_ref())
        .map_err(|e| run_failure(format!("kiln: {e:#}")))?;
    let img = match found {
        Some(img) => img,
        None => {
            // Like docker: an image that is not here is pulled first.
            eprintln!("Unable to find image '{}' locally", args.image);
            let events = crate::cmd_registry::reporter(false);
            crate::cmd_registry::pull_into(
                store,
                access,
                &args.image,
                &platform.as_ref().map_or_else(
                    kiln_store::registry::Platform::host,
                    kiln_builder::engine::platform::Platform::to_registry,
                ),
                &events,
            )
            .map_err(|e| run_failure(format!("kiln: {e:#}")))?
        }
    };
    check_platform(&img.config)?;
    let cfg = &img.config.config;
    // ENTRYPOINT/CMD, docker's rules: --entrypoint resets the image's CMD;
    // arguments after the image replace CMD.
    let mut argv: Vec<String> = Vec::new();
    match &args.entrypoint {
        Some(e) if !e.is_empty() => argv.push(e.clone()),
        Some(_) => {}
        None => argv.extend(cfg.entrypoint.clone().unwrap_or_default()),
    }
    if !args.command.is_empty() {
        argv.extend(args.command.iter().cloned());
    } else if args.entrypoint.is_none() {
        argv.extend(cfg.cmd.clone().unwrap_or_default());
    }
    if argv.is_empty() {
        return Err(run_failure(format!(
            "kiln: no command specified: the image {} has neither ENTRYPOINT nor CMD",
            args.image
        )));
    }
    let mut seccomp_unconfined = false;
    for o in &args.security_opt {
        match o.as_str() {
            "seccomp=unconfined" | "seccomp:unconfined" => seccomp_unconfined = true,
            other => {
                return Err(run_failure(format!(
                    "kiln: --security-opt {other}: not supported (kiln knows seccomp=unconfined)"
                )))
            }
        }
    }
    let mut ports = Vec::new();
    for p in &args.publish {
        ports.push(kiln_runner::parse_port_spec(p).map_err(|e| run_failure(format!("kiln: {e}")))?);
    }
    let mut env = cfg.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(DEFAULT_PATH.to_string());
    }
    for f in &args.env_file {
        for e in read_env_file(f)? {
            set_env(&mut env, e);
        }
    }
    for e in &args.env {
        set_env(&mut env, expand_env_arg(e));
    }
    let cwd = args
        .workdir
        .clone()
        .or_else(|| cfg.working_dir.clone().filter(|w| !w.is_empty()))
        .unwrap_or_else(|| "/".into());
    if !cwd.starts_with('/') {
        return Err(run_failure(format!(
            "kiln: the working directory '{cwd}' is invalid, it needs to be an absolute path"
        )));
    }
    let user = args
        .user
        .clone()
        .or_else(|| cfg.user.clone())
        .filter(|u| !u.is_empty());
    if let Some(u) = &user {
        kiln_runner::user::check_spec(u).map_err(|e| run_failure(format!("kiln: {e}")))?;
    }
    let lowers = img
        .layers
        .iter()
        .rev()
        .map(|l| store.ensure_snapshot(l))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let spec = ContainerSpec {
        rootfs: RootFs {
            lowers,
            upper: None,
        },
        args: argv.clone(),
        env,
        cwd,
        user,
        hostname: args.hostname.clone(),
        network: match args.network {
            RunNetwork::Host => {
                eprintln!(
                    "note: --network host: the container shares the host's network: it reaches \
                     every service on the host's loopback (127.0.0.1, ::1) and binds host ports directly"
                );
                NetworkMode::Host
            }
            RunNetwork::None => NetworkMode::None,
            RunNetwork::Private => NetworkMode::Private,
        },
        mounts: vec![],
        readonly_rootfs: false,
        seccomp_unconfined,
    };
    let opts = RunOptions {
        name: args.name.clone(),
        image: args.image.clone(),
        command: argv
            .iter()
            .map(|a| {
                if a.contains(' ') {
                    format!("{a:?}")
                } else {
                    a.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(" "),
        ports,
        stop_signal: cfg.stop_signal.clone(),
        auto_remove: args.rm,
        tty: args.tty,
        interactive: args.interactive,
    };
    let c = containers(store)?;
    if args.detach {
        let id = c.run_detached(spec, opts).map_err(runner_failure)?;
        println!("{id}");
        Ok(ExitCode::SUCCESS)
    } else {
        let code = c.run_foreground(spec, opts).map_err(runner_failure)?;
        Ok(ExitCode::from(code.clamp(0, 255) as u8))
    }
}

pub fn ps(store: &Store, args: &PsArgs) -> Result<ExitCode> {
    let list = containers(store)?.list(args.all)?;
    print!("{}", kiln_runner::format_ps_table(&list, args.quiet));
    Ok(ExitCode::SUCCESS)
}

/// Applies `op` to each named container the way docker does: the name is
/// echoed on success, an error is reported and the others still go ahead;
/// exit 1 if any failed.
fn each_container(
    names: &[String],
    mut op: impl FnMut(&str) -> Result<(), kiln_runner::RunError>,
) -> ExitCode {
    let mut failed = false;
    for name in names {
        match op(name) {
            Ok(()) => println!("{name}"),
            Err(e) => {
                eprintln!("Error response from kiln: {e}");
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

pub fn stop(store: &Store, args: &StopArgs) -> Result<ExitCode> {
    let c = containers(store)?;
    let timeout = Duration::from_secs(args.time);
    Ok(each_container(&args.containers, |name| {
        c.resolve(name).and_then(|id| c.stop(&id, timeout))
    }))
}

pub fn rm(store: &Store, args: &RmArgs) -> Result<ExitCode> {
    let c = containers(store)?;
    Ok(each_container(&args.containers, |name| {
        c.resolve(name).and_then(|id| c.remove(&id, args.force))
    }))
}

pub fn logs(store: &Store, args: &LogsArgs) -> Result<ExitCode> {
    let c = containers(store)?;
    let id = c
        .resolve(&args.container)
        .map_err(|e| Failure::new(1, format!("Error response from kiln: {e}")))?;
    let stdout = std::io::stdout();
    let mut lock = stdout.lock();
    c.logs(&id, args.follow, &mut lock)?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_entries_replace_by_name() {
        let mut env = vec!["A=1".to_string(), "PATH=/bin".to_string()];
        set_env(&mut env, "A=2".into());
        set_env(&mut env, "B=3".into());
        assert_eq!(env, vec!["PATH=/bin", "A=2", "B=3"]);
    }
}
