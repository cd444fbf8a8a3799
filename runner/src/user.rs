//! USER resolution from the container's own `/etc/passwd` and `/etc/group`
//! (read as files, never through the host's NSS), with Docker's rules.
//!
//! IDs follow runc's range, 0 to 2^31-1: a numeric user or group outside it
//! is refused rather than handed to `setresuid`, where 4294967295 (-1) would
//! mean "leave unchanged" and the process would stay root.

/// The largest user or group ID a container may use (runc's, for 32-bit
/// compatibility).
pub const MAX_ID: u32 = (1 << 31) - 1;

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
    /// A numeric ID in the spec is negative or above [`MAX_ID`].
    #[error("invalid user {what}: uids and gids must be in range 0-{MAX_ID}")]
    Range { what: String },
    /// The selected entry of the image's passwd or group file has an ID
    /// that is not a number in range.
    #[error("{file} line {line}: {what} {value:?} of {name:?} is not a valid id: uids and gids must be in range 0-{MAX_ID}")]
    BadEntry {
        file: &'static str,
        line: usize,
        what: &'static str,
        value: String,
        name: String,
    },
}

/// How a user or group field of a spec reads: a name, or a number (in range
/// or not). Like runc, anything `[+-]?[0-9]+` is a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdField<'a> {
    Name(&'a str),
    Id(u32),
    OutOfRange,
}

/// Classifies one field of a user spec.
pub fn parse_id_field(s: &str) -> IdField<'_> {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return IdField::Name(s);
    }
    match digits.parse::<u64>() {
        Ok(n) if !s.starts_with('-') && n <= u64::from(MAX_ID) => IdField::Id(n as u32),
        Ok(0) => IdField::Id(0),
        _ => IdField::OutOfRange,
    }
}

/// Checks the numeric parts of a spec ("uid", "name:gid", ...) without any
/// passwd file: what can be refused before a container starts.
pub fn check_spec(spec: &str) -> Result<(), UserError> {
    for part in spec.split(':') {
        if parse_id_field(part.trim()) == IdField::OutOfRange {
            return Err(out_of_range(spec, part.trim()));
        }
    }
    Ok(())
}

fn out_of_range(spec: &str, id: &str) -> UserError {
    UserError::Range {
        what: range_subject(spec, id),
    }
}

/// `"4294967295"`, or `"app:4294967295" (4294967295)` when the bad ID is
/// only part of the spec.
pub fn range_subject(spec: &str, id: &str) -> String {
    if spec.trim() == id {
        format!("{id:?}")
    } else {
        format!("{spec:?} ({id})")
    }
}

/// An ID field of a passwd or group line, checked only when the entry is used.
fn entry_id(
    raw: &str,
    file: &'static str,
    line: usize,
    what: &'static str,
    name: &str,
) -> Result<u32, UserError> {
    match parse_id_field(raw.trim()) {
        IdField::Id(n) => Ok(n),
        _ => Err(UserError::BadEntry {
            file,
            line,
            what,
            value: raw.to_string(),
            name: name.to_string(),
        }),
    }
}

struct PasswdEntry<'a> {
    line: usize,
    name: &'a str,
    uid: &'a str,
    gid: &'a str,
    home: &'a str,
}

impl PasswdEntry<'_> {
    fn uid(&self) -> Result<u32, UserError> {
        entry_id(self.uid, "/etc/passwd", self.line, "uid", self.name)
    }
    fn gid(&self) -> Result<u32, UserError> {
        entry_id(self.gid, "/etc/passwd", self.line, "gid", self.name)
    }
}

struct GroupEntry<'a> {
    line: usize,
    name: &'a str,
    gid: &'a str,
    members: Vec<&'a str>,
}

impl GroupEntry<'_> {
    fn gid(&self) -> Result<u32, UserError> {
        entry_id(self.gid, "/etc/group", self.line, "gid", self.name)
    }
}

/// The non-comment lines of a colon-separated file with at least `min`
/// fields, numbered from 1.
fn records(text: &str, min: usize) -> impl Iterator<Item = (usize, Vec<&str>)> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|(i, l)| (i + 1, l.split(':').collect::<Vec<_>>()))
        .filter(move |(_, f)| f.len() >= min)
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry<'_>> {
    records(text, 4)
        .map(|(line, f)| PasswdEntry {
            line,
            name: f[0],
            uid: f[2],
            gid: f[3],
            home: f.get(5).copied().unwrap_or(""),
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry<'_>> {
    records(text, 3)
        .map(|(line, f)| GroupEntry {
            line,
            name: f[0],
            gid: f[2],
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
        .collect()
}

/// The uid of the first entry of `passwd` (a passwd file's text) named
/// `name`, None when no entry names it; an entry whose uid is not a number
/// in range is an error naming its line. For `--chown`, which needs only
/// the number.
pub fn passwd_uid(passwd: &str, name: &str) -> Result<Option<u32>, UserError> {
    parse_passwd(passwd)
        .iter()
        .find(|e| e.name == name)
        .map(PasswdEntry::uid)
        .transpose()
}

/// The uid and primary gid of the first entry of `passwd` named `name`,
/// as [`passwd_uid`] reads it (`--chown=USER` takes USER's primary group).
pub fn passwd_ids(passwd: &str, name: &str) -> Result<Option<(u32, u32)>, UserError> {
    parse_passwd(passwd)
        .iter()
        .find(|e| e.name == name)
        .map(|e| Ok((e.uid()?, e.gid()?)))
        .transpose()
}

/// The gid of the first entry of `group` (a group file's text) named
/// `name`, as [`passwd_uid`] reads passwd.
pub fn group_gid(group: &str, name: &str) -> Result<Option<u32>, UserError> {
    parse_group(group)
        .iter()
        .find(|e| e.name == name)
        .map(GroupEntry::gid)
        .transpose()
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
    check_spec(spec)?;
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user_part = if user_part.is_empty() { "0" } else { user_part };
    let pw = passwd.map(parse_passwd).unwrap_or_default();
    let gr = group.map(parse_group).unwrap_or_default();

    let (uid, entry) = match parse_id_field(user_part) {
        IdField::Id(uid) => {
            // Entries whose uid is not valid can never match a number.
            let e = pw.iter().find(|e| e.uid().ok() == Some(uid));
            (uid, e)
        }
        IdField::OutOfRange => return Err(out_of_range(spec, user_part)),
        IdField::Name(name) => {
            if name.contains(|c: char| c.is_whitespace() || c == '/') {
                return Err(UserError::Invalid(spec.to_string()));
            }
            let e = pw
                .iter()
                .find(|e| e.name == name)
                .ok_or_else(|| UserError::NoUser(name.to_string()))?;
            (e.uid()?, Some(e))
        }
    };
    let mut gid = match entry {
        Some(e) => e.gid()?,
        None => 0,
    };
    let home = entry
        .map(|e| e.home)
        .filter(|h| !h.is_empty())
        .unwrap_or("/")
        .to_string();

    if let Some(g) = group_part {
        gid = match parse_id_field(g) {
            IdField::Name("") => return Err(UserError::Invalid(spec.to_string())),
            IdField::Id(n) => n,
            IdField::OutOfRange => return Err(out_of_range(spec, g)),
            IdField::Name(name) => match gr.iter().find(|e| e.name == name) {
                Some(e) => e.gid()?,
                None => return Err(UserError::NoGroup(name.to_string())),
            },
        };
    }

    // The primary group is always a supplementary group too (the fix for
    // CVE-2023-25173 in containerd and moby, which BuildKit 0.11.4+ and
    // Docker 23+ carry: a process that drops its gid must not keep access
    // through groups it was never given). The groups that list the user
    // are added only when the spec names no group, as runc's GetExecUser
    // does.
    let mut groups: Vec<u32> = vec![gid];
    if let Some(e) = entry.filter(|_| group_part.is_none()) {
        for g in gr.iter().filter(|g| g.members.contains(&e.name)) {
            let gid = g.gid()?;
            if !groups.contains(&gid) {
                groups.push(gid);
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
    fn ids_by_name_for_chown() {
        assert_eq!(passwd_uid(PW, "app"), Ok(Some(1000)));
        assert_eq!(passwd_uid(PW, "ghost"), Ok(None));
        assert_eq!(passwd_uid(PW, "broken line"), Ok(None));
        assert_eq!(group_gid(GR, "wheel"), Ok(Some(10)));
        assert_eq!(group_gid(GR, "app"), Ok(Some(1000)));
        assert_eq!(group_gid(GR, "ghost"), Ok(None));
        let bad = passwd_uid("x:1\nweb:x:4294967296:1::/:\n", "web").unwrap_err();
        assert_eq!(
            bad.to_string(),
            format!("/etc/passwd line 2: uid \"4294967296\" of \"web\" is not a valid id: uids and gids must be in range 0-{MAX_ID}")
        );
        let bad = group_gid("# c\nweb:x:-5:\n", "web").unwrap_err();
        assert!(
            bad.to_string().starts_with("/etc/group line 2: gid \"-5\""),
            "{bad}"
        );
    }

    #[test]
    fn root_by_default() {
        let u = resolve_user(None, Some(PW), Some(GR)).unwrap();
        assert_eq!(
            u,
            ExecUser {
                uid: 0,
                gid: 0,
                groups: vec![0],
                home: "/root".into()
            }
        );
    }

    #[test]
    fn by_name_with_supplementary_groups() {
        let u = resolve_user(Some("app"), Some(PW), Some(GR)).unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (1000, 1000, "/home/app"));
        assert_eq!(u.groups, vec![1000, 10, 50]);
    }

    #[test]
    fn numeric_uid_known_and_unknown() {
        let u = resolve_user(Some("1"), Some(PW), Some(GR)).unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (1, 1, "/usr/sbin"));
        assert_eq!(u.groups, vec![1, 10]);
        let u = resolve_user(Some("4242"), Some(PW), Some(GR)).unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (4242, 0, "/"));
        assert_eq!(u.groups, vec![0]);
    }

    #[test]
    fn user_and_group_forms() {
        let u = resolve_user(Some("app:wheel"), Some(PW), Some(GR)).unwrap();
        assert_eq!((u.uid, u.gid), (1000, 10));
        // A named group replaces the memberships: only that group.
        assert_eq!(u.groups, vec![10]);
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
    fn id_fields_follow_runcs_range() {
        assert_eq!(parse_id_field("0"), IdField::Id(0));
        assert_eq!(parse_id_field("2147483647"), IdField::Id(MAX_ID));
        assert_eq!(parse_id_field("+12"), IdField::Id(12));
        assert_eq!(parse_id_field("-0"), IdField::Id(0));
        for bad in [
            "2147483648",
            "4294967295",
            "4294967296",
            "-1",
            "99999999999999999999999",
        ] {
            assert_eq!(parse_id_field(bad), IdField::OutOfRange, "{bad}");
        }
        for name in ["app", "12abc", "", "+", "-", "1.5"] {
            assert_eq!(parse_id_field(name), IdField::Name(name), "{name:?}");
        }
    }

    #[test]
    fn out_of_range_specs_are_refused_not_run_as_root() {
        for spec in ["4294967295", "2147483648", "-1", "app:4294967295", "0:-5"] {
            let err = resolve_user(Some(spec), Some(PW), Some(GR)).unwrap_err();
            assert!(matches!(err, UserError::Range { .. }), "{spec}: {err:?}");
            let msg = err.to_string();
            assert!(
                msg.contains("uids and gids must be in range 0-2147483647"),
                "{msg}"
            );
            assert!(check_spec(spec).is_err(), "{spec}");
        }
        let u = resolve_user(Some("2147483647:2147483647"), None, None).unwrap();
        assert_eq!((u.uid, u.gid), (MAX_ID, MAX_ID));
        assert!(check_spec("app:staff").is_ok());
        assert!(check_spec("2147483647").is_ok());
    }

    #[test]
    fn bad_passwd_entry_is_an_error_naming_file_and_line() {
        let pw = "root:x:0:0:root:/root:/bin/sh\n\
            big:x:4294967295:0::/:/bin/sh\n\
            junk:x:12ab:0::/:/bin/sh\n\
            badgid:x:5:3000000000::/:/bin/sh\n";
        let gr = "root:x:0:\nhuge:x:4294967295:root\n";
        let err = resolve_user(Some("big"), Some(pw), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/etc/passwd line 2: uid \"4294967295\" of \"big\" is not a valid id: \
             uids and gids must be in range 0-2147483647"
        );
        let err = resolve_user(Some("junk"), Some(pw), None).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("/etc/passwd line 3: uid \"12ab\""),
            "{err}"
        );
        let err = resolve_user(Some("badgid"), Some(pw), None).unwrap_err();
        assert!(
            err.to_string().starts_with("/etc/passwd line 4: gid"),
            "{err}"
        );
        let err = resolve_user(Some("5"), Some(pw), None).unwrap_err();
        assert!(
            err.to_string().starts_with("/etc/passwd line 4: gid"),
            "{err}"
        );
        // A bad entry not selected does no harm; a number never matches it.
        let u = resolve_user(Some("4242"), Some(pw), None).unwrap();
        assert_eq!((u.uid, u.gid), (4242, 0));
        // Groups: by name, and as a supplementary group of the user.
        let err = resolve_user(Some("0:huge"), Some(pw), Some(gr)).unwrap_err();
        assert!(
            err.to_string().starts_with("/etc/group line 2: gid"),
            "{err}"
        );
        let err = resolve_user(Some("root"), Some(pw), Some(gr)).unwrap_err();
        assert!(
            err.to_string().starts_with("/etc/group line 2: gid"),
            "{err}"
        );
    }

    #[test]
    fn empty_home_falls_back_to_root_dir() {
        let u = resolve_user(Some("nohome"), Some(PW), Some(GR)).unwrap();
        assert_eq!(u.home, "/");
    }
}
