//! The private network: outbound access through the user-mode stack, the
//! host's loopback and link-local unreachable, the shared namespace of a
//! build and its teardown.

mod common;

use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use kiln_runner::{NetworkMode, RunnerConfig, SharedNet};

/// Tests that look up the stack take this: one of them sets KILN_NET_STACK.
static ENV: Mutex<()> = Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    ENV.lock().unwrap_or_else(|e| e.into_inner())
}

/// Root, busybox, and a stack; under CI=1 a missing one fails the test.
fn ready(test: &str) -> bool {
    can_run(test)
        && kiln_testkit::require(
            kiln_runner::find_stack().is_ok() || Command::new("ip").arg("-V").output().is_ok(),
            "no pasta/slirp4netns or iproute2",
        )
}

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().expect("ip");
    assert!(st.success(), "ip {args:?}");
}

/// A host of the test's own: a network namespace on a veth pair with
/// addresses from 198.18.0.0/15 (benchmarking range, never routed), serving
/// `hello.txt` over HTTP with the host's busybox httpd. Removed on drop.
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
            format!("kt-rn{tag}"),
            format!("krh{tag}"),
            format!("krp{tag}"),
        );
        // 198.18.<pid>.<4n>/30: other test processes pick other subnets.
        let (a, b) = ((pid % 250) as u8, (n % 60 * 4) as u8);
        let host_ip = Ipv4Addr::new(198, 18, a, b + 1);
        let addr = Ipv4Addr::new(198, 18, a, b + 2);
        ip(&["netns", "add", &ns]);
        ip(&["link", "add", &veth, "type", "veth", "peer", "name", &peer]);
        ip(&["link", "set", &peer, "netns", &ns]);
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &veth]);
        ip(&["link", "set", &veth, "up"]);
        let inside = |args: &[&str]| {
            let mut v = vec!["netns", "exec", &ns, "ip"];
            v.extend_from_slice(args);
            ip(&v);
        };
        inside(&["addr", "add", &format!("{addr}/30"), "dev", &peer]);
        inside(&["link", "set", &peer, "up"]);
        inside(&["link", "set", "lo", "up"]);
        let docroot = tempfile::tempdir().unwrap();
        std::fs::write(docroot.path().join("hello.txt"), body).unwrap();
        let server = Command::new("ip")
            .args(["netns", "exec", &ns, BUSYBOX, "httpd", "-f", "-p"])
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

    /// A shell command that fetches hello.txt (busybox-static's wget
    /// crashes in its resolver, so plain HTTP/1.0 through nc). stdin stays
    /// open until the answer is in: Debian 12's pasta mishandles a client
    /// that half-closes before the server answers (it repeats data).
    fn fetch(&self) -> String {
        format!(
            "(printf 'GET /hello.txt HTTP/1.0\\r\\n\\r\\n'; sleep 3) | nc -w 5 {} 8080 | sed '1,/^\\r$/d'",
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

fn private(script: &str) -> kiln_runner::ContainerSpec {
    let mut s = sh(script);
    s.network = NetworkMode::Private;
    s
}

#[test]
fn private_network_reaches_a_host_outside_through_the_stack() {
    let _g = lock();
    if !ready("private_network_reaches_a_host_outside_through_the_stack") {
        return;
    }
    let host = TestHost::start("hello from outside\n");
    let out = ok(&private(&format!(
        "{} && tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort | tr '\\n' ' '",
        host.fetch()
    )));
    assert!(out.starts_with("hello from outside\n"), "{out}");
    // lo plus the stack's interface, nothing of the host's.
    assert_eq!(
        out.lines()
            .nth(1)
            .unwrap()
            .split(' ')
            .filter(|s| !s.is_empty())
            .count(),
        2,
        "{out}"
    );
}

/// A server on the host's loopback that answers "pong" and counts its
/// connections.
struct Pong {
    port: u16,
    hits: std::sync::Arc<AtomicU32>,
}

impl Pong {
    fn start() -> Pong {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = l.local_addr().unwrap().port();
        let hits = std::sync::Arc::new(AtomicU32::new(0));
        let h = hits.clone();
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                h.fetch_add(1, Ordering::SeqCst);
                let _ = std::io::Write::write_all(&mut &c, b"pong\n");
            }
        });
        Pong { port, hits }
    }
}

/// A server on the host's 127.0.0.1: not reachable from the private network;
/// reachable with the host's.
#[test]
fn private_network_cannot_reach_the_host_loopback() {
    let _g = lock();
    if !ready("private_network_cannot_reach_the_host_loopback") {
        return;
    }
    let pong = Pong::start();
    let probe = format!("nc -w 2 127.0.0.1 {} </dev/null; echo rc=$?", pong.port);
    let out = ok(&private(&probe));
    assert!(!out.contains("pong"), "{out}");
    assert_eq!(
        pong.hits.load(Ordering::SeqCst),
        0,
        "a connection reached the host's loopback"
    );
    let mut h = sh(&probe);
    h.network = NetworkMode::Host;
    assert!(ok(&h).starts_with("pong\n"));
    assert_eq!(pong.hits.load(Ordering::SeqCst), 1);
}

/// Link-local (the cloud metadata endpoint) is refused inside the
/// namespace, before anything leaves it.
#[test]
fn link_local_is_prohibited() {
    let _g = lock();
    if !ready("link_local_is_prohibited") {
        return;
    }
    let out = ok(&private(
        "ip route; nc -w 2 169.254.169.254 80 </dev/null 2>&1; echo rc=$?",
    ));
    assert!(out.contains("prohibit 169.254.0.0/16"), "{out}");
    assert!(out.contains("rc=1"), "{out}");
}

fn netns_of(cfg: &RunnerConfig) -> String {
    let mut s = sh("readlink /proc/self/ns/net");
    s.network = NetworkMode::Private;
    let o = kiln_runner_run(cfg, &s);
    o.trim().to_string()
}

fn kiln_runner_run(cfg: &RunnerConfig, spec: &kiln_runner::ContainerSpec) -> String {
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
    let code = kiln_runner::run(
        cfg,
        spec,
        kiln_runner::Stdio {
            stdin: None,
            stdout: Some(w),
            stderr: None,
        },
    )
    .unwrap();
    assert_eq!(code, 0);
    let mut s = String::new();
    std::io::Read::read_to_string(&mut std::fs::File::from(r), &mut s).unwrap();
    s
}

/// Child processes of `pid` (all its threads).
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in rd.flatten() {
            let p: PathBuf = t.path().join("children");
            if let Ok(s) = std::fs::read_to_string(p) {
                out.extend(s.split_whitespace().filter_map(|x| x.parse::<u32>().ok()));
            }
        }
    }
    out
}

fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

#[test]
fn a_shared_network_is_joined_by_every_container_and_stopped_on_drop() {
    let _g = lock();
    if !ready("a_shared_network_is_joined_by_every_container_and_stopped_on_drop") {
        return;
    }
    let shared = SharedNet::new();
    let cfg = RunnerConfig {
        shared_net: Some(shared.clone()),
        ..cfg()
    };
    assert_eq!(shared.holder_pid(), None, "started before first use");
    let a = netns_of(&cfg);
    let b = netns_of(&cfg);
    assert_eq!(a, b, "both containers in the one namespace");
    let holder = shared.holder_pid().expect("started");
    let own = std::fs::read_link(format!("/proc/{holder}/ns/net")).unwrap();
    assert_eq!(own.to_string_lossy(), a);
    let stack = children(holder);
    assert_eq!(stack.len(), 1, "one stack process under the holder");
    assert!(alive(stack[0]));
    drop(cfg);
    drop(shared);
    assert!(!alive(holder), "holder left behind");
    assert!(!alive(stack[0]), "stack left behind");
}

#[test]
fn slirp4netns_is_the_fallback() {
    let _g = lock();
    if !ready("slirp4netns_is_the_fallback") {
        return;
    }
    if !kiln_testkit::require(
        std::path::Path::new("/usr/bin/slirp4netns").exists(),
        "slirp4netns is not installed",
    ) {
        return;
    }
    let host = TestHost::start("via slirp\n");
    std::env::set_var("KILN_NET_STACK", "slirp4netns");
    let pong = Pong::start();
    let r = run(&private(&format!(
        "{}; cat /etc/resolv.conf; nc -w 2 10.0.2.2 {} </dev/null",
        host.fetch(),
        pong.port
    )));
    std::env::remove_var("KILN_NET_STACK");
    let out = r.unwrap().stdout;
    assert!(out.starts_with("via slirp\n"), "{out}");
    assert!(out.contains("nameserver 10.0.2.3"), "{out}");
    assert!(
        !out.contains("pong"),
        "host loopback reached through slirp: {out}"
    );
    assert_eq!(pong.hits.load(Ordering::SeqCst), 0);
}

#[test]
fn no_stack_installed_is_a_clear_error() {
    let _g = lock();
    if !ready("no_stack_installed_is_a_clear_error") {
        return;
    }
    let path = std::env::var_os("PATH");
    std::env::set_var("PATH", "/nonexistent-kiln-test");
    let r = run(&private("true"));
    if let Some(p) = path {
        std::env::set_var("PATH", p);
    }
    let e = r
        .err()
        .expect("a private network without a stack must fail")
        .to_string();
    assert!(e.contains("passt") && e.contains("--network host"), "{e}");
    assert!(e.contains("/nonexistent-kiln-test"), "{e}");
}

/// Detached (the monitor runs the container): a published port still
/// reaches a server bound to the container's 127.0.0.1, outbound works, and
/// the stack goes with the container.
#[test]
fn a_detached_private_container_serves_its_port_and_reaches_out() {
    let _g = lock();
    if !ready("a_detached_private_container_serves_its_port_and_reaches_out") {
        return;
    }
    let host = TestHost::start("outbound from detached\n");
    let t = tempfile::tempdir().unwrap();
    let c = kiln_runner::Containers::open(cfg(), &t.path().join("containers")).unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let opts = kiln_runner::RunOptions {
        name: Some("web".into()),
        image: "busybox:test".into(),
        ports: vec![kiln_runner::parse_port_spec(&format!("127.0.0.1:{port}:8080")).unwrap()],
        ..Default::default()
    };
    let id = c
        .run_detached(
            private(&format!(
                "mkdir -p /www && {} > /www/index.html && exec httpd -f -p 127.0.0.1:8080 -h /www",
                host.fetch()
            )),
            opts,
        )
        .unwrap();
    let start = Instant::now();
    let body = loop {
        let got = (|| -> std::io::Result<String> {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        })();
        match got {
            Ok(b) if b.contains("outbound from detached") => break b,
            _ if start.elapsed() > Duration::from_secs(20) => panic!("never served: {got:?}"),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    assert!(body.starts_with("HTTP/1."), "{body}");
    let pid = match c.inspect(&id).unwrap().status {
        kiln_runner::ContainerStatus::Running { pid } => pid as u32,
        s => panic!("not running: {s:?}"),
    };
    // The stack is a sibling of the container's PID 1, under its helper.
    let helper: u32 = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap()
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let stack: Vec<u32> = children(helper).into_iter().filter(|p| *p != pid).collect();
    assert_eq!(stack.len(), 1, "{stack:?}");
    c.remove(&id, true).unwrap();
    let start = Instant::now();
    while alive(stack[0]) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "stack outlived the container"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
