//! kiln against a real registry: Debian's `docker-registry` (the CNCF
//! distribution registry) on 127.0.0.1, plain and behind TLS with htpasswd
//! auth. Push, pull into a fresh root and run; blobs not re-uploaded,
//! mounted across repositories; FROM of an image only the registry has;
//! login/logout; the registry-backed build cache; `docker pull` of what
//! kiln pushed when a Docker engine is here.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::{is_root, require, step_outcomes, write_tree, Kiln, Registry};

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}):\n{s}"))
}

/// (image ID, manifest digest) of `name` in `k`'s root.
fn ids(k: &Kiln, name: &str) -> (String, String) {
    let v = json(&k.run(&["inspect", name]).ok().stdout());
    (
        v[0]["Id"].as_str().unwrap().to_string(),
        v[0]["ManifestDigest"].as_str().unwrap().to_string(),
    )
}

/// A small image of our own on top of busybox, built into `k` as `tag`.
fn build_hello(k: &Kiln, dir: &Path, tag: &str) {
    write_tree(
        dir,
        &[(
            "Dockerfile",
            "FROM busybox:latest\nRUN echo hello-from-the-registry > /greeting\nCMD [\"cat\", \"/greeting\"]\n",
        )],
    );
    k.run(&[
        "build",
        "--progress=plain",
        "-t",
        tag,
        dir.to_str().unwrap(),
    ])
    .ok();
}

/// Pushes `k`'s busybox to the registry; returns its name there.
fn push_busybox(reg: &Registry, k: &Kiln) -> String {
    let base = format!("{}/base/busybox:1", reg.addr);
    k.run(&["tag", "busybox:latest", &base]).ok();
    k.run(&["push", "-q", &base]).ok();
    base
}

/// A registry and a root with busybox in it; `None` (after saying why)
/// when this machine cannot run the test.
fn setup(tls_auth: bool) -> Option<(Registry, Kiln)> {
    if !require(
        is_root(),
        "these tests build and run containers: run as root",
    ) {
        return None;
    }
    let reg = Registry::start(tls_auth)?;
    let k = Kiln::new();
    k.with_busybox().then_some((reg, k))
}

#[test]
fn push_then_pull_into_a_fresh_root_and_run() {
    let Some((reg, a)) = setup(false) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let name = format!("{}/kiln/hello:1", reg.addr);
    build_hello(&a, tmp.path(), &name);
    let (id_a, _) = ids(&a, &name);

    let first = a.run(&["push", &name]).ok();
    let pushed = first.stdout().trim().to_string();
    assert!(pushed.starts_with("sha256:"), "{}", first.stdout());
    assert!(
        first.stderr().contains("uploaded") && !first.stderr().contains(" 0 uploaded"),
        "the first push uploads blobs:\n{}",
        first.stderr()
    );

    // The same push again: every blob is already there.
    let again = a.run(&["push", &name]).ok();
    assert_eq!(again.stdout().trim(), pushed, "same bytes, same digest");
    assert!(
        again.stderr().contains("(0 uploaded, 0 mounted"),
        "a second push uploads nothing:\n{}",
        again.stderr()
    );

    // Another repository of the same registry: blobs are mounted.
    let other = format!("{}/kiln/other:1", reg.addr);
    a.run(&["tag", &name, &other]).ok();
    let mounted = a.run(&["push", &other]).ok();
    assert!(
        mounted.stderr().contains("(0 uploaded,") && !mounted.stderr().contains(", 0 mounted"),
        "a push to a second repository mounts the blobs:\n{}",
        mounted.stderr()
    );

    // A fresh root: pull, same digests, and it runs.
    let b = Kiln::new();
    let pull = b.run(&["pull", &name]).ok();
    assert_eq!(pull.stdout().trim(), format!("{}/kiln/hello:1", reg.addr));
    let (id_b, manifest_b) = ids(&b, &name);
    assert_eq!(id_b, id_a, "the image ID (config digest) survives the trip");
    assert_eq!(manifest_b, pushed, "the pulled manifest is the pushed one");
    let run = b.run(&["run", "--rm", &name]).ok();
    assert_eq!(run.stdout().trim(), "hello-from-the-registry");

    // Pulling by digest gives the same image.
    let c = Kiln::new();
    c.run(&["pull", &format!("{}/kiln/hello@{pushed}", reg.addr)])
        .ok();
    let listed = json(&c.run(&["images", "--format", "json"]).ok().stdout());
    assert_eq!(listed[0]["id"], id_a.as_str());

    // zstd layers, as the store keeps them, also make the round trip, here
    // uploaded in 64 kB chunks.
    let z = format!("{}/kiln/zstd:1", reg.addr);
    a.run(&["tag", &name, &z]).ok();
    a.run(&["push", "--compression", "zstd", "--chunk-size", "64kB", &z])
        .ok();
    let bad = a.run(&["push", "--chunk-size", "lots", &z]).fails();
    assert!(bad.stderr().contains("--chunk-size"), "{}", bad.stderr());
    let d = Kiln::new();
    d.run(&["pull", &z]).ok();
    assert_eq!(ids(&d, &z).0, id_a);
    assert_eq!(
        d.run(&["run", "--rm", &z]).ok().stdout().trim(),
        "hello-from-the-registry"
    );

    // `kiln run` of an image that is only in the registry pulls it.
    let e = Kiln::new();
    let run = e.run(&["run", "--rm", &name]).ok();
    assert_eq!(run.stdout().trim(), "hello-from-the-registry");
    assert!(run.stderr().contains("Unable to find image"));
}

#[test]
fn from_an_image_only_the_registry_has() {
    let Some((reg, a)) = setup(false) else {
        return;
    };
    let base = push_busybox(&reg, &a);

    let tmp = tempfile::tempdir().unwrap();
    write_tree(
        tmp.path(),
        &[(
            "Dockerfile",
            format!("FROM {base}\nRUN echo built-on-a-pulled-base > /out\n"),
        )],
    );
    let ctx = tmp.path().to_str().unwrap();

    // --pull=never on a root without the base: a clear error.
    let b = Kiln::new();
    let never = b
        .run(&["build", "--progress=plain", "--pull=never", ctx])
        .fails();
    assert!(
        never.stderr().contains("--pull=never") && never.stderr().contains(&base),
        "{}",
        never.stderr()
    );

    // Default (missing): pulled once, then local.
    b.run(&["build", "--progress=plain", "-t", "app:1", ctx])
        .ok();
    let listed = b.run(&["images"]).ok().stdout();
    assert!(
        listed.contains(&format!("{}/base/busybox", reg.addr)),
        "{listed}"
    );
    let out = b
        .run(&["run", "--rm", "app:1", "cat", "/out"])
        .ok()
        .stdout();
    assert_eq!(out.trim(), "built-on-a-pulled-base");
    let second = b
        .run(&["build", "--progress=plain", "-t", "app:1", ctx])
        .ok();
    assert!(
        !second.stderr().contains("[internal] pull"),
        "a local base is not pulled again:\n{}",
        second.stderr()
    );

    // --pull=always asks the registry again; the base did not change, so
    // the steps stay cached.
    let always = b
        .run(&[
            "build",
            "--progress=plain",
            "--pull=always",
            "-t",
            "app:1",
            ctx,
        ])
        .ok();
    assert!(
        always.stderr().contains("[internal] pull"),
        "{}",
        always.stderr()
    );
    assert!(step_outcomes(&always.stderr())
        .iter()
        .filter(|(l, _)| l.contains("RUN"))
        .all(|(_, o)| o == "CACHED"));

    // An image the registry does not have: the error names it.
    let missing = format!("{}/base/nothing:1", reg.addr);
    write_tree(tmp.path(), &[("Dockerfile", format!("FROM {missing}\n"))]);
    let err = b.run(&["build", "--progress=plain", ctx]).fails();
    assert!(
        err.stderr().contains(&missing) && err.stderr().to_lowercase().contains("not found")
            || err.stderr().contains("unknown"),
        "{}",
        err.stderr()
    );
}

#[test]
fn login_push_pull_logout_behind_tls_and_htpasswd() {
    let Some((reg, a)) = setup(true) else {
        return;
    };
    let docker_config = tempfile::tempdir().unwrap();
    let ca = reg.ca();
    let ca = ca.to_str().unwrap();
    let with_env = |k: &Kiln, args: &[&str], stdin: Option<&str>| {
        let mut c = k.cmd();
        c.env("DOCKER_CONFIG", docker_config.path()).args(args);
        if let Some(s) = stdin {
            use std::io::Write;
            c.stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            let mut child = c.spawn().unwrap();
            child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
            common::Run {
                out: child.wait_with_output().unwrap(),
            }
        } else {
            common::Run {
                out: c.output().unwrap(),
            }
        }
    };
    let tmp = tempfile::tempdir().unwrap();
    let name = format!("{}/secure/hello:1", reg.addr);
    build_hello(&a, tmp.path(), &name);

    // Not logged in: 401, the reference named, nothing stored.
    let denied = with_env(&a, &["--ca-file", ca, "push", &name], None).fails();
    assert!(
        denied.stderr().contains("401") && denied.stderr().contains("secure/hello"),
        "{}",
        denied.stderr()
    );

    // The system roots alone do not trust the test CA.
    let untrusted = with_env(&a, &["push", &name], None).fails();
    assert!(
        untrusted.stderr().to_lowercase().contains("certificate")
            || untrusted.stderr().to_lowercase().contains("tls"),
        "{}",
        untrusted.stderr()
    );

    // A wrong password is refused and not saved.
    let user = reg.username();
    let wrong = with_env(
        &a,
        &[
            "--ca-file",
            ca,
            "login",
            "-u",
            &user,
            "--password-stdin",
            &reg.addr,
        ],
        Some("not-the-password\n"),
    )
    .fails();
    assert!(wrong.stderr().contains("401") || wrong.stderr().contains("unauthorized"));
    assert!(
        !docker_config.path().join("config.json").exists()
            || !fs::read_to_string(docker_config.path().join("config.json"))
                .unwrap()
                .contains(&reg.addr)
    );

    let login = with_env(
        &a,
        &[
            "--ca-file",
            ca,
            "login",
            "-u",
            &user,
            "--password-stdin",
            &reg.addr,
        ],
        Some(&format!("{}\n", reg.password())),
    )
    .ok();
    assert!(
        login.stderr().contains("Login Succeeded"),
        "{}",
        login.stderr()
    );
    assert!(
        !login.stderr().contains(&reg.password()) && !login.stdout().contains(&reg.password()),
        "the password is never printed"
    );
    let cfg_path = docker_config.path().join("config.json");
    let mode = fs::metadata(&cfg_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "config.json is private");
    let cfg = json(&fs::read_to_string(&cfg_path).unwrap());
    assert!(cfg["auths"][&reg.addr]["auth"].is_string(), "{cfg}");

    let pushed = with_env(&a, &["--ca-file", ca, "push", &name], None).ok();
    let digest = pushed.stdout().trim().to_string();
    let b = Kiln::new();
    with_env(&b, &["--ca-file", ca, "pull", &name], None).ok();
    assert_eq!(ids(&b, &name).1, digest);
    assert_eq!(ids(&b, &name).0, ids(&a, &name).0);

    with_env(&a, &["logout", &reg.addr], None).ok();
    let cfg = json(&fs::read_to_string(&cfg_path).unwrap());
    assert!(cfg["auths"].get(&reg.addr).is_none(), "{cfg}");
    let c = Kiln::new();
    let denied = with_env(&c, &["--ca-file", ca, "pull", &name], None).fails();
    assert!(
        denied.stderr().contains("401") && denied.stderr().contains("secure/hello"),
        "{}",
        denied.stderr()
    );
}

#[test]
fn registry_cache_makes_a_fresh_root_fully_cached() {
    let Some((reg, a)) = setup(false) else {
        return;
    };
    // The base comes from the registry on both roots, as in CI.
    let base = push_busybox(&reg, &a);
    let tmp = tempfile::tempdir().unwrap();
    write_tree(
        tmp.path(),
        &[
            (
                "Dockerfile",
                format!(
                    "FROM {base}\nRUN echo one > /one\nCOPY app.txt /app.txt\nRUN cat /one /app.txt > /both\nCMD [\"cat\", \"/both\"]\n"
                ),
            ),
            ("app.txt", "the app\n".to_string()),
        ],
    );
    let ctx = tmp.path().to_str().unwrap();
    let cache = format!("{}/cache/app:buildcache", reg.addr);
    let image = format!("{}/app/app:1", reg.addr);

    // A fresh root without the cache in the registry yet: a warning only.
    let first = a
        .run(&[
            "build",
            "--progress=plain",
            "--cache-from",
            &format!("type=registry,ref={cache}"),
            "--cache-to",
            &format!("type=registry,ref={cache},mode=max"),
            "--push",
            "-t",
            &image,
            ctx,
        ])
        .ok();
    assert!(
        first.stderr().contains("building without it"),
        "{}",
        first.stderr()
    );
    assert!(first.stderr().contains("exported"), "{}", first.stderr());
    let (id_a, _) = ids(&a, &image);

    let b = Kiln::new();
    let second = b
        .run(&[
            "build",
            "--progress=plain",
            "--cache-from",
            &format!("type=registry,ref={cache}"),
            "-t",
            "app:1",
            ctx,
        ])
        .ok();
    let steps = common::cache_steps(&second.stderr());
    assert!(
        steps.len() >= 3 && steps.iter().all(|(_, o)| o == "CACHED"),
        "every step is a cache hit on the fresh root:\n{}",
        second.stderr()
    );
    assert_eq!(ids(&b, "app:1").0, id_a, "same image");
    assert_eq!(
        b.run(&["run", "--rm", "app:1"]).ok().stdout(),
        "one\nthe app\n"
    );

    // What --push sent is the same image.
    let c = Kiln::new();
    c.run(&["pull", &image]).ok();
    assert_eq!(ids(&c, &image).0, id_a);
}

#[test]
fn docker_pulls_what_kiln_pushed() {
    if !require(
        std::env::var_os("KILN_DOCKER").is_some(),
        "KILN_DOCKER is not set: no Docker engine to pull with (scripts/test.sh starts dockerd and sets it)",
    ) {
        return;
    }
    let Some((reg, a)) = setup(false) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let name = format!("{}/kiln/for-docker:1", reg.addr);
    build_hello(&a, tmp.path(), &name);
    a.run(&["push", &name]).ok();
    let (id, _) = ids(&a, &name);
    let docker = |args: &[&str]| {
        let out = Command::new("docker").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    docker(&["pull", &name]);
    assert_eq!(docker(&["image", "inspect", "-f", "{{.Id}}", &name]), id);
    let out = docker(&["run", "--rm", "--network", "none", &name]);
    assert_eq!(out, "hello-from-the-registry");
    docker(&["rmi", &name]);
}
