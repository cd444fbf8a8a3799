//! Image records and tags (`kiln images`, `tag`, `rmi`, `import`): the
//! implementation behind [`Store::images`](crate::Store::images). The OCI
//! documents themselves are [`crate::image`]'s.

use std::collections::{HashMap, HashSet};
use std::io::Read;

use rusqlite::{params, OptionalExtension, TransactionBehavior};

use crate::digest::Digest;
use crate::error::{Result, StoreError};
use crate::image::{self, canonical_json, ImageConfig, Manifest};
use crate::layer::{self, LayerOptions, WhiteoutMode};
use crate::reference;
use crate::store::{now_ms, ImageRecord, ImageSummary, LayerInfo, Store};

/// The images view: `store.images()`.
pub struct Images<'a> {
    pub(crate) store: &'a Store,
}

impl Images<'_> {
    pub fn write(&self, config: &ImageConfig, layers: &[LayerInfo]) -> Result<ImageRecord> {
        self.store.write_image(config, layers)
    }

    pub fn tag(&self, reference: &str, manifest: &Digest) -> Result<()> {
        self.store.tag(reference, manifest)
    }

    pub fn untag(&self, reference: &str) -> Result<bool> {
        self.store.untag(reference)
    }

    pub fn resolve(&self, reference_or_id: &str) -> Result<Option<ImageRecord>> {
        self.store.resolve_image(reference_or_id)
    }

    pub fn list(&self) -> Result<Vec<ImageSummary>> {
        self.store.list_images()
    }

    pub fn remove(&self, reference_or_id: &str, force: bool) -> Result<Vec<String>> {
        self.store.remove_image(reference_or_id, force)
    }

    pub fn import_rootfs_tar(
        &self,
        r: &mut dyn Read,
        reference: &str,
        config: Option<ImageConfig>,
    ) -> Result<ImageRecord> {
        self.store.import_rootfs_tar(r, reference, config)
    }
}

impl Store {
    /// Image records and tags.
    pub fn images(&self) -> Images<'_> {
        Images { store: self }
    }

    /// Writes the config (with `rootfs.diff_ids` set from `layers`) and an
    /// OCI manifest canonically, and records the image (untagged).
    pub fn write_image(&self, config: &ImageConfig, layers: &[LayerInfo]) -> Result<ImageRecord> {
        let mut config = config.clone();
        config.rootfs.kind = "layers".into();
        config.rootfs.diff_ids = layers.iter().map(|l| l.diff_id.clone()).collect();
        let config_bytes = canonical_json(&config)?;
        self.write_image_raw(&config_bytes, config, layers)
    }

    /// Records an image whose config bytes are given as is (loaded images
    /// keep their exact config, hence their image ID).
    pub(crate) fn write_image_raw(
        &self,
        config_bytes: &[u8],
        config: ImageConfig,
        layers: &[LayerInfo],
    ) -> Result<ImageRecord> {
        for l in layers {
            if !self.blob_available(&l.digest) {
                return Err(StoreError::BlobNotFound(l.digest.clone()));
            }
        }
        let config_digest = self.write_blob_bytes_typed(config_bytes, image::MEDIA_TYPE_CONFIG)?;
        let manifest = Manifest::oci(&config_digest, config_bytes.len() as u64, layers);
        let manifest_bytes = canonical_json(&manifest)?;
        let manifest_digest =
            self.write_blob_bytes_typed(&manifest_bytes, image::MEDIA_TYPE_MANIFEST)?;
        self.record_image(&manifest_digest, &config_digest, config, layers)
    }

    /// Records an image whose manifest and config blobs are in the store.
    pub(crate) fn record_image(
        &self,
        manifest_digest: &Digest,
        config_digest: &Digest,
        config: ImageConfig,
        layers: &[LayerInfo],
    ) -> Result<ImageRecord> {
        for l in layers {
            self.record_layer(l, None)?;
        }
        let conn = self.conn();
        let mut size = 0u64;
        for l in layers {
            let u: Option<i64> = conn
                .prepare_cached("SELECT uncompressed_size FROM layers WHERE digest = ?1")?
                .query_row([l.digest.as_str()], |r| r.get(0))
                .optional()?
                .flatten();
            size += u.map(|u| u as u64).unwrap_or(l.size);
        }
        conn.prepare_cached(
            "INSERT INTO images (manifest_digest, config_digest, created, size, layers, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(manifest_digest) DO UPDATE SET created_ms = excluded.created_ms",
        )?
        .execute(params![manifest_digest.as_str(), config_digest.as_str(), config.created, size as i64, serde_json::to_string(layers)?, now_ms()])?;
        Ok(ImageRecord {
            manifest_digest: manifest_digest.clone(),
            config_digest: config_digest.clone(),
            config,
            layers: layers.to_vec(),
        })
    }

    /// Points `reference` (`name[:tag]`) at the image with this manifest.
    pub fn tag(&self, reference: &str, manifest: &Digest) -> Result<()> {
        let r = reference::parse(reference)?;
        if r.digest().is_some() {
            return Err(StoreError::Invalid(format!(
                "refusing to create a tag with a digest reference: {reference}"
            )));
        }
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let exists: Option<String> = tx
            .prepare_cached("SELECT manifest_digest FROM images WHERE manifest_digest = ?1 UNION SELECT digest FROM indexes WHERE digest = ?1")?
            .query_row([manifest.as_str()], |r| r.get(0))
            .optional()?;
        if exists.is_none() {
            return Err(StoreError::ImageNotFound(manifest.to_string()));
        }
        tx.prepare_cached("INSERT INTO refs (name, manifest_digest, updated_ms) VALUES (?1, ?2, ?3) ON CONFLICT(name) DO UPDATE SET manifest_digest = excluded.manifest_digest, updated_ms = excluded.updated_ms")?
            .execute(params![r.familiar(), manifest.as_str(), now_ms()])?;
        tx.commit()?;
        Ok(())
    }

    /// Removes a tag; `false` if there was none.
    pub fn untag(&self, reference: &str) -> Result<bool> {
        let r = reference::parse(reference)?;
        let conn = self.conn();
        let n = conn
            .prepare_cached("DELETE FROM refs WHERE name = ?1")?
            .execute([r.familiar()])?;
        Ok(n > 0)
    }

    /// Resolves `name:tag`, `name` (= `:latest`), `name@digest`, a full or
    /// short image ID (config digest, with or without `sha256:`), or a
    /// manifest digest.
    /// A name that names an image index resolves to its image for the
    /// host's platform (or its only image).
    pub fn resolve_image(&self, reference_or_id: &str) -> Result<Option<ImageRecord>> {
        let host = format!("linux/{}", image::host_architecture());
        self.resolve_image_for(reference_or_id, &host)
    }

    /// [`Store::resolve_image`] for `platform` (`os/arch[/variant]`): a
    /// name for an index gives its image for that platform (or its only
    /// image); a name for one image gives that image, whatever its
    /// platform (the caller compares).
    pub fn resolve_image_for(
        &self,
        reference_or_id: &str,
        platform: &str,
    ) -> Result<Option<ImageRecord>> {
        let Some(m) = self.resolve_manifest(reference_or_id)? else {
            return Ok(None);
        };
        let Some(idx) = self.index(&m)? else {
            return self.image_by_manifest(&m);
        };
        let host = platform;
        match idx.image_for(host) {
            Some(d) => self.image_by_manifest(d),
            None => {
                let have: Vec<&str> = idx.images().map(|(_, p)| p).collect();
                Err(StoreError::Invalid(format!(
                    "{reference_or_id} has no image for {host} (it has {})",
                    have.join(", ")
                )))
            }
        }
    }

    pub(crate) fn resolve_manifest(&self, s: &str) -> Result<Option<Digest>> {
        let conn = self.conn();
        let is_index = |d: &Digest| -> Result<bool> {
            Ok(conn
                .prepare_cached("SELECT 1 FROM indexes WHERE digest = ?1")?
                .exists([d.as_str()])?)
        };
        if let Ok(d) = s.parse::<Digest>() {
            if is_index(&d)? {
                return Ok(Some(d));
            }
            let m: Option<String> = conn
                .prepare_cached("SELECT manifest_digest FROM images WHERE manifest_digest = ?1 OR config_digest = ?1 ORDER BY (manifest_digest = ?1) DESC, created_ms DESC LIMIT 1")?
                .query_row([d.as_str()], |r| r.get(0))
                .optional()?;
            return m.map(|m| m.parse().map_err(StoreError::from)).transpose();
        }
        let parsed = reference::parse(s);
        if let Ok(r) = &parsed {
            if let Some(d) = r.digest() {
                if is_index(d)? {
                    return Ok(Some(d.clone()));
                }
                let m: Option<String> = conn
                    .prepare_cached(
                        "SELECT manifest_digest FROM images WHERE manifest_digest = ?1",
                    )?
                    .query_row([d.as_str()], |r| r.get(0))
                    .optional()?;
                return m.map(|m| m.parse().map_err(StoreError::from)).transpose();
            }
            let m: Option<String> = conn
                .prepare_cached("SELECT manifest_digest FROM refs WHERE name = ?1")?
                .query_row([r.familiar()], |r| r.get(0))
                .optional()?;
            if let Some(m) = m {
                return Ok(Some(m.parse()?));
            }
        }
        // A (short) image ID: a hex prefix of the config digest.
        // Like docker, an ID prefix needs no minimum length with "sha256:",
        // but a bare one must not be a single letter that matches by accident.
        let (hex, min) = match s.strip_prefix("sha256:") {
            Some(h) => (h, 1),
            None => (s, 4),
        };
        if hex.len() >= min
            && hex.len() <= 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            let mut stmt = conn.prepare_cached("SELECT DISTINCT config_digest, manifest_digest FROM images WHERE substr(config_digest, 8, ?2) = ?1 ORDER BY created_ms DESC")?;
            let rows: Vec<(String, String)> = stmt
                .query_map(params![hex, hex.len() as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?
                .collect::<Result<_, _>>()?;
            let configs: std::collections::BTreeSet<&String> =
                rows.iter().map(|(c, _)| c).collect();
            if configs.len() > 1 {
                return Err(StoreError::Ambiguous(s.to_string()));
            }
            if let Some((_, m)) = rows.first() {
                return Ok(Some(m.parse()?));
            }
            return Ok(None);
        }
        // Neither a reference nor an ID: say what is wrong with the name
        // rather than that no image has it.
        match parsed {
            Err(e) => Err(StoreError::Invalid(format!(
                "{s:?} is not a valid repository/tag: {e}"
            ))),
            Ok(_) => Ok(None),
        }
    }

    pub(crate) fn image_by_manifest(&self, m: &Digest) -> Result<Option<ImageRecord>> {
        let row: Option<(String, String)> = {
            let conn = self.conn();
            let row = conn
                .prepare_cached(
                    "SELECT config_digest, layers FROM images WHERE manifest_digest = ?1",
                )?
                .query_row([m.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            row
        };
        let Some((config_digest, layers)) = row else {
            return Ok(None);
        };
        let config_digest: Digest = config_digest.parse()?;
        let config: ImageConfig = serde_json::from_slice(&self.read_blob(&config_digest)?)?;
        let layers: Vec<LayerInfo> = serde_json::from_str(&layers)?;
        Ok(Some(ImageRecord {
            manifest_digest: m.clone(),
            config_digest,
            config,
            layers,
        }))
    }

    /// All images with their references, newest first. An image index is
    /// one line (its host-platform image's ID, with its platforms); its
    /// images are not listed on their own.
    pub fn list_images(&self) -> Result<Vec<ImageSummary>> {
        let conn = self.conn();
        let mut refs: HashMap<String, Vec<String>> = HashMap::new();
        {
            let mut stmt =
                conn.prepare_cached("SELECT name, manifest_digest FROM refs ORDER BY name")?;
            let rows =
                stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
            for row in rows {
                let (name, m) = row?;
                refs.entry(m).or_default().push(name);
            }
        }
        let members: HashSet<String> = conn
            .prepare_cached("SELECT manifest_digest FROM index_entries")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut stmt = conn.prepare_cached("SELECT manifest_digest, config_digest, created, size, created_ms FROM images ORDER BY created_ms DESC, manifest_digest")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })?;
        let mut images: HashMap<String, (String, Option<String>, i64)> = HashMap::new();
        let mut out: Vec<(i64, ImageSummary)> = Vec::new();
        for row in rows {
            let (m, c, created, size, created_ms) = row?;
            images.insert(m.clone(), (c.clone(), created.clone(), size));
            if members.contains(&m) {
                continue;
            }
            let references = refs.remove(&m).unwrap_or_default();
            out.push((
                created_ms,
                summary(references, &m, &c, created, size, Vec::new())?,
            ));
        }
        let host = format!("linux/{}", image::host_architecture());
        for (digest, created_ms, platforms) in index_platforms(&conn)? {
            let chosen = platforms
                .iter()
                .find(|(_, p)| p.starts_with(&host))
                .or(platforms.first());
            let Some((m, _)) = chosen else { continue };
            let Some((c, created, size)) = images.get(m) else {
                continue;
            };
            let references = refs.remove(&digest).unwrap_or_default();
            let platforms = platforms.into_iter().map(|(_, p)| p).collect();
            out.push((
                created_ms,
                summary(references, &digest, c, created.clone(), *size, platforms)?,
            ));
        }
        // Stable: newest first, then by digest.
        out.sort_by(|a, b| {
            b.0.cmp(&a.0)
                .then(a.1.manifest_digest.cmp(&b.1.manifest_digest))
        });
        Ok(out.into_iter().map(|(_, s)| s).collect())
    }

    /// `docker rmi`: untags, and deletes the image when no tag is left.
    /// Returns the lines docker prints (`Untagged: ...`, `Deleted: ...`).
    /// Blobs and snapshots are reclaimed by [`Store::prune`].
    pub fn remove_image(&self, reference_or_id: &str, force: bool) -> Result<Vec<String>> {
        let manifest = self
            .resolve_manifest(reference_or_id)?
            .ok_or_else(|| StoreError::ImageNotFound(reference_or_id.to_string()))?;
        let by_tag = reference::parse(reference_or_id)
            .ok()
            .filter(|r| r.digest().is_none())
            .map(|r| r.familiar());
        if self.index(&manifest)?.is_some() {
            return self.remove_index(&manifest, by_tag, force);
        }
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let names: Vec<String> = tx
            .prepare_cached("SELECT name FROM refs WHERE manifest_digest = ?1 ORDER BY name")?
            .query_map([manifest.as_str()], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let config: String = tx
            .prepare_cached("SELECT config_digest FROM images WHERE manifest_digest = ?1")?
            .query_row([manifest.as_str()], |r| r.get(0))?;
        let mut lines = Vec::new();
        if let Some(tag) = by_tag.filter(|t| names.contains(t)) {
            tx.prepare_cached("DELETE FROM refs WHERE name = ?1")?
                .execute([&tag])?;
            lines.push(format!("Untagged: {tag}"));
            if names.len() > 1 {
                tx.commit()?;
                return Ok(lines);
            }
        } else {
            if names.len() > 1 && !force {
                let id: Digest = config.parse()?;
                let short = id.short();
                return Err(StoreError::Conflict(format!(
                    "conflict: unable to delete {short} (must be forced) - image is referenced in multiple repositories"
                )));
            }
            for n in &names {
                tx.prepare_cached("DELETE FROM refs WHERE name = ?1")?
                    .execute([n])?;
                lines.push(format!("Untagged: {n}"));
            }
        }
        tx.prepare_cached("DELETE FROM images WHERE manifest_digest = ?1")?
            .execute([manifest.as_str()])?;
        lines.push(format!("Deleted: {config}"));
        tx.commit()?;
        Ok(lines)
    }

    /// `rmi` of an index: as for an image, and its images go with it unless
    /// another index holds them or a tag names them.
    fn remove_index(
        &self,
        index: &Digest,
        by_tag: Option<String>,
        force: bool,
    ) -> Result<Vec<String>> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let names: Vec<String> = tx
            .prepare_cached("SELECT name FROM refs WHERE manifest_digest = ?1 ORDER BY name")?
            .query_map([index.as_str()], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut lines = Vec::new();
        let untag_only = by_tag.as_ref().is_some_and(|t| names.contains(t)) && names.len() > 1;
        if names.len() > 1 && by_tag.is_none() && !force {
            return Err(StoreError::Conflict(format!(
                "conflict: unable to delete {} (must be forced) - image is referenced in multiple repositories",
                &index.hex()[..12]
            )));
        }
        for n in names
            .iter()
            .filter(|n| !untag_only || Some(*n) == by_tag.as_ref())
        {
            tx.prepare_cached("DELETE FROM refs WHERE name = ?1")?
                .execute([n])?;
            lines.push(format!("Untagged: {n}"));
        }
        if untag_only {
            tx.commit()?;
            return Ok(lines);
        }
        let members: Vec<String> = tx
            .prepare_cached("SELECT manifest_digest FROM index_entries WHERE index_digest = ?1 AND subject IS NULL")?
            .query_map([index.as_str()], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        tx.prepare_cached("DELETE FROM index_entries WHERE index_digest = ?1")?
            .execute([index.as_str()])?;
        tx.prepare_cached("DELETE FROM indexes WHERE digest = ?1")?
            .execute([index.as_str()])?;
        for m in members {
            tx.prepare_cached(
                "DELETE FROM images WHERE manifest_digest = ?1
                 AND manifest_digest NOT IN (SELECT manifest_digest FROM index_entries)
                 AND manifest_digest NOT IN (SELECT manifest_digest FROM refs)",
            )?
            .execute([&m])?;
        }
        lines.push(format!("Deleted: {index}"));
        tx.commit()?;
        Ok(lines)
    }

    /// Imports a rootfs tarball (plain/gzip/zstd) as a one-layer image and
    /// tags it. Without `config`, a linux image for the host architecture.
    pub fn import_rootfs_tar(
        &self,
        r: &mut dyn Read,
        reference: &str,
        config: Option<ImageConfig>,
    ) -> Result<ImageRecord> {
        let parsed = reference::parse(reference)?;
        let _lease = self.lease()?;
        let pending = self.new_snapshot()?;
        layer::apply_layer(
            r,
            pending.upper(),
            WhiteoutMode::Overlay,
            &self.layer_limits(),
        )?;
        let info = self.commit_snapshot(pending, &LayerOptions::default())?;
        let mut config = config.unwrap_or_else(|| ImageConfig {
            architecture: image::host_architecture().into(),
            os: "linux".into(),
            ..Default::default()
        });
        if config.history.is_empty() {
            config.history.push(image::History {
                created: config.created.clone(),
                created_by: Some("kiln import".into()),
                comment: Some("imported from a rootfs tarball".into()),
                ..Default::default()
            });
        }
        let rec = self.write_image(&config, std::slice::from_ref(&info))?;
        if parsed.digest().is_none() {
            self.tag(reference, &rec.manifest_digest)?;
        }
        Ok(rec)
    }
}

/// Each index with its creation time and its images' (manifest, platform).
#[allow(clippy::type_complexity)]
fn index_platforms(
    conn: &rusqlite::Connection,
) -> Result<Vec<(String, i64, Vec<(String, String)>)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT i.digest, i.created_ms, e.manifest_digest, e.platform FROM indexes i JOIN index_entries e ON e.index_digest = i.digest WHERE e.subject IS NULL ORDER BY i.digest, e.position",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
        ))
    })?;
    let mut out: Vec<(String, i64, Vec<(String, String)>)> = Vec::new();
    for row in rows {
        let (d, created, m, p) = row?;
        match out.last_mut() {
            Some(last) if last.0 == d => last.2.push((m, p)),
            _ => out.push((d, created, vec![(m, p)])),
        }
    }
    Ok(out)
}

/// One line of `kiln images`.
fn summary(
    references: Vec<String>,
    manifest: &str,
    config: &str,
    created: Option<String>,
    size: i64,
    platforms: Vec<String>,
) -> Result<ImageSummary> {
    Ok(ImageSummary {
        references,
        manifest_digest: manifest.parse()?,
        config_digest: config.parse()?,
        created,
        size: size as u64,
        platforms,
    })
}
