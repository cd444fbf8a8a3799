//! Writing and applying a 1 GiB layer (zstd, multithreaded), with peak RSS.
//!
//! `cargo bench -p kiln-store --bench layer` runs it under criterion;
//! `KILN_BENCH_ONESHOT=1 cargo bench -p kiln-store --bench layer` does one
//! write and one apply and prints MB/s and the process's peak RSS (VmHWM),
//! which is the figure the README records (must stay < 100 MiB).

use std::fs;
use std::io::{self, Write};
use std::path::Path;
use std::time::Instant;

use criterion::{criterion_group, Criterion, Throughput};
use kiln_store::layer::{apply_layer, write_layer};
use kiln_store::{Compression, LayerOptions, Limits, WhiteoutMode};

const TOTAL: u64 = 1 << 30;
const FILES: u64 = 64;

/// 64 files of 16 MiB: half pseudo-random (incompressible), half text.
fn make_tree(dir: &Path) {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut buf = vec![0u8; 1 << 20];
    for i in 0..FILES {
        let mut f = io::BufWriter::new(fs::File::create(dir.join(format!("f{i:03}"))).unwrap());
        for _ in 0..(TOTAL / FILES) >> 20 {
            if i % 2 == 0 {
                for c in buf.chunks_mut(8) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
                }
            } else {
                for (j, b) in buf.iter_mut().enumerate() {
                    *b = b"the quick brown fox jumps over the lazy dog 0123456789\n"
                        [(j + i as usize) % 55];
                }
            }
            f.write_all(&buf).unwrap();
        }
        f.flush().unwrap();
    }
}

fn opts() -> LayerOptions {
    LayerOptions {
        compression: Compression::Zstd,
        ..Default::default()
    }
}

fn write_once(src: &Path, out: &Path) -> u64 {
    let mut f = io::BufWriter::new(fs::File::create(out).unwrap());
    let d = write_layer(src, &opts(), &mut f).unwrap();
    f.flush().unwrap();
    d.uncompressed_size
}

fn apply_once(layer: &Path, dst: &Path) {
    if dst.exists() {
        fs::remove_dir_all(dst).unwrap();
    }
    fs::create_dir(dst).unwrap();
    let mut f = io::BufReader::new(fs::File::open(layer).unwrap());
    apply_layer(&mut f, dst, WhiteoutMode::Overlay, &Limits::default()).unwrap();
}

fn vm_hwm() -> String {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l["VmHWM:".len()..].trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn bench(c: &mut Criterion) {
    let tmp = tempfile::tempdir_in(
        std::env::var_os("KILN_BENCH_DIR").unwrap_or_else(|| std::env::temp_dir().into_os_string()),
    )
    .unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    make_tree(&src);
    let layer = tmp.path().join("layer.tar.zst");
    let dst = tmp.path().join("dst");
    let mut g = c.benchmark_group("layer_1GiB");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(TOTAL));
    g.bench_function("write_zstd", |b| b.iter(|| write_once(&src, &layer)));
    write_once(&src, &layer);
    g.bench_function("apply_zstd", |b| b.iter(|| apply_once(&layer, &dst)));
    g.finish();
    eprintln!("peak RSS (VmHWM) of the bench process: {}", vm_hwm());
}

criterion_group!(benches, bench);

fn main() {
    if std::env::var_os("KILN_BENCH_ONESHOT").is_some() {
        let tmp = tempfile::tempdir_in(
            std::env::var_os("KILN_BENCH_DIR")
                .unwrap_or_else(|| std::env::temp_dir().into_os_string()),
        )
        .unwrap();
        let src = tmp.path().join("src");
        fs::create_dir(&src).unwrap();
        make_tree(&src);
        let layer = tmp.path().join("layer.tar.zst");
        let t = Instant::now();
        let n = write_once(&src, &layer);
        let w = t.elapsed().as_secs_f64();
        let size = fs::metadata(&layer).unwrap().len();
        let t = Instant::now();
        apply_once(&layer, &tmp.path().join("dst"));
        let a = t.elapsed().as_secs_f64();
        let mb = n as f64 / 1e6;
        println!(
            "layer: {} MiB uncompressed, {} MiB zstd, workers {}",
            n >> 20,
            size >> 20,
            opts().zstd_workers
        );
        println!("write: {w:.2} s = {:.0} MB/s", mb / w);
        println!("apply: {a:.2} s = {:.0} MB/s", mb / a);
        println!("peak RSS (VmHWM): {}", vm_hwm());
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
