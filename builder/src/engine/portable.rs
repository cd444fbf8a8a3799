//! A portable build cache for CI: `--cache-to type=local,dest=DIR` writes
//! the cache records of a build and every layer they name as an OCI image
//! layout (an artifact whose config is the records); `--cache-to
//! type=registry,ref=REG/REPO:TAG` pushes the same artifact to a registry.
//! `--cache-from` imports either on another machine. A local cache is
//! verified by digest on import: a tampered or truncated one gives a
//! warning and a rebuild of what it cannot vouch for, never a wrong image.
//! A registry cache is imported lazily: its records, and its layers as
//! known remotely, fetched (and verified) only when something reads them.
//! Exporting the same state twice writes the same bytes.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::path::Path;

use anyhow::{anyhow, bail, Context as _, Result};
use kiln_store::{CacheRecord, Digest, LayerInfo, Store};
use serde_json::{json, Value};

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX_TYPE: &str = "application/vnd.oci.image.index.v1+json";
pub(super) const ARTIFACT_TYPE: &str = "application/vnd.kiln.cache.v1+json";
const CONFIG_TYPE: &str = "application/vnd.kiln.cache.config.v1+json";
/// Largest index, manifest or records document accepted on import.
const MAX_DOC: u64 = 256 << 20;

pub use super::cache_spec::{parse_cache_from, parse_cache_to, CacheTo, Location};

pub(super) fn record_json(r: &CacheRecord) -> Value {
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

pub(super) fn layers_of(r: &CacheRecord) -> Vec<LayerInfo> {
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
    fs::write(kiln_store::oci_layout_blob(dir, &d), bytes)?;
    Ok((d, bytes.len() as u64))
}

/// The cache as an OCI artifact: its records document (the config), its
/// manifest and the layers the manifest lists, all canonical so the same
/// records give the same bytes.
struct Artifact {
    records: usize,
    config: Vec<u8>,
    manifest: Vec<u8>,
    layers: Vec<LayerInfo>,
}

/// `encodings`: also every other encoding of the records' layers that the
/// store has or knows remotely (the gzip blobs a push made): put in the
/// artifact, they let a runner that imports it push the image without
/// fetching or recompressing a layer.
fn artifact(store: &Store, keys: &[String], encodings: bool) -> Result<Artifact> {
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
    let mut others: BTreeMap<String, LayerInfo> = BTreeMap::new();
    if encodings {
        for l in layers.values() {
            for e in store.layer_encodings(&l.diff_id)? {
                if !layers.contains_key(e.digest.as_str()) {
                    others.insert(e.digest.to_string(), e);
                }
            }
        }
    }
    let mut doc = json!({
        "kiln": "cache-v1",
        "records": records.iter().map(record_json).collect::<Vec<_>>(),
    });
    if !others.is_empty() {
        doc["encodings"] = serde_json::to_value(others.values().collect::<Vec<_>>())?;
    }
    layers.append(&mut others);
    let layers: Vec<LayerInfo> = layers.into_values().collect();
    let config = doc.to_string().into_bytes();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "artifactType": ARTIFACT_TYPE,
        "config": {
            "mediaType": CONFIG_TYPE,
            "digest": kiln_store::sha256_digest(&config).to_string(),
            "size": config.len(),
        },
        "layers": layers.iter().map(|l| json!({
            "mediaType": l.media_type,
            "digest": l.digest.to_string(),
            "size": l.size,
        })).collect::<Vec<_>>(),
    })
    .to_string()
    .into_bytes();
    Ok(Artifact {
        records: records.len(),
        config,
        manifest,
        layers,
    })
}

/// Writes `keys`' records and their layers to `to.dest`, replacing what
/// was there (a local layout is built beside it and renamed, so a failed
/// export leaves the old cache whole; in a registry the manifest is put
/// last, after every blob it names, and the tag moves to it: nothing is
/// appended to what the tag named before). Returns the records written
/// and notes on what became of the replaced cache.
pub fn export(
    store: &Store,
    keys: &[String],
    to: &CacheTo,
    access: &crate::registry::Access,
) -> Result<(usize, Vec<String>)> {
    let a = artifact(store, keys, matches!(to.dest, Location::Registry(_)))?;
    let mut notes = Vec::new();
    match &to.dest {
        Location::Local(dir) => write_layout(store, &a, dir)?,
        Location::Registry(r) => {
            if let Some(n) = push_artifact(store, &a, r, access)? {
                notes.push(n);
            }
        }
        other => bail!("{other} is not a cache artifact destination"),
    }
    Ok((a.records, notes))
}

/// Pushes the artifact to `target`; when that moved the tag from an older
/// cache manifest, deletes it (see [`super::registry_gc::drop_replaced`]):
/// best effort, said in the note, never failing the export.
fn push_artifact(
    store: &Store,
    a: &Artifact,
    target: &str,
    access: &crate::registry::Access,
) -> Result<Option<String>> {
    let r = kiln_store::reference::parse(target)?;
    let client = access.client()?;
    let before = client.manifest_digest(&r).ok().flatten();
    for l in &a.layers {
        client.put_store_blob(store, &r, &l.digest)?;
    }
    let config = a.config.clone();
    client.put_blob(
        &r,
        &kiln_store::sha256_digest(&a.config),
        a.config.len() as u64,
        &move || Ok(Box::new(std::io::Cursor::new(config.clone())) as Box<dyn Read + Send>),
    )?;
    let now = client.put_manifest(&r, MANIFEST_TYPE, &a.manifest)?;
    let Some(old) = before.filter(|b| *b != now) else {
        return Ok(None);
    };
    let tag = r.tag().unwrap_or("latest");
    let note = super::registry_gc::drop_replaced(&client, &r, tag, &old).unwrap_or_else(|e| {
        format!(
            "the cache manifest {tag} named before ({}) was left: {e:#}",
            old.short()
        )
    });
    Ok((!note.is_empty()).then_some(note))
}

fn write_layout(store: &Store, a: &Artifact, dest: &Path) -> Result<()> {
    let parent = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(parent)?;
    let tmp = tempfile::Builder::new()
        .prefix(".kiln-cache-")
        .tempdir_in(parent)
        .with_context(|| format!("--cache-to: cannot write beside {}", dest.display()))?;
    let t = tmp.path();
    fs::create_dir_all(kiln_store::oci_layout_blobs(t))?;
    fs::write(t.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    for l in &a.layers {
        let dst = kiln_store::oci_layout_blob(t, &l.digest);
        store.content().export_to(&l.digest, &dst)?;
    }
    write_blob(t, &a.config)?;
    let (md, ms) = write_blob(t, &a.manifest)?;
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
    if dest.exists() {
        let old = parent.join(format!(".kiln-cache-old-{}", std::process::id()));
        fs::rename(dest, &old)?;
        fs::rename(tmp.keep(), dest)?;
        let _ = fs::remove_dir_all(old);
    } else {
        fs::rename(tmp.keep(), dest)?;
    }
    Ok(())
}

/// Reads a small document of the layout, checking size and digest.
fn read_verified(dir: &Path, d: &Digest, size: u64) -> Result<Vec<u8>> {
    if size > MAX_DOC {
        bail!("{d} is {size} bytes, over the {MAX_DOC}-byte limit");
    }
    let p = kiln_store::oci_layout_blob(dir, d);
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
    /// What the imported records are attributed to (see
    /// [`Location::origin`]).
    pub origin: String,
}

/// Where an import reads a cache artifact from.
enum Source<'a> {
    Dir(&'a Path),
    Registry {
        reference: kiln_store::Reference,
        client: std::sync::Arc<kiln_store::registry::Client>,
        /// The cache manifest, read when the reference was resolved.
        manifest: Vec<u8>,
    },
}

impl Source<'_> {
    /// The cache manifest's bytes.
    fn manifest(&self) -> Result<Vec<u8>> {
        match self {
            Source::Dir(src) => {
                let p = src.join("index.json");
                let meta = fs::metadata(&p).with_context(|| {
                    format!("{} is not a kiln cache (no index.json)", src.display())
                })?;
                if meta.len() > MAX_DOC {
                    bail!("{} is too large", p.display());
                }
                let index: Value = serde_json::from_slice(&fs::read(&p)?)
                    .with_context(|| format!("{} is not JSON", p.display()))?;
                let m = index
                    .get("manifests")
                    .and_then(Value::as_array)
                    .and_then(|a| {
                        a.iter().find(|m| {
                            m.get("artifactType").and_then(Value::as_str) == Some(ARTIFACT_TYPE)
                        })
                    })
                    .ok_or_else(|| anyhow!("{} holds no kiln cache manifest", src.display()))?;
                let (md, ms) = descriptor(m)?;
                read_verified(src, &md, ms)
            }
            Source::Registry { manifest, .. } => Ok(manifest.clone()),
        }
    }

    /// A small document (the records), verified.
    fn doc(&self, store: &Store, d: &Digest, size: u64) -> Result<Vec<u8>> {
        match self {
            Source::Dir(src) => read_verified(src, d, size),
            Source::Registry {
                reference, client, ..
            } => {
                if size > MAX_DOC {
                    bail!("{d} is {size} bytes, over the {MAX_DOC}-byte limit");
                }
                client.fetch_blob(store, reference, d, size, MAX_DOC)?;
                Ok(store.read_blob(d)?)
            }
        }
    }

    /// A layer of the cache: from a directory, into the store, verified
    /// before it is committed there; from a registry, recorded as known
    /// remotely, in the cache's repository (lazy: fetched, and verified,
    /// only when a step runs on it, an exporter reads it or a push to
    /// another registry needs it).
    fn layer(&self, store: &Store, d: &Digest, size: u64, media_type: Option<&str>) -> Result<()> {
        match self {
            Source::Dir(src) => {
                let p = kiln_store::oci_layout_blob(src, d);
                let mut f = fs::File::open(&p).with_context(|| format!("{d} is missing"))?;
                store.write_blob(&mut f, Some(d), Some(size))?;
            }
            Source::Registry { reference, .. } => {
                store.record_remote_blob(
                    d,
                    size,
                    media_type,
                    reference.domain(),
                    reference.path(),
                )?;
            }
        }
        Ok(())
    }

    /// Other encodings of the records' layers (see [`artifact`]): known
    /// with their diffIDs, so a push finds them. Only those the manifest
    /// lists (`good`: the cache's repository holds them).
    fn encodings(&self, store: &Store, config: &Value, good: &BTreeSet<String>) -> Result<()> {
        let Source::Registry { reference, .. } = self else {
            return Ok(());
        };
        let list: Vec<LayerInfo> = config
            .get("encodings")
            .and_then(|e| serde_json::from_value(e.clone()).ok())
            .unwrap_or_default();
        for l in list.iter().filter(|l| good.contains(l.digest.as_str())) {
            store.record_remote_layer(l, reference.domain(), reference.path())?;
        }
        Ok(())
    }
}

/// A record of an exported cache document (see [`record_json`]), `None`
/// when it has no valid key. Used now, never hit yet, from `origin`.
pub(super) fn record_from_json(r: &Value, origin: &str) -> Option<CacheRecord> {
    let text = |k: &str| {
        r.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let rec = CacheRecord {
        key: text("key"),
        parent: r.get("parent").and_then(Value::as_str).map(String::from),
        description: text("description"),
        source: text("source"),
        stage: text("stage"),
        inputs: r.get("inputs").cloned().unwrap_or(Value::Null),
        result: r.get("result").cloned().unwrap_or(Value::Null),
        layer: r
            .get("layer")
            .and_then(|l| serde_json::from_value(l.clone()).ok()),
        created: r.get("created").and_then(Value::as_i64).unwrap_or(0),
        last_used: chrono::Utc::now().timestamp(),
        hits: 0,
        origin: Some(origin.to_string()),
    };
    (rec.key.len() == 64 && rec.key.chars().all(|c| c.is_ascii_hexdigit())).then_some(rec)
}

/// Stores the records the store does not have yet (a record it has, made
/// here or imported from an earlier source, wins: first hit wins), in one
/// transaction. Returns how many were new.
pub(super) fn put_new(store: &Store, recs: Vec<CacheRecord>) -> Result<usize> {
    let mut new = Vec::new();
    for r in recs {
        if store.cache_get(&r.key)?.is_none() && !new.iter().any(|n: &CacheRecord| n.key == r.key) {
            new.push(r);
        }
    }
    store.cache_put_many(&new)?;
    Ok(new.len())
}

/// Imports the records of `src`: a cache written by `export` (local or in
/// a registry), or the inline cache of an image (in a registry, or the
/// local store's image of that name for a bare `--cache-from IMAGE`).
/// Layers of a local cache are stored only after their digest checked out;
/// those in a registry are recorded as known remotely and fetched
/// (verified) when needed. A record is imported only if every layer it
/// names is stored or known remotely. What cannot be trusted is reported
/// and left out: the build then runs those steps.
pub fn import(store: &Store, src: &Location, access: &crate::registry::Access) -> Result<Imported> {
    let origin = src.origin();
    match src {
        Location::Local(dir) => import_artifact(store, Source::Dir(dir), &origin),
        Location::Image(name) => {
            let Some(img) = store.resolve_image(name)? else {
                return import_registry(store, name, access, origin);
            };
            let config = store.read_blob(&img.config_digest)?;
            let local = format!("{name} (local image)");
            match super::inline::import_config(store, &config, &img.layers, &local) {
                Ok((records, warnings)) => Ok(Imported {
                    records,
                    warnings,
                    origin: local,
                }),
                // The local image has no inline cache: the registry's may.
                Err(e) => import_registry(store, name, access, origin)
                    .map_err(|r| anyhow!("the local image: {e:#}; in the registry: {r:#}")),
            }
        }
        Location::Registry(r) => import_registry(store, r, access, origin),
        Location::Inline => bail!("type=inline is a --cache-to destination"),
    }
}

/// A reference in a registry: a kiln cache artifact, else an image whose
/// config may carry an inline cache.
fn import_registry(
    store: &Store,
    name: &str,
    access: &crate::registry::Access,
    origin: String,
) -> Result<Imported> {
    let reference = kiln_store::reference::parse(name)?;
    let client = access.client()?;
    let (manifest, _, _) = client.get_manifest(&reference, &[])?;
    let is_cache = serde_json::from_slice::<Value>(&manifest)
        .ok()
        .and_then(|m| {
            m.get("artifactType")
                .and_then(Value::as_str)
                .map(|t| t == ARTIFACT_TYPE)
        })
        .unwrap_or(false);
    if is_cache {
        let source = Source::Registry {
            reference,
            client,
            manifest,
        };
        return import_artifact(store, source, &origin);
    }
    let platform = kiln_store::registry::Platform::host();
    let (config, layers) = client.image_config_lazy(store, &reference, &platform)?;
    let (records, warnings) = super::inline::import_config(store, &config, &layers, &origin)
        .with_context(|| format!("{name} is an image"))?;
    Ok(Imported {
        records,
        warnings,
        origin,
    })
}

fn import_artifact(store: &Store, source: Source, origin: &str) -> Result<Imported> {
    let mut warnings = Vec::new();
    let manifest: Value =
        serde_json::from_slice(&source.manifest()?).context("the cache manifest is not JSON")?;
    let (cd, cs) = descriptor(
        manifest
            .get("config")
            .ok_or_else(|| anyhow!("the cache manifest has no config"))?,
    )?;
    let config: Value = serde_json::from_slice(&source.doc(store, &cd, cs)?)?;
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
        let media_type = l.get("mediaType").and_then(Value::as_str);
        match source.layer(store, &d, size, media_type) {
            Ok(_) => {
                good.insert(d.to_string());
            }
            Err(e) => warnings.push(format!(
                "layer {d} rejected ({e:#}); steps that need it will run"
            )),
        }
    }
    source.encodings(store, &config, &good)?;
    let mut recs = Vec::new();
    for r in config
        .get("records")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let Some(rec) = record_from_json(r, origin) else {
            warnings.push("a record without a valid key was ignored".into());
            continue;
        };
        if layers_of(&rec)
            .iter()
            .all(|l| good.contains(&l.digest.to_string()))
        {
            recs.push(rec);
        }
    }
    Ok(Imported {
        records: put_new(store, recs)?,
        warnings,
        origin: origin.to_string(),
    })
}
