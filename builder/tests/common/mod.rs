//! Shared helpers for the end-to-end tests: they drive the real `kiln`
//! binary against a fresh root per test.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn kiln_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kiln"))
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("builder/ has a parent")
        .to_path_buf()
}

pub fn fixtures_cache() -> PathBuf {
    std::env::var_os("KILN_FIXTURES_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/kiln-fixtures"))
}

/// Whether a requirement of a test is met: when it is not, the test says
/// why it skipped, or under CI fails (see kiln-testkit).
#[allow(unused_imports)]
pub use kiln_testkit::{is_root, require};

/// A kiln root in a temp dir, removed at the end of the test.
pub struct Kiln {
    pub root: tempfile::TempDir,
}

pub struct Run {
    pub out: Output,
}

impl Run {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }
    pub fn code(&self) -> i32 {
        self.out.status.code().unwrap_or(-1)
    }
    #[track_caller]
    pub fn ok(self) -> Run {
        assert!(
            self.out.status.success(),
            "kiln failed ({}):\nstdout:\n{}\nstderr:\n{}",
            self.code(),
            self.stdout(),
            self.stderr()
        );
        self
    }
    #[track_caller]
    pub fn fails(self) -> Run {
        assert!(
            !self.out.status.success(),
            "kiln should have failed:\nstdout:\n{}\nstderr:\n{}",
            self.stdout(),
            self.stderr()
        );
        self
    }
}

impl Kiln {
    pub fn new() -> Kiln {
        let base = std::env::var_os("KILN_TEST_TMP")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        Kiln {
            root: tempfile::Builder::new()
                .prefix("kiln-e2e-")
                .tempdir_in(base)
                .expect("temp root"),
        }
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(kiln_bin());
        c.env("KILN_ROOT", self.root.path());
        c.env_remove("SOURCE_DATE_EPOCH");
        c
    }

    pub fn run(&self, args: &[&str]) -> Run {
        let out = self.cmd().args(args).output().expect("spawn kiln");
        Run { out }
    }

    pub fn run_in(&self, dir: &Path, args: &[&str]) -> Run {
        let out = self
            .cmd()
            .current_dir(dir)
            .args(args)
            .output()
            .expect("spawn kiln");
        Run { out }
    }

    /// Builds an offline base (made by fixtures/bases: a `FROM scratch` +
    /// `ADD rootfs.tar /` context) into this root under `tag`.
    fn with_base(&self, dir: &str, tag: &str) -> bool {
        let ctx = fixtures_cache().join(dir);
        if !require(
            ctx.join("rootfs.tar").is_file(),
            &format!(
                "{} missing: run fixtures/bases/make-bases.sh (scripts/test.sh does)",
                ctx.display()
            ),
        ) {
            return false;
        }
        self.run(&[
            "build",
            "--progress=plain",
            "-t",
            tag,
            ctx.to_str().expect("utf-8 path"),
        ])
        .ok();
        true
    }

    pub fn with_busybox(&self) -> bool {
        self.with_base("busybox", "busybox:latest")
    }

    pub fn with_python(&self) -> bool {
        self.with_base("python-3.11-slim", "python:3.11-slim")
    }

    /// `kiln build --progress=plain EXTRA... DIR`.
    #[allow(dead_code)]
    pub fn build_dir(&self, dir: &Path, extra: &[&str]) -> Run {
        let mut args = vec!["build", "--progress=plain"];
        args.extend_from_slice(extra);
        args.push(dir.to_str().expect("utf-8 path"));
        self.run(&args)
    }

    /// The same build exported with `--output type=local,dest=OUT`.
    #[allow(dead_code)]
    pub fn export_dir(&self, dir: &Path, out: &Path, extra: &[&str]) -> Run {
        let spec = format!("type=local,dest={}", out.display());
        let mut args = vec!["--output", spec.as_str()];
        args.extend_from_slice(extra);
        self.build_dir(dir, &args)
    }
}

/// A kiln whose tests run containers: root and the busybox base, or `None`
/// after [`require`] said why (a failure under `CI=1`).
#[allow(dead_code)]
pub fn root_with_busybox(why: &str) -> Option<Kiln> {
    if !require(is_root(), why) {
        return None;
    }
    let k = Kiln::new();
    if !k.with_busybox() {
        return None;
    }
    Some(k)
}

/// `GET path` over HTTP/1.0 from 127.0.0.1:`port`: the whole answer,
/// headers included, or None when nothing answers.
#[allow(dead_code)]
pub fn http_get_path(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

/// The host path of the binary running as `pid`'s parent (for a
/// container's PID 1: the runner helper that supervises it).
#[allow(dead_code)]
pub fn parent_exe(pid: i64) -> PathBuf {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let ppid = status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .unwrap()
        .trim()
        .to_string();
    std::fs::read_link(format!("/proc/{ppid}/exe")).unwrap()
}

/// `GET /` (see [`http_get_path`]).
#[allow(dead_code)]
pub fn http_get(port: u16) -> Option<String> {
    http_get_path(port, "/")
}

/// Builds `tag` FROM busybox with `body` after the FROM line.
#[allow(dead_code)]
pub fn image_from_busybox(k: &Kiln, tag: &str, body: &str) {
    let ctx = tempfile::tempdir().unwrap();
    write_tree(
        ctx.path(),
        &[("Dockerfile", format!("FROM busybox\n{body}"))],
    );
    k.build_dir(ctx.path(), &["-t", tag]).ok();
}

/// Writes files (path, content) under `dir`.
pub fn write_tree<S: AsRef<str>>(dir: &Path, files: &[(&str, S)]) {
    for (p, c) in files {
        let full = dir.join(p);
        std::fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
        std::fs::write(full, c.as_ref()).expect("write");
    }
}

/// The build steps the cache covers, with their outcome: [`step_outcomes`]
/// without the FROM lines (they resolve, and may pull, the base) and the
/// `[internal]` work (context, pulls).
pub fn cache_steps(stderr: &str) -> Vec<(String, String)> {
    step_outcomes(stderr)
        .into_iter()
        .filter(|(l, _)| !l.starts_with("[internal]") && !l.contains("] FROM "))
        .collect()
}

/// Step lines of a plain-progress build that were cache hits / ran.
pub fn step_outcomes(stderr: &str) -> Vec<(String, String)> {
    let mut labels: std::collections::BTreeMap<String, String> = Default::default();
    let mut out = Vec::new();
    for line in stderr.lines() {
        let Some(rest) = line.strip_prefix('#') else {
            continue;
        };
        let Some((n, text)) = rest.split_once(' ') else {
            continue;
        };
        if text.starts_with('[') {
            labels.insert(n.to_string(), text.to_string());
        } else if text == "CACHED" || text.starts_with("CACHED (from ") || text.starts_with("DONE")
        {
            if let Some(l) = labels.get(n) {
                out.push((
                    l.clone(),
                    if text.starts_with("CACHED") {
                        "CACHED"
                    } else {
                        "RAN"
                    }
                    .to_string(),
                ));
            }
        }
    }
    out
}

/// A throwaway CNCF distribution registry on 127.0.0.1 (Debian's
/// `docker-registry`, started by fixtures/registry/start-registry.sh),
/// stopped when dropped.
pub struct Registry {
    pub dir: tempfile::TempDir,
    /// `127.0.0.1:PORT`
    pub addr: String,
    pid: i32,
}

impl Registry {
    /// `None` (after saying why, or failing in CI) when the registry
    /// cannot run here.
    pub fn start(tls_auth: bool) -> Option<Registry> {
        Registry::start_with(if tls_auth { Some("--tls-auth") } else { None })
    }

    /// A plain-http registry that refuses deletes (405), as a CNCF
    /// distribution registry does unless `storage.delete.enabled`.
    pub fn start_without_deletes() -> Option<Registry> {
        Registry::start_with(Some("--no-delete"))
    }

    fn start_with(option: Option<&str>) -> Option<Registry> {
        if !require(
            Path::new("/usr/bin/docker-registry").exists(),
            "Debian's docker-registry is not installed (scripts/deps.sh installs it)",
        ) {
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("kiln-registry-")
            .tempdir()
            .expect("temp dir");
        let mut c = Command::new(repo_root().join("fixtures/registry/start-registry.sh"));
        c.arg(dir.path());
        if let Some(o) = option {
            c.arg(o);
        }
        let out = c.output().expect("run start-registry.sh");
        assert!(
            out.status.success(),
            "start-registry.sh failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let read = |f: &str| {
            std::fs::read_to_string(dir.path().join(f))
                .expect("registry file")
                .trim()
                .to_string()
        };
        let addr = read("addr");
        let pid = read("pid").parse().expect("pid");
        Some(Registry { dir, addr, pid })
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    pub fn username(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("username"))
            .expect("username")
            .trim()
            .to_string()
    }

    pub fn password(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("password"))
            .expect("password")
            .trim()
            .to_string()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.pid.to_string()).status();
    }
}

/// A one-file HTTP server on loopback for ADD <url>.
#[allow(dead_code)]
pub fn serve(body: &'static str) -> u16 {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nLast-Modified: Tue, 15 Nov 1994 08:12:31 GMT\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}
