//! `kiln build --reproducible` and `--check-reproducible`: a fixed
//! SOURCE_DATE_EPOCH for the build, and a proof that it holds: the same
//! Dockerfile and context built again in a fresh root (no cache, the same
//! base images) must give the same image, or the first difference is named
//! (layer, file, field; or config key).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use anyhow::{anyhow, bail, Context as _, Result};
use kiln_store::layer::{summarize_layer, EntrySummary};
use kiln_store::{ArchiveFormat, ImageRecord, Store};

use crate::cli;
use kiln_builder::engine::portable;

/// The epoch `--reproducible` uses when none is given: the commit time of
/// the context when it is a git work tree, else 0 (1970-01-01), and where
/// it came from.
pub fn default_epoch(context: Option<&Path>) -> (i64, String) {
    if let Some(dir) = context {
        let out = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["log", "-1", "--format=%ct"])
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .output();
        if let Ok(o) = out {
            if let Ok(t) = String::from_utf8_lossy(&o.stdout).trim().parse::<i64>() {
                if o.status.success() {
                    return (t, "the context's last git commit".into());
                }
            }
        }
    }
    (
        0,
        "no SOURCE_DATE_EPOCH given and the context is not a git work tree: 0 (1970-01-01)".into(),
    )
}

/// Builds again in a fresh root and compares; Ok(()) when the image is the
/// same, else an error naming the first difference.
pub fn check(
    store: &Store,
    image: &ImageRecord,
    bases: &[(String, kiln_store::Digest, String)],
    args: &cli::BuildArgs,
    epoch: i64,
) -> Result<()> {
    let root = tempfile::Builder::new()
        .prefix("kiln-reproduce-")
        .tempdir()
        .context("a fresh root for the second build")?;
    let other = Store::open(root.path())?;
    for (name, manifest, _) in bases {
        copy_image(store, &other, name, manifest)?;
    }
    let out = Command::new(std::env::current_exe()?)
        .arg("--root")
        .arg(root.path())
        .args(second_build_args(args, epoch))
        .output()
        .context("running the second build")?;
    if !out.status.success() {
        bail!(
            "--check-reproducible: the second build (fresh root, no cache) failed:\n{}",
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if id == image.config_digest.to_string() {
        return Ok(());
    }
    let second = other
        .resolve_image(&id)?
        .ok_or_else(|| anyhow!("the second build's image {id} is not in its root"))?;
    let why = first_difference(store, image, &other, &second)?;
    bail!(
        "not reproducible: a second build in a fresh root gave {} instead of {}: {why}",
        second.config_digest.short(),
        image.config_digest.short()
    )
}

/// A base image into the fresh root, tagged with the name the Dockerfile
/// uses. It goes by its image ID (config digest), which a docker archive
/// keeps exactly; the tag may have moved since the build resolved it.
fn copy_image(from: &Store, to: &Store, name: &str, manifest: &kiln_store::Digest) -> Result<()> {
    let rec = from
        .resolve_image(&manifest.to_string())?
        .ok_or_else(|| anyhow!("base {name} ({manifest}) is no longer in the store"))?;
    let id = rec.config_digest.to_string();
    let mut buf = Vec::new();
    from.save(std::slice::from_ref(&id), ArchiveFormat::Docker, &mut buf)
        .with_context(|| format!("saving base {name}"))?;
    to.load(&mut buf.as_slice())
        .with_context(|| format!("loading base {name} into the fresh root"))?;
    let loaded = to
        .resolve_image(&id)?
        .ok_or_else(|| anyhow!("base {name} ({id}) did not load into the fresh root"))?;
    to.tag(name, &loaded.manifest_digest)?;
    Ok(())
}

/// The same build, with nothing that writes outside the fresh root.
fn second_build_args(a: &cli::BuildArgs, epoch: i64) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "build".into(),
        "-q".into(),
        "--no-cache".into(),
        "--reproducible".into(),
    ];
    v.extend(["--pull".into(), "never".into()]);
    // The inline cache is part of the image config: the second build
    // carries it too (it writes nowhere else).
    let inline = a
        .cache_to
        .as_deref()
        .and_then(|c| portable::parse_cache_to(c).ok());
    if inline.is_some_and(|c| c.dest == portable::Location::Inline) {
        v.extend(["--cache-to".into(), "type=inline".into()]);
    }
    if let Some(f) = &a.file {
        v.extend(["-f".into(), f.clone()]);
    }
    for b in a
        .build_args
        .iter()
        .filter(|b| !b.starts_with("SOURCE_DATE_EPOCH="))
    {
        v.extend(["--build-arg".into(), b.clone()]);
    }
    v.extend(["--build-arg".into(), format!("SOURCE_DATE_EPOCH={epoch}")]);
    if let Some(t) = &a.target {
        v.extend(["--target".into(), t.clone()]);
    }
    for (flag, vals) in [
        ("--label", &a.labels),
        ("--secret", &a.secrets),
        ("--ssh", &a.ssh),
    ] {
        for x in vals {
            v.extend([flag.into(), x.clone()]);
        }
    }
    let network = match a.network {
        cli::NetworkArg::Default => "default",
        cli::NetworkArg::Host => "host",
        cli::NetworkArg::None => "none",
    };
    v.extend(["--network".into(), network.into(), a.context.clone()]);
    v
}

/// The first thing two images differ in: layer count, a layer's first
/// differing file and field, or the first differing config key.
fn first_difference(sa: &Store, a: &ImageRecord, sb: &Store, b: &ImageRecord) -> Result<String> {
    if a.layers.len() != b.layers.len() {
        return Ok(format!(
            "{} layers, then {}",
            a.layers.len(),
            b.layers.len()
        ));
    }
    let steps: Vec<String> = a
        .config
        .history
        .iter()
        .filter(|h| !h.empty_layer)
        .map(|h| h.created_by.clone().unwrap_or_default())
        .collect();
    for (i, (la, lb)) in a.layers.iter().zip(&b.layers).enumerate() {
        if la.diff_id == lb.diff_id {
            continue;
        }
        let step = steps.get(i).map(String::as_str).unwrap_or("?");
        let where_ = format!("layer {} ({step})", i + 1);
        let ea = entries(sa, &la.digest)?;
        let eb = entries(sb, &lb.digest)?;
        for (path, x) in &ea {
            match eb.get(path) {
                None => return Ok(format!("{where_}: /{path} only in the first build")),
                Some(y) => {
                    if let Some((field, p, q)) = x.first_difference(y) {
                        return Ok(format!("{where_}: /{path}: {field} {p}, then {q}"));
                    }
                }
            }
        }
        if let Some(path) = eb.keys().find(|p| !ea.contains_key(*p)) {
            return Ok(format!("{where_}: /{path} only in the second build"));
        }
        return Ok(format!(
            "{where_}: the same files in another order or encoding"
        ));
    }
    let ca = serde_json::to_value(&a.config)?;
    let cb = serde_json::to_value(&b.config)?;
    Ok(match json_difference("", &ca, &cb) {
        Some(k) => format!("config {k}"),
        None => "the same layers and config, another manifest".into(),
    })
}

fn entries(s: &Store, d: &kiln_store::Digest) -> Result<BTreeMap<String, EntrySummary>> {
    let mut f = s.open_blob(d)?;
    Ok(summarize_layer(&mut f, &s.layer_limits())?
        .into_iter()
        .map(|e| (e.path.clone(), e))
        .collect())
}

/// The path of the first key whose values differ (`config.Env`, `created`).
fn json_difference(at: &str, a: &serde_json::Value, b: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| {
                let p = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                match (x.get(k), y.get(k)) {
                    (Some(u), Some(v)) => json_difference(&p, u, v),
                    _ => Some(p),
                }
            })
        }
        _ if a != b => Some(format!("{at}: {a}, then {b}")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_differences_are_named_by_path() {
        let a = serde_json::json!({"created": "1", "config": {"Env": ["A=1"], "User": "x"}});
        let b = serde_json::json!({"created": "1", "config": {"Env": ["A=2"], "User": "x"}});
        assert_eq!(
            json_difference("", &a, &b).unwrap(),
            "config.Env: [\"A=1\"], then [\"A=2\"]"
        );
        assert_eq!(json_difference("", &a, &a), None);
    }

    #[test]
    fn an_epoch_outside_git_is_zero_and_says_so() {
        let d = tempfile::tempdir().unwrap();
        let (t, why) = default_epoch(Some(d.path()));
        assert_eq!(t, 0);
        assert!(why.contains("not a git work tree"), "{why}");
    }
}
