//! Helper binary for kiln-runner's own tests and benchmarks: the runner
//! re-executes it as its container helper / monitor. For the pty test it
//! also runs one foreground container with `-it`:
//!
//!     kiln-runner-testbin run-tty STATE_DIR ROOTFS CMD...
//!     kiln-runner-testbin whoami-exe      (prints /proc/self/exe)

use std::path::PathBuf;

use kiln_runner::{ContainerSpec, Containers, RootFs, RunOptions, RunnerConfig};

fn main() {
    kiln_runner::init_hook();
    let args: Vec<String> = std::env::args().collect();
    // For the CVE-2019-5736 test: which binary is this process running?
    if args.len() == 2 && args[1] == "whoami-exe" {
        match std::fs::read_link("/proc/self/exe") {
            Ok(p) => println!("{}", p.display()),
            Err(e) => println!("error: {e}"),
        }
        std::process::exit(0);
    }
    if args.len() > 4 && args[1] == "run-tty" {
        let c = match Containers::open(RunnerConfig::default(), &PathBuf::from(&args[2])) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("kiln-runner-testbin: {e}");
                std::process::exit(125);
            }
        };
        let spec = ContainerSpec {
            rootfs: RootFs {
                lowers: vec![PathBuf::from(&args[3])],
                upper: None,
            },
            args: args[4..].to_vec(),
            cwd: "/".into(),
            ..Default::default()
        };
        let opts = RunOptions {
            tty: true,
            interactive: true,
            auto_remove: true,
            ..Default::default()
        };
        match c.run_foreground(spec, opts) {
            Ok(code) => std::process::exit(code),
            Err(e) => {
                eprintln!("kiln-runner-testbin: {e}");
                std::process::exit(e.exit_code().unwrap_or(125));
            }
        }
    }
    eprintln!("kiln-runner-testbin: only meant to be started by kiln-runner or its tests");
    std::process::exit(2);
}
