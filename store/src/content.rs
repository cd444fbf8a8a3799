//! The content store view: blobs by digest (`store.content()`).
//!
//! Blobs are written through an ingest file and renamed in whole, and
//! never change once there; a caller that needs a blob's bytes elsewhere
//! (an OCI layout for `--cache-to` or `--output type=oci`) asks for them
//! here instead of reading the store's directories.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rusqlite::{params, TransactionBehavior};

use crate::digest::{sha256_digest, Digest, HashingWriter};
use crate::error::{Result, StoreError};
use crate::store::{fsync_dir, now_ms, Store};

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
            self.store.ensure_blob(d)?;
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

impl Store {
    /// Blobs by digest.
    pub fn content(&self) -> Content<'_> {
        Content { store: self }
    }

    /// Streams `r` into the store, hashing as it goes; checks the size and
    /// digest when given, fsyncs, and renames into `blobs/` atomically. A
    /// blob that already exists counts as success.
    pub fn write_blob(
        &self,
        r: &mut dyn Read,
        expected: Option<&Digest>,
        expected_size: Option<u64>,
    ) -> Result<(Digest, u64)> {
        self.write_blob_typed(r, expected, expected_size, None)
    }

    pub(crate) fn write_blob_typed(
        &self,
        r: &mut dyn Read,
        expected: Option<&Digest>,
        expected_size: Option<u64>,
        media_type: Option<&str>,
    ) -> Result<(Digest, u64)> {
        let ingest = Ingest::new(self)?;
        let (n, hasher) = {
            let mut w = HashingWriter::new(io::BufWriter::with_capacity(
                256 * 1024,
                Writeback::new(&ingest.file),
            ));
            let limit = expected_size.map(|s| s + 1).unwrap_or(u64::MAX);
            let n = io::copy(&mut r.take(limit), &mut w)
                .map_err(|e| StoreError::io(&ingest.path, e))?;
            let HashingWriter { mut inner, hasher } = w;
            inner.flush().map_err(|e| StoreError::io(&ingest.path, e))?;
            (n, hasher)
        };
        let digest = hasher.finish();
        if let Some(s) = expected_size {
            if n != s {
                return Err(StoreError::SizeMismatch {
                    digest: expected.map(|d| d.to_string()).unwrap_or_default(),
                    expected: s,
                    actual: n,
                });
            }
        }
        if let Some(e) = expected {
            if *e != digest {
                return Err(StoreError::DigestMismatch {
                    expected: e.clone(),
                    actual: digest,
                });
            }
        }
        ingest.commit(self, &digest, n, media_type)?;
        Ok((digest, n))
    }

    pub fn write_blob_bytes(&self, bytes: &[u8]) -> Result<Digest> {
        // Small blobs (configs, manifests) are often written again by a
        // cached rebuild: an existing blob with that digest is the same
        // bytes, so the write (and its fsyncs) is skipped.
        self.write_small_blob(bytes, None)
    }

    /// Writes a small in-memory blob; one that is already stored (same
    /// digest, same size) is only marked as used, without rewriting and
    /// fsyncing the same bytes again.
    fn write_small_blob(&self, bytes: &[u8], media_type: Option<&str>) -> Result<Digest> {
        let d = sha256_digest(bytes);
        let present = fs::symlink_metadata(self.blob_path(&d))
            .map(|m| m.is_file() && m.len() == bytes.len() as u64)
            .unwrap_or(false);
        if present {
            let n = self
                .conn()
                .prepare_cached("UPDATE blobs SET used_ms = ?2 WHERE digest = ?1")?
                .execute(params![d.as_str(), now_ms()])?;
            if n == 1 {
                return Ok(d);
            }
        }
        self.write_blob_typed(
            &mut &bytes[..],
            Some(&d),
            Some(bytes.len() as u64),
            media_type,
        )
        .map(|(d, _)| d)
    }

    pub(crate) fn write_blob_bytes_typed(&self, bytes: &[u8], media_type: &str) -> Result<Digest> {
        self.write_small_blob(bytes, Some(media_type))
    }

    /// Reads a small blob (config, manifest) and verifies its digest. A
    /// blob known remotely, not local, is fetched first.
    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>> {
        let p = self.blob_path(d);
        let mut read = fs::read(&p);
        if matches!(&read, Err(e) if e.kind() == io::ErrorKind::NotFound)
            && self.fetch_if_remote(d)?
        {
            read = fs::read(&p);
        }
        let bytes = match read {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::BlobNotFound(d.clone()))
            }
            Err(e) => return Err(StoreError::io(&p, e)),
        };
        let actual = sha256_digest(&bytes);
        if actual != *d {
            return Err(StoreError::DigestMismatch {
                expected: d.clone(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// Opens a blob for streaming (not verified; hash while reading, or use
    /// [`Store::fsck`]). A blob known remotely, not local, is fetched
    /// (and verified) first.
    pub fn open_blob(&self, d: &Digest) -> Result<File> {
        let p = self.blob_path(d);
        let mut opened = File::open(&p);
        if matches!(&opened, Err(e) if e.kind() == io::ErrorKind::NotFound)
            && self.fetch_if_remote(d)?
        {
            opened = File::open(&p);
        }
        opened.map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                StoreError::BlobNotFound(d.clone())
            } else {
                StoreError::io(&p, e)
            }
        })
    }

    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }
}

/// Writes to a file and starts the writeback of what it wrote every
/// [`Writeback::STEP`] bytes (`sync_file_range(SYNC_FILE_RANGE_WRITE)`,
/// which does not wait), so that the fsync that makes a large blob durable
/// finds most of it on its way to the disk already. A filesystem that
/// does not support it only loses the head start.
pub(crate) struct Writeback<'a> {
    file: &'a File,
    written: u64,
    started: u64,
}

impl<'a> Writeback<'a> {
    const STEP: u64 = 8 << 20;

    pub(crate) fn new(file: &'a File) -> Writeback<'a> {
        Writeback {
            file,
            written: 0,
            started: 0,
        }
    }
}

impl Write for Writeback<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = (&mut &*self.file).write(buf)?;
        self.written += n as u64;
        if self.written - self.started >= Self::STEP {
            use std::os::fd::AsRawFd;
            // SAFETY: a valid open descriptor and a byte range; the call
            // only schedules writeback and touches no memory of ours.
            unsafe {
                libc::sync_file_range(
                    self.file.as_raw_fd(),
                    self.started as libc::off64_t,
                    (self.written - self.started) as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                );
            }
            self.started = self.written;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A partial blob in `ingest/`, owned by this process; removed on drop
/// unless committed.
pub(crate) struct Ingest {
    pub path: PathBuf,
    pub file: File,
    done: bool,
}

impl Ingest {
    pub fn new(store: &Store) -> Result<Ingest> {
        let path = store
            .shared
            .root
            .join("ingest")
            .join(store.shared.owner.temp_name("blob"));
        let file = fs::OpenOptions::new()
            .write(true)
            .read(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| StoreError::io(&path, e))?;
        Ok(Ingest {
            path,
            file,
            done: false,
        })
    }

    /// fsyncs, makes read-only, and atomically renames into
    /// `blobs/sha256/<hex>` while holding the database write lock (so prune
    /// cannot interleave), records the blob, fsyncs the directory.
    pub fn commit(
        mut self,
        store: &Store,
        digest: &Digest,
        size: u64,
        media_type: Option<&str>,
    ) -> Result<()> {
        let dest = store.blob_path(digest);
        let present = || {
            fs::symlink_metadata(&dest)
                .map(|m| m.is_file() && m.len() == size)
                .unwrap_or(false)
        };
        // A blob that is there already (an empty RUN step's layer, a
        // rebuild without cache) is durable: ours is not flushed for nothing.
        let synced = !present();
        if synced {
            self.sync()?;
        }
        let mut conn = store.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if present() {
            // Identical content (same digest) is already there.
            let _ = fs::remove_file(&self.path);
        } else {
            // Gone since the look above (pruned): ours goes in, flushed.
            if !synced {
                self.sync()?;
            }
            fs::rename(&self.path, &dest).map_err(|e| StoreError::io(&dest, e))?;
            fsync_dir(&store.shared.root.join("blobs/sha256"))?;
        }
        self.done = true;
        let now = now_ms();
        tx.prepare_cached(
            "INSERT INTO blobs (digest, size, media_type, created_ms, used_ms) VALUES (?1, ?2, ?3, ?4, ?4)
             ON CONFLICT(digest) DO UPDATE SET used_ms = excluded.used_ms, media_type = coalesce(excluded.media_type, blobs.media_type)",
        )?
        .execute(params![digest.as_str(), size as i64, media_type, now])?;
        // Stored now: no longer known remotely only.
        tx.prepare_cached("DELETE FROM remote_blobs WHERE digest = ?1")?
            .execute([digest.as_str()])?;
        tx.commit()?;
        Ok(())
    }
}

impl Ingest {
    fn sync(&self) -> Result<()> {
        self.file
            .sync_all()
            .map_err(|e| StoreError::io(&self.path, e))?;
        self.file
            .set_permissions(fs::Permissions::from_mode(0o444))
            .map_err(|e| StoreError::io(&self.path, e))
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.path);
        }
    }
}
