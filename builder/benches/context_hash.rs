//! Build-context hashing throughput (issue 7): cold (every file read and
//! hashed with blake3) against the stat cache (one `stat` per file and a
//! lookup of (dev, inode, size, mtime, ctime, mode) in the records the store
//! kept from the previous build), in logical GB/s of context.
//!
//!     cargo bench -p kiln-builder --bench context_hash
//!
//! `kiln` is a binary crate, so this bench cannot call its `BuildContext`.
//! It replays the same algorithm with the same crates, step for step as
//! builder/src/context.rs does it: a parallel walk with one rayon task per
//! directory and `lstat` of every entry; then, per file, either the stat
//! cache entry (loaded from kiln-store with `Store::stat_cache_load`) or a
//! rayon-parallel read + blake3 (`update_mmap_rayon` above 16 MiB). If the
//! builder's algorithm changes, change this file with it; the end-to-end
//! figure (the `kiln` binary on the same contexts) is in bench/scaling.sh.
//!
//! "Cold" means cold for kiln (no stat cache), not for the kernel: the
//! files are in the page cache, as they are right after being edited.

use std::collections::HashMap;
use std::fs;
use std::hint::black_box;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

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

fn walk(root: &Path, rel: &str, out: &Mutex<Vec<(String, Meta)>>) {
    let dir = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    let mut subdirs = Vec::new();
    let mut found = Vec::new();
    for item in fs::read_dir(&dir).expect("read_dir") {
        let item = item.expect("dir entry");
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
        found.push((child, meta_of(&m)));
    }
    out.lock().expect("entries").extend(found);
    subdirs.par_iter().for_each(|d| walk(root, d, out));
}

fn scan(root: &Path) -> Vec<(String, Meta)> {
    let out = Mutex::new(Vec::new());
    walk(root, "", &out);
    out.into_inner().expect("walk finished")
}

fn hash_file(path: &Path, size: u64) -> String {
    let mut h = blake3::Hasher::new();
    if size > 16 << 20 {
        h.update_mmap_rayon(path).expect("mmap hash");
    } else {
        h.update(&fs::read(path).expect("read"));
    }
    h.finalize().to_hex().to_string()
}

/// Scan + hash every file: what a build does with an empty stat cache.
fn hash_cold(root: &Path) -> Vec<(String, String)> {
    let entries = scan(root);
    entries
        .par_iter()
        .filter(|(_, m)| m.is_file)
        .map(|(p, m)| (p.clone(), hash_file(&root.join(p), m.size)))
        .collect()
}

/// Scan + stat cache: what a build does when nothing changed.
fn hash_stat_cache(root: &Path, store: &Store) -> usize {
    let entries = scan(root);
    let cache = store
        .stat_cache_load(&root.to_string_lossy())
        .expect("stat_cache_load");
    let mut hits = 0;
    let mut misses = Vec::new();
    for (p, e) in entries.iter().filter(|(_, m)| m.is_file) {
        match cache.get(p) {
            Some(c)
                if c.dev == e.dev
                    && c.ino == e.ino
                    && c.size == e.size
                    && c.mtime_ns == e.mtime_ns
                    && c.ctime_ns == e.ctime_ns
                    && c.mode == e.mode =>
            {
                hits += 1;
                black_box(&c.hash);
            }
            _ => misses.push(p),
        }
    }
    assert!(
        misses.is_empty(),
        "stat cache missed {} files",
        misses.len()
    );
    hits
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
        let hashes: HashMap<String, String> = hash_cold(&root).into_iter().collect();
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
                        hash: h.clone(),
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
