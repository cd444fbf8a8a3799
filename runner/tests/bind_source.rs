//! Issue 20, item 1, the runner's side: a bind source handed to the runner
//! that is a symlink is refused, never followed by the kernel to where it
//! points on the host (the builder resolves sources in their own root; this
//! is the last line if a path is swapped for a link after that).

mod common;

use std::os::unix::fs::symlink;

use common::*;
use kiln_runner::{MountKind, MountSpec, RunError};

#[test]
fn a_bind_source_that_is_a_symlink_is_refused_not_followed() {
    if !can_run("a_bind_source_that_is_a_symlink_is_refused_not_followed") {
        return;
    }
    let host = tempfile::tempdir().unwrap();
    let secret = host.path().join("secret");
    std::fs::write(&secret, "host secret\n").unwrap();
    let victim_dir = host.path().join("dir");
    std::fs::create_dir(&victim_dir).unwrap();
    let links = tempfile::tempdir().unwrap();
    let to_file = links.path().join("to-file");
    let to_dir = links.path().join("to-dir");
    let to_root = links.path().join("to-root");
    symlink(&secret, &to_file).unwrap();
    symlink(&victim_dir, &to_dir).unwrap();
    symlink("/", &to_root).unwrap();
    for (source, readonly) in [(&to_file, true), (&to_dir, false), (&to_root, true)] {
        let mut s = sh("cat /m; echo PWNED > /m/x; ls /m");
        s.mounts = vec![MountSpec {
            target: "/m".into(),
            kind: MountKind::Bind {
                source: source.clone(),
                readonly,
            },
        }];
        match run(&s) {
            Err(RunError::Setup(m)) => {
                assert!(m.contains("is a symlink; refusing to follow it"), "{m}");
                assert!(m.contains(&source.display().to_string()), "{m}");
            }
            Err(e) => panic!("{}: expected a refusal, got {e}", source.display()),
            Ok(o) => panic!(
                "{}: mounted, the container saw:\n{}{}",
                source.display(),
                o.stdout,
                o.stderr
            ),
        }
    }
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "host secret\n");
    assert_eq!(std::fs::read_dir(&victim_dir).unwrap().count(), 0);
}
