//! Images for another architecture: `kiln import --platform` records the
//! platform, and `kiln run` runs the image under QEMU user emulation when
//! a binfmt_misc handler with the F flag is registered (fixtures/binfmt/
//! register.sh; scripts/test.sh runs it through make-bases.sh busybox-arm64).

mod common;

use common::{fixtures_cache, is_root, require, Kiln};
use serde_json::Value;

fn arm64_handler_registered() -> bool {
    std::fs::read_to_string("/proc/sys/fs/binfmt_misc/qemu-aarch64").is_ok_and(|s| {
        s.starts_with("enabled")
            && s.lines()
                .any(|l| l.starts_with("flags:") && l.contains('F'))
    })
}

fn setup() -> Option<Kiln> {
    if !require(is_root(), "containers need root") {
        return None;
    }
    let rootfs = fixtures_cache().join("busybox-arm64/rootfs.tar");
    if !require(
        rootfs.is_file(),
        "busybox-arm64 base missing: run fixtures/bases/make-bases.sh busybox-arm64 (scripts/test.sh does)",
    ) {
        return None;
    }
    if !require(
        arm64_handler_registered(),
        "no qemu-aarch64 binfmt_misc handler with the F flag: run fixtures/binfmt/register.sh",
    ) {
        return None;
    }
    let k = Kiln::new();
    k.run(&[
        "import",
        "--platform",
        "linux/arm64",
        rootfs.to_str().unwrap(),
        "busybox-arm64:latest",
    ])
    .ok();
    Some(k)
}

#[test]
fn an_arm64_image_runs_under_emulation_with_a_warning_that_says_so() {
    let Some(k) = setup() else { return };
    let inspect: Value =
        serde_json::from_str(&k.run(&["inspect", "busybox-arm64"]).ok().stdout()).unwrap();
    assert_eq!(inspect[0]["Architecture"], "arm64");
    assert_eq!(inspect[0]["Os"], "linux");

    let r = k
        .run(&[
            "run",
            "--rm",
            "--network",
            "none",
            "busybox-arm64",
            "uname",
            "-m",
        ])
        .ok();
    assert_eq!(r.stdout().trim(), "aarch64");
    assert!(
        r.stderr()
            .contains("does not match the detected host platform (linux/amd64)")
            && r.stderr().contains("qemu-aarch64"),
        "{}",
        r.stderr()
    );

    // The syscall filter and the user's identity hold under emulation too.
    let r = k
        .run(&[
            "run",
            "--rm",
            "--network",
            "none",
            "-u",
            "1000",
            "busybox-arm64",
            "sh",
            "-c",
            "id -u; unshare -U true; echo $?",
        ])
        .ok();
    let out = r.stdout();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.first(), Some(&"1000"), "{out}");
    assert_ne!(
        lines.last(),
        Some(&"0"),
        "unshare -U must be refused: {}",
        r.stdout()
    );
}

#[test]
fn import_refuses_a_platform_it_cannot_parse() {
    let k = Kiln::new();
    let f = tempfile::NamedTempFile::new().unwrap();
    let r = k
        .run(&[
            "import",
            "--platform",
            "arm64",
            f.path().to_str().unwrap(),
            "x:1",
        ])
        .fails();
    assert!(r.stderr().contains("--platform"), "{}", r.stderr());
    assert!(r.stderr().contains("arm64"), "{}", r.stderr());
}
