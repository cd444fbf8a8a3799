//! Moving the container's PID 1 into its cgroups. The `cgroup.procs`
//! files are opened by the helper while it is still in the host's mount
//! namespace; the forked PID 1 writes `0` ("the writer") into each, so
//! nothing of the container runs before it is inside its limits.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;

pub(crate) fn open(dirs: &[PathBuf]) -> Result<Vec<(PathBuf, File)>, String> {
    dirs.iter()
        .map(|d| {
            let p = d.join("cgroup.procs");
            std::fs::OpenOptions::new()
                .write(true)
                .open(&p)
                .map(|f| (p.clone(), f))
                .map_err(|e| format!("opening {}: {e}", p.display()))
        })
        .collect()
}

pub(crate) fn enter(procs: &[(PathBuf, File)]) -> Result<(), String> {
    for (p, f) in procs {
        let mut f: &File = f;
        f.write_all(b"0")
            .map_err(|e| format!("joining cgroup {}: {e}", p.display()))?;
    }
    Ok(())
}
