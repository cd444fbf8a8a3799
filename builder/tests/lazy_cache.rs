//! The registry cache, imported lazily: CI runners on empty roots share one
//! registry (Debian's `docker-registry`, behind a counting proxy,
//! fixtures/registry/counting-proxy.py, that also plays the registry going
//! away). A fully cached build downloads no layer and pushes nothing; a
//! step that must run fetches only the layers under it; what a build left
//! remote is fetched (verified) by `kiln run`; a registry lost in the
//! middle of a fetch fails the build clearly, leaves the store clean, and
//! the next build resumes.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use common::{cache_steps, is_root, repo_root, require, write_tree, Kiln, Registry};

/// The proxy in front of the registry: what clients fetched through it.
struct Proxy {
    dir: tempfile::TempDir,
    addr: String,
    child: Child,
}

impl Proxy {
    fn start(reg: &Registry) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("python3")
            .arg(repo_root().join("fixtures/registry/counting-proxy.py"))
            .arg(dir.path())
            .arg(&reg.addr)
            .spawn()
            .expect("python3 runs the counting proxy");
        let addr_file = dir.path().join("addr");
        for _ in 0..100 {
            if addr_file.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let addr = fs::read_to_string(&addr_file)
            .expect("the proxy came up")
            .trim()
            .to_string();
        Proxy { dir, addr, child }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Bytes sent back to clients so far.
    fn bytes(&self) -> u64 {
        fs::read_to_string(self.file("bytes"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    fn requests(&self) -> Vec<String> {
        fs::read_to_string(self.file("requests"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Runs `f`; returns its result, the bytes the proxy sent back and
    /// the requests it saw meanwhile.
    fn count<T>(&self, f: impl FnOnce() -> T) -> (T, u64, Vec<String>) {
        let (b0, r0) = (self.bytes(), self.requests().len());
        let t = f();
        (t, self.bytes() - b0, self.requests()[r0..].to_vec())
    }

    /// The registry goes away once `n` more bytes have been sent back.
    fn die_after(&self, n: u64) {
        fs::write(self.file("die-after"), (self.bytes() + n).to_string()).unwrap();
    }

    fn is_down(&self) -> bool {
        self.file("down").exists()
    }

    /// The registry is back.
    fn restart(&self) {
        let _ = fs::remove_file(self.file("down"));
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A layer of random (incompressible) bytes: its size is what a fetch of
/// it costs.
const BIG: u64 = 4_000_000;

fn dockerfile(reg: &str) -> String {
    format!(
        "FROM {reg}/base/busybox:1\n\
         RUN head -c {BIG} /dev/urandom > /big\n\
         RUN --mount=type=bind,source=dep.txt,target=/dep.txt cp /dep.txt /dep && head -c 1000000 /dev/urandom > /big2\n\
         COPY app.txt /app/\n\
         CMD [\"cat\", \"/app/app.txt\"]\n"
    )
}

struct Setup {
    _reg: Registry,
    proxy: Proxy,
    ctx: tempfile::TempDir,
    image: String,
    cache: String,
}

/// The registry with busybox in it (pushed from a seed root), the proxy,
/// and a context for the Dockerfile above.
fn setup() -> Option<Setup> {
    if !require(
        is_root(),
        "these tests build and run containers: run as root",
    ) {
        return None;
    }
    let reg = Registry::start(false)?;
    let proxy = Proxy::start(&reg);
    let seed = Kiln::new();
    if !seed.with_busybox() {
        return None;
    }
    let base = format!("{}/base/busybox:1", proxy.addr);
    seed.run(&["tag", "busybox:latest", &base]).ok();
    seed.run(&["push", "-q", &base]).ok();
    let ctx = tempfile::tempdir().unwrap();
    write_tree(
        ctx.path(),
        &[
            ("Dockerfile", dockerfile(&proxy.addr)),
            ("dep.txt", "dependencies v1\n".into()),
            ("app.txt", "app v1\n".into()),
        ],
    );
    Some(Setup {
        image: format!("{}/app/img:1", proxy.addr),
        cache: format!("{}/app/cache:main", proxy.addr),
        _reg: reg,
        proxy,
        ctx,
    })
}

/// The CI build: registry cache in and out (mode=max), push.
fn ci_build(k: &Kiln, s: &Setup) -> common::Run {
    let from = format!("type=registry,ref={}", s.cache);
    let to = format!("type=registry,ref={},mode=max", s.cache);
    k.run(&[
        "build",
        "--progress=plain",
        "--cache-from",
        &from,
        "--cache-to",
        &to,
        "--push",
        "-t",
        &s.image,
        s.ctx.path().to_str().unwrap(),
    ])
}

fn image_id(k: &Kiln, name: &str) -> String {
    let out = k.run(&["inspect", name]).ok().stdout();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v[0]["Id"].as_str().unwrap().to_string()
}

fn ran(stderr: &str) -> Vec<String> {
    cache_steps(stderr)
        .into_iter()
        .filter(|(_, o)| o == "RAN")
        .map(|(l, _)| l)
        .collect()
}

/// Blob downloads among `requests`.
fn blob_gets(requests: &[String]) -> Vec<&String> {
    requests
        .iter()
        .filter(|r| r.starts_with("GET ") && r.contains("/blobs/sha256:"))
        .collect()
}

/// Blob uploads begun among `requests`.
fn uploads(requests: &[String]) -> Vec<&String> {
    requests
        .iter()
        .filter(|r| r.starts_with("POST ") && r.contains("/blobs/uploads/"))
        .collect()
}

fn edit(dir: &Path, file: &str, text: &str) {
    fs::write(dir.join(file), text).unwrap();
}

#[test]
fn a_cached_runner_fetches_no_layer_and_what_runs_fetches_only_its_root() {
    let Some(s) = setup() else {
        return;
    };
    // Runner 1 builds and pushes the image and the cache.
    let a = Kiln::new();
    ci_build(&a, &s).ok();

    // Runner 2, empty: every step cached, no layer downloaded, nothing
    // uploaded, the same image.
    let b = Kiln::new();
    let (run, bytes, reqs) = s.proxy.count(|| ci_build(&b, &s).ok());
    assert!(
        ran(&run.stderr()).is_empty(),
        "runner 2 ran steps:\n{}",
        run.stderr()
    );
    assert!(
        bytes < 200_000,
        "runner 2 downloaded {bytes} bytes (blob GETs: {:?}):\n{}",
        blob_gets(&reqs),
        run.stderr()
    );
    assert_eq!(
        uploads(&reqs),
        Vec::<&String>::new(),
        "runner 2's push and cache export upload nothing"
    );
    assert_eq!(image_id(&b, &s.image), image_id(&a, &s.image));
    // The store says what it holds only remotely, and is consistent.
    let df = b.run(&["system", "df"]).ok().stdout();
    assert!(df.contains("Remote layers"), "{df}");
    let ls = b.run(&["cache", "ls"]).ok().stdout();
    assert!(ls.contains("(remote)"), "{ls}");
    let fsck = b.run(&["system", "fsck"]).ok().stdout();
    assert!(fsck.contains("no problems found"), "{fsck}");

    // What a fully cached runner left remote, `kiln run` fetches
    // (verified by digest), in a root of its own.
    let c = Kiln::new();
    ci_build(&c, &s).ok();
    let (out, bytes, _) = s
        .proxy
        .count(|| c.run(&["run", "--rm", &s.image]).ok().stdout());
    assert_eq!(out, "app v1\n");
    assert!(bytes > BIG, "kiln run fetched the layers ({bytes} bytes)");
    let fsck = c.run(&["system", "fsck"]).ok().stdout();
    assert!(fsck.contains("no problems found"), "{fsck}");

    // The input of the second RUN edited, on another empty runner: it
    // runs, on the layers under it (busybox and /big), fetched now; /big2
    // is never fetched.
    edit(s.ctx.path(), "dep.txt", "dependencies v2\n");
    let e = Kiln::new();
    let (run, bytes, reqs) = s.proxy.count(|| ci_build(&e, &s).ok());
    // The RUN, and the COPY above it.
    assert_eq!(ran(&run.stderr()).len(), 2, "{}", run.stderr());
    let gets = blob_gets(&reqs);
    // The cache's records document, busybox's config (FROM), busybox's
    // layer and /big.
    assert_eq!(gets.len(), 4, "{gets:?}");
    assert!(
        (BIG..BIG + 3_000_000).contains(&bytes),
        "fetched {bytes} bytes for the RUN's root:\n{}",
        run.stderr()
    );

    // A COPY source edited: the COPY runs, on its root (kiln resolves the
    // destination in it: symlinks, existing directories), fetched; the
    // layers nothing ran on stay remote.
    edit(s.ctx.path(), "app.txt", "app v2\n");
    let (run, bytes, reqs) = s.proxy.count(|| ci_build(&e, &s).ok());
    assert_eq!(ran(&run.stderr()).len(), 1, "{}", run.stderr());
    // Only the cache's new records document: the COPY's root (busybox,
    // /big, the RUN's new layer) was fetched or made by the build above.
    assert_eq!(blob_gets(&reqs).len(), 1, "{reqs:?}");
    assert!(bytes < 200_000, "{bytes} bytes fetched");

    // A deploy host pulls what runner 2 pushed, and runs it.
    let deploy = Kiln::new();
    deploy.run(&["pull", "-q", &s.image]).ok();
    let out = deploy.run(&["run", "--rm", &s.image]).ok().stdout();
    assert_eq!(out, "app v2\n");
}

#[test]
fn a_registry_lost_mid_fetch_fails_the_build_clearly_and_the_next_build_resumes() {
    let Some(s) = setup() else {
        return;
    };
    ci_build(&Kiln::new(), &s).ok();
    let b = Kiln::new();
    // The second RUN must run, on busybox's layer and /big (fetched top
    // first): the registry goes away once /big is in and busybox's layer
    // half-way.
    edit(s.ctx.path(), "dep.txt", "dependencies v2\n");
    s.proxy.die_after(BIG + 600_000);
    let (run, first, _) = s.proxy.count(|| ci_build(&b, &s).fails());
    assert!(s.proxy.is_down(), "the registry went away");
    let err = run.stderr();
    assert!(
        err.contains(&s.proxy.addr) && err.contains("cannot fetch blob sha256:"),
        "the error names the registry and the blob:\n{err}"
    );
    let fsck = b.run(&["system", "fsck"]).ok().stdout();
    assert!(fsck.contains("no problems found"), "{fsck}");

    // Back: the build completes, fetching only what it did not have.
    s.proxy.restart();
    let (run, second, reqs) = s.proxy.count(|| ci_build(&b, &s).ok());
    let gets = blob_gets(&reqs);
    assert_eq!(ran(&run.stderr()).len(), 2, "{}", run.stderr());
    assert!(
        first >= BIG,
        "the first attempt had fetched /big ({first} bytes)"
    );
    assert!(
        second < BIG,
        "the rebuild fetched {second} bytes ({gets:?}): /big was kept"
    );
    let out = b.run(&["run", "--rm", &s.image]).ok().stdout();
    assert_eq!(out, "app v1\n");
}
