//! Container verbs: the CLI resolves an image to its snapshot dirs and
//! config and hands the runner plain paths (the runner knows nothing of
//! images): run, ps, stop, rm, logs, inspect.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use kiln_runner::{ContainerSpec, Containers, NetworkMode, RootFs, RunOptions, RunnerConfig};
use kiln_store::Store;

use crate::cli::{ExecArgs, PsArgs, RmArgs, RunArgs, RunNetwork, StopArgs};
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
    // Flag errors first, as docker's CLI has them before it looks for the image.
    crate::run_health::restart_policy(&args)?;
    crate::run_health::healthcheck(&args, None, None)?;
    // --platform (multi-platform builds): the index's image for it.
    let platform = args
        .platform
        .as_deref()
        .map(kiln_builder::engine::platform::Platform::parse)
        .transpose()
        .map_err(|e| run_failure(format!("kiln: --platform: {e:#}")))?;
    // Like docker's client: bad mount flags fail before any pull.
    let mount_reqs = parse_mounts(&args)?;
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
    let argv = argv_of(&args, cfg)?;
    let seccomp_unconfined =
        crate::security_opt::seccomp_unconfined(&args.security_opt).map_err(run_failure)?;
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
    let image_volumes: Vec<String> = img.config.config.volumes.keys().cloned().collect();
    let (mounts, anonymous) =
        crate::cmd_volumes::resolve_mounts(store, &mount_reqs, &image_volumes)
            .map_err(|e| run_failure(format!("kiln: {e}")))?;
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
        mounts,
        readonly_rootfs: false,
        seccomp_unconfined,
    };
    let resources = resources(&args)?;
    let restart = crate::run_health::restart_policy(&args)?;
    let healthcheck =
        crate::run_health::healthcheck(&args, cfg.healthcheck.as_ref(), cfg.shell.as_ref())?;
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
        resources,
        restart,
        healthcheck,
        on_removed: Vec::new(),
    };
    start(store, spec, opts, args.detach, &anonymous)
}

/// Starts the container, detached (prints its id) or in the foreground
/// (its exit code); `--rm` in the foreground takes its anonymous volumes.
fn start(
    store: &Store,
    spec: ContainerSpec,
    opts: RunOptions,
    detach: bool,
    anonymous: &[String],
) -> Result<ExitCode> {
    let c = containers(store)?;
    if detach {
        let mut opts = opts;
        if opts.auto_remove && !anonymous.is_empty() {
            opts.on_removed = volume_rm_argv(store, anonymous)?;
        }
        let id = c.run_detached(spec, opts).map_err(runner_failure)?;
        println!("{id}");
        Ok(ExitCode::SUCCESS)
    } else {
        let auto_remove = opts.auto_remove;
        let mounts = spec.mounts.clone();
        let result = c.run_foreground(spec, opts);
        // docker run --rm also removes the container's anonymous volumes.
        if auto_remove || result.is_err() && !anonymous.is_empty() {
            crate::cmd_volumes::remove_anonymous(store, &mounts)?;
        }
        let code = result.map_err(runner_failure)?;
        Ok(ExitCode::from(code.clamp(0, 255) as u8))
    }
}

/// `kiln --root ROOT volume rm NAMES...`: what the monitor of a detached
/// `--rm` container runs once the container is gone (kiln has no daemon
/// to do it), so its anonymous volumes go with it as with docker.
fn volume_rm_argv(store: &Store, names: &[String]) -> Result<Vec<String>> {
    let exe = std::env::current_exe()?;
    let mut argv = vec![
        exe.to_string_lossy().into_owned(),
        "--root".to_string(),
        store.root().to_string_lossy().into_owned(),
        "volume".to_string(),
        "rm".to_string(),
        "--force".to_string(),
    ];
    argv.extend(names.iter().cloned());
    Ok(argv)
}

/// ENTRYPOINT/CMD, docker's rules: --entrypoint resets the image's CMD;
/// arguments after the image replace CMD.
fn argv_of(args: &RunArgs, cfg: &kiln_store::ContainerConfig) -> Result<Vec<String>> {
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
    Ok(argv)
}

/// `-v` and `--mount`, parsed (docker's errors, exit 125).
fn parse_mounts(args: &RunArgs) -> Result<Vec<crate::run_mounts::MountReq>> {
    let volumes = args
        .volume
        .iter()
        .map(|v| crate::run_mounts::parse_volume_flag(v));
    let mounts = args
        .mount
        .iter()
        .map(|m| crate::run_mounts::parse_mount_flag(m));
    volumes
        .chain(mounts)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| run_failure(format!("kiln: {e}")))
}

/// The limit flags in docker's syntax; a bad value is docker's
/// `invalid argument` error (exit 125). Their meaning is checked by the
/// runner when the container is created.
fn resources(args: &RunArgs) -> Result<kiln_runner::cgroups::Resources> {
    use kiln_runner::cgroups::{parse_cpus, parse_memory, parse_memory_swap};
    fn flag<T>(
        value: &Option<String>,
        name: &str,
        parse: impl Fn(&str) -> std::result::Result<T, String>,
    ) -> Result<Option<T>> {
        match value {
            None => Ok(None),
            Some(v) => parse(v).map(Some).map_err(|e| {
                run_failure(format!(
                    "kiln: invalid argument \"{v}\" for \"{name}\" flag: {e}"
                ))
            }),
        }
    }
    let int = |v: &str| {
        v.parse::<i64>()
            .map_err(|_| format!("strconv.ParseInt: parsing \"{v}\": invalid syntax"))
    };
    let shares = flag(&args.cpu_shares, "-c, --cpu-shares", int)?;
    if shares.is_some_and(|s| s < 0) {
        return Err(run_failure(
            "kiln: invalid --cpu-shares: the relative weight cannot be negative",
        ));
    }
    Ok(kiln_runner::cgroups::Resources {
        memory: flag(&args.memory, "-m, --memory", parse_memory)?,
        memory_swap: flag(&args.memory_swap, "--memory-swap", parse_memory_swap)?,
        nano_cpus: flag(&args.cpus, "--cpus", parse_cpus)?,
        cpu_shares: shares.map(|s| s as u64),
        pids_limit: flag(&args.pids_limit, "--pids-limit", int)?,
    })
}

/// `kiln inspect NAME...`: a container (docker's order: containers
/// first) or an image, each as docker's JSON object.
pub fn inspect(store: &Store, names: &[String], platform: Option<String>) -> Result<ExitCode> {
    let platform = platform
        .map(|p| kiln_builder::engine::platform::Platform::parse(&p))
        .transpose()
        .map_err(|e| anyhow::anyhow!("--platform: {e}"))?;
    let c = if store.containers_dir().is_dir() {
        Some(containers(store)?)
    } else {
        None
    };
    let mut out = Vec::new();
    let mut missing = Vec::new();
    for n in names {
        if let Some(info) = c.as_ref().and_then(|c| c.inspect(n).ok()) {
            out.push(container_json(&info, store));
        } else if let Some(v) = crate::cmd_images::inspect_image(store, n, platform.as_ref())? {
            out.push(v);
        } else {
            missing.push(n.clone());
        }
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    if missing.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        Err(Failure::new(
            1,
            format!("Error: No such image or container: {}", missing.join(", ")),
        )
        .into())
    }
}

fn rfc3339(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// docker's `ContainerJSON`, the fields kiln has, plus `Cgroups`: where
/// the limits were put (one cgroup per hierarchy, v1 or v2).
fn container_json(i: &kiln_runner::ContainerInfo, store: &Store) -> serde_json::Value {
    use kiln_runner::ContainerStatus;
    let (status, running, pid, code, finished) = match i.status {
        ContainerStatus::Created => ("created", false, 0, 0, 0),
        ContainerStatus::Running { pid } => ("running", true, pid, 0, 0),
        ContainerStatus::Exited { code, finished } => ("exited", false, 0, code, finished),
        // docker: Running and Restarting are both true between restarts.
        ContainerStatus::Restarting { code, finished } => ("restarting", true, 0, code, finished),
    };
    let r = &i.resources;
    let cgroups: Vec<serde_json::Value> = i
        .cgroups
        .iter()
        .map(|c| {
            serde_json::json!({
                "Version": match c.version {
                    kiln_runner::cgroups::Version::V1 => "v1",
                    kiln_runner::cgroups::Version::V2 => "v2",
                },
                "Controllers": c.controllers.iter().map(|c| c.name()).collect::<Vec<_>>(),
                "Path": c.dir,
            })
        })
        .collect();
    let mut v = serde_json::json!({
        "Id": i.id,
        "Created": rfc3339(i.created),
        "Path": i.spec.args.first(),
        "Args": i.spec.args.get(1..).unwrap_or_default(),
        "State": {
            "Status": status,
            "Running": running,
            "Paused": false,
            "Restarting": matches!(i.status, ContainerStatus::Restarting { .. }),
            "OOMKilled": i.oom_killed,
            "Dead": false,
            "Pid": pid,
            "ExitCode": code,
            "StartedAt": rfc3339(i.started),
            "FinishedAt": if finished > 0 { rfc3339(finished) } else { "0001-01-01T00:00:00Z".into() },
            "Health": i.health,
        },
        "RestartCount": i.restart_count,
        "Image": i.image,
        "Name": format!("/{}", i.name),
        "HostConfig": {
            "AutoRemove": i.auto_remove,
            "Memory": r.memory.unwrap_or(0),
            "MemorySwap": r.effective_swap().unwrap_or(0),
            "NanoCpus": r.nano_cpus.unwrap_or(0),
            "CpuQuota": r.cpu_quota_us().unwrap_or(0),
            "CpuPeriod": if r.nano_cpus.is_some() { kiln_runner::cgroups::limits::CPU_PERIOD_US } else { 0 },
            "CpuShares": r.cpu_shares.unwrap_or(0),
            "PidsLimit": r.pids_limit,
            "RestartPolicy": {
                "Name": i.restart_policy.name(),
                "MaximumRetryCount": i.restart_policy.max_retries(),
            },
        },
        "Config": {
            "Hostname": i.spec.hostname.clone().unwrap_or_else(|| i.id[..12.min(i.id.len())].to_string()),
            "User": i.spec.user.clone().unwrap_or_default(),
            "Env": i.spec.env,
            "Cmd": i.spec.args,
            "Image": i.image,
            "WorkingDir": i.spec.cwd,
            "Healthcheck": i.healthcheck.as_ref().map(crate::run_health::config_json),
        },
        "Mounts": i.spec.mounts.iter().map(|m| mount_json(m, store)).collect::<Vec<_>>(),
        "Ports": i.ports.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        "Cgroups": cgroups,
    });
    // docker leaves both out (omitempty) when there is no health check.
    if i.health.is_none() {
        v["State"].as_object_mut().map(|s| s.remove("Health"));
    }
    if i.healthcheck.is_none() {
        v["Config"].as_object_mut().map(|c| c.remove("Healthcheck"));
    }
    v
}

/// docker's `MountPoint`: a volume shows its name, a bind its host path.
fn mount_json(m: &kiln_runner::MountSpec, store: &Store) -> serde_json::Value {
    use kiln_runner::MountKind;
    let (kind, source, rw, name) = match &m.kind {
        MountKind::Bind { source, readonly } => {
            ("bind", source.display().to_string(), !readonly, None)
        }
        MountKind::Volume {
            source, readonly, ..
        } => (
            "volume",
            source.display().to_string(),
            !readonly,
            store.volumes().by_mountpoint(source),
        ),
        MountKind::Tmpfs { .. } => ("tmpfs", String::new(), true, None),
    };
    serde_json::json!({
        "Type": kind,
        "Name": name,
        "Source": source,
        "Destination": m.target,
        "RW": rw,
    })
}

/// `kiln exec`: docker's exit codes (the command's own; 126 when it
/// cannot be run; 1 when the container is missing or not running).
pub fn exec(store: &Store, args: ExecArgs) -> Result<ExitCode> {
    if let Some(u) = &args.user {
        kiln_runner::user::check_spec(u).map_err(|e| Failure::new(126, format!("kiln: {e}")))?;
    }
    let opts = kiln_runner::ExecOptions {
        args: args.command.clone(),
        env: args.env.iter().map(|e| expand_env_arg(e)).collect(),
        user: args.user.clone(),
        workdir: args.workdir.clone(),
        tty: args.tty,
        interactive: args.interactive,
        detach: args.detach,
    };
    let c = containers(store)?;
    match c.exec(&args.container, opts) {
        Ok(code) => Ok(ExitCode::from(code.clamp(0, 255) as u8)),
        Err(
            e @ (kiln_runner::RunError::NotRunning(_)
            | kiln_runner::RunError::NoSuchContainer(_)
            | kiln_runner::RunError::AmbiguousPrefix { .. }),
        ) => Err(Failure::new(1, format!("Error response from kiln: {e}")).into()),
        Err(e) => Err(runner_failure(e)),
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
    let mut gone = Vec::new();
    let code = each_container(&args.containers, |name| {
        let id = c.resolve(name)?;
        let mounts = c.inspect(&id).map(|i| i.spec.mounts).unwrap_or_default();
        c.remove(&id, args.force)?;
        gone.extend(mounts);
        Ok(())
    });
    // `rm -v`: the anonymous volumes go too; named ones stay, as with docker.
    if args.volumes {
        crate::cmd_volumes::remove_anonymous(store, &gone)?;
    }
    Ok(code)
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
