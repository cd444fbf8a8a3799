//! The native snapshotter holds a copy's directories open and raises the
//! caller's open-file limit for that; containers still get the limit the
//! caller had. Its own test binary: the limit is the process's.

mod common;

use common::*;
use kiln_runner::{RunnerConfig, Snapshotter};

#[test]
fn containers_get_the_callers_open_file_limit_with_copied_roots() {
    if !can_run("containers_get_the_callers_open_file_limit_with_copied_roots") {
        return;
    }
    let r = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let soft = 1000.min(r.maximum.unwrap_or(1000));
    rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: Some(soft),
            maximum: r.maximum,
        },
    )
    .unwrap();
    for snapshotter in [Snapshotter::Native, Snapshotter::Overlayfs] {
        let cfg = RunnerConfig {
            snapshotter,
            ..cfg()
        };
        let o = run_with(&cfg, &sh("ulimit -n")).unwrap();
        assert_eq!(
            o.stdout,
            format!("{soft}\n"),
            "{snapshotter:?}: {}",
            o.stderr
        );
    }
    let now = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    assert_eq!(now, r.maximum, "raised for the caller itself");
}
