//! RUN's `--mount`s, one function per kind (bind, cache, tmpfs, secret,
//! ssh) and the heredoc script file: each adds the mount, its cache input,
//! and what must live until the step has run.

use std::path::PathBuf;

use anyhow::{anyhow, Context as _, Result};
use kiln_parser::{Mount, Sharing};

use super::bind_prep::{materialize, BindPrep};
use super::executor::{Mount as MountSpec, MountKind};
use super::inputs::{BindSource, MountInput};
use super::state::StageState;
use super::{Builder, Secret};
use crate::fsutil;

/// What the mounts of a RUN step came to: the mounts, their cache
/// inputs, and what must live until the step has run.
#[derive(Default)]
pub(super) struct Prepared {
    pub(super) mounts: Vec<MountSpec>,
    pub(super) mount_inputs: Vec<MountInput>,
    /// Bind mounts whose source is prepared only if the step runs.
    pub(super) binds: Vec<(usize, BindPrep, bool)>,
    /// Secrets exposed as environment variables: name and file.
    pub(super) secret_env: Vec<(String, PathBuf)>,
    pub(super) keep: Vec<tempfile::TempDir>,
    pub(super) relays: Vec<super::ssh::AgentRelay>,
    pub(super) ssh_auth_sock: Option<String>,
    pub(super) locks: Vec<kiln_store::CacheMount>,
}

/// Word expansion in a stage's scope, located at the step's line.
pub(super) type ExpandFn<'a> = Box<dyn Fn(&str) -> Result<String> + 'a>;

/// What a mount's words are read with, and the build it is for.
pub(super) struct MountCx<'a> {
    pub(super) b: &'a Builder,
    pub(super) st: &'a StageState,
    pub(super) line: usize,
    /// Word expansion in the stage's scope.
    pub(super) exp: ExpandFn<'a>,
    /// A target made absolute against the WORKDIR.
    pub(super) abs_target: Box<dyn Fn(&str) -> String + 'a>,
}

/// One function per mount kind: each adds the mount, its cache input, and
/// what must live until the step ran.
impl MountCx<'_> {
    /// `RUN --mount=type=bind`.
    pub(super) fn bind(&self, out: &mut Prepared, m: &Mount) -> Result<()> {
        let b = self.b;
        let Mount::Bind {
            target,
            source,
            from,
            readwrite,
        } = m
        else {
            unreachable!("MountCx::bind is given bind mounts")
        };
        let Prepared {
            mounts,
            mount_inputs,
            binds,
            ..
        } = out;
        let (st, line, exp, abs_target) = (self.st, self.line, &self.exp, &self.abs_target);
        let target = abs_target(&exp(target)?);
        let source = exp(source.as_deref().unwrap_or("."))?;
        // What the mount shows is prepared only if the step
        // runs (a cache hit needs just the inputs).
        let (prep, id) = match from {
            None => {
                let rel = super::bind_prep::Binds::of(b).source_in_context(&source, line)?;
                let listing = b.ctx.describe_subtree(&rel)?;
                let digest = blake3::hash(serde_json::to_string(&listing)?.as_bytes())
                    .to_hex()
                    .to_string();
                (
                    BindPrep::Context(rel.clone()),
                    BindSource::Context {
                        context: rel.clone(),
                        content: digest,
                    },
                )
            }
            Some(f) => {
                let (view, id) = b.resolve_source(st, f, line)?;
                let (comps, found) = view.resolve(&source, true)?;
                if found.is_none() {
                    return Err(b
                        .src
                        .located(line, &format!("RUN --mount from={f}: {source:?} not found")));
                }
                (
                    BindPrep::View(view, comps),
                    BindSource::From {
                        from: id,
                        source: source.clone(),
                    },
                )
            }
        };
        mount_inputs.push(MountInput::Bind {
            target: target.clone(),
            source: id,
            rw: *readwrite,
        });
        binds.push((mounts.len(), prep, *readwrite));
        mounts.push(MountSpec {
            target,
            kind: MountKind::Bind {
                source: PathBuf::new(),
                readonly: !readwrite,
            },
        });
        Ok(())
    }

    /// `RUN --mount=type=cache`.
    pub(super) fn cache(&self, out: &mut Prepared, m: &Mount) -> Result<()> {
        let b = self.b;
        let Mount::Cache {
            target,
            id,
            sharing,
            mode,
            uid,
            gid,
            readonly,
            from,
            source,
        } = m
        else {
            unreachable!("MountCx::cache is given cache mounts")
        };
        let Prepared {
            mounts,
            mount_inputs,
            locks,
            ..
        } = out;
        let (st, line, exp, abs_target) = (self.st, self.line, &self.exp, &self.abs_target);
        let target = abs_target(&exp(target)?);
        let cid = id.clone().unwrap_or_else(|| target.clone());
        // from= seeds the cache with a stage's or image's files
        // the first time; as in BuildKit, the cache belongs to
        // (id, base): another base starts another cache.
        let seed = match (from, source) {
            (None, None) => None,
            (None, Some(_)) => return Err(b.src.located(
                line,
                "RUN --mount=type=cache: source= needs from= (the stage or image it is a path of)",
            )),
            (Some(f), src) => {
                let src = exp(src.as_deref().unwrap_or("/"))?;
                let (view, base_id) = b.resolve_source(st, f, line)?;
                let (comps, found) = view.resolve(&src, true)?;
                if !found.is_some_and(|f| f.meta.is_dir()) {
                    return Err(b.src.located(
                        line,
                        &format!(
                            "RUN --mount=type=cache from={f}: {src:?} is not a directory there"
                        ),
                    ));
                }
                Some((view, comps, base_id, src))
            }
        };
        // uid/gid/mode make the base BuildKit starts the cache from (a
        // directory made so): another base, another cache.
        let made = (uid.is_some() || gid.is_some() || mode.is_some()).then(|| {
            let (u, g, m) = (uid.unwrap_or(0), gid.unwrap_or(0), mode.unwrap_or(0o755));
            format!("mkdir {u}:{g} {m:o}")
        });
        let name = match (&seed, &made) {
            (None, None) => cid.clone(),
            (None, Some(made)) => format!("{cid}\0{made}"),
            (Some((_, _, base_id, src)), _) => {
                format!("{cid}\0{}\0{src}", serde_json::to_value(base_id)?)
            }
        };
        let share = match sharing {
            Sharing::Shared => kiln_store::CacheSharing::Shared,
            Sharing::Locked => kiln_store::CacheSharing::Locked,
            Sharing::Private => kiln_store::CacheSharing::Private,
        };
        let mut fill = seed.as_ref().map(|(view, comps, _, _)| {
            move |dir: &std::path::Path| -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
                Ok(materialize(view, comps, dir)?)
            }
        });
        let held = b.store.cache().mounts().acquire(
            &name,
            &cid,
            share,
            fill.as_mut().map(|f| f as kiln_store::CacheSeed<'_>),
        )?;
        if let Some((_, _, base_id, src)) = &seed {
            mount_inputs.push(MountInput::CacheSeed {
                target: target.clone(),
                from: base_id.clone(),
                source: src.clone(),
            });
        }
        let host = held.path().to_path_buf();
        locks.push(held);
        {
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(&host)?;
            if meta.permissions().mode() & 0o7777 != mode.unwrap_or(0o755) {
                std::fs::set_permissions(
                    &host,
                    std::fs::Permissions::from_mode(mode.unwrap_or(0o755)),
                )?;
            }
            fsutil::lchown(&host, uid.unwrap_or(0), gid.unwrap_or(0))?;
        }
        mount_inputs.push(MountInput::Cache {
            target: target.clone(),
            id: cid.clone(),
            ro: *readonly,
            base: made,
        });
        mounts.push(MountSpec {
            target,
            kind: MountKind::Bind {
                source: host,
                readonly: *readonly,
            },
        });
        Ok(())
    }

    /// `RUN --mount=type=tmpfs`.
    pub(super) fn tmpfs(&self, out: &mut Prepared, m: &Mount) -> Result<()> {
        let Mount::Tmpfs { target, size } = m else {
            unreachable!("MountCx::tmpfs is given tmpfs mounts")
        };
        let Prepared {
            mounts,
            mount_inputs,
            ..
        } = out;
        let (exp, abs_target) = (&self.exp, &self.abs_target);
        let target = abs_target(&exp(target)?);
        mount_inputs.push(MountInput::Tmpfs {
            target: target.clone(),
            size: *size,
        });
        mounts.push(MountSpec {
            target,
            kind: MountKind::Tmpfs { size: *size },
        });
        Ok(())
    }

    /// `RUN --mount=type=secret`.
    pub(super) fn secret(&self, out: &mut Prepared, m: &Mount) -> Result<()> {
        let b = self.b;
        let Mount::Secret {
            id,
            target,
            env: as_env,
            required,
            mode,
            uid,
            gid,
        } = m
        else {
            unreachable!("MountCx::secret is given secret mounts")
        };
        let Prepared {
            mounts,
            mount_inputs,
            secret_env,
            keep,
            ..
        } = out;
        let (line, abs_target) = (self.line, &self.abs_target);
        let sid = id
            .clone()
            .or_else(|| {
                target
                    .as_ref()
                    .and_then(|t| t.rsplit('/').next().map(String::from))
            })
            .ok_or_else(|| {
                b.src
                    .located(line, "RUN --mount=type=secret needs id= or target=")
            })?;
        let Some(secret) = b.opts.secrets.get(&sid) else {
            if *required {
                return Err(b.src.located(
                    line,
                    &format!("secret {sid} not found: pass it with --secret id={sid},src=FILE"),
                ));
            }
            return Ok(());
        };
        let tmp = b.store.tempdir("secret")?;
        let file = tmp.path().join("secret");
        let data = match secret {
            Secret::File(p) => std::fs::read(p)
                .with_context(|| format!("reading secret {sid} from {}", p.display()))?,
            Secret::Env(v) => std::env::var(v)
                .map_err(|_| anyhow!("secret {sid}: environment variable {v} is not set"))?
                .into_bytes(),
        };
        std::fs::write(&file, &data)?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                &file,
                std::fs::Permissions::from_mode(mode.unwrap_or(0o400)),
            )?;
            fsutil::lchown(&file, uid.unwrap_or(0), gid.unwrap_or(0))?;
        }
        // Secrets never reach the cache key: only where they go.
        if let Some(e) = as_env {
            secret_env.push((e.clone(), file.clone()));
            mount_inputs.push(MountInput::Secret {
                id: sid.clone(),
                env: Some(e.clone()),
                target: None,
            });
            if target.is_none() {
                keep.push(tmp);
                return Ok(());
            }
        }
        let t = target
            .clone()
            .map(|t| abs_target(&t))
            .unwrap_or_else(|| format!("/run/secrets/{sid}"));
        mount_inputs.push(MountInput::Secret {
            id: sid.clone(),
            env: None,
            target: Some(t.clone()),
        });
        mounts.push(MountSpec {
            target: t,
            kind: MountKind::Bind {
                source: file,
                readonly: true,
            },
        });
        keep.push(tmp);
        Ok(())
    }

    /// `RUN --mount=type=ssh`.
    pub(super) fn ssh(&self, out: &mut Prepared, m: &Mount) -> Result<()> {
        let b = self.b;
        let Mount::Ssh {
            id,
            target,
            required,
            mode,
            uid,
            gid,
        } = m
        else {
            unreachable!("MountCx::ssh is given ssh mounts")
        };
        let Prepared {
            mounts,
            mount_inputs,
            relays,
            ssh_auth_sock,
            keep,
            ..
        } = out;
        let (line, abs_target) = (self.line, &self.abs_target);
        let sid = id.clone().unwrap_or_else(|| "default".to_string());
        let Some(agent) = b.opts.ssh.get(&sid) else {
            if *required {
                return Err(b.src.located(line, &format!("no SSH agent for id {sid}: pass --ssh {sid}[=SOCKET] (without a socket: $SSH_AUTH_SOCK)")));
            }
            return Ok(());
        };
        // BuildKit's default place, numbered per step.
        let t = target
            .clone()
            .map(|t| abs_target(&t))
            .unwrap_or_else(|| format!("/run/buildkit/ssh_agent.{}", relays.len()));
        let tmp = b.store.tempdir("ssh")?;
        let sock = tmp.path().join("agent.sock");
        relays.push(super::ssh::AgentRelay::start(
            agent,
            &sock,
            mode.unwrap_or(0o600),
            uid.unwrap_or(0),
            gid.unwrap_or(0),
        )?);
        ssh_auth_sock.get_or_insert_with(|| t.clone());
        // Which agent, not what it holds, is an input.
        mount_inputs.push(MountInput::Ssh {
            id: sid.clone(),
            target: t.clone(),
        });
        mounts.push(MountSpec {
            target: t,
            kind: MountKind::Bind {
                source: sock,
                readonly: false,
            },
        });
        keep.push(tmp);
        Ok(())
    }

    /// The script of `RUN <<EOF` with a shebang, as a file at `target`.
    pub(super) fn script(&self, out: &mut Prepared, target: &str, content: &str) -> Result<()> {
        let Prepared {
            mounts,
            mount_inputs,
            keep,
            ..
        } = out;
        let tmp = self.b.store.tempdir("heredoc")?;
        let file = tmp.path().join("script");
        std::fs::write(&file, content)?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755))?;
        }
        mount_inputs.push(MountInput::Heredoc {
            target: target.to_string(),
            content: content.to_string(),
        });
        mounts.push(MountSpec {
            target: target.to_string(),
            kind: MountKind::Bind {
                source: file,
                readonly: true,
            },
        });
        keep.push(tmp);
        Ok(())
    }
}
