//! Build-context hashing throughput (issue 7): cold (every file read and
//! hashed with blake3) against the stat cache (one `stat` per file and a
//! lookup of (dev, inode, size, mtime, ctime, mode) in the records the store
//! kept from the previous build), in logical GB/s of context.
//!
//!     cargo bench -p kiln-builder --bench context_hash
//!
//! `kiln` is a binary crate, so this bench cannot call its `BuildContext`.
//! It replays the same algorithm with the same crates, step for step as
//! builder/src/context.rs does it: a walk with an `lstat` (statx on the
//! directory's fd) of every entry, on one thread until it has seen 20,000
//! entries and then with one rayon task per directory, each directory
//! returning its own vector, sorted by path at the end;
//! then the store's stat cache rows, visited in path order with
//! `Store::stat_cache_visit`, merged into that vector in one pass; files
//! without a matching record are read and hashed with blake3 in parallel
//! (`update_mmap_rayon` above 16 MiB); last, the listing lines
//! ("f <mode> <size> <blake3>") that a COPY of the whole context is keyed
//! by. If the builder's algorithm changes, change this file with it; the
//! end-to-end figure (the `kiln` binary on the same contexts) is in
//! bench/scaling.sh.
//!
//! "Cold" means cold for kiln (no stat cache), not for the kernel: the
//! files are in the page cache, as they are right after being edited.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::hint::black_box;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kiln_store::{StatEntry, Store};
use rayon::prelude::*;

#[derive(Clone)]
struct Meta {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    mode: u32,
    is_file: bool,
}

fn meta_of(m: &fs::Metadata) -> Meta {
    Meta {
        dev: m.dev(),
        ino: m.ino(),
        size: m.len(),
        mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
        mode: m.mode() & 0o7777,
        is_file: m.file_type().is_file(),
    }
}

/// builder/src/context.rs's PARALLEL_AFTER: one thread until the walk has
/// seen this many entries, then one rayon task per remaining directory.
const PARALLEL_AFTER: usize = 20_000;

fn walk(root: &Path, rel: &str, seen: &AtomicUsize, out: &mut Vec<(String, Meta)>) {
    let dir = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    let mut subdirs = Vec::new();
    let mut found = 0;
    for item in fs::read_dir(&dir).expect("read_dir") {
        let item = item.expect("dir entry");
        found += 1;
        let name = item.file_name().into_string().expect("utf-8 name");
        let child = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let m = item.metadata().expect("lstat");
        if m.is_dir() {
            subdirs.push(child.clone());
        }
        out.push((child, meta_of(&m)));
    }
    seen.fetch_add(found, Ordering::Relaxed);
    let mut next = 0;
    while next < subdirs.len()
        && (seen.load(Ordering::Relaxed) < PARALLEL_AFTER || subdirs.len() - next < 2)
    {
        walk(root, &subdirs[next], seen, out);
        next += 1;
    }
    let below: Vec<Vec<(String, Meta)>> = subdirs[next..]
        .par_iter()
        .map(|d| {
            let mut v = Vec::new();
            walk(root, d, seen, &mut v);
            v
        })
        .collect();
    for v in below {
        out.extend(v);
    }
}

fn scan(root: &Path) -> Vec<(String, Meta)> {
    let mut out = Vec::new();
    walk(root, "", &AtomicUsize::new(0), &mut out);
    out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    out
}

fn hash_file(path: &Path, size: u64) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    if size > 16 << 20 {
        h.update_mmap_rayon(path).expect("mmap hash");
    } else {
        h.update(&fs::read(path).expect("read"));
    }
    h.finalize()
}

/// Scan + hash every file: what a build does with an empty stat cache.
fn hash_cold(root: &Path) -> Vec<(String, blake3::Hash)> {
    let entries = scan(root);
    entries
        .par_iter()
        .filter(|(_, m)| m.is_file)
        .map(|(p, m)| (p.clone(), hash_file(&root.join(p), m.size)))
        .collect()
}

/// Scan + stat cache + the listing's digest: what a build does when
/// nothing changed.
fn hash_stat_cache(root: &Path, store: &Store) -> usize {
    let entries = scan(root);
    let mut hashes: Vec<Option<blake3::Hash>> = vec![None; entries.len()];
    let mut i = 0;
    store
        .stat_cache_visit(&root.to_string_lossy(), |row| {
            while i < entries.len() && entries[i].0.as_str() < row.path {
                i += 1;
            }
            if let Some((p, e)) = entries.get(i) {
                if p == row.path
                    && e.is_file
                    && row.dev == e.dev
                    && row.ino == e.ino
                    && row.size == e.size
                    && row.mtime_ns == e.mtime_ns
                    && row.ctime_ns == e.ctime_ns
                    && row.mode == e.mode
                {
                    hashes[i] = blake3::Hash::from_hex(row.hash).ok();
                }
            }
        })
        .expect("stat_cache_visit");
    let misses = entries
        .iter()
        .zip(&hashes)
        .filter(|((_, m), h)| m.is_file && h.is_none())
        .count();
    assert_eq!(misses, 0, "stat cache missed {misses} files");
    let mut digest = blake3::Hasher::new();
    let mut line = String::new();
    for ((p, m), h) in entries.iter().zip(&hashes) {
        line.clear();
        match h {
            Some(h) => write!(line, "f {:o} {} {}", m.mode, m.size, h.to_hex()),
            None => write!(line, "d {:o}", m.mode),
        }
        .expect("write to a String");
        digest.update(p.as_bytes());
        digest.update(b"\0");
        digest.update(line.as_bytes());
        digest.update(b"\n");
    }
    black_box(digest.finalize());
    hashes.len()
}

/// `files` files of `size` bytes, 100 per directory, pseudo-random content.
fn make_context(dir: &Path, files: usize, size: usize) -> u64 {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut buf = vec![0u8; size];
    for i in 0..files {
        let d = dir.join(format!("d{:04}", i / 100));
        if i % 100 == 0 {
            fs::create_dir(&d).expect("mkdir");
        }
        for c in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let n = c.len();
            c.copy_from_slice(&x.to_le_bytes()[..n]);
        }
        let mut f = fs::File::create(d.join(format!("f{i:06}.bin"))).expect("create");
        f.write_all(&buf).expect("write");
    }
    (files * size) as u64
}

fn bench_context(c: &mut Criterion) {
    let mut g = c.benchmark_group("context_hash");
    g.sample_size(10);
    for (name, files, size) in [
        ("2000_files_100KiB", 2_000usize, 100 << 10),
        ("10000_files_1KiB", 10_000, 1 << 10),
    ] {
        let ctx = tempfile::tempdir().expect("tempdir");
        let root: PathBuf = fs::canonicalize(ctx.path()).expect("canonicalize");
        let total = make_context(&root, files, size);
        let store_dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(store_dir.path()).expect("open store");
        // What the first build leaves behind.
        let hashes: HashMap<String, blake3::Hash> = hash_cold(&root).into_iter().collect();
        let meta: HashMap<String, Meta> = scan(&root).into_iter().collect();
        let rows: Vec<(String, StatEntry)> = hashes
            .iter()
            .map(|(p, h)| {
                let m = &meta[p];
                (
                    p.clone(),
                    StatEntry {
                        dev: m.dev,
                        ino: m.ino,
                        size: m.size,
                        mtime_ns: m.mtime_ns,
                        ctime_ns: m.ctime_ns,
                        mode: m.mode,
                        hash: h.to_hex().to_string(),
                    },
                )
            })
            .collect();
        store
            .stat_cache_store(&root.to_string_lossy(), &rows)
            .expect("stat_cache_store");

        g.throughput(Throughput::Bytes(total));
        g.bench_function(format!("{name}/cold"), |b| {
            b.iter(|| black_box(hash_cold(&root)))
        });
        g.bench_function(format!("{name}/stat_cache"), |b| {
            b.iter(|| black_box(hash_stat_cache(&root, &store)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench_context);
criterion_main!(benches);
