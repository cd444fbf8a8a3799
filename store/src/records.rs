//! Build records: what the last build of an image reported (which steps
//! missed the cache and why), kept as the builder's JSON, one per image, for
//! `kiln build --explain` and `kiln cache why` to read later.

use std::fs;
use std::io::{self, Write};
use std::path::PathBuf;

use crate::digest::Digest;
use crate::error::{Result, StoreError};
use crate::store::Store;

/// The store's build records: `store.cache().build_records()`.
pub struct BuildRecords<'a> {
    pub(crate) store: &'a Store,
}

impl BuildRecords<'_> {
    fn dir(&self) -> PathBuf {
        self.store.root().join("builds")
    }

    fn path(&self, image: &Digest) -> PathBuf {
        self.dir().join(format!("{}.json", image.hex()))
    }

    /// Records `json` as the last build of `image` (its config digest),
    /// atomically: a reader sees the old record or the new one.
    pub fn put(&self, image: &Digest, json: &[u8]) -> Result<()> {
        let dir = self.dir();
        fs::create_dir_all(&dir).map_err(|e| StoreError::io(&dir, e))?;
        let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(|e| StoreError::io(&dir, e))?;
        tmp.write_all(json)
            .map_err(|e| StoreError::io(tmp.path(), e))?;
        let dest = self.path(image);
        tmp.persist(&dest)
            .map_err(|e| StoreError::io(&dest, e.error))?;
        Ok(())
    }

    /// The last build record of `image`, if one was kept.
    pub fn get(&self, image: &Digest) -> Result<Option<Vec<u8>>> {
        let p = self.path(image);
        match fs::read(&p) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io(&p, e)),
        }
    }
}
