//! `kiln build --platform linux/amd64,linux/arm64`: one image per platform
//! in one OCI index, RUN steps of arm64 under QEMU user emulation, the
//! automatic platform ARGs scoped as BuildKit 0.13 scopes them, a
//! `FROM --platform=$BUILDPLATFORM` stage built once, outputs per platform.
//! The arm64 tests need root, the busybox and busybox-arm64 fixture bases
//! and a qemu-aarch64 binfmt_misc handler with the F flag
//! (fixtures/binfmt/register.sh; scripts/test.sh runs it).

mod common;

use std::path::Path;

use common::{fixtures_cache, is_root, require, step_outcomes, write_tree, Kiln, Registry};
use serde_json::Value;

const BOTH: &str = "linux/amd64,linux/arm64";

fn arm64_handler_registered() -> bool {
    std::fs::read_to_string("/proc/sys/fs/binfmt_misc/qemu-aarch64").is_ok_and(|s| {
        s.starts_with("enabled")
            && s.lines()
                .any(|l| l.starts_with("flags:") && l.contains('F'))
    })
}

/// A kiln root with `bb:multi`: an index of busybox for amd64 and arm64,
/// itself built by kiln from the two fixture root filesystems.
fn setup() -> Option<(Kiln, tempfile::TempDir)> {
    if !require(is_root(), "containers need root") {
        return None;
    }
    let amd = fixtures_cache().join("busybox/rootfs.tar");
    let arm = fixtures_cache().join("busybox-arm64/rootfs.tar");
    if !require(
        amd.is_file() && arm.is_file(),
        "busybox or busybox-arm64 base missing: run fixtures/bases/make-bases.sh busybox busybox-arm64 (scripts/test.sh does)",
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
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    std::fs::create_dir_all(&base).unwrap();
    std::fs::copy(&amd, base.join("rootfs-amd64.tar")).unwrap();
    std::fs::copy(&arm, base.join("rootfs-arm64.tar")).unwrap();
    write_tree(
        &base,
        &[(
            "Dockerfile",
            "FROM scratch\nARG TARGETARCH\nADD rootfs-$TARGETARCH.tar /\n",
        )],
    );
    k.build_dir(&base, &["--platform", BOTH, "-t", "bb:multi"])
        .ok();
    Some((k, dir))
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .to_string()
}

#[test]
fn run_steps_of_each_platform_run_as_that_platform_into_one_index() {
    let Some((k, dir)) = setup() else { return };
    let app = dir.path().join("app");
    write_tree(
        &app,
        &[(
            "Dockerfile",
            "FROM bb:multi\nRUN uname -m > /arch\nRUN echo two > /two\nRUN echo three > /three\n",
        )],
    );
    let out = dir.path().join("out");
    let spec = format!("type=local,dest={}", out.display());
    let r = k
        .build_dir(
            &app,
            &["--platform", BOTH, "-t", "app:1", "--output", &spec],
        )
        .ok();
    assert_eq!(read(&out.join("linux_amd64/arch")), "x86_64");
    assert_eq!(read(&out.join("linux_arm64/arch")), "aarch64");
    assert_eq!(read(&out.join("linux_arm64/three")), "three");
    assert!(
        r.stderr()
            .contains("[linux/arm64 2/4] RUN uname -m > /arch")
            && r.stderr()
                .contains("linux/arm64: RUN steps run under emulation"),
        "{}",
        r.stderr()
    );

    // One line in `kiln images`, with its platforms.
    let images = k.run(&["images"]).ok().stdout();
    let lines: Vec<&str> = images.lines().filter(|l| l.starts_with("app ")).collect();
    assert_eq!(lines.len(), 1, "{images}");
    assert!(lines[0].contains("linux/amd64,linux/arm64"), "{images}");

    // Each platform's image, by inspect and by run.
    for (p, arch) in [("linux/amd64", "amd64"), ("linux/arm64", "arm64")] {
        let v: Value =
            serde_json::from_str(&k.run(&["inspect", "--platform", p, "app:1"]).ok().stdout())
                .unwrap();
        assert_eq!(v[0]["Architecture"], arch);
        assert_eq!(v[0]["Os"], "linux");
    }
    let r = k
        .run(&[
            "run",
            "--rm",
            "--network",
            "none",
            "--platform",
            "linux/arm64",
            "app:1",
            "uname",
            "-m",
        ])
        .ok();
    assert_eq!(r.stdout().trim(), "aarch64");
    let e = k
        .run(&["inspect", "--platform", "linux/s390x", "app:1"])
        .fails();
    assert!(
        e.stderr().contains("no image for linux/s390x"),
        "{}",
        e.stderr()
    );

    // The second build is fully cached, for both platforms.
    let again = k.build_dir(&app, &["--platform", BOTH, "-t", "app:1"]).ok();
    let steps: Vec<_> = step_outcomes(&again.stderr())
        .into_iter()
        .filter(|(l, _)| l.contains("] RUN "))
        .collect();
    assert_eq!(steps.len(), 6, "{}", again.stderr());
    assert!(steps.iter().all(|(_, o)| o == "CACHED"), "{steps:?}");

    // kiln save --format oci writes the index with both manifests.
    let tar = dir.path().join("app.tar");
    k.run(&[
        "save",
        "--format",
        "oci",
        "-o",
        tar.to_str().unwrap(),
        "app:1",
    ])
    .ok();
    let unpacked = dir.path().join("oci");
    std::fs::create_dir_all(&unpacked).unwrap();
    let st = std::process::Command::new("tar")
        .args([
            "-xf",
            tar.to_str().unwrap(),
            "-C",
            unpacked.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let top: Value = serde_json::from_str(&read(&unpacked.join("index.json"))).unwrap();
    let d = top["manifests"][0]["digest"].as_str().unwrap();
    let inner: Value = serde_json::from_str(&read(
        &unpacked
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:")),
    ))
    .unwrap();
    let platforms: Vec<String> = inner["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            format!(
                "{}/{}",
                m["platform"]["os"].as_str().unwrap(),
                m["platform"]["architecture"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64"]);
}

#[test]
fn platform_args_are_scoped_as_buildkit_scopes_them() {
    let Some((k, dir)) = setup() else { return };
    let app = dir.path().join("args");
    // BUILDARCH and TARGETARCH are in the global scope (FROM and global
    // ARG defaults see them); in a stage only after ARG without value;
    // an ARG redeclared with a value in a stage keeps its own.
    let df = r#"ARG BASE=bb:multi
ARG G=g-$TARGETARCH
FROM --platform=$BUILDPLATFORM $BASE AS cross
RUN echo "t=$TARGETARCH b=$BUILDARCH" > /unset
ARG TARGETARCH
ARG BUILDARCH
RUN echo "t=$TARGETARCH b=$BUILDARCH" > /set
FROM --platform=$BUILDPLATFORM $BASE AS shared
RUN uname -m > /built-on
FROM $BASE
ARG G
ARG TARGETPLATFORM TARGETVARIANT
ARG TARGETOS=mine
COPY --from=cross /unset /set /
COPY --from=shared /built-on /
RUN echo "$G $TARGETPLATFORM v=$TARGETVARIANT os=$TARGETOS $(uname -m)" > /final
RUN unshare -U true 2>/dev/null; echo $? > /unshare
"#;
    write_tree(&app, &[("Dockerfile", df)]);
    let out = dir.path().join("out");
    let spec = format!("type=local,dest={}", out.display());
    let r = k
        .build_dir(&app, &["--platform", BOTH, "--output", &spec])
        .ok();
    for (dir, arch, uname) in [
        ("linux_amd64", "amd64", "x86_64"),
        ("linux_arm64", "arm64", "aarch64"),
    ] {
        let d = out.join(dir);
        assert_eq!(read(&d.join("unset")), "t= b=");
        assert_eq!(read(&d.join("set")), format!("t={arch} b=amd64"));
        assert_eq!(read(&d.join("built-on")), "x86_64");
        assert_eq!(
            read(&d.join("final")),
            format!("g-{arch} linux/{arch} v= os=mine {uname}")
        );
        // The syscall filter holds under emulation too: qemu makes the
        // host's calls, and CLONE_NEWUSER is refused.
        assert_ne!(read(&d.join("unshare")), "0", "{dir}");
    }
    // The shared stage ran once; the one declaring TARGETARCH once per
    // target, on the build platform (BuildKit's `->arm64`).
    let ran = step_outcomes(&r.stderr());
    let count = |what: &str| ran.iter().filter(|(l, _)| l.contains(what)).count();
    assert_eq!(count("RUN uname -m > /built-on"), 1, "{}", r.stderr());
    assert_eq!(count("> /set"), 2, "{}", r.stderr());
    assert!(
        r.stderr().contains("[linux/amd64->arm64 cross 3/3]"),
        "{}",
        r.stderr()
    );
}

/// A base image without the asked platform, and an unknown platform:
/// clear errors before any step runs.
#[test]
fn a_base_without_the_platform_is_refused_before_any_step_runs() {
    let Some((k, dir)) = setup() else { return };
    let app = dir.path().join("bad");
    write_tree(&app, &[("Dockerfile", "FROM bb:multi\nRUN echo ran\n")]);
    let r = k
        .build_dir(
            &app,
            &["--platform", "linux/amd64,linux/ppc64le", "--pull=never"],
        )
        .fails();
    assert!(
        r.stderr()
            .contains("bb:multi has no image for linux/ppc64le")
            || r.stderr().contains("not linux/ppc64le"),
        "{}",
        r.stderr()
    );
    assert!(!r.stderr().contains("] RUN echo ran"), "{}", r.stderr());
}

/// The first platform with RUN steps that no binfmt_misc handler runs.
fn unregistered_platform() -> Option<(&'static str, &'static str)> {
    [
        ("linux/s390x", "s390x"),
        ("linux/riscv64", "riscv64"),
        ("linux/ppc64le", "ppc64le"),
    ]
    .into_iter()
    .find(|(_, q)| !Path::new(&format!("/proc/sys/fs/binfmt_misc/qemu-{q}")).exists())
}

#[test]
fn a_platform_without_an_emulator_says_how_to_register_one() {
    let Some((platform, qemu)) = unregistered_platform() else {
        require(false, "every candidate platform has a binfmt handler here");
        return;
    };
    let k = Kiln::new();
    let dir = tempfile::tempdir().unwrap();
    write_tree(dir.path(), &[("Dockerfile", "FROM scratch\nRUN true\n")]);
    let r = k
        .build_dir(
            dir.path(),
            &["--platform", &format!("linux/amd64,{platform}")],
        )
        .fails();
    let e = r.stderr();
    assert!(
        e.contains(&format!(
            "RUN steps for {platform}, which cannot run on this machine"
        )) && e.contains(&format!("register.sh {qemu}")),
        "{e}"
    );
    assert!(
        !e.contains("exec format error") && !e.contains("RUN true"),
        "{e}"
    );

    let r = k
        .build_dir(dir.path(), &["--platform", "linux/vax"])
        .fails();
    assert!(
        r.stderr().contains("unknown architecture \"vax\""),
        "{}",
        r.stderr()
    );
    let r = k.build_dir(dir.path(), &["--platform", "arm64"]).fails();
    assert!(r.stderr().contains("expected os/arch"), "{}", r.stderr());
}

/// A step's key names its platform: the same `FROM scratch` + COPY for
/// arm64 does not hit the record of amd64 (needs no containers).
#[test]
fn cache_keys_differ_per_platform() {
    let k = Kiln::new();
    let dir = tempfile::tempdir().unwrap();
    write_tree(
        dir.path(),
        &[("Dockerfile", "FROM scratch\nCOPY f /f\n"), ("f", "x")],
    );
    let outcome = |p: &str| {
        let r = k.build_dir(dir.path(), &["--platform", p]).ok();
        step_outcomes(&r.stderr())
            .into_iter()
            .find(|(l, _)| l.contains("COPY f /f"))
            .unwrap_or_else(|| panic!("{}", r.stderr()))
            .1
    };
    assert_eq!(outcome("linux/amd64"), "RAN");
    assert_eq!(outcome("linux/arm64"), "RAN");
    assert_eq!(outcome("linux/amd64"), "CACHED");
    assert_eq!(outcome("linux/arm64"), "CACHED");
    // Both in one build: both cached, one image each, one index.
    let r = k
        .build_dir(dir.path(), &["--platform", BOTH, "-t", "two:1"])
        .ok();
    let steps = step_outcomes(&r.stderr());
    assert_eq!(
        steps.iter().filter(|(_, o)| o == "CACHED").count(),
        2,
        "{steps:?}"
    );
    for (p, arch) in [("linux/amd64", "amd64"), ("linux/arm64", "arm64")] {
        let v: Value =
            serde_json::from_str(&k.run(&["inspect", "--platform", p, "two:1"]).ok().stdout())
                .unwrap();
        assert_eq!(v[0]["Architecture"], arch);
    }
}

/// `--output type=tar` of two platforms: one directory per platform.
#[test]
fn tar_output_has_a_directory_per_platform() {
    let k = Kiln::new();
    let dir = tempfile::tempdir().unwrap();
    write_tree(
        dir.path(),
        &[
            (
                "Dockerfile",
                "FROM scratch\nARG TARGETARCH\nCOPY f-$TARGETARCH /f\n",
            ),
            ("f-amd64", "a"),
            ("f-arm64", "b"),
        ],
    );
    let tar = dir.path().join("o.tar");
    let spec = format!("type=tar,dest={}", tar.display());
    k.build_dir(dir.path(), &["--platform", BOTH, "--output", &spec])
        .ok();
    let list = std::process::Command::new("tar")
        .args(["-tf", tar.to_str().unwrap()])
        .output()
        .unwrap();
    let names = String::from_utf8_lossy(&list.stdout).to_string();
    let files: Vec<&str> = names
        .lines()
        .map(|l| l.trim_start_matches("./"))
        .filter(|l| l.ends_with("/f"))
        .collect();
    assert_eq!(files, ["linux_amd64/f", "linux_arm64/f"], "{names}");
    // docker's format holds no index: said plainly.
    let spec = format!("type=docker,dest={}", dir.path().join("d.tar").display());
    let r = k
        .build_dir(dir.path(), &["--platform", BOTH, "--output", &spec])
        .fails();
    assert!(r.stderr().contains("manifest lists"), "{}", r.stderr());
}

/// `kiln build --platform ... --push`: the index and both manifests go to
/// the registry; an empty root pulls each platform back and runs it.
#[test]
fn the_index_is_pushed_and_each_platform_pulls_back() {
    let Some((k, dir)) = setup() else { return };
    let Some(reg) = Registry::start(false) else {
        return;
    };
    let app = dir.path().join("push");
    write_tree(
        &app,
        &[("Dockerfile", "FROM bb:multi\nRUN uname -m > /arch\n")],
    );
    let name = format!("{}/kiln/multi:1", reg.addr);
    k.build_dir(&app, &["--platform", BOTH, "-t", &name, "--push"])
        .ok();
    for (p, arch) in [("linux/amd64", "x86_64"), ("linux/arm64", "aarch64")] {
        let fresh = Kiln::new();
        fresh.run(&["pull", "--platform", p, &name]).ok();
        let r = fresh
            .run(&[
                "run",
                "--rm",
                "--network",
                "none",
                "--platform",
                p,
                &name,
                "cat",
                "/arch",
            ])
            .ok();
        assert_eq!(r.stdout().trim(), arch, "{p}: {}", r.stderr());
    }
}

/// `image_tree.py ARCHIVE --tree - `: the flattened tree (path, type,
/// mode, owner, size, sha256), or `--config -`: the normalised config.
fn image_tree(archive: &Path, what: &str) -> String {
    let tool = common::repo_root().join("fixtures/tools/image_tree.py");
    let out = std::process::Command::new("python3")
        .arg(tool)
        .arg(archive)
        .args([what, "-"])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "image_tree.py {what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The same arm64 image built by kiln and by BuildKit 0.13
/// (`docker buildx build --platform linux/arm64` on Docker 26.1, which
/// runs the RUN steps under the same binfmt_misc QEMU): the same files,
/// modes and owners, and the same architecture, os and variant.
#[test]
fn an_arm64_image_is_what_buildkit_builds() {
    let Some((k, _dir)) = setup() else { return };
    let Some(modern) = std::env::var_os("KILN_DOCKER_MODERN") else {
        require(
            false,
            "KILN_DOCKER_MODERN is not set (scripts/test.sh starts Docker 26.1 with buildx 0.13)",
        );
        return;
    };
    let docker = |args: &[&str]| {
        let out = std::process::Command::new(common::repo_root().join("fixtures/docker/docker26"))
            .env("KILN_DOCKER_MODERN", &modern)
            .env("KILN_FIXTURES_CACHE", fixtures_cache())
            .args(args)
            .output()
            .expect("run docker26");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (loaded, _, _) = docker(&["image", "inspect", "busybox-arm64:latest"]);
    if !require(
        loaded,
        "busybox-arm64:latest is not in the modern engine: run fixtures/docker/load-bases.sh --modern busybox-arm64 (scripts/test.sh does)",
    ) {
        return;
    }
    // kiln's base under the same name, from the same fixture context.
    let base = fixtures_cache().join("busybox-arm64");
    k.build_dir(
        &base,
        &["--platform", "linux/arm64", "-t", "busybox-arm64:latest"],
    )
    .ok();

    let ctx = tempfile::tempdir().unwrap();
    write_tree(
        ctx.path(),
        &[
            (
                "Dockerfile",
                "FROM busybox-arm64:latest\nARG TARGETARCH\n\
                 RUN uname -m > /machine && echo \"$TARGETARCH\" > /targetarch\n\
                 COPY hello.sh /usr/local/bin/hello\n\
                 RUN chmod 0750 /usr/local/bin/hello && mkdir -m 0700 /private \
                 && chown 1000:1000 /private\n",
            ),
            ("hello.sh", "#!/bin/sh\necho hello\n"),
        ],
    );
    use std::os::unix::fs::PermissionsExt;
    let script = ctx.path().join("hello.sh");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();

    let out = tempfile::tempdir().unwrap();
    let kiln_tar = out.path().join("kiln.tar");
    let spec = format!("type=docker,dest={}", kiln_tar.display());
    k.build_dir(
        ctx.path(),
        &[
            "--platform",
            "linux/arm64",
            "-t",
            "cmp:kiln",
            "--output",
            &spec,
        ],
    )
    .ok();
    let c = ctx.path().to_str().unwrap();
    let (built, _, err) = docker(&[
        "buildx",
        "build",
        "--platform",
        "linux/arm64",
        "--progress=plain",
        "--network=host",
        "--load",
        "-t",
        "cmp:buildkit",
        c,
    ]);
    assert!(built, "docker buildx build: {err}");
    let bk_tar = out.path().join("buildkit.tar");
    let (saved, _, err) = docker(&["save", "-o", bk_tar.to_str().unwrap(), "cmp:buildkit"]);
    assert!(saved, "docker save: {err}");

    let kiln_tree = image_tree(&kiln_tar, "--tree");
    let bk_tree = image_tree(&bk_tar, "--tree");
    // Both ran under QEMU as arm64, and saw the same TARGETARCH.
    for line in [
        "/machine f 0644 0 0 8 ",
        "/targetarch f 0644 0 0 6 ",
        "/usr/local/bin/hello f 0750 0 0 ",
        "/private d 0700 1000 1000 0 -",
    ] {
        assert!(
            kiln_tree.contains(line),
            "kiln has no {line:?}:\n{kiln_tree}"
        );
    }
    let diff: Vec<String> = similar_lines(&kiln_tree, &bk_tree);
    assert!(
        diff.is_empty(),
        "kiln vs BuildKit trees:\n{}",
        diff.join("\n")
    );

    let cfg = |t: &str| -> Value { serde_json::from_str(t).unwrap() };
    let (kc, bc) = (
        cfg(&image_tree(&kiln_tar, "--config")),
        cfg(&image_tree(&bk_tar, "--config")),
    );
    assert_eq!(kc["architecture"], "arm64", "{kc}");
    for key in ["architecture", "os"] {
        assert_eq!(kc[key], bc[key], "{key}: kiln {kc} BuildKit {bc}");
    }
    // The variant, as each engine reports it.
    let (_, variant, _) = docker(&[
        "image",
        "inspect",
        "--format",
        "{{.Variant}}",
        "cmp:buildkit",
    ]);
    let v: Value = serde_json::from_str(
        &k.run(&["inspect", "--platform", "linux/arm64", "cmp:kiln"])
            .ok()
            .stdout(),
    )
    .unwrap();
    let kiln_variant = v[0]["Variant"].as_str().unwrap_or("");
    assert_eq!(
        kiln_variant,
        variant.trim(),
        "variant: kiln {kiln_variant:?}"
    );
}

/// Lines only in one tree, marked `kiln` or `buildkit`.
fn similar_lines(kiln: &str, buildkit: &str) -> Vec<String> {
    let a: std::collections::BTreeSet<&str> = kiln.lines().collect();
    let b: std::collections::BTreeSet<&str> = buildkit.lines().collect();
    let mut out: Vec<String> = a
        .difference(&b)
        .map(|l| format!("only kiln:     {l}"))
        .collect();
    out.extend(b.difference(&a).map(|l| format!("only BuildKit: {l}")));
    out.sort_by(|x, y| x[15..].cmp(&y[15..]));
    out
}

/// The arm64 Debian base (fixtures/bases/make-debian-arm64.sh) builds
/// into kiln for linux/arm64, and its dpkg and apt run under emulation.
#[test]
fn an_arm64_debian_base_runs_its_own_dpkg() {
    if !require(is_root(), "containers need root") {
        return;
    }
    let base = fixtures_cache().join("debian-bookworm-arm64");
    if !require(
        base.join("rootfs.tar").is_file(),
        "debian-bookworm-arm64 base missing: run fixtures/bases/make-debian-arm64.sh (scripts/test.sh does)",
    ) || !require(
        arm64_handler_registered(),
        "no qemu-aarch64 binfmt_misc handler with the F flag: run fixtures/binfmt/register.sh",
    ) {
        return;
    }
    let k = Kiln::new();
    k.build_dir(
        &base,
        &["--platform", "linux/arm64", "-t", "debian:bookworm-arm64"],
    )
    .ok();
    let app = tempfile::tempdir().unwrap();
    write_tree(
        app.path(),
        &[(
            "Dockerfile",
            "FROM debian:bookworm-arm64\n\
             RUN dpkg --print-architecture > /dpkg-arch && uname -m > /machine \
             && apt-config dump | grep -c . > /apt-config-lines\n",
        )],
    );
    let out = tempfile::tempdir().unwrap();
    k.export_dir(
        app.path(),
        out.path(),
        &["--platform", "linux/arm64", "--network", "none"],
    )
    .ok();
    assert_eq!(read(&out.path().join("dpkg-arch")), "arm64");
    assert_eq!(read(&out.path().join("machine")), "aarch64");
    let lines: u32 = read(&out.path().join("apt-config-lines")).parse().unwrap();
    assert!(lines > 10, "apt-config printed {lines} lines");
    let v: Value =
        serde_json::from_str(&k.run(&["inspect", "debian:bookworm-arm64"]).ok().stdout()).unwrap();
    assert_eq!(v[0]["Architecture"], "arm64");
}

/// ELF's e_machine of the file at `p`: 62 x86-64, 183 aarch64.
fn elf_machine(p: &Path) -> u16 {
    let b = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    assert_eq!(&b[..4], b"\x7fELF", "{} is not an ELF file", p.display());
    u16::from_le_bytes([b[18], b[19]])
}

/// The cross-compilation pattern: a C program compiled in a
/// `FROM --platform=$BUILDPLATFORM` stage (natively, on amd64) by the
/// compiler for `$TARGETARCH`, copied into each platform's image; a
/// stage that does not read the target platform runs once for both.
#[test]
fn a_c_program_cross_compiled_on_the_build_platform_lands_in_each_image() {
    let Some((k, dir)) = setup() else { return };
    let base = fixtures_cache().join("debian-bookworm-cross");
    if !require(
        base.join("rootfs.tar").is_file(),
        "debian-bookworm-cross base missing: run fixtures/bases/make-debian-cross.sh (scripts/test.sh does)",
    ) {
        return;
    }
    k.build_dir(&base, &["-t", "cross:bookworm"]).ok();
    let app = dir.path().join("cross-app");
    write_tree(
        &app,
        &[
            (
                "hello.c",
                "#include <stdio.h>\n\
                 int main(void) {\n\
                 #if defined(__aarch64__)\n  puts(\"hello from aarch64\");\n\
                 #elif defined(__x86_64__)\n  puts(\"hello from x86_64\");\n\
                 #else\n  puts(\"hello from elsewhere\");\n#endif\n  return 0;\n}\n",
            ),
            (
                "Dockerfile",
                "FROM --platform=$BUILDPLATFORM cross:bookworm AS src\n\
                 COPY hello.c /src/\n\
                 RUN gcc --version | head -n 1 > /src/built-with\n\
                 FROM --platform=$BUILDPLATFORM cross:bookworm AS build\n\
                 ARG TARGETARCH\n\
                 COPY --from=src /src /src\n\
                 RUN case \"$TARGETARCH\" in \
                 amd64) cc=gcc ;; arm64) cc=aarch64-linux-gnu-gcc ;; \
                 *) echo \"no compiler for $TARGETARCH\" >&2; exit 1 ;; esac; \
                 mkdir -p /out && $cc -static -O2 -o /out/hello /src/hello.c && uname -m > /out/compiled-on\n\
                 FROM scratch\n\
                 COPY --from=build /out/ /\n\
                 COPY --from=src /src/built-with /\n\
                 CMD [\"/hello\"]\n",
            ),
        ],
    );
    let out = dir.path().join("cross-out");
    let spec = format!("type=local,dest={}", out.display());
    let r = k
        .build_dir(
            &app,
            &[
                "--platform",
                BOTH,
                "--network",
                "none",
                "-t",
                "hello:cross",
                "--output",
                &spec,
            ],
        )
        .ok();
    let err = r.stderr();
    // Both compiled natively on the build platform, each for its target.
    assert_eq!(read(&out.join("linux_amd64/compiled-on")), "x86_64");
    assert_eq!(read(&out.join("linux_arm64/compiled-on")), "x86_64");
    assert_eq!(elf_machine(&out.join("linux_amd64/hello")), 62);
    assert_eq!(elf_machine(&out.join("linux_arm64/hello")), 183);
    assert!(read(&out.join("linux_arm64/built-with")).starts_with("gcc"));
    // The source stage ran once; the compiling stage once per target.
    let runs = |needle: &str| {
        step_outcomes(&err)
            .into_iter()
            .filter(|(l, o)| l.contains(needle) && o == "RAN")
            .count()
    };
    assert_eq!(runs("RUN gcc --version"), 1, "{err}");
    assert_eq!(runs("RUN case"), 2, "{err}");
    assert!(
        !err.contains("under emulation"),
        "nothing ran emulated: {err}"
    );
    // Each image runs its own program (arm64's under QEMU).
    for (p, want) in [("linux/amd64", "x86_64"), ("linux/arm64", "aarch64")] {
        let r = k
            .run(&[
                "run",
                "--rm",
                "--network",
                "none",
                "--platform",
                p,
                "hello:cross",
            ])
            .ok();
        assert_eq!(r.stdout(), format!("hello from {want}\n"), "{p}");
    }
}
