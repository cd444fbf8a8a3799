//! The SQLite metadata database: connection setup, schema and migrations.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags, TransactionBehavior};

use crate::error::Result;

/// Migrations, in order; `user_version` is the number applied.
const MIGRATIONS: &[&str] = &[
    // 1: the initial schema.
    r#"
    CREATE TABLE blobs (
        digest TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        media_type TEXT,
        created_ms INTEGER NOT NULL,
        used_ms INTEGER NOT NULL
    );
    CREATE TABLE layers (
        digest TEXT PRIMARY KEY,
        diff_id TEXT NOT NULL,
        size INTEGER NOT NULL,
        uncompressed_size INTEGER,
        media_type TEXT NOT NULL,
        created_ms INTEGER NOT NULL
    );
    CREATE INDEX layers_by_diff_id ON layers(diff_id);
    CREATE TABLE snapshots (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        diff_id TEXT NOT NULL UNIQUE,
        created_ms INTEGER NOT NULL,
        used_ms INTEGER NOT NULL
    );
    CREATE TABLE images (
        manifest_digest TEXT PRIMARY KEY,
        config_digest TEXT NOT NULL,
        created TEXT,
        size INTEGER NOT NULL,
        layers TEXT NOT NULL,
        created_ms INTEGER NOT NULL
    );
    CREATE INDEX images_by_config ON images(config_digest);
    CREATE TABLE refs (
        name TEXT PRIMARY KEY,
        manifest_digest TEXT NOT NULL,
        updated_ms INTEGER NOT NULL
    );
    CREATE INDEX refs_by_manifest ON refs(manifest_digest);
    CREATE TABLE cache (
        key TEXT PRIMARY KEY,
        parent TEXT,
        description TEXT NOT NULL,
        source TEXT NOT NULL,
        stage TEXT NOT NULL,
        inputs TEXT NOT NULL,
        result TEXT NOT NULL,
        layer TEXT,
        layer_digest TEXT,
        created INTEGER NOT NULL,
        last_used INTEGER NOT NULL,
        hits INTEGER NOT NULL,
        used_ms INTEGER NOT NULL
    );
    CREATE INDEX cache_by_layer ON cache(layer_digest);
    CREATE TABLE stat_cache (
        context TEXT NOT NULL,
        path TEXT NOT NULL,
        dev INTEGER NOT NULL,
        ino INTEGER NOT NULL,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        ctime_ns INTEGER NOT NULL,
        mode INTEGER NOT NULL,
        hash TEXT NOT NULL,
        PRIMARY KEY (context, path)
    ) WITHOUT ROWID;
    CREATE TABLE leases (
        id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        created_ms INTEGER NOT NULL
    );
    "#,
    // 2: which repositories of which registry a blob is known to be in
    // (pushed there or pulled from there), so a push can mount it from one
    // of them instead of uploading. A hint only: a stale row costs one
    // failed mount, which falls back to an upload.
    r#"
    CREATE TABLE registry_blobs (
        digest TEXT NOT NULL,
        registry TEXT NOT NULL,
        repo TEXT NOT NULL,
        used_ms INTEGER NOT NULL,
        PRIMARY KEY (digest, registry, repo)
    ) WITHOUT ROWID;
    "#,
    // 3: explaining a step looks up the nearest earlier record by parent
    // and by place (stage, source line), each an index range, so a build
    // reads what its own steps need, however many records the cache holds.
    r#"
    CREATE INDEX cache_by_parent ON cache(parent, created);
    CREATE INDEX cache_by_place ON cache(stage, source, description, created);
    "#,
    // 4: image indexes (multi-platform images, attestations): a tag may
    // name an index; its entries are image manifests (rows of `images`)
    // or attestation manifests about one of them (`subject`).
    r#"
    CREATE TABLE indexes (
        digest TEXT PRIMARY KEY,
        created_ms INTEGER NOT NULL
    );
    CREATE TABLE index_entries (
        index_digest TEXT NOT NULL,
        position INTEGER NOT NULL,
        manifest_digest TEXT NOT NULL,
        size INTEGER NOT NULL,
        platform TEXT NOT NULL,
        subject TEXT,
        PRIMARY KEY (index_digest, position)
    ) WITHOUT ROWID;
    CREATE INDEX index_entries_by_manifest ON index_entries(manifest_digest);
    "#,
    // 5: what a layer holds at the paths a reader chose (the SBOM's
    // package databases), kept per layer: a layer never changes, so a
    // cold build reads only its new layers for its SBOM.
    r#"
    CREATE TABLE layer_scans (
        digest TEXT NOT NULL,
        selector TEXT NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (digest, selector)
    ) WITHOUT ROWID;
    "#,
    // 6: blobs known remotely, not local: a lazily imported registry cache
    // or a base image resolved without its layers names blobs whose bytes
    // stay in a registry (which ones: `registry_blobs`) until a step, an
    // exporter or a container needs them. The row goes when the blob is
    // stored.
    r#"
    CREATE TABLE remote_blobs (
        digest TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        media_type TEXT,
        created_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
    "#,
    // 7: where an imported cache record came from (`--cache-from`: the
    // source as the user named it), NULL for a record this root made: what
    // `kiln build --explain` and `kiln cache ls` say about a hit. A record
    // written again by a step that ran here is this root's own again.
    r#"
    ALTER TABLE cache ADD COLUMN origin TEXT;
    "#,
];

/// The schema version this build of kiln writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Whether an error means the database file itself is damaged.
pub(crate) fn is_corruption(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseCorrupt) | Some(ErrorCode::NotADatabase)
    )
}

/// Why the database file cannot be what it should be, read from its size
/// and its header before SQLite opens it: SQLite takes an empty file for a
/// new, empty database, and a file cut short for one with fewer pages, so
/// either would silently lose every image. `None`: absent, or plausible.
pub(crate) fn damaged(path: &Path) -> Option<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    if len == 0 {
        return Some("it is empty (0 bytes)".into());
    }
    let mut h = [0u8; 100];
    if len < 100 || f.read_exact(&mut h).is_err() {
        return Some(format!("it is {len} bytes, shorter than its header"));
    }
    if &h[..16] != b"SQLite format 3\0" {
        // Not SQLite at all: SQLite itself says so (NotADatabase).
        return None;
    }
    let page = match u16::from_be_bytes([h[16], h[17]]) {
        1 => 65536,
        n => u64::from(n),
    };
    let pages = u64::from(u32::from_be_bytes([h[28], h[29], h[30], h[31]]));
    // The in-header size is valid only when the two change counters agree
    // (SQLite's rule); then the file holds at least that many pages.
    let valid = h[24..28] == h[92..96];
    if valid && pages > 0 && len < pages * page {
        return Some(format!(
            "it is truncated: {len} bytes, its header says {} pages of {page}",
            pages
        ));
    }
    None
}

/// Opens (creating if needed) and migrates the database, then checks it.
pub(crate) fn open(path: &Path) -> Result<Connection, rusqlite::Error> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(120))?;
    // WAL: readers never block the writer; synchronous=NORMAL is durable
    // against process crashes (kill -9), which is what the store promises
    // for metadata (blobs and snapshots are fsynced before they are recorded).
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // Every kiln command is a short process: a checkpoint when the last
    // connection closes (and re-creating the WAL, with its fsyncs, at the
    // next open) would cost more than the command itself. But the first
    // connection after all were closed reads the whole WAL to rebuild its
    // index, so the WAL is kept small: writes checkpoint it past 64 pages
    // (256 KiB) instead of SQLite's default 1000.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
        true,
    )?;
    conn.pragma_update(None, "wal_autocheckpoint", 64)?;
    conn.pragma_update(None, "journal_size_limit", 4 << 20)?;
    conn.set_prepared_statement_cache_capacity(64);
    // Opening is kept cheap (every kiln command opens the store): reading
    // the schema catches a file that is not a database or has a broken
    // header; a full page-level check is `fsck`'s job (see `integrity`).
    conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
        r.get::<_, i64>(0)
    })?;
    migrate(&conn)?;
    Ok(conn)
}

/// `PRAGMA integrity_check`: `None` when the database is sound, else what
/// SQLite found (first lines).
pub(crate) fn integrity(conn: &Connection) -> Result<Option<String>, rusqlite::Error> {
    let mut stmt = conn.prepare("PRAGMA integrity_check(20)")?;
    let lines: Vec<String> = stmt
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    if lines.len() == 1 && lines[0] == "ok" {
        Ok(None)
    } else {
        Ok(Some(lines.join("; ")))
    }
}

fn migrate(conn: &Connection) -> Result<(), rusqlite::Error> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
            Some(format!(
                "kiln.db has schema version {version}, newer than the {SCHEMA_VERSION} this kiln understands; use a newer kiln"
            )),
        ));
    }
    if version == SCHEMA_VERSION {
        return Ok(());
    }
    // Several processes may open a new root at once: the migration runs in
    // a write transaction and re-reads the version inside it.
    let tx = rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (i, m) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
        tx.execute_batch(m)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
    }
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c_newer(p: &Path) {
        let c = Connection::open(p).unwrap();
        c.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
    }

    #[test]
    fn migrates_once_and_detects_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("kiln.db");
        let c = open(&p).unwrap();
        let v: i64 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        drop(c);
        open(&p).unwrap();
        c_newer(&p);
        let e = open(&p).unwrap_err();
        assert!(!is_corruption(&e) && e.to_string().contains("newer"), "{e}");
        let bad = dir.path().join("bad.db");
        std::fs::write(&bad, vec![0x5a; 8192]).unwrap();
        let e = open(&bad).unwrap_err();
        assert!(is_corruption(&e), "{e}");
    }
}
