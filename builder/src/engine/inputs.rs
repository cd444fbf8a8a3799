//! What each op's cache key is made of, as types (BuildKit's `CacheMap`).
//!
//! Every step's inputs are one of these; the key hashes their canonical
//! JSON (`key::step_key`), cache records keep that JSON, and `--explain` /
//! `kiln cache why` compare it field by field. The JSON must stay exactly
//! what kiln hashed before these types existed, or every existing cache
//! record would miss: the tests below pin each shape and one key.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value};

/// The inputs of one step, whatever its kind.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum StepInputs {
    /// `FROM image`: the name and the image ID it resolved to.
    Source(SourceInputs),
    /// RUN.
    Exec(ExecInputs),
    /// COPY and ADD.
    File(FileInputs),
    /// A WORKDIR that creates its directory.
    Mkdir(MkdirInputs),
    /// A metadata instruction: only what it changed.
    Meta(MetaChange),
}

impl StepInputs {
    /// The JSON a key hashes and a cache record keeps.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).expect("step inputs always serialise")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SourceInputs {
    pub image: String,
    /// The image ID (its config digest).
    pub id: String,
}

/// Another stage's or image's filesystem a step reads (`--from=`,
/// `from=`): the name given and the layers it stood for.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FromRef {
    pub from: String,
    /// diff IDs, base first.
    pub layers: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExecInputs {
    pub argv: Vec<String>,
    /// ENV and the ARGs in scope; proxy args and secrets are never keyed.
    pub env: Vec<String>,
    pub user: Option<String>,
    pub workdir: String,
    /// `default`, `host` or `none` (BuildKit keys the mode too).
    pub network: String,
    pub mounts: Vec<MountInput>,
}

/// One `RUN --mount` (or the heredoc script file) as the key sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum MountInput {
    Bind {
        target: String,
        source: BindSource,
        rw: bool,
    },
    /// What a cache mount was first filled from (`from=`, `source=`).
    CacheSeed {
        target: String,
        from: FromRef,
        source: String,
    },
    Cache {
        target: String,
        id: String,
        ro: bool,
        /// `mkdir UID:GID MODE` when uid/gid/mode are given: the base
        /// BuildKit starts such a cache from, so another cache.
        #[serde(skip_serializing_if = "Option::is_none")]
        base: Option<String>,
    },
    Tmpfs {
        target: String,
        size: Option<u64>,
    },
    /// Which secret and where it goes, never its value.
    Secret {
        id: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        env: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        target: Option<String>,
    },
    /// Which agent, not what it holds.
    Ssh {
        id: String,
        target: String,
    },
    Heredoc {
        target: String,
        content: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum BindSource {
    /// A path of the build context and the digest of its listing.
    Context { context: String, content: String },
    /// A path of another stage or image.
    From { from: FromRef, source: String },
}

/// COPY/ADD: what `copy::plan_copy` described (source, files, dest,
/// chown, chmod, ...), and `--link`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FileInputs {
    #[serde(flatten)]
    pub plan: Map<String, Value>,
    pub link: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MkdirInputs {
    pub mkdir: String,
    /// `uid:gid` when a USER is set.
    pub owner: Option<String>,
}

/// What a metadata instruction changed: `{"<field>": value}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MetaChange {
    Env(Vec<String>),
    /// The ARGs this line declares (earlier ones are in the key chain).
    Args(BTreeMap<String, Option<String>>),
    Labels(BTreeMap<String, String>),
    Maintainer(String),
    User(String),
    Ports(Vec<String>),
    Volumes(Vec<String>),
    Stopsignal(String),
    Shell(Vec<String>),
    Cmd(Vec<String>),
    Entrypoint(Vec<String>),
    /// Docker's healthcheck object as stored in the config.
    Healthcheck(Value),
    Onbuild(String),
    Workdir(String),
}

#[cfg(test)]
mod tests {
    use super::super::key::step_key;
    use super::*;
    use serde_json::json;

    fn s(v: &str) -> String {
        v.to_string()
    }

    fn exec() -> ExecInputs {
        ExecInputs {
            argv: vec![s("/bin/sh"), s("-c"), s("pip install -r requirements.txt")],
            env: vec![s("PATH=/usr/local/bin:/usr/bin:/bin"), s("LANG=C.UTF-8")],
            user: None,
            workdir: s("/app"),
            network: s("default"),
            mounts: vec![
                MountInput::Cache {
                    target: s("/root/.cache/pip"),
                    id: s("/root/.cache/pip"),
                    ro: false,
                    base: None,
                },
                MountInput::Bind {
                    target: s("/src"),
                    source: BindSource::Context {
                        context: s("src"),
                        content: s("abc"),
                    },
                    rw: false,
                },
                MountInput::Bind {
                    target: s("/b"),
                    source: BindSource::From {
                        from: FromRef {
                            from: s("build"),
                            layers: vec![s("sha256:01")],
                        },
                        source: s("/out"),
                    },
                    rw: true,
                },
                MountInput::CacheSeed {
                    target: s("/c"),
                    from: FromRef {
                        from: s("base"),
                        layers: vec![],
                    },
                    source: s("/"),
                },
                MountInput::Tmpfs {
                    target: s("/tmp"),
                    size: None,
                },
                MountInput::Secret {
                    id: s("tok"),
                    env: Some(s("TOKEN")),
                    target: None,
                },
                MountInput::Secret {
                    id: s("tok"),
                    env: None,
                    target: Some(s("/run/secrets/tok")),
                },
                MountInput::Ssh {
                    id: s("default"),
                    target: s("/run/buildkit/ssh_agent.0"),
                },
                MountInput::Heredoc {
                    target: s("/dev/pipes/EOF"),
                    content: s("#!/bin/sh\n"),
                },
            ],
        }
    }

    /// The JSON kiln hashed for this RUN before the inputs were typed,
    /// written the way the old code wrote it.
    fn exec_as_before() -> Value {
        json!({
            "argv": ["/bin/sh", "-c", "pip install -r requirements.txt"],
            "env": ["PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8"],
            "user": null,
            "workdir": "/app",
            "network": "default",
            "mounts": [
                {"type": "cache", "target": "/root/.cache/pip", "id": "/root/.cache/pip", "ro": false},
                {"type": "bind", "target": "/src", "source": {"context": "src", "content": "abc"}, "rw": false},
                {"type": "bind", "target": "/b", "source": {"from": {"from": "build", "layers": ["sha256:01"]}, "source": "/out"}, "rw": true},
                {"type": "cache-seed", "target": "/c", "from": {"from": "base", "layers": []}, "source": "/"},
                {"type": "tmpfs", "target": "/tmp", "size": null},
                {"type": "secret", "id": "tok", "env": "TOKEN"},
                {"type": "secret", "id": "tok", "target": "/run/secrets/tok"},
                {"type": "ssh", "id": "default", "target": "/run/buildkit/ssh_agent.0"},
                {"type": "heredoc", "target": "/dev/pipes/EOF", "content": "#!/bin/sh\n"},
            ],
        })
    }

    #[test]
    fn exec_inputs_serialise_as_the_json_hashed_before() {
        assert_eq!(StepInputs::Exec(exec()).to_value(), exec_as_before());
    }

    #[test]
    fn a_known_key_is_unchanged() {
        // Computed from the untyped JSON by the code before the typed
        // inputs; a record written then must still be hit.
        let k = step_key(
            "parent",
            "RUN pip install -r requirements.txt",
            &StepInputs::Exec(exec()).to_value(),
        );
        assert_eq!(k, PINNED_KEY);
        let old = step_key(
            "parent",
            "RUN pip install -r requirements.txt",
            &exec_as_before(),
        );
        assert_eq!(old, PINNED_KEY);
    }

    /// The key under `KEY_VERSION` kiln-cache-v10 (key.rs): a version bump
    /// changes it on purpose, nothing else may.
    const PINNED_KEY: &str = "5e9c9ab8e44b6c229db8ce3a5dbc29acfff2c74bb7d53a3810756fed3a8bfa8d";

    #[test]
    fn other_inputs_serialise_as_before() {
        let cases = [
            (
                StepInputs::Source(SourceInputs {
                    image: s("python:3.11-slim"),
                    id: s("sha256:aa"),
                }),
                json!({"image": "python:3.11-slim", "id": "sha256:aa"}),
            ),
            (
                StepInputs::Mkdir(MkdirInputs {
                    mkdir: s("/app"),
                    owner: Some(s("1000:1000")),
                }),
                json!({"mkdir": "/app", "owner": "1000:1000"}),
            ),
            (
                StepInputs::Mkdir(MkdirInputs {
                    mkdir: s("/app"),
                    owner: None,
                }),
                json!({"mkdir": "/app", "owner": null}),
            ),
            (
                StepInputs::Meta(MetaChange::Env(vec![s("A=1")])),
                json!({"env": ["A=1"]}),
            ),
            (
                StepInputs::Meta(MetaChange::Args(BTreeMap::from([
                    (s("V"), Some(s("1"))),
                    (s("U"), None),
                ]))),
                json!({"args": {"V": "1", "U": null}}),
            ),
            (
                StepInputs::Meta(MetaChange::Stopsignal(s("SIGTERM"))),
                json!({"stopsignal": "SIGTERM"}),
            ),
            (
                StepInputs::Meta(MetaChange::Healthcheck(json!({"Test": ["NONE"]}))),
                json!({"healthcheck": {"Test": ["NONE"]}}),
            ),
            (
                StepInputs::Meta(MetaChange::Workdir(s("/w"))),
                json!({"workdir": "/w"}),
            ),
        ];
        for (typed, before) in cases {
            assert_eq!(typed.to_value(), before, "{typed:?}");
        }
        let mut plan = Map::new();
        plan.insert(s("source"), json!("context"));
        plan.insert(s("dest"), json!("/app/"));
        let file = StepInputs::File(FileInputs { plan, link: true });
        let mut before = json!({"source": "context", "dest": "/app/"});
        before["link"] = json!(true);
        assert_eq!(file.to_value(), before);
    }
}
