//! `RUN --mount=type=ssh` with `--ssh`: a step talks to the user's real
//! ssh-agent (OpenSSH's, holding a key made here) through the socket kiln
//! relays, the socket leaves nothing in the image, and a missing agent is
//! a clear error only when the mount is required.

mod common;

use std::path::Path;
use std::process::{Child, Command};

use common::{is_root, require, write_tree, Kiln};

struct Agent {
    child: Child,
    sock: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An ssh-agent on a socket of its own, with one fresh ed25519 key.
fn agent() -> Option<Agent> {
    if !require(
        Path::new("/usr/bin/ssh-agent").exists(),
        "OpenSSH's ssh-agent is not installed (openssh-client; scripts/deps.sh installs it)",
    ) {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let child = Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&sock)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if sock.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let key = dir.path().join("id_ed25519");
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "kiln-test", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(ok.success());
    let ok = Command::new("ssh-add")
        .arg(&key)
        .env("SSH_AUTH_SOCK", &sock)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success());
    Some(Agent {
        child,
        sock,
        _dir: dir,
    })
}

/// Asks the agent in SSH_AUTH_SOCK for its identities (SSH agent
/// protocol: request 11, answer 12 + count) and writes what it got.
const ASK_AGENT: &str = r#"import os, socket, struct
s = socket.socket(socket.AF_UNIX)
s.connect(os.environ["SSH_AUTH_SOCK"])
s.sendall(struct.pack(">IB", 1, 11))
n = struct.unpack(">I", s.recv(4))[0]
b = b""
while len(b) < n:
    b += s.recv(n - len(b))
st = os.stat(os.environ["SSH_AUTH_SOCK"])
print(os.environ["SSH_AUTH_SOCK"], b[0], struct.unpack(">I", b[1:5])[0], b"kiln-test" in b, oct(st.st_mode & 0o777), st.st_uid)
"#;

#[test]
fn a_step_uses_the_agent_and_keeps_nothing_of_it() {
    if !require(is_root(), "builds run containers: run as root") {
        return;
    }
    let k = Kiln::new();
    if !k.with_python() {
        return;
    }
    let Some(agent) = agent() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    write_tree(
        tmp.path(),
        &[
            ("ask.py", ASK_AGENT),
            (
                "Dockerfile",
                "FROM python:3.11-slim\nCOPY ask.py /ask.py\nRUN --mount=type=ssh python3 /ask.py > /default.txt\nRUN --mount=type=ssh,id=work,target=/tmp/agent,mode=0666,uid=1000 python3 /ask.py > /custom.txt\nRUN --mount=type=ssh,id=absent python3 -c 'import os; print(os.environ.get(\"SSH_AUTH_SOCK\"))' > /absent.txt\n",
            ),
        ],
    );
    let ctx = tmp.path().to_str().unwrap();
    let sock = agent.sock.to_str().unwrap();
    k.cmd()
        .env("SSH_AUTH_SOCK", &agent.sock)
        .args([
            "build",
            "--progress=plain",
            "--ssh",
            "default",
            "--ssh",
            &format!("work={sock}"),
            "-t",
            "ssh:1",
            ctx,
        ])
        .output()
        .map(|out| common::Run { out })
        .unwrap()
        .ok();
    let cat = |f: &str| {
        k.run(&["run", "--rm", "ssh:1", "cat", f])
            .ok()
            .stdout()
            .trim()
            .to_string()
    };
    // 12 = SSH_AGENT_IDENTITIES_ANSWER, one key, ours.
    assert_eq!(
        cat("/default.txt"),
        "/run/buildkit/ssh_agent.0 12 1 True 0o600 0"
    );
    assert_eq!(cat("/custom.txt"), "/tmp/agent 12 1 True 0o666 1000");
    // Not required and not given: the step runs without an agent.
    assert_eq!(cat("/absent.txt"), "None");
    // Nothing of the sockets is left in the image.
    let ls = k
        .run(&[
            "run",
            "--rm",
            "ssh:1",
            "python3",
            "-c",
            "import os; print(os.path.exists('/run/buildkit'), os.path.exists('/tmp/agent'))",
        ])
        .ok()
        .stdout();
    assert_eq!(ls.trim(), "False False");

    // Required and not given: one clear line naming the flag.
    write_tree(
        tmp.path(),
        &[(
            "Dockerfile",
            "FROM python:3.11-slim\nRUN --mount=type=ssh,required=true true\n",
        )],
    );
    let err = k.run(&["build", "--progress=plain", ctx]).fails();
    assert!(err.stderr().contains("--ssh default"), "{}", err.stderr());
}
