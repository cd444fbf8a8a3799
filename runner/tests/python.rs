//! The end-to-end case on the Debian/Python base made by
//! fixtures/bases/make-bases.sh: a RUN-like `pip install` into an upper dir
//! (bind-mounted wheels), then that upper as a layer of a detached Flask
//! app started with plain `app.run()` (127.0.0.1 only), reached through a
//! published port. Skipped, loudly, when the fixture is not there.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use kiln_runner::{Containers, MountKind, MountSpec, NetworkMode, RootFs, RunOptions};

fn python_root() -> Option<PathBuf> {
    let cache = std::env::var("KILN_FIXTURES_CACHE")
        .unwrap_or_else(|_| "/var/cache/kiln-fixtures".to_string());
    let root = Path::new(&cache).join("work/python-3.11-slim.rootfs");
    root.join("usr/bin/python3").exists().then_some(root)
}

fn wheels() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/flask")
}

#[test]
fn pip_install_layer_then_flask_on_a_published_port() {
    if !can_run("pip_install_layer_then_flask_on_a_published_port") {
        return;
    }
    let Some(python) = python_root() else {
        kiln_testkit::skip("no python base (run fixtures/bases/make-bases.sh python)");
        return;
    };
    let flask = wheels();
    if !flask.join("wheels").is_dir() {
        kiln_testkit::skip("fixtures/flask/wheels missing (fixtures/flask/fetch-wheels.sh)");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (upper, work) = (t.path().join("pip"), t.path().join("work"));
    std::fs::create_dir_all(&upper).unwrap();
    std::fs::create_dir_all(&work).unwrap();

    // RUN --mount=type=bind,... pip install ...
    let mut s = sh(
        "pip install --no-cache-dir --no-index --find-links=/wheels \
                    -r /requirements.txt >/dev/null",
    );
    s.rootfs = RootFs {
        lowers: vec![python.clone()],
        upper: Some((upper.clone(), work)),
    };
    s.network = NetworkMode::None;
    s.mounts = vec![
        MountSpec {
            target: "/wheels".into(),
            kind: MountKind::Bind {
                source: flask.join("wheels"),
                readonly: true,
            },
        },
        MountSpec {
            target: "/requirements.txt".into(),
            kind: MountKind::Bind {
                source: flask.join("requirements.txt"),
                readonly: true,
            },
        },
    ];
    let o = run(&s).unwrap();
    assert_eq!(o.code, 0, "pip failed: {}", o.stderr);
    assert!(upper
        .join("usr/local/lib/python3.11/dist-packages/flask")
        .is_dir());
    for leaked in [
        "wheels",
        "requirements.txt",
        "etc/hosts",
        "etc/resolv.conf",
        "proc",
        "dev",
    ] {
        assert!(
            !upper.join(leaked).exists(),
            "{leaked} leaked into the layer"
        );
    }

    // COPY app.py /app/ (plain app.run(): 127.0.0.1:5000 only)
    let app = t.path().join("app-layer");
    std::fs::create_dir_all(app.join("app")).unwrap();
    std::fs::write(
        app.join("app/app.py"),
        "from flask import Flask\napp = Flask(__name__)\n\n@app.route('/')\ndef hello():\n    \
         return 'Hello, World!\\n'\n\nif __name__ == '__main__':\n    app.run()\n",
    )
    .unwrap();

    let c = Containers::open(cfg(), &t.path().join("containers")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut s = spec(&["python3", "app.py"]);
    s.rootfs = RootFs {
        lowers: vec![app, upper, python],
        upper: None,
    };
    s.cwd = "/app".into();
    let id = c
        .run_detached(
            s,
            RunOptions {
                name: Some("web".into()),
                image: "flask_app:0.1".into(),
                command: "python3 app.py".into(),
                ports: vec![
                    kiln_runner::parse_port_spec(&format!("127.0.0.1:{port}:5000")).unwrap(),
                ],
                ..Default::default()
            },
        )
        .unwrap();
    let end = Instant::now() + Duration::from_secs(60);
    let body = loop {
        let got = TcpStream::connect(("127.0.0.1", port)).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(20)))?;
            s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        });
        match got {
            Ok(b) if b.contains("Hello, World!") => break b,
            _ if Instant::now() < end => std::thread::sleep(Duration::from_millis(100)),
            other => {
                let mut logs = Vec::new();
                let _ = c.logs(&id, false, &mut logs);
                panic!(
                    "no answer: {other:?}\nlogs:\n{}",
                    String::from_utf8_lossy(&logs)
                );
            }
        }
    };
    assert!(body.starts_with("HTTP/1."), "{body}");
    let mut logs = Vec::new();
    c.logs(&id, false, &mut logs).unwrap();
    assert!(String::from_utf8_lossy(&logs).contains("Running on http://127.0.0.1:5000"));
    c.remove(&id, true).unwrap();
}
