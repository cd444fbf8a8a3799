//! Issue 20's budgets, through the real binary, as a table (no timing
//! assertions: the tests hold what is read, this prints what it costs):
//!
//!     cargo bench -p kiln-builder --bench metadata
//!
//! - 10,000 LABEL lines, first build and cached rebuild (budget: under
//!   1 s and 200 MB);
//! - the expansion bomb (ARG a0 of 1,000 bytes, a1..a11 ten of the
//!   previous): it must fail at once;
//! - a cached Flask rebuild on a root holding 100,000 unrelated cache
//!   records (budget: under 15 ms and 50 MB), and on a clean root. Needs
//!   root, the offline python base (`fixtures/bases/make-bases.sh`) and
//!   the wheels (`fixtures/flask/fetch-wheels.sh`); skipped without them.
//!
//! Each figure is the median of `KILN_BENCH_RUNS` runs (5), peak RSS the
//! largest, from `wait4`'s rusage of that one process.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use kiln_store::{CacheRecord, Store};

fn kiln() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kiln"))
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs kiln once: (wall seconds, peak RSS in MiB, success). The child is
/// reaped by `wait4` (for its own rusage), not by `Child::wait`.
#[allow(clippy::zombie_processes)]
fn run_once(root: &Path, args: &[&str]) -> (f64, f64, bool) {
    let t0 = Instant::now();
    let child = Command::new(kiln())
        .env("KILN_ROOT", root)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn kiln");
    let mut status = 0;
    // SAFETY: rusage is plain integers: all-zero is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    // SAFETY: wait4 on our own child writes only into `status` and `ru`,
    // both live and writable for the call.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    assert_eq!(r, pid, "wait4");
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    (t0.elapsed().as_secs_f64(), ru.ru_maxrss as f64 / 1024.0, ok)
}

struct Row {
    case: String,
    secs: f64,
    rss: f64,
    outcome: &'static str,
}

/// Median time and largest RSS of `runs` runs; `prepare` runs before each
/// (not measured).
fn measure(
    case: &str,
    runs: usize,
    expect_ok: bool,
    mut prepare: impl FnMut(),
    root: &Path,
    args: &[&str],
) -> Row {
    let mut times = Vec::new();
    let mut rss: f64 = 0.0;
    let mut as_expected = true;
    for _ in 0..runs {
        prepare();
        let (t, m, ok) = run_once(root, args);
        times.push(t);
        rss = rss.max(m);
        as_expected &= ok == expect_ok;
    }
    times.sort_by(f64::total_cmp);
    Row {
        case: case.into(),
        secs: times[times.len() / 2],
        rss,
        outcome: match (as_expected, expect_ok) {
            (true, true) => "built",
            (true, false) => "refused (as it must)",
            (false, _) => "UNEXPECTED",
        },
    }
}

fn labels_dockerfile(n: usize) -> String {
    let mut s = String::from("FROM scratch\n");
    for i in 0..n {
        s.push_str(&format!("LABEL l{i}=v{i}\n"));
    }
    s
}

fn bomb_dockerfile() -> String {
    let mut s = format!("FROM scratch\nARG a0={}\n", "x".repeat(1000));
    for i in 1..12 {
        s.push_str(&format!(
            "ARG a{i}={}\n",
            format!("${{a{}}}", i - 1).repeat(10)
        ));
    }
    s + "LABEL bomb=$a11\n"
}

fn unrelated(n: usize) -> Vec<CacheRecord> {
    let key = |i: usize| {
        blake3::hash(format!("unrelated-{i}").as_bytes())
            .to_hex()
            .to_string()
    };
    (0..n)
        .map(|i| CacheRecord {
            key: key(i),
            parent: Some(key(if i % 20 == 0 { n + i } else { i - 1 })),
            description: format!("RUN make target-{i}"),
            source: format!("Dockerfile:{}", i % 20 + 2),
            stage: format!("/elsewhere/project-{}/Dockerfile#stage-0", i / 20),
            inputs: serde_json::json!({"argv": ["/bin/sh", "-c", format!("make target-{i}")],
                "env": ["PATH=/usr/bin:/bin", "X".repeat(400)]}),
            result: serde_json::json!({"config": {"Labels": {"pad": "y".repeat(1000)}}, "layers": []}),
            layer: None,
            created: 1_700_000_000 + i as i64,
            last_used: 1_700_000_000 + i as i64,
            hits: 0,
            origin: None,
        })
        .collect()
}

fn flask_rows(runs: usize, rows: &mut Vec<Row>) {
    let fixtures = std::env::var_os("KILN_FIXTURES_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/kiln-fixtures"));
    let base = fixtures.join("python-3.11-slim");
    let wheels = repo().join("fixtures/flask/wheels");
    let has_wheels = std::fs::read_dir(&wheels).is_ok_and(|mut d| d.next().is_some());
    if !base.join("rootfs.tar").is_file() || !has_wheels {
        eprintln!("SKIPPED the Flask rows: run fixtures/bases/make-bases.sh and fixtures/flask/fetch-wheels.sh");
        return;
    }
    let ctx = repo().join("fixtures/flask");
    let ctxs = ctx.to_str().unwrap();
    for (name, extra) in [("clean root", 0), ("100,000 unrelated records", 100_000)] {
        let root = tempfile::tempdir().unwrap();
        let base_s = base.to_str().unwrap();
        let tag = ["build", "-q", "-t", "python:3.11-slim", base_s];
        assert!(run_once(root.path(), &tag).2, "building the python base");
        assert!(run_once(root.path(), &["build", "-q", "-t", "flask_app:0.1", ctxs]).2);
        if extra > 0 {
            // In a process of its own: the records this one would keep in
            // its heap would count in a forked child's peak RSS.
            let ok = Command::new(std::env::current_exe().unwrap())
                .args(["--fill", root.path().to_str().unwrap(), &extra.to_string()])
                .status()
                .unwrap()
                .success();
            assert!(ok, "filling the cache");
        }
        rows.push(measure(
            &format!("cached Flask rebuild, {name}"),
            runs,
            true,
            || {},
            root.path(),
            &["build", "-q", "-t", "flask_app:0.1", ctxs],
        ));
    }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs this too.
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, root, n] = args.as_slice() {
        if flag == "--fill" {
            let store = Store::open(Path::new(root)).unwrap();
            store
                .cache_put_many(&unrelated(n.parse().unwrap()))
                .unwrap();
            store.checkpoint().unwrap();
            return;
        }
    }
    let runs: usize = std::env::var("KILN_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let mut rows = Vec::new();

    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("Dockerfile"), labels_dockerfile(10_000)).unwrap();
    let ctxs = ctx.path().to_str().unwrap();
    let root = tempfile::tempdir().unwrap();
    let fresh = || {
        let _ = std::fs::remove_dir_all(root.path());
    };
    let args = ["build", "-q", "-t", "labels:1", ctxs];
    rows.push(measure(
        "10,000 LABEL lines, first build",
        runs,
        true,
        fresh,
        root.path(),
        &args,
    ));
    rows.push(measure(
        "10,000 LABEL lines, cached",
        runs,
        true,
        || {},
        root.path(),
        &args,
    ));

    let bomb = tempfile::tempdir().unwrap();
    std::fs::write(bomb.path().join("Dockerfile"), bomb_dockerfile()).unwrap();
    let args = ["build", "-q", "-t", "bomb:1", bomb.path().to_str().unwrap()];
    rows.push(measure(
        "expansion bomb (a0..a11)",
        runs,
        false,
        || {},
        root.path(),
        &args,
    ));

    flask_rows(runs, &mut rows);

    println!("| case | median time | peak RSS | outcome |");
    println!("|---|---|---|---|");
    for r in rows {
        let t = if r.secs < 1.0 {
            format!("{:.1} ms", r.secs * 1000.0)
        } else {
            format!("{:.2} s", r.secs)
        };
        println!("| {} | {t} | {:.1} MiB | {} |", r.case, r.rss, r.outcome);
    }
}
