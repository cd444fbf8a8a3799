//! Looking into containers through the binary on the offline busybox
//! image: `logs` with `--tail/--since/--until/-t/-f`, `top`, `port`, and
//! `cp` both ways, which never lets the container's links reach the
//! host's files.

mod common;

use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use common::Kiln;

fn setup() -> Option<Kiln> {
    common::root_with_busybox("containers need root")
}

/// An image FROM busybox with `body` after the FROM line.
fn image(k: &Kiln, tag: &str, body: &str) {
    let ctx = tempfile::tempdir().unwrap();
    common::write_tree(
        ctx.path(),
        &[("Dockerfile", format!("FROM busybox\n{body}"))],
    );
    k.build_dir(ctx.path(), &["-t", tag]).ok();
}

fn detached(k: &Kiln, args: &[&str]) {
    let mut a = vec!["run", "-d"];
    a.extend_from_slice(args);
    k.run(&a).ok();
}

fn wait_logs(k: &Kiln, name: &str, want: &str) -> String {
    for _ in 0..100 {
        let l = k.run(&["logs", name]).ok().stdout();
        if l.contains(want) {
            return l;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{name} never logged {want:?}");
}

fn wait_running(k: &Kiln, name: &str) {
    for _ in 0..100 {
        if k.run(&["exec", name, "true"]).code() == 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{name} never ran");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn logs_filter_by_tail_time_and_stream() {
    let Some(k) = setup() else { return };
    detached(
        &k,
        &[
            "--name",
            "talk",
            "busybox",
            "sh",
            "-c",
            "echo one; echo two >&2; sleep 1.2; echo three; sleep 100",
        ],
    );
    let all = wait_logs(&k, "talk", "three");
    // Docker's split: the container's stderr on the command's stderr.
    assert_eq!(all, "one\nthree\n");
    let r = k.run(&["logs", "talk"]).ok();
    assert_eq!(r.stderr(), "two\n");
    assert_eq!(k.run(&["logs", "-n", "1", "talk"]).ok().stdout(), "three\n");
    assert_eq!(k.run(&["logs", "--tail", "0", "talk"]).ok().stdout(), "");
    // -t: RFC 3339 with nanoseconds; the times drive --since/--until.
    let stamped = k.run(&["logs", "-t", "talk"]).ok().stdout();
    let times: Vec<&str> = stamped
        .lines()
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_eq!(times.len(), 2, "{stamped}");
    assert!(
        times.iter().all(|t| t.len() == 30 && t.ends_with('Z')),
        "{stamped}"
    );
    assert_eq!(
        stamped.lines().nth(1).unwrap(),
        format!("{} three", times[1])
    );
    let since = k.run(&["logs", "--since", times[1], "talk"]).ok();
    assert_eq!(
        (since.stdout().as_str(), since.stderr().as_str()),
        ("three\n", "")
    );
    let until = k.run(&["logs", "--until", times[0], "talk"]).ok();
    assert_eq!(until.stdout(), "one\n");
    // A duration before now: everything was logged in the last hour.
    assert_eq!(
        k.run(&["logs", "--since", "1h", "talk"]).ok().stdout(),
        "one\nthree\n"
    );
    assert_eq!(k.run(&["logs", "--until", "1h", "talk"]).ok().stdout(), "");
    let r = k.run(&["logs", "--since", "yesterday", "talk"]).fails();
    assert!(
        r.stderr().contains("invalid time \"yesterday\""),
        "{}",
        r.stderr()
    );
    let r = k.run(&["logs", "--tail", "many", "talk"]).fails();
    assert!(r.stderr().contains("--tail"), "{}", r.stderr());
    k.run(&["rm", "-f", "talk"]).ok();
    // -f ends when the container does, with everything it wrote.
    detached(
        &k,
        &[
            "--name",
            "brief",
            "busybox",
            "sh",
            "-c",
            "echo a; sleep 1; echo b",
        ],
    );
    let r = k.run(&["logs", "-f", "brief"]).ok();
    assert_eq!(r.stdout(), "a\nb\n");
    k.run(&["rm", "brief"]).ok();
}

#[test]
fn top_lists_the_containers_processes_only() {
    let Some(k) = setup() else { return };
    detached(&k, &["--name", "busy", "busybox", "sleep", "321"]);
    wait_running(&k, "busy");
    let out = k.run(&["top", "busy"]).ok().stdout();
    let mut lines = out.lines();
    let header = lines.next().unwrap();
    assert!(header.contains("PID") && header.contains("CMD"), "{out}");
    let rest: Vec<&str> = lines.collect();
    assert!(rest.iter().any(|l| l.contains("sleep 321")), "{out}");
    // Not the host's processes (the test itself, the monitor).
    assert!(rest.len() <= 2, "{out}");
    let me = std::process::id().to_string();
    assert!(!out.split_whitespace().any(|w| w == me), "{out}");
    // ps options pass through.
    let out = k.run(&["top", "busy", "-o", "pid,comm"]).ok().stdout();
    assert!(
        out.starts_with("    PID COMMAND") || out.contains("PID COMMAND"),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l.trim_end().ends_with("sleep")),
        "{out}"
    );
    let r = k.run(&["top", "busy", "-o", "comm"]).fails();
    assert!(
        r.stderr().contains("Couldn't find PID field in ps output"),
        "{}",
        r.stderr()
    );
    k.run(&["stop", "-t", "0", "busy"]).ok();
    let r = k.run(&["top", "busy"]).fails();
    assert!(
        r.stderr().contains("Container busy is not running"),
        "{}",
        r.stderr()
    );
    k.run(&["rm", "busy"]).ok();
}

#[test]
fn port_shows_what_is_published() {
    let Some(k) = setup() else { return };
    let (tcp, udp) = (free_port(), free_port());
    let p1 = format!("127.0.0.1:{tcp}:5000");
    let p2 = format!("127.0.0.1:{udp}:53/udp");
    detached(
        &k,
        &[
            "--name", "pub", "-p", &p1, "-p", &p2, "busybox", "sleep", "100",
        ],
    );
    let all = k.run(&["port", "pub"]).ok().stdout();
    assert_eq!(
        all,
        format!("5000/tcp -> 127.0.0.1:{tcp}\n53/udp -> 127.0.0.1:{udp}\n")
    );
    assert_eq!(
        k.run(&["port", "pub", "5000"]).ok().stdout(),
        format!("127.0.0.1:{tcp}\n")
    );
    assert_eq!(
        k.run(&["port", "pub", "53/udp"]).ok().stdout(),
        format!("127.0.0.1:{udp}\n")
    );
    let r = k.run(&["port", "pub", "53"]).fails();
    assert_eq!(
        r.stderr().trim(),
        "Error: No public port '53/tcp' published for pub"
    );
    let r = k.run(&["port", "nosuch"]).fails();
    assert!(
        r.stderr().contains("No such container: nosuch"),
        "{}",
        r.stderr()
    );
    k.run(&["rm", "-f", "pub"]).ok();
}

/// Out of a container: links are copied as links (a link to
/// `/etc/shadow` stays a link), paths through the container's links
/// resolve inside its root, `-L` follows the source's link inside it too.
#[test]
fn cp_out_copies_links_as_links_and_resolves_in_the_container() {
    let Some(k) = setup() else { return };
    image(
        &k,
        "cpout",
        "RUN ln -s /etc/shadow /shadowlink && echo 'ctr:x:7:7::/:/bin/sh' > /etc/passwd-ctr \
         && mkdir -p /data/sub && echo hi > /data/sub/f && ln /data/sub/f /data/hard \
         && ln -s ../../../../../etc /data/up && chmod 0750 /data/sub\n",
    );
    detached(&k, &["--name", "src", "cpout", "sleep", "100"]);
    wait_running(&k, "src");
    let host = tempfile::tempdir().unwrap();
    let h = host.path();
    let r = k
        .run(&["cp", "src:/shadowlink", &h.display().to_string()])
        .ok();
    assert!(
        r.stderr().starts_with("Successfully copied"),
        "{}",
        r.stderr()
    );
    let link = h.join("shadowlink");
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("/etc/shadow"));
    // A tree: hard links kept, modes kept, the climbing link copied as is.
    let out = h.join("out");
    k.run(&["cp", "-q", "src:/data", &out.display().to_string()])
        .ok();
    assert_eq!(std::fs::read_to_string(out.join("sub/f")).unwrap(), "hi\n");
    let (f, hard) = (
        out.join("sub/f").metadata().unwrap(),
        out.join("hard").metadata().unwrap(),
    );
    assert_eq!(f.ino(), hard.ino(), "a hard link stays one");
    assert_eq!(
        out.join("sub").metadata().unwrap().permissions().mode() & 0o777,
        0o750
    );
    assert_eq!(
        std::fs::read_link(out.join("up")).unwrap(),
        Path::new("../../../../../etc")
    );
    // Through that link: the container's /etc, never the host's.
    let got = h.join("passwd-ctr");
    k.run(&[
        "cp",
        "-q",
        "src:/data/up/passwd-ctr",
        &got.display().to_string(),
    ])
    .ok();
    assert_eq!(
        std::fs::read_to_string(&got).unwrap(),
        "ctr:x:7:7::/:/bin/sh\n"
    );
    let r = k
        .run(&[
            "cp",
            "src:/data/up/shadow",
            &h.join("s").display().to_string(),
        ])
        .fails();
    assert!(
        r.stderr().contains("Could not find the file"),
        "{}",
        r.stderr()
    );
    assert!(
        !h.join("s").exists(),
        "the host's /etc/shadow is out of reach"
    );
    // -L follows the source's link, inside the root: no such file there.
    let r = k
        .run(&[
            "cp",
            "-L",
            "src:/shadowlink",
            &h.join("s").display().to_string(),
        ])
        .fails();
    assert!(
        r.stderr().contains("Could not find the file"),
        "{}",
        r.stderr()
    );
    // `/.`: the directory's content into an existing one.
    let into = h.join("into");
    std::fs::create_dir(&into).unwrap();
    k.run(&["cp", "-q", "src:/data/.", &into.display().to_string()])
        .ok();
    assert!(into.join("sub/f").exists() && !into.join("data").exists());
    // Docker's errors.
    let r = k
        .run(&["cp", "src:/nope", &h.display().to_string()])
        .fails();
    assert!(
        r.stderr()
            .contains("Could not find the file /nope in container"),
        "{}",
        r.stderr()
    );
    let file = h.join("afile");
    std::fs::write(&file, "x").unwrap();
    let r = k
        .run(&["cp", "src:/data", &file.display().to_string()])
        .fails();
    assert!(
        r.stderr().contains("cannot copy a directory to a file"),
        "{}",
        r.stderr()
    );
    let r = k.run(&["cp", "src:/a", "src:/b"]).fails();
    assert!(r
        .stderr()
        .contains("copying between containers is not supported"));
    let r = k.run(&["cp", "/a", "/b"]).fails();
    assert!(r
        .stderr()
        .contains("must specify at least one container source"));
    k.run(&["stop", "-t", "0", "src"]).ok();
    let r = k
        .run(&["cp", "src:/data", &h.display().to_string()])
        .fails();
    assert!(r.stderr().contains("is not running"), "{}", r.stderr());
    k.run(&["rm", "src"]).ok();
}

/// Into a container: a link at the destination resolves inside the
/// container's root (never onto the host), owners are the container's
/// root unless `-a`, and a read-only mount stays read-only.
#[test]
fn cp_in_stays_in_the_container() {
    let Some(k) = setup() else { return };
    let hostdir = tempfile::tempdir().unwrap();
    let hd = hostdir.path().display().to_string();
    image(
        &k,
        "cpin",
        &format!("RUN mkdir -p {hd} && ln -s {hd} /escape\n"),
    );
    let ro = tempfile::tempdir().unwrap();
    let ro_mount = format!("{}:/ro:ro", ro.path().display());
    detached(
        &k,
        &["--name", "dst", "-v", &ro_mount, "cpin", "sleep", "100"],
    );
    wait_running(&k, "dst");
    let src = tempfile::tempdir().unwrap();
    let s = src.path();
    std::fs::create_dir(s.join("tree")).unwrap();
    std::fs::write(s.join("tree/file"), "payload").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", s.join("tree/evil")).unwrap();
    std::os::unix::fs::chown(s.join("tree/file"), Some(1234), Some(1234)).unwrap();
    let tree = s.join("tree").display().to_string();
    k.run(&["cp", "-q", &tree, "dst:/in"]).ok();
    let sh = |cmd: &str| k.run(&["exec", "dst", "sh", "-c", cmd]).ok().stdout();
    assert_eq!(sh("cat /in/file"), "payload");
    assert_eq!(sh("readlink /in/evil"), "/etc/passwd\n");
    assert_eq!(
        sh("stat -c %u:%g /in/file"),
        "0:0\n",
        "the container's root owns it"
    );
    k.run(&["cp", "-q", "-a", &tree, "dst:/kept"]).ok();
    assert_eq!(sh("stat -c %u:%g /kept/file"), "1234:1234\n");
    // The link /escape names the host dir's path: it resolves to that path
    // inside the container.
    let file = s.join("tree/file").display().to_string();
    k.run(&["cp", "-q", &file, "dst:/escape/"]).ok();
    assert_eq!(sh(&format!("cat {hd}/file")), "payload");
    assert!(
        !hostdir.path().join("file").exists(),
        "the host dir is untouched"
    );
    // A file at the destination that is a link is replaced, not followed.
    sh("ln -s /etc/hostname /victim");
    k.run(&["cp", "-q", &file, "dst:/victim"]).ok();
    assert_eq!(
        sh("cat /victim; [ -L /victim ] || echo ' plain'"),
        "payload plain\n"
    );
    let r = k.run(&["cp", &file, "dst:/ro/"]).fails();
    assert!(r.stderr().contains("read-only"), "{}", r.stderr());
    assert!(!ro.path().join("file").exists());
    let r = k.run(&["cp", &file, "dst:/nodir/"]).fails();
    assert!(r.stderr().contains("does not exist"), "{}", r.stderr());
    k.run(&["rm", "-f", "dst"]).ok();
}
