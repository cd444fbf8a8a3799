//! The first executor: `kiln-runner`'s namespaces, overlayfs root,
//! pivot_root, Docker's capabilities and syscall filter.

use std::io::{BufRead, BufReader};
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use anyhow::{anyhow, Result};
use kiln_runner::{ContainerSpec, MountSpec, NetworkMode, RootFs, RunnerConfig, Stdio};

use super::{ExecSpec, ExecStatus, Executor, MountKind, Network};

pub struct NamespaceExecutor {
    config: RunnerConfig,
    /// `--security-opt seccomp=unconfined`.
    seccomp_unconfined: bool,
}

impl NamespaceExecutor {
    /// Containers get their scratch dirs under `scratch_root`; every
    /// private-network process of this executor shares one network
    /// namespace and stack, started on first use and stopped with it.
    /// `seccomp_unconfined` drops the syscall filter for every RUN step.
    pub fn new(scratch_root: PathBuf, seccomp_unconfined: bool) -> NamespaceExecutor {
        NamespaceExecutor {
            config: RunnerConfig {
                scratch_root,
                shared_net: Some(kiln_runner::SharedNet::new()),
                ..Default::default()
            },
            seccomp_unconfined,
        }
    }
}

fn container_spec(spec: &ExecSpec, seccomp_unconfined: bool) -> ContainerSpec {
    ContainerSpec {
        rootfs: RootFs {
            lowers: spec.lowers.clone(),
            upper: Some((spec.upper.clone(), spec.work.clone())),
        },
        args: spec.args.clone(),
        env: spec.env.clone(),
        cwd: spec.cwd.clone(),
        user: spec.user.clone(),
        hostname: Some(spec.hostname.clone()),
        network: match spec.network {
            Network::Private => NetworkMode::Private,
            Network::Host => NetworkMode::Host,
            Network::None => NetworkMode::None,
        },
        mounts: spec
            .mounts
            .iter()
            .map(|m| MountSpec {
                target: m.target.clone(),
                kind: match &m.kind {
                    MountKind::Bind { source, readonly } => kiln_runner::MountKind::Bind {
                        source: source.clone(),
                        readonly: *readonly,
                    },
                    MountKind::Tmpfs { size } => kiln_runner::MountKind::Tmpfs { size: *size },
                },
            })
            .collect(),
        readonly_rootfs: false,
        // RUN gets the default filter, as under BuildKit, unless the build
        // said --security-opt seccomp=unconfined. An emulated (QEMU) step
        // is filtered with the host's ABIs: the emulator makes the calls.
        seccomp_unconfined,
    }
}

impl Drop for NamespaceExecutor {
    /// Copied roots (the native snapshotter) are removed in the
    /// background; the build is not over until they are gone.
    fn drop(&mut self) {
        kiln_runner::wait_for_cleanup();
    }
}

impl Executor for NamespaceExecutor {
    fn run(&self, spec: &ExecSpec, output: &(dyn Fn(&str) + Sync)) -> Result<ExecStatus> {
        let spec = container_spec(spec, self.seccomp_unconfined);
        let (r, w): (OwnedFd, OwnedFd) = rustix::pipe::pipe().map_err(|e| anyhow!("pipe: {e}"))?;
        let w2 = w.try_clone()?;
        std::thread::scope(|s| {
            let reader = s.spawn(move || {
                let f = std::fs::File::from(r);
                for line in BufReader::new(f).split(b'\n') {
                    let Ok(line) = line else { break };
                    output(&String::from_utf8_lossy(&line));
                }
            });
            let code = kiln_runner::run(
                &self.config,
                &spec,
                Stdio {
                    stdin: None,
                    stdout: Some(w),
                    stderr: Some(w2),
                },
            );
            let _ = reader.join();
            let code = code.map_err(|e| anyhow!("{e}"))?;
            Ok(ExecStatus {
                code,
                warnings: kiln_runner::take_fallback_warning().into_iter().collect(),
            })
        })
    }
}
