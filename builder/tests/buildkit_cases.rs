//! Fidelity to BuildKit: every case under fixtures/cases is built with kiln,
//! saved as a docker-archive and compared, file tree and config, with what
//! BuildKit itself produced for the same Dockerfile and context
//! (expected/, recorded by fixtures/cases/record-buildkit.sh). Cases that
//! must fail are checked to fail.
//!
//! `KILN_CASES=name1,name2` runs only some cases. The live tests check the
//! engines themselves against their recordings: Docker 20.10 (BuildKit 0.8)
//! against expected/, Docker 26.1 (BuildKit 0.13) against expected-0.13/.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{require, Kiln};

fn case_field(dir: &Path, field: &str) -> Vec<String> {
    let tool = common::repo_root().join("fixtures/tools/case_json.py");
    let out = Command::new("python3")
        .arg(tool)
        .arg(dir)
        .arg(field)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "case_json.py {} {field}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

fn cases() -> Vec<PathBuf> {
    let only: Option<Vec<String>> = std::env::var("KILN_CASES")
        .ok()
        .map(|s| s.split(',').map(String::from).collect());
    let mut v: Vec<PathBuf> = std::fs::read_dir(common::repo_root().join("fixtures/cases"))
        .expect("fixtures/cases")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("case.json").is_file())
        .filter(|p| match &only {
            None => true,
            Some(o) => o.iter().any(|n| p.ends_with(n)),
        })
        .collect();
    v.sort();
    v
}

/// `image_tree.py --compare`: Ok, or what differs.
fn compare(tool: &Path, archive: &Path, expected: &Path) -> Result<(), String> {
    let out = Command::new("python3")
        .arg(tool)
        .arg(archive)
        .arg("--compare")
        .arg(expected)
        .output()
        .expect("python3 runs");
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// fixtures/cases/known-0.13-gaps: case name -> why kiln still follows 0.8.
fn known_gaps() -> Vec<(String, String)> {
    let path = common::repo_root().join("fixtures/cases/known-0.13-gaps");
    std::fs::read_to_string(path)
        .expect("fixtures/cases/known-0.13-gaps")
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (n, why) = l.split_once(char::is_whitespace).unwrap_or((l, ""));
            (n.to_string(), why.trim().to_string())
        })
        .collect()
}

/// kiln follows today's BuildKit (0.13) where it was recorded; a case in
/// the known-gaps list must still match 0.8 and still differ from 0.13, so
/// the list stays true.
fn judge(
    tool: &Path,
    archive: &Path,
    dir: &Path,
    name: &str,
    gaps: &[(String, String)],
) -> Result<(), String> {
    let modern = dir.join("expected-0.13");
    if !modern.is_dir() {
        return compare(tool, archive, &dir.join("expected"))
            .map_err(|d| format!("{name}: differs from BuildKit 0.8:\n{d}"));
    }
    match gaps.iter().find(|(n, _)| n == name) {
        None => compare(tool, archive, &modern)
            .map_err(|d| format!("{name}: differs from BuildKit 0.13:\n{d}")),
        Some((_, why)) => {
            compare(tool, archive, &dir.join("expected")).map_err(|d| {
                format!("{name}: a known 0.13 gap ({why}), but now differs from 0.8 too:\n{d}")
            })?;
            match compare(tool, archive, &modern) {
                Ok(()) => Err(format!(
                    "{name}: now matches BuildKit 0.13: remove it from fixtures/cases/known-0.13-gaps"
                )),
                Err(_) => Ok(()),
            }
        }
    }
}

#[test]
fn kiln_builds_what_buildkit_builds() {
    if !require(common::is_root(), "kiln build runs containers: needs root") {
        return;
    }
    let k = Kiln::new();
    if !k.with_busybox() {
        return;
    }
    let tool = common::repo_root().join("fixtures/tools/image_tree.py");
    let gaps = known_gaps();
    let mut failures = Vec::new();
    let mut checked = 0;
    for dir in cases() {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let ctx = case_field(&dir, "context").pop().expect("context");
        // git keeps no empty directory: an empty context exists only here.
        std::fs::create_dir_all(&ctx).expect("context dir");
        let tag = format!("kiln-fixture-{name}:latest");
        let mut cmd = k.cmd();
        cmd.args(["build", "--progress=plain", "-f"])
            .arg(dir.join("Dockerfile"))
            .args(["-t", &tag]);
        for t in case_field(&dir, "target") {
            cmd.args(["--target", &t]);
        }
        for a in case_field(&dir, "build-args") {
            cmd.args(["--build-arg", &a]);
        }
        for s in case_field(&dir, "secrets") {
            cmd.args(["--secret", &s]);
        }
        cmd.arg(&ctx);
        let out = cmd.output().expect("spawn kiln");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        checked += 1;
        let must_fail = case_field(&dir, "expect-error").first().map(String::as_str) == Some("1");
        if must_fail {
            if out.status.success() {
                failures.push(format!("{name}: the build should fail but succeeded"));
            }
            continue;
        }
        if !out.status.success() {
            failures.push(format!("{name}: kiln build failed:\n{stderr}"));
            continue;
        }
        let archive = k.root.path().join(format!("{name}.tar"));
        let r = k.run(&["save", "-o", archive.to_str().unwrap(), &tag]);
        if !r.out.status.success() {
            failures.push(format!("{name}: kiln save failed: {}", r.stderr()));
            continue;
        }
        if let Err(f) = judge(&tool, &archive, &dir, &name, &gaps) {
            failures.push(f);
        }
        let _ = std::fs::remove_file(&archive);
    }
    assert!(checked > 0, "no fixture cases found");
    assert!(
        failures.is_empty(),
        "{} of {checked} cases differ:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// The other half of the differential test: BuildKit itself, live, still
/// builds what expected/ says (so kiln and BuildKit agree with each other,
/// not only with a recording). Needs a Docker engine: scripts/test.sh starts
/// one (fixtures/docker/start-dockerd.sh) and sets KILN_DOCKER=1; elsewhere
/// the test says why it skipped.
#[test]
fn buildkit_live_matches_the_recorded_truth() {
    let docker = Path::new("/usr/bin/docker");
    let engine_up = docker.is_file()
        && Command::new(docker)
            .arg("info")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
    if std::env::var_os("KILN_DOCKER").is_some() {
        assert!(
            engine_up,
            "KILN_DOCKER is set but no Docker engine answers (fixtures/docker/start-dockerd.sh)"
        );
    } else if !common::require(
        engine_up,
        "no Docker engine (start one with fixtures/docker/start-dockerd.sh, or set KILN_DOCKER=1 to require it)",
    ) {
        return;
    }
    let text = check_engine_against_recording(docker, &[]);
    assert!(text.contains(" passed, 0 failed"), "{text}");
}

/// fixtures/cases/check-kiln.sh with `cli` as the engine, building what the
/// recording engine built (RECORD_DOCKERFILE=1); panics with its output when
/// a case differs, returns the output otherwise.
fn check_engine_against_recording(cli: &Path, engine_args: &[&str]) -> String {
    let script = common::repo_root().join("fixtures/cases/check-kiln.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(&script)
        .args(engine_args)
        .env("KILN", cli)
        .env("DOCKER_BUILDKIT", "1")
        .env("RECORD_DOCKERFILE", "1")
        .env("KILN_BUILD_FLAGS", "--network=host");
    if let Ok(only) = std::env::var("KILN_CASES") {
        cmd.args(only.split(','));
    }
    let out = cmd.output().expect("bash runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "BuildKit disagrees with its recording ({engine_args:?}):\n{text}"
    );
    text
}

/// The same live check against today's BuildKit: the modern engine (Docker
/// 26.1, BuildKit 0.13; fixtures/docker/start-dockerd-modern.sh) still
/// builds what expected-0.13/ says. Runs when KILN_DOCKER_MODERN names its
/// socket (scripts/test.sh exports it), and then requires the engine.
#[test]
fn buildkit_013_live_matches_its_recorded_truth() {
    let Some(host) = std::env::var_os("KILN_DOCKER_MODERN") else {
        common::require(
            false,
            "KILN_DOCKER_MODERN is not set (scripts/test.sh starts the modern engine with fixtures/docker/start-dockerd-modern.sh and sets it)",
        );
        return;
    };
    let cli = common::repo_root().join("fixtures/docker/docker26");
    let up = Command::new(&cli)
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        up,
        "KILN_DOCKER_MODERN={host:?} but no modern engine answers there (fixtures/docker/start-dockerd-modern.sh)"
    );
    let text = check_engine_against_recording(&cli, &["--engine", "0.13"]);
    assert!(
        text.contains(" passed, 0 failed, 0 skipped (against expected-0.13/)"),
        "{text}"
    );
}
