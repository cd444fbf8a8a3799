//! The build context: one scan per build, `.dockerignore` applied, and
//! content hashes (blake3) computed only for the paths a step selects,
//! through the store's stat cache so an unchanged file costs one `stat`.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{bail, Context as _, Result};
use kiln_parser::dockerignore::PatternMatcher;
use kiln_store::{StatEntry, Store};
use rayon::prelude::*;

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
}

/// A scanned context directory. Paths are relative, '/'-separated, without
/// a leading "./"; the root itself is "".
pub struct BuildContext {
    pub root: PathBuf,
    pub entries: BTreeMap<String, Entry>,
    /// Hashes known for this build: path -> blake3 hex (files only).
    hashes: Mutex<HashMap<String, String>>,
    stat_cache: HashMap<String, StatEntry>,
    dirty: Mutex<bool>,
}

fn entry_of(meta: &fs::Metadata, path: &Path) -> Result<Entry> {
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
        Some(
            fs::read_link(path)
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
    })
}

impl BuildContext {
    /// An empty context (`kiln build -`): COPY from it finds nothing.
    pub fn empty() -> BuildContext {
        BuildContext {
            root: PathBuf::new(),
            entries: BTreeMap::new(),
            hashes: Mutex::new(HashMap::new()),
            stat_cache: HashMap::new(),
            dirty: Mutex::new(false),
        }
    }

    /// Walks `root` in parallel (one rayon task per directory), leaving out
    /// what `ignore` excludes. Directories excluded with no `!` exception
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
        let entries = Mutex::new(BTreeMap::new());
        entries
            .lock()
            .expect("fresh mutex")
            .insert(String::new(), entry_of(&meta, &root)?);
        walk_dir(&root, "", ignore, &entries)?;
        let stat_cache = match store {
            Some(s) => s.stat_cache_load(&root.to_string_lossy())?,
            None => HashMap::new(),
        };
        Ok(BuildContext {
            root,
            entries: entries.into_inner().expect("walk finished"),
            hashes: Mutex::new(HashMap::new()),
            stat_cache,
            dirty: Mutex::new(false),
        })
    }

    pub fn get(&self, rel: &str) -> Option<&Entry> {
        self.entries.get(rel)
    }

    /// Every entry at or below `rel` (a directory, or a single file), in
    /// path order, `rel` itself first.
    pub fn subtree<'a>(&'a self, rel: &str) -> Vec<(&'a String, &'a Entry)> {
        let mut out: Vec<(&String, &Entry)> = self.entries.get_key_value(rel).into_iter().collect();
        if rel.is_empty() {
            out.extend(self.entries.iter().filter(|(k, _)| !k.is_empty()));
            return out;
        }
        let prefix = format!("{rel}/");
        out.extend(
            self.entries
                .range(prefix.clone()..)
                .take_while(|(k, _)| k.starts_with(&prefix)),
        );
        out
    }

    /// blake3 of each named file, from the stat cache when (dev, inode,
    /// size, mtime, ctime) are unchanged, else by reading it (in parallel).
    pub fn hash_files(&self, paths: &[&str]) -> Result<HashMap<String, String>> {
        let mut out = HashMap::new();
        let mut todo = Vec::new();
        {
            let known = self.hashes.lock().expect("hash map");
            for p in paths {
                if let Some(h) = known.get(*p) {
                    out.insert(p.to_string(), h.clone());
                    continue;
                }
                let Some(e) = self.entries.get(*p) else {
                    bail!("file {p} is not in the build context");
                };
                if let Some(c) = self.stat_cache.get(*p) {
                    if c.dev == e.dev
                        && c.ino == e.ino
                        && c.size == e.size
                        && c.mtime_ns == e.mtime_ns
                        && c.ctime_ns == e.ctime_ns
                        && c.mode == e.mode
                    {
                        out.insert(p.to_string(), c.hash.clone());
                        continue;
                    }
                }
                todo.push(*p);
            }
        }
        let computed: Vec<(String, String)> = todo
            .par_iter()
            .map(|p| {
                let full = self.root.join(p);
                let mut hasher = blake3::Hasher::new();
                let size = self.entries.get(*p).map(|e| e.size).unwrap_or(0);
                if size > 16 << 20 {
                    hasher
                        .update_mmap_rayon(&full)
                        .with_context(|| format!("hashing {}", full.display()))?;
                } else {
                    let data =
                        fs::read(&full).with_context(|| format!("reading {}", full.display()))?;
                    hasher.update(&data);
                }
                Ok((p.to_string(), hasher.finalize().to_hex().to_string()))
            })
            .collect::<Result<_>>()?;
        if !computed.is_empty() {
            *self.dirty.lock().expect("dirty flag") = true;
        }
        let mut known = self.hashes.lock().expect("hash map");
        for (p, h) in computed {
            known.insert(p.clone(), h.clone());
            out.insert(p, h);
        }
        for (p, h) in &out {
            known.entry(p.clone()).or_insert_with(|| h.clone());
        }
        Ok(out)
    }

    /// One line per path of the subtree at `rel`, relative to `rel`, with
    /// everything that reaches the result of a copy (not mtime, not owner:
    /// COPY from the context writes root-owned files).
    pub fn describe_subtree(&self, rel: &str) -> Result<BTreeMap<String, String>> {
        let items = self.subtree(rel);
        let files: Vec<&str> = items
            .iter()
            .filter(|(_, e)| e.kind == Kind::File)
            .map(|(k, _)| k.as_str())
            .collect();
        let hashes = self.hash_files(&files)?;
        let mut out = BTreeMap::new();
        for (k, e) in items {
            let name = if k.as_str() == rel {
                ".".to_string()
            } else if rel.is_empty() {
                k.clone()
            } else {
                k[rel.len() + 1..].to_string()
            };
            let detail = match e.kind {
                Kind::File => format!("f {:o} {} {}", e.mode, e.size, hashes[k.as_str()]),
                Kind::Symlink => format!("l -> {}", e.link_target.as_deref().unwrap_or("")),
                k2 => format!("{} {:o}", k2.letter(), e.mode),
            };
            out.insert(name, detail);
        }
        Ok(out)
    }

    /// Writes back what was hashed this build, only if anything was.
    pub fn save_stat_cache(&self, store: &Store) -> Result<()> {
        if !*self.dirty.lock().expect("dirty flag") || self.root.as_os_str().is_empty() {
            return Ok(());
        }
        let known = self.hashes.lock().expect("hash map");
        let mut rows: Vec<(String, StatEntry)> = Vec::with_capacity(known.len());
        for (p, h) in known.iter() {
            if let Some(e) = self.entries.get(p) {
                rows.push((
                    p.clone(),
                    StatEntry {
                        dev: e.dev,
                        ino: e.ino,
                        size: e.size,
                        mtime_ns: e.mtime_ns,
                        ctime_ns: e.ctime_ns,
                        mode: e.mode,
                        hash: h.clone(),
                    },
                ));
            }
        }
        // Keep what the previous builds learnt about paths not read today.
        for (p, s) in &self.stat_cache {
            if !known.contains_key(p) && self.entries.contains_key(p) {
                rows.push((p.clone(), s.clone()));
            }
        }
        store.stat_cache_store(&self.root.to_string_lossy(), &rows)?;
        Ok(())
    }
}

fn walk_dir(
    root: &Path,
    rel: &str,
    ignore: &PatternMatcher,
    out: &Mutex<BTreeMap<String, Entry>>,
) -> Result<()> {
    let dir = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    let mut subdirs = Vec::new();
    let mut found = Vec::new();
    for item in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let item = item?;
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
        let meta = item.metadata()?;
        let excluded = ignore.matches(&child);
        if excluded && !(meta.is_dir() && ignore.has_exclusions()) {
            continue;
        }
        if meta.is_dir() {
            subdirs.push((child.clone(), excluded));
        }
        if !excluded {
            found.push((child, entry_of(&meta, &item.path())?));
        }
    }
    out.lock().expect("entries").extend(found);
    subdirs
        .par_iter()
        .map(|(d, _)| walk_dir(root, d, ignore, out))
        .collect::<Result<Vec<()>>>()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(p: &[&str]) -> PatternMatcher {
        PatternMatcher::new(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
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
        let names: Vec<&str> = ctx.entries.keys().map(|s| s.as_str()).collect();
        assert!(names.contains(&"a/b/keep.txt"), "{names:?}");
        assert!(!names.contains(&"a/b/drop.txt"), "{names:?}");
        assert!(!names.contains(&"top.log"), "{names:?}");
        assert!(names.contains(&"app.py"));
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
}
