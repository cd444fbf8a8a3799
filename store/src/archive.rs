//! `save` to docker-archive / OCI image layout tars, and `load` from both
//! (including what `docker save` writes, old `<id>/layer.tar` layout and the
//! newer OCI-based one).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

use crate::digest::{Digest, HashingWriter};
use crate::error::{Result, StoreError};
use crate::image::{self, canonical_json, Descriptor, ImageConfig, Index, Manifest};
use crate::layer::{self, Compression};
use crate::reference;
use crate::store::{ArchiveFormat, ImageRecord, LayerInfo, Store, TreeGuard};

const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
/// Metadata files kept in memory (never blobs) and their size bound.
const SMALL_FILE_MAX: u64 = 16 << 20;

/// An image of an OCI layout, recorded once all of its layers passed.
struct Planned {
    manifest: Digest,
    config_digest: Digest,
    config: ImageConfig,
    layers: Vec<LayerInfo>,
    name: Option<String>,
    /// Attestation manifests about this image in the same index.
    attestations: Vec<crate::indexes::IndexEntry>,
}

/// One entry of a docker-archive `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct DockerManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default, deserialize_with = "null_vec")]
    repo_tags: Vec<String>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

fn null_vec<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

fn append(
    b: &mut tar::Builder<&mut dyn Write>,
    path: &str,
    size: u64,
    data: &mut dyn Read,
) -> Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_size(size);
    b.append_data(&mut h, path, data)
        .map_err(|e| StoreError::io(path, e))
}

fn append_dir(b: &mut tar::Builder<&mut dyn Write>, path: &str) -> Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_mtime(0);
    h.set_size(0);
    b.append_data(&mut h, path, io::empty())
        .map_err(|e| StoreError::io(path, e))
}

/// What an archive's entries left behind, by path in the archive.
struct ArchiveFiles {
    /// Metadata files, in memory.
    small: HashMap<String, Vec<u8>>,
    /// Everything written to the blob store.
    blobs: HashMap<String, (Digest, u64)>,
    /// Symlinks and hard links, cleaned, to their target path.
    links: HashMap<String, String>,
}

impl ArchiveFiles {
    /// The blob at `p`, through up to 16 links.
    fn resolve(&self, p: &str) -> Option<(Digest, u64)> {
        let mut p = p.trim_start_matches("./").to_string();
        for _ in 0..16 {
            if let Some(b) = self.blobs.get(&p) {
                return Some(b.clone());
            }
            p = self.links.get(&p)?.clone();
        }
        None
    }
}

impl Store {
    /// Writes the images named by `references` (tags or IDs) to `out`.
    pub fn save(
        &self,
        references: &[String],
        format: ArchiveFormat,
        out: &mut dyn Write,
    ) -> Result<()> {
        let mut images: Vec<(ImageRecord, Option<String>)> = Vec::new();
        for r in references {
            let rec = self
                .resolve_image(r)?
                .ok_or_else(|| StoreError::ImageNotFound(r.clone()))?;
            let tag = reference::parse(r)
                .ok()
                .filter(|p| {
                    p.digest().is_none()
                        && self
                            .resolve_manifest(&p.familiar())
                            .ok()
                            .flatten()
                            .is_some()
                })
                .map(|p| p.familiar());
            images.push((rec, tag));
        }
        let mut b = tar::Builder::new(out);
        b.mode(tar::HeaderMode::Deterministic);
        match format {
            ArchiveFormat::Docker => self.save_docker(&mut b, &images)?,
            ArchiveFormat::Oci => self.save_oci(&mut b, &images)?,
        }
        b.into_inner()
            .map_err(|e| StoreError::io("archive", e))?
            .flush()
            .map_err(|e| StoreError::io("archive", e))?;
        Ok(())
    }

    fn save_docker(
        &self,
        b: &mut tar::Builder<&mut dyn Write>,
        images: &[(ImageRecord, Option<String>)],
    ) -> Result<()> {
        let mut manifest: Vec<DockerManifestEntry> = Vec::new();
        let mut written: HashMap<String, ()> = HashMap::new();
        let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for (rec, tag) in images {
            let config_name = format!("{}.json", rec.config_digest.hex());
            if written.insert(config_name.clone(), ()).is_none() {
                let bytes = self.read_blob(&rec.config_digest)?;
                append(b, &config_name, bytes.len() as u64, &mut &bytes[..])?;
            }
            let mut layer_paths = Vec::new();
            for l in &rec.layers {
                let dir = l.diff_id.hex().to_string();
                let path = format!("{dir}/layer.tar");
                if written.insert(path.clone(), ()).is_none() {
                    append_dir(b, &format!("{dir}/"))?;
                    self.append_uncompressed_layer(b, l, &path)?;
                }
                layer_paths.push(path);
            }
            let repo_tags: Vec<String> = tag.iter().cloned().collect();
            if let (Some(t), Some(top)) = (tag, rec.layers.last()) {
                if let Ok(r) = reference::parse(t) {
                    repositories.entry(r.repository()).or_default().insert(
                        r.tag().unwrap_or("latest").to_string(),
                        top.diff_id.hex().to_string(),
                    );
                }
            }
            // One entry per image, with all its requested tags (as docker
            // save writes it).
            match manifest
                .iter_mut()
                .find(|m| m.config == config_name && m.layers == layer_paths)
            {
                Some(m) => {
                    for t in repo_tags {
                        if !m.repo_tags.contains(&t) {
                            m.repo_tags.push(t);
                        }
                    }
                }
                None => manifest.push(DockerManifestEntry {
                    config: config_name,
                    repo_tags,
                    layers: layer_paths,
                }),
            }
        }
        let m = serde_json::to_vec(&manifest)?;
        append(b, "manifest.json", m.len() as u64, &mut &m[..])?;
        if !repositories.is_empty() {
            let r = serde_json::to_vec(&repositories)?;
            append(b, "repositories", r.len() as u64, &mut &r[..])?;
        }
        Ok(())
    }

    /// docker-archive layers are uncompressed tars (what `docker save`
    /// writes). A compressed blob is decompressed into `tmp/` first (the tar
    /// header needs the size), checking the diffID on the way.
    fn append_uncompressed_layer(
        &self,
        b: &mut tar::Builder<&mut dyn Write>,
        l: &LayerInfo,
        path: &str,
    ) -> Result<()> {
        let mut f = self.open_blob(&l.digest)?;
        let mut magic = [0u8; 4];
        let n = read_up_to(&mut f, &mut magic)
            .map_err(|e| StoreError::io(self.blob_path(&l.digest), e))?;
        let comp = Compression::detect(&magic[..n]);
        let mut f = self.open_blob(&l.digest)?;
        if comp == Compression::None {
            let size = f.metadata().map_err(|e| StoreError::io(path, e))?.len();
            return append(b, path, size, &mut f);
        }
        let tmp = self.tmp_path("save");
        let _guard = TreeGuard(tmp.clone());
        let out = File::create(&tmp).map_err(|e| StoreError::io(&tmp, e))?;
        let mut w = HashingWriter::new(io::BufWriter::new(out));
        let mut r: Box<dyn Read> = match comp {
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(io::BufReader::new(f))),
            _ => {
                Box::new(zstd::stream::read::Decoder::new(f).map_err(|e| StoreError::io(path, e))?)
            }
        };
        io::copy(&mut r, &mut w).map_err(|e| StoreError::io(&tmp, e))?;
        let HashingWriter { inner, hasher } = w;
        inner
            .into_inner()
            .map_err(|e| StoreError::io(&tmp, e.into_error()))?;
        let size = hasher.len();
        let diff = hasher.finish();
        if diff != l.diff_id {
            return Err(StoreError::DiffIdMismatch {
                digest: l.digest.clone(),
                expected: l.diff_id.clone(),
                actual: diff,
            });
        }
        let mut f = File::open(&tmp).map_err(|e| StoreError::io(&tmp, e))?;
        append(b, path, size, &mut f)
    }

    fn save_oci(
        &self,
        b: &mut tar::Builder<&mut dyn Write>,
        images: &[(ImageRecord, Option<String>)],
    ) -> Result<()> {
        let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
        append(b, "oci-layout", layout.len() as u64, &mut &layout[..])?;
        append_dir(b, "blobs/")?;
        append_dir(b, "blobs/sha256/")?;
        let mut written: HashMap<Digest, ()> = HashMap::new();
        let mut index = Index {
            schema_version: 2,
            media_type: Some(image::MEDIA_TYPE_INDEX.into()),
            manifests: Vec::new(),
            annotations: BTreeMap::new(),
        };
        for (rec, tag) in images {
            // A name for an index (several platforms, attestations) exports
            // the whole index, as BuildKit's OCI exporter writes it.
            if let Some(idx) = tag
                .as_deref()
                .map(|t| self.resolve_index(t))
                .transpose()?
                .flatten()
            {
                let d = self.save_oci_index(b, &idx, &mut written)?;
                index.manifests.push(Descriptor {
                    annotations: name_annotations(tag.as_deref()),
                    ..d
                });
                continue;
            }
            let mut blobs = vec![rec.manifest_digest.clone(), rec.config_digest.clone()];
            blobs.extend(rec.layers.iter().map(|l| l.digest.clone()));
            self.append_blobs(b, blobs, &mut written)?;
            // A pulled image keeps its registry's manifest bytes, which may
            // be Docker schema2: the descriptor says what the blob is.
            let manifest_bytes = self.read_blob(&rec.manifest_digest)?;
            let manifest_size = manifest_bytes.len() as u64;
            let manifest_type = serde_json::from_slice::<serde_json::Value>(&manifest_bytes)
                .ok()
                .and_then(|v| v.get("mediaType")?.as_str().map(String::from))
                .filter(|t| t == image::MEDIA_TYPE_DOCKER_MANIFEST)
                .unwrap_or_else(|| image::MEDIA_TYPE_MANIFEST.to_string());
            let annotations = name_annotations(tag.as_deref());
            index.manifests.push(Descriptor {
                media_type: manifest_type,
                digest: rec.manifest_digest.clone(),
                size: manifest_size,
                annotations,
                platform: Some(serde_json::json!({"architecture": rec.config.architecture, "os": rec.config.os})),
            });
        }
        let idx = canonical_json(&index)?;
        append(b, "index.json", idx.len() as u64, &mut &idx[..])?;
        Ok(())
    }

    /// Appends each blob under `blobs/sha256/` of an OCI layout, once.
    fn append_blobs(
        &self,
        b: &mut tar::Builder<&mut dyn Write>,
        blobs: Vec<Digest>,
        written: &mut HashMap<Digest, ()>,
    ) -> Result<()> {
        for d in blobs {
            if written.insert(d.clone(), ()).is_none() {
                let mut f = self.open_blob(&d)?;
                let size = f
                    .metadata()
                    .map_err(|e| StoreError::io(self.blob_path(&d), e))?
                    .len();
                append(b, &format!("blobs/sha256/{}", d.hex()), size, &mut f)?;
            }
        }
        Ok(())
    }

    /// Writes an index's blob and every blob its entries hold (images:
    /// manifest, config, layers; attestations: manifest, config,
    /// statements) once; returns the index's descriptor.
    fn save_oci_index(
        &self,
        b: &mut tar::Builder<&mut dyn Write>,
        idx: &crate::indexes::IndexRecord,
        written: &mut HashMap<Digest, ()>,
    ) -> Result<Descriptor> {
        let mut blobs = vec![idx.digest.clone()];
        for e in &idx.entries {
            match &e.kind {
                crate::indexes::EntryKind::Image { .. } => {
                    let rec = self
                        .image_by_manifest(&e.manifest)?
                        .ok_or_else(|| StoreError::ImageNotFound(e.manifest.to_string()))?;
                    blobs.push(rec.manifest_digest.clone());
                    blobs.push(rec.config_digest.clone());
                    blobs.extend(rec.layers.iter().map(|l| l.digest.clone()));
                }
                crate::indexes::EntryKind::Attestation { .. } => {
                    let bytes = self.read_blob(&e.manifest)?;
                    for d in crate::indexes::attestation_blobs(&bytes, &e.manifest) {
                        blobs.push(d.parse()?);
                    }
                }
            }
        }
        self.append_blobs(b, blobs, written)?;
        Ok(Descriptor {
            media_type: image::MEDIA_TYPE_INDEX.into(),
            digest: idx.digest.clone(),
            size: self.read_blob(&idx.digest)?.len() as u64,
            annotations: BTreeMap::new(),
            platform: None,
        })
    }

    /// Loads a docker-archive or OCI-layout tar; returns the loaded
    /// references (familiar form), or image IDs for untagged images.
    pub fn load(&self, r: &mut dyn Read) -> Result<Vec<String>> {
        let _lease = self.lease()?;
        let files = self.read_archive(r)?;
        if let Some(m) = files.small.get("manifest.json") {
            return self.load_docker(&files, m);
        }
        if let Some(idx) = files.small.get("index.json") {
            return self.load_oci(idx);
        }
        Err(StoreError::InvalidArchive(
            "neither manifest.json nor index.json found".into(),
        ))
    }

    /// Reads the archive's entries: small metadata files into memory,
    /// everything else into the blob store, links remembered by path.
    fn read_archive(&self, r: &mut dyn Read) -> Result<ArchiveFiles> {
        let mut small: HashMap<String, Vec<u8>> = HashMap::new();
        let mut blobs: HashMap<String, (Digest, u64)> = HashMap::new();
        let mut links: HashMap<String, String> = HashMap::new();
        let mut ar = tar::Archive::new(r);
        for e in ar
            .entries()
            .map_err(|e| StoreError::InvalidArchive(e.to_string()))?
        {
            let mut e = e.map_err(|e| StoreError::InvalidArchive(e.to_string()))?;
            let raw = e.path_bytes().into_owned();
            let Ok(comps) = layer::clean_path_pub(&raw) else {
                return Err(StoreError::InvalidArchive(format!(
                    "unsafe path {:?}",
                    String::from_utf8_lossy(&raw)
                )));
            };
            let path = String::from_utf8_lossy(&comps.join(&b'/')).into_owned();
            match e.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let size = e.size();
                    let is_meta = matches!(
                        path.as_str(),
                        "manifest.json" | "index.json" | "repositories" | "oci-layout"
                    ) || path.ends_with("/json")
                        || path.ends_with("/VERSION");
                    // Metadata and `<config>.json` files are kept in memory
                    // (bounded); everything else streams into the blob store
                    // and is read back from there when needed.
                    if size <= SMALL_FILE_MAX && (is_meta || path.ends_with(".json")) {
                        let mut v = Vec::with_capacity(size as usize);
                        e.read_to_end(&mut v)
                            .map_err(|err| StoreError::InvalidArchive(err.to_string()))?;
                        if !is_meta {
                            let (d, _) = self.write_blob(
                                &mut &v[..],
                                named_digest(&path).as_ref(),
                                Some(size),
                            )?;
                            blobs.insert(path.clone(), (d, size));
                        }
                        small.insert(path, v);
                    } else {
                        // Files named by digest (OCI layouts, docker >= 25)
                        // are verified against their name.
                        let (d, n) =
                            self.write_blob(&mut e, named_digest(&path).as_ref(), Some(size))?;
                        blobs.insert(path, (d, n));
                    }
                }
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    let target = e
                        .link_name_bytes()
                        .map(|c| c.into_owned())
                        .unwrap_or_default();
                    let base = if e.header().entry_type() == tar::EntryType::Symlink {
                        let mut b = comps[..comps.len().saturating_sub(1)].join(&b'/');
                        if !b.is_empty() {
                            b.push(b'/');
                        }
                        b.extend_from_slice(&target);
                        b
                    } else {
                        target
                    };
                    if let Ok(tc) = layer::clean_path_pub(&base) {
                        links.insert(path, String::from_utf8_lossy(&tc.join(&b'/')).into_owned());
                    }
                }
                _ => {}
            }
        }
        Ok(ArchiveFiles {
            small,
            blobs,
            links,
        })
    }

    /// A `docker save` archive: `manifest.json` names each image's config
    /// and layers by path.
    fn load_docker(&self, files: &ArchiveFiles, m: &[u8]) -> Result<Vec<String>> {
        let entries: Vec<DockerManifestEntry> = serde_json::from_slice(m)?;
        let mut planned = Vec::new();
        for ent in entries {
            let cfg_path = ent.config.trim_start_matches("./");
            let cfg_bytes = match files.small.get(cfg_path) {
                Some(b) => b.clone(),
                None => {
                    let (d, _) = files.resolve(cfg_path).ok_or_else(|| {
                        StoreError::InvalidArchive(format!("config {cfg_path} missing"))
                    })?;
                    self.read_blob(&d)?
                }
            };
            let config: ImageConfig = serde_json::from_slice(&cfg_bytes)?;
            if config.rootfs.diff_ids.len() != ent.layers.len() {
                return Err(StoreError::InvalidArchive(format!(
                    "{cfg_path}: {} diff_ids for {} layers",
                    config.rootfs.diff_ids.len(),
                    ent.layers.len()
                )));
            }
            let mut layers = Vec::new();
            for (p, diff) in ent.layers.iter().zip(&config.rootfs.diff_ids) {
                let (d, size) = files
                    .resolve(p)
                    .ok_or_else(|| StoreError::InvalidArchive(format!("layer {p} missing")))?;
                let comp = self.blob_compression(&d)?;
                if comp == Compression::None && d != *diff {
                    return Err(StoreError::DiffIdMismatch {
                        digest: d.clone(),
                        expected: diff.clone(),
                        actual: d,
                    });
                }
                layers.push(LayerInfo {
                    digest: d,
                    diff_id: diff.clone(),
                    size,
                    media_type: comp.media_type().into(),
                });
            }
            let tags = ent
                .repo_tags
                .iter()
                .map(|t| {
                    reference::parse(t).map(|r| r.familiar()).map_err(|e| {
                        StoreError::InvalidArchive(format!("RepoTags entry {t:?}: {e}"))
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            planned.push((cfg_bytes, config, layers, tags));
        }
        // Nothing is recorded until every layer of every image would
        // unpack.
        for (_, _, layers, _) in &planned {
            self.validate_layers(layers)?;
        }
        let mut out = Vec::new();
        for (cfg_bytes, config, layers, tags) in planned {
            let rec = self.write_image_raw(&cfg_bytes, config, &layers)?;
            if tags.is_empty() {
                out.push(rec.config_digest.to_string());
            }
            for t in tags {
                self.tag(&t, &rec.manifest_digest)?;
                out.push(t);
            }
        }
        Ok(out)
    }

    /// An OCI layout: `index.json` and blobs by digest.
    fn load_oci(&self, idx: &[u8]) -> Result<Vec<String>> {
        let index: Index = serde_json::from_slice(idx)?;
        let mut planned = Vec::new();
        self.load_index(&index, &mut planned, 0)?;
        for p in &planned {
            self.validate_layers(&p.layers)?;
        }
        let mut out = Vec::new();
        for p in planned {
            let rec = self.record_image(&p.manifest, &p.config_digest, p.config, &p.layers)?;
            // With its attestations the name goes to a local index of
            // the image and them, as a pull makes it.
            let named = if p.attestations.is_empty() {
                rec.manifest_digest.clone()
            } else {
                self.write_index(&[&rec], &p.attestations)?.digest
            };
            match p.name {
                Some(n) => {
                    self.tag(&n, &named)?;
                    out.push(n);
                }
                None => out.push(rec.config_digest.to_string()),
            }
        }
        Ok(out)
    }

    /// Every layer streamed through the applier's checks without being
    /// written, and its diffID compared with the config's.
    fn validate_layers(&self, layers: &[LayerInfo]) -> Result<()> {
        for l in layers {
            let f = self.open_blob(&l.digest)?;
            let mut r = io::BufReader::with_capacity(256 * 1024, f);
            let diff = layer::validate_layer(&mut r, &self.layer_limits()).map_err(|e| {
                StoreError::LayerRefused {
                    digest: l.digest.clone(),
                    source: e,
                }
            })?;
            if diff != l.diff_id {
                return Err(StoreError::DiffIdMismatch {
                    digest: l.digest.clone(),
                    expected: l.diff_id.clone(),
                    actual: diff,
                });
            }
        }
        Ok(())
    }

    fn load_index(&self, index: &Index, out: &mut Vec<Planned>, depth: u32) -> Result<()> {
        if depth > 4 {
            return Err(StoreError::InvalidArchive(
                "image indexes nested too deeply".into(),
            ));
        }
        for desc in &index.manifests {
            let mt = desc.media_type.as_str();
            if mt == image::MEDIA_TYPE_INDEX || mt == image::MEDIA_TYPE_DOCKER_MANIFEST_LIST {
                let nested: Index = serde_json::from_slice(&self.read_blob(&desc.digest)?)?;
                let first = out.len();
                self.load_index(&nested, out, depth + 1)?;
                // The name is on the index's entry in index.json.
                let name = name_of(desc);
                for p in &mut out[first..] {
                    if p.name.is_none() {
                        p.name = name.clone();
                    }
                    p.attestations = attestations_about(&nested, &p.manifest);
                    p.attestations.retain(|a| self.has_blob(&a.manifest));
                }
                continue;
            }
            if mt != image::MEDIA_TYPE_MANIFEST && mt != image::MEDIA_TYPE_DOCKER_MANIFEST {
                continue;
            }
            if let Some(p) = &desc.platform {
                let os = p.get("os").and_then(|v| v.as_str()).unwrap_or("linux");
                let arch = p
                    .get("architecture")
                    .and_then(|v| v.as_str())
                    .unwrap_or(image::host_architecture());
                if os != "linux" || arch != image::host_architecture() {
                    continue;
                }
            }
            let mbytes = self.read_blob(&desc.digest)?;
            let m: Manifest = serde_json::from_slice(&mbytes)?;
            let cfg_bytes = self.read_blob(&m.config.digest)?;
            let config: ImageConfig = serde_json::from_slice(&cfg_bytes)?;
            let layers = m.layer_infos(&config).ok_or_else(|| {
                StoreError::InvalidArchive(format!(
                    "manifest {}: {} diff_ids for {} layers",
                    desc.digest,
                    config.rootfs.diff_ids.len(),
                    m.layers.len()
                ))
            })?;
            for l in &layers {
                if !self.has_blob(&l.digest) {
                    return Err(StoreError::BlobNotFound(l.digest.clone()));
                }
            }
            out.push(Planned {
                manifest: desc.digest.clone(),
                config_digest: m.config.digest.clone(),
                config,
                layers,
                name: name_of(desc),
                attestations: Vec::new(),
            });
        }
        Ok(())
    }

    fn blob_compression(&self, d: &Digest) -> Result<Compression> {
        let mut f = self.open_blob(d)?;
        let mut magic = [0u8; 4];
        let n = read_up_to(&mut f, &mut magic).map_err(|e| StoreError::io(self.blob_path(d), e))?;
        Ok(Compression::detect(&magic[..n]))
    }
}

/// The digest a `blobs/sha256/<hex>` path claims.
fn named_digest(path: &str) -> Option<Digest> {
    let hex = path.strip_prefix("blobs/sha256/")?;
    Digest::from_hex(hex).ok()
}

fn read_up_to(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

/// The image name an index.json entry carries (containerd's name, else an
/// OCI ref name that is a whole reference), familiar form.
fn name_of(desc: &Descriptor) -> Option<String> {
    desc.annotations
        .get(ANNOTATION_CONTAINERD_NAME)
        .cloned()
        .or_else(|| {
            desc.annotations
                .get(ANNOTATION_REF_NAME)
                .filter(|n| n.contains('/') || n.contains(':'))
                .cloned()
        })
        .and_then(|n| reference::parse(&n).ok())
        .filter(|r| r.digest().is_none())
        .map(|r| r.familiar())
}

/// The attestation manifests of `index` about `manifest` (BuildKit's
/// reference annotations).
fn attestations_about(index: &Index, manifest: &Digest) -> Vec<crate::indexes::IndexEntry> {
    index
        .manifests
        .iter()
        .filter(|d| {
            d.annotations
                .get("vnd.docker.reference.type")
                .map(String::as_str)
                == Some("attestation-manifest")
                && d.annotations
                    .get("vnd.docker.reference.digest")
                    .map(String::as_str)
                    == Some(manifest.as_str())
        })
        .map(|d| crate::indexes::IndexEntry {
            manifest: d.digest.clone(),
            size: d.size,
            kind: crate::indexes::EntryKind::Attestation {
                subject: manifest.clone(),
            },
        })
        .collect()
}

/// The name annotations of an index.json entry for `tag` (containerd's
/// full name and OCI's ref name), as docker and BuildKit write them.
fn name_annotations(tag: Option<&str>) -> BTreeMap<String, String> {
    let mut annotations = BTreeMap::new();
    if let Some(r) = tag.and_then(|t| reference::parse(t).ok()) {
        annotations.insert(ANNOTATION_CONTAINERD_NAME.to_string(), r.full());
        annotations.insert(
            ANNOTATION_REF_NAME.to_string(),
            r.tag().unwrap_or("latest").to_string(),
        );
    }
    annotations
}
