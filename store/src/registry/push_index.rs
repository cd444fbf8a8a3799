//! Pushing an image index: every image (by digest, converted to the push's
//! compression as a single push does), every attestation manifest, then
//! the index at the tag. When converting an image changes its manifest
//! digest, the attestations about it are rewritten to name the manifest
//! that was pushed (the statement's subject and the index annotation), so
//! what a registry holds is consistent: a statement's subject is a manifest
//! in that repository.

use std::collections::BTreeMap;
use std::io::{self, Read};

use serde_json::Value;

use super::push::{put_blob, put_manifest, BlobOutcome, PushOptions, PushReport};
use super::{Client, Event, RegistryError};
use crate::digest::{sha256_digest, Digest};
use crate::error::StoreError;
use crate::image::{self, canonical_json, Descriptor, Index, Manifest};
use crate::indexes::{EntryKind, IndexRecord};
use crate::reference::Reference;
use crate::store::Store;

pub(super) fn push_index(
    client: &Client,
    store: &Store,
    idx: &IndexRecord,
    target: &Reference,
    opts: &PushOptions,
    events: &(dyn Fn(Event) + Sync),
) -> Result<PushReport, RegistryError> {
    let _lease = store.lease()?;
    let by_digest = target.repository_only();
    let stored: Index =
        serde_json::from_slice(&store.read_blob(&idx.digest)?).map_err(StoreError::from)?;
    // Old manifest digest -> what was pushed for it.
    let mut pushed: BTreeMap<Digest, (Digest, u64)> = BTreeMap::new();
    let mut blobs = Vec::new();
    let mut uploaded = 0;
    for (m, _) in idx.images() {
        let img = store
            .image_by_manifest(m)?
            .ok_or_else(|| StoreError::ImageNotFound(m.to_string()))?;
        let r = super::push::push(client, store, &img, &by_digest, opts, events)?;
        uploaded += r.bytes_uploaded;
        blobs.extend(r.blobs);
        pushed.insert(m.clone(), (r.manifest_digest, r.manifest_size));
    }
    let mut manifests = Vec::new();
    for (d, e) in stored.manifests.iter().zip(&idx.entries) {
        let mut d = d.clone();
        match &e.kind {
            EntryKind::Image { .. } => {
                let (digest, size) = pushed[&e.manifest].clone();
                d.digest = digest;
                d.size = size;
            }
            EntryKind::Attestation { subject } => {
                let new_subject = &pushed
                    .get(subject)
                    .ok_or_else(|| {
                        StoreError::Invalid(format!(
                            "attestation about {subject}, not in the index"
                        ))
                    })?
                    .0;
                let (digest, size, up) =
                    push_attestation(client, store, &by_digest, &e.manifest, subject, new_subject)?;
                uploaded += up;
                d.digest = digest;
                d.size = size;
                d.annotations.insert(
                    "vnd.docker.reference.digest".into(),
                    new_subject.to_string(),
                );
            }
        }
        manifests.push(d);
    }
    let index = Index {
        manifests,
        ..stored
    };
    let bytes = canonical_json(&index).map_err(StoreError::from)?;
    let digest = put_manifest(client, target, image::MEDIA_TYPE_INDEX, &bytes)?;
    events(Event::Resolved {
        reference: &super::display_ref(target),
        digest: &digest,
    });
    Ok(PushReport {
        manifest_digest: digest,
        manifest_size: bytes.len() as u64,
        blobs,
        bytes_uploaded: uploaded,
    })
}

/// Pushes an attestation manifest whose statements are about `old`,
/// rewritten to be about `new` when the two differ. Returns the pushed
/// manifest's digest and size, and the bytes uploaded.
fn push_attestation(
    client: &Client,
    store: &Store,
    repo: &Reference,
    manifest: &Digest,
    old: &Digest,
    new: &Digest,
) -> Result<(Digest, u64, u64), RegistryError> {
    let mut m: Manifest =
        serde_json::from_slice(&store.read_blob(manifest)?).map_err(StoreError::from)?;
    let mut uploaded = 0;
    let mut layers: Vec<Descriptor> = Vec::new();
    for l in &m.layers {
        let bytes = rewrite_subject(&store.read_blob(&l.digest)?, old, new)?;
        let digest = sha256_digest(&bytes);
        uploaded += put_bytes(client, repo, &digest, &bytes)?;
        layers.push(Descriptor {
            digest,
            size: bytes.len() as u64,
            ..l.clone()
        });
    }
    let config = canonical_json(&serde_json::json!({
        "architecture": "unknown",
        "os": "unknown",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.digest.to_string()).collect::<Vec<_>>()},
    }))
    .map_err(StoreError::from)?;
    let config_digest = sha256_digest(&config);
    uploaded += put_bytes(client, repo, &config_digest, &config)?;
    m.config.digest = config_digest;
    m.config.size = config.len() as u64;
    m.layers = layers;
    let bytes = canonical_json(&m).map_err(StoreError::from)?;
    let digest = put_manifest(client, repo, image::MEDIA_TYPE_MANIFEST, &bytes)?;
    Ok((digest, bytes.len() as u64, uploaded))
}

fn put_bytes(
    client: &Client,
    repo: &Reference,
    digest: &Digest,
    bytes: &[u8],
) -> Result<u64, RegistryError> {
    let owned = bytes.to_vec();
    let open = move || -> io::Result<Box<dyn Read + Send>> {
        Ok(Box::new(io::Cursor::new(owned.clone())))
    };
    let outcome = put_blob(
        client,
        None,
        repo,
        digest,
        bytes.len() as u64,
        &open,
        &PushOptions::default(),
        &|_| {},
    )?;
    Ok(if outcome == BlobOutcome::Uploaded {
        bytes.len() as u64
    } else {
        0
    })
}

/// An in-toto statement with every subject digest `old` replaced by `new`;
/// the same bytes when it names `old` nowhere (or `old == new`).
fn rewrite_subject(bytes: &[u8], old: &Digest, new: &Digest) -> Result<Vec<u8>, RegistryError> {
    if old == new {
        return Ok(bytes.to_vec());
    }
    let mut v: Value = serde_json::from_slice(bytes).map_err(StoreError::from)?;
    let mut changed = false;
    if let Some(subjects) = v.get_mut("subject").and_then(Value::as_array_mut) {
        for s in subjects {
            if let Some(d) = s.pointer_mut("/digest/sha256") {
                if d.as_str() == Some(old.hex()) {
                    *d = Value::String(new.hex().to_string());
                    changed = true;
                }
            }
        }
    }
    if !changed {
        return Ok(bytes.to_vec());
    }
    Ok(serde_json::to_vec(&v).map_err(StoreError::from)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_rewritten_only_where_they_name_the_old_manifest() {
        let old = sha256_digest(b"old");
        let new = sha256_digest(b"new");
        let st = format!(
            r#"{{"_type":"x","subject":[{{"name":"a","digest":{{"sha256":"{}"}}}},{{"name":"b","digest":{{"sha256":"ff"}}}}],"predicate":{{}}}}"#,
            old.hex()
        );
        let out: Value =
            serde_json::from_slice(&rewrite_subject(st.as_bytes(), &old, &new).unwrap()).unwrap();
        assert_eq!(out["subject"][0]["digest"]["sha256"], new.hex());
        assert_eq!(out["subject"][1]["digest"]["sha256"], "ff");
        assert_eq!(
            rewrite_subject(st.as_bytes(), &old, &old).unwrap(),
            st.as_bytes()
        );
        let other = sha256_digest(b"other");
        assert_eq!(
            rewrite_subject(st.as_bytes(), &other, &new).unwrap(),
            st.as_bytes()
        );
    }
}
