//! Issue 20, items 3-5: metadata steps cost the size of their change, an
//! expansion bomb stops at a located limit, and a build reads only the
//! cache records its own steps need, however many the store holds.

mod common;

use std::path::Path;

use common::{require, write_tree, Kiln};
use kiln_store::CacheRecord;

/// `FROM scratch`, `n` LABEL lines and, every tenth line, an ENV.
fn many_labels(n: usize) -> String {
    let mut s = String::from("FROM scratch\n");
    for i in 0..n {
        s.push_str(&format!("LABEL l{i}=v{i}\n"));
        if i % 10 == 0 {
            s.push_str(&format!("ENV E{i}=e{i}\n"));
        }
    }
    s
}

/// `kiln build` with `KILN_CACHE_STATS` set: the run and what it read of
/// the cache (queries, rows, bytes of inputs and results, SQLite steps).
fn build_counted(k: &Kiln, ctx: &Path, extra: &[&str]) -> (common::Run, [u64; 4]) {
    let out = k
        .cmd()
        .env("KILN_CACHE_STATS", "1")
        .args(["build", "--progress=plain", "-t", "meta:1"])
        .args(extra)
        .arg(ctx)
        .output()
        .expect("spawn kiln");
    let run = common::Run { out }.ok();
    let err = run.stderr();
    let line = err
        .lines()
        .find_map(|l| l.strip_prefix("kiln: cache reads: "))
        .unwrap_or_else(|| panic!("no cache stats in:\n{err}"));
    let nums: Vec<u64> = line
        .split(", ")
        .map(|p| p.split(' ').next().unwrap().parse().unwrap())
        .collect();
    (run, [nums[0], nums[1], nums[2], nums[3]])
}

#[test]
fn metadata_records_carry_their_change_not_the_whole_config() {
    const N: usize = 2_000;
    let k = Kiln::new();
    let ctx = tempfile::tempdir().unwrap();
    write_tree(ctx.path(), &[("Dockerfile", many_labels(N))]);
    build_counted(&k, ctx.path(), &[]);

    let store = kiln_store::Store::open(k.root.path()).unwrap();
    let records = store.cache_list().unwrap();
    let meta: Vec<_> = records
        .iter()
        .filter(|r| r.description.starts_with("LABEL") || r.description.starts_with("ENV"))
        .collect();
    assert_eq!(meta.len(), N + N / 10, "one record per metadata step");
    for r in &meta {
        let size = r.inputs.to_string().len() + r.result.to_string().len();
        assert!(
            size < 128,
            "{} keeps {size} bytes: a record carries its change, not the config",
            r.description
        );
    }
    // The image still has every label and variable, in one config.
    let inspect = k.run(&["inspect", "meta:1"]).ok().stdout();
    let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    let cfg = &v[0]["Config"];
    assert_eq!(cfg["Labels"].as_object().unwrap().len(), N, "{cfg}");
    assert_eq!(cfg["Labels"]["l1999"], "v1999");
    let env = cfg["Env"].as_array().unwrap();
    assert!(env.iter().any(|e| e == "E1990=e1990"), "{cfg}");
    assert_eq!(env.len(), N / 10 + 1, "PATH and the ENV lines: {cfg}");
}

#[test]
fn a_cached_rebuild_reads_a_few_bytes_per_metadata_step() {
    const N: usize = 2_000;
    let k = Kiln::new();
    let ctx = tempfile::tempdir().unwrap();
    write_tree(ctx.path(), &[("Dockerfile", many_labels(N))]);
    build_counted(&k, ctx.path(), &[]);
    let (run, [queries, rows, bytes, _]) = build_counted(&k, ctx.path(), &["--explain"]);
    assert!(run.stderr().contains("were cache hits"), "{}", run.stderr());
    let steps = (N + N / 10) as u64;
    assert!(queries <= steps + 10, "{queries} queries for {steps} steps");
    assert!(rows <= steps + 10, "{rows} rows read for {steps} steps");
    assert!(
        bytes < 64 * 1024,
        "a cached rebuild of {steps} metadata steps read {bytes} bytes of records"
    );
}

#[test]
fn a_changed_label_or_env_is_named_with_both_values() {
    let k = Kiln::new();
    let ctx = tempfile::tempdir().unwrap();
    let df = many_labels(300);
    write_tree(ctx.path(), &[("Dockerfile", df.as_str())]);
    build_counted(&k, ctx.path(), &[]);
    let edited = df
        .replace("LABEL l150=v150\n", "LABEL l150=changed\n")
        .replace("ENV E250=e250\n", "ENV E250=other\n");
    write_tree(ctx.path(), &[("Dockerfile", edited.as_str())]);
    let (run, _) = build_counted(&k, ctx.path(), &["--explain"]);
    let e = run.stderr();
    assert!(
        e.contains(
            "LABEL l150=changed (Dockerfile:167): label l150 changed (\"v150\" -> \"changed\")"
        ),
        "{e}"
    );
    // Every step after it inherits that change: it is not repeated for
    // each of them, and the ENV further down says nothing of its own.
    assert_eq!(e.matches("label l150 changed").count(), 1, "{e}");
    assert!(!e.contains("Dockerfile:278)"), "{e}");

    // Only the ENV changed now.
    let (run, _) = build_counted(&k, ctx.path(), &["--explain"]);
    assert!(run.stderr().contains("were cache hits"), "{}", run.stderr());
    write_tree(
        ctx.path(),
        &[("Dockerfile", edited.replace("E250=other", "E250=third"))],
    );
    let (run, _) = build_counted(&k, ctx.path(), &["--explain"]);
    assert!(
        run.stderr()
            .contains("env E250 changed (\"other\" -> \"third\")"),
        "{}",
        run.stderr()
    );
}

/// The largest resident set of any child this test binary has waited for.
fn children_max_rss_kib() -> i64 {
    // SAFETY: rusage is plain integers: all-zero is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage only writes the struct it is given, live here.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    assert_eq!(rc, 0);
    ru.ru_maxrss
}

#[test]
fn an_expansion_bomb_stops_at_the_word_limit_with_a_located_error() {
    // a0 is 1,000 bytes, each next ARG ten of the previous: a11 would be
    // 10^14 bytes.
    let mut df = format!("FROM scratch\nARG a0={}\n", "x".repeat(1000));
    for i in 1..12 {
        df.push_str(&format!(
            "ARG a{i}={}\n",
            format!("${{a{}}}", i - 1).repeat(10)
        ));
    }
    df.push_str("LABEL bomb=$a11\n");
    let k = Kiln::new();
    let ctx = tempfile::tempdir().unwrap();
    write_tree(ctx.path(), &[("Dockerfile", df)]);
    let r = k
        .run(&["build", "-q", "-t", "bomb:1", ctx.path().to_str().unwrap()])
        .fails();
    let e = r.stderr();
    assert!(e.starts_with("Dockerfile:5\n"), "located at a3's line: {e}");
    assert!(
        e.contains("ERROR: ARG a3: failed to process \"${a2}"),
        "{e}"
    );
    assert!(e.contains("grows past 131072 bytes"), "{e}");
    assert!(e.len() < 2000, "one screen: {e}");
    assert!(
        children_max_rss_kib() < 200 * 1024,
        "kiln peaked at {} KiB",
        children_max_rss_kib()
    );
    // Nothing of the bomb was kept in the cache past the limit.
    let store = kiln_store::Store::open(k.root.path()).unwrap();
    let kept: usize = store
        .cache_list()
        .unwrap()
        .iter()
        .map(|r| r.inputs.to_string().len())
        .sum();
    assert!(kept < 200_000, "{kept} bytes of records");
}

#[test]
fn many_words_under_the_word_limit_stop_at_the_stage_metadata_limit() {
    // b is 100,000 bytes; each ENV copies it: the 84th passes 8 MiB.
    let mut df = format!(
        "FROM scratch\nARG a0={}\nARG b={}\n",
        "x".repeat(1000),
        "${a0}".repeat(100)
    );
    for i in 0..100 {
        df.push_str(&format!("ENV e{i}=$b\n"));
    }
    let k = Kiln::new();
    let ctx = tempfile::tempdir().unwrap();
    write_tree(ctx.path(), &[("Dockerfile", df)]);
    let r = k
        .run(&["build", "-q", "-t", "big:1", ctx.path().to_str().unwrap()])
        .fails();
    let e = r.stderr();
    assert!(e.starts_with("Dockerfile:86\n"), "{e}");
    assert!(
        e.contains("the stage's metadata grows past 8388608 bytes with this instruction"),
        "{e}"
    );
    assert!(e.len() < 2000, "one screen: {e}");
}

/// `n` records of another project: chains of 20 steps, each with inputs
/// and a result the size of a real step's, written in one transaction.
fn unrelated_records(n: usize) -> Vec<CacheRecord> {
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
            result: serde_json::json!({"config": {"Env": ["PATH=/usr/bin:/bin"], "Labels": {"pad": "y".repeat(1000)}}, "layers": []}),
            layer: None,
            created: 1_700_000_000 + i as i64,
            last_used: 1_700_000_000 + i as i64,
            hits: 0,
            origin: None,
        })
        .collect()
}

#[test]
fn a_flask_rebuild_reads_its_own_records_among_100000_unrelated_ones() {
    if !require(common::is_root(), "kiln build runs containers: needs root") {
        return;
    }
    let wheels = common::repo_root().join("fixtures/flask/wheels");
    if !require(
        std::fs::read_dir(&wheels).is_ok_and(|mut d| d.next().is_some()),
        "fixtures/flask/wheels is empty: run fixtures/flask/fetch-wheels.sh",
    ) {
        return;
    }
    let k = Kiln::new();
    if !k.with_python() {
        return;
    }
    let ctx = tempfile::tempdir().unwrap();
    let src = common::repo_root().join("fixtures/flask");
    let ok = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", src.display()))
        .arg(ctx.path())
        .status()
        .unwrap()
        .success();
    assert!(ok);
    build_counted(&k, ctx.path(), &[]);
    let (_, clean) = build_counted(&k, ctx.path(), &[]);

    let store = kiln_store::Store::open(k.root.path()).unwrap();
    store.cache_put_many(&unrelated_records(100_000)).unwrap();
    drop(store);

    // A cached rebuild: the same reads as on a clean root.
    let (run, crowded) = build_counted(&k, ctx.path(), &["--explain"]);
    assert!(run.stderr().contains("were cache hits"), "{}", run.stderr());
    assert_eq!(crowded[..3], clean[..3], "queries, rows and bytes read");
    assert!(
        crowded[3] <= clean[3] * 2 + 1000,
        "SQLite steps: {} among 100,000 records, {} on a clean root",
        crowded[3],
        clean[3]
    );

    // A miss is explained by looking up its own records, not the table.
    let app = ctx.path().join("app.py");
    let text = std::fs::read_to_string(&app).unwrap();
    std::fs::write(&app, text.replace("Hello", "Hi")).unwrap();
    let (run, [queries, rows, bytes, steps]) = build_counted(&k, ctx.path(), &["--explain"]);
    let e = run.stderr();
    assert!(e.contains("app.py changed (content blake3"), "{e}");
    assert!(
        queries < 100 && rows < 100,
        "{queries} queries, {rows} rows"
    );
    assert!(bytes < 1 << 20, "{bytes} bytes of records read");
    assert!(
        steps < 100_000,
        "{steps} SQLite steps: the table was scanned"
    );
}

#[test]
fn env_lookups_by_name_keep_the_order_and_the_last_value() {
    let k = Kiln::new();
    let ctx = tempfile::tempdir().unwrap();
    let df = "FROM scratch\nENV A=1\nENV B=$A PATH=/opt:$PATH\nARG C=c\nENV A=2\nLABEL x=$A$B$C\n";
    write_tree(ctx.path(), &[("Dockerfile", df)]);
    for _ in 0..2 {
        k.run(&["build", "-q", "-t", "env:1", ctx.path().to_str().unwrap()])
            .ok();
        let inspect = k.run(&["inspect", "env:1"]).ok().stdout();
        let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
        let cfg = &v[0]["Config"];
        assert_eq!(
            cfg["Env"],
            serde_json::json!([
                "PATH=/opt:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "A=2",
                "B=1"
            ]),
            "{cfg}"
        );
        assert_eq!(cfg["Labels"]["x"], "21c", "{cfg}");
    }
}
