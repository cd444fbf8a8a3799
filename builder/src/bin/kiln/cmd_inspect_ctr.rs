//! Looking into containers: `logs` (with its filters), `top`, `port`,
//! `cp`, with docker's output, errors and exit codes.

use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Result;
use kiln_runner::{CpOptions, LogOptions, PortMapping, Protocol};
use kiln_store::Store;

use crate::cli::{CpArgs, LogsArgs, PortArgs, TopArgs};
use crate::cmd_containers::containers;
use crate::error::Failure;

/// Docker's daemon-side errors: `Error response from daemon: ...`, 1.
fn daemon_error(e: impl std::fmt::Display) -> anyhow::Error {
    Failure::new(1, format!("Error response from kiln: {e}")).into()
}

pub fn logs(store: &Store, args: &LogsArgs) -> Result<ExitCode> {
    let c = containers(store)?;
    let id = c.resolve(&args.container).map_err(daemon_error)?;
    let now = SystemTime::now();
    let time = |v: &Option<String>| {
        v.as_deref()
            .map(|s| kiln_runner::parse_log_time(s, now))
            .transpose()
            .map_err(|e| Failure::new(1, format!("kiln: {e}")))
    };
    let opts = LogOptions {
        follow: args.follow,
        timestamps: args.timestamps,
        since: time(&args.since)?,
        until: time(&args.until)?,
        tail: kiln_runner::parse_tail(&args.tail)
            .map_err(|e| Failure::new(1, format!("kiln: {e}")))?,
    };
    let (stdout, stderr) = (std::io::stdout(), std::io::stderr());
    let (mut out, mut err) = (stdout.lock(), stderr.lock());
    c.logs_with(&id, &opts, &mut out, Some(&mut err))?;
    Ok(ExitCode::SUCCESS)
}

pub fn top(store: &Store, args: &TopArgs) -> Result<ExitCode> {
    let c = containers(store)?;
    let pids = c.pids(&args.container).map_err(daemon_error)?;
    let ps_args = if args.ps_options.is_empty() {
        vec!["-ef".to_string()]
    } else {
        args.ps_options.clone()
    };
    for line in kiln_runner::ps_lines(&ps_args, &pids).map_err(daemon_error)? {
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `PORT[/PROTO]`, tcp by default.
fn parse_private_port(s: &str) -> Result<(u16, Protocol), String> {
    let (port, proto) = s.split_once('/').unwrap_or((s, "tcp"));
    let proto = match proto {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        _ => {
            return Err(format!(
                "Error: invalid port ({s}): unknown protocol {proto:?}"
            ))
        }
    };
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok((p, proto)),
        _ => Err(format!("Error: invalid port ({s})")),
    }
}

/// The host side of a mapping as `docker port` prints it.
fn host_addr(m: &PortMapping) -> String {
    match m.host_ip {
        std::net::IpAddr::V4(ip) => format!("{ip}:{}", m.host_port),
        std::net::IpAddr::V6(ip) => format!("[{ip}]:{}", m.host_port),
    }
}

/// What `kiln port` prints for `ports` (a running container's).
fn port_lines(
    name: &str,
    ports: &[PortMapping],
    want: Option<&str>,
) -> Result<Vec<String>, String> {
    let Some(want) = want else {
        return Ok(ports
            .iter()
            .map(|m| format!("{}/{} -> {}", m.container_port, m.protocol, host_addr(m)))
            .collect());
    };
    let (port, proto) = parse_private_port(want)?;
    let lines: Vec<String> = ports
        .iter()
        .filter(|m| m.container_port == port && m.protocol == proto)
        .map(host_addr)
        .collect();
    if lines.is_empty() {
        return Err(format!(
            "Error: No public port '{port}/{proto}' published for {name}"
        ));
    }
    Ok(lines)
}

pub fn port(store: &Store, args: &PortArgs) -> Result<ExitCode> {
    let c = containers(store)?;
    let info = c.inspect(&args.container).map_err(daemon_error)?;
    // A stopped container publishes nothing (docker's NetworkSettings).
    let ports = if info.status.is_up() {
        info.ports
    } else {
        Vec::new()
    };
    let lines = port_lines(&args.container, &ports, args.port.as_deref())
        .map_err(|e| Failure::new(1, e))?;
    for l in lines {
        println!("{l}");
    }
    Ok(ExitCode::SUCCESS)
}

/// docker's `splitCpArg`: an absolute path, a path without `:`, or one
/// whose part before the `:` starts with `.` is local; else
/// `CONTAINER:PATH`.
fn split_cp_arg(arg: &str) -> (Option<&str>, &str) {
    if arg.starts_with('/') {
        return (None, arg);
    }
    match arg.split_once(':') {
        Some((c, p)) if !c.starts_with('.') => (Some(c), p),
        _ => (None, arg),
    }
}

/// Docker's `units.HumanSize`: 4 significant digits, decimal units.
fn human_size(n: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < units.len() {
        v /= 1000.0;
        i += 1;
    }
    let digits = if v >= 100.0 {
        1
    } else if v >= 10.0 {
        2
    } else {
        3
    };
    let s = format!("{v:.digits$}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    format!("{s}{}", units[i])
}

/// The one container a `kiln cp` names (None: none, or two).
pub fn cp_container(args: &CpArgs) -> Option<&str> {
    match (split_cp_arg(&args.src).0, split_cp_arg(&args.dest).0) {
        (Some(c), None) | (None, Some(c)) => Some(c),
        _ => None,
    }
}

/// Rootless `exec`, `cp`, `top`: join the user namespace of the running
/// container `name` (made by the `kiln run` that started it), where this
/// user is root. A container that is missing or not running is left to
/// the command itself, which says so in docker's words.
pub fn join_rootless(root: &Option<std::path::PathBuf>, name: &str) -> Result<(), String> {
    if rustix::process::getuid().is_root() {
        return Ok(());
    }
    let root = root.clone().unwrap_or_else(Store::default_root);
    let Ok(store) = Store::open(&root) else {
        return Ok(());
    };
    let pid = match containers(&store).map(|c| c.main_pid(name)) {
        Ok(Ok(pid)) => pid,
        _ => return Ok(()),
    };
    drop(store);
    kiln_runner::userns::join_user_namespace_of(pid).map(|_| ())
}

pub fn cp(store: &Store, args: &CpArgs) -> Result<ExitCode> {
    let usage = |m: &str| -> anyhow::Error { Failure::new(1, format!("kiln: {m}")).into() };
    if args.src.is_empty() || args.dest.is_empty() {
        return Err(usage("source and destination can not be empty"));
    }
    if args.src == "-" || args.dest == "-" {
        return Err(usage(
            "copying a tar stream from stdin or to stdout ('-') is not supported yet: copy to or from a path",
        ));
    }
    let opts = CpOptions {
        archive: args.archive,
        follow_link: args.follow_link,
    };
    let c = containers(store)?;
    let (bytes, dest) = match (split_cp_arg(&args.src), split_cp_arg(&args.dest)) {
        ((Some(_), _), (Some(_), _)) => {
            return Err(usage("copying between containers is not supported"))
        }
        ((None, _), (None, _)) => return Err(usage("must specify at least one container source")),
        ((Some(ctr), path), (None, dest)) => {
            let n = c.copy_from(ctr, path, dest, opts).map_err(daemon_error)?;
            (n, dest.to_string())
        }
        ((None, src), (Some(ctr), path)) => {
            let n = c.copy_to(ctr, src, path, opts).map_err(daemon_error)?;
            (n, args.dest.clone())
        }
    };
    if !args.quiet {
        eprintln!("Successfully copied {} to {dest}", human_size(bytes));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cp_args_split_like_docker() {
        assert_eq!(
            split_cp_arg("web:/etc/passwd"),
            (Some("web"), "/etc/passwd")
        );
        assert_eq!(split_cp_arg("web:etc"), (Some("web"), "etc"));
        assert_eq!(split_cp_arg("/tmp/a:b"), (None, "/tmp/a:b"));
        assert_eq!(split_cp_arg("./a:b"), (None, "./a:b"));
        assert_eq!(split_cp_arg("file.txt"), (None, "file.txt"));
    }

    #[test]
    fn sizes_read_like_dockers() {
        assert_eq!(human_size(5), "5B");
        assert_eq!(human_size(2048), "2.048kB");
        assert_eq!(human_size(12_500), "12.5kB");
        assert_eq!(human_size(4_194_304), "4.194MB");
        assert_eq!(human_size(123_456_789), "123.5MB");
    }

    fn m(ip: &str, host: u16, ctr: u16, p: Protocol) -> PortMapping {
        PortMapping {
            host_ip: ip.parse().unwrap(),
            host_port: host,
            container_port: ctr,
            protocol: p,
        }
    }

    #[test]
    fn ports_print_like_docker_port() {
        let ports = [
            m("0.0.0.0", 8080, 5000, Protocol::Tcp),
            m("::", 8080, 5000, Protocol::Tcp),
            m("127.0.0.1", 5353, 53, Protocol::Udp),
        ];
        assert_eq!(
            port_lines("web", &ports, None).unwrap(),
            vec![
                "5000/tcp -> 0.0.0.0:8080",
                "5000/tcp -> [::]:8080",
                "53/udp -> 127.0.0.1:5353"
            ]
        );
        assert_eq!(
            port_lines("web", &ports, Some("5000")).unwrap(),
            vec!["0.0.0.0:8080", "[::]:8080"]
        );
        assert_eq!(
            port_lines("web", &ports, Some("53/udp")).unwrap(),
            vec!["127.0.0.1:5353"]
        );
        assert_eq!(
            port_lines("web", &ports, Some("53")).unwrap_err(),
            "Error: No public port '53/tcp' published for web"
        );
        assert!(port_lines("web", &ports, Some("x"))
            .unwrap_err()
            .contains("invalid port"));
        assert!(port_lines("web", &ports, Some("5000/sctp"))
            .unwrap_err()
            .contains("unknown protocol"));
    }
}
