//! SLSA provenance v1 predicates, laid out as BuildKit lays them out
//! (`buildType` = BuildKit's slsa-definitions document, `externalParameters`
//! with `configSource` and `request`, `resolvedDependencies` as purls and
//! URLs with digests, `runDetails.metadata` with BuildKit's completeness
//! flags), so tools that read BuildKit's provenance read kiln's.
//!
//! Modes follow BuildKit's rule: `min` drops build args, labels, secrets
//! and ssh ids from the request (and says the request is incomplete);
//! `max` keeps them and adds the build steps. kiln goes one step further in
//! `max`: a build arg whose *name* says it is a secret (the names BuildKit's
//! `SecretsUsedInArgOrEnv` check warns about: `..._TOKEN`, `PASSWORD`, ...)
//! is recorded with its value redacted, because provenance is pushed next
//! to the image for anyone who can pull it. Secret values never appear.

use std::collections::BTreeMap;

use serde::Serialize;

/// in-toto predicate type of SLSA provenance v1.
pub const PREDICATE_SLSA_V1: &str = "https://slsa.dev/provenance/v1";
/// What BuildKit puts in `buildType`; the structure below follows it.
pub const BUILD_TYPE: &str =
    "https://github.com/moby/buildkit/blob/master/docs/attestations/slsa-definitions.md";
/// What a redacted build arg's value becomes.
pub const REDACTED: &str = "<redacted: the name marks it as a secret; pass secrets with --secret>";

/// How much the provenance says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Min,
    Max,
}

/// An artifact the build consumed: a base image (`pkg:docker/...`), an
/// `ADD` URL, a git commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dependency {
    pub uri: String,
    pub digest: BTreeMap<String, String>,
}

/// Everything the provenance is made from; the builder fills it in.
#[derive(Debug, Clone)]
pub struct BuildFacts {
    pub mode: Mode,
    /// `runDetails.builder.id` (a CI run URL when the user gives one).
    pub builder_id: String,
    /// The build machine's platform (`linux/amd64`).
    pub builder_platform: String,
    /// The Dockerfile's path (`filename`), as given.
    pub dockerfile_path: String,
    /// A remote context's URL and digest (git: `sha1` of the commit).
    pub context_uri: Option<Dependency>,
    /// Frontend options as BuildKit names them: `build-arg:K`, `label:K`,
    /// `target`, `filename`, `platform`.
    pub args: BTreeMap<String, String>,
    /// Secret ids used (never values), and whether each was optional.
    pub secrets: Vec<(String, bool)>,
    pub ssh: Vec<String>,
    /// Local sources (`context`, `dockerfile`).
    pub locals: Vec<String>,
    pub dependencies: Vec<Dependency>,
    pub invocation_id: String,
    pub started_on: String,
    pub finished_on: String,
    /// The build's steps with their cache inputs (max mode only).
    pub steps: Vec<serde_json::Value>,
    /// Whether every dependency was recorded with a digest.
    pub dependencies_complete: bool,
    /// The local context's version control state, as buildx records it:
    /// (`source`: the remote's URL, `revision`: the commit).
    pub vcs: Option<(String, String)>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Predicate {
    build_definition: BuildDefinition,
    run_details: RunDetails,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BuildDefinition {
    build_type: &'static str,
    external_parameters: ExternalParameters,
    internal_parameters: InternalParameters,
    resolved_dependencies: Vec<Dependency>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ExternalParameters {
    config_source: ConfigSource,
    request: Request,
}

#[derive(Serialize)]
struct ConfigSource {
    #[serde(skip_serializing_if = "Option::is_none")]
    uri: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    digest: BTreeMap<String, String>,
    path: String,
}

#[derive(Serialize)]
struct Request {
    frontend: &'static str,
    args: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    secrets: Vec<SecretRef>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ssh: Vec<SshRef>,
    locals: Vec<Local>,
}

#[derive(Serialize)]
struct SecretRef {
    id: String,
    optional: bool,
}

#[derive(Serialize)]
struct SshRef {
    id: String,
}

#[derive(Serialize)]
struct Local {
    name: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct InternalParameters {
    #[serde(skip_serializing_if = "Option::is_none")]
    build_config: Option<BuildConfig>,
    builder_platform: String,
}

#[derive(Serialize)]
struct BuildConfig {
    steps: Vec<serde_json::Value>,
}

#[derive(Serialize)]
struct RunDetails {
    builder: Builder,
    metadata: Metadata,
}

#[derive(Serialize)]
struct Builder {
    id: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Metadata {
    #[serde(rename = "invocationID")]
    invocation_id: String,
    started_on: String,
    finished_on: String,
    #[serde(rename = "buildkit_completeness")]
    buildkit_completeness: Completeness,
    #[serde(rename = "buildkit_hermetic")]
    buildkit_hermetic: bool,
    #[serde(rename = "buildkit_metadata", skip_serializing_if = "Option::is_none")]
    buildkit_metadata: Option<serde_json::Value>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Completeness {
    request: bool,
    resolved_dependencies: bool,
}

/// Whether a build arg's name says it holds a secret: a word of the name
/// (split on `_`) is one of BuildKit's secret words.
pub fn looks_secret(name: &str) -> bool {
    const WORDS: &[&str] = &[
        "apikey",
        "auth",
        "credential",
        "credentials",
        "key",
        "password",
        "pat",
        "secret",
        "token",
    ];
    name.to_ascii_lowercase()
        .split(['_', '-'])
        .any(|w| WORDS.contains(&w))
}

/// The v1 predicate for `facts`.
pub fn predicate(facts: &BuildFacts) -> Predicate {
    let max = facts.mode == Mode::Max;
    let mut request_complete = true;
    let mut args = BTreeMap::new();
    for (k, v) in &facts.args {
        let user_given = k.starts_with("build-arg:") || k.starts_with("label:");
        if user_given && !max {
            request_complete = false;
            continue;
        }
        let arg_name = k.strip_prefix("build-arg:");
        let v = match arg_name {
            Some(n) if looks_secret(n) => REDACTED.to_string(),
            _ => v.clone(),
        };
        args.insert(k.clone(), v);
    }
    if !max && (!facts.secrets.is_empty() || !facts.ssh.is_empty()) {
        request_complete = false;
    }
    let (uri, digest) = match &facts.context_uri {
        Some(d) => (Some(d.uri.clone()), d.digest.clone()),
        None => (None, BTreeMap::new()),
    };
    let request = Request {
        frontend: "dockerfile.v0",
        args,
        secrets: if max {
            secret_refs(&facts.secrets)
        } else {
            Vec::new()
        },
        ssh: if max {
            facts
                .ssh
                .iter()
                .map(|id| SshRef { id: id.clone() })
                .collect()
        } else {
            Vec::new()
        },
        locals: facts
            .locals
            .iter()
            .map(|n| Local { name: n.clone() })
            .collect(),
    };
    Predicate {
        build_definition: BuildDefinition {
            build_type: BUILD_TYPE,
            external_parameters: ExternalParameters {
                config_source: ConfigSource {
                    uri,
                    digest,
                    path: facts.dockerfile_path.clone(),
                },
                request,
            },
            internal_parameters: InternalParameters {
                build_config: max.then(|| BuildConfig {
                    steps: facts.steps.clone(),
                }),
                builder_platform: facts.builder_platform.clone(),
            },
            resolved_dependencies: facts.dependencies.clone(),
        },
        run_details: RunDetails {
            builder: Builder {
                id: facts.builder_id.clone(),
            },
            metadata: Metadata {
                invocation_id: facts.invocation_id.clone(),
                started_on: facts.started_on.clone(),
                finished_on: facts.finished_on.clone(),
                buildkit_completeness: Completeness {
                    request: request_complete,
                    resolved_dependencies: facts.dependencies_complete,
                },
                buildkit_hermetic: false,
                buildkit_metadata: facts.vcs.as_ref().map(|(source, revision)| {
                    serde_json::json!({"vcs": {"source": source, "revision": revision}})
                }),
            },
        },
    }
}

fn secret_refs(s: &[(String, bool)]) -> Vec<SecretRef> {
    s.iter()
        .map(|(id, optional)| SecretRef {
            id: id.clone(),
            optional: *optional,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(mode: Mode) -> BuildFacts {
        BuildFacts {
            mode,
            builder_id: String::new(),
            builder_platform: "linux/amd64".into(),
            dockerfile_path: "Dockerfile".into(),
            context_uri: None,
            args: [
                ("build-arg:VERSION".to_string(), "1.2".to_string()),
                ("build-arg:NPM_TOKEN".to_string(), "s3cr3t".to_string()),
                ("label:team".to_string(), "web".to_string()),
                ("target".to_string(), "app".to_string()),
            ]
            .into(),
            secrets: vec![("pip".into(), false)],
            ssh: vec!["default".into()],
            locals: vec!["context".into(), "dockerfile".into()],
            dependencies: vec![Dependency {
                uri: "pkg:docker/busybox@latest?platform=linux%2Famd64".into(),
                digest: [("sha256".to_string(), "ab".to_string())].into(),
            }],
            invocation_id: "inv".into(),
            started_on: "2024-01-01T00:00:00Z".into(),
            finished_on: "2024-01-01T00:00:01Z".into(),
            steps: vec![serde_json::json!({"step": "RUN true"})],
            dependencies_complete: true,
            vcs: Some(("https://example.org/app.git".into(), "c0ffee".into())),
        }
    }

    #[test]
    fn min_drops_user_args_secrets_and_steps_and_says_the_request_is_incomplete() {
        let v = serde_json::to_value(predicate(&facts(Mode::Min))).unwrap();
        let req = &v["buildDefinition"]["externalParameters"]["request"];
        assert_eq!(req["args"], serde_json::json!({"target": "app"}));
        assert!(req.get("secrets").is_none() && req.get("ssh").is_none());
        assert!(v["buildDefinition"]["internalParameters"]
            .get("buildConfig")
            .is_none());
        assert_eq!(
            v["runDetails"]["metadata"]["buildkit_completeness"]["request"],
            false
        );
        assert_eq!(v["buildDefinition"]["buildType"], BUILD_TYPE);
        assert_eq!(
            v["buildDefinition"]["resolvedDependencies"][0]["digest"]["sha256"],
            "ab"
        );
        assert!(!v.to_string().contains("s3cr3t"));
    }

    #[test]
    fn max_keeps_args_but_redacts_secret_looking_ones_and_adds_steps() {
        let v = serde_json::to_value(predicate(&facts(Mode::Max))).unwrap();
        let req = &v["buildDefinition"]["externalParameters"]["request"];
        assert_eq!(req["args"]["build-arg:VERSION"], "1.2");
        assert_eq!(req["args"]["build-arg:NPM_TOKEN"], REDACTED);
        assert_eq!(req["args"]["label:team"], "web");
        assert_eq!(req["secrets"][0]["id"], "pip");
        assert_eq!(req["ssh"][0]["id"], "default");
        assert_eq!(
            v["buildDefinition"]["internalParameters"]["buildConfig"]["steps"][0]["step"],
            "RUN true"
        );
        assert_eq!(
            v["runDetails"]["metadata"]["buildkit_completeness"]["request"],
            true
        );
        assert!(!v.to_string().contains("s3cr3t"));
    }

    #[test]
    fn secret_looking_names() {
        for n in [
            "NPM_TOKEN",
            "password",
            "AWS_SECRET_ACCESS_KEY",
            "GITHUB_PAT",
            "auth",
        ] {
            assert!(looks_secret(n), "{n}");
        }
        for n in [
            "VERSION",
            "KEYBOARD",
            "TOKENIZER_MODEL",
            "PATH",
            "BUILDKIT_INLINE_CACHE",
        ] {
            assert!(!looks_secret(n), "{n}");
        }
    }
}
