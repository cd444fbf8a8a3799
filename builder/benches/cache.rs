//! Build-cache lookup latency with 10,000 records (issue 7), through the
//! store API the builder uses (`Store::cache_get` / `cache_put`), and
//! `kiln cache ls` on the same store, through the real binary.
//!
//!     cargo bench -p kiln-builder --bench cache
//!
//! The records look like the builder's: a blake3-hex key chained to a
//! parent, the instruction, a few hundred bytes of inputs and a result
//! holding a config and a layer list. They carry no layer, so `cache_get`
//! measures the SQLite lookup and JSON decoding, not a blob `stat`.

use std::hint::black_box;
use std::path::Path;
use std::process::{Command, Stdio};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use kiln_store::{CacheRecord, Store};
use serde_json::json;

const RECORDS: usize = 10_000;

fn key(i: usize) -> String {
    blake3::hash(format!("bench-record-{i}").as_bytes())
        .to_hex()
        .to_string()
}

fn record(i: usize) -> CacheRecord {
    CacheRecord {
        key: key(i),
        parent: (!i.is_multiple_of(20)).then(|| key(i - 1)),
        description: format!("RUN make -j2 target-{i}"),
        source: format!("Dockerfile:{}", i % 20 + 2),
        stage: format!("stage-{}", i / 20),
        inputs: json!({
            "argv": ["/bin/sh", "-c", format!("make -j2 target-{i}")],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"],
            "user": "", "workdir": "/src", "network": "default", "mounts": [],
        }),
        result: json!({
            "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                       "WorkingDir": "/src", "Cmd": ["sh"]},
            "layers": [format!("sha256:{}", key(i + 1_000_000))],
        }),
        layer: None,
        created: 1_700_000_000 + i as i64,
        last_used: 1_700_000_000 + i as i64,
        hits: 0,
        origin: None,
    }
}

fn populated_store(root: &Path) -> Store {
    let store = Store::open(root).expect("open store");
    for i in 0..RECORDS {
        store.cache_put(&record(i)).expect("cache_put");
    }
    store
}

fn bench_cache(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = populated_store(dir.path());
    let keys: Vec<String> = (0..RECORDS).map(key).collect();

    let mut g = c.benchmark_group("cache_10k_records");
    let mut i = 0usize;
    g.bench_function("cache_get_hit", |b| {
        b.iter(|| {
            // A stride through the keys, so consecutive lookups hit
            // different B-tree pages.
            i = (i + 7919) % RECORDS;
            black_box(store.cache_get(&keys[i]).expect("cache_get"))
        })
    });
    let mut m = 0usize;
    g.bench_function("cache_get_miss", |b| {
        b.iter(|| {
            m += 1;
            black_box(store.cache_get(&key(RECORDS + m)).expect("cache_get"))
        })
    });
    let mut u = 0usize;
    g.bench_function("cache_put_replace", |b| {
        b.iter_batched(
            || {
                u = (u + 7919) % RECORDS;
                record(u)
            },
            |r| store.cache_put(&r).expect("cache_put"),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("cache_touch_20_keys", |b| {
        let batch: Vec<String> = keys[..20].to_vec();
        b.iter(|| store.cache_touch(&batch).expect("cache_touch"))
    });
    g.finish();
    drop(store);

    // The CLI end to end: process start, store open, 10,000 rows listed.
    let kiln = env!("CARGO_BIN_EXE_kiln");
    let mut g = c.benchmark_group("cli_10k_records");
    g.sample_size(20);
    for format in ["table", "json"] {
        g.bench_function(format!("kiln_cache_ls_{format}"), |b| {
            b.iter(|| {
                let st = Command::new(kiln)
                    .args(["cache", "ls", "--format", format])
                    .env("KILN_ROOT", dir.path())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .expect("run kiln");
                assert!(st.success(), "kiln cache ls failed: {st}");
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_cache);
criterion_main!(benches);
