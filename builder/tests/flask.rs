//! The classic tutorial, through the binary: build the Flask example on the
//! offline python:3.11-slim base, list it, run it detached with a published
//! port, fetch the page, see it in ps, stop and remove it. Then an edit of
//! app.py rebuilds only from the COPY of the app on.

mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::{require, step_outcomes, Kiln};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The normalised config (fixtures/tools/image_tree.py) of a kiln image,
/// without the created_by strings, whose wording is the tool's own.
fn image_config(k: &Kiln, tag: &str) -> serde_json::Value {
    let archive = k.root.path().join("flask-image.tar");
    k.run(&["save", "-o", archive.to_str().unwrap(), tag]).ok();
    let out = std::process::Command::new("python3")
        .arg(common::repo_root().join("fixtures/tools/image_tree.py"))
        .arg(&archive)
        .args(["--tree", "/dev/null", "--config", "-"])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_file(&archive);
    let mut v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("config json");
    v.as_object_mut().unwrap().remove("history_created_by");
    v
}

/// What BuildKit 0.13 built from the example (record-buildkit.sh --engine
/// 0.13): among others a layer for `WORKDIR /app` of the existing /app.
fn recorded_config() -> serde_json::Value {
    let path = common::repo_root().join("fixtures/flask/expected-0.13/config.json");
    let text = std::fs::read_to_string(&path).expect("fixtures/flask/expected-0.13/config.json");
    let mut v: serde_json::Value = serde_json::from_str(&text).expect("config json");
    v.as_object_mut().unwrap().remove("history_created_by");
    v
}

#[test]
fn flask_example_end_to_end() {
    if !require(common::is_root(), "kiln build/run need root") {
        return;
    }
    let wheels = common::repo_root().join("fixtures/flask/wheels");
    if !require(
        wheels.is_dir()
            && std::fs::read_dir(&wheels)
                .map(|mut d| d.next().is_some())
                .unwrap_or(false),
        "fixtures/flask/wheels is empty: run fixtures/flask/fetch-wheels.sh (scripts/test.sh does)",
    ) {
        return;
    }
    let k = Kiln::new();
    if !k.with_python() {
        return;
    }
    // A copy of the example, so the test can edit app.py.
    let ctx = tempfile::tempdir().unwrap();
    let src = common::repo_root().join("fixtures/flask");
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", src.display()))
        .arg(ctx.path())
        .status()
        .unwrap();
    assert!(status.success());
    let ctxs = ctx.path().to_str().unwrap();

    let r = k
        .run(&["build", "--progress=plain", "-t", "flask_app:0.1", ctxs])
        .ok();
    let images = k.run(&["images"]).ok().stdout();
    assert!(
        images
            .lines()
            .any(|l| l.starts_with("flask_app") && l.contains("0.1")),
        "{images}\n{}",
        r.stderr()
    );

    assert_eq!(
        image_config(&k, "flask_app:0.1"),
        recorded_config(),
        "the image config differs from BuildKit 0.13's (fixtures/flask/expected-0.13/config.json)"
    );

    // Its SBOM lists what pip installed, with versions, and the base's
    // Debian packages.
    let sbom: serde_json::Value =
        serde_json::from_str(&k.run(&["sbom", "flask_app:0.1"]).ok().stdout()).unwrap();
    let purls: Vec<String> = sbom["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| {
            p["externalRefs"][0]["referenceLocator"]
                .as_str()
                .map(String::from)
        })
        .collect();
    for name in [
        "flask",
        "werkzeug",
        "jinja2",
        "click",
        "itsdangerous",
        "markupsafe",
        "blinker",
    ] {
        assert!(
            purls
                .iter()
                .any(|p| p.starts_with(&format!("pkg:pypi/{name}@"))),
            "{name} missing from the SBOM: {purls:?}"
        );
    }
    assert!(
        purls.iter().any(|p| p.starts_with("pkg:deb/debian/libc6@")),
        "{purls:?}"
    );

    // The wheels were bind-mounted, never copied: nothing of them in the image.
    let out = tempfile::tempdir().unwrap();
    let spec = format!("type=local,dest={}", out.path().display());
    k.run(&["build", "--progress=plain", "--output", &spec, ctxs])
        .ok();
    assert!(!out.path().join("wheels").exists());
    assert!(out.path().join("app/app.py").is_file());
    let site = out
        .path()
        .join("usr/local/lib/python3.11/dist-packages/flask");
    let site2 = out.path().join("usr/lib/python3/dist-packages/flask");
    assert!(site.is_dir() || site2.is_dir(), "flask not installed");

    let port = free_port();
    let publish = format!("{port}:5000");
    let id = k
        .run(&["run", "-d", "-p", &publish, "flask_app:0.1"])
        .ok()
        .stdout()
        .trim()
        .to_string();
    assert_eq!(id.len(), 64, "run -d prints the full id: {id:?}");

    let deadline = Instant::now() + Duration::from_secs(30);
    let mut page = None;
    while Instant::now() < deadline {
        if let Some(p) = common::http_get(port).filter(|p| p.contains("200")) {
            page = Some(p);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let logs = k.run(&["logs", &id[..12]]).stdout();
    let page = page.unwrap_or_else(|| panic!("no answer on port {port}; logs:\n{logs}"));
    assert!(page.contains("Hello, World!"), "{page}");

    let ps = k.run(&["ps"]).ok().stdout();
    assert!(ps.contains(&id[..12]), "{ps}");
    assert!(ps.contains(&format!("{port}->5000/tcp")), "{ps}");

    k.run(&["stop", &id[..12]]).ok();
    let ps = k.run(&["ps"]).ok().stdout();
    assert!(
        !ps.contains(&id[..12]),
        "stopped container still listed: {ps}"
    );
    let psa = k.run(&["ps", "-a"]).ok().stdout();
    assert!(psa.contains(&id[..12]) && psa.contains("Exited"), "{psa}");
    k.run(&["rm", &id[..12]]).ok();
    let psa = k.run(&["ps", "-a"]).ok().stdout();
    assert!(!psa.contains(&id[..12]), "{psa}");

    // Edit app.py: only the COPY and what follows rebuild.
    std::fs::write(
        ctx.path().join("app.py"),
        std::fs::read_to_string(ctx.path().join("app.py"))
            .unwrap()
            .replace("Hello, World!", "Hello again!"),
    )
    .unwrap();
    let r = k
        .run(&["build", "--progress=plain", "-t", "flask_app:0.1", ctxs])
        .ok();
    let steps = step_outcomes(&r.stderr());
    let find = |n: &str| {
        steps
            .iter()
            .find(|(l, _)| l.contains(n))
            .map(|(_, o)| o.as_str())
            .unwrap_or("missing")
            .to_string()
    };
    assert_eq!(find("pip install"), "CACHED", "{steps:?}");
    assert_eq!(find("COPY app.py"), "RAN", "{steps:?}");
}
