//! A portable build cache for CI: `--cache-to type=local,dest=DIR` writes
//! the cache records of a build and every layer they name as an OCI image
//! layout (an artifact whose config is the records); `--cache-from
//! type=local,src=DIR` imports them on another machine. Everything is
//! verified by digest on import: a tampered or truncated cache gives a
//! warning and a rebuild of what it cannot vouch for, never a wrong image.
//! Exporting the same state twice writes the same bytes.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _, Result};
use kiln_store::{CacheRecord, Digest, LayerInfo, Store};
use serde_json::{json, Value};

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX_TYPE: &str = "application/vnd.oci.image.index.v1+json";
const ARTIFACT_TYPE: &str = "application/vnd.kiln.cache.v1+json";
const CONFIG_TYPE: &str = "application/vnd.kiln.cache.config.v1+json";
/// Largest index, manifest or records document accepted on import.
const MAX_DOC: u64 = 256 << 20;

#[derive(Debug, Clone, PartialEq)]
pub struct CacheTo {
    pub dest: PathBuf,
    /// `mode=max`: every step of the build; `min`: the target's chain.
    pub max: bool,
}

fn fields(spec: &str, flag: &str) -> Result<BTreeMap<String, String>> {
    let mut m = BTreeMap::new();
    for part in spec.split(',') {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| anyhow!("{flag} {spec:?}: expected key=value fields"))?;
        m.insert(k.to_string(), v.to_string());
    }
    match m.get("type").map(String::as_str) {
        Some("local") => Ok(m),
        Some("registry") => {
            bail!("{flag} type=registry needs a registry client, which kiln does not have yet")
        }
        Some(other) => bail!("{flag}: unsupported type {other:?} (kiln knows type=local)"),
        None => bail!("{flag} {spec:?}: type= is required (type=local)"),
    }
}

pub fn parse_cache_to(spec: &str) -> Result<CacheTo> {
    let m = fields(spec, "--cache-to")?;
    let dest = m
        .get("dest")
        .ok_or_else(|| anyhow!("--cache-to {spec:?}: dest=DIR is required"))?;
    let max = match m.get("mode").map(String::as_str) {
        None | Some("min") => false,
        Some("max") => true,
        Some(other) => bail!("--cache-to mode={other}: expected min or max"),
    };
    for k in m.keys() {
        if !matches!(k.as_str(), "type" | "dest" | "mode") {
            bail!("--cache-to: unknown field {k:?} (type, dest, mode)");
        }
    }
    Ok(CacheTo {
        dest: PathBuf::from(dest),
        max,
    })
}

pub fn parse_cache_from(spec: &str) -> Result<PathBuf> {
    let m = fields(spec, "--cache-from")?;
    for k in m.keys() {
        if !matches!(k.as_str(), "type" | "src") {
            bail!("--cache-from: unknown field {k:?} (type, src)");
        }
    }
    m.get("src")
        .map(PathBuf::from)
        .ok_or_else(|| anyhow!("--cache-from {spec:?}: src=DIR is required"))
}

fn record_json(r: &CacheRecord) -> Value {
    // last_used and hits are local history, not cache content: left out so
    // that exporting the same records twice gives the same bytes.
    json!({
        "key": r.key,
        "parent": r.parent,
        "description": r.description,
        "source": r.source,
        "stage": r.stage,
        "inputs": r.inputs,
        "result": r.result,
        "layer": r.layer,
        "created": r.created,
    })
}

fn layers_of(r: &CacheRecord) -> Vec<LayerInfo> {
    let mut v: Vec<LayerInfo> = r
        .result
        .get("layers")
        .and_then(|l| serde_json::from_value(l.clone()).ok())
        .unwrap_or_default();
    if let Some(l) = &r.layer {
        v.push(l.clone());
    }
    v
}

fn write_blob(dir: &Path, bytes: &[u8]) -> Result<(Digest, u64)> {
    let d = kiln_store::sha256_digest(bytes);
    fs::write(dir.join("blobs/sha256").join(d.hex()), bytes)?;
    Ok((d, bytes.len() as u64))
}

/// Writes `keys`' records and their layers to `to.dest`, replacing what
/// was there (built beside it and renamed, so a failed export leaves the
/// old cache whole).
pub fn export(store: &Store, keys: &[String], to: &CacheTo) -> Result<usize> {
    let mut records = Vec::new();
    let mut seen = BTreeSet::new();
    for k in keys {
        if !seen.insert(k.clone()) {
            continue;
        }
        if let Some(r) = store.cache_get(k)? {
            records.push(r);
        }
    }
    records.sort_by(|a, b| a.key.cmp(&b.key));
    let mut layers: BTreeMap<String, LayerInfo> = BTreeMap::new();
    for r in &records {
        for l in layers_of(r) {
            layers.insert(l.digest.to_string(), l);
        }
    }
    let parent = to
        .dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(parent)?;
    let tmp = tempfile::Builder::new()
        .prefix(".kiln-cache-")
        .tempdir_in(parent)
        .with_context(|| format!("--cache-to: cannot write beside {}", to.dest.display()))?;
    let t = tmp.path();
    fs::create_dir_all(t.join("blobs/sha256"))?;
    fs::write(t.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let mut descriptors = Vec::new();
    for l in layers.values() {
        let dst = t.join("blobs/sha256").join(l.digest.hex());
        let src = store.root().join("blobs/sha256").join(l.digest.hex());
        if fs::hard_link(&src, &dst).is_err() {
            let mut from = store.open_blob(&l.digest)?;
            let mut to_f = fs::File::create(&dst)?;
            std::io::copy(&mut from, &mut to_f)?;
        }
        descriptors.push(json!({
            "mediaType": l.media_type,
            "digest": l.digest.to_string(),
            "size": l.size,
        }));
    }
    let config = json!({
        "kiln": "cache-v1",
        "records": records.iter().map(record_json).collect::<Vec<_>>(),
    });
    let (cd, cs) = write_blob(t, config.to_string().as_bytes())?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "artifactType": ARTIFACT_TYPE,
        "config": {"mediaType": CONFIG_TYPE, "digest": cd.to_string(), "size": cs},
        "layers": descriptors,
    });
    let (md, ms) = write_blob(t, manifest.to_string().as_bytes())?;
    let index = json!({
        "schemaVersion": 2,
        "mediaType": INDEX_TYPE,
        "manifests": [{
            "mediaType": MANIFEST_TYPE,
            "artifactType": ARTIFACT_TYPE,
            "digest": md.to_string(),
            "size": ms,
            "annotations": {"org.opencontainers.image.ref.name": "kiln-cache"},
        }],
    });
    fs::write(t.join("index.json"), index.to_string())?;
    if to.dest.exists() {
        let old = parent.join(format!(".kiln-cache-old-{}", std::process::id()));
        fs::rename(&to.dest, &old)?;
        fs::rename(tmp.keep(), &to.dest)?;
        let _ = fs::remove_dir_all(old);
    } else {
        fs::rename(tmp.keep(), &to.dest)?;
    }
    Ok(records.len())
}

/// Reads a small document of the layout, checking size and digest.
fn read_verified(dir: &Path, d: &Digest, size: u64) -> Result<Vec<u8>> {
    if size > MAX_DOC {
        bail!("{d} is {size} bytes, over the {MAX_DOC}-byte limit");
    }
    let p = dir.join("blobs/sha256").join(d.hex());
    let mut f = fs::File::open(&p).with_context(|| format!("{d} is missing"))?;
    let mut bytes = Vec::new();
    f.by_ref().take(size + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 != size {
        bail!("{d} has {} bytes, the descriptor says {size}", bytes.len());
    }
    if kiln_store::sha256_digest(&bytes) != *d {
        bail!("{d} does not match its digest");
    }
    Ok(bytes)
}

fn descriptor(v: &Value) -> Result<(Digest, u64)> {
    let d: Digest = v
        .get("digest")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("descriptor without a digest"))?
        .parse()
        .map_err(|e| anyhow!("bad digest: {e}"))?;
    let s = v
        .get("size")
        .and_then(Value::as_u64)
        .ok_or_else(|| anyhow!("descriptor without a size"))?;
    Ok((d, s))
}

pub struct Imported {
    pub records: usize,
    pub warnings: Vec<String>,
}

/// Imports the records of a cache written by `export`. Layers are stored
/// only after their digest checked out; a record is imported only if every
/// layer it names is stored. What cannot be trusted is reported and left
/// out: the build then runs those steps.
pub fn import(store: &Store, src: &Path) -> Result<Imported> {
    let mut warnings = Vec::new();
    let index: Value = {
        let p = src.join("index.json");
        let meta = fs::metadata(&p)
            .with_context(|| format!("{} is not a kiln cache (no index.json)", src.display()))?;
        if meta.len() > MAX_DOC {
            bail!("{} is too large", p.display());
        }
        serde_json::from_slice(&fs::read(&p)?)
            .with_context(|| format!("{} is not JSON", p.display()))?
    };
    let m = index
        .get("manifests")
        .and_then(Value::as_array)
        .and_then(|a| {
            a.iter()
                .find(|m| m.get("artifactType").and_then(Value::as_str) == Some(ARTIFACT_TYPE))
        })
        .ok_or_else(|| anyhow!("{} holds no kiln cache manifest", src.display()))?;
    let (md, ms) = descriptor(m)?;
    let manifest: Value = serde_json::from_slice(&read_verified(src, &md, ms)?)?;
    let (cd, cs) = descriptor(
        manifest
            .get("config")
            .ok_or_else(|| anyhow!("the cache manifest has no config"))?,
    )?;
    let config: Value = serde_json::from_slice(&read_verified(src, &cd, cs)?)?;
    let mut good: BTreeSet<String> = BTreeSet::new();
    for l in manifest
        .get("layers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
    {
        let Ok((d, size)) = descriptor(&l) else {
            warnings.push("a layer descriptor without digest or size was ignored".into());
            continue;
        };
        if store.has_blob(&d) {
            good.insert(d.to_string());
            continue;
        }
        let p = src.join("blobs/sha256").join(d.hex());
        let stored = fs::File::open(&p)
            .map_err(anyhow::Error::from)
            .and_then(|mut f| Ok(store.write_blob(&mut f, Some(&d), Some(size))?));
        match stored {
            Ok(_) => {
                good.insert(d.to_string());
            }
            Err(e) => warnings.push(format!(
                "layer {d} rejected ({e:#}); steps that need it will run"
            )),
        }
    }
    let mut imported = 0;
    let records = config
        .get("records")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for r in records {
        let rec = CacheRecord {
            key: r
                .get("key")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            parent: r.get("parent").and_then(Value::as_str).map(String::from),
            description: r
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            source: r
                .get("source")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            stage: r
                .get("stage")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            inputs: r.get("inputs").cloned().unwrap_or(Value::Null),
            result: r.get("result").cloned().unwrap_or(Value::Null),
            layer: r
                .get("layer")
                .and_then(|l| serde_json::from_value(l.clone()).ok()),
            created: r.get("created").and_then(Value::as_i64).unwrap_or(0),
            last_used: chrono::Utc::now().timestamp(),
            hits: 0,
        };
        if rec.key.len() != 64 || !rec.key.chars().all(|c| c.is_ascii_hexdigit()) {
            warnings.push("a record without a valid key was ignored".into());
            continue;
        }
        if !layers_of(&rec)
            .iter()
            .all(|l| good.contains(&l.digest.to_string()))
        {
            continue;
        }
        if store.cache_get(&rec.key)?.is_none() {
            store.cache_put(&rec)?;
            imported += 1;
        }
    }
    Ok(Imported {
        records: imported,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_like_buildkits() {
        assert_eq!(
            parse_cache_to("type=local,dest=/c,mode=max").unwrap(),
            CacheTo {
                dest: "/c".into(),
                max: true
            }
        );
        assert!(!parse_cache_to("type=local,dest=/c").unwrap().max);
        assert!(parse_cache_to("type=local").is_err());
        assert!(parse_cache_to("type=registry,ref=x")
            .unwrap_err()
            .to_string()
            .contains("registry"));
        assert_eq!(
            parse_cache_from("type=local,src=/c").unwrap(),
            PathBuf::from("/c")
        );
        assert!(parse_cache_from("type=local,dest=/c").is_err());
    }
}
