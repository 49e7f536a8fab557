//! Who may connect: the peer's credentials from the kernel (`SO_PEERCRED`) against root, the
//! daemon's own user and the configured group (primary or supplementary, the latter read from
//! `/proc/<pid>/status`).

use std::os::unix::net::UnixStream;

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

/// The peer's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Process id.
    pub pid: i32,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
}

/// Reads the peer's credentials.
pub fn peer(stream: &UnixStream) -> std::io::Result<Peer> {
    let creds = getsockopt(stream, PeerCredentials).map_err(std::io::Error::from)?;
    Ok(Peer {
        pid: creds.pid(),
        uid: creds.uid(),
        gid: creds.gid(),
    })
}

/// The peer's supplementary groups (empty if its `/proc` entry cannot be read).
pub fn supplementary_groups(pid: i32) -> Vec<u32> {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    text.lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|groups| {
            groups
                .split_whitespace()
                .filter_map(|g| g.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The rule: root, the daemon's user, or a member of `group`.
pub fn allowed(
    peer: Peer,
    own_uid: u32,
    group: Option<u32>,
    groups: impl Fn() -> Vec<u32>,
) -> bool {
    if peer.uid == 0 || peer.uid == own_uid {
        return true;
    }
    match group {
        Some(gid) => peer.gid == gid || groups().contains(&gid),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_self_and_group_members_only() {
        let p = |uid, gid| Peer { pid: 1, uid, gid };
        let none = Vec::new;
        assert!(allowed(p(0, 0), 1000, None, none));
        assert!(allowed(p(1000, 5), 1000, None, none));
        assert!(!allowed(p(1001, 5), 1000, None, none));
        assert!(allowed(p(1001, 44), 1000, Some(44), none));
        assert!(!allowed(p(1001, 5), 1000, Some(44), none));
        assert!(allowed(p(1001, 5), 1000, Some(44), || vec![20, 44]));
    }

    #[test]
    fn reads_our_own_groups() {
        let own = supplementary_groups(std::process::id() as i32);
        let (a, b) = UnixStream::pair().unwrap();
        let me = peer(&a).unwrap();
        drop(b);
        assert_eq!(me.uid, nix::unistd::getuid().as_raw());
        assert_eq!(me.pid, std::process::id() as i32);
        // /proc lists the supplementary groups; reading them must not fail on Linux.
        assert_eq!(own, supplementary_groups(me.pid));
    }
}
