//! The build-context stat cache: per context directory, what each file's
//! (device, inode, size, mtime, ctime, mode) was when its blake3 was last
//! computed, so an unchanged file is not read again.

use std::collections::HashMap;

use rusqlite::{params, TransactionBehavior};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::store::Store;

/// A build-context stat cache entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatEntry {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub mode: u32,
    /// blake3 hex of the content.
    pub hash: String,
}

/// A stat cache record as [`Store::stat_cache_visit`] lends it: the strings
/// point into the database row and live only for the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatRow<'a> {
    pub path: &'a str,
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub mode: u32,
    /// blake3 hex of the content.
    pub hash: &'a str,
}

impl StatRow<'_> {
    pub fn to_entry(&self) -> StatEntry {
        StatEntry {
            dev: self.dev,
            ino: self.ino,
            size: self.size,
            mtime_ns: self.mtime_ns,
            ctime_ns: self.ctime_ns,
            mode: self.mode,
            hash: self.hash.to_string(),
        }
    }
}

impl Store {
    /// Every record of `context`, keyed by path.
    pub fn stat_cache_load(&self, context: &str) -> Result<HashMap<String, StatEntry>> {
        let mut out = HashMap::new();
        self.stat_cache_visit(context, |row| {
            out.insert(row.path.to_string(), row.to_entry());
        })?;
        Ok(out)
    }

    /// Calls `f` with every record of `context` in ascending path order
    /// (byte order, the order of Rust's `str`), without allocating per row:
    /// a caller holding a sorted list of paths merges the two in one pass,
    /// which is the whole cost of an unchanged context.
    pub fn stat_cache_visit(&self, context: &str, mut f: impl FnMut(StatRow<'_>)) -> Result<()> {
        let conn = self.conn();
        // The primary key (context, path) of this WITHOUT ROWID table is
        // the row order: the ORDER BY costs no sort. Paths use the default
        // BINARY collation, i.e. memcmp of the UTF-8 bytes.
        let mut stmt = conn.prepare_cached(
            "SELECT path, dev, ino, size, mtime_ns, ctime_ns, mode, hash FROM stat_cache \
             WHERE context = ?1 ORDER BY path",
        )?;
        let mut rows = stmt.query([context])?;
        while let Some(r) = rows.next()? {
            f(StatRow {
                path: text(r, 0)?,
                dev: r.get::<_, i64>(1)? as u64,
                ino: r.get::<_, i64>(2)? as u64,
                size: r.get::<_, i64>(3)? as u64,
                mtime_ns: r.get(4)?,
                ctime_ns: r.get(5)?,
                mode: r.get::<_, i64>(6)? as u32,
                hash: text(r, 7)?,
            });
        }
        Ok(())
    }

    /// Brings the stat cache of `context` up to date in one transaction:
    /// the records of `remove` are dropped, those of `upsert` written (or
    /// replaced). A build that read one file of a big context writes one
    /// row, not the whole context again.
    pub fn stat_cache_update(
        &self,
        context: &str,
        remove: &[String],
        upsert: &[(String, StatEntry)],
    ) -> Result<()> {
        if remove.is_empty() && upsert.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut del =
                tx.prepare_cached("DELETE FROM stat_cache WHERE context = ?1 AND path = ?2")?;
            for p in remove {
                del.execute(params![context, p])?;
            }
            put_rows(&tx, context, upsert)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Replaces the stat cache of `context`, in one transaction.
    pub fn stat_cache_store(&self, context: &str, entries: &[(String, StatEntry)]) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.prepare_cached("DELETE FROM stat_cache WHERE context = ?1")?
            .execute([context])?;
        put_rows(&tx, context, entries)?;
        tx.commit()?;
        Ok(())
    }
}

/// Inserts or replaces `entries` of `context` inside `tx`.
fn put_rows(
    tx: &rusqlite::Transaction<'_>,
    context: &str,
    entries: &[(String, StatEntry)],
) -> Result<()> {
    let mut put = tx.prepare_cached("INSERT OR REPLACE INTO stat_cache (context, path, dev, ino, size, mtime_ns, ctime_ns, mode, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)")?;
    for (p, e) in entries {
        put.execute(params![
            context,
            p,
            e.dev as i64,
            e.ino as i64,
            e.size as i64,
            e.mtime_ns,
            e.ctime_ns,
            i64::from(e.mode),
            e.hash
        ])?;
    }
    Ok(())
}

/// A TEXT column borrowed from the row.
fn text<'a>(r: &'a rusqlite::Row<'_>, i: usize) -> rusqlite::Result<&'a str> {
    r.get_ref(i)?.as_str().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visit_lends_rows_of_one_context_in_byte_order() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("root")).unwrap();
        let e = |n: u64| StatEntry {
            dev: 1,
            ino: n,
            size: n,
            mtime_ns: -5,
            ctime_ns: 7,
            mode: 0o644,
            hash: format!("{n:064x}"),
        };
        // Inserted out of order; '-' < '.' < '/' < 'Z' < 'a' < 'é' in bytes.
        let paths = ["b", "a/x", "a-b", "a", "Z", "é", "a.c"];
        let rows: Vec<(String, StatEntry)> = paths
            .iter()
            .enumerate()
            .map(|(i, p)| (p.to_string(), e(i as u64)))
            .collect();
        s.stat_cache_store("/ctx", &rows).unwrap();
        s.stat_cache_store("/other", &[("0".into(), e(99))])
            .unwrap();
        let mut seen = Vec::new();
        s.stat_cache_visit("/ctx", |r| {
            let want = &rows.iter().find(|(p, _)| p == r.path).unwrap().1;
            assert_eq!(&r.to_entry(), want);
            seen.push(r.path.to_string());
        })
        .unwrap();
        let mut expect: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
        expect.sort();
        assert_eq!(seen, expect);
        let mut none = 0;
        s.stat_cache_visit("/nothing", |_| none += 1).unwrap();
        assert_eq!(none, 0);
    }

    #[test]
    fn update_removes_and_upserts_only_what_it_is_given() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("root")).unwrap();
        let e = |h: &str| StatEntry {
            dev: 1,
            ino: 2,
            size: 3,
            mtime_ns: 4,
            ctime_ns: 5,
            mode: 0o644,
            hash: h.repeat(64),
        };
        let rows = [
            ("a".to_string(), e("a")),
            ("b".into(), e("b")),
            ("c".into(), e("c")),
        ];
        s.stat_cache_store("/ctx", &rows).unwrap();
        s.stat_cache_store("/other", &rows).unwrap();
        s.stat_cache_update(
            "/ctx",
            &["b".into(), "nope".into()],
            &[("a".into(), e("1")), ("d".into(), e("d"))],
        )
        .unwrap();
        let m = s.stat_cache_load("/ctx").unwrap();
        let mut keys: Vec<&String> = m.keys().collect();
        keys.sort();
        assert_eq!(keys, ["a", "c", "d"]);
        assert_eq!(m["a"], e("1"));
        assert_eq!(m["c"], e("c"));
        assert_eq!(s.stat_cache_load("/other").unwrap().len(), 3);
        s.stat_cache_update("/ctx", &[], &[]).unwrap();
        assert_eq!(s.stat_cache_load("/ctx").unwrap().len(), 3);
    }
}
