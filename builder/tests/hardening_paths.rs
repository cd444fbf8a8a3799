//! Issue 20, item 1: every path a Dockerfile names is resolved inside its
//! own root (the context, a stage, an image), never on the host. Each test
//! makes its own host "victims" (a canary file with a unique token, a file
//! that must keep its content, an empty directory that must stay empty) in
//! a temp dir and points the Dockerfile's symlinks at them; none touches a
//! real system file. Needs root (builds run containers).

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use common::{require, write_tree, Kiln};

fn setup() -> Option<Kiln> {
    common::root_with_busybox("kiln build runs containers: needs root")
}

/// The host side of a test: `secret` holds `token` (it must never be
/// read), `victim` holds "ORIGINAL\n" (it must never be written), `empty`
/// is a directory nothing may be created in.
struct Host {
    dir: tempfile::TempDir,
    token: String,
}

impl Host {
    fn new() -> Host {
        let dir = tempfile::Builder::new()
            .prefix("kiln-victim-")
            .tempdir()
            .unwrap();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let token = format!("KILN-CANARY-{}-{nanos}", std::process::id());
        fs::write(dir.path().join("secret"), format!("{token}\n")).unwrap();
        fs::write(dir.path().join("victim"), "ORIGINAL\n").unwrap();
        fs::create_dir(dir.path().join("empty")).unwrap();
        Host { dir, token }
    }
    fn secret(&self) -> PathBuf {
        self.dir.path().join("secret")
    }
    fn victim(&self) -> PathBuf {
        self.dir.path().join("victim")
    }
    fn empty(&self) -> PathBuf {
        self.dir.path().join("empty")
    }
    #[track_caller]
    fn untouched(&self) {
        assert_eq!(fs::read_to_string(self.victim()).unwrap(), "ORIGINAL\n");
        let left: Vec<_> = fs::read_dir(self.empty())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "created on the host: {left:?}");
    }
}

fn build(k: &Kiln, dir: &Path, extra: &[&str]) -> common::Run {
    k.build_dir(dir, extra)
}

fn export(k: &Kiln, dir: &Path, out: &Path, extra: &[&str]) -> common::Run {
    k.export_dir(dir, out, extra)
}

fn dockerfile(ctx: &Path, text: &str) {
    fs::write(ctx.join("Dockerfile"), text).unwrap();
}

/// A build that must fail with `want` in its message, never showing the
/// canary's content.
#[track_caller]
fn fails_with(k: &Kiln, ctx: &Path, host: &Host, want: &str) -> String {
    let r = build(k, ctx, &[]).fails();
    let err = r.stderr();
    assert!(err.contains(want), "expected {want:?} in:\n{err}");
    assert!(!err.contains(&host.token), "the host file leaked:\n{err}");
    host.untouched();
    err
}

fn read(out: &Path, name: &str) -> String {
    fs::read_to_string(out.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn bind_source_symlink_to_a_host_file_is_not_found_in_the_context() {
    let Some(k) = setup() else { return };
    let host = Host::new();
    let ctx = tempfile::tempdir().unwrap();
    symlink(host.secret(), ctx.path().join("s")).unwrap();
    // The same file reached with enough ".." to climb out of any context.
    let up = format!("{}{}", "../".repeat(30), host.secret().display());
    symlink(&up, ctx.path().join("r")).unwrap();
    for src in ["s", "r"] {
        for rw in ["", ",rw"] {
            dockerfile(
                ctx.path(),
                &format!("FROM busybox\nRUN --mount=type=bind,source={src},target=/m{rw} cat /m\n"),
            );
            let err = fails_with(&k, ctx.path(), &host, &format!("\"/{src}\": not found"));
            assert!(err.contains("Dockerfile:2"), "{err}");
        }
    }
}

#[test]
fn rw_bind_source_symlink_cannot_write_a_host_file() {
    let Some(k) = setup() else { return };
    let host = Host::new();
    let ctx = tempfile::tempdir().unwrap();
    symlink(host.victim(), ctx.path().join("v")).unwrap();
    dockerfile(
        ctx.path(),
        "FROM busybox\nRUN --mount=type=bind,source=v,target=/m,rw sh -c \"echo PWNED > /m\"\n",
    );
    fails_with(&k, ctx.path(), &host, "\"/v\": not found");
    // A directory link, written through: nothing lands on the host either.
    symlink(host.empty(), ctx.path().join("d")).unwrap();
    dockerfile(
        ctx.path(),
        "FROM busybox\nRUN --mount=type=bind,source=d,target=/m,rw sh -c \"echo PWNED > /m/x\"\n",
    );
    fails_with(&k, ctx.path(), &host, "\"/d\": not found");
}

#[test]
fn bind_source_symlink_to_root_mounts_the_context_root() {
    let Some(k) = setup() else { return };
    let ctx = tempfile::tempdir().unwrap();
    write_tree(ctx.path(), &[("marker", "context\n")]);
    symlink("/", ctx.path().join("s")).unwrap();
    dockerfile(
        ctx.path(),
        "FROM busybox\n\
         RUN --mount=type=bind,source=s,target=/m ls -A /m > /seen && cat /m/marker > /marker\n\
         RUN --mount=type=bind,source=s,target=/m,rw ls -A /m > /seen-rw && echo x > /m/new\n",
    );
    let out = tempfile::tempdir().unwrap();
    export(&k, ctx.path(), out.path(), &[]).ok();
    // The context's root, not the host's (which has /etc, /proc, ...).
    assert_eq!(read(out.path(), "seen"), "Dockerfile\nmarker\ns\n");
    assert_eq!(read(out.path(), "seen-rw"), "Dockerfile\nmarker\ns\n");
    assert_eq!(read(out.path(), "marker"), "context\n");
    assert!(!ctx.path().join("new").exists());
}

#[test]
fn an_ignored_file_is_never_visible_through_a_symlink() {
    let Some(k) = setup() else { return };
    let host = Host::new();
    let ctx = tempfile::tempdir().unwrap();
    write_tree(
        ctx.path(),
        &[
            (".dockerignore", "secret.key\n".to_string()),
            ("secret.key", format!("{}\n", host.token)),
            ("keep.txt", "kept\n".to_string()),
        ],
    );
    symlink("secret.key", ctx.path().join("alias")).unwrap();
    symlink("/secret.key", ctx.path().join("abs-alias")).unwrap();
    for src in ["alias", "abs-alias"] {
        dockerfile(
            ctx.path(),
            &format!("FROM busybox\nRUN --mount=type=bind,source={src},target=/m cat /m\n"),
        );
        fails_with(&k, ctx.path(), &host, &format!("\"/{src}\": not found"));
    }
    // The whole context: the links stay links, and what they name is not
    // there (the container resolves them in its own root).
    dockerfile(
        ctx.path(),
        "FROM busybox\n\
         RUN --mount=type=bind,target=/ctx sh -c 'readlink /ctx/alias > /link; \
         cat /ctx/alias /ctx/abs-alias > /got 2>/dev/null; ls -A /ctx > /seen; true'\n",
    );
    let out = tempfile::tempdir().unwrap();
    export(&k, ctx.path(), out.path(), &[]).ok();
    assert_eq!(read(out.path(), "link"), "secret.key\n");
    assert_eq!(read(out.path(), "got"), "");
    assert_eq!(
        read(out.path(), "seen"),
        ".dockerignore\nDockerfile\nabs-alias\nalias\nkeep.txt\n"
    );
}

#[test]
fn symlinks_in_a_bind_source_path_resolve_inside_the_context() {
    let Some(k) = setup() else { return };
    let host = Host::new();
    let ctx = tempfile::tempdir().unwrap();
    write_tree(ctx.path(), &[("sub/f", "inner\n")]);
    symlink("/sub", ctx.path().join("d")).unwrap();
    symlink("../../../..", ctx.path().join("up")).unwrap();
    symlink(host.secret(), ctx.path().join("sub/l")).unwrap();
    dockerfile(
        ctx.path(),
        "FROM busybox\n\
         RUN --mount=type=bind,source=d/f,target=/a \
             --mount=type=bind,source=up/sub/f,target=/b \
             --mount=type=bind,source=d,target=/c \
             sh -c 'cat /a > /a.txt; cat /b > /b.txt; ls -A /c > /c.txt; readlink /c/l > /l.txt; \
             cat /c/l > /l-content 2>/dev/null; true'\n",
    );
    let out = tempfile::tempdir().unwrap();
    export(&k, ctx.path(), out.path(), &[]).ok();
    assert_eq!(read(out.path(), "a.txt"), "inner\n");
    assert_eq!(read(out.path(), "b.txt"), "inner\n");
    assert_eq!(read(out.path(), "c.txt"), "f\nl\n");
    // A link inside the mounted tree stays a link, resolved by the
    // container in its own root, where the host's file is not.
    assert_eq!(
        read(out.path(), "l.txt"),
        format!("{}\n", host.secret().display())
    );
    assert_eq!(read(out.path(), "l-content"), "");
}

#[test]
fn cache_mount_source_resolves_inside_the_from_stage() {
    let Some(k) = setup() else { return };
    let host = Host::new();
    let ctx = tempfile::tempdir().unwrap();
    let stage = format!(
        "FROM busybox AS src\n\
         RUN mkdir -p /d && echo stage > /d/marker && ln -s / /d/root && ln -s {} /hostlink\n",
        host.dir.path().display()
    );
    dockerfile(
        ctx.path(),
        &format!(
            "{stage}FROM busybox\n\
             RUN --mount=type=cache,target=/c,from=src,source=/d/root cat /c/d/marker > /got\n"
        ),
    );
    let out = tempfile::tempdir().unwrap();
    export(&k, ctx.path(), out.path(), &[]).ok();
    assert_eq!(read(out.path(), "got"), "stage\n");
    // A link to a host directory names nothing in the stage.
    dockerfile(
        ctx.path(),
        &format!(
            "{stage}FROM busybox\n\
             RUN --mount=type=cache,target=/c,from=src,source=/hostlink ls /c\n"
        ),
    );
    fails_with(
        &k,
        ctx.path(),
        &host,
        "\"/hostlink\" is not a directory there",
    );
}

/// An image whose /run/secrets is a link to a host directory and /run/up a
/// link to "/", for secret and ssh targets behind them.
fn linked_run_dirs(host: &Host) -> String {
    format!(
        "FROM busybox\nRUN mkdir -p /run && ln -s {} /run/secrets && ln -s / /run/up\n",
        host.empty().display()
    )
}

#[test]
fn secret_targets_behind_image_symlinks_stay_in_the_container() {
    let Some(k) = setup() else { return };
    let host = Host::new();
    let ctx = tempfile::tempdir().unwrap();
    let uniq = format!("kiln-secret-{}", std::process::id());
    dockerfile(
        ctx.path(),
        &format!(
            "{}RUN --mount=type=secret,id=tok,target=/run/secrets/tok cat {}/tok > /got1\n\
             RUN --mount=type=secret,id=tok,target=/run/up/{uniq} cat /{uniq} > /got2\n",
            linked_run_dirs(&host),
            host.empty().display()
        ),
    );
    let out = tempfile::tempdir().unwrap();
    let sec = format!("id=tok,src={}", host.secret().display());
    export(&k, ctx.path(), out.path(), &["--secret", &sec]).ok();
    // Mounted where the link leads inside the container's root...
    assert_eq!(read(out.path(), "got1"), format!("{}\n", host.token));
    assert_eq!(read(out.path(), "got2"), format!("{}\n", host.token));
    // ...and nowhere on the host.
    host.untouched();
    assert!(!Path::new("/").join(&uniq).exists());
}

#[test]
fn ssh_targets_behind_image_symlinks_stay_in_the_container() {
    let Some(k) = setup() else { return };
    if !require(
        Path::new("/usr/bin/ssh-agent").exists(),
        "OpenSSH's ssh-agent is not installed (openssh-client; scripts/deps.sh installs it)",
    ) {
        return;
    }
    let host = Host::new();
    let agent_dir = tempfile::tempdir().unwrap();
    let sock = agent_dir.path().join("agent.sock");
    let mut agent = std::process::Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&sock)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if sock.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let ctx = tempfile::tempdir().unwrap();
    let uniq = format!("kiln-ssh-{}.sock", std::process::id());
    dockerfile(
        ctx.path(),
        &format!(
            "{}RUN --mount=type=ssh,target=/run/secrets/agent.sock test -S {}/agent.sock && echo in > /got1\n\
             RUN --mount=type=ssh,target=/run/up/{uniq} test -S /{uniq} && echo in > /got2\n",
            linked_run_dirs(&host),
            host.empty().display()
        ),
    );
    let out = tempfile::tempdir().unwrap();
    let spec = format!("default={}", sock.display());
    let r = export(&k, ctx.path(), out.path(), &["--ssh", &spec]);
    let _ = agent.kill();
    let _ = agent.wait();
    r.ok();
    assert_eq!(read(out.path(), "got1"), "in\n");
    assert_eq!(read(out.path(), "got2"), "in\n");
    host.untouched();
    assert!(!Path::new("/").join(&uniq).exists());
}

#[test]
fn copy_from_a_stage_resolves_symlinks_in_the_stage() {
    let Some(k) = setup() else { return };
    let host = Host::new();
    let ctx = tempfile::tempdir().unwrap();
    let stage = format!(
        "FROM busybox AS src\n\
         RUN echo stage > /etc/stage-marker && ln -s / /rootlink && ln -s {} /hostlink \
             && mkdir /d && ln -s {} /d/l\n",
        host.dir.path().display(),
        host.secret().display()
    );
    dockerfile(
        ctx.path(),
        &format!(
            "{stage}FROM scratch\n\
             COPY --from=src /rootlink/etc/stage-marker /got\n\
             COPY --from=src /d/ /d/\n"
        ),
    );
    let out = tempfile::tempdir().unwrap();
    export(&k, ctx.path(), out.path(), &[]).ok();
    assert_eq!(read(out.path(), "got"), "stage\n");
    let l = out.path().join("d/l");
    assert!(fs::symlink_metadata(&l).unwrap().file_type().is_symlink());
    assert_eq!(fs::read_link(&l).unwrap(), host.secret());
    dockerfile(
        ctx.path(),
        &format!("{stage}FROM scratch\nCOPY --from=src /hostlink/secret /x\n"),
    );
    fails_with(&k, ctx.path(), &host, "\"/hostlink/secret\": not found");
}

#[test]
fn copy_from_the_context_resolves_symlinks_in_the_context() {
    let Some(k) = setup() else { return };
    let host = Host::new();
    let ctx = tempfile::tempdir().unwrap();
    write_tree(ctx.path(), &[("inside.txt", "inside\n"), ("sub/f", "f\n")]);
    symlink(host.secret(), ctx.path().join("s")).unwrap();
    symlink("/inside.txt", ctx.path().join("in")).unwrap();
    symlink("../../../../sub", ctx.path().join("up")).unwrap();
    fs::create_dir(ctx.path().join("d")).unwrap();
    symlink(host.secret(), ctx.path().join("d/l")).unwrap();
    dockerfile(
        ctx.path(),
        "FROM scratch\nCOPY in /in\nCOPY up/f /up-f\nCOPY d/ /d/\n",
    );
    let out = tempfile::tempdir().unwrap();
    export(&k, ctx.path(), out.path(), &[]).ok();
    // Links are followed as BuildKit does, clamped to the context's root.
    assert_eq!(read(out.path(), "in"), "inside\n");
    assert_eq!(read(out.path(), "up-f"), "f\n");
    let l = out.path().join("d/l");
    assert!(fs::symlink_metadata(&l).unwrap().file_type().is_symlink());
    assert_eq!(fs::read_link(&l).unwrap(), host.secret());
    dockerfile(ctx.path(), "FROM scratch\nCOPY s /x\n");
    fails_with(&k, ctx.path(), &host, "\"/s\": not found");
}

/// A ustar header block for `name` (a file of `size` bytes, or a link).
fn tar_header(name: &str, kind: u8, link: &str, size: usize) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..107].copy_from_slice(b"0000644");
    h[108..115].copy_from_slice(b"0000000");
    h[116..123].copy_from_slice(b"0000000");
    h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
    h[136..147].copy_from_slice(b"00000000000");
    h[148..156].copy_from_slice(b"        ");
    h[156] = kind;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    h
}

/// A tar member: name, type flag, link target, content.
type Member<'a> = (&'a str, u8, &'a str, &'a str);

/// A tar of members written as is (no cleaning: these are the
/// adversarial archives).
fn raw_tar(members: &[Member]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind, link, body) in members {
        out.extend_from_slice(&tar_header(name, *kind, link, body.len()));
        out.extend_from_slice(body.as_bytes());
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

#[test]
fn add_of_an_archive_linked_out_of_the_context_fails() {
    let Some(k) = setup() else { return };
    let host = Host::new();
    let evil = host.dir.path().join("evil.tar");
    fs::write(&evil, raw_tar(&[("pwned", b'0', "", "x\n")])).unwrap();
    let ctx = tempfile::tempdir().unwrap();
    symlink(&evil, ctx.path().join("a.tar")).unwrap();
    dockerfile(ctx.path(), "FROM scratch\nADD a.tar /x/\n");
    fails_with(&k, ctx.path(), &host, "\"/a.tar\": not found");
}

#[test]
fn add_archive_members_cannot_leave_the_destination() {
    let Some(k) = setup() else { return };
    let host = Host::new();
    let empty = host.empty().display().to_string();
    let dotdot = format!(
        "{}{}/dotdot",
        "../".repeat(20),
        empty.trim_start_matches('/')
    );
    let abs = format!("{empty}/abs");
    let secret = host.secret().display().to_string();
    let cases: Vec<(&str, Vec<Member>)> = vec![
        ("dotdot", vec![(dotdot.as_str(), b'0', "", "PWNED\n")]),
        ("absolute", vec![(abs.as_str(), b'0', "", "PWNED\n")]),
        (
            "symlink-then-file",
            vec![
                ("l", b'2', empty.as_str(), ""),
                ("l/via-link", b'0', "", "PWNED\n"),
            ],
        ),
        (
            "relative-symlink-then-file",
            vec![
                (
                    "r",
                    b'2',
                    "../../../../../../../../../../../../../../..",
                    "",
                ),
                ("r/escaped", b'0', "", "PWNED\n"),
            ],
        ),
        ("hardlink-out", vec![("h", b'1', secret.as_str(), "")]),
    ];
    for (what, members) in cases {
        let ctx = tempfile::tempdir().unwrap();
        fs::write(ctx.path().join("evil.tar"), raw_tar(&members)).unwrap();
        dockerfile(ctx.path(), "FROM scratch\nADD evil.tar /x/\n");
        let out = tempfile::tempdir().unwrap();
        let r = export(&k, ctx.path(), out.path(), &[]);
        host.untouched();
        let err = r.stderr();
        assert!(!err.contains(&host.token), "{what}: leaked\n{err}");
        if r.code() != 0 {
            // Refused: the message names the archive.
            assert!(err.contains("evil.tar"), "{what}: {err}");
        }
        // Whatever was extracted is inside the image, and no member holds
        // the host's file.
        let got = std::process::Command::new("grep")
            .args(["-rl", &host.token])
            .arg(out.path())
            .output()
            .unwrap();
        assert!(got.stdout.is_empty(), "{what}: {:?}", got);
    }
}
