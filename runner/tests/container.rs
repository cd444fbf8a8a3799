//! Foreground containers through the public API: isolation, users, env,
//! workdir, exit codes, signals, mounts, and the upper dir as a plain diff.

mod common;

use common::*;
use kiln_runner::{MountKind, MountSpec, NetworkMode, RootFs};

macro_rules! need_root {
    ($name:expr) => {
        if !can_run($name) {
            return;
        }
    };
}

#[test]
fn echo_and_exit_codes() {
    need_root!("echo_and_exit_codes");
    assert_eq!(ok(&spec(&["echo", "hello"])), "hello\n");
    assert_eq!(run(&sh("exit 3")).unwrap().code, 3);
    assert_eq!(run(&sh("kill -TERM $$")).unwrap().code, 128 + 15);
    assert_eq!(run(&sh("kill -KILL $$")).unwrap().code, 137);
}
