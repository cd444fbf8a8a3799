//! kiln's container helper: the same runner code as `kiln`'s own, in a
//! binary a tenth of its size, so that the two executions every container
//! start costs (the helper, then PID 1 re-executed from a read-only mount
//! of it) load less. kiln uses it when it sits beside `kiln` and was built
//! from the same runner sources; otherwise kiln re-executes itself.

fn main() {
    kiln_runner::init_hook();
    eprintln!("kiln-helper: this program is started by kiln, not by hand");
    std::process::exit(2);
}
