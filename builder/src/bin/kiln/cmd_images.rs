//! Image verbs over the store: images, rmi, tag, inspect, history, save,
//! load, import, plus `cache ls` and `system df|fsck|prune`.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Result};
use kiln_store::Store;
use serde_json::json;

use crate::cli::{HistoryArgs, ImagesArgs, ListFormat, LoadArgs, RmiArgs, SaveArgs, SaveFormat};
use crate::error::Failure;

pub fn human_size(n: u64) -> String {
    // docker uses decimal units
    let f = n as f64;
    if f < 1e3 {
        format!("{n}B")
    } else if f < 1e6 {
        format!("{:.3}kB", f / 1e3)
    } else if f < 1e9 {
        format!("{:.1}MB", f / 1e6)
    } else {
        format!("{:.2}GB", f / 1e9)
    }
}

pub fn human_ago(secs_ago: i64) -> String {
    let s = secs_ago.max(0);
    match s {
        0..=1 => "Less than a second ago".into(),
        2..=59 => format!("{s} seconds ago"),
        60..=119 => "About a minute ago".into(),
        120..=3599 => format!("{} minutes ago", s / 60),
        3600..=7199 => "About an hour ago".into(),
        7200..=172_799 => format!("{} hours ago", s / 3600),
        172_800..=1_209_599 => format!("{} days ago", s / 86400),
        1_209_600..=5_183_999 => format!("{} weeks ago", s / 604_800),
        5_184_000..=63_071_999 => format!("{} months ago", s / 2_592_000),
        _ => format!("{} years ago", s / 31_536_000),
    }
}

fn ago_rfc3339(t: Option<&str>) -> String {
    match t.and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok()) {
        Some(t) => human_ago(chrono::Utc::now().timestamp() - t.timestamp()),
        None => "N/A".into(),
    }
}

fn split_ref(r: &str) -> (String, String) {
    if let Some((n, d)) = r.split_once('@') {
        return (n.to_string(), format!("@{d}"));
    }
    match r.rsplit_once(':') {
        Some((n, t)) if !t.contains('/') => (n.to_string(), t.to_string()),
        _ => (r.to_string(), "latest".to_string()),
    }
}

fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let mut widths = vec![0; cols];
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<w$}   ", w = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

pub fn images(store: &Store, args: &ImagesArgs) -> Result<ExitCode> {
    let list = store.list_images()?;
    if args.quiet {
        let mut seen = std::collections::BTreeSet::new();
        for i in &list {
            if seen.insert(i.config_digest.short().to_string()) {
                println!("{}", i.config_digest.short());
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    if args.format == ListFormat::Json {
        let v: Vec<_> = list
            .iter()
            .map(|i| {
                json!({
                    "references": i.references,
                    "id": i.config_digest.to_string(),
                    "manifest": i.manifest_digest.to_string(),
                    "created": i.created,
                    "size": i.size,
                    "platforms": i.platforms,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows = vec![vec![
        "REPOSITORY".to_string(),
        "TAG".into(),
        "IMAGE ID".into(),
        "CREATED".into(),
        "SIZE".into(),
    ]];
    // A multi-platform index is one line; its platforms get a column.
    let multi = list.iter().any(|i| i.platforms.len() > 1);
    if multi {
        rows[0].push("PLATFORMS".into());
    }
    for i in &list {
        let refs = if i.references.is_empty() {
            vec![("<none>".to_string(), "<none>".to_string())]
        } else {
            i.references.iter().map(|r| split_ref(r)).collect()
        };
        for (repo, tag) in refs {
            let mut row = vec![
                repo,
                tag,
                i.config_digest.short().to_string(),
                ago_rfc3339(i.created.as_deref()),
                human_size(i.size),
            ];
            if multi {
                row.push(i.platforms.join(","));
            }
            rows.push(row);
        }
    }
    print!("{}", table(&rows));
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn no_such_image(name: &str) -> anyhow::Error {
    Failure::new(1, format!("Error: No such image: {name}")).into()
}

/// Containers (running or not) made from `image`: docker refuses to remove
/// such an image (a running container's even with -f), since its snapshots
/// are the container's lower dirs.
fn containers_using(store: &Store, image: &kiln_store::ImageRecord) -> Result<Vec<(String, bool)>> {
    if !store.containers_dir().is_dir() {
        return Ok(vec![]);
    }
    let list = crate::cmd_containers::containers(store)?.list(true)?;
    let mut out = Vec::new();
    for c in list {
        let same = match store.resolve_image(&c.image)? {
            Some(r) => r.config_digest == image.config_digest,
            None => false,
        };
        if same {
            let running = c.status.is_up();
            out.push((c.id[..12.min(c.id.len())].to_string(), running));
        }
    }
    Ok(out)
}

pub fn rmi(store: &Store, args: &RmiArgs) -> Result<ExitCode> {
    let mut failed = false;
    for i in &args.images {
        if let Some(img) = store.resolve_image(i)? {
            let users = containers_using(store, &img)?;
            if let Some((id, _)) = users.iter().find(|(_, running)| *running) {
                eprintln!("Error response from kiln: conflict: unable to delete {i} (cannot be forced) - image is being used by running container {id}");
                failed = true;
                continue;
            }
            if !args.force {
                if let Some((id, _)) = users.first() {
                    eprintln!("Error response from kiln: conflict: unable to remove {i} (must force) - container {id} is using its referenced image");
                    failed = true;
                    continue;
                }
            }
        }
        match store.remove_image(i, args.force) {
            Ok(lines) => {
                for l in lines {
                    println!("{l}");
                }
            }
            Err(e) => {
                eprintln!("Error response from kiln: {e}");
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

pub fn tag(store: &Store, source: &str, target: &str) -> Result<ExitCode> {
    let img = store
        .resolve_image(source)?
        .ok_or_else(|| no_such_image(source))?;
    kiln_store::reference::parse(target).map_err(|e| {
        Failure::new(
            1,
            format!("Error parsing reference: {target:?} is not a valid repository/tag: {e}"),
        )
    })?;
    // A name for an index (several platforms, attestations) tags the index.
    let named = match store.resolve_index(source)? {
        Some(idx) => idx.digest,
        None => img.manifest_digest,
    };
    store.tag(target, &named)?;
    Ok(ExitCode::SUCCESS)
}

/// `inspect`'s JSON for one image (of `platform`, from an index); None
/// when `name` is no image.
pub(crate) fn inspect_image(
    store: &Store,
    name: &str,
    platform: Option<&kiln_builder::engine::platform::Platform>,
) -> Result<Option<serde_json::Value>> {
    let all = store.list_images()?;
    Ok(match resolve_for_platform(store, name, platform)? {
        Some(img) => {
            let refs: Vec<String> = all
                .iter()
                .find(|s| s.manifest_digest == img.manifest_digest)
                .map(|s| s.references.clone())
                .unwrap_or_default();
            let size: u64 = img.layers.iter().map(|l| l.size).sum();
            Some(json!({
                "Id": img.config_digest.to_string(),
                "RepoTags": refs,
                "ManifestDigest": img.manifest_digest.to_string(),
                "Created": img.config.created,
                "Author": img.config.author,
                "Architecture": img.config.architecture,
                "Os": img.config.os,
                "Config": img.config.config,
                "RootFS": img.config.rootfs,
                "History": img.config.history,
                "Layers": img.layers,
                "Size": size,
            }))
        }
        None => None,
    })
}

/// The image `name` names, for `platform` when one is given: from an
/// index, its image for that platform; a single image only if it is for it.
pub fn resolve_for_platform(
    store: &Store,
    name: &str,
    platform: Option<&kiln_builder::engine::platform::Platform>,
) -> Result<Option<kiln_store::ImageRecord>> {
    let Some(p) = platform else {
        return Ok(store.resolve_image(name)?);
    };
    match store.resolve_image_for(name, &p.to_string())? {
        Some(img) if p.matches_config(&img.config) => Ok(Some(img)),
        Some(img) => bail!(
            "{name} has no image for {p} (it is {})",
            kiln_store::indexes::platform_of(&img.config)
        ),
        None => Ok(None),
    }
}

pub fn history(store: &Store, args: &HistoryArgs) -> Result<ExitCode> {
    let img = store
        .resolve_image(&args.image)?
        .ok_or_else(|| no_such_image(&args.image))?;
    let mut rows = vec![vec![
        "IMAGE".to_string(),
        "CREATED".into(),
        "CREATED BY".into(),
        "SIZE".into(),
        "COMMENT".into(),
    ]];
    let mut layers = img.layers.iter();
    let mut entries = Vec::new();
    for h in &img.config.history {
        let size = if h.empty_layer {
            0
        } else {
            layers.next().map(|l| l.size).unwrap_or(0)
        };
        entries.push((h, size));
    }
    for (i, (h, size)) in entries.into_iter().rev().enumerate() {
        let mut by = h.created_by.clone().unwrap_or_default();
        if !args.no_trunc && by.chars().count() > 45 {
            by = by.chars().take(44).collect::<String>() + "…";
        }
        rows.push(vec![
            if i == 0 {
                img.config_digest.short().to_string()
            } else {
                "<missing>".into()
            },
            ago_rfc3339(h.created.as_deref()),
            by,
            human_size(size),
            h.comment.clone().unwrap_or_default(),
        ]);
    }
    print!("{}", table(&rows));
    Ok(ExitCode::SUCCESS)
}

pub fn save(store: &Store, args: &SaveArgs) -> Result<ExitCode> {
    let format = match args.format {
        SaveFormat::Docker => kiln_store::ArchiveFormat::Docker,
        SaveFormat::Oci => kiln_store::ArchiveFormat::Oci,
    };
    for i in &args.images {
        if store.resolve_image(i)?.is_none() {
            return Err(no_such_image(i));
        }
    }
    match &args.output {
        Some(p) => {
            // Written beside the target and renamed, so a failed save never
            // leaves a truncated archive under the requested name.
            let dir = p
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| {
                // tempfile's message names its temporary path; a missing
                // directory is better said by the directory itself.
                let why = std::fs::metadata(dir).err().unwrap_or(e);
                anyhow!("cannot write {}: {why}", p.display())
            })?;
            store.save(&args.images, format, tmp.as_file_mut())?;
            tmp.as_file_mut().flush()?;
            tmp.persist(p)
                .map_err(|e| anyhow!("writing {}: {e}", p.display()))?;
        }
        None => {
            if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                return Err(Failure::new(
                    1,
                    "cowardly refusing to save to a terminal. Use the -o flag or redirect",
                )
                .into());
            }
            let stdout = std::io::stdout();
            let mut lock = stdout.lock();
            store.save(&args.images, format, &mut lock)?;
            lock.flush()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn load(store: &Store, args: &LoadArgs) -> Result<ExitCode> {
    let loaded = match &args.input {
        Some(p) => {
            let mut f = std::fs::File::open(p).map_err(|e| anyhow!("open {}: {e}", p.display()))?;
            store.load(&mut f)?
        }
        None => store.load(&mut std::io::stdin().lock())?,
    };
    for r in loaded {
        if r.starts_with("sha256:") {
            println!("Loaded image ID: {r}");
        } else {
            println!("Loaded image: {r}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn import(store: &Store, args: &crate::cli::ImportArgs) -> Result<ExitCode> {
    let (file, reference) = (&args.file, args.reference.as_str());
    kiln_store::reference::parse(reference)
        .map_err(|e| anyhow!("{reference:?} is not a valid repository/tag: {e}"))?;
    let config = match &args.platform {
        Some(p) => {
            let p =
                kiln_store::registry::Platform::parse(p).map_err(|e| anyhow!("--platform: {e}"))?;
            Some(kiln_store::ImageConfig {
                architecture: p.architecture,
                os: p.os,
                variant: p.variant,
                ..Default::default()
            })
        }
        None => None,
    };
    let mut f = std::fs::File::open(file).map_err(|e| anyhow!("open {}: {e}", file.display()))?;
    let img = store.import_rootfs_tar(&mut f, reference, config)?;
    println!("{}", img.config_digest);
    Ok(ExitCode::SUCCESS)
}

/// "24h", "90m", "30s", "7d" -> seconds.
pub fn parse_duration(s: &str) -> Result<i64> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = n
        .parse()
        .map_err(|_| anyhow!("invalid duration {s:?} (e.g. 30s, 90m, 24h, 7d)"))?;
    let mult = match unit {
        "s" | "" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(anyhow!("invalid duration {s:?} (e.g. 30s, 90m, 24h, 7d)")),
    };
    Ok(n * mult)
}

pub fn cache_ls(store: &Store, format: ListFormat, filters: &[String]) -> Result<ExitCode> {
    let mut recs = store.cache_list()?;
    // Which images use a record: those whose layers include its layer.
    let images = store.list_images()?;
    let mut users: std::collections::HashMap<String, Vec<String>> = Default::default();
    for i in &images {
        if let Some(img) = store.resolve_image(&i.config_digest.to_string())? {
            let name = i
                .references
                .first()
                .cloned()
                .unwrap_or_else(|| i.config_digest.short().to_string());
            for l in &img.layers {
                users
                    .entry(l.diff_id.to_string())
                    .or_default()
                    .push(name.clone());
            }
        }
    }
    let used_by = |r: &kiln_store::CacheRecord| -> Vec<String> {
        r.layer
            .as_ref()
            .and_then(|l| users.get(&l.diff_id.to_string()).cloned())
            .unwrap_or_default()
    };
    let now = chrono::Utc::now().timestamp();
    for f in filters {
        let (k, v) = f
            .split_once('=')
            .ok_or_else(|| anyhow!("invalid --filter {f:?}: expected KEY=VALUE"))?;
        match k {
            "image" => recs.retain(|r| {
                used_by(r)
                    .iter()
                    .any(|n| n == v || n.starts_with(&format!("{v}:")))
            }),
            "stage" => recs.retain(|r| r.stage.rsplit('#').next() == Some(v)),
            "until" => {
                let secs = parse_duration(v)?;
                recs.retain(|r| now - r.last_used >= secs)
            }
            other => {
                return Err(anyhow!(
                    "unknown --filter {other:?} (image=NAME, stage=NAME, until=DURATION)"
                ))
            }
        }
    }
    recs.sort_by(|a, b| b.last_used.cmp(&a.last_used).then(a.key.cmp(&b.key)));
    // Where a record's layer is when it is known remotely, not stored here
    // (a lazily imported registry cache): fetched when a step needs it.
    let remote = |r: &kiln_store::CacheRecord| -> Option<String> {
        let l = r.layer.as_ref()?;
        let rb = store.remote_blob(&l.digest).ok()??;
        Some(
            rb.sources
                .first()
                .map_or_else(|| "unknown".to_string(), |(r, p)| format!("{r}/{p}")),
        )
    };
    if format == ListFormat::Json {
        let v: Vec<_> = recs
            .iter()
            .map(|r| {
                json!({
                    "key": r.key,
                    "parent": r.parent,
                    "instruction": r.description,
                    "source": r.source,
                    "stage": r.stage,
                    "layer": r.layer,
                    "size": r.layer.as_ref().map(|l| l.size).unwrap_or(0),
                    "created": r.created,
                    "last_used": r.last_used,
                    "hits": r.hits,
                    "images": used_by(r),
                    "remote": remote(r),
                    "imported_from": r.origin,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows = vec![vec![
        "KEY".to_string(),
        "SIZE".into(),
        "CREATED".into(),
        "LAST USED".into(),
        "HITS".into(),
        "SOURCE".into(),
        "INSTRUCTION".into(),
        "IMAGES".into(),
        "IMPORTED FROM".into(),
    ]];
    for r in &recs {
        let mut ins = r.description.clone();
        if ins.chars().count() > 60 {
            ins = ins.chars().take(59).collect::<String>() + "…";
        }
        rows.push(vec![
            r.key.chars().take(12).collect(),
            match remote(r) {
                Some(_) => format!(
                    "{} (remote)",
                    human_size(r.layer.as_ref().map_or(0, |l| l.size))
                ),
                None => human_size(r.layer.as_ref().map(|l| l.size).unwrap_or(0)),
            },
            human_ago(now - r.created),
            human_ago(now - r.last_used),
            r.hits.to_string(),
            r.source.clone(),
            ins,
            used_by(r).join(","),
            r.origin.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    print!("{}", table(&rows));
    Ok(ExitCode::SUCCESS)
}

/// "10GB", "500MB", "1.5g", "4096" -> bytes (decimal units, as docker).
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim().to_ascii_lowercase();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: f64 = n
        .parse()
        .map_err(|_| anyhow!("invalid size {s:?} (e.g. 500MB, 10GB)"))?;
    let mult: f64 = match unit.trim_end_matches('b').trim_end_matches('i') {
        "" => 1.0,
        "k" => 1e3,
        "m" => 1e6,
        "g" => 1e9,
        "t" => 1e12,
        _ => return Err(anyhow!("invalid size {s:?} (e.g. 500MB, 10GB)")),
    };
    Ok((n * mult) as u64)
}

pub fn cache_du(store: &Store) -> Result<ExitCode> {
    let df = store.df()?;
    let recs = store.cache_list()?;
    let mut image_layers = std::collections::HashSet::new();
    for i in store.list_images()? {
        if let Some(img) = store.resolve_image(&i.config_digest.to_string())? {
            for l in img.layers {
                image_layers.insert(l.diff_id.to_string());
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    let (mut shared, mut exclusive, mut layers) = (0u64, 0u64, 0u64);
    for r in &recs {
        if let Some(l) = &r.layer {
            if !seen.insert(l.diff_id.to_string()) {
                continue;
            }
            layers += 1;
            if image_layers.contains(&l.diff_id.to_string()) {
                shared += l.size;
            } else {
                exclusive += l.size;
            }
        }
    }
    let mounts = store.cache().mounts().list()?;
    let mounts_size: u64 = mounts.iter().map(|m| m.size).sum();
    let rows = vec![
        vec![
            "KIND".to_string(),
            "COUNT".into(),
            "SIZE".into(),
            "SHARED WITH IMAGES".into(),
            "RECLAIMABLE".into(),
        ],
        vec![
            "cache records".into(),
            recs.len().to_string(),
            "-".into(),
            "-".into(),
            "-".into(),
        ],
        vec![
            "layers".into(),
            layers.to_string(),
            human_size(shared + exclusive),
            human_size(shared),
            human_size(exclusive),
        ],
        vec![
            "snapshots".into(),
            df.snapshots.to_string(),
            human_size(df.snapshots_size),
            "-".into(),
            "-".into(),
        ],
        vec![
            "cache mounts".into(),
            mounts.len().to_string(),
            human_size(mounts_size),
            "-".into(),
            human_size(mounts_size),
        ],
    ];
    print!("{}", table(&rows));
    for m in &mounts {
        println!("  cache mount {}: {}", m.id, human_size(m.size));
    }
    println!(
        "`kiln cache prune` frees layers no tagged image uses ({}), least recently used first; --all also empties the cache mounts.",
        human_size(exclusive)
    );
    Ok(ExitCode::SUCCESS)
}

pub fn cache_prune(
    store: &Store,
    all: bool,
    keep_storage: Option<&str>,
    filters: &[String],
) -> Result<ExitCode> {
    let mut opts = kiln_store::PruneOptions {
        cache_all: all,
        keep_storage: keep_storage.map(parse_size).transpose()?,
        // The build cache only: images are `kiln rmi` / `system prune`'s.
        dangling_images: false,
        ..Default::default()
    };
    for f in filters {
        match f.split_once('=') {
            Some(("until", d)) => {
                opts.cache_unused_for =
                    Some(std::time::Duration::from_secs(parse_duration(d)? as u64))
            }
            _ => return Err(anyhow!("unknown --filter {f:?} (until=DURATION)")),
        }
    }
    if !all && opts.keep_storage.is_none() && opts.cache_unused_for.is_none() {
        return Err(Failure::new(
            1,
            "kiln cache prune: say what to remove: --all, --keep-storage SIZE, or --filter until=DURATION (see `kiln cache du`)",
        )
        .into());
    }
    let report = store.prune(&opts)?;
    print!("{report}");
    if all {
        // A cache mount a running build holds is kept.
        for m in store.cache().mounts().prune()? {
            if m.removed {
                println!("cache mount {}: removed ({})", m.id, human_size(m.size));
            } else {
                println!("cache mount {}: in use, kept", m.id);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn system_df(store: &Store) -> Result<ExitCode> {
    let df = store.df()?;
    print!("{df}");
    // Same columns as the store's rows; the store keeps the volumes, the
    // containers say which are in use.
    let (n, _active, size, reclaimable) = crate::cmd_volumes::volumes_usage(store)?;
    println!(
        "{:<14}{:<8}{:<10}{}",
        "Local Volumes",
        n,
        human_size(size),
        human_size(reclaimable)
    );
    Ok(ExitCode::SUCCESS)
}

pub fn system_fsck(store: &Store, repair: bool) -> Result<ExitCode> {
    let report = store.fsck(repair)?;
    print!("{report}");
    Ok(if report.is_clean() || repair {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub fn system_prune(store: &Store, all: bool) -> Result<ExitCode> {
    let opts = kiln_store::PruneOptions {
        all,
        ..Default::default()
    };
    let report = store.prune(&opts)?;
    print!("{report}");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_ages_read_like_docker() {
        assert_eq!(human_size(512), "512B");
        assert_eq!(human_size(52_300_000), "52.3MB");
        assert_eq!(human_ago(5), "5 seconds ago");
        assert_eq!(human_ago(3 * 3600), "3 hours ago");
    }

    #[test]
    fn references_split_into_repository_and_tag() {
        assert_eq!(
            split_ref("flask_app:0.1"),
            ("flask_app".into(), "0.1".into())
        );
        assert_eq!(
            split_ref("localhost:5000/a/b"),
            ("localhost:5000/a/b".into(), "latest".into())
        );
    }
}
