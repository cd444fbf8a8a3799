//! Helper binary for kiln-runner's own tests and benchmarks: the runner
//! re-executes it as its container helper / monitor. It does nothing else.

fn main() {
    kiln_runner::init_hook();
    eprintln!("kiln-runner-testbin: only meant to be started by kiln-runner");
    std::process::exit(2);
}
