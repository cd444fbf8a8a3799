//! The build cache's records: one row per step, looked up by key, by
//! parent or by place, never by reading the whole table on a build's path.
//! Every read is counted (see [`Store::cache_stats`]) so that tests can
//! hold a build to reading what its own steps need.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rusqlite::{params, OptionalExtension, StatementStatus, TransactionBehavior};
use serde::{Deserialize, Serialize};

use crate::cachemount::CacheMounts;
use crate::error::{Result, StoreError};
use crate::records::BuildRecords;
use crate::store::{now_ms, now_secs, LayerInfo, Store};

/// A build cache record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheRecord {
    pub key: String,
    pub parent: Option<String>,
    /// The instruction as written.
    pub description: String,
    /// Where it was written (`Dockerfile:4`).
    pub source: String,
    pub stage: String,
    pub inputs: serde_json::Value,
    /// Opaque to the store.
    pub result: serde_json::Value,
    /// A record's layer keeps its blob and snapshot alive.
    pub layer: Option<LayerInfo>,
    /// Unix seconds.
    pub created: i64,
    /// Unix seconds.
    pub last_used: i64,
    pub hits: u64,
    /// Where an imported record came from (the `--cache-from` source),
    /// `None` for a record made on this root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

/// Where to look for the nearest earlier record of a step.
#[derive(Debug, Clone, Copy)]
pub enum CacheNear<'a> {
    /// The records whose parent is this key.
    Parent(&'a str),
    /// The records of this stage (Dockerfile and stage name) written at
    /// this source position (`Dockerfile:4`).
    Place { stage: &'a str, source: &'a str },
}

/// The newest record [`CacheNear`] a step, other than the step itself.
#[derive(Debug, Clone, Copy)]
pub struct NearestQuery<'a> {
    pub near: CacheNear<'a>,
    /// Only records of this instruction text.
    pub description: Option<&'a str>,
    /// The step's own key, never returned.
    pub not_key: &'a str,
    /// Only records created at or before this time (Unix seconds).
    pub created_at_most: Option<i64>,
}

/// What the cache functions of this store read so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Queries against the cache table.
    pub queries: u64,
    /// Rows of it read.
    pub rows: u64,
    /// Bytes of their `inputs` and `result` read.
    pub bytes: u64,
    /// SQLite virtual-machine steps the queries took: what they touched,
    /// rows scanned and index entries visited included.
    pub steps: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    queries: AtomicU64,
    rows: AtomicU64,
    bytes: AtomicU64,
    steps: AtomicU64,
}

/// A handle on a store's [`CacheStats`] that outlives the borrow of the
/// store (a command that hands its store on can still report them).
#[derive(Debug, Clone)]
pub struct CacheCounter(Arc<Counters>);

impl CacheCounter {
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            queries: self.0.queries.load(Ordering::Relaxed),
            rows: self.0.rows.load(Ordering::Relaxed),
            bytes: self.0.bytes.load(Ordering::Relaxed),
            steps: self.0.steps.load(Ordering::Relaxed),
        }
    }
}

const COLUMNS: &str =
    "key, parent, description, source, stage, inputs, result, layer, created, last_used, hits, origin";
/// The same, with `result` (a step's whole config) left unread: what
/// explaining a step needs.
const COLUMNS_NO_RESULT: &str =
    "key, parent, description, source, stage, inputs, 'null', layer, created, last_used, hits, origin";

/// The build cache view (`store.cache()`): cache records (the key of a
/// step to its result), cache mounts and build records.
pub struct BuildCache<'a> {
    pub(crate) store: &'a Store,
}

impl<'a> BuildCache<'a> {
    pub fn get(&self, key: &str) -> Result<Option<CacheRecord>> {
        self.store.cache_get(key)
    }

    pub fn has(&self, key: &str) -> Result<bool> {
        self.store.cache_has(key)
    }

    /// The record most like `q` (for `--explain`: why a step missed).
    pub fn nearest(&self, q: &NearestQuery) -> Result<Option<CacheRecord>> {
        self.store.cache_nearest(q)
    }

    pub fn by_prefix(&self, prefix: &str, limit: usize) -> Result<Vec<CacheRecord>> {
        self.store.cache_by_prefix(prefix, limit)
    }

    pub fn put(&self, rec: &CacheRecord) -> Result<()> {
        self.store.cache_put(rec)
    }

    pub fn put_many(&self, recs: &[CacheRecord]) -> Result<()> {
        self.store.cache_put_many(recs)
    }

    /// Marks records used now (LRU for prune).
    pub fn touch(&self, keys: &[String]) -> Result<()> {
        self.store.cache_touch(keys)
    }

    pub fn list(&self) -> Result<Vec<CacheRecord>> {
        self.store.cache_list()
    }

    /// What the cache functions have read since the store was opened.
    pub fn stats(&self) -> CacheStats {
        self.store.cache_stats()
    }

    /// `RUN --mount=type=cache` directories.
    pub fn mounts(&self) -> CacheMounts<'a> {
        CacheMounts { store: self.store }
    }

    /// What each image's last build reported.
    pub fn build_records(&self) -> BuildRecords<'a> {
        BuildRecords { store: self.store }
    }
}

impl Store {
    /// The build cache: records, cache mounts, build records.
    pub fn cache(&self) -> BuildCache<'_> {
        BuildCache { store: self }
    }

    /// Runs `sql` for at most one row and counts what it cost.
    fn read_one<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        row: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
        bytes: impl FnOnce(&T) -> usize,
    ) -> Result<Option<T>> {
        let (found, steps) = {
            let conn = self.conn();
            let mut stmt = conn.prepare_cached(sql)?;
            let found = stmt.query_row(params, row).optional()?;
            (found, stmt.reset_status(StatementStatus::VmStep))
        };
        let n = found.as_ref().map_or(0, bytes);
        self.count(found.is_some() as usize, n, steps);
        Ok(found)
    }

    /// Runs `sql` and decodes every row it gives, counting what it cost.
    fn read_all(&self, sql: &str, params: impl rusqlite::Params) -> Result<Vec<CacheRecord>> {
        let (rows, steps) = {
            let conn = self.conn();
            let mut stmt = conn.prepare_cached(sql)?;
            let rows = stmt
                .query_map(params, row_to_cache)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            (rows, stmt.reset_status(StatementStatus::VmStep))
        };
        let (mut out, mut bytes) = (Vec::with_capacity(rows.len()), 0);
        for r in rows {
            let (rec, n) = r?;
            out.push(rec);
            bytes += n;
        }
        self.count(out.len(), bytes, steps);
        Ok(out)
    }

    fn count(&self, rows: usize, bytes: usize, steps: i32) {
        let c = &self.shared.stats;
        c.queries.fetch_add(1, Ordering::Relaxed);
        c.rows.fetch_add(rows as u64, Ordering::Relaxed);
        c.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        c.steps.fetch_add(steps.max(0) as u64, Ordering::Relaxed);
    }

    /// What this store's cache functions have read since it was opened.
    pub fn cache_stats(&self) -> CacheStats {
        self.cache_counter().stats()
    }

    pub fn cache_counter(&self) -> CacheCounter {
        CacheCounter(self.shared.stats.clone())
    }

    pub fn cache_get(&self, key: &str) -> Result<Option<CacheRecord>> {
        let sql = format!("SELECT {COLUMNS} FROM cache WHERE key = ?1");
        let rec = self.read_one(&sql, [key], row_to_cache, |r| r.as_ref().map_or(0, |r| r.1))?;
        let Some((rec, _)) = rec.transpose()? else {
            return Ok(None);
        };
        // A record whose layer blob is gone (neither here nor known
        // remotely) cannot be reused.
        if let Some(l) = &rec.layer {
            if !self.blob_available(&l.digest) {
                return Ok(None);
            }
        }
        Ok(Some(rec))
    }

    /// Whether a record with this key exists, reading none of its fields:
    /// what a metadata step (no layer) needs to know.
    pub fn cache_has(&self, key: &str) -> Result<bool> {
        let sql = "SELECT 1 FROM cache WHERE key = ?1";
        Ok(self.read_one(sql, [key], |_| Ok(()), |_| 0)?.is_some())
    }

    /// The newest record near a step (see [`NearestQuery`]), without its
    /// `result` (left `null`): an indexed lookup of one row.
    pub fn cache_nearest(&self, q: &NearestQuery) -> Result<Option<CacheRecord>> {
        let tail = "key <> ?3 AND (?4 IS NULL OR description = ?4) \
                    AND (?5 IS NULL OR created <= ?5) ORDER BY created DESC, key LIMIT 1";
        let (sql, a, b) = match q.near {
            // ?2 is unused here: the parameters keep their numbers.
            CacheNear::Parent(p) => (
                format!("SELECT {COLUMNS_NO_RESULT} FROM cache WHERE parent = ?1 AND ?2 IS NULL AND {tail}"),
                p,
                None,
            ),
            CacheNear::Place { stage, source } => (
                format!("SELECT {COLUMNS_NO_RESULT} FROM cache WHERE stage = ?1 AND source = ?2 AND {tail}"),
                stage,
                Some(source),
            ),
        };
        let p = params![a, b, q.not_key, q.description, q.created_at_most];
        let rec = self.read_one(&sql, p, row_to_cache, |r| r.as_ref().map_or(0, |r| r.1))?;
        Ok(rec.transpose()?.map(|(r, _)| r))
    }

    /// The records whose key starts with `prefix` (hex digits), at most
    /// `limit` of them: a range of the key index, not a scan.
    pub fn cache_by_prefix(&self, prefix: &str, limit: usize) -> Result<Vec<CacheRecord>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM cache WHERE key >= ?1 AND key < ?1 || 'g' ORDER BY key LIMIT ?2"
        );
        self.read_all(&sql, params![prefix.to_ascii_lowercase(), limit as i64])
    }

    pub fn cache_put(&self, rec: &CacheRecord) -> Result<()> {
        self.cache_put_many(std::slice::from_ref(rec))
    }

    /// Writes `recs` in one transaction: a run of metadata steps costs
    /// one commit, not one each.
    pub fn cache_put_many(&self, recs: &[CacheRecord]) -> Result<()> {
        for l in recs.iter().filter_map(|r| r.layer.as_ref()) {
            self.record_layer(l, None)?;
        }
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT OR REPLACE INTO cache (key, parent, description, source, stage, inputs, result, layer, layer_digest, created, last_used, hits, used_ms, origin)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            )?;
            let ms = now_ms();
            for rec in recs {
                stmt.execute(params![
                    rec.key,
                    rec.parent,
                    rec.description,
                    rec.source,
                    rec.stage,
                    serde_json::to_string(&rec.inputs)?,
                    serde_json::to_string(&rec.result)?,
                    rec.layer.as_ref().map(serde_json::to_string).transpose()?,
                    rec.layer.as_ref().map(|l| l.digest.to_string()),
                    rec.created,
                    rec.last_used,
                    rec.hits as i64,
                    ms,
                    rec.origin
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// `last_used = now, hits += 1` for all `keys`, in one transaction.
    pub fn cache_touch(&self, keys: &[String]) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut stmt = tx.prepare_cached(
                "UPDATE cache SET last_used = ?2, hits = hits + 1, used_ms = ?3 WHERE key = ?1",
            )?;
            let (s, ms) = (now_secs(), now_ms());
            for k in keys {
                stmt.execute(params![k, s, ms])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Every record: for listing the cache (`kiln cache ls`), never on a
    /// build's path.
    pub fn cache_list(&self) -> Result<Vec<CacheRecord>> {
        self.read_all(
            &format!("SELECT {COLUMNS} FROM cache ORDER BY created, key"),
            [],
        )
    }
}

/// A decoded row and the bytes of its JSON fields.
type CacheRow = std::result::Result<(CacheRecord, usize), StoreError>;

fn row_to_cache(r: &rusqlite::Row<'_>) -> rusqlite::Result<CacheRow> {
    let inputs: String = r.get(5)?;
    let result: String = r.get(6)?;
    let layer: Option<String> = r.get(7)?;
    let bytes = inputs.len() + result.len();
    let build = || -> CacheRow {
        let rec = CacheRecord {
            key: r.get(0)?,
            parent: r.get(1)?,
            description: r.get(2)?,
            source: r.get(3)?,
            stage: r.get(4)?,
            inputs: serde_json::from_str(&inputs)?,
            result: serde_json::from_str(&result)?,
            layer: layer.as_deref().map(serde_json::from_str).transpose()?,
            created: r.get(8)?,
            last_used: r.get(9)?,
            hits: r.get::<_, i64>(10)? as u64,
            origin: r.get(11)?,
        };
        Ok((rec, bytes))
    };
    Ok(build())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: usize, parent: &str, description: &str, stage: &str) -> CacheRecord {
        CacheRecord {
            key: format!("{i:064x}"),
            parent: Some(parent.into()),
            description: description.into(),
            source: "Dockerfile:2".into(),
            stage: stage.into(),
            inputs: serde_json::json!({ "n": i }),
            result: serde_json::json!({ "config": "x".repeat(1000) }),
            layer: None,
            created: i as i64,
            last_used: i as i64,
            hits: 0,
            origin: None,
        }
    }

    #[test]
    fn an_imported_record_keeps_its_origin_until_a_step_writes_it_here() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut r = rec(1, "p", "RUN a", "s");
        r.origin = Some("type=registry,ref=h/a:cache".into());
        store.cache_put(&r).unwrap();
        let got = store.cache_get(&r.key).unwrap().unwrap();
        assert_eq!(got.origin.as_deref(), Some("type=registry,ref=h/a:cache"));
        assert_eq!(store.cache_list().unwrap()[0].origin, got.origin);
        r.origin = None;
        store.cache_put(&r).unwrap();
        assert_eq!(store.cache_get(&r.key).unwrap().unwrap().origin, None);
    }

    #[test]
    fn nearest_and_prefix_are_index_lookups_among_many_records() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut recs: Vec<CacheRecord> = (0..5000)
            .map(|i| rec(i, &format!("p{i}"), "RUN x", &format!("other-{i}")))
            .collect();
        recs.push(rec(9001, "p", "RUN a", "mine"));
        recs.push(rec(9002, "p", "RUN b", "mine"));
        recs.push(rec(9003, "q", "RUN a", "mine"));
        store.cache_put_many(&recs).unwrap();
        let before = store.cache_stats();
        let q = |near, description, created_at_most| NearestQuery {
            near,
            description,
            not_key: "none",
            created_at_most,
        };
        let by_parent = CacheNear::Parent("p");
        let got = store.cache_nearest(&q(by_parent, None, None)).unwrap();
        assert_eq!(got.unwrap().description, "RUN b", "the newest");
        let got = store
            .cache_nearest(&q(by_parent, Some("RUN a"), None))
            .unwrap()
            .unwrap();
        assert_eq!(got.inputs["n"], 9001);
        assert_eq!(
            got.result,
            serde_json::Value::Null,
            "the result is not read"
        );
        let place = CacheNear::Place {
            stage: "mine",
            source: "Dockerfile:2",
        };
        let got = store.cache_nearest(&q(place, Some("RUN a"), Some(9002)));
        assert_eq!(got.unwrap().unwrap().inputs["n"], 9001, "created <= 9002");
        assert!(store
            .cache_nearest(&q(CacheNear::Parent("none"), None, None))
            .unwrap()
            .is_none());
        let found = store.cache_by_prefix(&format!("{:064X}", 500), 2).unwrap();
        assert_eq!(found.len(), 1, "a whole key, in any case");
        assert_eq!(found[0].inputs["n"], 500);
        // 0x1f0..0x1ff: sixteen match, the limit says two.
        let found = store.cache_by_prefix(&format!("{:063x}", 0x1f), 2).unwrap();
        assert_eq!(found.len(), 2);
        let used = store.cache_stats();
        assert_eq!(used.queries - before.queries, 6);
        assert_eq!(used.rows - before.rows, 6);
        assert!(
            used.steps - before.steps < 500,
            "{} SQLite steps for 6 lookups among 5,003 records: a scan",
            used.steps - before.steps
        );
    }
}
