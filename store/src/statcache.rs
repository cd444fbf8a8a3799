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

impl Store {
    pub fn stat_cache_load(&self, context: &str) -> Result<HashMap<String, StatEntry>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached("SELECT path, dev, ino, size, mtime_ns, ctime_ns, mode, hash FROM stat_cache WHERE context = ?1")?;
        let rows = stmt.query_map([context], |r| {
            Ok((
                r.get::<_, String>(0)?,
                StatEntry {
                    dev: r.get::<_, i64>(1)? as u64,
                    ino: r.get::<_, i64>(2)? as u64,
                    size: r.get::<_, i64>(3)? as u64,
                    mtime_ns: r.get(4)?,
                    ctime_ns: r.get(5)?,
                    mode: r.get::<_, i64>(6)? as u32,
                    hash: r.get(7)?,
                },
            ))
        })?;
        let mut out = HashMap::new();
        for r in rows {
            let (p, e) = r?;
            out.insert(p, e);
        }
        Ok(out)
    }

    /// Replaces the stat cache of `context`, in one transaction.
    pub fn stat_cache_store(&self, context: &str, entries: &[(String, StatEntry)]) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.prepare_cached("DELETE FROM stat_cache WHERE context = ?1")?
            .execute([context])?;
        {
            let mut stmt = tx.prepare_cached("INSERT OR REPLACE INTO stat_cache (context, path, dev, ino, size, mtime_ns, ctime_ns, mode, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)")?;
            for (p, e) in entries {
                stmt.execute(params![
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
        }
        tx.commit()?;
        Ok(())
    }
}
