//! `kiln top`: the container's processes as the host's `ps` shows them.
//!
//! As dockerd does: run `ps` on the host with the user's options (default
//! `-ef`), find the PID column in its header, and keep the lines whose PID
//! is one of the container's. The container's processes are those in its
//! PID namespace (the same `/proc/<pid>/ns/pid` as its PID 1), which takes
//! in `kiln exec` processes and everything they fork.

use std::collections::BTreeSet;
use std::fs;
use std::process::Command;

use crate::error::RunError;

/// Host PIDs of every process in the PID namespace of `pid`.
pub(crate) fn pids_in_namespace_of(pid: i32) -> Result<BTreeSet<i32>, RunError> {
    let ns = fs::read_link(format!("/proc/{pid}/ns/pid"))
        .map_err(|e| RunError::io(format!("reading the PID namespace of {pid}"), e))?;
    let mut out = BTreeSet::new();
    let dir = fs::read_dir("/proc").map_err(|e| RunError::io("listing /proc", e))?;
    for ent in dir.flatten() {
        let Some(p) = ent.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        // Processes that exit meanwhile, or are not ours to read, drop out.
        if fs::read_link(format!("/proc/{p}/ns/pid")).is_ok_and(|l| l == ns) {
            out.insert(p);
        }
    }
    Ok(out)
}

/// Run the host's `ps` with `args` and keep the header and the lines of
/// `pids`.
pub fn ps_lines(args: &[String], pids: &BTreeSet<i32>) -> Result<Vec<String>, RunError> {
    let out = Command::new("ps").args(args).output().map_err(|e| {
        RunError::Top(format!(
            "running ps: {e} (kiln top runs the host's ps: apt-get install procps)"
        ))
    })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(RunError::Top(format!(
            "ps {} failed: {}",
            args.join(" "),
            err.lines().next().unwrap_or("").trim()
        )));
    }
    filter_ps(&String::from_utf8_lossy(&out.stdout), pids)
}

/// The header and the lines whose PID column is in `pids` (dockerd's
/// rule; an output without a PID column is its error).
pub(crate) fn filter_ps(output: &str, pids: &BTreeSet<i32>) -> Result<Vec<String>, RunError> {
    let mut lines = output.lines();
    let header = lines.next().unwrap_or("");
    let col = header
        .split_whitespace()
        .position(|f| f == "PID")
        .ok_or_else(|| RunError::Top("Couldn't find PID field in ps output".into()))?;
    let mut out = vec![header.to_string()];
    for line in lines {
        let pid = line
            .split_whitespace()
            .nth(col)
            .and_then(|f| f.parse::<i32>().ok());
        if pid.is_some_and(|p| pids.contains(&p)) {
            out.push(line.to_string());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PS: &str = "\
UID          PID    PPID  C STIME TTY          TIME CMD
root           1       0  0 10:00 ?        00:00:01 /sbin/init
root        4242    4240  0 10:01 ?        00:00:00 sleep 1000
nobody      4250    4242  0 10:01 ?        00:00:00 sh -c echo 1
";

    #[test]
    fn keeps_the_header_and_the_containers_lines() {
        let pids = BTreeSet::from([4242, 4250, 9999]);
        let got = filter_ps(PS, &pids).unwrap();
        assert_eq!(got.len(), 3);
        assert!(got[0].starts_with("UID"));
        assert!(got[1].contains("sleep 1000"));
        assert!(got[2].contains("echo 1"));
    }

    #[test]
    fn the_pid_column_is_found_wherever_it_is() {
        let out = "USER COMMAND PID\nroot init 1\nroot sleep 7\n";
        let got = filter_ps(out, &BTreeSet::from([7])).unwrap();
        assert_eq!(got, vec!["USER COMMAND PID", "root sleep 7"]);
    }

    #[test]
    fn an_output_without_pids_is_an_error() {
        let e = filter_ps("USER COMMAND\nroot init\n", &BTreeSet::from([1])).unwrap_err();
        assert_eq!(e.to_string(), "Couldn't find PID field in ps output");
    }

    #[test]
    fn our_own_namespace_holds_us() {
        let me = std::process::id() as i32;
        let pids = pids_in_namespace_of(me).unwrap();
        assert!(pids.contains(&me));
    }
}
