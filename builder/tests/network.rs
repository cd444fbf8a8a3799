//! RUN steps and `kiln run` get their own network with outbound access
//! (pasta): the host's loopback is not reachable unless `--network host`,
//! a host outside (a namespace the test makes) is; `none` has only `lo`;
//! no stack process outlives a build, even a failed or killed one.

mod common;

use std::net::{Ipv4Addr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{cache_steps, require, write_tree, Kiln};

fn setup() -> Option<Kiln> {
    if !require(common::is_root(), "network tests need root") {
        return None;
    }
    if !require(
        std::path::Path::new("/usr/bin/pasta").exists(),
        "pasta missing (apt-get install passt; scripts/deps.sh does)",
    ) {
        return None;
    }
    let k = Kiln::new();
    if !k.with_busybox() {
        return None;
    }
    Some(k)
}

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().expect("ip");
    assert!(st.success(), "ip {args:?}");
}

/// A host of the test's own: a network namespace on a veth pair with
/// addresses from 198.19.0.0/24-ish subnets of the benchmarking range
/// 198.18.0.0/15 (never routed), serving `hello.txt` with busybox httpd.
struct TestHost {
    ns: String,
    veth: String,
    server: Child,
    _docroot: tempfile::TempDir,
    addr: Ipv4Addr,
}

impl TestHost {
    fn start(body: &str) -> TestHost {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let tag = format!("{}{n}", pid % 100_000);
        let (ns, veth, peer) = (
            format!("kt-bn{tag}"),
            format!("kbh{tag}"),
            format!("kbp{tag}"),
        );
        let (a, b) = ((pid % 250) as u8, (n % 60 * 4) as u8);
        let host_ip = Ipv4Addr::new(198, 19, a, b + 1);
        let addr = Ipv4Addr::new(198, 19, a, b + 2);
        ip(&["netns", "add", &ns]);
        ip(&["link", "add", &veth, "type", "veth", "peer", "name", &peer]);
        ip(&["link", "set", &peer, "netns", &ns]);
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &veth]);
        ip(&["link", "set", &veth, "up"]);
        let cidr = format!("{addr}/30");
        for args in [
            ["addr", "add", cidr.as_str(), "dev", peer.as_str()].as_slice(),
            &["link", "set", &peer, "up"],
            &["link", "set", "lo", "up"],
        ] {
            let mut v = vec!["netns", "exec", &ns, "ip"];
            v.extend_from_slice(args);
            ip(&v);
        }
        let docroot = tempfile::tempdir().unwrap();
        std::fs::write(docroot.path().join("hello.txt"), body).unwrap();
        let server = Command::new("ip")
            .args(["netns", "exec", &ns, "/bin/busybox", "httpd", "-f", "-p"])
            .arg(format!("{addr}:8080"))
            .arg("-h")
            .arg(docroot.path())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let h = TestHost {
            ns,
            veth,
            server,
            _docroot: docroot,
            addr,
        };
        let start = Instant::now();
        while std::net::TcpStream::connect_timeout(&(addr, 8080).into(), Duration::from_millis(200))
            .is_err()
        {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "test host never served"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        h
    }

    /// A shell command printing hello.txt (busybox-static's wget crashes in
    /// its resolver; stdin stays open until the answer is in, as Debian
    /// 12's pasta mishandles an early half-close).
    fn fetch(&self) -> String {
        format!(
            "(printf 'GET /hello.txt HTTP/1.0\\r\\n\\r\\n'; sleep 3) | nc -w 5 {} 8080",
            self.addr
        )
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth])
            .status();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

/// A server on the host's 127.0.0.1 that answers "pong" and counts.
struct Pong {
    port: u16,
    hits: Arc<AtomicU32>,
}

impl Pong {
    fn start() -> Pong {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = l.local_addr().unwrap().port();
        let hits = Arc::new(AtomicU32::new(0));
        let h = hits.clone();
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                h.fetch_add(1, Ordering::SeqCst);
                let _ = std::io::Write::write_all(&mut &c, b"pong\n");
            }
        });
        Pong { port, hits }
    }

    /// Shell: prints "pong" if the server is reached.
    fn probe(&self) -> String {
        format!("(sleep 1) | nc -w 2 127.0.0.1 {} || true", self.port)
    }
}

fn build(k: &Kiln, dockerfile: &str, extra: &[&str]) -> common::Run {
    let ctx = tempfile::tempdir().unwrap();
    write_tree(ctx.path(), &[("Dockerfile", dockerfile)]);
    let mut args = vec!["build", "--progress=plain"];
    args.extend_from_slice(extra);
    args.push(ctx.path().to_str().unwrap());
    k.run(&args)
}

#[test]
fn run_steps_do_not_reach_the_host_loopback_unless_network_host() {
    let Some(k) = setup() else { return };
    let pong = Pong::start();
    let df = format!(
        "FROM busybox\nRUN {} > /got; cat /got; ! grep -q pong /got\n",
        pong.probe()
    );
    build(&k, &df, &[]).ok();
    assert_eq!(
        pong.hits.load(Ordering::SeqCst),
        0,
        "reached the host's loopback"
    );
    let df = format!("FROM busybox\nRUN {} | grep pong\n", pong.probe());
    let r = build(&k, &df, &["--network", "host"]).ok();
    assert_eq!(pong.hits.load(Ordering::SeqCst), 1);
    let err = r.stderr();
    let note: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("--network host"))
        .collect();
    assert_eq!(note.len(), 1, "{}", r.stderr());
    assert!(note[0].contains("loopback"), "{}", note[0]);
}

#[test]
fn run_steps_reach_a_host_outside_and_none_has_only_lo() {
    let Some(k) = setup() else { return };
    let host = TestHost::start("hello from outside\n");
    let df = format!(
        "FROM busybox\nRUN {} | grep 'hello from outside'\n\
         RUN --network=none test \"$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ')\" = lo\n\
         RUN test \"$(tail -n +3 /proc/net/dev | wc -l)\" = 2\n",
        host.fetch()
    );
    build(&k, &df, &[]).ok();
    // The same build again is cached, every RUN of it.
    let r = build(&k, &df, &[]).ok();
    let steps = cache_steps(&r.stderr());
    assert_eq!(steps.len(), 3, "{}", r.stderr());
    assert!(steps.iter().all(|(_, o)| o == "CACHED"), "{steps:?}");
    // --network none for the whole build: the fetch fails.
    let r = build(
        &k,
        &format!("FROM busybox\nRUN {} | grep hello\n", host.fetch()),
        &["--network", "none"],
    );
    r.fails();
}

#[test]
fn kiln_run_private_network_reaches_outside_but_not_the_host_loopback() {
    let Some(k) = setup() else { return };
    let host = TestHost::start("hello kiln run\n");
    let pong = Pong::start();
    let script = format!("{}; {}", host.fetch(), pong.probe());
    let r = k.run(&["run", "--rm", "busybox", "sh", "-c", &script]).ok();
    assert!(r.stdout().contains("hello kiln run"), "{}", r.stdout());
    assert!(!r.stdout().contains("pong"), "{}", r.stdout());
    assert_eq!(pong.hits.load(Ordering::SeqCst), 0);
    let r = k
        .run(&[
            "run",
            "--rm",
            "--network",
            "none",
            "busybox",
            "sh",
            "-c",
            "tail -n +3 /proc/net/dev | cut -d: -f1",
        ])
        .ok();
    assert_eq!(r.stdout().trim(), "lo");
    let r = k
        .run(&[
            "run",
            "--rm",
            "--network",
            "host",
            "busybox",
            "sh",
            "-c",
            &pong.probe(),
        ])
        .ok();
    assert!(r.stdout().contains("pong"));
    assert!(
        r.stderr().contains("note: --network host"),
        "{}",
        r.stderr()
    );
    // Detached: the monitor starts the stack; outbound works there too.
    let id = k
        .run(&[
            "run",
            "-d",
            "busybox",
            "sh",
            "-c",
            &format!("{}; sleep 30", host.fetch()),
        ])
        .ok()
        .stdout();
    let id = id.trim().to_string();
    let start = Instant::now();
    while !k.run(&["logs", &id]).stdout().contains("hello kiln run") {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "detached fetch never came"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    k.run(&["rm", "-f", &id]).ok();
}

/// Live (not zombie) pasta processes whose parent is `pid` or a descendant.
fn pasta_under(pid: u32) -> Vec<u32> {
    let mut todo = vec![pid];
    let mut found = Vec::new();
    while let Some(p) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for t in rd.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
                for c in s.split_whitespace().filter_map(|x| x.parse::<u32>().ok()) {
                    todo.push(c);
                    if is_live_pasta(c) {
                        found.push(c);
                    }
                }
            }
        }
    }
    found
}

fn is_live_pasta(pid: u32) -> bool {
    let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let zombie = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .trim_start()
        .starts_with('Z');
    !zombie
        && cmd
            .split(|b| *b == 0)
            .next()
            .is_some_and(|a| a.ends_with(b"pasta"))
}

/// Start a build and wait until its stack runs; returns the child and the
/// stack's PIDs. The caller waits for the child.
#[allow(clippy::zombie_processes)]
fn build_until_stack(k: &Kiln, dockerfile: &str) -> (Child, Vec<u32>, tempfile::TempDir) {
    let ctx = tempfile::tempdir().unwrap();
    write_tree(ctx.path(), &[("Dockerfile", dockerfile)]);
    let mut child = k
        .cmd()
        .args(["build", "--progress=plain", ctx.path().to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        let p = pasta_under(child.id());
        if !p.is_empty() {
            return (child, p, ctx);
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no stack ever started");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_gone(pids: &[u32]) {
    let start = Instant::now();
    while pids.iter().any(|p| is_live_pasta(*p)) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "pasta {pids:?} outlived the build"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn no_stack_outlives_a_build_that_fails_or_is_killed() {
    let Some(k) = setup() else { return };
    let (mut child, pids, _ctx) = build_until_stack(&k, "FROM busybox\nRUN sleep 1; exit 3\n");
    let st = child.wait().unwrap();
    assert!(!st.success());
    assert_gone(&pids);
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let (mut child, pids, _ctx) = build_until_stack(&k, "FROM busybox\nRUN sleep 30\n");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, sig) };
        let _ = child.wait();
        assert_gone(&pids);
    }
}

#[test]
fn a_missing_stack_names_the_package_and_the_alternatives() {
    let Some(k) = setup() else { return };
    let ctx = tempfile::tempdir().unwrap();
    write_tree(ctx.path(), &[("Dockerfile", "FROM busybox\nRUN true\n")]);
    let out = k
        .cmd()
        .env("PATH", "/nonexistent-kiln-test")
        .args(["build", "--progress=plain", ctx.path().to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    for want in [
        "pasta",
        "slirp4netns",
        "apt-get install passt",
        "--network host",
        "--network none",
    ] {
        assert!(err.contains(want), "{want} missing: {err}");
    }
    let line = err.lines().find(|l| l.contains("slirp4netns")).unwrap();
    assert_eq!(
        line.matches("slirp4netns").count(),
        2,
        "said once (plus the package): {line}"
    );
    // With --network none the same build needs no stack.
    let out = k
        .cmd()
        .env("PATH", "/nonexistent-kiln-test")
        .args(["build", "--network", "none", ctx.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
