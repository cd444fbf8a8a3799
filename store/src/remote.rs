//! Blobs known remotely, not local: what a lazily imported registry cache
//! or a base image resolved without its layers names. The store keeps their
//! size and type (`remote_blobs`) and which registry repositories hold them
//! (`registry_blobs`); their bytes come when something reads them
//! (`open_blob`, `read_blob`, `ensure_blob`), through the fetcher the
//! command installed (the registry client), verified by digest like any
//! other blob written to the store.

use std::sync::Arc;

use rusqlite::{params, OptionalExtension};

use crate::digest::Digest;
use crate::error::{Result, StoreError};
use crate::store::{now_ms, LayerInfo, Store};

/// A blob known remotely, not local.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteBlob {
    pub digest: Digest,
    pub size: u64,
    pub media_type: Option<String>,
    /// (registry, repository) pairs known to hold it, most recent first.
    pub sources: Vec<(String, String)>,
}

/// Brings a remote blob into the store (digest and size verified), or says
/// why it could not (naming the registry and the digest).
pub type RemoteFetcher = Arc<dyn Fn(&Store, &RemoteBlob) -> Result<()> + Send + Sync>;

impl Store {
    /// Installs what fetches remote blobs on demand (the command's registry
    /// client). Without one, reading a remote blob fails and names the
    /// registry that has it.
    pub fn set_remote_fetcher(&self, f: RemoteFetcher) {
        *self.shared.fetcher.write().expect("fetcher") = Some(f);
    }

    /// Records that `digest` (`size` bytes) is in `registry/repo`, and, if
    /// it is not stored here, that it is known remotely, not local.
    pub fn record_remote_blob(
        &self,
        digest: &Digest,
        size: u64,
        media_type: Option<&str>,
        registry: &str,
        repo: &str,
    ) -> Result<()> {
        self.registry_blob_known(digest, registry, repo)?;
        if self.has_blob(digest) {
            return Ok(());
        }
        self.conn()
            .prepare_cached(
                "INSERT INTO remote_blobs (digest, size, media_type, created_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(digest) DO UPDATE SET created_ms = excluded.created_ms",
            )?
            .execute(params![digest.as_str(), size as i64, media_type, now_ms()])?;
        Ok(())
    }

    /// Records layer `l` as known remotely, in `registry/repo` (unless its
    /// blob is stored here), with its diffID: a push in that encoding then
    /// finds it without fetching or converting anything.
    pub fn record_remote_layer(&self, l: &LayerInfo, registry: &str, repo: &str) -> Result<()> {
        self.record_remote_blob(&l.digest, l.size, Some(&l.media_type), registry, repo)?;
        self.record_layer(l, None)
    }

    /// Every encoding of the layer `diff_id` (its zstd blob, the gzip one
    /// a push made, ...) whose bytes can be had, here or remotely.
    pub fn layer_encodings(&self, diff_id: &Digest) -> Result<Vec<LayerInfo>> {
        let rows: Vec<(String, i64, String)> = self
            .conn()
            .prepare_cached(
                "SELECT digest, size, media_type FROM layers WHERE diff_id = ?1 ORDER BY digest",
            )?
            .query_map([diff_id.as_str()], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?
            .collect::<std::result::Result<_, _>>()?;
        let mut out = Vec::new();
        for (d, size, media_type) in rows {
            let digest: Digest = d.parse()?;
            if self.blob_available(&digest) {
                out.push(LayerInfo {
                    digest,
                    diff_id: diff_id.clone(),
                    size: size as u64,
                    media_type,
                });
            }
        }
        Ok(out)
    }

    /// The remote record of `digest` when it is not stored here.
    pub fn remote_blob(&self, digest: &Digest) -> Result<Option<RemoteBlob>> {
        if self.has_blob(digest) {
            return Ok(None);
        }
        let conn = self.conn();
        let row: Option<(i64, Option<String>)> = conn
            .prepare_cached("SELECT size, media_type FROM remote_blobs WHERE digest = ?1")?
            .query_row([digest.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let Some((size, media_type)) = row else {
            return Ok(None);
        };
        let mut stmt = conn.prepare_cached(
            "SELECT registry, repo FROM registry_blobs WHERE digest = ?1 ORDER BY used_ms DESC",
        )?;
        let sources = stmt
            .query_map([digest.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<std::result::Result<_, _>>()?;
        Ok(Some(RemoteBlob {
            digest: digest.clone(),
            size: size as u64,
            media_type,
            sources,
        }))
    }

    /// Whether the bytes of `digest` can be had: stored here, or known
    /// remotely with a registry to fetch them from.
    pub fn blob_available(&self, digest: &Digest) -> bool {
        self.has_blob(digest)
            || matches!(self.remote_blob(digest), Ok(Some(r)) if !r.sources.is_empty())
    }

    /// The size of a blob stored here or known remotely.
    pub fn stored_or_remote_size(&self, digest: &Digest) -> Result<u64> {
        match std::fs::metadata(self.blob_path(digest)) {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self
                .remote_blob(digest)?
                .map(|r| r.size)
                .ok_or_else(|| StoreError::BlobNotFound(digest.clone())),
            Err(e) => Err(StoreError::io(self.blob_path(digest), e)),
        }
    }

    /// Makes sure the bytes of `digest` are stored here: fetches a remote
    /// blob; a blob neither here nor known remotely is `BlobNotFound`.
    pub fn ensure_blob(&self, digest: &Digest) -> Result<()> {
        if self.fetch_if_remote(digest)? || self.has_blob(digest) {
            return Ok(());
        }
        Err(StoreError::BlobNotFound(digest.clone()))
    }

    /// Fetches `digest` if it is known remotely, not local. `Ok(false)`: it
    /// is not (stored already, or unknown).
    pub(crate) fn fetch_if_remote(&self, digest: &Digest) -> Result<bool> {
        let Some(remote) = self.remote_blob(digest)? else {
            return Ok(false);
        };
        if remote.sources.is_empty() {
            return Err(StoreError::RemoteOnly {
                digest: digest.clone(),
                where_: "it was known remotely, but no registry is recorded for it".into(),
            });
        }
        let fetcher = self.shared.fetcher.read().expect("fetcher").clone();
        let Some(fetch) = fetcher else {
            return Err(StoreError::RemoteOnly {
                digest: digest.clone(),
                where_: format!(
                    "it is in {} (this command does not fetch from registries)",
                    sources_text(&remote.sources)
                ),
            });
        };
        fetch(self, &remote)?;
        if !self.has_blob(digest) {
            return Err(StoreError::RemoteFetch {
                digest: digest.clone(),
                registry: sources_text(&remote.sources),
                message: "the fetch did not store it".into(),
            });
        }
        Ok(true)
    }

    /// Remote blobs: (count, bytes) of those not stored here.
    pub(crate) fn remote_usage(&self) -> Result<(u64, u64)> {
        let rows: Vec<(String, i64)> = self
            .conn()
            .prepare_cached("SELECT digest, size FROM remote_blobs")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<std::result::Result<_, _>>()?;
        let mut n = 0;
        let mut bytes = 0;
        for (d, size) in rows {
            let d: Digest = d.parse()?;
            if !self.has_blob(&d) {
                n += 1;
                bytes += size as u64;
            }
        }
        Ok((n, bytes))
    }
}

/// `reg/repo` names, for messages.
pub fn sources_text(sources: &[(String, String)]) -> String {
    let names: Vec<String> = sources.iter().map(|(r, p)| format!("{r}/{p}")).collect();
    names.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remote_blob_is_available_fetched_on_read_and_forgotten_once_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let bytes = b"layer bytes from far away".to_vec();
        let d = crate::sha256_digest(&bytes);
        assert!(!store.blob_available(&d));
        store
            .record_remote_blob(
                &d,
                bytes.len() as u64,
                None,
                "reg.example:5000",
                "app/cache",
            )
            .unwrap();
        assert!(store.blob_available(&d) && !store.has_blob(&d));
        assert_eq!(store.stored_or_remote_size(&d).unwrap(), bytes.len() as u64);
        // No fetcher: the error names where the blob is.
        let e = store.read_blob(&d).unwrap_err().to_string();
        assert!(e.contains("reg.example:5000/app/cache"), "{e}");
        let served = bytes.clone();
        store.set_remote_fetcher(Arc::new(move |s: &Store, r: &RemoteBlob| {
            assert_eq!(r.sources[0].0, "reg.example:5000");
            s.write_blob(&mut &served[..], Some(&r.digest), Some(r.size))
                .map(|_| ())
        }));
        assert_eq!(store.read_blob(&d).unwrap(), bytes);
        assert!(store.has_blob(&d));
        assert_eq!(store.remote_blob(&d).unwrap(), None);
        assert_eq!(store.remote_usage().unwrap(), (0, 0));
    }

    #[test]
    fn fsck_and_prune_know_remote_layers() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let l = LayerInfo {
            digest: crate::sha256_digest(b"remote layer"),
            diff_id: crate::sha256_digest(b"its tar"),
            size: 12,
            media_type: crate::layer::MEDIA_TYPE_TAR_ZSTD.into(),
        };
        store
            .record_remote_layer(&l, "reg.example:5000", "app/cache")
            .unwrap();
        let img = store
            .write_image(&crate::ImageConfig::default(), std::slice::from_ref(&l))
            .unwrap();
        store.tag("app:1", &img.manifest_digest).unwrap();
        let rep = store.fsck(false).unwrap();
        assert!(rep.is_clean(), "{rep}");
        // Kept while an image names it.
        store.prune(&crate::PruneOptions::default()).unwrap();
        assert!(store.remote_blob(&l.digest).unwrap().is_some());
        assert_eq!(store.df().unwrap().remote_blobs, 1);
        // No registry known for it: a problem.
        store
            .conn()
            .execute("DELETE FROM registry_blobs", [])
            .unwrap();
        let rep = store.fsck(false).unwrap();
        assert!(
            rep.problems
                .iter()
                .any(|p| p.contains("no registry is recorded")),
            "{rep}"
        );
        let rep = store.fsck(true).unwrap();
        assert!(!rep.repaired.is_empty(), "{rep}");
        assert!(store.fsck(false).unwrap().is_clean());
    }

    #[test]
    fn a_failing_fetch_names_registry_and_digest_and_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let d = crate::sha256_digest(b"never served");
        store
            .record_remote_blob(&d, 12, None, "reg.example:5000", "app/cache")
            .unwrap();
        store.set_remote_fetcher(Arc::new(|_: &Store, r: &RemoteBlob| {
            Err(StoreError::RemoteFetch {
                digest: r.digest.clone(),
                registry: sources_text(&r.sources),
                message: "connection refused".into(),
            })
        }));
        let e = store.ensure_blob(&d).unwrap_err().to_string();
        assert!(
            e.contains("reg.example:5000/app/cache") && e.contains(d.as_str()),
            "{e}"
        );
        assert!(!store.has_blob(&d) && store.blob_available(&d));
        assert!(store.fsck(false).unwrap().is_clean());
    }
}
