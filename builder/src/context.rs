//! The build context: one scan per build, `.dockerignore` applied, and
//! content hashes (blake3) computed only for the paths a step selects,
//! through the store's stat cache so an unchanged file costs one `stat`.
//!
//! The cached path (nothing changed) is the one that must cost no more than
//! the `stat` calls: the walk collects every entry into one vector sorted by
//! path; the store's stat cache, read in the same order, is merged into it
//! in one pass (no map of owned strings), and a step's sources are
//! described straight from that vector (a listing, or for big trees a
//! digest fed line by line into blake3).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::ops::Range;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use anyhow::{bail, Context as _, Result};
use kiln_parser::dockerignore::PatternMatcher;
use kiln_store::{StatEntry, Store};
use rayon::prelude::*;
use serde_json::{json, Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Other,
}

impl Kind {
    fn letter(self) -> char {
        match self {
            Kind::File => 'f',
            Kind::Dir => 'd',
            Kind::Symlink => 'l',
            Kind::Other => 'o',
        }
    }
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub kind: Kind,
    /// Permission and special bits (no file type).
    pub mode: u32,
    pub size: u64,
    pub dev: u64,
    pub ino: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub link_target: Option<String>,
    /// blake3 of a file's content: from the stat cache when the file's
    /// stat matched its record, else set once it is read in this build.
    hash: OnceLock<HexHash>,
}

/// A blake3 digest as its 64 lowercase hex digits: the form the stat cache
/// stores and the listing shows, so a cached file's hash is neither parsed
/// nor formatted again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HexHash([u8; 64]);

impl HexHash {
    fn parse(s: &str) -> Option<HexHash> {
        let b: [u8; 64] = s.as_bytes().try_into().ok()?;
        b.iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
            .then_some(HexHash(b))
    }

    fn of(h: blake3::Hash) -> HexHash {
        let mut b = [0u8; 64];
        b.copy_from_slice(h.to_hex().as_bytes());
        HexHash(b)
    }

    fn as_str(&self) -> &str {
        // Only ASCII hex digits get in (parse and of).
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

impl Entry {
    fn matches(&self, r: &kiln_store::StatRow<'_>) -> bool {
        self.kind == Kind::File
            && r.dev == self.dev
            && r.ino == self.ino
            && r.size == self.size
            && r.mtime_ns == self.mtime_ns
            && r.ctime_ns == self.ctime_ns
            && r.mode == self.mode
    }
}

/// A scanned context directory. Paths are relative, '/'-separated, without
/// a leading "./"; the root itself is "".
pub struct BuildContext {
    pub root: PathBuf,
    /// Sorted by path (byte order), unique; the root "" first.
    entries: Vec<(String, Entry)>,
    /// The stat cache records that no longer hold (the path is gone or
    /// excluded, its stat changed, the hash is malformed); `None` if the
    /// stat cache was not read.
    stale: Option<Vec<String>>,
    /// The entries read (not vouched for by the stat cache) this build.
    read: Mutex<Vec<usize>>,
    /// Wall clock when the walk began, in ns: a file changed since one
    /// second before that is not recorded (see `save_stat_cache`).
    scanned_at_ns: i64,
}

/// A file whose ctime is this close to the scan may still be being written
/// within one tick of the kernel's coarse file clock: a later write could
/// leave size, mtime and ctime as they were when it was read, and the
/// record would vouch for content it never saw (git's "racily clean").
/// Such a file is read again by the next build instead.
const RACY_NS: i64 = 1_000_000_000;

/// A COPY source's listing goes into the cache key's inputs as is while it
/// is small enough to be read in an explanation (`--explain` diffs it file
/// by file); above this many entries it is kept as its digest and size.
/// A listed entry is paid for on every cache hit: serialised for the key,
/// parsed back from the record, cloned for the trace. At 2,000 entries
/// that was 3 ms of the 7 ms of CPU of an unchanged rebuild (bench
/// copy200; 4096 was the limit then).
pub const MAX_LISTED: usize = 256;

fn entry_of(meta: &fs::Metadata, path: impl FnOnce() -> PathBuf) -> Result<Entry> {
    let ft = meta.file_type();
    let kind = if ft.is_file() {
        Kind::File
    } else if ft.is_dir() {
        Kind::Dir
    } else if ft.is_symlink() {
        Kind::Symlink
    } else {
        Kind::Other
    };
    let link_target = if kind == Kind::Symlink {
        let path = path();
        Some(
            fs::read_link(&path)
                .with_context(|| format!("reading symlink {}", path.display()))?
                .to_string_lossy()
                .into_owned(),
        )
    } else {
        None
    };
    Ok(Entry {
        kind,
        mode: meta.mode() & 0o7777,
        size: if kind == Kind::File { meta.len() } else { 0 },
        dev: meta.dev(),
        ino: meta.ino(),
        mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
        link_target,
        hash: OnceLock::new(),
    })
}

impl BuildContext {
    /// An empty context (`kiln build -`): COPY from it finds nothing.
    pub fn empty() -> BuildContext {
        BuildContext {
            root: PathBuf::new(),
            entries: Vec::new(),
            stale: None,
            read: Mutex::new(Vec::new()),
            scanned_at_ns: 0,
        }
    }

    /// Walks `root` (in parallel, one rayon task per directory, once it has
    /// proven big: see [`PARALLEL_AFTER`]), leaving out
    /// what `ignore` excludes, then takes from the store's stat cache the
    /// hash of every file whose (device, inode, size, mtime, ctime, mode)
    /// are those recorded. Directories excluded with no `!` exception
    /// anywhere are not descended into at all.
    pub fn scan(root: &Path, ignore: &PatternMatcher, store: Option<&Store>) -> Result<Self> {
        let root = fs::canonicalize(root)
            .with_context(|| format!("unable to prepare context: path {:?} not found", root))?;
        let meta = fs::metadata(&root)?;
        if !meta.is_dir() {
            bail!(
                "unable to prepare context: {} is not a directory",
                root.display()
            );
        }
        let scanned_at_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        let mut entries = vec![(String::new(), entry_of(&meta, || root.clone())?)];
        walk_dir(&root, "", ignore, &AtomicUsize::new(0), &mut entries)?;
        add_kept_parents(&root, &mut entries)?;
        // Byte order, the order of the stat cache's rows (and of BTreeMap).
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut ctx = BuildContext {
            root,
            entries,
            stale: None,
            read: Mutex::new(Vec::new()),
            scanned_at_ns,
        };
        if let Some(store) = store {
            ctx.stale = Some(ctx.merge_stat_cache(store)?);
        }
        Ok(ctx)
    }

    /// One pass over the stat cache rows (sorted by path) and the entries;
    /// returns the paths of the records that no longer hold.
    fn merge_stat_cache(&self, store: &Store) -> Result<Vec<String>> {
        let mut i = 0;
        let entries = &self.entries;
        let mut stale = Vec::new();
        store.stat_cache_visit(&self.root.to_string_lossy(), |row| {
            while i < entries.len() && entries[i].0.as_str() < row.path {
                i += 1;
            }
            let valid = match entries.get(i) {
                Some((p, e)) if p == row.path && e.matches(&row) => {
                    // A malformed hash is a miss: the file is read again.
                    HexHash::parse(row.hash).map(|h| e.hash.set(h)).is_some()
                }
                _ => false,
            };
            if !valid {
                stale.push(row.path.to_string());
            }
        })?;
        Ok(stale)
    }

    fn index(&self, rel: &str) -> Option<usize> {
        self.entries
            .binary_search_by(|(k, _)| k.as_str().cmp(rel))
            .ok()
    }

    pub fn get(&self, rel: &str) -> Option<&Entry> {
        self.index(rel).map(|i| &self.entries[i].1)
    }

    /// Resolves `path` (relative to the context, or absolute: the same)
    /// in the scanned context the way `openat2(RESOLVE_IN_ROOT)` resolves
    /// in a directory: each symlink on the way is followed, an absolute
    /// target starts again at the context's root and `..` stops there.
    /// Only what the scan kept is ever found, so nothing `.dockerignore`
    /// excludes and nothing outside the context can be reached; the host's
    /// filesystem is not consulted. With `follow_last` false a symlink in
    /// the last component is the result. Returns the resolved path
    /// (relative, "" for the root), or `None` when it names nothing the
    /// context holds.
    pub fn resolve(&self, path: &str, follow_last: bool) -> Result<Option<String>> {
        let mut todo: Vec<String> = path.split('/').rev().map(String::from).collect();
        let mut done: Vec<String> = Vec::new();
        let mut hops = 0;
        while let Some(c) = todo.pop() {
            match c.as_str() {
                "" | "." => continue,
                ".." => {
                    done.pop();
                    continue;
                }
                _ => done.push(c),
            }
            let last = todo.iter().all(|c| c.is_empty() || c == ".");
            let Some(e) = self.get(&done.join("/")) else {
                return Ok(None);
            };
            match e.kind {
                Kind::Symlink if !last || follow_last => {
                    hops += 1;
                    if hops > 40 {
                        bail!(
                            "\"/{}\": too many levels of symbolic links",
                            path.trim_start_matches('/')
                        );
                    }
                    let target = e.link_target.as_deref().unwrap_or_default();
                    done.pop();
                    if target.starts_with('/') {
                        done.clear();
                    }
                    todo.extend(target.split('/').rev().map(String::from));
                }
                Kind::Dir => {}
                _ if last => {}
                // A file where a directory is needed: nothing is there.
                _ => return Ok(None),
            }
        }
        let rel = done.join("/");
        Ok(self.get(&rel).is_some().then_some(rel))
    }

    /// For explanations of large COPY sources (kept in the key as a
    /// digest): the files at or below `rel` that this build read again
    /// (new, or their stat changed since the stat cache vouched for them),
    /// and those the stat cache knew there that are gone.
    pub fn changed_under(&self, rel: &str) -> (Vec<String>, Vec<String>) {
        let (own, below) = self.subtree_range(rel);
        let inside = |i: usize| own == Some(i) || below.contains(&i);
        let mut read: Vec<String> = self
            .read
            .lock()
            .map(|r| r.iter().copied().filter(|&i| inside(i)).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .filter(|&i| self.entries[i].1.kind == Kind::File)
            .map(|i| self.entries[i].0.clone())
            .collect();
        read.sort();
        read.dedup();
        let prefix = format!("{rel}/");
        let gone = self
            .stale
            .iter()
            .flatten()
            .filter(|p| rel.is_empty() || p.as_str() == rel || p.starts_with(&prefix))
            .filter(|p| self.index(p).is_none())
            .cloned()
            .collect();
        (read, gone)
    }

    /// Every entry, in path order, the root ("") first.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Entry)> {
        self.entries.iter().map(|(k, e)| (k, e))
    }

    /// The indices of `rel` itself (if present) and of everything below it.
    /// The descendants are contiguous (they share the prefix "rel/") but
    /// need not follow `rel` directly ("a" < "a-b" < "a/x").
    fn subtree_range(&self, rel: &str) -> (Option<usize>, Range<usize>) {
        let own = self.index(rel);
        if rel.is_empty() {
            return (own, own.map_or(0, |i| i + 1)..self.entries.len());
        }
        let prefix = format!("{rel}/");
        let start = self
            .entries
            .partition_point(|(k, _)| k.as_str() < prefix.as_str());
        let end =
            start + self.entries[start..].partition_point(|(k, _)| k.starts_with(prefix.as_str()));
        (own, start..end)
    }

    /// Every entry at or below `rel` (a directory, or a single file), in
    /// path order, `rel` itself first.
    pub fn subtree<'a>(&'a self, rel: &str) -> Vec<(&'a String, &'a Entry)> {
        let (own, below) = self.subtree_range(rel);
        own.into_iter()
            .chain(below)
            .map(|i| (&self.entries[i].0, &self.entries[i].1))
            .collect()
    }

    /// Makes sure every file among `idx` has its hash: the ones the stat
    /// cache did not vouch for are read, in parallel.
    fn ensure_hashes(&self, idx: impl Iterator<Item = usize>) -> Result<()> {
        let todo: Vec<usize> = idx
            .filter(|&i| {
                let e = &self.entries[i].1;
                e.kind == Kind::File && e.hash.get().is_none()
            })
            .collect();
        if todo.is_empty() {
            return Ok(());
        }
        self.read.lock().expect("read list").extend(&todo);
        todo.par_iter().try_for_each(|&i| {
            let (p, e) = &self.entries[i];
            let full = self.root.join(p);
            let mut hasher = blake3::Hasher::new();
            if e.size > 16 << 20 {
                hasher
                    .update_mmap_rayon(&full)
                    .with_context(|| format!("hashing {}", full.display()))?;
            } else {
                let data =
                    fs::read(&full).with_context(|| format!("reading {}", full.display()))?;
                hasher.update(&data);
            }
            // Another step may have hashed it meanwhile: same content.
            let _ = e.hash.set(HexHash::of(hasher.finalize()));
            Ok(())
        })
    }

    /// The subtree at `rel` as (name relative to `rel`, entry) in the
    /// order of the names, `rel` itself named "." and placed where "."
    /// sorts; its files hashed.
    fn named_subtree(&self, rel: &str) -> Result<Vec<(&str, &Entry)>> {
        let (own, below) = self.subtree_range(rel);
        self.ensure_hashes(own.into_iter().chain(below.clone()))?;
        let cut = if rel.is_empty() { 0 } else { rel.len() + 1 };
        let mut out = Vec::with_capacity(below.len() + 1);
        let mut dot = own.map(|i| &self.entries[i].1);
        for (k, e) in &self.entries[below] {
            let name = &k[cut..];
            if name > "." {
                if let Some(d) = dot.take() {
                    out.push((".", d));
                }
            }
            out.push((name, e));
        }
        if let Some(d) = dot {
            out.push((".", d));
        }
        Ok(out)
    }

    /// One line per path of the subtree at `rel`, relative to `rel`, with
    /// everything that reaches the result of a copy (not mtime, not owner:
    /// COPY from the context writes root-owned files).
    pub fn describe_subtree(&self, rel: &str) -> Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        for (name, e) in self.named_subtree(rel)? {
            let mut line = String::new();
            describe(e, &mut line);
            out.insert(name.to_string(), line);
        }
        Ok(out)
    }

    /// What a copy of the subtree at `rel` (less what `exclude` matches,
    /// never "." itself) depends on, as it goes into the step's cache key:
    /// the listing of [`describe_subtree`](Self::describe_subtree) as a JSON
    /// object when it has at most `max_listed` entries, else
    /// `{"entries": n, "digest": blake3 of the lines "name\0line\n"}`.
    pub fn summarise_subtree(
        &self,
        rel: &str,
        exclude: Option<&PatternMatcher>,
        max_listed: usize,
    ) -> Result<Value> {
        let named = self.named_subtree(rel)?;
        let kept = |name: &str| name == "." || exclude.is_none_or(|x| !x.matches(name));
        let items: Vec<(&str, &Entry)> = match exclude {
            None => named,
            Some(_) => named.into_iter().filter(|(n, _)| kept(n)).collect(),
        };
        let mut line = String::with_capacity(96);
        if items.len() <= max_listed {
            let mut map = Map::new();
            for (name, e) in items {
                line.clear();
                describe(e, &mut line);
                map.insert(name.to_string(), Value::String(line.clone()));
            }
            return Ok(Value::Object(map));
        }
        let mut h = blake3::Hasher::new();
        for (name, e) in &items {
            line.clear();
            describe(e, &mut line);
            h.update(name.as_bytes());
            h.update(b"\0");
            h.update(line.as_bytes());
            h.update(b"\n");
        }
        Ok(json!({"entries": items.len(), "digest": h.finalize().to_hex().as_str()}))
    }

    /// Writes back to the stat cache what this build learnt: a record for
    /// each file read (with the stat taken before reading it) unless it
    /// changed within [`RACY_NS`] of the scan, and the removal of the
    /// records that no longer hold. Nothing when nothing was read and
    /// nothing went stale.
    pub fn save_stat_cache(&self, store: &Store) -> Result<()> {
        if self.root.as_os_str().is_empty() {
            return Ok(());
        }
        let mut read = self.read.lock().expect("read list").clone();
        read.sort_unstable();
        read.dedup();
        let record = |i: usize| -> Option<(String, StatEntry)> {
            let (p, e) = &self.entries[i];
            let h = e.hash.get()?;
            if e.ctime_ns > self.scanned_at_ns.saturating_sub(RACY_NS) {
                return None;
            }
            Some((
                p.clone(),
                StatEntry {
                    dev: e.dev,
                    ino: e.ino,
                    size: e.size,
                    mtime_ns: e.mtime_ns,
                    ctime_ns: e.ctime_ns,
                    mode: e.mode,
                    hash: h.as_str().to_string(),
                },
            ))
        };
        let context = self.root.to_string_lossy();
        match &self.stale {
            Some(stale) => {
                let upsert: Vec<(String, StatEntry)> =
                    read.into_iter().filter_map(record).collect();
                store.stat_cache_update(&context, stale, &upsert)?;
            }
            // Scanned without the stat cache: what it holds is unknown,
            // so it is replaced by every hash known now.
            None if !read.is_empty() => {
                let all: Vec<(String, StatEntry)> =
                    (0..self.entries.len()).filter_map(record).collect();
                store.stat_cache_store(&context, &all)?;
            }
            None => {}
        }
        Ok(())
    }
}

/// The line of one entry: "f <mode> <size> <blake3>", "l -> <target>",
/// "d <mode>", "o <mode>".
fn describe(e: &Entry, out: &mut String) {
    // Writing into a String cannot fail.
    let _ = match e.kind {
        Kind::File => match e.hash.get() {
            Some(h) => write!(out, "f {:o} {} {}", e.mode, e.size, h.as_str()),
            // named_subtree hashed every file first.
            None => write!(out, "f {:o} {} ?", e.mode, e.size),
        },
        Kind::Symlink => write!(out, "l -> {}", e.link_target.as_deref().unwrap_or("")),
        k => write!(out, "{} {:o}", k.letter(), e.mode),
    };
}

/// Past this many entries the walk goes on in parallel, one rayon task per
/// directory. Below it a single thread is faster: measured on the 2-core
/// bench machine in a fresh process (a build is one), 2,000 files are
/// walked in 2.0 ms by one thread and in 3.1 ms by the pool, whose start
/// costs more than it saves; 10,000 files take 12 ms either way.
const PARALLEL_AFTER: usize = 20_000;

/// Appends the entries below `rel` to `out` (unsorted); `seen` counts the
/// entries found so far by the whole walk.
/// A directory `.dockerignore` excludes still comes with what an exception
/// keeps inside it, with its own metadata, as in BuildKit (`*` then
/// `!dir/file` gives `dir` and `dir/file`).
fn add_kept_parents(root: &Path, entries: &mut Vec<(String, Entry)>) -> Result<()> {
    let have: std::collections::HashSet<&str> = entries.iter().map(|(p, _)| p.as_str()).collect();
    let mut missing = std::collections::BTreeSet::new();
    for (p, _) in entries.iter() {
        let mut cur = p.as_str();
        while let Some((parent, _)) = cur.rsplit_once('/') {
            if have.contains(parent) || !missing.insert(parent.to_string()) {
                break;
            }
            cur = parent;
        }
    }
    for p in missing {
        let path = root.join(&p);
        let meta =
            fs::symlink_metadata(&path).with_context(|| format!("reading {}", path.display()))?;
        entries.push((p, entry_of(&meta, || path.clone())?));
    }
    Ok(())
}

fn walk_dir(
    root: &Path,
    rel: &str,
    ignore: &PatternMatcher,
    seen: &AtomicUsize,
    out: &mut Vec<(String, Entry)>,
) -> Result<()> {
    let dir = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    let mut subdirs = Vec::new();
    let mut found = 0;
    for item in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let item = item?;
        found += 1;
        let name = item.file_name();
        let Some(name) = name.to_str() else {
            bail!(
                "context path {}/{:?} is not valid UTF-8",
                dir.display(),
                name
            );
        };
        let child = if rel.is_empty() {
            name.to_string()
        } else {
            format!("{rel}/{name}")
        };
        // statx relative to the directory's descriptor, not following a
        // symlink.
        let meta = item.metadata()?;
        let excluded = ignore.matches(&child);
        if excluded && !(meta.is_dir() && ignore.has_exclusions()) {
            continue;
        }
        if meta.is_dir() {
            subdirs.push(child.clone());
        }
        if !excluded {
            let entry = entry_of(&meta, || item.path())?;
            out.push((child, entry));
        }
    }
    seen.fetch_add(found, Ordering::Relaxed);
    // One thread while the tree looks small; once it has proven big, the
    // remaining subdirectories are walked in parallel.
    let mut next = 0;
    while next < subdirs.len()
        && (seen.load(Ordering::Relaxed) < PARALLEL_AFTER || subdirs.len() - next < 2)
    {
        walk_dir(root, &subdirs[next], ignore, seen, out)?;
        next += 1;
    }
    if next == subdirs.len() {
        // Even an empty parallel iterator starts rayon's global pool: two
        // threads that spin (sched_yield) and are torn down at exit, for
        // nothing, in every build of a small context.
        return Ok(());
    }
    let below = subdirs[next..]
        .par_iter()
        .map(|d| {
            let mut v = Vec::new();
            walk_dir(root, d, ignore, seen, &mut v).map(|()| v)
        })
        .collect::<Result<Vec<_>>>()?;
    for v in below {
        out.extend(v);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(p: &[&str]) -> PatternMatcher {
        PatternMatcher::new(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn an_exception_inside_an_excluded_directory_brings_the_directory() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("other/deep")).unwrap();
        fs::write(d.path().join("other/deep/o.txt"), "o").unwrap();
        fs::write(d.path().join("other/drop.txt"), "x").unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(d.path().join("other"), fs::Permissions::from_mode(0o700)).unwrap();
        let ctx =
            BuildContext::scan(d.path(), &matcher(&["*", "!other/deep/o.txt"]), None).unwrap();
        let dir = ctx.get("other").expect("the excluded parent comes along");
        assert_eq!(dir.kind, Kind::Dir);
        assert_eq!(dir.mode & 0o7777, 0o700, "with its own mode");
        assert!(ctx.get("other/deep").is_some());
        assert!(ctx.get("other/deep/o.txt").is_some());
        assert!(ctx.get("other/drop.txt").is_none());
    }

    #[test]
    fn scan_applies_dockerignore_and_exceptions() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("a/b")).unwrap();
        fs::write(d.path().join("a/b/keep.txt"), "k").unwrap();
        fs::write(d.path().join("a/b/drop.txt"), "d").unwrap();
        fs::write(d.path().join("top.log"), "l").unwrap();
        fs::write(d.path().join("app.py"), "p").unwrap();
        let ctx =
            BuildContext::scan(d.path(), &matcher(&["a", "!a/b/keep.txt", "*.log"]), None).unwrap();
        let names: Vec<&str> = ctx.iter().map(|(k, _)| k.as_str()).collect();
        assert!(names.contains(&"a/b/keep.txt"), "{names:?}");
        assert!(!names.contains(&"a/b/drop.txt"), "{names:?}");
        assert!(!names.contains(&"top.log"), "{names:?}");
        assert!(names.contains(&"app.py"));
    }

    #[test]
    fn resolve_stays_in_the_scanned_context() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        fs::create_dir_all(p.join("sub")).unwrap();
        fs::write(p.join("sub/f"), "f").unwrap();
        fs::write(p.join("secret.key"), "s").unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("host"), "h").unwrap();
        let link = |t: &str, n: &str| std::os::unix::fs::symlink(t, p.join(n)).unwrap();
        link("/sub", "abs");
        link("../../../sub", "up");
        link("/", "root");
        link("secret.key", "alias");
        link(outside.path().join("host").to_str().unwrap(), "host");
        link("loop", "loop");
        link("sub/f", "file");
        let ctx = BuildContext::scan(p, &matcher(&["secret.key"]), None).unwrap();
        let r = |path: &str| ctx.resolve(path, true).unwrap();
        assert_eq!(r("abs/f").as_deref(), Some("sub/f"));
        assert_eq!(r("/up/f").as_deref(), Some("sub/f"));
        assert_eq!(r("root").as_deref(), Some(""));
        assert_eq!(r("root/root/abs").as_deref(), Some("sub"));
        assert_eq!(r("../../sub/./f").as_deref(), Some("sub/f"));
        // Ignored, outside, through a file, missing: nothing.
        assert_eq!(r("alias"), None);
        assert_eq!(r("host"), None);
        assert_eq!(r("file/x"), None);
        assert_eq!(r("nope"), None);
        // The last link kept when asked; a loop is an error naming it.
        assert_eq!(
            ctx.resolve("alias", false).unwrap().as_deref(),
            Some("alias")
        );
        let e = ctx.resolve("loop", true).unwrap_err().to_string();
        assert!(e.contains("\"/loop\": too many levels"), "{e}");
    }

    #[test]
    fn describe_ignores_mtime_but_sees_content_and_mode() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("f"), "one").unwrap();
        let m = matcher(&[]);
        let a = BuildContext::scan(d.path(), &m, None)
            .unwrap()
            .describe_subtree("")
            .unwrap();
        let t = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        fs::File::options()
            .write(true)
            .open(d.path().join("f"))
            .unwrap()
            .set_modified(t)
            .unwrap();
        let b = BuildContext::scan(d.path(), &m, None)
            .unwrap()
            .describe_subtree("")
            .unwrap();
        assert_eq!(a, b, "mtime must not change the description");
        fs::write(d.path().join("f"), "two").unwrap();
        let c = BuildContext::scan(d.path(), &m, None)
            .unwrap()
            .describe_subtree("")
            .unwrap();
        assert_ne!(a, c);
    }

    fn store() -> (tempfile::TempDir, Store) {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("root")).unwrap();
        (d, s)
    }

    #[test]
    fn subtree_takes_the_descendants_wherever_they_sort() {
        let d = tempfile::tempdir().unwrap();
        for dir in ["a/x", "a-b", "a.c", "b"] {
            fs::create_dir_all(d.path().join(dir)).unwrap();
        }
        fs::write(d.path().join("a/x/f"), "1").unwrap();
        fs::write(d.path().join("a/g"), "2").unwrap();
        fs::write(d.path().join("a-b/h"), "3").unwrap();
        let ctx = BuildContext::scan(d.path(), &matcher(&[]), None).unwrap();
        let names = |rel: &str| -> Vec<String> {
            ctx.subtree(rel)
                .into_iter()
                .map(|(k, _)| k.clone())
                .collect()
        };
        assert_eq!(names("a"), ["a", "a/g", "a/x", "a/x/f"]);
        assert_eq!(names("a-b"), ["a-b", "a-b/h"]);
        assert_eq!(names("a/x/f"), ["a/x/f"]);
        assert!(names("nope").is_empty());
        assert_eq!(names("").len(), 9, "{:?}", names(""));
        assert_eq!(names("")[0], "");
        let all: Vec<&String> = ctx.iter().map(|(k, _)| k).collect();
        let mut sorted = all.clone();
        sorted.sort();
        assert_eq!(all, sorted);
    }

    /// The listing of the previous implementation (a BTreeMap of names),
    /// which cache keys of existing records were computed from.
    fn reference_summary(listing: &BTreeMap<String, String>, max: usize) -> Value {
        if listing.len() <= max {
            return json!(listing);
        }
        let mut h = blake3::Hasher::new();
        for (k, v) in listing {
            h.update(k.as_bytes());
            h.update(b"\0");
            h.update(v.as_bytes());
            h.update(b"\n");
        }
        json!({"entries": listing.len(), "digest": h.finalize().to_hex().to_string()})
    }

    #[test]
    fn summary_is_the_listing_or_its_digest_with_dot_in_sorted_place() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("src/sub")).unwrap();
        // Names sorting before "." ('+', '-') and after it.
        for f in [
            "src/+plus",
            "src/-dash",
            "src/.hidden",
            "src/app.py",
            "src/sub/x",
            "top",
        ] {
            fs::write(d.path().join(f), f).unwrap();
        }
        std::os::unix::fs::symlink("app.py", d.path().join("src/link")).unwrap();
        let ctx = BuildContext::scan(d.path(), &matcher(&[]), None).unwrap();
        for rel in ["src", "", "top", "src/sub"] {
            let listing = ctx.describe_subtree(rel).unwrap();
            assert!(listing.contains_key("."), "{listing:?}");
            for max in [MAX_LISTED, 2] {
                assert_eq!(
                    ctx.summarise_subtree(rel, None, max).unwrap(),
                    reference_summary(&listing, max),
                    "rel {rel:?} max {max}"
                );
            }
        }
        let listing = ctx.describe_subtree("src").unwrap();
        assert_eq!(listing["link"], "l -> app.py");
        assert_eq!(
            listing["app.py"],
            format!("f 644 10 {}", blake3::hash(b"src/app.py").to_hex())
        );
        // --exclude never drops "." and matches names relative to the source.
        let x = matcher(&["*.py", "sub"]);
        let kept: BTreeMap<String, String> = listing
            .iter()
            .filter(|(k, _)| *k == "." || !x.matches(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        assert!(!kept.contains_key("app.py") && !kept.contains_key("sub"));
        for max in [MAX_LISTED, 1] {
            assert_eq!(
                ctx.summarise_subtree("src", Some(&x), max).unwrap(),
                reference_summary(&kept, max)
            );
        }
    }

    /// As if the scan ran a while after the files were written.
    fn trusting(mut ctx: BuildContext) -> BuildContext {
        ctx.scanned_at_ns = i64::MAX;
        ctx
    }

    #[test]
    fn a_file_changed_just_before_the_scan_is_not_recorded() {
        let (_sd, store) = store();
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("fresh"), "x").unwrap();
        let ctx = BuildContext::scan(d.path(), &matcher(&[]), Some(&store)).unwrap();
        ctx.describe_subtree("").unwrap();
        ctx.save_stat_cache(&store).unwrap();
        let root = ctx.root.to_string_lossy().into_owned();
        assert!(store.stat_cache_load(&root).unwrap().is_empty());
        let ctx = trusting(BuildContext::scan(d.path(), &matcher(&[]), Some(&store)).unwrap());
        ctx.describe_subtree("").unwrap();
        ctx.save_stat_cache(&store).unwrap();
        assert_eq!(store.stat_cache_load(&root).unwrap().len(), 1);
    }

    #[test]
    fn stat_cache_vouches_for_unchanged_files_only() {
        let (_sd, store) = store();
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("same"), "same").unwrap();
        fs::write(d.path().join("edited"), "before").unwrap();
        fs::write(d.path().join("bad"), "bad").unwrap();
        let m = matcher(&[]);
        let first = trusting(BuildContext::scan(d.path(), &m, Some(&store)).unwrap());
        first.describe_subtree("").unwrap();
        first.save_stat_cache(&store).unwrap();
        let root = first.root.to_string_lossy().into_owned();
        let rows = store.stat_cache_load(&root).unwrap();
        assert_eq!(rows.len(), 3, "{rows:?}");
        assert_eq!(rows["same"].hash, blake3::hash(b"same").to_hex().as_str());

        // A record whose stat matches is trusted as it is: give "same" a
        // hash that is not its content's, "bad" one that is not hex.
        let mut forged: Vec<(String, StatEntry)> = rows.into_iter().collect();
        for (p, e) in &mut forged {
            match p.as_str() {
                "same" => e.hash = "ab".repeat(32),
                "bad" => e.hash = "zz".repeat(32),
                _ => {}
            }
        }
        store.stat_cache_store(&root, &forged).unwrap();
        fs::write(d.path().join("edited"), "after!").unwrap();
        let second = trusting(BuildContext::scan(d.path(), &m, Some(&store)).unwrap());
        let l = second.describe_subtree("").unwrap();
        assert_eq!(l["same"], format!("f 644 4 {}", "ab".repeat(32)));
        assert_eq!(
            l["edited"],
            format!("f 644 6 {}", blake3::hash(b"after!").to_hex())
        );
        assert_eq!(
            l["bad"],
            format!("f 644 3 {}", blake3::hash(b"bad").to_hex())
        );
        second.save_stat_cache(&store).unwrap();
        let rows = store.stat_cache_load(&root).unwrap();
        assert_eq!(
            rows["edited"].hash,
            blake3::hash(b"after!").to_hex().as_str()
        );
        assert_eq!(rows["bad"].hash, blake3::hash(b"bad").to_hex().as_str());

        // A record for a path that is not in the context is dropped even
        // when nothing is read; the others stay as they are.
        let mut rows: Vec<(String, StatEntry)> =
            store.stat_cache_load(&root).unwrap().into_iter().collect();
        let ghost = rows[0].1.clone();
        rows.push(("ghost".into(), ghost));
        store.stat_cache_store(&root, &rows).unwrap();
        let third = trusting(BuildContext::scan(d.path(), &m, Some(&store)).unwrap());
        third.describe_subtree("").unwrap();
        assert!(third.read.lock().unwrap().is_empty());
        third.save_stat_cache(&store).unwrap();
        let rows = store.stat_cache_load(&root).unwrap();
        assert!(!rows.contains_key("ghost"), "{rows:?}");
        assert_eq!(rows["same"].hash, "ab".repeat(32));
        // One file read: its record replaced, a deleted file's dropped.
        fs::write(d.path().join("edited"), "again").unwrap();
        fs::remove_file(d.path().join("bad")).unwrap();
        let fourth = trusting(BuildContext::scan(d.path(), &m, Some(&store)).unwrap());
        fourth.describe_subtree("").unwrap();
        fourth.save_stat_cache(&store).unwrap();
        let rows = store.stat_cache_load(&root).unwrap();
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!(
            rows["edited"].hash,
            blake3::hash(b"again").to_hex().as_str()
        );
        assert_eq!(rows["same"].hash, "ab".repeat(32));
        // Scanned without the stat cache: saving replaces it whole.
        let fifth = trusting(BuildContext::scan(d.path(), &m, None).unwrap());
        fifth.describe_subtree("").unwrap();
        fifth.save_stat_cache(&store).unwrap();
        let rows = store.stat_cache_load(&root).unwrap();
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!(rows["same"].hash, blake3::hash(b"same").to_hex().as_str());
    }

    #[test]
    fn a_big_tree_is_walked_in_parallel_to_the_same_result() {
        let d = tempfile::tempdir().unwrap();
        let dirs = 40;
        let per = PARALLEL_AFTER / dirs + 50;
        for i in 0..dirs {
            let sub = d.path().join(format!("d{i:02}"));
            fs::create_dir(&sub).unwrap();
            for j in 0..per {
                fs::File::create(sub.join(format!("{j}"))).unwrap();
            }
        }
        let ctx = BuildContext::scan(d.path(), &matcher(&["d07/1*", "d3*"]), None).unwrap();
        let mut expect = vec![String::new()];
        for i in 0..dirs {
            if i >= 30 {
                continue;
            }
            expect.push(format!("d{i:02}"));
            for j in 0..per {
                if !(i == 7 && j.to_string().starts_with('1')) {
                    expect.push(format!("d{i:02}/{j}"));
                }
            }
        }
        expect.sort();
        let got: Vec<String> = ctx.iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(got.len(), expect.len());
        assert!(got == expect);
    }
}
