//! `RUN --mount=type=ssh`: the step sees an SSH agent socket that forwards
//! to one the user named with `--ssh ID=SOCKET` (`--ssh default` is
//! `$SSH_AUTH_SOCK`). Like BuildKit, the socket in the container is a new
//! one, with the mount's mode and owner, so the user's own agent socket is
//! never re-permissioned or exposed by path; connections are relayed byte
//! for byte while the step runs. Keys never enter the build: the agent
//! signs, the step only asks.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{anyhow, bail, Context as _, Result};

/// `--ssh` flags: agent socket per ID.
pub fn parse_ssh_flags(flags: &[String]) -> Result<HashMap<String, PathBuf>> {
    let mut out = HashMap::new();
    for f in flags {
        let (id, paths) = match f.split_once('=') {
            Some((id, p)) => (id.to_string(), p.to_string()),
            None => (f.clone(), String::new()),
        };
        if id.is_empty() {
            bail!("--ssh {f:?}: expected ID[=SOCKET] (e.g. --ssh default)");
        }
        let socket = if paths.is_empty() {
            std::env::var_os("SSH_AUTH_SOCK")
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
                .ok_or_else(|| {
                    anyhow!("--ssh {id}: SSH_AUTH_SOCK is not set (start ssh-agent, or give --ssh {id}=SOCKET)")
                })?
        } else {
            if paths.contains(',') {
                bail!("--ssh {f:?}: kiln forwards one agent socket per ID; private key files are not supported (load them with ssh-add)");
            }
            PathBuf::from(paths)
        };
        use std::os::unix::fs::FileTypeExt;
        let meta = std::fs::metadata(&socket)
            .with_context(|| format!("--ssh {id}: {}", socket.display()))?;
        if !meta.file_type().is_socket() {
            bail!(
                "--ssh {id}: {} is not an agent socket (private key files are not supported: load them into ssh-agent with ssh-add)",
                socket.display()
            );
        }
        out.insert(id, socket);
    }
    Ok(out)
}

/// A listening socket relaying to the agent until dropped.
pub struct AgentRelay {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl AgentRelay {
    /// Listens at `path` (mode and owner as given) and relays every
    /// connection to `agent`.
    pub fn start(agent: &Path, path: &Path, mode: u32, uid: u32, gid: u32) -> Result<AgentRelay> {
        let listener = UnixListener::bind(path)
            .with_context(|| format!("creating the ssh agent socket {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
        let stop = Arc::new(AtomicBool::new(false));
        let agent = agent.to_path_buf();
        let stop_t = stop.clone();
        let accept = std::thread::Builder::new()
            .name("ssh-agent-relay".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if stop_t.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(inside) = conn else { continue };
                    let Ok(outside) = UnixStream::connect(&agent) else {
                        // The agent went away: the client sees EOF.
                        continue;
                    };
                    std::thread::spawn(move || relay(inside, outside));
                }
            })?;
        Ok(AgentRelay {
            path: path.to_path_buf(),
            stop,
            accept: Some(accept),
        })
    }
}

/// Copies both ways until either side closes.
fn relay(a: UnixStream, b: UnixStream) {
    let (Ok(mut a2), Ok(mut b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || {
        let mut a = a;
        let mut b = b;
        let _ = io::copy(&mut a, &mut b);
        let _ = b.shutdown(std::net::Shutdown::Write);
    });
    let _ = io::copy(&mut b2, &mut a2);
    let _ = a2.shutdown(std::net::Shutdown::Write);
    let _ = up.join();
}

impl Drop for AgentRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn relays_bytes_both_ways_and_stops_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let agent_path = dir.path().join("agent.sock");
        let agent = UnixListener::bind(&agent_path).unwrap();
        // An "agent" that answers each request with it reversed.
        std::thread::spawn(move || {
            for c in agent.incoming() {
                let mut c = c.unwrap();
                let mut buf = [0u8; 5];
                c.read_exact(&mut buf).unwrap();
                buf.reverse();
                c.write_all(&buf).unwrap();
            }
        });
        let relay_path = dir.path().join("relay.sock");
        // Owned by whoever runs the test: no root needed.
        let (uid, gid) = (
            rustix::process::getuid().as_raw(),
            rustix::process::getgid().as_raw(),
        );
        let relay = AgentRelay::start(&agent_path, &relay_path, 0o600, uid, gid).unwrap();
        let mode = std::fs::metadata(&relay_path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        for _ in 0..3 {
            let mut c = UnixStream::connect(&relay_path).unwrap();
            c.write_all(b"hello").unwrap();
            let mut back = [0u8; 5];
            c.read_exact(&mut back).unwrap();
            assert_eq!(&back, b"olleh");
        }
        drop(relay);
        assert!(!relay_path.exists(), "the relay socket goes with the step");
    }

    #[test]
    fn flags_name_sockets_and_refuse_key_files() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("a.sock");
        let _l = UnixListener::bind(&sock).unwrap();
        let m = parse_ssh_flags(&[format!("work={}", sock.display())]).unwrap();
        assert_eq!(m["work"], sock);
        let key = dir.path().join("id_ed25519");
        std::fs::write(&key, "not a socket").unwrap();
        let e = parse_ssh_flags(&[format!("default={}", key.display())]).unwrap_err();
        assert!(e.to_string().contains("ssh-add"), "{e}");
        assert!(parse_ssh_flags(&["=x".to_string()]).is_err());
    }
}
