//! Per-container overhead: how long `run()` of busybox `true` takes, from
//! the call to the exit code (helper re-exec, namespaces, overlay, /proc,
//! /dev, /sys, pivot_root, fork+exec, teardown). Prints a table.
//!
//!     cargo bench -p kiln-runner --bench overhead [-- N]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use kiln_runner::{NetworkMode, Stdio};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(200);
    if !common::can_run("overhead benchmark") {
        return;
    }
    let cfg = common::cfg();
    println!("kiln-runner: per-container overhead of `true`, {n} runs each");
    println!(
        "{:<28} {:>9} {:>9} {:>9} {:>9}",
        "case", "min", "median", "p90", "max"
    );
    for (label, net) in [
        ("network=host", NetworkMode::Host),
        ("network=private (own netns)", NetworkMode::Private),
    ] {
        let mut spec = common::spec(&["/bin/true"]);
        spec.network = net;
        // Warm-up (page cache, first exec of the helper).
        let first = Instant::now();
        kiln_runner::run(&cfg, &spec, Stdio::default()).expect("run");
        let first = first.elapsed();
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            let code = kiln_runner::run(&cfg, &spec, Stdio::default()).expect("run");
            times.push(t.elapsed());
            assert_eq!(code, 0);
        }
        times.sort();
        let ms = |d: Duration| format!("{:.2}ms", d.as_secs_f64() * 1000.0);
        println!(
            "{:<28} {:>9} {:>9} {:>9} {:>9}   (first run {})",
            label,
            ms(times[0]),
            ms(percentile(&times, 0.5)),
            ms(percentile(&times, 0.9)),
            ms(times[times.len() - 1]),
            ms(first),
        );
    }
}
