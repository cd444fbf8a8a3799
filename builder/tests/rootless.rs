//! Rootless kiln: `kiln build` run as an ordinary user (the fixture users
//! of fixtures/rootless/make-users.sh, which scripts/test.sh runs), with
//! its store in the user's $XDG_DATA_HOME and RUN steps in a user namespace
//! mapping container root to the user and 1..65536 to its subordinate
//! range. The tests run as root and start kiln as the user with setpriv,
//! from a copy of the binary in a temp dir the user owns.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{is_root, kiln_bin, require, Kiln};

/// A fixture user with a temp dir of its own (HOME, XDG_DATA_HOME, contexts)
/// and a copy of the kiln binary it can execute.
struct User {
    name: &'static str,
    dir: tempfile::TempDir,
    kiln: PathBuf,
}

fn id_of(name: &str, flag: &str) -> Option<u32> {
    let out = Command::new("id").args([flag, name]).output().ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

impl User {
    fn new(name: &'static str) -> Option<User> {
        if !require(is_root(), "needs root (to run kiln as the fixture users)")
            || !require(
                id_of(name, "-u").is_some(),
                &format!("user {name} missing: run fixtures/rootless/make-users.sh (scripts/test.sh does)"),
            )
        {
            return None;
        }
        let base = std::env::var_os("KILN_TEST_TMP")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let dir = tempfile::Builder::new()
            .prefix("kiln-rootless-")
            .tempdir_in(base)
            .expect("temp dir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let kiln = dir.path().join("kiln");
        std::fs::copy(kiln_bin(), &kiln).expect("copy kiln");
        std::fs::set_permissions(&kiln, std::fs::Permissions::from_mode(0o755)).unwrap();
        // Installed as root installs them: kiln-helper beside kiln, root's.
        let helper = dir.path().join("kiln-helper");
        std::fs::copy(env!("CARGO_BIN_EXE_kiln-helper"), &helper).expect("copy kiln-helper");
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        for d in ["home", "data"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        let u = User { name, dir, kiln };
        u.chown(&u.dir.path().join("home"));
        u.chown(&u.dir.path().join("data"));
        Some(u)
    }

    fn chown(&self, p: &Path) {
        let st = Command::new("chown")
            .args(["-R", &format!("{0}:{0}", self.name)])
            .arg(p)
            .status()
            .unwrap();
        assert!(st.success(), "chown {}", p.display());
    }

    /// The store kiln uses for this user: $XDG_DATA_HOME/kiln.
    fn store(&self) -> PathBuf {
        self.dir.path().join("data/kiln")
    }

    /// A build context owned by the user.
    fn context(&self, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let d = self.dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        for (f, text) in files {
            std::fs::write(d.join(f), text).unwrap();
        }
        self.chown(&d);
        d
    }

    /// kiln as the user, with a clean environment.
    fn cmd(&self, env: &[(&str, &str)]) -> Command {
        let mut c = Command::new("setpriv");
        c.args(["--reuid", self.name, "--regid", self.name, "--init-groups"])
            .arg("env")
            .arg("-i")
            .arg("PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
            .arg(format!("HOME={}", self.dir.path().join("home").display()))
            .arg(format!(
                "XDG_DATA_HOME={}",
                self.dir.path().join("data").display()
            ));
        for (k, v) in env {
            c.arg(format!("{k}={v}"));
        }
        c.arg(&self.kiln).current_dir(self.dir.path());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_env(&[], args)
    }

    fn run_env(&self, env: &[(&str, &str)], args: &[&str]) -> Output {
        self.cmd(env).args(args).output().expect("spawn setpriv")
    }

    /// busybox:latest from a root store, through `kiln save` / `kiln load`,
    /// so the user's base is the very image a root build uses.
    fn load_busybox(&self, root: &Kiln) {
        let tar = self.dir.path().join("busybox.tar");
        ok(root
            .run(&["save", "-o", tar.to_str().unwrap(), "busybox:latest"])
            .out);
        std::fs::set_permissions(&tar, std::fs::Permissions::from_mode(0o644)).unwrap();
        ok(self.run(&["load", "-i", tar.to_str().unwrap()]));
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[track_caller]
fn ok(o: Output) -> Output {
    assert!(
        o.status.success(),
        "kiln failed ({}):\n{}",
        o.status,
        text(&o)
    );
    o
}

#[track_caller]
fn fails(o: Output) -> Output {
    assert!(
        !o.status.success(),
        "kiln should have failed:\n{}",
        text(&o)
    );
    o
}

fn subordinate_start(name: &str, file: &str) -> u32 {
    let t = std::fs::read_to_string(file).unwrap();
    t.lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f[0] == name).then(|| f[1].parse().unwrap())
        })
        .unwrap_or_else(|| panic!("{name} has no range in {file}"))
}

/// A root store with busybox:latest.
fn root_with_busybox() -> Option<Kiln> {
    let k = Kiln::new();
    k.with_busybox().then_some(k)
}

#[test]
fn a_user_builds_with_run_steps_in_a_user_namespace_over_its_subordinate_range() {
    let Some(u) = User::new("kiln-rl") else {
        return;
    };
    let Some(root) = root_with_busybox() else {
        return;
    };
    u.load_busybox(&root);
    let ctx = u.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM busybox:latest AS build\n\
             RUN --mount=type=cache,target=/cache,uid=1000 touch /cache/seen && ls -ln /cache\n\
             RUN --network=host ls /sys/class/net > /host-net\n\
             RUN --network=none ip -o link > /none-net\n\
             FROM busybox:latest\n\
             COPY --from=build /none-net /host-net /\n\
             RUN cat /proc/self/uid_map /proc/self/gid_map && id -u\n\
             RUN mkdir /d && touch /d/f && chown 1000:1000 /d/f && ls -ln /d\n\
             RUN echo none: $(wc -l < /none-net) host: $(wc -l < /host-net)\n",
        )],
    );
    let out = ok(u.run(&[
        "build",
        "--progress=plain",
        "-t",
        "t:1",
        ctx.to_str().unwrap(),
    ]));
    let log = text(&out);
    let uid = id_of("kiln-rl", "-u").unwrap();
    let gid = id_of("kiln-rl", "-g").unwrap();
    let sub_u = subordinate_start("kiln-rl", "/etc/subuid");
    let sub_g = subordinate_start("kiln-rl", "/etc/subgid");
    let lines: Vec<Vec<String>> = log
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(_, rest)| rest))
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect();
    let has = |want: [u32; 3]| {
        let want: Vec<String> = want.iter().map(|n| n.to_string()).collect();
        lines.iter().any(|l| l.ends_with(&want))
    };
    // Container root is the user; 1..65536 are its subordinate IDs.
    assert!(has([0, uid, 1]) && has([1, sub_u, 65536]), "{log}");
    assert!(has([0, gid, 1]) && has([1, sub_g, 65536]), "{log}");
    assert!(log.contains("1000     1000"), "chown in RUN works:\n{log}");
    // --network none has lo only; host sees the host's interfaces.
    assert!(log.contains("none: 1 host: "), "{log}");
    assert!(
        !log.contains("host: 0") && !log.contains("host: 1\n"),
        "{log}"
    );
    // Cached, then explained.
    let again = text(&ok(u.run(&[
        "build",
        "--progress=plain",
        "-t",
        "t:1",
        ctx.to_str().unwrap(),
    ])));
    assert!(again.contains("CACHED"), "{again}");
    let why = text(&ok(u.run(&["cache", "why", "t:1"])));
    assert!(why.contains("all 7 steps were cache hits"), "{why}");
    assert!(!log.contains("warning"), "{log}");
    // The store is the user's own, $XDG_DATA_HOME/kiln.
    assert!(u.store().join("kiln.db").is_file(), "{log}");
    let images = text(&ok(u.run(&["images"])));
    assert!(
        images.contains("t") && images.contains("busybox"),
        "{images}"
    );
}

/// Files RUN steps give to container users (1000, 65534) and to container
/// root are recorded with container IDs: the rootless and the root build of
/// one Dockerfile and context, with SOURCE_DATE_EPOCH, are the same image.
#[test]
fn a_rootless_build_gives_the_image_a_root_build_gives() {
    let Some(u) = User::new("kiln-rl") else {
        return;
    };
    let Some(root) = root_with_busybox() else {
        return;
    };
    u.load_busybox(&root);
    let dockerfile = "FROM busybox:latest\n\
        RUN mkdir -p /d1 /d2 /opq && touch /d1/f /d2/g /opq/x\n\
        RUN chown 1000:1000 /d1/f && chown -R 65534:65534 /d2 && rm /bin/vi \
            && rm -rf /opq && mkdir /opq && touch /opq/y\n\
        RUN echo 'app:x:1000:1000::/home/app:/bin/sh' >> /etc/passwd \
            && echo 'app:x:1000:' >> /etc/group && mkdir -p /home/app && chown app:app /home/app\n\
        USER app\n\
        RUN touch /home/app/mine && chmod 600 /home/app/mine\n\
        USER root\n\
        COPY --chown=65534:65534 data.txt /ctx/\n";
    let files = [("Dockerfile", dockerfile), ("data.txt", "data\n")];
    let ctx = u.context("ctx", &files);
    let epoch = [("SOURCE_DATE_EPOCH", "1700000000")];
    let iid = u.dir.path().join("home/iid");
    ok(u.run_env(
        &epoch,
        &[
            "build",
            "-q",
            "--iidfile",
            iid.to_str().unwrap(),
            "-t",
            "same",
            ctx.to_str().unwrap(),
        ],
    ));
    let rootless_id = std::fs::read_to_string(&iid).unwrap();
    // Copied roots instead of overlayfs (where the kernel refuses it in a
    // user namespace): still the same image.
    let native = [
        ("SOURCE_DATE_EPOCH", "1700000000"),
        ("KILN_SNAPSHOTTER", "native"),
    ];
    let r = u.run_env(
        &native,
        &[
            "build",
            "-q",
            "--no-cache",
            "--iidfile",
            iid.to_str().unwrap(),
            ctx.to_str().unwrap(),
        ],
    );
    ok(r);
    assert_eq!(
        std::fs::read_to_string(&iid).unwrap(),
        rootless_id,
        "rootless native and overlayfs builds differ"
    );

    let root_ctx = tempfile::tempdir().unwrap();
    for (f, t) in files {
        std::fs::write(root_ctx.path().join(f), t).unwrap();
    }
    let out = root
        .cmd()
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .args([
            "build",
            "-q",
            "-t",
            "same",
            root_ctx.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let root_id = String::from_utf8_lossy(&ok(out).stdout).trim().to_string();
    assert_eq!(
        rootless_id.trim(),
        root_id,
        "rootless and root builds differ"
    );

    // And the owners in the layers are the container's, never host IDs.
    let tar = u.dir.path().join("same.tar");
    ok(root.run(&["save", "-o", tar.to_str().unwrap(), "same"]).out);
    let owners = layer_owners(&tar);
    for (path, want) in [
        ("d1/f", (1000, 1000)),
        ("d2/g", (65534, 65534)),
        ("home/app/", (1000, 1000)),
        ("home/app/mine", (1000, 1000)),
        ("ctx/data.txt", (65534, 65534)),
        ("opq/y", (0, 0)),
    ] {
        assert_eq!(owners.get(path), Some(&want), "{path}: {owners:?}");
    }
}

/// Every entry's owner in the image's layers, by path (the last layer that
/// has it wins).
fn layer_owners(docker_archive: &Path) -> std::collections::HashMap<String, (u64, u64)> {
    let mut owners = std::collections::HashMap::new();
    let mut outer = tar::Archive::new(std::fs::File::open(docker_archive).unwrap());
    let dir = tempfile::tempdir().unwrap();
    outer.unpack(dir.path()).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("manifest.json")).unwrap()).unwrap();
    for layer in manifest[0]["Layers"].as_array().unwrap() {
        let f = std::fs::File::open(dir.path().join(layer.as_str().unwrap())).unwrap();
        for e in tar::Archive::new(f).entries().unwrap() {
            let e = e.unwrap();
            let h = e.header();
            let p = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            owners.insert(p, (h.uid().unwrap(), h.gid().unwrap()));
        }
    }
    owners
}

#[test]
fn a_user_without_a_range_is_warned_and_chown_in_run_fails() {
    let Some(u) = User::new("kiln-rl-norange") else {
        return;
    };
    let Some(root) = root_with_busybox() else {
        return;
    };
    u.load_busybox(&root);
    let ctx = u.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM busybox:latest\nRUN touch /ok\nRUN touch /f && chown 1000 /f\n",
        )],
    );
    let out = fails(u.run(&["build", "--progress=plain", ctx.to_str().unwrap()]));
    let log = text(&out);
    assert!(
        log.contains("kiln: warning: user kiln-rl-norange has no subordinate uids in /etc/subuid")
            && log.contains("chown to another user in a RUN step fails"),
        "{log}"
    );
    assert!(log.contains("usermod --add-subuids"), "{log}");
    // The first RUN step ran; the chown is the kernel's refusal.
    assert!(
        log.contains("RUN touch /ok") && log.contains("Invalid argument"),
        "{log}"
    );
}

#[test]
fn two_users_have_stores_that_never_see_each_other() {
    let Some(a) = User::new("kiln-rl") else {
        return;
    };
    let Some(b) = User::new("kiln-rl2") else {
        return;
    };
    let Some(root) = root_with_busybox() else {
        return;
    };
    a.load_busybox(&root);
    let ctx = a.context(
        "ctx",
        &[("Dockerfile", "FROM busybox:latest\nRUN touch /a\n")],
    );
    ok(a.run(&["build", "-q", "-t", "only-a", ctx.to_str().unwrap()]));
    let listed = text(&ok(b.run(&["images"])));
    assert!(
        !listed.contains("only-a") && !listed.contains("busybox"),
        "{listed}"
    );
    // b cannot open a's store at all.
    let a_store = a.store();
    let out = fails(b.run_env(&[("KILN_ROOT", a_store.to_str().unwrap())], &["images"]));
    let log = text(&out);
    assert!(
        log.contains(&format!("cannot open kiln root {}", a_store.display()))
            && log.contains("it belongs to another user"),
        "{log}"
    );
}

/// The Flask example (python:3.11-slim base, pip install from wheels in a
/// bind mount) built rootless with --reproducible is the root build's image.
#[test]
fn the_flask_example_built_rootless_is_the_root_builds_image() {
    let Some(u) = User::new("kiln-rl") else {
        return;
    };
    let flask = common::repo_root().join("fixtures/flask");
    if !require(
        flask.join("wheels").is_dir(),
        "fixtures/flask/wheels missing (fixtures/flask/fetch-wheels.sh)",
    ) {
        return;
    }
    let root = Kiln::new();
    if !root.with_python() {
        return;
    }
    let tar = u.dir.path().join("python.tar");
    ok(root
        .run(&["save", "-o", tar.to_str().unwrap(), "python:3.11-slim"])
        .out);
    std::fs::set_permissions(&tar, std::fs::Permissions::from_mode(0o644)).unwrap();
    ok(u.run(&["load", "-i", tar.to_str().unwrap()]));
    let ctx = u.dir.path().join("flask");
    let st = Command::new("cp")
        .arg("-r")
        .arg(&flask)
        .arg(&ctx)
        .status()
        .unwrap();
    assert!(st.success());
    u.chown(&ctx);
    let rootless = ok(u.run(&[
        "build",
        "-q",
        "--reproducible",
        "-t",
        "flask_app:0.1",
        ctx.to_str().unwrap(),
    ]));
    let root_build = root
        .run(&[
            "build",
            "-q",
            "--reproducible",
            "-t",
            "flask_app:0.1",
            ctx.to_str().unwrap(),
        ])
        .ok();
    let id = |o: &Output| String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert!(id(&rootless).starts_with("sha256:"), "{}", text(&rootless));
    assert_eq!(
        id(&rootless),
        id(&root_build.out),
        "rootless and root Flask images differ"
    );
}

/// `kiln rm -f` of a container when the test ends, however it ends.
struct RmOnDrop<'a>(&'a User, String);

impl Drop for RmOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.run(&["rm", "-f", &self.1]);
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// The user namespace outlives a command in `kiln-pause`, and later
/// commands join it (one setns instead of a fork and two set-uid helpers):
/// two containers started by two commands share one namespace, the pause
/// process's. Without it (killed), the next command makes one again.
#[test]
fn commands_join_the_namespace_the_pause_process_holds() {
    let Some(u) = User::new("kiln-rl") else {
        return;
    };
    let Some(root) = root_with_busybox() else {
        return;
    };
    u.load_busybox(&root);
    let ns_of = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/user")).unwrap();
    let pause = || {
        let out = Command::new("pgrep")
            // Sleeping ones: a killed one may stay a zombie for a while.
            .args(["-u", u.name, "-x", "kiln-pause", "-r", "S"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    ok(u.run(&["images"]));
    let p = pause();
    assert!(
        !p.is_empty() && !p.contains('\n'),
        "one pause process: {p:?}"
    );
    let mut ids = Vec::new();
    for _ in 0..2 {
        let out = ok(u.run(&["run", "-d", "busybox:latest", "sleep", "60"]));
        ids.push(String::from_utf8_lossy(&out.stdout).trim().to_string());
    }
    let _c: Vec<_> = ids.iter().map(|id| RmOnDrop(&u, id.clone())).collect();
    for id in &ids {
        let v: serde_json::Value =
            serde_json::from_slice(&ok(u.run(&["inspect", id])).stdout).unwrap();
        let pid = v[0]["State"]["Pid"].as_i64().unwrap().to_string();
        assert_eq!(
            ns_of(&pid),
            ns_of(&p),
            "container {id} is in the pause's namespace"
        );
    }
    // Gone: the next command makes a namespace and a pause process again.
    let _ = Command::new("kill").arg(&p).status();
    for _ in 0..50 {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        if stat.is_empty() || stat.contains(") Z ") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    ok(u.run(&["images"]));
    let again = pause();
    assert!(
        !again.is_empty() && again != p,
        "a new pause process: {again:?}"
    );
}

/// `kiln run -d -p` as the user: the container's network namespace belongs
/// to the user namespace, the host side of the proxy listens as the user;
/// ps, logs, stop and rm see it; a port below 1024 is a clear error.
#[test]
fn a_user_runs_a_detached_container_with_a_published_port() {
    let Some(u) = User::new("kiln-rl") else {
        return;
    };
    let Some(root) = root_with_busybox() else {
        return;
    };
    u.load_busybox(&root);
    let port = free_port();
    let publish = format!("127.0.0.1:{port}:5000");
    let out = ok(u.run(&[
        "run",
        "-d",
        "-p",
        &publish,
        "busybox:latest",
        "httpd",
        "-f",
        "-v",
        "-p",
        "5000",
        "-h",
        "/etc",
    ]));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // A failed assertion must not leave the container running.
    let _cleanup = RmOnDrop(&u, id.clone());
    let mut body = None;
    for _ in 0..50 {
        body = common::http_get_path(port, "/passwd").filter(|b| b.contains("root:x:0:0"));
        if body.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        body.is_some(),
        "no answer on {port}: {}",
        text(&u.run(&["logs", &id]))
    );
    let ps = text(&ok(u.run(&["ps"])));
    assert!(
        ps.contains(&id[..12]) && ps.contains(&format!("{port}->5000/tcp")),
        "{ps}"
    );
    // The container runs through the root-owned kiln-helper beside kiln
    // (which the user namespace shows as owned by nobody): the small
    // binary, not kiln re-executed.
    let v: serde_json::Value = serde_json::from_str(&String::from_utf8_lossy(
        &ok(u.run(&["inspect", &id])).stdout,
    ))
    .unwrap();
    assert_eq!(
        common::parent_exe(v[0]["State"]["Pid"].as_i64().unwrap()),
        u.dir.path().join("kiln-helper")
    );
    let logs = text(&ok(u.run(&["logs", &id])));
    assert!(logs.contains("response:200"), "{logs}");
    // exec, top and cp join the container's user namespace, where the
    // user is root.
    let who = text(&ok(u.run(&["exec", &id, "id", "-u"])));
    assert_eq!(who, "0\n");
    let top = text(&ok(u.run(&["top", &id])));
    assert!(top.contains("httpd -f -v -p 5000"), "{top}");
    let dir = tempfile::tempdir().unwrap();
    u.chown(dir.path());
    let got = dir.path().join("passwd");
    ok(u.run(&[
        "cp",
        &format!("{id}:/etc/passwd"),
        &got.display().to_string(),
    ]));
    assert!(std::fs::read_to_string(&got)
        .unwrap()
        .contains("root:x:0:0"));
    let uid = id_of(u.name, "-u").unwrap();
    assert_eq!(
        std::fs::metadata(&got).unwrap().uid(),
        uid,
        "the user's file"
    );
    let note = dir.path().join("note");
    std::fs::write(&note, "from the host").unwrap();
    u.chown(&note);
    ok(u.run(&[
        "cp",
        &note.display().to_string(),
        &format!("{id}:/tmp/note"),
    ]));
    let seen = text(&ok(u.run(&[
        "exec",
        &id,
        "stat",
        "-c",
        "%u %n",
        "/tmp/note",
    ])));
    assert_eq!(seen, "0 /tmp/note\n", "the container's root owns it");
    ok(u.run(&["stop", &id]));
    ok(u.run(&["rm", &id]));
    assert!(!text(&ok(u.run(&["ps", "-a"]))).contains(&id[..12]));

    let low = fails(u.run(&[
        "run",
        "-d",
        "-p",
        "80:5000",
        "busybox:latest",
        "sleep",
        "60",
    ]));
    let log = text(&low);
    assert!(
        log.contains("cannot publish 0.0.0.0:80: rootless kiln publishes ports as your user")
            && log.contains("net.ipv4.ip_unprivileged_port_start"),
        "{log}"
    );

    // Limits need a delegated cgroup: said, not a bare EACCES.
    let limited = fails(u.run(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--memory",
        "32m",
        "busybox:latest",
        "true",
    ]));
    let log = text(&limited);
    assert!(
        log.contains("rootless kiln cannot set resource limits (memory controller)")
            && log.contains("not built yet"),
        "{log}"
    );
}

/// Where user namespaces are refused (here: a namespace whose
/// user.max_user_namespaces is 0, made with util-linux's unshare), building
/// is one clear line naming the limit, and listing the store still works.
#[test]
fn a_refused_user_namespace_is_a_clear_error_and_listing_still_works() {
    let Some(u) = User::new("kiln-rl") else {
        return;
    };
    let shared = u.dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let ctx = u.context("ctx", &[("Dockerfile", "FROM busybox:latest\nRUN true\n")]);
    let script = format!(
        "echo 0 > /proc/sys/user/max_user_namespaces || exit 99; \
         as1000() {{ setpriv --reuid 1000 --regid 1000 --clear-groups \
            env HOME={s} XDG_DATA_HOME={s} {kiln} \"$@\"; }}; \
         as1000 images && echo LISTED; as1000 build {ctx}; echo rc=$?",
        s = shared.display(),
        kiln = u.kiln.display(),
        ctx = ctx.display()
    );
    let mut c = Command::new("setpriv");
    c.args(["--reuid", u.name, "--regid", u.name, "--init-groups"])
        .args(["env", "-i", "PATH=/usr/bin:/bin:/usr/sbin:/sbin"])
        .args([
            "unshare",
            "--user",
            "--map-root-user",
            "--map-auto",
            "sh",
            "-c",
            &script,
        ]);
    let out = c.output().unwrap();
    let log = text(&out);
    assert!(
        !log.contains("exit 99") && out.status.code() != Some(99),
        "cannot lower user.max_user_namespaces in a namespace here: {log}"
    );
    assert!(
        log.contains("LISTED"),
        "kiln images works without a namespace: {log}"
    );
    assert!(
        log.contains(
            "kiln: rootless kiln needs a user namespace, and creating one failed (No space left on device"
        ) && log.contains("sysctl user.max_user_namespaces")
            && log.contains("rc=125"),
        "{log}"
    );
}

/// Push from one user's store to a local registry, pull into another
/// user's: the layers carry container IDs, so the second user's container
/// sees the owners the first user's RUN step gave.
#[test]
fn one_user_pushes_and_another_pulls_and_runs() {
    let Some(a) = User::new("kiln-rl") else {
        return;
    };
    let Some(b) = User::new("kiln-rl2") else {
        return;
    };
    let Some(root) = root_with_busybox() else {
        return;
    };
    let Some(reg) = common::Registry::start(false) else {
        return;
    };
    a.load_busybox(&root);
    let ctx = a.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM busybox:latest\nRUN mkdir /d && touch /d/f && chown 1000:65534 /d/f\n",
        )],
    );
    let name = format!("{}/rootless/owners:1", reg.addr);
    ok(a.run(&["build", "-q", "-t", &name, ctx.to_str().unwrap()]));
    ok(a.run(&["push", "-q", &name]));
    ok(b.run(&["pull", "-q", &name]));
    let out = ok(b.run(&[
        "run",
        "--rm",
        "--network",
        "none",
        &name,
        "stat",
        "-c",
        "%u:%g",
        "/d/f",
    ]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "1000:65534",
        "{}",
        text(&out)
    );
}
