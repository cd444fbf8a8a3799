//! Several processes on one root, and processes killed with SIGKILL at
//! random points. The child processes are this test binary re-executed
//! with `--ignored --exact child_process_entry` and a role in the
//! environment.
mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use kiln_store::*;

const ROLE: &str = "KILN_STORE_TEST_ROLE";

fn spawn(role: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "child_process_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE, role)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// Tiny deterministic PRNG (no dependency, reproducible from the seed).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// One unit of work a build does: a layer from a snapshot, a shared blob,
/// an image, a tag, a cache record. Contents overlap between processes.
fn work_once(s: &Store, rng: &mut Rng, me: &str, i: u64) {
    let _lease = s.lease().unwrap();
    let k = rng.next() % 5;
    s.write_blob_bytes(format!("shared blob {k}").as_bytes())
        .unwrap();
    let p = s.new_snapshot().unwrap();
    fs::create_dir_all(p.upper().join("app")).unwrap();
    fs::write(
        p.upper().join("app/data"),
        format!("content {k}").repeat(200),
    )
    .unwrap();
    common::set_mtime(&p.upper().join("app/data"), 1_000_000);
    common::set_mtime(&p.upper().join("app"), 1_000_000);
    common::set_mtime(p.upper(), 1_000_000);
    let layer = s
        .commit_snapshot(
            p,
            &LayerOptions {
                zstd_workers: 1,
                ..Default::default()
            },
        )
        .unwrap();
    let mut cfg = ImageConfig {
        architecture: "amd64".into(),
        os: "linux".into(),
        ..Default::default()
    };
    cfg.config.cmd = Some(vec!["app".into(), k.to_string()]);
    let img = s.write_image(&cfg, std::slice::from_ref(&layer)).unwrap();
    s.tag(&format!("img-{me}:{}", i % 3), &img.manifest_digest)
        .unwrap();
    s.cache_put(&CacheRecord {
        key: format!("{me}-{i}"),
        parent: None,
        description: "RUN x".into(),
        source: "Dockerfile:1".into(),
        stage: "0".into(),
        inputs: serde_json::json!({ "k": k }),
        result: serde_json::Value::Null,
        layer: Some(layer.clone()),
        created: 0,
        last_used: 0,
        hits: 0,
        origin: None,
    })
    .unwrap();
    s.ensure_snapshot(&layer).unwrap();
}

#[test]
#[ignore = "entry point of the child processes of the other tests in this file"]
fn child_process_entry() {
    let Ok(role) = std::env::var(ROLE) else {
        panic!("run only by the tests in this file (needs {ROLE})");
    };
    let mut parts = role.splitn(3, ':');
    let (kind, root, seed) = (
        parts.next().unwrap(),
        PathBuf::from(parts.next().unwrap()),
        parts.next().unwrap_or("1"),
    );
    let seed: u64 = seed.parse().unwrap();
    let s = Store::open(&root).unwrap();
    let mut rng = Rng(seed | 1);
    match kind {
        "writer" => {
            for i in 0..12 {
                work_once(&s, &mut rng, &seed.to_string(), i);
            }
        }
        "pruner" => {
            let stop = root.join("stop-pruning");
            while !stop.exists() {
                s.prune(&PruneOptions {
                    keep_storage: Some(2000),
                    ..Default::default()
                })
                .unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        "crasher" => {
            // Runs until killed, mixing writes, prunes and loads.
            let mut i = 0;
            loop {
                match rng.next() % 6 {
                    0 => {
                        s.prune(&PruneOptions {
                            cache_all: rng.next() & 1 == 0,
                            ..Default::default()
                        })
                        .unwrap();
                    }
                    1 => {
                        let mut out = Vec::new();
                        if let Ok(Some(_)) = s.resolve_image(&format!("img-{seed}:0")) {
                            s.save(&[format!("img-{seed}:0")], ArchiveFormat::Oci, &mut out)
                                .unwrap();
                            s.load(&mut &out[..]).unwrap();
                        }
                    }
                    _ => work_once(&s, &mut rng, &seed.to_string(), i),
                }
                i += 1;
            }
        }
        "lease-hold" => {
            // Takes a lease, writes a blob under it, says so, and holds the
            // lease until told to stop or exit without releasing it.
            let lease = s.lease().unwrap();
            s.write_blob_bytes(b"written under a lease").unwrap();
            fs::write(root.join("lease-taken"), b"").unwrap();
            while !root.join("lease-stop").exists() {
                std::thread::sleep(Duration::from_millis(5));
            }
            // Exit without running destructors: the lease row stays behind,
            // its owner dead.
            std::mem::forget(lease);
            std::process::exit(0);
        }
        "scratch-leak" => {
            // A build's temporary directory, left behind by a crash.
            let tmp = s.tempdir("secret").unwrap();
            fs::write(tmp.path().join("secret"), b"s3cr3t").unwrap();
            fs::write(root.join("leaked"), tmp.keep().to_str().unwrap()).unwrap();
            std::process::exit(0);
        }
        other => panic!("unknown role {other}"),
    }
}

fn check_root(root: &Path) -> FsckReport {
    let s = Store::open(root).unwrap();
    let rep = s.fsck(false).unwrap();
    assert!(rep.is_clean(), "{rep}");
    for img in s.list_images().unwrap() {
        let r = s
            .resolve_image(img.manifest_digest.as_str())
            .unwrap()
            .unwrap();
        s.read_blob(&r.manifest_digest).unwrap();
        for l in &r.layers {
            let snap = s.ensure_snapshot(l).unwrap();
            assert!(snap.join("app/data").is_file());
        }
    }
    rep
}

#[test]
fn eight_writers_and_a_pruner_share_one_root() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    Store::open(&root).unwrap();
    let pruner = spawn(&format!("pruner:{}", root.display()));
    let writers: Vec<Child> = (1..=8)
        .map(|i| spawn(&format!("writer:{}:{i}", root.display())))
        .collect();
    for mut w in writers {
        assert!(w.wait().unwrap().success(), "a writer failed");
    }
    fs::write(root.join("stop-pruning"), b"").unwrap();
    let mut pruner = pruner;
    assert!(pruner.wait().unwrap().success(), "the pruner failed");
    check_root(&root);
    let s = Store::open(&root).unwrap();
    // Every writer's tags survived the pruning and point at loadable images.
    for i in 1..=8 {
        for t in 0..3 {
            let r = s.resolve_image(&format!("img-{i}:{t}")).unwrap();
            assert!(r.is_some(), "img-{i}:{t} lost");
        }
    }
}

#[test]
fn sigkill_at_random_points_never_breaks_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    Store::open(&root).unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut swept = 0;
    for round in 0..100u64 {
        let mut c = spawn(&format!("crasher:{}:{}", root.display(), round % 7 + 1));
        std::thread::sleep(Duration::from_millis(20 + rng.next() % 120));
        rustix::process::kill_process(
            rustix::process::Pid::from_child(&c),
            rustix::process::Signal::KILL,
        )
        .unwrap();
        let status = c.wait().unwrap();
        assert!(
            !status.success(),
            "round {round}: the child ended on its own"
        );
        // The next command works, and fsck finds nothing but the swept
        // leftovers; every 10 rounds every image is also unpacked.
        let s = Store::open(&root).unwrap();
        s.list_images().unwrap();
        let rep = s.fsck(false).unwrap();
        assert!(rep.is_clean(), "round {round}: {rep}");
        swept += rep.swept.len();
        if round % 10 == 9 {
            drop(s);
            check_root(&root);
        }
    }
    eprintln!("swept {swept} leftovers of killed processes over 100 kills");
    assert!(
        swept > 0,
        "no kill ever interrupted a write: the test is not testing anything"
    );
    // Nothing of dead processes survives an open.
    let _s = Store::open(&root).unwrap();
    for sub in ["ingest", "tmp"] {
        let left: Vec<_> = fs::read_dir(root.join(sub))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(left.iter().all(|n| n.ends_with(".lock")), "{sub}: {left:?}");
        assert!(left.len() <= 1, "{sub}: {left:?}");
    }
}

#[test]
fn a_live_lease_pins_new_content_and_a_dead_one_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let s = Store::open(&root).unwrap();
    let blob = sha256_digest(b"written under a lease");
    let mut child = spawn(&format!("lease-hold:{}", root.display()));
    while !root.join("lease-taken").exists() {
        std::thread::sleep(Duration::from_millis(5));
    }
    s.prune(&PruneOptions {
        all: true,
        ..Default::default()
    })
    .unwrap();
    assert!(s.has_blob(&blob), "prune removed content of a live lease");
    fs::write(root.join("lease-stop"), b"").unwrap();
    assert!(child.wait().unwrap().success());
    // The lease row is still there, but its process is gone.
    s.prune(&PruneOptions::default()).unwrap();
    assert!(
        !s.has_blob(&blob),
        "a dead process's lease still pins content"
    );
    assert!(s.fsck(false).unwrap().is_clean());
}

#[test]
fn a_dead_builds_scratch_dirs_are_swept_at_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    drop(Store::open(&root).unwrap());
    assert!(spawn(&format!("scratch-leak:{}", root.display()))
        .wait()
        .unwrap()
        .success());
    let leaked = PathBuf::from(fs::read_to_string(root.join("leaked")).unwrap());
    assert!(leaked.starts_with(root.join("tmp")), "{}", leaked.display());
    assert!(leaked.join("secret").exists());
    let s = Store::open(&root).unwrap();
    assert!(!leaked.exists(), "a dead process's scratch dir outlived it");
    // This process's own are its to remove: the sweep leaves them.
    let mine = s.tempdir("add").unwrap();
    drop(Store::open(&root).unwrap());
    assert!(mine.path().is_dir());
}
