//! Published ports: parsing `-p` specs and the userspace proxy.
//!
//! The proxy listens on the host address in the caller's (host) network
//! namespace and opens every upstream connection from a thread that has
//! `setns()`'d into the container's network namespace, to
//! `127.0.0.1:<containerPort>`. A socket keeps the namespace it was created
//! in, so a server bound only to the container's loopback is reachable.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::RunError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// `[ip:]hostPort:containerPort[/tcp|udp]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortMapping {
    pub host_ip: IpAddr,
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Protocol,
}

impl fmt::Display for PortMapping {
    /// Docker's ps form: `0.0.0.0:5000->5000/tcp`, `[::1]:80->80/tcp`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host_ip {
            IpAddr::V4(ip) => write!(f, "{ip}")?,
            IpAddr::V6(ip) => write!(f, "[{ip}]")?,
        }
        write!(
            f,
            ":{}->{}/{}",
            self.host_port, self.container_port, self.protocol
        )
    }
}

fn parse_port(s: &str, spec: &str, what: &str) -> Result<u16, RunError> {
    let bad = |reason: String| RunError::BadPortSpec {
        spec: spec.to_string(),
        reason,
    };
    if s.is_empty() {
        return Err(bad(format!("missing {what}")));
    }
    match s.parse::<u16>() {
        Ok(0) => Err(bad(format!("{what} must be between 1 and 65535"))),
        Ok(p) => Ok(p),
        Err(_) => Err(bad(format!("invalid {what} {s:?}"))),
    }
}

/// Parse `"5000:5000"`, `"127.0.0.1:8080:80"`, `"[::1]:8080:80"`, `"53:53/udp"`.
pub fn parse_port_spec(s: &str) -> Result<PortMapping, RunError> {
    let bad = |reason: &str| RunError::BadPortSpec {
        spec: s.to_string(),
        reason: reason.to_string(),
    };
    let (rest, protocol) = match s.rsplit_once('/') {
        Some((r, "tcp")) => (r, Protocol::Tcp),
        Some((r, "udp")) => (r, Protocol::Udp),
        Some(_) => return Err(bad("protocol must be tcp or udp")),
        None => (s, Protocol::Tcp),
    };
    let (host_ip, rest) = if let Some(stripped) = rest.strip_prefix('[') {
        let (ip, after) = stripped
            .split_once(']')
            .ok_or_else(|| bad("unterminated [ in IPv6 address"))?;
        let ip: IpAddr = ip.parse().map_err(|_| bad("invalid IP address"))?;
        let after = after
            .strip_prefix(':')
            .ok_or_else(|| bad("expected ':' after the IP address"))?;
        (ip, after)
    } else {
        let parts: Vec<&str> = rest.split(':').collect();
        match parts.len() {
            2 => (IpAddr::V4(Ipv4Addr::UNSPECIFIED), rest),
            3 => {
                let ip = if parts[0].is_empty() {
                    IpAddr::V4(Ipv4Addr::UNSPECIFIED)
                } else {
                    parts[0].parse().map_err(|_| bad("invalid IP address"))?
                };
                (ip, &rest[parts[0].len() + 1..])
            }
            1 => return Err(bad("a host port is required (hostPort:containerPort)")),
            _ => return Err(bad("too many ':' (IPv6 addresses go in brackets)")),
        }
    };
    let (hp, cp) = rest
        .split_once(':')
        .ok_or_else(|| bad("expected hostPort:containerPort"))?;
    Ok(PortMapping {
        host_ip,
        host_port: parse_port(hp, s, "host port")?,
        container_port: parse_port(cp, s, "container port")?,
        protocol,
    })
}

/// A bound host socket for one mapping, made before the container starts so
/// that "port in use" is reported by `run`.
pub(crate) enum Bound {
    Tcp(PortMapping, TcpListener),
    Udp(PortMapping, UdpSocket),
}

pub(crate) fn bind_all(ports: &[PortMapping]) -> Result<Vec<Bound>, RunError> {
    let mut out = Vec::new();
    for p in ports {
        let addr = SocketAddr::new(p.host_ip, p.host_port);
        let err = |e: io::Error| {
            if e.kind() == io::ErrorKind::AddrInUse {
                RunError::PortInUse {
                    ip: p.host_ip,
                    port: p.host_port,
                }
            } else if e.kind() == io::ErrorKind::PermissionDenied
                && crate::userns::current().is_nested()
            {
                RunError::PortBind {
                    ip: p.host_ip,
                    port: p.host_port,
                    reason: unprivileged_port_reason(p.host_port, p.container_port),
                }
            } else {
                RunError::PortBind {
                    ip: p.host_ip,
                    port: p.host_port,
                    reason: e.to_string(),
                }
            }
        };
        out.push(match p.protocol {
            Protocol::Tcp => Bound::Tcp(*p, TcpListener::bind(addr).map_err(err)?),
            Protocol::Udp => Bound::Udp(*p, UdpSocket::bind(addr).map_err(err)?),
        });
    }
    Ok(out)
}

/// Rootless kiln listens as the user: ports below the kernel's
/// `net.ipv4.ip_unprivileged_port_start` are root's.
fn unprivileged_port_reason(port: u16, container_port: u16) -> String {
    let start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(1024);
    format!(
        "rootless kiln publishes ports as your user, and ports below {start} \
         (sysctl net.ipv4.ip_unprivileged_port_start) are root's: publish a port of {start} \
         or above (-p {}:{container_port}), or as root lower the limit (sysctl \
         net.ipv4.ip_unprivileged_port_start={port})",
        start.max(8080)
    )
}

const PROXY_STACK: usize = 128 * 1024;

fn enter_netns(netns: &OwnedFd) -> io::Result<()> {
    rustix::thread::move_into_link_name_space(
        netns.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .map_err(io::Error::from)
}

/// Stops the proxy's listeners (connections in flight end when either side
/// closes, which happens at the latest when the container is gone).
pub(crate) struct ProxyHandle {
    stop: Arc<AtomicBool>,
    wake: Vec<(Protocol, SocketAddr)>,
}

impl ProxyHandle {
    pub(crate) fn shutdown(self) {
        self.stop.store(true, Ordering::SeqCst);
        for (proto, mut addr) in self.wake {
            if addr.ip().is_unspecified() {
                addr.set_ip(match addr {
                    SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                    SocketAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
                });
            }
            // Wake the blocked accept()/recv_from() so it sees the flag.
            match proto {
                Protocol::Tcp => {
                    let _ = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
                }
                Protocol::Udp => {
                    let bind: SocketAddr = match addr {
                        SocketAddr::V4(_) => (Ipv4Addr::LOCALHOST, 0).into(),
                        SocketAddr::V6(_) => (std::net::Ipv6Addr::LOCALHOST, 0).into(),
                    };
                    if let Ok(s) = UdpSocket::bind(bind) {
                        let _ = s.send_to(&[], addr);
                    }
                }
            }
        }
    }
}

/// Serve every bound port on background threads. `netns` is the
/// container's network namespace (an open `/proc/<pid>/ns/net`).
pub(crate) fn serve(bound: Vec<Bound>, netns: OwnedFd) -> ProxyHandle {
    let netns = Arc::new(netns);
    let stop = Arc::new(AtomicBool::new(false));
    let mut wake = Vec::new();
    for b in bound {
        let netns = netns.clone();
        let stop = stop.clone();
        let r = match b {
            Bound::Tcp(p, l) => {
                if let Ok(a) = l.local_addr() {
                    wake.push((Protocol::Tcp, a));
                }
                std::thread::Builder::new()
                    .name(format!("proxy-tcp-{}", p.host_port))
                    .stack_size(PROXY_STACK)
                    .spawn(move || tcp_accept_loop(p, l, netns, &stop))
            }
            Bound::Udp(p, s) => {
                if let Ok(a) = s.local_addr() {
                    wake.push((Protocol::Udp, a));
                }
                std::thread::Builder::new()
                    .name(format!("proxy-udp-{}", p.host_port))
                    .stack_size(PROXY_STACK)
                    .spawn(move || udp_loop(p, s, netns, &stop))
            }
        };
        if let Err(e) = r {
            eprintln!("kiln-runner: cannot start port proxy thread: {e}");
        }
    }
    ProxyHandle { stop, wake }
}

fn tcp_accept_loop(p: PortMapping, l: TcpListener, netns: Arc<OwnedFd>, stop: &AtomicBool) {
    loop {
        let accepted = l.accept();
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let client = match accepted {
            Ok((c, _)) => c,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                eprintln!("kiln-runner: accept on {p}: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let netns = netns.clone();
        let spawned = std::thread::Builder::new()
            .stack_size(PROXY_STACK)
            .spawn(move || tcp_connection(p, client, &netns));
        if let Err(e) = spawned {
            eprintln!("kiln-runner: cannot start connection thread: {e}");
        }
    }
}

fn tcp_connection(p: PortMapping, client: TcpStream, netns: &OwnedFd) {
    // This thread moves into the container's netns for good; the socket it
    // makes there stays there.
    // 127.0.0.1 first, then ::1 for servers that bind the IPv6 loopback only.
    let upstream = enter_netns(netns).and_then(|()| {
        TcpStream::connect((Ipv4Addr::LOCALHOST, p.container_port)).or_else(|e| {
            TcpStream::connect((std::net::Ipv6Addr::LOCALHOST, p.container_port)).map_err(|_| e)
        })
    });
    let upstream = match upstream {
        Ok(u) => u,
        Err(_) => {
            // Nothing listens inside: close the client, like a refused port.
            let _ = client.shutdown(Shutdown::Both);
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (c2, u2) = match (client.try_clone(), upstream.try_clone()) {
        (Ok(c), Ok(u)) => (c, u),
        _ => return,
    };
    let back = std::thread::Builder::new()
        .stack_size(PROXY_STACK)
        .spawn(move || pump(u2, c2));
    pump(client, upstream);
    if let Ok(h) = back {
        let _ = h.join();
    }
}

/// Copy until EOF or error, then pass the close on: a half-close becomes a
/// half-close, an error closes both directions.
fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    let _ = from.shutdown(Shutdown::Both);
                    let _ = to.shutdown(Shutdown::Both);
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => {
                let _ = from.shutdown(Shutdown::Both);
                let _ = to.shutdown(Shutdown::Both);
                return;
            }
        }
    }
}

const UDP_IDLE: Duration = Duration::from_secs(60);

/// UDP: one upstream socket (made inside the container netns) per client
/// address; replies go back from the host socket. Idle flows expire.
fn udp_loop(p: PortMapping, host: UdpSocket, netns: Arc<OwnedFd>, stop: &AtomicBool) {
    let flows: Arc<Mutex<HashMap<SocketAddr, UdpSocket>>> = Arc::default();
    let mut buf = vec![0u8; 65536];
    loop {
        let received = host.recv_from(&mut buf);
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let (n, client) = match received {
            Ok(x) => x,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let existing = flows
            .lock()
            .ok()
            .and_then(|m| m.get(&client).and_then(|s| s.try_clone().ok()));
        let up = match existing {
            Some(u) => u,
            None => match new_udp_flow(p, client, &host, &netns, &flows) {
                Some(u) => u,
                None => continue,
            },
        };
        let _ = up.send(&buf[..n]);
    }
}

fn new_udp_flow(
    p: PortMapping,
    client: SocketAddr,
    host: &UdpSocket,
    netns: &Arc<OwnedFd>,
    flows: &Arc<Mutex<HashMap<SocketAddr, UdpSocket>>>,
) -> Option<UdpSocket> {
    let (tx, rx) = std::sync::mpsc::channel();
    let netns = netns.clone();
    let host = host.try_clone().ok()?;
    let flows2 = flows.clone();
    std::thread::Builder::new()
        .stack_size(PROXY_STACK)
        .spawn(move || {
            let made = enter_netns(&netns)
                .and_then(|()| UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)))
                .and_then(|s| {
                    s.connect((Ipv4Addr::LOCALHOST, p.container_port))
                        .map(|()| s)
                });
            let up = match made {
                Ok(s) => s,
                Err(_) => return,
            };
            let _ = up.set_read_timeout(Some(UDP_IDLE));
            if let (Ok(c), Ok(mut m)) = (up.try_clone(), flows2.lock()) {
                m.insert(client, c);
            }
            if let Ok(c) = up.try_clone() {
                let _ = tx.send(c);
            }
            let mut buf = vec![0u8; 65536];
            while let Ok(n) = up.recv(&mut buf) {
                let _ = host.send_to(&buf[..n], client);
            }
            if let Ok(mut m) = flows2.lock() {
                m.remove(&client);
            }
        })
        .ok()?;
    rx.recv().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pm(ip: &str, h: u16, c: u16, protocol: Protocol) -> PortMapping {
        PortMapping {
            host_ip: ip.parse().unwrap(),
            host_port: h,
            container_port: c,
            protocol,
        }
    }

    #[test]
    fn parses_docker_forms() {
        assert_eq!(
            parse_port_spec("5000:5000").unwrap(),
            pm("0.0.0.0", 5000, 5000, Protocol::Tcp)
        );
        assert_eq!(
            parse_port_spec("127.0.0.1:8080:80").unwrap(),
            pm("127.0.0.1", 8080, 80, Protocol::Tcp)
        );
        assert_eq!(
            parse_port_spec("53:53/udp").unwrap(),
            pm("0.0.0.0", 53, 53, Protocol::Udp)
        );
        assert_eq!(
            parse_port_spec("[::1]:8080:80/tcp").unwrap(),
            pm("::1", 8080, 80, Protocol::Tcp)
        );
        assert_eq!(
            parse_port_spec(":81:80").unwrap(),
            pm("0.0.0.0", 81, 80, Protocol::Tcp)
        );
    }

    #[test]
    fn rejects_bad_specs_with_reasons() {
        for (s, why) in [
            ("80", "host port is required"),
            ("a:80", "invalid host port"),
            ("80:0", "between 1 and 65535"),
            ("80:70000", "invalid container port"),
            ("1.2.3:80:80", "invalid IP"),
            ("80:80/sctp", "tcp or udp"),
            ("::1:80:80", "too many"),
            ("[::1:80:80", "unterminated"),
        ] {
            let e = parse_port_spec(s).unwrap_err().to_string();
            assert!(e.contains(why), "{s}: {e}");
            assert!(e.contains(s), "{s}: {e}");
        }
    }

    #[test]
    fn displays_like_docker_ps() {
        assert_eq!(
            pm("0.0.0.0", 5000, 5000, Protocol::Tcp).to_string(),
            "0.0.0.0:5000->5000/tcp"
        );
        assert_eq!(
            pm("::1", 53, 5353, Protocol::Udp).to_string(),
            "[::1]:53->5353/udp"
        );
    }

    /// The proxy against a server in our own network namespace (setns into
    /// the namespace we are already in needs CAP_SYS_ADMIN: root only).
    fn own_netns() -> Option<OwnedFd> {
        if !kiln_testkit::require_root("setns into its own network namespace") {
            return None;
        }
        Some(std::fs::File::open("/proc/self/ns/net").unwrap().into())
    }

    #[test]
    fn tcp_proxy_relays_both_ways_and_passes_on_close() {
        let Some(ns) = own_netns() else { return };
        let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
        let cport = upstream.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for s in upstream.incoming() {
                let mut s = s.unwrap();
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    s.read_to_end(&mut buf).unwrap();
                    buf.reverse();
                    s.write_all(&buf).unwrap();
                });
            }
        });
        let bound = bind_all(&[pm("127.0.0.1", 0, cport, Protocol::Tcp)]).unwrap();
        let hport = match &bound[0] {
            Bound::Tcp(_, l) => l.local_addr().unwrap().port(),
            Bound::Udp(..) => unreachable!(),
        };
        let handle = serve(bound, ns);
        let clients: Vec<_> = (0..20)
            .map(|i| {
                std::thread::spawn(move || {
                    let mut c = TcpStream::connect(("127.0.0.1", hport)).unwrap();
                    c.write_all(format!("abc{i}").as_bytes()).unwrap();
                    // Our half-close reaches the server, its close reaches us.
                    c.shutdown(Shutdown::Write).unwrap();
                    let mut out = String::new();
                    c.read_to_string(&mut out).unwrap();
                    assert_eq!(
                        out,
                        format!("{}cba", i.to_string().chars().rev().collect::<String>())
                    );
                })
            })
            .collect();
        for c in clients {
            c.join().unwrap();
        }
        handle.shutdown();
    }

    #[test]
    fn tcp_proxy_falls_back_to_the_ipv6_loopback() {
        let Some(ns) = own_netns() else { return };
        let bound = TcpListener::bind("[::1]:0");
        if !kiln_testkit::require(bound.is_ok(), "no IPv6 loopback") {
            return;
        }
        let upstream = bound.expect("checked");
        let cport = upstream.local_addr().unwrap().port();
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = upstream.accept() {
                s.write_all(b"v6").unwrap();
            }
        });
        let bound = bind_all(&[pm("127.0.0.1", 0, cport, Protocol::Tcp)]).unwrap();
        let hport = match &bound[0] {
            Bound::Tcp(_, l) => l.local_addr().unwrap().port(),
            Bound::Udp(..) => unreachable!(),
        };
        let handle = serve(bound, ns);
        let mut c = TcpStream::connect(("127.0.0.1", hport)).unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        assert_eq!(out, "v6");
        handle.shutdown();
    }

    #[test]
    fn udp_proxy_relays_datagrams_per_client() {
        let Some(ns) = own_netns() else { return };
        let upstream = UdpSocket::bind("127.0.0.1:0").unwrap();
        let cport = upstream.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = upstream.recv_from(&mut buf) {
                let mut r = buf[..n].to_vec();
                r.reverse();
                upstream.send_to(&r, from).unwrap();
            }
        });
        let bound = bind_all(&[pm("127.0.0.1", 0, cport, Protocol::Udp)]).unwrap();
        let hport = match &bound[0] {
            Bound::Udp(_, s) => s.local_addr().unwrap().port(),
            Bound::Tcp(..) => unreachable!(),
        };
        let handle = serve(bound, ns);
        for word in ["hello", "world"] {
            let c = UdpSocket::bind("127.0.0.1:0").unwrap();
            c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            c.send_to(word.as_bytes(), ("127.0.0.1", hport)).unwrap();
            let mut buf = [0u8; 100];
            let (n, _) = c.recv_from(&mut buf).unwrap();
            let want: String = word.chars().rev().collect();
            assert_eq!(&buf[..n], want.as_bytes());
        }
        handle.shutdown();
    }

    #[test]
    fn a_low_port_rootless_names_the_sysctl_and_a_port_that_works() {
        let r = unprivileged_port_reason(80, 5000);
        assert!(r.contains("net.ipv4.ip_unprivileged_port_start"), "{r}");
        assert!(r.contains("(-p 8080:5000)") || r.contains(":5000)"), "{r}");
        assert!(r.contains("ip_unprivileged_port_start=80)"), "{r}");
    }

    #[test]
    fn port_in_use_is_a_clear_error() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let e = bind_all(&[pm("127.0.0.1", port, 80, Protocol::Tcp)])
            .err()
            .unwrap();
        assert_eq!(
            e.to_string(),
            format!("port {port} is already in use on 127.0.0.1")
        );
    }
}
