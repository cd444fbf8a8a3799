//! One route over rtnetlink: `prohibit 169.254.0.0/16` in the current network
//! namespace, so the link-local range (and the cloud metadata endpoint
//! 169.254.169.254 on it) is refused inside the namespace instead of being
//! relayed to the host's network by the user-mode stack.

use std::io;

/// Add `prohibit <addr>/<prefix>` to the main table of the current netns.
pub(crate) fn prohibit_v4(addr: [u8; 4], prefix: u8) -> io::Result<()> {
    let msg = new_route_msg(addr, prefix);
    // SAFETY: plain socket calls on a buffer we own; the fd is closed below.
    unsafe {
        let fd = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        );
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let r = exchange(fd, &msg);
        libc::close(fd);
        r
    }
}

/// RTM_NEWROUTE: nlmsghdr, rtmsg, one RTA_DST attribute.
fn new_route_msg(addr: [u8; 4], prefix: u8) -> Vec<u8> {
    let len: u32 = 16 + 12 + 8;
    let flags =
        (libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16;
    let mut m = Vec::with_capacity(len as usize);
    m.extend_from_slice(&len.to_ne_bytes());
    m.extend_from_slice(&libc::RTM_NEWROUTE.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes()); // seq
    m.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel assigns
    m.extend_from_slice(&[
        libc::AF_INET as u8,
        prefix,
        0, // src_len
        0, // tos
        libc::RT_TABLE_MAIN,
        libc::RTPROT_BOOT,
        libc::RT_SCOPE_UNIVERSE,
        libc::RTN_PROHIBIT,
    ]);
    m.extend_from_slice(&0u32.to_ne_bytes()); // rtm_flags
    m.extend_from_slice(&8u16.to_ne_bytes());
    m.extend_from_slice(&libc::RTA_DST.to_ne_bytes());
    m.extend_from_slice(&addr);
    m
}

/// Send `msg` and read the kernel's ack (an NLMSG_ERROR with errno 0).
unsafe fn exchange(fd: i32, msg: &[u8]) -> io::Result<()> {
    let mut sa: libc::sockaddr_nl = std::mem::zeroed();
    sa.nl_family = libc::AF_NETLINK as u16;
    let sent = libc::sendto(
        fd,
        msg.as_ptr().cast(),
        msg.len(),
        0,
        (&sa as *const libc::sockaddr_nl).cast(),
        std::mem::size_of::<libc::sockaddr_nl>() as u32,
    );
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = [0u8; 512];
    let n = libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0);
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    ack_errno(&buf[..n as usize])
}

fn ack_errno(reply: &[u8]) -> io::Result<()> {
    if reply.len() < 20 {
        return Err(io::Error::other("short netlink reply"));
    }
    let kind = u16::from_ne_bytes([reply[4], reply[5]]);
    if kind != libc::NLMSG_ERROR as u16 {
        return Err(io::Error::other(format!(
            "unexpected netlink reply type {kind}"
        )));
    }
    let errno = i32::from_ne_bytes([reply[16], reply[17], reply[18], reply[19]]);
    match errno {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(-e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_is_what_rtnetlink_expects() {
        let m = new_route_msg([169, 254, 0, 0], 16);
        assert_eq!(m.len(), 36);
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()), 36);
        assert_eq!(&m[16..24], &[2, 16, 0, 0, 254, 3, 0, 8]);
        assert_eq!(&m[32..36], &[169, 254, 0, 0]);
    }

    #[test]
    fn acks_and_errors_are_read() {
        let mut ack = vec![0u8; 36];
        ack[4..6].copy_from_slice(&(libc::NLMSG_ERROR as u16).to_ne_bytes());
        assert!(ack_errno(&ack).is_ok());
        ack[16..20].copy_from_slice(&(-libc::EEXIST).to_ne_bytes());
        assert_eq!(
            ack_errno(&ack).unwrap_err().raw_os_error(),
            Some(libc::EEXIST)
        );
        assert!(ack_errno(&ack[..8]).is_err());
    }
}
