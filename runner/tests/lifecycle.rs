//! Named containers: run -d → ps → logs → stop → ps -a → rm, names, stop
//! signals and timeouts, --rm, foreground runs in ps, and published ports.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use kiln_runner::{
    format_ps_table, parse_port_spec, ContainerStatus, Containers, RunError, RunOptions,
};

macro_rules! need_root {
    ($name:expr) => {
        if !can_run($name) {
            return;
        }
    };
}

/// A state dir whose containers are force-removed when the test ends, even
/// when it fails half-way (no `sleep 1000` left behind).
struct Fixture {
    c: Containers,
}

impl std::ops::Deref for Fixture {
    type Target = Containers;
    fn deref(&self) -> &Containers {
        &self.c
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for i in self.c.list(true).unwrap_or_default() {
            let _ = self.c.remove(&i.id, true);
        }
    }
}

fn containers() -> (tempfile::TempDir, Fixture) {
    let t = tempfile::tempdir().unwrap();
    let c = Containers::open(cfg(), &t.path().join("containers")).unwrap();
    (t, Fixture { c })
}

fn opts(name: &str) -> RunOptions {
    RunOptions {
        name: Some(name.into()),
        image: "busybox:test".into(),
        command: "sh -c ...".into(),
        ..Default::default()
    }
}

/// Poll `f` until it returns Some, up to 20 s (generous: CI machines are slow).
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn logs(c: &Containers, id: &str) -> String {
    let mut out = Vec::new();
    c.logs(id, false, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

#[test]
fn detached_lifecycle() {
    need_root!("detached_lifecycle");
    let (_t, c) = containers();
    let id = c
        .run_detached(
            sh("echo to-stdout; echo to-stderr >&2; exec sleep 1000"),
            opts("web"),
        )
        .unwrap();
    assert_eq!(id.len(), 64);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));

    let list = c.list(false).unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].name, "web");
    assert!(matches!(list[0].status, ContainerStatus::Running { pid } if pid > 1));
    assert!(list[0].status_text().starts_with("Up "));
    let table = format_ps_table(&list, false);
    assert!(table.starts_with("CONTAINER ID"), "{table}");
    assert!(table.contains(&id[..12]) && table.contains("busybox:test") && table.contains("web"));

    assert_eq!(c.resolve("web").unwrap(), id);
    assert_eq!(c.inspect(&id[..8]).unwrap().name, "web");
    assert_eq!(c.resolve(&id[..6]).unwrap(), id);

    let out = wait_for("logs", || {
        let l = logs(&c, "web");
        (l.contains("to-stdout") && l.contains("to-stderr")).then_some(l)
    });
    assert_eq!(out.lines().count(), 2, "{out}");
    let (mut o, mut e) = (Vec::new(), Vec::new());
    let opts = kiln_runner::LogOptions::default();
    c.logs_with(&id, &opts, &mut o, Some(&mut e)).unwrap();
    assert_eq!((&o[..], &e[..]), (&b"to-stdout\n"[..], &b"to-stderr\n"[..]));
    // json-lines like Docker's json-file driver
    let raw = std::fs::read_to_string(_t.path().join("containers").join(&id).join("container.log"))
        .unwrap();
    assert!(
        raw.contains(r#""log":"to-stdout\n","stream":"stdout","time":""#),
        "{raw}"
    );
    assert!(raw.contains(r#""stream":"stderr""#), "{raw}");

    c.stop("web", Duration::from_secs(10)).unwrap();
    assert!(c.list(false).unwrap().is_empty());
    let all = c.list(true).unwrap();
    assert_eq!(all.len(), 1);
    // sleep dies of the SIGTERM forwarded by our init.
    assert!(
        matches!(all[0].status, ContainerStatus::Exited { code: 143, .. }),
        "{:?}",
        all[0].status
    );
    assert!(all[0].status_text().starts_with("Exited (143) "));
    // Stopping again is fine, like docker.
    c.stop(&id, Duration::from_secs(1)).unwrap();
    c.remove("web", false).unwrap();
    assert!(c.list(true).unwrap().is_empty());
    assert!(matches!(
        c.resolve("web"),
        Err(RunError::NoSuchContainer(_))
    ));
    assert!(!_t.path().join("containers").join(&id).exists());
}

#[test]
fn names_collide_and_are_generated() {
    need_root!("names_collide_and_are_generated");
    let (_t, c) = containers();
    let id = c.run_detached(sh("exec sleep 1000"), opts("db")).unwrap();
    match c.run_detached(sh("true"), opts("db")) {
        Err(e @ RunError::NameInUse { .. }) => assert_eq!(
            e.to_string(),
            format!("the container name \"db\" is already in use by container \"{id}\"")
        ),
        other => panic!("expected a name collision, got {other:?}"),
    }
    assert!(matches!(
        c.run_detached(sh("true"), opts("bad name")),
        Err(RunError::InvalidName(_))
    ));
    let mut o = opts("badsig");
    o.stop_signal = Some("SIGNOPE".into());
    assert_eq!(
        c.run_detached(sh("true"), o).unwrap_err().to_string(),
        "invalid signal \"SIGNOPE\""
    );
    let mut o = opts("x");
    o.name = None;
    let id2 = c.run_detached(sh("exec sleep 1000"), o).unwrap();
    let name = c
        .list(false)
        .unwrap()
        .into_iter()
        .find(|i| i.id == id2)
        .unwrap()
        .name;
    assert!(name.contains('_'), "{name}");
    // rm refuses a running container without force.
    match c.remove("db", false) {
        Err(e @ RunError::ContainerRunning(_)) => assert!(e.to_string().contains("force")),
        other => panic!("expected refusal, got {other:?}"),
    }
    c.remove("db", true).unwrap();
    c.remove(&id2, true).unwrap();
    assert!(c.list(true).unwrap().is_empty());
}

#[test]
fn stop_escalates_to_sigkill_after_the_timeout() {
    need_root!("stop_escalates_to_sigkill_after_the_timeout");
    let (_t, c) = containers();
    c.run_detached(
        sh("trap '' TERM; echo ready; while true; do sleep 0.05; done"),
        opts("stubborn"),
    )
    .unwrap();
    wait_for("ready", || {
        logs(&c, "stubborn").contains("ready").then_some(())
    });
    c.stop("stubborn", Duration::from_millis(300)).unwrap();
    let all = c.list(true).unwrap();
    assert!(
        matches!(all[0].status, ContainerStatus::Exited { code: 137, .. }),
        "{:?}",
        all[0].status
    );
}

#[test]
fn stop_uses_the_images_stop_signal() {
    need_root!("stop_uses_the_images_stop_signal");
    let (_t, c) = containers();
    let mut o = opts("sig");
    o.stop_signal = Some("SIGUSR1".into());
    c.run_detached(
        sh("trap 'echo got-usr1; exit 42' USR1; echo ready; while true; do sleep 0.05; done"),
        o,
    )
    .unwrap();
    wait_for("ready", || logs(&c, "sig").contains("ready").then_some(()));
    c.stop("sig", Duration::from_secs(20)).unwrap();
    let all = c.list(true).unwrap();
    assert!(
        matches!(all[0].status, ContainerStatus::Exited { code: 42, .. }),
        "{:?}",
        all[0].status
    );
    assert!(logs(&c, "sig").contains("got-usr1"));
}

#[test]
fn auto_remove_and_exit_codes_and_follow() {
    need_root!("auto_remove_and_exit_codes_and_follow");
    let (_t, c) = containers();
    let mut o = opts("gone");
    o.auto_remove = true;
    c.run_detached(sh("exit 0"), o).unwrap();
    wait_for("auto-remove", || {
        c.list(true).unwrap().is_empty().then_some(())
    });

    let id = c
        .run_detached(
            sh("for i in 1 2 3; do echo line$i; sleep 0.05; done; exit 7"),
            opts("seven"),
        )
        .unwrap();
    let mut out = Vec::new();
    c.logs(&id, true, &mut out).unwrap();
    assert_eq!(String::from_utf8(out).unwrap(), "line1\nline2\nline3\n");
    let info = wait_for("exit", || {
        c.list(true)
            .unwrap()
            .into_iter()
            .find(|i| matches!(i.status, ContainerStatus::Exited { .. }))
    });
    assert!(matches!(
        info.status,
        ContainerStatus::Exited { code: 7, .. }
    ));
}

#[test]
fn exec_failure_is_reported_by_run_detached_and_leaves_nothing() {
    need_root!("exec_failure_is_reported_by_run_detached_and_leaves_nothing");
    let (_t, c) = containers();
    let e = c.run_detached(spec(&["nope"]), opts("broken")).unwrap_err();
    assert_eq!(e.exit_code(), Some(127), "{e}");
    assert_eq!(
        e.to_string(),
        "exec: \"nope\": executable file not found in $PATH"
    );
    assert!(c.list(true).unwrap().is_empty());
    // The name is free again.
    let id = c.run_detached(sh("true"), opts("broken")).unwrap();
    c.remove(&id, true).unwrap();
}

#[test]
fn foreground_runs_show_in_ps() {
    need_root!("foreground_runs_show_in_ps");
    let (t, c) = containers();
    let c = std::sync::Arc::new(c);
    let c2 = c.clone();
    let h = std::thread::spawn(move || c2.run_foreground(sh("exec sleep 1000"), opts("fg")));
    let info = wait_for("fg in ps", || c.list(false).unwrap().into_iter().next());
    assert_eq!(info.name, "fg");
    c.stop("fg", Duration::from_secs(10)).unwrap();
    assert_eq!(h.join().unwrap().unwrap(), 143);
    let all = c.list(true).unwrap();
    assert!(matches!(
        all[0].status,
        ContainerStatus::Exited { code: 143, .. }
    ));
    drop(t);
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_get(port: u16) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.write_all(b"GET /index.html HTTP/1.0\r\nHost: x\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

#[test]
fn published_port_reaches_a_loopback_only_server_with_many_clients() {
    need_root!("published_port_reaches_a_loopback_only_server_with_many_clients");
    let (_t, c) = containers();
    let port = free_port();
    let mut o = opts("httpd");
    o.ports = vec![parse_port_spec(&format!("127.0.0.1:{port}:8080")).unwrap()];
    // busybox httpd bound to the container's 127.0.0.1 only.
    let id = c
        .run_detached(
            sh(
                "mkdir -p /www && echo hello-from-kiln > /www/index.html && \
                exec httpd -f -p 127.0.0.1:8080 -h /www",
            ),
            o,
        )
        .unwrap();
    let info = c.list(false).unwrap().remove(0);
    assert_eq!(info.ports_text(), format!("127.0.0.1:{port}->8080/tcp"));
    // The server comes up a moment after the container.
    wait_for("httpd", || {
        http_get(port)
            .ok()
            .filter(|r| r.contains("hello-from-kiln"))
            .map(|_| ())
    });
    let clients: Vec<_> = (0..50)
        .map(|_| std::thread::spawn(move || http_get(port)))
        .collect();
    for cl in clients {
        let r = cl.join().unwrap().unwrap();
        assert!(
            r.starts_with("HTTP/1.") && r.contains("hello-from-kiln"),
            "{r}"
        );
    }

    // The same port again: a clear error, and no container left behind.
    let mut o = opts("clash");
    o.ports = vec![parse_port_spec(&format!("127.0.0.1:{port}:80")).unwrap()];
    let e = c.run_detached(sh("exec sleep 1000"), o).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("port {port} is already in use on 127.0.0.1")
    );
    assert_eq!(c.list(true).unwrap().len(), 1);

    // Ports with the host's network make no sense.
    let mut o = opts("hostnet");
    o.ports = vec![parse_port_spec("127.0.0.1:1:1").unwrap()];
    let mut s = sh("true");
    s.network = kiln_runner::NetworkMode::Host;
    assert!(matches!(
        c.run_detached(s, o),
        Err(RunError::InvalidSpec(_))
    ));

    c.stop(&id, Duration::from_secs(10)).unwrap();
    // The listener is gone with the monitor.
    wait_for("port released", || {
        TcpListener::bind(("127.0.0.1", port)).ok().map(|_| ())
    });
    c.remove(&id, false).unwrap();
}

#[test]
fn closing_either_side_closes_the_other() {
    need_root!("closing_either_side_closes_the_other");
    let (_t, c) = containers();
    let port = free_port();
    let mut o = opts("echo");
    o.ports = vec![parse_port_spec(&format!("127.0.0.1:{port}:9000")).unwrap()];
    // One connection at a time: the server answers, then closes.
    let id = c
        .run_detached(
            sh("while true; do echo bye | nc -l -p 9000 127.0.0.1 >/dev/null; done"),
            o,
        )
        .unwrap();
    let got = wait_for("server", || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
        s.write_all(b"hi\n").ok()?;
        let mut out = String::new();
        // read_to_string returns only when the proxy passes on the close.
        s.read_to_string(&mut out).ok()?;
        (!out.is_empty()).then_some(out)
    });
    assert_eq!(got, "bye\n");
    c.remove(&id, true).unwrap();
}

#[test]
fn killing_the_monitor_takes_the_container_down() {
    need_root!("killing_the_monitor_takes_the_container_down");
    let (t, c) = containers();
    let id = c
        .run_detached(sh("exec sleep 1000"), opts("orphan"))
        .unwrap();
    let pid = match c.list(false).unwrap()[0].status {
        ContainerStatus::Running { pid } => pid,
        ref s => panic!("{s:?}"),
    };
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(t.path().join("containers").join(&id).join("state.json")).unwrap(),
    )
    .unwrap();
    let monitor = state["supervisor_pid"].as_i64().unwrap() as i32;
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(monitor).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    // The container's PID 1 follows (parent-death signals down the chain).
    wait_for("container death", || {
        (!std::path::Path::new(&format!("/proc/{pid}")).exists()).then_some(())
    });
    let all = c.list(true).unwrap();
    assert!(
        matches!(all[0].status, ContainerStatus::Exited { code: 255, .. }),
        "{:?}",
        all[0].status
    );
    c.remove(&id, false).unwrap();
}

#[test]
fn signals_to_the_helper_reach_the_process() {
    need_root!("signals_to_the_helper_reach_the_process");
    let (t, c) = containers();
    let c = std::sync::Arc::new(c);
    let c2 = c.clone();
    let h = std::thread::spawn(move || {
        c2.run_foreground(
            sh("trap 'exit 5' USR1; touch /ready; while true; do sleep 0.05; done"),
            opts("sig-fwd"),
        )
    });
    let info = wait_for("running", || c.list(false).unwrap().into_iter().next());
    // Wait until the trap is installed (the shell touched /ready in its upper).
    let upper = t
        .path()
        .join("containers")
        .join(&info.id)
        .join("scratch/upper/ready");
    wait_for("trap installed", || upper.exists().then_some(()));
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            t.path()
                .join("containers")
                .join(&info.id)
                .join("state.json"),
        )
        .unwrap(),
    )
    .unwrap();
    // The helper (outside the container) forwards to PID 1, which forwards
    // to the process.
    let helper = state["supervisor_pid"].as_i64().unwrap() as i32;
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(helper).unwrap(),
        rustix::process::Signal::USR1,
    )
    .unwrap();
    assert_eq!(h.join().unwrap().unwrap(), 5);
}
