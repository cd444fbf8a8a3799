//! A minimal CLI over kiln-runner, for manual testing:
//!
//!     mini [-t] [-i] [-d] [--rm] [--name N] [-p SPEC] ROOTFS_DIR CMD...
//!     mini ps | logs ID | stop ID | rm ID
//!
//! State goes to /tmp/kiln-mini/containers.

use std::path::PathBuf;
use std::time::Duration;

use kiln_runner::{ContainerSpec, Containers, RootFs, RunOptions, RunnerConfig};

fn main() {
    kiln_runner::init_hook();
    if let Err(e) = real_main() {
        eprintln!("mini: {e}");
        std::process::exit(e.exit_code().unwrap_or(125));
    }
}

fn real_main() -> Result<(), kiln_runner::RunError> {
    let c = Containers::open(
        RunnerConfig::default(),
        &PathBuf::from("/tmp/kiln-mini/containers"),
    )?;
    let mut args = std::env::args().skip(1).peekable();
    match args.peek().map(String::as_str) {
        Some("ps") => {
            print!("{}", kiln_runner::format_ps_table(&c.list(true)?, false));
            return Ok(());
        }
        Some("logs") => {
            args.next();
            let id = args.next().unwrap_or_default();
            return c.logs(&id, true, &mut std::io::stdout());
        }
        Some("stop") => {
            args.next();
            return c.stop(&args.next().unwrap_or_default(), Duration::from_secs(10));
        }
        Some("rm") => {
            args.next();
            return c.remove(&args.next().unwrap_or_default(), true);
        }
        _ => {}
    }
    let mut opts = RunOptions::default();
    let mut detach = false;
    while let Some(a) = args.peek().cloned() {
        match a.as_str() {
            "-t" => opts.tty = true,
            "-i" => opts.interactive = true,
            "-it" | "-ti" => {
                opts.tty = true;
                opts.interactive = true
            }
            "-d" => detach = true,
            "--rm" => opts.auto_remove = true,
            "--name" => {
                args.next();
                opts.name = args.peek().cloned();
            }
            "-p" => {
                args.next();
                opts.ports.push(kiln_runner::parse_port_spec(
                    args.peek().map(String::as_str).unwrap_or(""),
                )?);
            }
            _ => break,
        }
        args.next();
    }
    let root = PathBuf::from(args.next().unwrap_or_default());
    let argv: Vec<String> = args.collect();
    opts.image = root.display().to_string();
    opts.command = argv.join(" ");
    let spec = ContainerSpec {
        // KILN_MINI_UPPER=DIR: keep the upper (DIR/upper, DIR/work) to look at.
        rootfs: RootFs {
            lowers: vec![root],
            upper: std::env::var_os("KILN_MINI_UPPER").map(|d| {
                let d = PathBuf::from(d);
                let _ = std::fs::create_dir_all(d.join("upper"));
                let _ = std::fs::create_dir_all(d.join("work"));
                (d.join("upper"), d.join("work"))
            }),
        },
        args: argv,
        cwd: "/".into(),
        env: vec!["TERM=xterm".into()],
        ..Default::default()
    };
    if detach {
        println!("{}", c.run_detached(spec, opts)?);
        Ok(())
    } else {
        let code = c.run_foreground(spec, opts)?;
        std::process::exit(code)
    }
}
