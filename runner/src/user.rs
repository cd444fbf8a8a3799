//! USER resolution from the container's own `/etc/passwd` and `/etc/group`
//! (read as files, never through the host's NSS), with Docker's rules.

/// The identity the container process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups: every group that lists the user as a member.
    pub groups: Vec<u32>,
    /// HOME from passwd, "/" when the user has no entry.
    pub home: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error("unable to find user {0}: no matching entries in passwd file")]
    NoUser(String),
    #[error("unable to find group {0}: no matching entries in group file")]
    NoGroup(String),
    #[error("invalid user spec {0:?}")]
    Invalid(String),
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry<'_>> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            Some(PasswdEntry {
                name: f[0],
                uid: f[2].trim().parse().ok()?,
                gid: f[3].trim().parse().ok()?,
                home: f.get(5).copied().unwrap_or(""),
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry<'_>> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 3 {
                return None;
            }
            Some(GroupEntry {
                name: f[0],
                gid: f[2].trim().parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// Resolve `spec` ("name", "uid", "name:group", "uid:gid", or None for root)
/// against the contents of the container's passwd and group files (None when
/// the file does not exist). Mirrors moby's `GetExecUser`.
pub fn resolve_user(
    spec: Option<&str>,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<ExecUser, UserError> {
    let spec = spec.unwrap_or("").trim();
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user_part = if user_part.is_empty() { "0" } else { user_part };
    let pw = passwd.map(parse_passwd).unwrap_or_default();
    let gr = group.map(parse_group).unwrap_or_default();

    let numeric_uid = user_part.parse::<u32>().ok();
    let entry = match numeric_uid {
        Some(uid) => pw.iter().find(|e| e.uid == uid),
        None => {
            if user_part.contains(|c: char| c.is_whitespace() || c == '/') {
                return Err(UserError::Invalid(spec.to_string()));
            }
            Some(
                pw.iter()
                    .find(|e| e.name == user_part)
                    .ok_or_else(|| UserError::NoUser(user_part.to_string()))?,
            )
        }
    };
    let uid = match (numeric_uid, entry) {
        (Some(u), _) => u,
        (None, Some(e)) => e.uid,
        (None, None) => return Err(UserError::NoUser(user_part.to_string())),
    };
    let mut gid = entry.map(|e| e.gid).unwrap_or(0);
    let home = entry
        .map(|e| e.home)
        .filter(|h| !h.is_empty())
        .unwrap_or("/")
        .to_string();

    if let Some(g) = group_part {
        if g.is_empty() {
            return Err(UserError::Invalid(spec.to_string()));
        }
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => gr
                .iter()
                .find(|e| e.name == g)
                .map(|e| e.gid)
                .ok_or_else(|| UserError::NoGroup(g.to_string()))?,
        };
    }

    let mut groups: Vec<u32> = Vec::new();
    if let Some(e) = entry {
        for g in &gr {
            if g.members.contains(&e.name) && !groups.contains(&g.gid) {
                groups.push(g.gid);
            }
        }
    }
    Ok(ExecUser {
        uid,
        gid,
        groups,
        home,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PW: &str = "root:x:0:0:root:/root:/bin/sh\n\
        # comment\n\
        daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
        app:x:1000:1000:App:/home/app:/bin/sh\n\
        nohome:x:1001:1001::::\n\
        broken line\n";
    const GR: &str = "root:x:0:\nwheel:x:10:app,daemon\napp:x:1000:\nstaff:x:50: app \n";

    #[test]
    fn root_by_default() {
        let u = resolve_user(None, Some(PW), Some(GR)).unwrap();
        assert_eq!(
            u,
            ExecUser {
                uid: 0,
                gid: 0,
                groups: vec![],
                home: "/root".into()
            }
        );
    }

    #[test]
    fn by_name_with_supplementary_groups() {
        let u = resolve_user(Some("app"), Some(PW), Some(GR)).unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (1000, 1000, "/home/app"));
        assert_eq!(u.groups, vec![10, 50]);
    }

    #[test]
    fn numeric_uid_known_and_unknown() {
        let u = resolve_user(Some("1"), Some(PW), Some(GR)).unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (1, 1, "/usr/sbin"));
        assert_eq!(u.groups, vec![10]);
        let u = resolve_user(Some("4242"), Some(PW), Some(GR)).unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (4242, 0, "/"));
        assert!(u.groups.is_empty());
    }

    #[test]
    fn user_and_group_forms() {
        let u = resolve_user(Some("app:wheel"), Some(PW), Some(GR)).unwrap();
        assert_eq!((u.uid, u.gid), (1000, 10));
        let u = resolve_user(Some("1000:7"), Some(PW), Some(GR)).unwrap();
        assert_eq!((u.uid, u.gid), (1000, 7));
        let u = resolve_user(Some("123:456"), None, None).unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (123, 456, "/"));
    }

    #[test]
    fn errors() {
        assert_eq!(
            resolve_user(Some("ghost"), Some(PW), Some(GR)),
            Err(UserError::NoUser("ghost".into()))
        );
        assert_eq!(
            resolve_user(Some("app:ghosts"), Some(PW), Some(GR)),
            Err(UserError::NoGroup("ghosts".into()))
        );
        assert_eq!(
            resolve_user(Some("app"), None, None),
            Err(UserError::NoUser("app".into()))
        );
        assert!(matches!(
            resolve_user(Some("app:"), Some(PW), Some(GR)),
            Err(UserError::Invalid(_))
        ));
    }

    #[test]
    fn empty_home_falls_back_to_root_dir() {
        let u = resolve_user(Some("nohome"), Some(PW), Some(GR)).unwrap();
        assert_eq!(u.home, "/");
    }
}
