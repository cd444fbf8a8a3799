//! The content store view: blobs by digest (`store.content()`).
//!
//! Blobs are written through an ingest file and renamed in whole, and
//! never change once there; a caller that needs a blob's bytes elsewhere
//! (an OCI layout for `--cache-to` or `--output type=oci`) asks for them
//! here instead of reading the store's directories.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::error::{Result, StoreError};
use crate::store::Store;

/// The store's blobs: `store.content()`.
pub struct Content<'a> {
    pub(crate) store: &'a Store,
}

/// Where an OCI image layout keeps the blob `d`: `<layout>/blobs/sha256/<hex>`
/// (the OCI layout's own shape, not the store's).
pub fn oci_layout_blob(layout: &Path, d: &Digest) -> PathBuf {
    oci_layout_blobs(layout).join(d.hex())
}

/// The blob directory of an OCI image layout.
pub fn oci_layout_blobs(layout: &Path) -> PathBuf {
    layout.join("blobs").join("sha256")
}

impl Content<'_> {
    /// Streams `r` in; see [`Store::write_blob`].
    pub fn write(
        &self,
        r: &mut dyn Read,
        expected: Option<&Digest>,
        expected_size: Option<u64>,
    ) -> Result<(Digest, u64)> {
        self.store.write_blob(r, expected, expected_size)
    }

    /// Stores `bytes`; see [`Store::write_blob_bytes`].
    pub fn write_bytes(&self, bytes: &[u8]) -> Result<Digest> {
        self.store.write_blob_bytes(bytes)
    }

    /// A blob's bytes, verified.
    pub fn read(&self, d: &Digest) -> Result<Vec<u8>> {
        self.store.read_blob(d)
    }

    /// A blob to stream.
    pub fn open(&self, d: &Digest) -> Result<File> {
        self.store.open_blob(d)
    }

    pub fn has(&self, d: &Digest) -> bool {
        self.store.has_blob(d)
    }

    /// Puts blob `d` at `dest` (a new file): a hard link when `dest` is on
    /// the store's filesystem (blobs are read-only and never rewritten, so
    /// sharing the inode is safe), else a copy.
    pub fn export_to(&self, d: &Digest, dest: &Path) -> Result<()> {
        let src = self.store.blob_path(d);
        if !src.is_file() {
            return Err(StoreError::BlobNotFound(d.clone()));
        }
        if fs::hard_link(&src, dest).is_ok() {
            return Ok(());
        }
        let mut from = self.open(d)?;
        let mut to = File::create(dest).map_err(|e| StoreError::io(dest, e))?;
        io::copy(&mut from, &mut to).map_err(|e| StoreError::io(dest, e))?;
        Ok(())
    }
}
