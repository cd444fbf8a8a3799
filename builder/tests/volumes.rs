//! `kiln run -v/--mount` and `kiln volume` through the binary on the
//! offline busybox image: binds see the host's edits, named volumes keep
//! data across containers and are seeded from the image, a used volume is
//! never removed, anonymous `VOLUME`s go with `rm -v` only, a symlink in
//! the image at the target never moves the mount onto the host, and a
//! read-only bind stays read-only.

mod common;

use std::path::Path;

use common::Kiln;

fn setup() -> Option<Kiln> {
    common::root_with_busybox("containers need root")
}

/// An image FROM busybox with `body` after the FROM line.
fn image(k: &Kiln, tag: &str, body: &str) {
    common::image_from_busybox(k, tag, body)
}

fn volume_names(k: &Kiln) -> Vec<String> {
    k.run(&["volume", "ls", "-q"])
        .ok()
        .stdout()
        .lines()
        .map(str::to_string)
        .collect()
}

fn wait_running(k: &Kiln, name: &str) {
    for _ in 0..100 {
        if k.run(&["exec", name, "true"]).code() == 0 {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(30));
    }
    panic!("{name} never ran");
}

/// The Flask tutorial's `-v $PWD:/app`: an edit on the host shows in the
/// running container at once, and in the next container.
#[test]
fn a_bind_mount_serves_the_hosts_edited_file() {
    let Some(k) = setup() else { return };
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("app.py"), "print('v1')\n").unwrap();
    let bind = format!("{}:/app", src.path().display());
    k.run(&[
        "run", "-d", "--name", "dev", "-v", &bind, "busybox", "sleep", "60",
    ])
    .ok();
    wait_running(&k, "dev");
    let cat = |k: &Kiln| k.run(&["exec", "dev", "cat", "/app/app.py"]).ok().stdout();
    assert_eq!(cat(&k), "print('v1')\n");
    std::fs::write(src.path().join("app.py"), "print('v2')\n").unwrap();
    assert_eq!(cat(&k), "print('v2')\n");
    k.run(&["rm", "-f", "dev"]).ok();
    let r = k
        .run(&["run", "--rm", "-v", &bind, "busybox", "cat", "/app/app.py"])
        .ok();
    assert_eq!(r.stdout(), "print('v2')\n");
    // What the container writes is the host's file.
    k.run(&[
        "run",
        "--rm",
        "-v",
        &bind,
        "busybox",
        "sh",
        "-c",
        "echo w > /app/out",
    ])
    .ok();
    assert_eq!(
        std::fs::read_to_string(src.path().join("out")).unwrap(),
        "w\n"
    );
    // inspect names the mount as docker does.
    let r = k
        .run(&["run", "--name", "i", "-v", &bind, "busybox", "true"])
        .ok();
    drop(r);
    let v: serde_json::Value =
        serde_json::from_str(&k.run(&["inspect", "i"]).ok().stdout()).unwrap();
    assert_eq!(v[0]["Mounts"][0]["Type"], "bind");
    assert_eq!(v[0]["Mounts"][0]["Destination"], "/app");
}

#[test]
fn a_named_volume_keeps_a_file_across_rm_and_a_new_container() {
    let Some(k) = setup() else { return };
    k.run(&[
        "run",
        "--name",
        "w",
        "-v",
        "keep:/data",
        "busybox",
        "sh",
        "-c",
        "echo kept > /data/f",
    ])
    .ok();
    k.run(&["rm", "w"]).ok();
    assert_eq!(volume_names(&k), vec!["keep"]);
    let r = k
        .run(&[
            "run",
            "--rm",
            "--mount",
            "type=volume,src=keep,dst=/d",
            "busybox",
            "cat",
            "/d/f",
        ])
        .ok();
    assert_eq!(r.stdout(), "kept\n");
    let v: serde_json::Value =
        serde_json::from_str(&k.run(&["volume", "inspect", "keep"]).ok().stdout()).unwrap();
    assert_eq!(v[0]["Name"], "keep");
    assert_eq!(v[0]["Driver"], "local");
    assert!(Path::new(v[0]["Mountpoint"].as_str().unwrap())
        .join("f")
        .is_file());
    let df = k.run(&["system", "df"]).ok().stdout();
    assert!(
        df.lines()
            .any(|l| l.starts_with("Local Volumes") && l.split_whitespace().nth(2) == Some("1")),
        "{df}"
    );
    k.run(&["run", "--name", "n2", "-v", "keep:/data", "busybox", "true"])
        .ok();
    let c: serde_json::Value =
        serde_json::from_str(&k.run(&["inspect", "n2"]).ok().stdout()).unwrap();
    assert_eq!(c[0]["Mounts"][0]["Type"], "volume");
    assert_eq!(c[0]["Mounts"][0]["Name"], "keep");
    let r = k.run(&["volume", "inspect", "nosuch"]).fails();
    assert!(
        r.stderr().contains("get nosuch: no such volume"),
        "{}",
        r.stderr()
    );
}

/// Docker's copy-up: a fresh volume starts as the image's directory,
/// owners and modes kept; a volume that holds data is not seeded again.
#[test]
fn a_fresh_volume_is_seeded_from_the_image() {
    let Some(k) = setup() else { return };
    image(
        &k,
        "seeded",
        "RUN mkdir -p /srv/data/sub && echo from-image > /srv/data/sub/f && \
         chown -R 1000:1000 /srv/data && chmod 0750 /srv/data && chmod 0640 /srv/data/sub/f\n",
    );
    let r = k
        .run(&[
            "run",
            "--rm",
            "-v",
            "seed:/srv/data",
            "seeded",
            "sh",
            "-c",
            "cat /srv/data/sub/f; stat -c '%u:%g %a' /srv/data /srv/data/sub/f; rm /srv/data/sub/f",
        ])
        .ok();
    assert_eq!(r.stdout(), "from-image\n1000:1000 750\n1000:1000 640\n");
    // Not empty (sub/ is left): not seeded again, the removal stays.
    let r = k
        .run(&[
            "run",
            "--rm",
            "-v",
            "seed:/srv/data",
            "seeded",
            "ls",
            "/srv/data/sub",
        ])
        .ok();
    assert_eq!(r.stdout(), "");
    // nocopy: an empty volume stays empty.
    let r = k
        .run(&[
            "run",
            "--rm",
            "-v",
            "bare:/srv/data:nocopy",
            "seeded",
            "ls",
            "-A",
            "/srv/data",
        ])
        .ok();
    assert_eq!(r.stdout(), "");
}

#[test]
fn a_used_volume_is_not_removed_with_dockers_error() {
    let Some(k) = setup() else { return };
    k.run(&["volume", "create", "busy"]).ok();
    let id = k
        .run(&[
            "run", "-d", "--name", "u", "-v", "busy:/d", "busybox", "sleep", "60",
        ])
        .ok()
        .stdout()
        .trim()
        .to_string();
    let r = k.run(&["volume", "rm", "busy"]).fails();
    assert_eq!(r.code(), 1);
    assert!(
        r.stderr()
            .contains(&format!("remove busy: volume is in use - [{id}]")),
        "{}",
        r.stderr()
    );
    // Stopped still counts (docker's rule), and prune keeps it too.
    k.run(&["stop", "-t", "0", "u"]).ok();
    k.run(&["volume", "rm", "busy"]).fails();
    k.run(&["volume", "prune", "-f"]).ok();
    assert_eq!(volume_names(&k), vec!["busy"]);
    k.run(&["rm", "u"]).ok();
    assert_eq!(k.run(&["volume", "rm", "busy"]).ok().stdout(), "busy\n");
    assert!(volume_names(&k).is_empty());
}

/// `VOLUME` makes an anonymous volume per container; `rm -v` removes it,
/// plain `rm` leaves it dangling (docker's behaviour), `run --rm` removes it
/// (detached too, once the container has exited).
#[test]
fn anonymous_volumes_go_with_rm_v_only() {
    let Some(k) = setup() else { return };
    image(
        &k,
        "withvol",
        "RUN mkdir /cache && echo s > /cache/s\nVOLUME /cache\n",
    );
    k.run(&["run", "--name", "a", "withvol", "cat", "/cache/s"])
        .ok();
    let first = volume_names(&k);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].len(), 64, "{first:?}");
    k.run(&["rm", "a"]).ok();
    assert_eq!(volume_names(&k), first, "kept, dangling, without -v");
    k.run(&["run", "--name", "b", "withvol", "true"]).ok();
    assert_eq!(volume_names(&k).len(), 2);
    k.run(&["rm", "-v", "b"]).ok();
    assert_eq!(volume_names(&k), first);
    k.run(&["run", "--rm", "withvol", "true"]).ok();
    assert_eq!(volume_names(&k), first);
    // Detached: the monitor removes the container, then its volume.
    k.run(&["run", "-d", "--rm", "withvol", "sleep", "1"]).ok();
    assert_eq!(volume_names(&k).len(), 2, "made while it runs");
    let mut left = volume_names(&k);
    for _ in 0..100 {
        left = volume_names(&k);
        if left == first {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(left, first, "run -d --rm takes its anonymous volume");
    // -v at the same target replaces the anonymous volume.
    k.run(&[
        "run",
        "--rm",
        "-v",
        "mine:/cache",
        "withvol",
        "cat",
        "/cache/s",
    ])
    .ok();
    let mut want = first.clone();
    want.push("mine".into());
    want.sort();
    assert_eq!(volume_names(&k), want);
}

/// The image has `/app` as a symlink to a host directory's path: the bind
/// lands at that path inside the container's root, and the host directory
/// is neither covered nor written.
#[test]
fn a_symlink_at_the_target_never_moves_the_mount_onto_the_host() {
    let Some(k) = setup() else { return };
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("host-only"), "secret").unwrap();
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("mine"), "m").unwrap();
    image(
        &k,
        "linky",
        &format!("RUN ln -s {} /app\n", host.path().display()),
    );
    let bind = format!("{}:/app", src.path().display());
    let r = k
        .run(&[
            "run",
            "--rm",
            "-v",
            &bind,
            "linky",
            "sh",
            "-c",
            "ls -A /app; echo x > /app/written",
        ])
        .ok();
    assert_eq!(r.stdout(), "mine\n");
    let mut left: Vec<_> = std::fs::read_dir(host.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, vec!["host-only"]);
    assert!(src.path().join("written").is_file());
    // A volume there is seeded from inside the root too, never from the host.
    let r = k
        .run(&["run", "--rm", "-v", "lv:/app", "linky", "ls", "-A", "/app"])
        .ok();
    assert_eq!(r.stdout(), "");
}

#[test]
fn a_read_only_bind_of_the_hosts_root_stays_read_only() {
    let Some(k) = setup() else { return };
    let probe = tempfile::tempdir().unwrap();
    let inside = format!("/host{}/x", probe.path().display());
    for flag in [
        ["-v", "/:/host:ro"],
        ["--mount", "type=bind,src=/,dst=/host,readonly"],
    ] {
        // The host's submounts (/dev/shm, /proc, the temp dir) are read-only too.
        let script = format!(
            "for p in {inside} /host/dev/shm/kiln-ro /host/root/kiln-ro; do \
             if touch $p 2>/dev/null; then echo wrote $p; fi; done; cat /host/etc/hostname >/dev/null && echo read"
        );
        let r = k
            .run(&[
                "run", "--rm", flag[0], flag[1], "busybox", "sh", "-c", &script,
            ])
            .ok();
        assert_eq!(r.stdout(), "read\n", "{flag:?}");
        assert!(!probe.path().join("x").exists());
    }
}

#[test]
fn bad_mount_flags_give_dockers_errors() {
    let Some(k) = setup() else { return };
    let cases = [
        (vec!["-v", "/tmp:/x:xyz"], "invalid mode: xyz"),
        (
            vec!["-v", "a/b:/x"],
            "\"a/b\" includes invalid characters for a local volume name",
        ),
        (
            vec!["--mount", "type=bind,source=/nonexistent-kiln,target=/x"],
            "bind source path does not exist: /nonexistent-kiln",
        ),
        (
            vec!["-v", "v1:/x", "-v", "v2:/x"],
            "Duplicate mount point: /x",
        ),
    ];
    for (flags, want) in cases {
        let mut args = vec!["run", "--rm"];
        args.extend(flags.iter().copied());
        args.extend(["busybox", "true"]);
        let r = k.run(&args).fails();
        assert_eq!(r.code(), 125, "{flags:?}");
        assert!(r.stderr().contains(want), "{flags:?}: {}", r.stderr());
    }
    assert!(
        volume_names(&k).is_empty(),
        "no volume made by a refused run"
    );
}

/// Rootless (the fixture user of fixtures/rootless/make-users.sh): a named
/// volume lives in the user's store, is seeded with the container's owners
/// (uid 1000 in the container is the user's subordinate 1000-1 + start),
/// keeps data across containers and is removed by its owner.
#[test]
fn a_named_volume_works_in_a_rootless_store() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::process::Command;
    let Some(root) = setup() else { return };
    let user = "kiln-rl";
    if !common::require(
        Command::new("id")
            .arg(user)
            .output()
            .is_ok_and(|o| o.status.success()),
        &format!("user {user} missing: run fixtures/rootless/make-users.sh (scripts/test.sh does)"),
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let kiln = dir.path().join("kiln");
    std::fs::copy(common::kiln_bin(), &kiln).unwrap();
    let tar = dir.path().join("bb.tar");
    root.run(&["save", "-o", tar.to_str().unwrap(), "busybox:latest"])
        .ok();
    std::fs::set_permissions(&tar, std::fs::Permissions::from_mode(0o644)).unwrap();
    let ctx = dir.path().join("ctx");
    common::write_tree(
        &ctx,
        &[(
            "Dockerfile",
            "FROM busybox\nRUN mkdir /data && echo s > /data/s && chown 1000:1000 /data/s\n",
        )],
    );
    for d in ["home", "data", "ctx"] {
        std::fs::create_dir_all(dir.path().join(d)).unwrap();
        let st = Command::new("chown")
            .args(["-R", &format!("{user}:{user}")])
            .arg(dir.path().join(d))
            .status()
            .unwrap();
        assert!(st.success());
    }
    let run = |args: &[&str]| {
        let out = Command::new("setpriv")
            .args([
                "--reuid",
                user,
                "--regid",
                user,
                "--init-groups",
                "env",
                "-i",
            ])
            .arg("PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
            .arg(format!("HOME={}", dir.path().join("home").display()))
            .arg(format!(
                "XDG_DATA_HOME={}",
                dir.path().join("data").display()
            ))
            .arg(&kiln)
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "kiln {args:?} as {user}: {text}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(&["load", "-i", tar.to_str().unwrap()]);
    run(&[
        "build",
        "--progress=plain",
        "-t",
        "seeded",
        ctx.to_str().unwrap(),
    ]);
    let out = run(&[
        "run",
        "--rm",
        "-v",
        "rv:/data",
        "seeded",
        "sh",
        "-c",
        "stat -c %u /data/s; echo w > /data/w",
    ]);
    assert_eq!(out, "1000\n");
    let out = run(&["run", "--rm", "-v", "rv:/data", "seeded", "cat", "/data/w"]);
    assert_eq!(out, "w\n");
    let start: u32 = std::fs::read_to_string("/etc/subuid")
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{user}:"))?
                .split(':')
                .next()?
                .parse()
                .ok()
        })
        .expect("a subordinate range");
    let v: serde_json::Value = serde_json::from_str(&run(&["volume", "inspect", "rv"])).unwrap();
    let on_host = Path::new(v[0]["Mountpoint"].as_str().unwrap()).join("s");
    assert_eq!(std::fs::metadata(&on_host).unwrap().uid(), start + 999);
    assert_eq!(run(&["volume", "rm", "rv"]), "rv\n");
}

/// The page a published port serves, waiting for the server to start.
fn page(k: &Kiln, id: &str, port: u16) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if let Some(p) = common::http_get(port).filter(|p| p.contains(" 200 ")) {
            return p;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("no answer on {port}: {}", k.run(&["logs", id]).stderr());
}

/// The tutorial's development loop on the python base: `python3 app.py`
/// from `-v $PWD:/app`, edited on the host, serves the new code after the
/// container is replaced.
#[test]
fn an_app_run_from_a_bind_mount_serves_the_edited_code_in_a_new_container() {
    let Some(k) = setup() else { return };
    if !k.with_python() {
        return;
    }
    let app = |msg: &str| {
        format!(
            "import http.server\n\
             class H(http.server.BaseHTTPRequestHandler):\n    \
             def do_GET(self):\n        \
             self.send_response(200); self.end_headers(); self.wfile.write(b'{msg}')\n\
             http.server.HTTPServer(('0.0.0.0', 5000), H).serve_forever()\n"
        )
    };
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("app.py"), app("Hello v1")).unwrap();
    let bind = format!("{}:/app", src.path().display());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let publish = format!("{port}:5000");
    let start = |k: &Kiln| {
        k.run(&[
            "run",
            "-d",
            "-p",
            &publish,
            "-v",
            &bind,
            "-w",
            "/app",
            "python:3.11-slim",
            "python3",
            "app.py",
        ])
        .ok()
        .stdout()
        .trim()
        .to_string()
    };
    let id = start(&k);
    assert!(page(&k, &id, port).ends_with("Hello v1"));
    std::fs::write(src.path().join("app.py"), app("Hello v2")).unwrap();
    k.run(&["rm", "-f", &id]).ok();
    let id = start(&k);
    assert!(page(&k, &id, port).ends_with("Hello v2"));
    k.run(&["rm", "-f", &id]).ok();
}
