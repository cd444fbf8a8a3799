//! Image indexes: one name for several manifests, as BuildKit writes them
//! for multi-platform images and for attestations. An entry is either an
//! image (a manifest recorded in `images`, with its platform) or an
//! attestation manifest about one of those images (platform
//! `unknown/unknown`, annotations `vnd.docker.reference.type:
//! attestation-manifest` and `vnd.docker.reference.digest`), whose layers
//! are in-toto statements.
//!
//! A tag may name an index; [`Store::resolve_image`] then picks the image
//! for the host's platform. The images of an index are not listed on their
//! own, not pruned as dangling while the index is there, and go with it on
//! `rmi`.

use std::collections::BTreeMap;

use rusqlite::{params, OptionalExtension};
use serde_json::json;

use crate::digest::Digest;
use crate::error::{Result, StoreError};
use crate::image::{self, canonical_json, Descriptor, Index, Manifest};
use crate::store::{now_ms, ImageRecord, Store};

/// Media type of an in-toto statement layer.
pub const MEDIA_TYPE_IN_TOTO: &str = "application/vnd.in-toto+json";
/// The annotation naming a statement's predicate type.
pub const ANNOTATION_PREDICATE_TYPE: &str = "in-toto.io/predicate-type";
const REF_TYPE: &str = "vnd.docker.reference.type";
const REF_DIGEST: &str = "vnd.docker.reference.digest";
const ATTESTATION_MANIFEST: &str = "attestation-manifest";

/// One in-toto statement to attach: its predicate type and its JSON bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub predicate_type: String,
    pub bytes: Vec<u8>,
}

/// What an index entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// An image for `platform` (`linux/amd64`, `linux/arm64/v8`).
    Image { platform: String },
    /// Statements about the image whose manifest is `subject`.
    Attestation { subject: Digest },
}

/// One manifest of an index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    pub manifest: Digest,
    pub size: u64,
    pub kind: EntryKind,
}

/// An index in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexRecord {
    pub digest: Digest,
    pub entries: Vec<IndexEntry>,
}

impl IndexRecord {
    /// The image entries' manifests with their platforms.
    pub fn images(&self) -> impl Iterator<Item = (&Digest, &str)> {
        self.entries.iter().filter_map(|e| match &e.kind {
            EntryKind::Image { platform } => Some((&e.manifest, platform.as_str())),
            EntryKind::Attestation { .. } => None,
        })
    }

    /// The image for `platform`, else the only image, else none.
    pub fn image_for(&self, platform: &str) -> Option<&Digest> {
        let images: Vec<_> = self.images().collect();
        images
            .iter()
            .find(|(_, p)| *p == platform || platform_matches(p, platform))
            .or_else(|| (images.len() == 1).then(|| &images[0]))
            .map(|(m, _)| *m)
    }
}

/// `linux/arm64` matches `linux/arm64/v8` and the other way round.
fn platform_matches(a: &str, b: &str) -> bool {
    let two = |s: &str| s.split('/').take(2).collect::<Vec<_>>().join("/");
    two(a) == two(b)
}

/// `os/arch[/variant]` of an image's config.
pub fn platform_of(cfg: &image::ImageConfig) -> String {
    match &cfg.variant {
        Some(v) => format!("{}/{}/{}", cfg.os, cfg.architecture, v),
        None => format!("{}/{}", cfg.os, cfg.architecture),
    }
}

fn platform_json(p: &str) -> serde_json::Value {
    let mut parts = p.splitn(3, '/');
    let os = parts.next().unwrap_or("");
    let arch = parts.next().unwrap_or("");
    let mut v = json!({"os": os, "architecture": arch});
    if let Some(var) = parts.next() {
        v["variant"] = json!(var);
    }
    v
}

impl Store {
    /// Writes an attestation manifest for the image `subject`: each
    /// statement a layer, the config BuildKit writes for one.
    pub fn write_attestation(
        &self,
        subject: &Digest,
        statements: &[Statement],
    ) -> Result<IndexEntry> {
        let mut layers = Vec::new();
        for s in statements {
            let d = self.write_blob_bytes_typed(&s.bytes, MEDIA_TYPE_IN_TOTO)?;
            layers.push(Descriptor {
                media_type: MEDIA_TYPE_IN_TOTO.into(),
                digest: d,
                size: s.bytes.len() as u64,
                annotations: [(
                    ANNOTATION_PREDICATE_TYPE.to_string(),
                    s.predicate_type.clone(),
                )]
                .into(),
                platform: None,
            });
        }
        let diff_ids: Vec<String> = layers.iter().map(|l| l.digest.to_string()).collect();
        let config = canonical_json(&json!({
            "architecture": "unknown",
            "os": "unknown",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))?;
        let config_digest = self.write_blob_bytes_typed(&config, image::MEDIA_TYPE_CONFIG)?;
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(image::MEDIA_TYPE_MANIFEST.into()),
            config: Descriptor {
                media_type: image::MEDIA_TYPE_CONFIG.into(),
                digest: config_digest,
                size: config.len() as u64,
                annotations: BTreeMap::new(),
                platform: None,
            },
            layers,
            annotations: BTreeMap::new(),
        };
        let bytes = canonical_json(&manifest)?;
        let digest = self.write_blob_bytes_typed(&bytes, image::MEDIA_TYPE_MANIFEST)?;
        Ok(IndexEntry {
            manifest: digest,
            size: bytes.len() as u64,
            kind: EntryKind::Attestation {
                subject: subject.clone(),
            },
        })
    }

    /// Writes and records an OCI index of `images` (each recorded in the
    /// store) and `attestations` (from [`Store::write_attestation`]).
    pub fn write_index(
        &self,
        images: &[&ImageRecord],
        attestations: &[IndexEntry],
    ) -> Result<IndexRecord> {
        let mut entries = Vec::new();
        for img in images {
            let size = self.blob_size(&img.manifest_digest)?;
            entries.push(IndexEntry {
                manifest: img.manifest_digest.clone(),
                size,
                kind: EntryKind::Image {
                    platform: platform_of(&img.config),
                },
            });
        }
        for a in attestations {
            let EntryKind::Attestation { subject } = &a.kind else {
                return Err(StoreError::Invalid(
                    "an image given as an attestation".into(),
                ));
            };
            if !entries.iter().any(|e| &e.manifest == subject) {
                return Err(StoreError::Invalid(format!(
                    "attestation for {subject}, which is not an image of this index"
                )));
            }
            entries.push(a.clone());
        }
        let index = Index {
            schema_version: 2,
            media_type: Some(image::MEDIA_TYPE_INDEX.into()),
            manifests: entries.iter().map(descriptor).collect(),
            annotations: BTreeMap::new(),
        };
        let bytes = canonical_json(&index)?;
        let digest = self.write_blob_bytes_typed(&bytes, image::MEDIA_TYPE_INDEX)?;
        self.record_index(&digest, &entries)?;
        Ok(IndexRecord { digest, entries })
    }

    fn blob_size(&self, d: &Digest) -> Result<u64> {
        Ok(self.read_blob(d)?.len() as u64)
    }

    fn record_index(&self, digest: &Digest, entries: &[IndexEntry]) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.prepare_cached("INSERT OR IGNORE INTO indexes (digest, created_ms) VALUES (?1, ?2)")?
            .execute(params![digest.as_str(), now_ms()])?;
        for (i, e) in entries.iter().enumerate() {
            let (platform, subject) = match &e.kind {
                EntryKind::Image { platform } => (platform.as_str(), None),
                EntryKind::Attestation { subject } => ("unknown/unknown", Some(subject.as_str())),
            };
            tx.prepare_cached(
                "INSERT OR REPLACE INTO index_entries (index_digest, position, manifest_digest, size, platform, subject) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![digest.as_str(), i as i64, e.manifest.as_str(), e.size as i64, platform, subject])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The index with this digest, if the store has it.
    pub fn index(&self, digest: &Digest) -> Result<Option<IndexRecord>> {
        let conn = self.conn();
        let known: Option<String> = conn
            .prepare_cached("SELECT digest FROM indexes WHERE digest = ?1")?
            .query_row([digest.as_str()], |r| r.get(0))
            .optional()?;
        if known.is_none() {
            return Ok(None);
        }
        let mut stmt = conn.prepare_cached(
            "SELECT manifest_digest, size, platform, subject FROM index_entries WHERE index_digest = ?1 ORDER BY position",
        )?;
        let rows = stmt.query_map([digest.as_str()], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
            ))
        })?;
        let mut entries = Vec::new();
        for row in rows {
            let (m, size, platform, subject) = row?;
            let kind = match subject {
                Some(s) => EntryKind::Attestation {
                    subject: s.parse()?,
                },
                None => EntryKind::Image { platform },
            };
            entries.push(IndexEntry {
                manifest: m.parse()?,
                size: size as u64,
                kind,
            });
        }
        Ok(Some(IndexRecord {
            digest: digest.clone(),
            entries,
        }))
    }

    /// The index a reference (tag or digest) names, if it names one.
    pub fn resolve_index(&self, reference: &str) -> Result<Option<IndexRecord>> {
        match self.resolve_manifest(reference)? {
            Some(d) => self.index(&d),
            None => Ok(None),
        }
    }

    /// The newest statement of `predicate_type` that any index in the
    /// store attaches to the image with this manifest (a cached rebuild
    /// reuses its SBOM from here rather than reading the layers again).
    pub fn latest_attestation_about(
        &self,
        manifest: &Digest,
        predicate_type: &str,
    ) -> Result<Option<Statement>> {
        let atts: Vec<String> = {
            let conn = self.conn();
            let mut stmt = conn.prepare_cached(
                "SELECT e.manifest_digest FROM index_entries e JOIN indexes i ON i.digest = e.index_digest
                 WHERE e.subject = ?1 ORDER BY i.created_ms DESC",
            )?;
            let rows = stmt.query_map([manifest.as_str()], |r| r.get(0))?;
            rows.collect::<std::result::Result<_, _>>()?
        };
        for a in atts {
            let found = self
                .statements_of(&a.parse()?)?
                .into_iter()
                .find(|s| s.predicate_type == predicate_type);
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }

    fn statements_of(&self, attestation: &Digest) -> Result<Vec<Statement>> {
        let m: Manifest = serde_json::from_slice(&self.read_blob(attestation)?)?;
        m.layers
            .into_iter()
            .map(|l| {
                Ok(Statement {
                    predicate_type: l
                        .annotations
                        .get(ANNOTATION_PREDICATE_TYPE)
                        .cloned()
                        .unwrap_or_default(),
                    bytes: self.read_blob(&l.digest)?,
                })
            })
            .collect()
    }

    /// The statements attached to the image `reference` names, with their
    /// predicate types; empty when it has none.
    pub fn attestations(&self, reference: &str) -> Result<Vec<Statement>> {
        let Some(idx) = self.resolve_index(reference)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for e in &idx.entries {
            if matches!(e.kind, EntryKind::Attestation { .. }) {
                out.extend(self.statements_of(&e.manifest)?);
            }
        }
        Ok(out)
    }
}

fn descriptor(e: &IndexEntry) -> Descriptor {
    let (platform, annotations) = match &e.kind {
        EntryKind::Image { platform } => (platform_json(platform), BTreeMap::new()),
        EntryKind::Attestation { subject } => (
            json!({"architecture": "unknown", "os": "unknown"}),
            [
                (REF_DIGEST.to_string(), subject.to_string()),
                (REF_TYPE.to_string(), ATTESTATION_MANIFEST.to_string()),
            ]
            .into(),
        ),
    };
    Descriptor {
        media_type: image::MEDIA_TYPE_MANIFEST.into(),
        digest: e.manifest.clone(),
        size: e.size,
        annotations,
        platform: Some(platform),
    }
}

/// The blobs an attestation manifest holds (itself, its config, its
/// statements), for the collector's mark phase; just itself when its bytes
/// are not a manifest.
pub(crate) fn attestation_blobs(bytes: &[u8], m: &Digest) -> Vec<String> {
    let mut out = vec![m.to_string()];
    if let Ok(manifest) = serde_json::from_slice::<Manifest>(bytes) {
        out.push(manifest.config.digest.to_string());
        out.extend(manifest.layers.iter().map(|l| l.digest.to_string()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::sha256_digest;

    #[test]
    fn platforms_match_with_or_without_variant() {
        let idx = IndexRecord {
            digest: sha256_digest(b"x"),
            entries: vec![
                IndexEntry {
                    manifest: sha256_digest(b"a"),
                    size: 1,
                    kind: EntryKind::Image {
                        platform: "linux/amd64".into(),
                    },
                },
                IndexEntry {
                    manifest: sha256_digest(b"b"),
                    size: 1,
                    kind: EntryKind::Image {
                        platform: "linux/arm64/v8".into(),
                    },
                },
                IndexEntry {
                    manifest: sha256_digest(b"c"),
                    size: 1,
                    kind: EntryKind::Attestation {
                        subject: sha256_digest(b"a"),
                    },
                },
            ],
        };
        assert_eq!(idx.image_for("linux/arm64"), Some(&sha256_digest(b"b")));
        assert_eq!(idx.image_for("linux/amd64"), Some(&sha256_digest(b"a")));
        assert_eq!(idx.image_for("linux/s390x"), None);
        assert_eq!(idx.images().count(), 2);
        assert_eq!(platform_json("linux/arm64/v8")["variant"], "v8");
    }
}
