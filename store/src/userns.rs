//! Which user namespace the process is in. Rootless kiln runs as root of a
//! namespace of its own (kiln-runner's `userns` puts it there); the store
//! needs to know, because its default root is the user's, overlay's
//! xattrs are `user.overlay.*` there, and a layer's owner outside the map
//! cannot be given.

use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserNs {
    /// The machine's own: IDs are host IDs.
    Initial,
    /// A namespace of its own with `mapped` IDs (1: a single-ID map).
    Nested { mapped: u64 },
}

impl UserNs {
    /// Cached: a process does not change namespaces after `main` starts.
    pub fn current() -> UserNs {
        static NS: OnceLock<UserNs> = OnceLock::new();
        *NS.get_or_init(|| {
            std::fs::read_to_string("/proc/self/uid_map")
                .map(|t| UserNs::from_map(&t))
                .unwrap_or(UserNs::Initial)
        })
    }

    pub(crate) fn from_map(text: &str) -> UserNs {
        let mut mapped = 0u64;
        let mut identity = false;
        for l in text.lines() {
            let f: Vec<u64> = l
                .split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect();
            if let [inside, outside, count] = f[..] {
                identity |= inside == 0 && outside == 0 && count == u64::from(u32::MAX);
                mapped += count;
            }
        }
        if identity || mapped == 0 {
            UserNs::Initial
        } else {
            UserNs::Nested { mapped }
        }
    }

    /// Root of the machine, not of a namespace.
    pub fn is_real_root() -> bool {
        rustix::process::geteuid().is_root() && UserNs::current() == UserNs::Initial
    }

    /// The prefix of overlayfs' own xattrs in the snapshots this process
    /// makes and reads: a namespace mounts overlay with `userxattr`.
    pub fn overlay_xattr_prefix() -> &'static str {
        match UserNs::current() {
            UserNs::Initial => "trusted.overlay.",
            UserNs::Nested { .. } => "user.overlay.",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_are_read() {
        assert_eq!(UserNs::from_map("0 0 4294967295\n"), UserNs::Initial);
        assert_eq!(
            UserNs::from_map("0 1001 1\n1 200000 65536\n"),
            UserNs::Nested { mapped: 65537 }
        );
        assert_eq!(UserNs::from_map("0 1001 1\n"), UserNs::Nested { mapped: 1 });
    }
}
