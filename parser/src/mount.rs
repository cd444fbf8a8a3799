//! `RUN --mount=...` specifications (BuildKit's `commands_runmount.go`).

use serde::Serialize;

use crate::error::suggest;

/// How a cache mount is shared between concurrent builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Sharing {
    Shared,
    Private,
    Locked,
}

/// A typed `RUN --mount`. Option values are raw: variables are not
/// expanded here (see [`parse_mount_with`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Mount {
    Bind {
        target: String,
        source: Option<String>,
        from: Option<String>,
        readwrite: bool,
    },
    Cache {
        target: String,
        id: Option<String>,
        sharing: Sharing,
        from: Option<String>,
        source: Option<String>,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        readonly: bool,
    },
    Tmpfs {
        target: String,
        size: Option<u64>,
    },
    Secret {
        /// `id=`, or `source=`/`src=` (BuildKit treats them as the same).
        id: Option<String>,
        target: Option<String>,
        env: Option<String>,
        required: bool,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
    },
    Ssh {
        id: Option<String>,
        target: Option<String>,
        required: bool,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
    },
}

/// An invalid mount specification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct MountError {
    pub message: String,
    pub hint: Option<String>,
}

fn err(message: impl Into<String>) -> MountError {
    MountError {
        message: message.into(),
        hint: None,
    }
}

const KEYS: [&str; 19] = [
    "type",
    "from",
    "source",
    "target",
    "readonly",
    "id",
    "sharing",
    "required",
    "mode",
    "uid",
    "gid",
    "src",
    "dst",
    "destination",
    "ro",
    "rw",
    "readwrite",
    "size",
    "env",
];

/// Reads one CSV record the way Go's `encoding/csv` does with default
/// settings: `,` separates fields, a field that starts with `"` is quoted
/// (`""` inside is a literal quote), a `"` anywhere else is an error.
fn read_csv_record(s: &str) -> Result<Vec<String>, String> {
    if s.is_empty() {
        return Err("EOF".into());
    }
    let chars: Vec<char> = s.chars().collect();
    let mut fields = Vec::new();
    let mut i = 0;
    loop {
        let mut field = String::new();
        if chars.get(i) == Some(&'"') {
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err("extraneous or missing \" in quoted-field".into()),
                    Some('"') => match chars.get(i + 1) {
                        Some('"') => {
                            field.push('"');
                            i += 2;
                        }
                        Some(',') | None => {
                            i += 1;
                            break;
                        }
                        Some(_) => return Err("extraneous or missing \" in quoted-field".into()),
                    },
                    Some(&c) => {
                        field.push(c);
                        i += 1;
                    }
                }
            }
        } else {
            while let Some(&c) = chars.get(i) {
                if c == ',' {
                    break;
                }
                if c == '"' {
                    return Err("bare \" in non-quoted-field".into());
                }
                field.push(c);
                i += 1;
            }
        }
        fields.push(field);
        match chars.get(i) {
            Some(',') => i += 1,
            _ => return Ok(fields),
        }
    }
}

fn parse_bool(key: &str, v: &str) -> Result<bool, MountError> {
    // Go's strconv.ParseBool.
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(err(format!("invalid value for {key}: {v}"))),
    }
}

fn parse_u32(key: &str, v: &str, radix: u32) -> Result<Option<u32>, MountError> {
    if v.contains('$') {
        // Left for the builder to expand (see `parse_mount_with`).
        return Ok(None);
    }
    u32::from_str_radix(v, radix)
        .map(Some)
        .map_err(|_| err(format!("invalid value {v} for {key}")))
}

/// The largest uid or gid (runc's, as for USER): 4294967295 would reach
/// chown as -1, "leave unchanged", and the mount would stay root's.
const MAX_ID: u32 = (1 << 31) - 1;

/// A mount's `uid=`/`gid=`: decimal, 0 to [`MAX_ID`].
fn parse_id(key: &str, v: &str) -> Result<Option<u32>, MountError> {
    let range = || {
        err(format!(
            "invalid value {v} for {key}: uids and gids must be in range 0-{MAX_ID}"
        ))
    };
    match parse_u32(key, v, 10) {
        Ok(Some(n)) if n > MAX_ID => Err(range()),
        // All digits but past u32: out of range too, not just "invalid".
        Err(_) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => Err(range()),
        r => r,
    }
}

/// go-units `RAMInBytes`: `1024`, `64k`, `64m`, `1.5g`, `1gb`, `2TiB`...
/// (binary multiples, case-insensitive suffix).
fn parse_size(v: &str) -> Result<Option<u64>, MountError> {
    if v.contains('$') {
        return Ok(None);
    }
    let bad = || err(format!("invalid size: '{v}'"));
    let num_end = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (num, unit) = v.split_at(num_end);
    let n: f64 = num.parse().map_err(|_| bad())?;
    let unit = unit.to_ascii_lowercase();
    let unit = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b'))
        .unwrap_or(&unit);
    let mul: u64 = match unit {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        "p" => 1 << 50,
        _ => return Err(bad()),
    };
    let bytes = n * mul as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(Some(bytes as u64))
}

/// Parses a `--mount` value with raw (unexpanded) option values. A numeric
/// option (`mode`, `uid`, `gid`, `size`) that contains a variable is left
/// `None`; use [`parse_mount_with`] with an expander to resolve it.
pub fn parse_mount(spec: &str) -> Result<Mount, MountError> {
    // As BuildKit's parse-time pass: `from` names a stage or image when the
    // build is planned, so a variable there (anything after a `$` but a
    // trailing one) cannot be resolved; BuildKit refuses it with this text.
    if let Ok(fields) = read_csv_record(spec) {
        for f in &fields {
            if let Some((k, v)) = f.split_once('=') {
                let dollar = v.find('$');
                if k.eq_ignore_ascii_case("from") && dollar.is_some_and(|i| i + 1 != v.len()) {
                    return Err(MountError {
                        message: "'from' doesn't support variable expansion, define alias stage instead"
                            .into(),
                        hint: Some(
                            "name the stage with an ARG-free alias: FROM ${IMG} AS base, then --mount=from=base"
                                .into(),
                        ),
                    });
                }
            }
        }
    }
    parse_mount_with(spec, |v| Ok(v.to_string()))
}

/// Parses a `--mount` value, passing every option value through `expand`
/// first (BuildKit expands mount options with the build's variables).
pub fn parse_mount_with(
    spec: &str,
    mut expand: impl FnMut(&str) -> Result<String, String>,
) -> Result<Mount, MountError> {
    let fields = read_csv_record(spec).map_err(|e| MountError {
        message: format!("failed to parse csv mounts: {e}"),
        hint: Some("write --mount=type=cache,target=/path (comma-separated key=value, double quotes around values with commas)".into()),
    })?;
    let mut f = Fields::default();
    for field in fields {
        match field.split_once('=') {
            Some((k, v)) => f.set(&k.to_ascii_lowercase(), expand(v).map_err(err)?, &field)?,
            None => f.flag(&field.to_ascii_lowercase(), &field)?,
        }
    }
    f.check()?;
    f.into_mount()
}

/// The fields of one `--mount`, as they are read (in order: a later
/// `type=` changes what an earlier `required` means, as in BuildKit).
struct Fields {
    typ: String,
    from: Option<String>,
    source: Option<String>,
    target: Option<String>,
    readonly: bool,
    /// No `ro`/`rw` given: the type's default applies.
    ro_auto: bool,
    id: Option<String>,
    sharing: Option<Sharing>,
    required: bool,
    mode: Option<Option<u32>>,
    uid: Option<Option<u32>>,
    gid: Option<Option<u32>>,
    size: Option<Option<u64>>,
    env: Option<String>,
}

impl Default for Fields {
    fn default() -> Self {
        Fields {
            typ: "bind".to_string(),
            from: None,
            source: None,
            target: None,
            readonly: false,
            ro_auto: true,
            id: None,
            sharing: None,
            required: false,
            mode: None,
            uid: None,
            gid: None,
            size: None,
            env: None,
        }
    }
}

impl Fields {
    /// A key without `=value`.
    fn flag(&mut self, key: &str, field: &str) -> Result<(), MountError> {
        match key {
            "readonly" | "ro" => {
                self.readonly = true;
                self.ro_auto = false;
            }
            "readwrite" | "rw" => {
                self.readonly = false;
                self.ro_auto = false;
            }
            "required" if self.typ == "secret" || self.typ == "ssh" => self.required = true,
            "required" => {
                return Err(err(format!(
                    "unexpected key '{key}' for mount type '{}'",
                    self.typ
                )))
            }
            _ => {
                return Err(err(format!(
                    "invalid field '{field}' must be a key=value pair"
                )))
            }
        }
        Ok(())
    }

    /// `key=value`, the value already expanded.
    fn set(&mut self, key: &str, value: String, field: &str) -> Result<(), MountError> {
        match key {
            "type" => self.typ = mount_type(&value)?,
            "from" => self.from = Some(value),
            "source" | "src" => self.source = Some(value),
            "target" | "dst" | "destination" => self.target = Some(value),
            "readonly" | "ro" => {
                self.readonly = parse_bool(key, &value)?;
                self.ro_auto = false;
            }
            "readwrite" | "rw" => {
                self.readonly = !parse_bool(key, &value)?;
                self.ro_auto = false;
            }
            "required" => {
                if self.typ != "secret" && self.typ != "ssh" {
                    return Err(err(format!(
                        "unexpected key '{key}' for mount type '{}'",
                        self.typ
                    )));
                }
                self.required = parse_bool(key, &value)?;
            }
            "id" => self.id = Some(value),
            "sharing" => self.sharing = Some(sharing(&value)?),
            "mode" => self.mode = Some(parse_u32("mode", &value, 8)?),
            "uid" => self.uid = Some(parse_id("uid", &value)?),
            "gid" => self.gid = Some(parse_id("gid", &value)?),
            "size" => self.size = Some(parse_size(&value)?),
            "env" => self.env = Some(value),
            _ => {
                return Err(MountError {
                    message: format!("unexpected key '{key}' in '{field}'"),
                    hint: suggest(key, &KEYS).map(|s| format!("did you mean {s}?")),
                })
            }
        }
        Ok(())
    }

    /// Fields the type does not take; the type's read-only default.
    fn check(&mut self) -> Result<(), MountError> {
        let typ = self.typ.as_str();
        let file_info_allowed = matches!(typ, "secret" | "ssh" | "cache");
        for (name, set) in [
            ("mode", self.mode.is_some()),
            ("uid", self.uid.is_some()),
            ("gid", self.gid.is_some()),
        ] {
            if set && !file_info_allowed {
                return Err(err(format!("{name} not allowed for \"{typ}\" type mounts")));
            }
        }
        if self.size.is_some() && typ != "tmpfs" {
            return Err(err(format!("size not allowed for \"{typ}\" type mounts")));
        }
        if self.env.is_some() && typ != "secret" {
            return Err(err(format!("env not allowed for \"{typ}\" type mounts")));
        }
        if self.ro_auto {
            self.readonly = !(typ == "cache" || typ == "tmpfs");
        }
        if self.sharing.is_some() && typ != "cache" {
            return Err(err(format!("invalid cache sharing set for {typ} mount")));
        }
        Ok(())
    }

    fn target(&mut self) -> Result<String, MountError> {
        let typ = &self.typ;
        self.target
            .take()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| MountError {
                message: format!("mount target is required for {typ} mounts"),
                hint: Some(format!("add target=/path: --mount=type={typ},target=/path")),
            })
    }

    fn into_mount(mut self) -> Result<Mount, MountError> {
        let (mode, uid, gid) = (self.mode.flatten(), self.uid.flatten(), self.gid.flatten());
        Ok(match self.typ.as_str() {
            "bind" => Mount::Bind {
                target: self.target()?,
                source: self.source,
                from: self.from,
                readwrite: !self.readonly,
            },
            "cache" => Mount::Cache {
                target: self.target()?,
                id: self.id,
                sharing: self.sharing.unwrap_or(Sharing::Shared),
                from: self.from,
                source: self.source,
                mode,
                uid,
                gid,
                readonly: self.readonly,
            },
            "tmpfs" => Mount::Tmpfs {
                target: self.target()?,
                size: self.size.flatten(),
            },
            "secret" => {
                if self.from.is_some() {
                    return Err(err("secret mount should not have a from"));
                }
                if self.source.is_none() && self.target.is_none() && self.id.is_none() {
                    return Err(MountError {
                        message: "invalid secret mount. one of source, target required".into(),
                        hint: Some(
                            "--mount=type=secret,id=mysecret[,target=/path][,env=VAR]".into(),
                        ),
                    });
                }
                if self.source.is_some() && self.id.is_some() {
                    return Err(err("both source and id can't be set"));
                }
                Mount::Secret {
                    id: self.id.or(self.source),
                    target: self.target,
                    env: self.env,
                    required: self.required,
                    mode,
                    uid,
                    gid,
                }
            }
            _ => {
                if self.from.is_some() || self.source.is_some() {
                    return Err(err("ssh mount should not have a from or source"));
                }
                Mount::Ssh {
                    id: self.id,
                    target: self.target,
                    required: self.required,
                    mode,
                    uid,
                    gid,
                }
            }
        })
    }
}

fn mount_type(value: &str) -> Result<String, MountError> {
    let t = value.to_ascii_lowercase();
    if !matches!(t.as_str(), "bind" | "cache" | "tmpfs" | "secret" | "ssh") {
        return Err(MountError {
            message: format!("unsupported mount type {}", crate::quote::go_quote(value)),
            hint: suggest(&t, &["bind", "cache", "tmpfs", "secret", "ssh"])
                .map(|s| format!("did you mean {s}?")),
        });
    }
    Ok(t)
}

fn sharing(value: &str) -> Result<Sharing, MountError> {
    match value.to_ascii_lowercase().as_str() {
        "shared" => Ok(Sharing::Shared),
        "private" => Ok(Sharing::Private),
        "locked" => Ok(Sharing::Locked),
        _ => Err(MountError {
            message: format!(
                "unsupported sharing value {}",
                crate::quote::go_quote(value)
            ),
            hint: Some("use sharing=shared, private or locked".into()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv() {
        assert_eq!(read_csv_record("a,b=c").unwrap(), ["a", "b=c"]);
        assert_eq!(read_csv_record("\"a,b\",c").unwrap(), ["a,b", "c"]);
        assert_eq!(read_csv_record("\"a\"\"b\"").unwrap(), ["a\"b"]);
        assert!(read_csv_record("a\"b").is_err());
        assert!(read_csv_record("\"ab").is_err());
        assert_eq!(read_csv_record("a,").unwrap(), ["a", ""]);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024").unwrap(), Some(1024));
        assert_eq!(parse_size("64m").unwrap(), Some(64 << 20));
        assert_eq!(parse_size("1.5GiB").unwrap(), Some(3 << 29));
        assert!(parse_size("12x").is_err());
    }
}
