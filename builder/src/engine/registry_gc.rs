//! Keeping a registry build cache from filling the registry: `kiln cache
//! prune --registry REPO --keep N` keeps the N kiln caches of a repository
//! that were built most recently (by their newest record) and deletes the
//! other cache tags' manifests, and the blobs that only they named. What a
//! kept cache, or any image in the repository, names is never deleted.
//!
//! Blobs are unlinked from the repository only when it holds kiln caches
//! alone: in a repository that also holds images, an untagged image (one
//! pinned by digest) may share a layer that no tag names any more, and the
//! registry API cannot list untagged manifests to rule that out. There the
//! cache manifests and their records documents are deleted and the layers
//! left to the registry's garbage collector.
//!
//! A build that imported a removed cache lazily a moment before may then
//! miss one of its layers (it fails naming the registry and the blob, and
//! the next build imports what is there): pruning is an explicit command,
//! unlike the replacement of an exported ref, which leaves blobs linked.
//!
//! Deleting needs a registry that allows it; the CNCF distribution registry
//! answers 405 unless `storage.delete.enabled` is true, and frees the bytes
//! of unlinked blobs only when its garbage collector runs.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{anyhow, bail, Context as _, Result};
use kiln_store::registry::{Client, RegistryError};
use kiln_store::{Digest, Reference, Store};
use serde_json::Value;

use super::portable::ARTIFACT_TYPE;

/// Largest records document read to date a cache.
const MAX_DOC: u64 = 256 << 20;

/// One tag of the repository, as read.
#[derive(Debug, Clone)]
pub struct Tagged {
    pub tag: String,
    pub digest: Digest,
    /// A kiln cache: the newest `created` of its records (Unix seconds).
    pub cache_built: Option<i64>,
    /// Every blob the manifest names (through an index: its manifests').
    pub blobs: BTreeSet<Digest>,
    /// Blob sizes, where the manifest says.
    pub sizes: BTreeMap<Digest, u64>,
    /// The manifest's config (for a cache: its records document).
    pub config: Option<Digest>,
}

/// What a prune did (or, with `dry_run`, would do).
#[derive(Debug, Default)]
pub struct Pruned {
    pub kept: Vec<String>,
    /// Cache tags whose manifests were deleted.
    pub removed: Vec<String>,
    /// Cache tags left because a kept tag names the same manifest.
    pub shared: Vec<String>,
    pub blobs: usize,
    pub bytes: u64,
    /// Why the layers of removed caches were left, when they were.
    pub layers_left: Option<String>,
}

fn parse_doc(bytes: &[u8], what: &str) -> Result<Value> {
    serde_json::from_slice(bytes).with_context(|| format!("{what} is not JSON"))
}

fn manifest_blobs(m: &Value, blobs: &mut BTreeSet<Digest>, sizes: &mut BTreeMap<Digest, u64>) {
    let descs = m.get("config").into_iter().chain(
        m.get("layers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten(),
    );
    for d in descs {
        if let Some(digest) = d
            .get("digest")
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<Digest>().ok())
        {
            if let Some(n) = d.get("size").and_then(Value::as_u64) {
                sizes.insert(digest.clone(), n);
            }
            blobs.insert(digest);
        }
    }
}

/// The repository `repo` names, refusing a tag or digest: pruning is
/// about every cache tag of a repository.
pub fn repository(repo: &str) -> Result<Reference> {
    let last = repo.rsplit('/').next().unwrap_or(repo);
    if last.contains(':') || repo.contains('@') {
        bail!("--registry {repo}: give the repository (REGISTRY/REPO), not a tag: --keep N keeps the N newest kiln cache tags of it");
    }
    if !repo.contains('/') {
        bail!("--registry {repo}: expected REGISTRY/REPO (e.g. localhost:5000/app-cache)");
    }
    Ok(kiln_store::reference::parse(repo)?)
}

fn tag_ref(repo: &Reference, tag: &str) -> Result<Reference> {
    Ok(kiln_store::reference::parse(&format!(
        "{}/{}:{tag}",
        repo.domain(),
        repo.path()
    ))?)
}

fn digest_ref(repo: &Reference, d: &Digest) -> Result<Reference> {
    Ok(kiln_store::reference::parse(&format!(
        "{}/{}@{d}",
        repo.domain(),
        repo.path()
    ))?)
}

/// Reads one tag: its manifest, what it names, and for a kiln cache when
/// its newest record was built.
fn read_tag(store: &Store, client: &Client, repo: &Reference, tag: &str) -> Result<Tagged> {
    read_manifest(store, client, repo, &tag_ref(repo, tag)?, tag)
}

/// [`read_tag`] of any reference (`tag`: what it is called).
fn read_manifest(
    store: &Store,
    client: &Client,
    repo: &Reference,
    r: &Reference,
    tag: &str,
) -> Result<Tagged> {
    let (bytes, _, digest) = client.get_manifest(r, &[])?;
    let m = parse_doc(&bytes, &format!("the manifest of {tag}"))?;
    let (mut blobs, mut sizes) = (BTreeSet::new(), BTreeMap::new());
    let mut cache_built = None;
    let config = m
        .get("config")
        .and_then(|c| c.get("digest"))
        .and_then(Value::as_str)
        .and_then(|s| s.parse::<Digest>().ok());
    if let Some(list) = m.get("manifests").and_then(Value::as_array) {
        for e in list {
            let Some(d) = e
                .get("digest")
                .and_then(Value::as_str)
                .and_then(|s| s.parse::<Digest>().ok())
            else {
                continue;
            };
            let (b, _, _) = client.get_manifest(&digest_ref(repo, &d)?, &[])?;
            manifest_blobs(&parse_doc(&b, "a manifest")?, &mut blobs, &mut sizes);
        }
    } else {
        manifest_blobs(&m, &mut blobs, &mut sizes);
        if m.get("artifactType").and_then(Value::as_str) == Some(ARTIFACT_TYPE) {
            let cd = config
                .clone()
                .ok_or_else(|| anyhow!("the cache manifest of {tag} has no config"))?;
            let size = sizes.get(&cd).copied().unwrap_or(0);
            client.fetch_blob(store, r, &cd, size, MAX_DOC)?;
            let doc = parse_doc(&store.read_blob(&cd)?, "a records document")?;
            let newest = doc
                .get("records")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|r| r.get("created").and_then(Value::as_i64))
                .max()
                .unwrap_or(0);
            cache_built = Some(newest);
        }
    }
    Ok(Tagged {
        tag: tag.to_string(),
        digest,
        cache_built,
        blobs,
        sizes,
        config,
    })
}

/// Every tag of `repo`, read.
pub fn inventory(store: &Store, client: &Client, repo: &Reference) -> Result<Vec<Tagged>> {
    let mut out = Vec::new();
    for tag in client.list_tags(repo)? {
        match read_tag(store, client, repo, &tag) {
            Ok(t) => out.push(t),
            // A tag deleted meanwhile (another prune) is simply gone.
            Err(e) if is(&e, |e| matches!(e, RegistryError::ManifestUnknown { .. })) => {}
            Err(e) => return Err(e.context(format!("reading tag {tag}"))),
        }
    }
    Ok(out)
}

/// Deletes what the removed manifests (`gone`) named and no remaining tag
/// names; layers only when the repository holds kiln caches alone.
fn delete_blobs(
    client: &Client,
    repo: &Reference,
    gone: &[&Tagged],
    remaining: &[&Tagged],
    dry_run: bool,
    out: &mut Pruned,
) -> Result<()> {
    let named: BTreeSet<&Digest> = remaining.iter().flat_map(|t| &t.blobs).collect();
    let images = remaining.iter().any(|t| t.cache_built.is_none());
    let mut doomed: BTreeMap<&Digest, u64> = BTreeMap::new();
    for t in gone {
        for b in &t.blobs {
            if named.contains(b) {
                continue;
            }
            // In a repository with images, only the records documents
            // (the manifests' configs), which no image can name.
            if images && !is_config(t, b) {
                continue;
            }
            doomed.insert(b, t.sizes.get(b).copied().unwrap_or(0));
        }
    }
    if images
        && gone.iter().any(|t| {
            t.blobs
                .iter()
                .any(|b| !named.contains(b) && !is_config(t, b))
        })
    {
        out.layers_left = Some(format!(
            "{} also holds images, which may share layers with what no tag names any more: the removed caches' layers were left to the registry's garbage collector (keep caches in a repository of their own for kiln to delete them)",
            repo.path()
        ));
    }
    for (d, size) in doomed {
        if !dry_run {
            client.delete_blob(repo, d)?;
        }
        out.blobs += 1;
        out.bytes += size;
    }
    Ok(())
}

/// Whether `b` is the records document (the config) of cache `t`.
fn is_config(t: &Tagged, b: &Digest) -> bool {
    t.cache_built.is_some() && t.config.as_ref() == Some(b)
}

/// `kiln cache prune --registry REPO --keep N`.
pub fn prune(
    store: &Store,
    client: &Client,
    repo: &Reference,
    keep: usize,
    dry_run: bool,
) -> Result<Pruned> {
    let tags = inventory(store, client, repo)?;
    let mut caches: Vec<&Tagged> = tags.iter().filter(|t| t.cache_built.is_some()).collect();
    caches.sort_by(|a, b| b.cache_built.cmp(&a.cache_built).then(a.tag.cmp(&b.tag)));
    let (kept, old) = caches.split_at(keep.min(caches.len()));
    let mut out = Pruned {
        kept: kept.iter().map(|t| t.tag.clone()).collect(),
        ..Default::default()
    };
    // A tag is deleted with its manifest: one that a kept tag (cache or
    // image) also names cannot go without it.
    let stays = |t: &Tagged| {
        tags.iter().any(|o| {
            o.digest == t.digest && (kept.iter().any(|k| k.tag == o.tag) || o.cache_built.is_none())
        })
    };
    let mut gone: Vec<&Tagged> = Vec::new();
    for t in old {
        if stays(t) {
            out.shared.push(t.tag.clone());
        } else {
            gone.push(t);
        }
    }
    let remaining: Vec<&Tagged> = tags
        .iter()
        .filter(|t| !gone.iter().any(|g| g.digest == t.digest))
        .collect();
    let mut deleted: BTreeSet<&Digest> = BTreeSet::new();
    for t in &gone {
        if !dry_run && deleted.insert(&t.digest) {
            client.delete_manifest(repo, &t.digest)?;
        }
        out.removed.push(t.tag.clone());
    }
    delete_blobs(client, repo, &gone, &remaining, dry_run, &mut out)?;
    Ok(out)
}

/// After an export moved `tag` of `repo` from the manifest `old` to another:
/// deletes the kiln cache manifest `old`, unless another tag still names
/// it, so that what it alone named is garbage for the registry's collector.
/// Its blobs stay linked: a build on another runner may have imported the
/// old cache a moment ago and still fetch a layer of it lazily. Says what it
/// did.
pub fn drop_replaced(client: &Client, repo: &Reference, tag: &str, old: &Digest) -> Result<String> {
    for t in client.list_tags(repo)? {
        if client.manifest_digest(&tag_ref(repo, &t)?)?.as_ref() == Some(old) {
            return Ok(format!(
                "the manifest {tag} named before ({}) stays: {t} names it too",
                old.short()
            ));
        }
    }
    let bytes = match client.get_manifest(&digest_ref(repo, old)?, &[]) {
        Ok((b, _, _)) => b,
        Err(RegistryError::ManifestUnknown { .. }) => return Ok(String::new()),
        Err(e) => return Err(e.into()),
    };
    let m = parse_doc(&bytes, "the replaced manifest")?;
    if m.get("artifactType").and_then(Value::as_str) != Some(ARTIFACT_TYPE) {
        return Ok(format!(
            "{tag} named an image before ({}): left as it is",
            old.short()
        ));
    }
    match client.delete_manifest(repo, old) {
        Ok(()) => Ok(format!(
            "the cache manifest {tag} named before ({}) was deleted; the registry's garbage collector frees the blobs only it named",
            old.short()
        )),
        Err(RegistryError::DeleteDisabled { .. }) => Ok(format!(
            "the registry keeps the cache manifest {tag} named before ({}) untagged (it does not allow deletes): its garbage collector with --delete-untagged frees it",
            old.short()
        )),
        Err(e) => Err(e.into()),
    }
}

fn is(e: &anyhow::Error, f: impl Fn(&RegistryError) -> bool) -> bool {
    e.downcast_ref::<RegistryError>().is_some_and(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repository_is_asked_for_not_a_tag() {
        let r = repository("localhost:5000/app/cache").unwrap();
        assert_eq!(r.path(), "app/cache");
        let e = format!(
            "{:#}",
            repository("localhost:5000/app/cache:main").unwrap_err()
        );
        assert!(e.contains("not a tag"), "{e}");
        assert!(repository("localhost:5000/app@sha256:0000").is_err());
        let e = format!("{:#}", repository("app").unwrap_err());
        assert!(e.contains("REGISTRY/REPO"), "{e}");
    }

    #[test]
    fn a_manifest_names_its_config_and_layers() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let m = serde_json::json!({
            "config": {"digest": d('a'), "size": 3},
            "layers": [{"digest": d('b'), "size": 5}, {"digest": d('c')}],
        });
        let (mut blobs, mut sizes) = (BTreeSet::new(), BTreeMap::new());
        manifest_blobs(&m, &mut blobs, &mut sizes);
        assert_eq!(blobs.len(), 3);
        assert_eq!(sizes.len(), 2, "a size only where the manifest says");
        assert_eq!(sizes[&d('b').parse::<Digest>().unwrap()], 5);
    }
}
