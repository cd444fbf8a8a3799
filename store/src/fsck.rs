//! `fsck`: rehash every blob, check every reference between the store's
//! tables and its files, and with `repair` fix what can be fixed. Each
//! kind of object is one check; they run in dependency order (blobs
//! first, since everything else is judged against the blobs on disk).

use std::collections::HashSet;
use std::fs;
use std::path::PathBuf;

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use crate::digest::Digest;
use crate::error::{Result, StoreError};
use crate::gc::hash_file;
use crate::store::{now_ms, remove_tree, LayerInfo, Store};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FsckReport {
    pub blobs_checked: u64,
    /// Inconsistencies found (each one line).
    pub problems: Vec<String>,
    /// What `--repair` did about them.
    pub repaired: Vec<String>,
    /// Leftovers of dead processes swept (at open and during fsck); these
    /// are normal after a crash and not problems.
    pub swept: Vec<String>,
    /// Where a corrupt database was moved before it was rebuilt.
    pub recovered_from: Option<PathBuf>,
}

impl FsckReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

impl std::fmt::Display for FsckReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(b) = &self.recovered_from {
            writeln!(
                f,
                "database was corrupt: moved to {} and rebuilt from the blobs",
                b.display()
            )?;
        }
        writeln!(f, "checked {} blobs", self.blobs_checked)?;
        for s in &self.swept {
            writeln!(f, "swept leftover: {s}")?;
        }
        for p in &self.problems {
            writeln!(f, "problem: {p}")?;
        }
        for r in &self.repaired {
            writeln!(f, "repaired: {r}")?;
        }
        if self.problems.is_empty() {
            writeln!(f, "no problems found")
        } else if self.repaired.is_empty() {
            writeln!(
                f,
                "{} problems found (run with --repair to fix)",
                self.problems.len()
            )
        } else {
            writeln!(
                f,
                "{} problems found, {} repaired",
                self.problems.len(),
                self.repaired.len()
            )
        }
    }
}

impl Store {
    /// Rehashes every blob and checks every reference; with `repair`, fixes
    /// what it can (drops corrupt blobs and whatever points at missing
    /// content, records unrecorded blobs, removes unrecorded snapshots).
    pub fn fsck(&self, repair: bool) -> Result<FsckReport> {
        let mut rep = FsckReport {
            swept: self.open_report.swept.clone(),
            recovered_from: self.open_report.recovered_from.clone(),
            ..Default::default()
        };
        if !self.check_database(repair, &mut rep)? {
            return Ok(rep);
        }
        rep.swept.extend(self.sweep()?.swept);
        let on_disk = self.check_blob_files(repair, &mut rep)?;
        let remote = self.fsck_remote(&on_disk, repair, &mut rep)?;
        let mut fsck = Check {
            conn: &self.conn(),
            on_disk: &on_disk,
            remote: &remote,
            repair,
            rep: &mut rep,
        };
        fsck.blob_rows()?;
        fsck.images()?;
        fsck.dangling_tags()?;
        fsck.indexes()?;
        fsck.layers_and_cache()?;
        fsck.snapshots(|id| self.snapshot_dir(id).is_dir())?;
        // Anything else in ingest/ or tmp/ belongs to a live process.
        Ok(rep)
    }

    /// The database itself first: a damaged one is moved aside and rebuilt
    /// from the blobs (with --repair). False: it is damaged and was left
    /// as it is, so nothing else can be checked.
    fn check_database(&self, repair: bool, rep: &mut FsckReport) -> Result<bool> {
        let damage = match crate::db::integrity(&self.conn()) {
            Ok(d) => d,
            Err(e) if crate::db::is_corruption(&e) => Some(e.to_string()),
            Err(e) => return Err(e.into()),
        };
        if let Some(d) = damage {
            rep.problems
                .push(format!("metadata database is corrupt: {d}"));
            if !repair {
                return Ok(false);
            }
            let backup = self.recover_db()?;
            rep.repaired.push(format!("moved the corrupt database to {} and rebuilt it from the blobs (tags and build cache are lost)", backup.display()));
            rep.recovered_from = Some(backup);
        }
        Ok(true)
    }

    /// Rehashes each blob file; returns the digests of the sound ones.
    fn check_blob_files(&self, repair: bool, rep: &mut FsckReport) -> Result<HashSet<String>> {
        let blob_dir = self.shared.root.join("blobs/sha256");
        let mut on_disk = HashSet::new();
        for e in fs::read_dir(&blob_dir)
            .map_err(|e| StoreError::io(&blob_dir, e))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            let Ok(d) = Digest::from_hex(&name) else {
                rep.problems.push(format!("stray file blobs/sha256/{name}"));
                if repair {
                    remove_tree(&e.path()).map_err(|err| StoreError::io(e.path(), err))?;
                    rep.repaired.push(format!("removed blobs/sha256/{name}"));
                }
                continue;
            };
            rep.blobs_checked += 1;
            let (actual, size) =
                hash_file(&e.path()).map_err(|err| StoreError::io(e.path(), err))?;
            if actual != d {
                rep.problems
                    .push(format!("blob {d} is corrupt (content hashes to {actual})"));
                if repair {
                    fs::remove_file(e.path()).map_err(|err| StoreError::io(e.path(), err))?;
                    self.conn()
                        .execute("DELETE FROM blobs WHERE digest = ?1", [d.as_str()])?;
                    rep.repaired.push(format!("removed corrupt blob {d}"));
                }
                continue;
            }
            on_disk.insert(d.to_string());
            self.check_blob_row(&d, size, repair, rep)?;
        }
        Ok(on_disk)
    }

    /// A sound blob's row: its recorded size, or the row itself.
    fn check_blob_row(
        &self,
        d: &Digest,
        size: u64,
        repair: bool,
        rep: &mut FsckReport,
    ) -> Result<()> {
        let conn = self.conn();
        let known = conn
            .prepare_cached("SELECT size FROM blobs WHERE digest = ?1")?
            .query_row([d.as_str()], |r| r.get::<_, i64>(0))
            .optional()?;
        match known {
            Some(s) if s as u64 == size => {}
            Some(s) => {
                rep.problems
                    .push(format!("blob {d} recorded with size {s}, is {size}"));
                if repair {
                    conn.execute(
                        "UPDATE blobs SET size = ?2 WHERE digest = ?1",
                        params![d.as_str(), size as i64],
                    )?;
                    rep.repaired.push(format!("recorded size of {d}"));
                }
            }
            None => {
                // Not a problem for the user (prune reclaims it), but the
                // row should exist for a committed blob.
                if repair {
                    let now = now_ms();
                    conn.execute(
                        "INSERT OR IGNORE INTO blobs (digest, size, media_type, created_ms, used_ms) VALUES (?1, ?2, NULL, ?3, ?3)",
                        params![d.as_str(), size as i64, now],
                    )?;
                }
            }
        }
        Ok(())
    }

    /// Blobs known remotely, not local: those with a registry to fetch
    /// them from (returned: references to them are not missing), and
    /// those without one, which are problems (with `repair`, forgotten:
    /// what names them is then missing, and repaired as such).
    fn fsck_remote(
        &self,
        on_disk: &HashSet<String>,
        repair: bool,
        rep: &mut FsckReport,
    ) -> Result<HashSet<String>> {
        let rows: Vec<(String, i64)> = self
            .conn()
            .prepare("SELECT r.digest, (SELECT count(*) FROM registry_blobs b WHERE b.digest = r.digest) FROM remote_blobs r")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let mut remote = HashSet::new();
        for (d, sources) in rows {
            if on_disk.contains(&d) {
                continue;
            }
            if sources > 0 {
                remote.insert(d);
                continue;
            }
            rep.problems.push(format!(
                "blob {d} is known only remotely, but no registry is recorded for it"
            ));
            if repair {
                self.conn()
                    .execute("DELETE FROM remote_blobs WHERE digest = ?1", [&d])?;
                rep.repaired
                    .push(format!("forgot remote blob {d} (no registry has it)"));
            }
        }
        Ok(remote)
    }
}

/// The checks of the tables against the blobs found on disk.
struct Check<'a> {
    conn: &'a Connection,
    on_disk: &'a HashSet<String>,
    /// Blobs known remotely with a registry to fetch them from.
    remote: &'a HashSet<String>,
    repair: bool,
    rep: &'a mut FsckReport,
}

impl Check<'_> {
    /// Not here and not known remotely with a registry to fetch from.
    fn missing(&self, d: &str) -> bool {
        !self.on_disk.contains(d) && !self.remote.contains(d)
    }

    /// One problem, and with --repair the statement that fixes it.
    fn problem(
        &mut self,
        what: String,
        fix: &str,
        arg: &dyn rusqlite::ToSql,
        done: String,
    ) -> Result<()> {
        self.rep.problems.push(what);
        if self.repair {
            self.conn.execute(fix, [arg])?;
            self.rep.repaired.push(done);
        }
        Ok(())
    }

    fn strings(&self, sql: &str) -> Result<Vec<String>> {
        Ok(self
            .conn
            .prepare(sql)?
            .query_map([], |r| r.get(0))?
            .collect::<std::result::Result<_, _>>()?)
    }

    fn pairs<A: rusqlite::types::FromSql, B: rusqlite::types::FromSql>(
        &self,
        sql: &str,
    ) -> Result<Vec<(A, B)>> {
        Ok(self
            .conn
            .prepare(sql)?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<std::result::Result<_, _>>()?)
    }

    /// Blob rows without files.
    fn blob_rows(&mut self) -> Result<()> {
        for d in self.strings("SELECT digest FROM blobs")? {
            if !self.on_disk.contains(&d) {
                self.problem(
                    format!("blob {d} is recorded but missing"),
                    "DELETE FROM blobs WHERE digest = ?1",
                    &d,
                    format!("forgot missing blob {d}"),
                )?;
            }
        }
        Ok(())
    }

    /// Images whose manifest, config or layers are gone.
    fn images(&mut self) -> Result<()> {
        let images: Vec<(String, String, String)> = self
            .conn
            .prepare("SELECT manifest_digest, config_digest, layers FROM images")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<std::result::Result<_, _>>()?;
        for (m, c, layers) in images {
            let layers: Vec<LayerInfo> = serde_json::from_str(&layers)?;
            let lost: Vec<String> = [m.clone(), c.clone()]
                .into_iter()
                .chain(layers.iter().map(|l| l.digest.to_string()))
                .filter(|d| self.missing(d))
                .collect();
            if lost.is_empty() {
                continue;
            }
            self.rep.problems.push(format!(
                "image {c} (manifest {m}) lacks blobs: {}",
                lost.join(", ")
            ));
            if self.repair {
                self.conn
                    .execute("DELETE FROM refs WHERE manifest_digest = ?1", [&m])?;
                self.conn
                    .execute("DELETE FROM images WHERE manifest_digest = ?1", [&m])?;
                self.rep
                    .repaired
                    .push(format!("removed broken image {c} and its tags"));
            }
        }
        Ok(())
    }

    fn dangling_tags(&mut self) -> Result<()> {
        let refs: Vec<(String, String)> = self.pairs("SELECT name, manifest_digest FROM refs WHERE manifest_digest NOT IN (SELECT manifest_digest FROM images) AND manifest_digest NOT IN (SELECT digest FROM indexes)")?;
        for (name, m) in refs {
            self.problem(
                format!("tag {name} points at missing image {m}"),
                "DELETE FROM refs WHERE name = ?1",
                &name,
                format!("removed dangling tag {name}"),
            )?;
        }
        Ok(())
    }

    /// Indexes: the index blob, attestation manifests, and each image
    /// entry's record.
    fn indexes(&mut self) -> Result<()> {
        let entries: Vec<(String, String, Option<String>)> = self
            .conn
            .prepare("SELECT e.index_digest, e.manifest_digest, e.subject FROM index_entries e")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<std::result::Result<_, _>>()?;
        for idx in self.strings("SELECT digest FROM indexes")? {
            let mut lost: Vec<String> = Vec::new();
            if self.missing(&idx) {
                lost.push(idx.clone());
            }
            for (_, m, subject) in entries.iter().filter(|(i, _, _)| *i == idx) {
                let gone = match subject {
                    Some(_) => self.missing(m),
                    None => !self
                        .conn
                        .prepare_cached("SELECT 1 FROM images WHERE manifest_digest = ?1")?
                        .exists([m])?,
                };
                if gone {
                    lost.push(m.clone());
                }
            }
            if lost.is_empty() {
                continue;
            }
            self.rep.problems.push(format!(
                "image index {idx} lacks manifests: {}",
                lost.join(", ")
            ));
            if self.repair {
                self.conn
                    .execute("DELETE FROM refs WHERE manifest_digest = ?1", [&idx])?;
                self.conn
                    .execute("DELETE FROM index_entries WHERE index_digest = ?1", [&idx])?;
                self.conn
                    .execute("DELETE FROM indexes WHERE digest = ?1", [&idx])?;
                self.rep
                    .repaired
                    .push(format!("removed broken image index {idx} and its tags"));
            }
        }
        Ok(())
    }

    fn layers_and_cache(&mut self) -> Result<()> {
        for d in self.strings("SELECT digest FROM layers")? {
            if self.missing(&d) {
                self.problem(
                    format!("layer {d} is recorded but its blob is missing"),
                    "DELETE FROM layers WHERE digest = ?1",
                    &d,
                    format!("forgot layer {d}"),
                )?;
            }
        }
        let cache: Vec<(String, String)> =
            self.pairs("SELECT key, layer_digest FROM cache WHERE layer_digest IS NOT NULL")?;
        for (key, d) in cache {
            if self.missing(&d) {
                self.problem(
                    format!("cache record {key} holds missing layer {d}"),
                    "DELETE FROM cache WHERE key = ?1",
                    &key,
                    format!("removed cache record {key}"),
                )?;
            }
        }
        Ok(())
    }

    fn snapshots(&mut self, present: impl Fn(i64) -> bool) -> Result<()> {
        let snaps: Vec<(i64, String)> = self.pairs("SELECT id, diff_id FROM snapshots")?;
        for (id, diff) in snaps {
            if !present(id) {
                self.problem(
                    format!("snapshot {id} ({diff}) is recorded but its directory is missing"),
                    "DELETE FROM snapshots WHERE id = ?1",
                    &id,
                    format!("forgot snapshot {id}"),
                )?;
            }
        }
        Ok(())
    }
}
