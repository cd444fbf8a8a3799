//! Shared fixtures: a busybox rootfs made from Debian's busybox-static, the
//! test helper binary, and a capture helper.
#![allow(dead_code)]

use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use kiln_runner::{ContainerSpec, RootFs, RunError, RunnerConfig, Stdio};

pub const BUSYBOX: &str = "/bin/busybox";

/// True when the tests can make containers; otherwise says why (and fails
/// the test under CI).
pub fn can_run(_test: &str) -> bool {
    kiln_testkit::require_containers()
        && kiln_testkit::require(
            Path::new(BUSYBOX).exists(),
            &format!("{BUSYBOX} missing (apt-get install busybox-static)"),
        )
}

fn make_busybox_root(root: &Path) {
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy(BUSYBOX, bin.join("busybox")).unwrap();
    let out = std::process::Command::new(BUSYBOX)
        .arg("--list")
        .output()
        .unwrap();
    for applet in String::from_utf8(out.stdout).unwrap().lines() {
        if applet != "busybox" && !applet.is_empty() {
            let _ = symlink("busybox", bin.join(applet));
        }
    }
    let etc = root.join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(
        etc.join("passwd"),
        "root:x:0:0:root:/root:/bin/sh\n\
         nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n\
         app:x:1000:1000:App:/home/app:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(
        etc.join("group"),
        "root:x:0:\nwheel:x:10:app\naudio:x:29:app\napp:x:1000:\nnogroup:x:65534:\n",
    )
    .unwrap();
    for d in ["root", "home/app", "tmp"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    rustix::fs::chown(
        root.join("home/app"),
        Some(rustix::fs::Uid::from_raw(1000)),
        Some(rustix::fs::Gid::from_raw(1000)),
    )
    .unwrap();
}

/// A busybox rootfs shared (read-only, as a lower dir) by all tests, made
/// once under the target dir (built aside, then renamed into place).
pub fn busybox_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("busybox-root-v1");
        if !dir.join("bin/busybox").exists() {
            let tmp = tempfile::Builder::new()
                .prefix("busybox-root-")
                .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
                .unwrap();
            make_busybox_root(tmp.path());
            // Losing the race to another test binary is fine.
            let kept = tmp.keep();
            if std::fs::rename(&kept, &dir).is_err() {
                let _ = std::fs::remove_dir_all(&kept);
            }
        }
        dir
    })
}

pub fn cfg() -> RunnerConfig {
    RunnerConfig {
        helper_exe: PathBuf::from(env!("CARGO_BIN_EXE_kiln-runner-testbin")),
        scratch_root: std::env::temp_dir(),
        shared_net: None,
        snapshotter: kiln_runner::Snapshotter::default(),
    }
}

pub fn spec(args: &[&str]) -> ContainerSpec {
    ContainerSpec {
        rootfs: RootFs {
            lowers: vec![busybox_root().to_path_buf()],
            upper: None,
        },
        args: args.iter().map(|s| s.to_string()).collect(),
        env: vec![],
        cwd: "/".into(),
        ..Default::default()
    }
}

pub fn sh(script: &str) -> ContainerSpec {
    spec(&["/bin/sh", "-c", script])
}

pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

fn pipe() -> (OwnedFd, OwnedFd) {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap()
}

/// Run in the foreground, capturing stdout and stderr.
pub fn run(spec: &ContainerSpec) -> Result<Output, RunError> {
    run_with(&cfg(), spec)
}

/// [`run`] with a config of the caller's.
pub fn run_with(cfg: &RunnerConfig, spec: &ContainerSpec) -> Result<Output, RunError> {
    let (out_r, out_w) = pipe();
    let (err_r, err_w) = pipe();
    let rd = |fd: OwnedFd| {
        std::thread::spawn(move || {
            let mut s = String::new();
            std::fs::File::from(fd).read_to_string(&mut s).unwrap();
            s
        })
    };
    let (o, e) = (rd(out_r), rd(err_r));
    let r = kiln_runner::run(
        cfg,
        spec,
        Stdio {
            stdin: None,
            stdout: Some(out_w),
            stderr: Some(err_w),
        },
    );
    let stdout = o.join().unwrap();
    let stderr = e.join().unwrap();
    r.map(|code| Output {
        code,
        stdout,
        stderr,
    })
}

/// Run and expect success; returns stdout.
pub fn ok(spec: &ContainerSpec) -> String {
    let o = run(spec).unwrap();
    assert_eq!(o.code, 0, "stdout: {}\nstderr: {}", o.stdout, o.stderr);
    o.stdout
}
