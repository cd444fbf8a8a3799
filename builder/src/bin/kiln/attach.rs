//! `kiln build --sbom/--provenance/--attest`: the attestations a build
//! attaches to its image, the way BuildKit attaches them (an image index
//! holding the image and an attestation manifest about it).

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Result};
use kiln_attest::intoto::{Statement as InToto, PREDICATE_SPDX};
use kiln_attest::provenance::{self, BuildFacts, Dependency, Mode, PREDICATE_SLSA_V1};
use kiln_store::{ImageRecord, IndexRecord, Statement, Store};

/// What the user asked to attach.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AttestRequest {
    pub sbom: bool,
    pub provenance: Option<Mode>,
}

impl AttestRequest {
    pub fn any(&self) -> bool {
        self.sbom || self.provenance.is_some()
    }

    /// From `--sbom=`, `--provenance=` and `--attest` values, with buildx's
    /// syntax: `--sbom=true`, `--provenance=mode=max`, `--attest
    /// type=provenance,mode=min`.
    pub fn parse(
        sbom: Option<&str>,
        prov: Option<&str>,
        attest: &[String],
    ) -> Result<AttestRequest> {
        let mut r = AttestRequest::default();
        if let Some(v) = sbom {
            r.sbom = parse_sbom(v)?;
        }
        if let Some(v) = prov {
            r.provenance = parse_provenance(v)?;
        }
        for a in attest {
            let mut kind = None;
            let mut rest = Vec::new();
            for kv in a.split(',') {
                match kv.split_once('=') {
                    Some(("type", t)) => kind = Some(t),
                    _ => rest.push(kv),
                }
            }
            let rest = rest.join(",");
            match kind {
                Some("sbom") => r.sbom = rest.is_empty() || parse_sbom(&rest)?,
                Some("provenance") => {
                    r.provenance = if rest.is_empty() {
                        Some(Mode::Min)
                    } else {
                        parse_provenance(&rest)?
                    }
                }
                Some(t) => bail!(
                    "--attest {a}: unknown attestation type {t:?} (kiln knows sbom and provenance)"
                ),
                None => bail!("--attest {a}: needs type=sbom or type=provenance"),
            }
        }
        Ok(r)
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

fn parse_sbom(v: &str) -> Result<bool> {
    if let Some(b) = parse_bool(v) {
        return Ok(b);
    }
    match v.split(',').find_map(|kv| kv.strip_prefix("generator=")) {
        Some(g) => bail!(
            "--sbom generator={g}: not built: kiln's SBOM comes from its own reader of the image's package databases, no scanner image is run"
        ),
        None => bail!("--sbom {v:?}: expected true or false"),
    }
}

fn parse_provenance(v: &str) -> Result<Option<Mode>> {
    if let Some(b) = parse_bool(v) {
        return Ok(b.then_some(Mode::Min));
    }
    let mut mode = Mode::Min;
    for kv in v.split(',') {
        match kv.split_once('=') {
            Some(("mode", "min")) => mode = Mode::Min,
            Some(("mode", "max")) => mode = Mode::Max,
            Some(("version", "v1")) => {}
            Some(("version", other)) => bail!(
                "--provenance version={other}: not built: kiln writes SLSA provenance v1 only (version=v1)"
            ),
            Some(("builder-id", _)) => {}
            _ => bail!("--provenance {v:?}: expected true, false, mode=min|max[,version=v1][,builder-id=URL]"),
        }
    }
    Ok(Some(mode))
}

/// The `builder-id=` given to `--provenance`, if any.
pub fn builder_id(prov: Option<&str>) -> String {
    prov.into_iter()
        .flat_map(|v| v.split(','))
        .find_map(|kv| kv.strip_prefix("builder-id="))
        .unwrap_or_default()
        .to_string()
}

/// What the build knows for its provenance.
pub struct ProvenanceInput {
    pub builder_id: String,
    pub dockerfile_path: String,
    pub build_args: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub target: Option<String>,
    pub secrets: Vec<String>,
    pub ssh: Vec<String>,
    /// Base images: (name as written, manifest digest, platform).
    pub bases: Vec<(String, kiln_store::Digest, String)>,
    /// ADD's URLs (sha256 of the content) and git repositories (the commit).
    pub materials: Vec<Dependency>,
    /// The context's git remote and commit, when it is a git work tree.
    pub vcs: Option<(String, String)>,
    pub steps: Vec<serde_json::Value>,
    pub started_on: String,
    pub finished_on: String,
    pub invocation_id: String,
}

/// Writes the requested statements about `image` and an index holding both.
pub fn attach(
    store: &Store,
    image: &ImageRecord,
    name: &str,
    req: &AttestRequest,
    prov: &ProvenanceInput,
) -> Result<IndexRecord> {
    let subject = crate::cmd_attest::image_subject(name, image);
    let mut statements = Vec::new();
    if req.sbom {
        // The same image (a cached rebuild) has the same SBOM: reuse it
        // when a statement for this subject is in the store already.
        let subject_json = serde_json::to_value(vec![subject.clone()])?;
        let earlier = store
            .latest_attestation_about(&image.manifest_digest, PREDICATE_SPDX)?
            .filter(|s| {
                serde_json::from_slice::<serde_json::Value>(&s.bytes)
                    .is_ok_and(|v| v["subject"] == subject_json)
            });
        match earlier {
            Some(s) => statements.push(s),
            None => {
                let (doc, _) = crate::cmd_attest::sbom_document(store, image, name)?;
                let st = InToto::new(PREDICATE_SPDX, vec![subject.clone()], doc);
                statements.push(Statement {
                    predicate_type: PREDICATE_SPDX.into(),
                    bytes: serde_json::to_vec(&st)?,
                });
            }
        }
    }
    if let Some(mode) = req.provenance {
        let pred = provenance::predicate(&facts(mode, prov));
        let st = InToto::new(PREDICATE_SLSA_V1, vec![subject], pred);
        statements.push(Statement {
            predicate_type: PREDICATE_SLSA_V1.into(),
            bytes: serde_json::to_vec(&st)?,
        });
    }
    let att = store.write_attestation(&image.manifest_digest, &statements)?;
    store
        .write_index(&[image], &[att])
        .map_err(|e| anyhow!("recording the image index: {e}"))
}

fn facts(mode: Mode, p: &ProvenanceInput) -> BuildFacts {
    let mut args = BTreeMap::new();
    for (k, v) in &p.build_args {
        args.insert(format!("build-arg:{k}"), v.clone());
    }
    for (k, v) in &p.labels {
        args.insert(format!("label:{k}"), v.clone());
    }
    if let Some(t) = &p.target {
        args.insert("target".into(), t.clone());
    }
    args.insert("filename".into(), p.dockerfile_path.clone());
    BuildFacts {
        mode,
        builder_id: p.builder_id.clone(),
        builder_platform: format!("linux/{}", kiln_runner::platform::host_arch()),
        dockerfile_path: p.dockerfile_path.clone(),
        context_uri: None,
        args,
        secrets: p.secrets.iter().map(|s| (s.clone(), false)).collect(),
        ssh: p.ssh.clone(),
        locals: vec!["context".into(), "dockerfile".into()],
        dependencies: p
            .bases
            .iter()
            .map(|(name, digest, platform)| Dependency {
                uri: base_purl(name, platform),
                digest: [("sha256".to_string(), digest.hex().to_string())].into(),
            })
            .chain(p.materials.iter().cloned())
            .collect(),
        invocation_id: p.invocation_id.clone(),
        started_on: p.started_on.clone(),
        finished_on: p.finished_on.clone(),
        steps: p.steps.clone(),
        dependencies_complete: true,
        vcs: p.vcs.clone(),
    }
}

/// The context's git state as buildx records it: the `origin` remote's
/// URL (or the work tree's path) and the commit HEAD names; None outside a
/// work tree. Credentials in the URL are dropped.
fn context_vcs(dir: &std::path::Path) -> Option<(String, String)> {
    let git = |args: &[&str]| -> Option<String> {
        let o = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .output()
            .ok()?;
        let s = String::from_utf8_lossy(&o.stdout).trim().to_string();
        (o.status.success() && !s.is_empty()).then_some(s)
    };
    let revision = git(&["rev-parse", "HEAD"])?;
    let source = git(&["remote", "get-url", "origin"])
        .map(|u| strip_credentials(&u))
        .or_else(|| git(&["rev-parse", "--show-toplevel"]))?;
    Some((source, revision))
}

/// `https://user:token@host/repo` -> `https://host/repo`.
fn strip_credentials(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((creds, host)) if !creds.contains('/') => format!("{scheme}://{host}"),
            _ => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// The remote sources an ADD step's cache inputs name: `URL -> dest` with
/// the content's `sha256:...`, and `git URL -> dest` with its commit.
fn remote_sources(inputs: &serde_json::Value, out: &mut Vec<Dependency>) {
    let Some(map) = inputs.as_object() else {
        return;
    };
    for (k, v) in map {
        let Some((src, _)) = k.split_once(" -> ") else {
            remote_sources(v, out);
            continue;
        };
        let dep = if let Some(url) = src.strip_prefix("git ") {
            v["commit"].as_str().map(|c| Dependency {
                uri: format!("{url}#{c}"),
                digest: [("sha1".to_string(), c.to_string())].into(),
            })
        } else if src.starts_with("http://") || src.starts_with("https://") {
            v.as_str()
                .and_then(|d| d.strip_prefix("sha256:"))
                .map(|h| Dependency {
                    uri: src.to_string(),
                    digest: [("sha256".to_string(), h.to_string())].into(),
                })
        } else {
            None
        };
        if let Some(d) = dep.filter(|d| !out.contains(d)) {
            out.push(d);
        }
    }
}

/// `pkg:docker/busybox@latest?platform=linux%2Famd64`, as BuildKit names a base.
fn base_purl(name: &str, platform: &str) -> String {
    let (repo, tag) = match kiln_store::reference::parse(name) {
        Ok(r) => (r.repository(), r.tag().unwrap_or("latest").to_string()),
        Err(_) => (name.to_string(), "latest".to_string()),
    };
    format!(
        "pkg:docker/{repo}@{tag}?platform={}",
        platform.replace('/', "%2F")
    )
}

/// What the build knew, for `--provenance`: arguments as given (secret
/// values never), base images by digest, and the steps with their cache
/// keys (not their inputs, which can hold build-arg values).
pub fn provenance_input(
    b: &kiln_builder::engine::Builder,
    args: &crate::cli::BuildArgs,
    started_on: String,
) -> ProvenanceInput {
    let steps = b
        .trace
        .lock()
        .expect("trace")
        .iter()
        .map(|t| {
            serde_json::json!({
                "stage": t.stage,
                "step": t.description,
                "source": t.source,
                "key": t.key,
                "parent": t.parent,
                "cached": t.hit,
            })
        })
        .collect();
    let mut materials = Vec::new();
    for t in b.trace.lock().expect("trace").iter() {
        remote_sources(&t.inputs, &mut materials);
    }
    let mut secrets: Vec<String> = b.opts.secrets.keys().cloned().collect();
    secrets.sort();
    let mut ssh: Vec<String> = b.opts.ssh.keys().cloned().collect();
    ssh.sort();
    let invocation_id =
        kiln_store::sha256_digest(format!("{started_on} {}", std::process::id()).as_bytes());
    ProvenanceInput {
        builder_id: builder_id(args.provenance.as_deref()),
        dockerfile_path: b.opts.dockerfile_name.clone(),
        build_args: b.opts.build_args.clone(),
        labels: b.opts.labels.clone(),
        target: args.target.clone(),
        secrets,
        ssh,
        bases: b.bases.lock().expect("bases").clone(),
        materials,
        vcs: (args.context != "-")
            .then(|| context_vcs(std::path::Path::new(&args.context)))
            .flatten(),
        steps,
        started_on,
        finished_on: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        invocation_id: invocation_id.hex()[..25].to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buildx_flag_forms() {
        let p = |s: Option<&str>, pv: Option<&str>, a: &[&str]| {
            AttestRequest::parse(s, pv, &a.iter().map(|x| x.to_string()).collect::<Vec<_>>())
        };
        assert_eq!(
            p(Some("true"), None, &[]).unwrap(),
            AttestRequest {
                sbom: true,
                provenance: None
            }
        );
        assert_eq!(
            p(None, Some("mode=max"), &[]).unwrap().provenance,
            Some(Mode::Max)
        );
        assert_eq!(p(None, Some("false"), &[]).unwrap().provenance, None);
        let r = p(None, None, &["type=sbom", "type=provenance,mode=max"]).unwrap();
        assert!(r.sbom && r.provenance == Some(Mode::Max));
        assert!(!p(None, None, &[]).unwrap().any());
        for (s, pv, a, want) in [
            (Some("yes"), None, vec![], "expected true or false"),
            (
                Some("generator=docker/scout-sbom-indexer"),
                None,
                vec![],
                "not built",
            ),
            (None, Some("version=v0.2"), vec![], "v1 only"),
            (None, Some("mode=full"), vec![], "mode=min|max"),
            (None, None, vec!["type=vex"], "unknown attestation type"),
            (None, None, vec!["mode=max"], "needs type="),
        ] {
            let e = p(s, pv, &a).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
        assert_eq!(
            builder_id(Some("mode=max,builder-id=https://ci/run/1")),
            "https://ci/run/1"
        );
    }

    #[test]
    fn add_urls_and_git_commits_are_materials_with_their_digests() {
        let inputs = serde_json::json!({
            "https://example.org/a.tgz -> /a.tgz": "sha256:ab12",
            "git https://example.org/r.git -> /src": {"commit": "c0ffee", "subdir": null},
            "app.py -> /app/app.py": {"hash": "x"},
            "link": false,
        });
        let mut out = Vec::new();
        remote_sources(&inputs, &mut out);
        remote_sources(&inputs, &mut out);
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(out
            .iter()
            .any(|d| d.uri == "https://example.org/a.tgz" && d.digest["sha256"] == "ab12"));
        assert!(out
            .iter()
            .any(|d| d.uri == "https://example.org/r.git#c0ffee" && d.digest["sha1"] == "c0ffee"));
    }

    #[test]
    fn credentials_never_reach_the_provenance() {
        assert_eq!(
            strip_credentials("https://ci:tok3n@git.example/app.git"),
            "https://git.example/app.git"
        );
        assert_eq!(
            strip_credentials("git@git.example:app.git"),
            "git@git.example:app.git"
        );
        assert_eq!(
            strip_credentials("https://git.example/a@b"),
            "https://git.example/a@b"
        );
    }

    #[test]
    fn bases_are_named_as_buildkit_names_them() {
        assert_eq!(
            base_purl("busybox", "linux/amd64"),
            "pkg:docker/busybox@latest?platform=linux%2Famd64"
        );
        assert_eq!(
            base_purl("localhost:5000/py:3.11", "linux/arm64/v8"),
            "pkg:docker/localhost:5000/py@3.11?platform=linux%2Farm64%2Fv8"
        );
    }
}
