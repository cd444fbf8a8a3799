//! Volumes: `kiln volume create|ls|inspect|rm|prune`, and the runner's
//! mounts made from `run -v/--mount` and the image's `VOLUME`s. The store
//! keeps the volumes; which container uses one is read from the
//! containers' specs (a volume is in use while any container, running or
//! not, mounts it: docker's rule).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use kiln_runner::{ContainerInfo, MountKind, MountSpec};
use kiln_store::{Store, VolumeInfo};

use crate::cli::VolumeCommand;
use crate::error::Failure;
use crate::run_mounts::MountReq;

fn daemon_err(msg: impl std::fmt::Display) -> anyhow::Error {
    Failure::new(1, format!("Error response from kiln: {msg}")).into()
}

/// The ids of the containers that mount `v`.
pub(crate) fn users_of(all: &[ContainerInfo], v: &VolumeInfo) -> Vec<String> {
    all.iter()
        .filter(|c| {
            c.spec.mounts.iter().any(
                |m| matches!(&m.kind, MountKind::Volume { source, .. } if source == &v.mountpoint),
            )
        })
        .map(|c| c.id.clone())
        .collect()
}

fn all_containers(store: &Store) -> Result<Vec<ContainerInfo>> {
    Ok(crate::cmd_containers::containers(store)?.list(true)?)
}

/// Normalised target for comparing mount points (`/data/` is `/data`).
fn norm(t: &str) -> String {
    let t = t.trim_end_matches('/');
    if t.is_empty() {
        "/".into()
    } else {
        t.to_string()
    }
}

/// The runner's mounts for the user's requests plus one anonymous volume
/// per `VOLUME` of the image not already covered; also the anonymous
/// volumes made (for `--rm`). Errors are docker's texts.
pub(crate) fn resolve_mounts(
    store: &Store,
    reqs: &[MountReq],
    image_volumes: &[String],
) -> std::result::Result<(Vec<MountSpec>, Vec<String>), String> {
    let mut seen = std::collections::HashSet::new();
    for r in reqs {
        if !seen.insert(norm(r.target())) {
            return Err(format!("Duplicate mount point: {}", norm(r.target())));
        }
    }
    let mut out = Vec::new();
    let mut anonymous = Vec::new();
    let volume = |name: Option<&str>, anonymous: &mut Vec<String>| {
        let v = store
            .volumes()
            .create(name, BTreeMap::new())
            .map_err(|e| format!("{e}"))?;
        if v.anonymous {
            anonymous.push(v.name.clone());
        }
        Ok::<_, String>(v.mountpoint)
    };
    for r in reqs {
        let kind = match r {
            MountReq::Bind {
                source,
                readonly,
                create,
                ..
            } => MountKind::Bind {
                source: bind_source(source, *create)?,
                readonly: *readonly,
            },
            MountReq::Volume {
                name,
                readonly,
                nocopy,
                ..
            } => MountKind::Volume {
                source: volume(name.as_deref(), &mut anonymous)?,
                readonly: *readonly,
                copy_up: !nocopy,
            },
            MountReq::Tmpfs { size, .. } => MountKind::Tmpfs { size: *size },
        };
        out.push(MountSpec {
            target: r.target().to_string(),
            kind,
        });
    }
    for t in image_volumes {
        if seen.insert(norm(t)) {
            out.push(MountSpec {
                target: t.clone(),
                kind: MountKind::Volume {
                    source: volume(None, &mut anonymous)?,
                    readonly: false,
                    copy_up: true,
                },
            });
        }
    }
    Ok((out, anonymous))
}

/// The host path itself (symlinks on the user's own path are followed,
/// as docker does; the runner then opens it without following).
fn bind_source(source: &Path, create: bool) -> std::result::Result<PathBuf, String> {
    if !source.exists() {
        if !create {
            return Err(format!(
                "invalid mount config for type \"bind\": bind source path does not exist: {}",
                source.display()
            ));
        }
        std::fs::create_dir_all(source).map_err(|e| {
            format!(
                "error while creating mount source path '{}': {e}",
                source.display()
            )
        })?;
    }
    std::fs::canonicalize(source).map_err(|e| format!("{}: {e}", source.display()))
}

/// After a container is gone (`rm -v`, `run --rm`): its anonymous
/// volumes that no other container uses. Named volumes are kept.
pub(crate) fn remove_anonymous(store: &Store, spec_mounts: &[MountSpec]) -> Result<()> {
    let all = all_containers(store)?;
    let vols = store.volumes();
    for m in spec_mounts {
        let MountKind::Volume { source, .. } = &m.kind else {
            continue;
        };
        let Some(name) = vols.by_mountpoint(source) else {
            continue;
        };
        if let Some(v) = vols.get(&name)? {
            if v.anonymous && users_of(&all, &v).is_empty() {
                vols.remove(&name)?;
            }
        }
    }
    Ok(())
}

pub fn volume(store: &Store, cmd: VolumeCommand) -> Result<ExitCode> {
    match cmd {
        VolumeCommand::Create { name, labels } => {
            let mut l = BTreeMap::new();
            for kv in labels {
                let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
                l.insert(k.to_string(), v.to_string());
            }
            let v = store
                .volumes()
                .create(name.as_deref(), l)
                .map_err(daemon_err)?;
            println!("{}", v.name);
            Ok(ExitCode::SUCCESS)
        }
        VolumeCommand::Ls { quiet } => {
            let list = store.volumes().list()?;
            if !quiet {
                println!("DRIVER    VOLUME NAME");
            }
            for v in list {
                if quiet {
                    println!("{}", v.name);
                } else {
                    println!("local     {}", v.name);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        VolumeCommand::Inspect { names } => inspect(store, &names),
        VolumeCommand::Rm { force, names } => rm(store, force, &names),
        VolumeCommand::Prune { force } => prune(store, force),
    }
}

fn volume_json(v: &VolumeInfo, users: usize, size: u64) -> serde_json::Value {
    serde_json::json!({
        "CreatedAt": chrono::DateTime::from_timestamp(v.created, 0)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default(),
        "Driver": "local",
        "Labels": if v.labels.is_empty() { serde_json::Value::Null } else { serde_json::json!(v.labels) },
        "Mountpoint": v.mountpoint,
        "Name": v.name,
        "Options": serde_json::Value::Null,
        "Scope": "local",
        "UsageData": { "RefCount": users, "Size": size },
    })
}

fn inspect(store: &Store, names: &[String]) -> Result<ExitCode> {
    let all = all_containers(store)?;
    let mut out = Vec::new();
    let mut missing = None;
    for n in names {
        match store.volumes().get(n)? {
            Some(v) => out.push(volume_json(
                &v,
                users_of(&all, &v).len(),
                store.volumes().size(&v),
            )),
            None => {
                missing.get_or_insert(n.clone());
            }
        }
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    match missing {
        None => Ok(ExitCode::SUCCESS),
        Some(n) => Err(daemon_err(format!("get {n}: no such volume"))),
    }
}

fn rm(store: &Store, force: bool, names: &[String]) -> Result<ExitCode> {
    let all = all_containers(store)?;
    let mut failed = false;
    for n in names {
        let Some(v) = store.volumes().get(n)? else {
            if !force {
                eprintln!("Error response from kiln: get {n}: no such volume");
                failed = true;
            }
            continue;
        };
        let users = users_of(&all, &v);
        if !users.is_empty() {
            // docker refuses even with -f.
            eprintln!(
                "Error response from kiln: remove {n}: volume is in use - [{}]",
                users.join(", ")
            );
            failed = true;
            continue;
        }
        store.volumes().remove(n)?;
        println!("{n}");
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// docker 20.10's prune: every volume no container uses, named ones too.
fn prune(store: &Store, force: bool) -> Result<ExitCode> {
    if !force {
        use std::io::Write;
        print!(
            "WARNING! This will remove all local volumes not used by at least one container.\n\
             Are you sure you want to continue? [y/N] "
        );
        std::io::stdout().flush()?;
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        if !matches!(line.trim(), "y" | "Y" | "yes") {
            return Ok(ExitCode::SUCCESS);
        }
    }
    let all = all_containers(store)?;
    let mut deleted = Vec::new();
    let mut reclaimed = 0;
    for v in store.volumes().list()? {
        if users_of(&all, &v).is_empty() {
            reclaimed += store.volumes().size(&v);
            store.volumes().remove(&v.name)?;
            deleted.push(v.name);
        }
    }
    if !deleted.is_empty() {
        println!("Deleted Volumes:");
        for n in &deleted {
            println!("{n}");
        }
        println!();
    }
    println!(
        "Total reclaimed space: {}",
        crate::cmd_images::human_size(reclaimed)
    );
    Ok(ExitCode::SUCCESS)
}

/// `system df`'s volumes: (count, active, bytes, bytes of unused ones).
pub(crate) fn volumes_usage(store: &Store) -> Result<(u64, u64, u64, u64)> {
    let list = store.volumes().list()?;
    if list.is_empty() {
        return Ok((0, 0, 0, 0));
    }
    let all = all_containers(store)?;
    let (mut active, mut size, mut reclaimable) = (0, 0, 0);
    for v in &list {
        let s = store.volumes().size(v);
        size += s;
        if users_of(&all, v).is_empty() {
            reclaimable += s;
        } else {
            active += 1;
        }
    }
    Ok((list.len() as u64, active, size, reclaimable))
}
