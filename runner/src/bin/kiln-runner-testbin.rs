//! Helper binary for kiln-runner's own tests and benchmarks: the runner
//! re-executes it as its container helper / monitor. For the pty test it
//! also runs one foreground container with `-it`:
//!
//!     kiln-runner-testbin run-tty STATE_DIR ROOTFS CMD...
//!     kiln-runner-testbin write-own-exe   (tries to open /proc/self/exe for writing)

use std::path::PathBuf;

use kiln_runner::{ContainerSpec, Containers, RootFs, RunOptions, RunnerConfig};

fn main() {
    kiln_runner::init_hook();
    let args: Vec<String> = std::env::args().collect();
    // For the CVE-2019-5736 test: run inside a container as its command,
    // can this process open its own binary for writing?
    if args.len() == 2 && args[1] == "write-own-exe" {
        // While any process runs the binary the kernel says ETXTBSY; what
        // protects it for good is the read-only mount it is reached through.
        match std::fs::OpenOptions::new()
            .append(true)
            .open("/proc/self/exe")
        {
            Ok(_) => print!("OPENED-FOR-WRITING"),
            Err(e) => print!("open-errno={}", e.raw_os_error().unwrap_or(0)),
        }
        match rustix::fs::statvfs("/proc/self/exe") {
            Ok(v) if v.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY) => {
                println!(" mount=ro")
            }
            Ok(_) => println!(" mount=rw"),
            Err(e) => println!(" statvfs: {e}"),
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
