//! `kiln build --sbom/--provenance`: statements attached as BuildKit
//! attaches them (an image index with an attestation manifest), kept with
//! the image, pushed with it, and readable by buildx's `imagetools`.

mod common;

use std::process::Command;

use common::{repo_root, require, write_tree, Kiln, Registry};
use serde_json::Value;

fn setup() -> Option<Kiln> {
    common::root_with_busybox("kiln build runs containers: needs root")
}

const SECRET: &str = "s3cr3t-value-1234";
/// What `--secret id=tok` holds: never in an attestation, layer or record.
const SECRET_FILE: &str = "file-secret-5678-never-stored";

/// Builds `att:1` from a Dockerfile with a package database, a secret
/// and a secret-looking build arg, with the given attestation flags.
fn build(k: &Kiln, flags: &[&str]) -> common::Run {
    let ctx = tempfile::tempdir().unwrap();
    write_tree(
        ctx.path(),
        &[
            (
                "status",
                "Package: tool\nStatus: install ok installed\nVersion: 1.0\nArchitecture: amd64\n",
            ),
            (
                "Dockerfile",
                "FROM busybox\nARG NPM_TOKEN\nCOPY status /var/lib/dpkg/status\n\
                 RUN --mount=type=secret,id=tok test -s /run/secrets/tok\n",
            ),
        ],
    );
    let secrets = tempfile::tempdir().unwrap();
    let file = secrets.path().join("tok");
    std::fs::write(&file, SECRET_FILE).unwrap();
    let spec = format!("id=tok,src={}", file.display());
    let token = format!("NPM_TOKEN={SECRET}");
    let mut args = vec![
        "-t",
        "att:1",
        "--secret",
        spec.as_str(),
        "--build-arg",
        token.as_str(),
        "--build-arg",
        "VERSION=7",
    ];
    args.extend_from_slice(flags);
    k.build_dir(ctx.path(), &args)
}

fn attestations(k: &Kiln, name: &str) -> Vec<Value> {
    let v: Value =
        serde_json::from_str(&k.run(&["inspect", "--attestations", name]).ok().stdout()).unwrap();
    v[0]["Attestations"].as_array().unwrap().clone()
}

#[test]
fn sbom_and_max_provenance_are_attached_without_secret_values() {
    let Some(k) = setup() else { return };
    build(
        &k,
        &[
            "--sbom=true",
            "--provenance=mode=max,builder-id=https://ci.example/run/7",
        ],
    )
    .ok();
    let att = attestations(&k, "att:1");
    assert_eq!(att.len(), 2);
    let inspect: Value = serde_json::from_str(&k.run(&["inspect", "att:1"]).ok().stdout()).unwrap();
    let manifest = inspect[0]["ManifestDigest"].as_str().unwrap().to_string();
    for st in &att {
        assert_eq!(st["_type"], "https://in-toto.io/Statement/v0.1");
        assert_eq!(
            format!(
                "sha256:{}",
                st["subject"][0]["digest"]["sha256"].as_str().unwrap()
            ),
            manifest
        );
        assert!(!st.to_string().contains(SECRET), "a secret value in {st}");
    }
    let sbom = att
        .iter()
        .find(|s| s["predicateType"] == "https://spdx.dev/Document")
        .unwrap();
    assert_eq!(sbom["predicate"]["packages"][1]["name"], "tool");

    let prov = att
        .iter()
        .find(|s| s["predicateType"] == "https://slsa.dev/provenance/v1")
        .unwrap();
    let p = &prov["predicate"];
    let args = &p["buildDefinition"]["externalParameters"]["request"]["args"];
    assert_eq!(args["build-arg:VERSION"], "7");
    assert!(args["build-arg:NPM_TOKEN"]
        .as_str()
        .unwrap()
        .starts_with("<redacted"));
    assert_eq!(
        p["buildDefinition"]["externalParameters"]["request"]["secrets"][0]["id"],
        "tok"
    );
    assert_eq!(p["runDetails"]["builder"]["id"], "https://ci.example/run/7");
    let deps = p["buildDefinition"]["resolvedDependencies"]
        .as_array()
        .unwrap();
    assert_eq!(
        deps[0]["uri"],
        "pkg:docker/busybox@latest?platform=linux%2Famd64"
    );
    let busybox: Value =
        serde_json::from_str(&k.run(&["inspect", "busybox"]).ok().stdout()).unwrap();
    assert_eq!(
        format!("sha256:{}", deps[0]["digest"]["sha256"].as_str().unwrap()),
        busybox[0]["ManifestDigest"].as_str().unwrap()
    );
    let steps = p["buildDefinition"]["internalParameters"]["buildConfig"]["steps"]
        .as_array()
        .unwrap();
    assert!(
        steps
            .iter()
            .any(|s| s["step"].as_str().unwrap_or("").starts_with("RUN")),
        "{steps:?}"
    );

    // The --secret value is nowhere in the store: no blob (layers,
    // configs, statements), no record, no database page.
    for entry in walkdir::WalkDir::new(k.root.path()).into_iter().flatten() {
        if entry.file_type().is_file() {
            let bytes = std::fs::read(entry.path()).unwrap_or_default();
            assert!(
                !bytes
                    .windows(SECRET_FILE.len())
                    .any(|w| w == SECRET_FILE.as_bytes()),
                "the secret is in {}",
                entry.path().display()
            );
        }
    }

    // One line in images; the image runs; rmi removes it whole.
    let images = k.run(&["images", "--format", "json"]).ok().stdout();
    assert_eq!(images.matches("att:1").count(), 1, "{images}");
    assert_eq!(
        k.run(&[
            "run",
            "--rm",
            "--network",
            "none",
            "att:1",
            "cat",
            "/var/lib/dpkg/status"
        ])
        .ok()
        .stdout()
        .lines()
        .next(),
        Some("Package: tool")
    );
    k.run(&["rmi", "att:1"]).ok();
    assert!(k
        .run(&["inspect", "att:1"])
        .fails()
        .stderr()
        .contains("No such image"));
    k.run(&["system", "prune", "-a"]).ok();
    k.run(&["system", "fsck"]).ok();
}

#[test]
fn min_provenance_leaves_out_args_and_secrets_and_says_so() {
    let Some(k) = setup() else { return };
    build(&k, &["--attest", "type=provenance,mode=min"]).ok();
    let att = attestations(&k, "att:1");
    assert_eq!(att.len(), 1);
    let req = &att[0]["predicate"]["buildDefinition"]["externalParameters"]["request"];
    assert!(req["args"].get("build-arg:VERSION").is_none(), "{req}");
    assert!(req.get("secrets").is_none(), "{req}");
    assert_eq!(
        att[0]["predicate"]["runDetails"]["metadata"]["buildkit_completeness"]["request"],
        false
    );
    assert!(att[0]["predicate"]["buildDefinition"]["internalParameters"]
        .get("buildConfig")
        .is_none());
}

#[test]
fn without_flags_an_image_has_no_attestations_and_bad_flags_are_refused() {
    let Some(k) = setup() else { return };
    build(&k, &[]).ok();
    assert!(attestations(&k, "att:1").is_empty());
    let r = build(&k, &["--provenance=version=v0.2"]).fails();
    assert!(
        r.stderr().contains("SLSA provenance v1 only"),
        "{}",
        r.stderr()
    );
    let r = build(&k, &["--sbom=maybe"]).fails();
    assert!(
        r.stderr().contains("expected true or false"),
        "{}",
        r.stderr()
    );
}

#[test]
fn a_pushed_index_is_read_by_buildx_imagetools() {
    let Some(k) = setup() else { return };
    let Some(reg) = Registry::start(false) else {
        return;
    };
    let Some(modern) = std::env::var_os("KILN_DOCKER_MODERN") else {
        require(
            false,
            "KILN_DOCKER_MODERN is not set (scripts/test.sh starts Docker 26.1 with buildx 0.13)",
        );
        return;
    };
    build(&k, &["--sbom=true", "--provenance=true"]).ok();
    let target = format!("{}/att:1", reg.addr);
    k.run(&["tag", "att:1", &target]).ok();
    let pushed = k.run(&["push", &target]).ok();
    assert!(
        pushed.stdout().trim().starts_with("sha256:"),
        "{}",
        pushed.stdout()
    );
    let imagetools = |format: &str| -> Value {
        let out = Command::new(repo_root().join("fixtures/docker/docker26"))
            .env("KILN_DOCKER_MODERN", &modern)
            .args([
                "buildx",
                "imagetools",
                "inspect",
                "--format",
                format,
                &target,
            ])
            .output()
            .expect("run docker26");
        assert!(
            out.status.success(),
            "imagetools: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("imagetools prints JSON")
    };
    let sbom = imagetools("{{json .SBOM}}");
    assert_eq!(sbom["SPDX"]["spdxVersion"], "SPDX-2.3", "{sbom}");
    assert_eq!(sbom["SPDX"]["packages"][1]["name"], "tool");
    let prov = imagetools("{{json .Provenance}}");
    assert_eq!(
        prov["SLSA"]["buildDefinition"]["buildType"],
        "https://github.com/moby/buildkit/blob/master/docs/attestations/slsa-definitions.md",
        "{prov}"
    );
    // The statements name the manifest the registry holds (pushed as gzip,
    // so not the one in kiln's store).
    let manifest = imagetools("{{json .Manifest}}");
    let image = manifest["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["platform"]["architecture"] == "amd64")
        .unwrap()["digest"]
        .clone();
    let att = manifest["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["platform"]["architecture"] == "unknown")
        .unwrap();
    assert_eq!(att["annotations"]["vnd.docker.reference.digest"], image);
}

#[test]
fn pulling_into_an_empty_root_keeps_the_attestations() {
    let Some(k) = setup() else { return };
    let Some(reg) = Registry::start(false) else {
        return;
    };
    build(&k, &["--sbom=true", "--provenance=mode=max"]).ok();
    let target = format!("{}/att:pulled", reg.addr);
    k.run(&["tag", "att:1", &target]).ok();
    k.run(&["push", &target]).ok();

    let fresh = Kiln::new();
    fresh.run(&["pull", &target]).ok();
    let att = attestations(&fresh, &target);
    let kinds: Vec<&str> = att
        .iter()
        .map(|s| s["predicateType"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "https://spdx.dev/Document",
            "https://slsa.dev/provenance/v1"
        ]
    );
    // The statements name the manifest that was pulled.
    let inspect: Value =
        serde_json::from_str(&fresh.run(&["inspect", &target]).ok().stdout()).unwrap();
    assert_eq!(
        format!(
            "sha256:{}",
            att[0]["subject"][0]["digest"]["sha256"].as_str().unwrap()
        ),
        inspect[0]["ManifestDigest"].as_str().unwrap()
    );
    let images = fresh.run(&["images"]).ok().stdout();
    assert_eq!(
        images.lines().count(),
        2,
        "one image line under the header: {images}"
    );
    assert!(!att.iter().any(|s| s.to_string().contains(SECRET)));
}

#[test]
fn an_oci_archive_carries_the_index_and_loads_back_with_its_attestations() {
    let Some(k) = setup() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.tar");
    let spec = format!("type=oci,dest={}", out.display());
    build(&k, &["--sbom=true", "--output", &spec]).ok();
    let saved = dir.path().join("saved.tar");
    k.run(&[
        "save",
        "--format",
        "oci",
        "-o",
        saved.to_str().unwrap(),
        "att:1",
    ])
    .ok();
    for tar in [&out, &saved] {
        let index = Command::new("tar")
            .arg("-xOf")
            .arg(tar)
            .arg("index.json")
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&index.stdout).unwrap();
        assert_eq!(
            v["manifests"][0]["mediaType"], "application/vnd.oci.image.index.v1+json",
            "{v}"
        );
        assert_eq!(
            v["manifests"][0]["annotations"]["io.containerd.image.name"],
            "docker.io/library/att:1"
        );
    }
    let fresh = Kiln::new();
    let loaded = fresh.run(&["load", "-i", saved.to_str().unwrap()]).ok();
    assert!(
        loaded.stdout().contains("Loaded image: att:1"),
        "{}",
        loaded.stdout()
    );
    assert_eq!(attestations(&fresh, "att:1").len(), 1);
    fresh.run(&["system", "fsck"]).ok();
}

#[test]
fn provenance_names_add_urls_by_the_digest_of_what_was_fetched() {
    let Some(k) = setup() else { return };
    let port = common::serve("payload from the web\n");
    let ctx = tempfile::tempdir().unwrap();
    write_tree(
        ctx.path(),
        &[(
            "Dockerfile",
            &format!("FROM busybox\nADD http://127.0.0.1:{port}/f.txt /f.txt\n"),
        )],
    );
    k.build_dir(
        ctx.path(),
        &["-t", "addp:1", "--network", "host", "--provenance=true"],
    )
    .ok();
    let att = attestations(&k, "addp:1");
    let deps = att[0]["predicate"]["buildDefinition"]["resolvedDependencies"]
        .as_array()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/f.txt");
    let dep = deps
        .iter()
        .find(|d| d["uri"] == url.as_str())
        .expect("the ADD URL is a material");
    assert_eq!(
        dep["digest"]["sha256"],
        "8be666cf0bd0f97a98446b929b5383db0106f6ec8120b44fbc1c4cf7637d658a"
    );
}

#[test]
fn provenance_records_the_contexts_git_commit_without_credentials() {
    let Some(k) = setup() else { return };
    let ctx = tempfile::tempdir().unwrap();
    write_tree(
        ctx.path(),
        &[("Dockerfile", "FROM busybox\nCOPY Dockerfile /\n")],
    );
    let git = |args: &[&str]| {
        let o = Command::new("git")
            .arg("-C")
            .arg(ctx.path())
            .args(["-c", "user.name=t", "-c", "user.email=t@example.org"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    git(&["init", "-q"]);
    git(&["add", "Dockerfile"]);
    git(&["commit", "-q", "-m", "x"]);
    git(&[
        "remote",
        "add",
        "origin",
        "https://ci:t0ken@git.example/app.git",
    ]);
    let head = git(&["rev-parse", "HEAD"]);
    k.build_dir(ctx.path(), &["-t", "vcs:1", "--provenance=true"])
        .ok();
    let att = attestations(&k, "vcs:1");
    let vcs = &att[0]["predicate"]["runDetails"]["metadata"]["buildkit_metadata"]["vcs"];
    assert_eq!(vcs["revision"], head.as_str());
    assert_eq!(vcs["source"], "https://git.example/app.git");
    assert!(!att[0].to_string().contains("t0ken"));
}
