//! `run -v` and `run --mount` in docker's syntax, with docker's error
//! texts (checked against docker 20.10). Pure: what the flags ask for;
//! `cmd_volumes::resolve_mounts` turns it into the runner's mounts.

use std::path::PathBuf;

/// One mount a user asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountReq {
    /// A host path. `create`: `-v` makes a missing source directory (as
    /// docker does); `--mount` refuses it.
    Bind {
        source: PathBuf,
        target: String,
        readonly: bool,
        create: bool,
    },
    /// A named volume, or an anonymous one when `name` is None.
    Volume {
        name: Option<String>,
        target: String,
        readonly: bool,
        nocopy: bool,
    },
    Tmpfs {
        target: String,
        size: Option<u64>,
    },
}

impl MountReq {
    pub fn target(&self) -> &str {
        match self {
            MountReq::Bind { target, .. }
            | MountReq::Volume { target, .. }
            | MountReq::Tmpfs { target, .. } => target,
        }
    }
}

fn check_target(spec_err: &dyn Fn(String) -> String, kind: &str, t: &str) -> Result<(), String> {
    if !t.starts_with('/') {
        return Err(spec_err(format!(
            "invalid mount config for type \"{kind}\": invalid mount path: '{t}' mount path must be absolute"
        )));
    }
    if t.trim_end_matches('/').is_empty() {
        return Err(spec_err(format!(
            "invalid mount config for type \"{kind}\": invalid specification: destination can't be '/'"
        )));
    }
    Ok(())
}

/// `-v [SRC:]DST[:MODE]`.
pub fn parse_volume_flag(spec: &str) -> Result<MountReq, String> {
    let parts: Vec<&str> = spec.split(':').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(format!(
            "invalid spec: {spec}: empty section between colons"
        ));
    }
    if parts.len() > 3 {
        return Err(format!("invalid spec: {spec}: too many colons"));
    }
    let wrap = |m: String| format!("invalid volume specification: '{spec}': {m}");
    if parts.len() == 1 {
        check_target(&wrap, "volume", parts[0])?;
        return Ok(MountReq::Volume {
            name: None,
            target: parts[0].to_string(),
            readonly: false,
            nocopy: false,
        });
    }
    let (src, dst) = (parts[0], parts[1]);
    let mut readonly = false;
    let mut nocopy = false;
    if let Some(mode) = parts.get(2) {
        for m in mode.split(',') {
            match m {
                "ro" => readonly = true,
                "rw" => readonly = false,
                "nocopy" => nocopy = true,
                // SELinux labels and propagation: nothing to do on a host
                // without SELinux; kiln's binds are always rprivate.
                "z" | "Z" | "private" | "rprivate" => {}
                "shared" | "rshared" | "slave" | "rslave" => {
                    return Err(format!(
                    "-v {spec}: mount propagation {m} is not built yet (kiln's binds are rprivate)"
                ))
                }
                _ => return Err(format!("invalid mode: {mode}")),
            }
        }
    }
    if src.starts_with('/') {
        check_target(&wrap, "bind", dst)?;
        if nocopy {
            return Err(format!("invalid mode: {}", parts[2]));
        }
        return Ok(MountReq::Bind {
            source: PathBuf::from(src),
            target: dst.to_string(),
            readonly,
            create: true,
        });
    }
    kiln_store::check_volume_name(src)?;
    check_target(&wrap, "volume", dst)?;
    Ok(MountReq::Volume {
        name: Some(src.to_string()),
        target: dst.to_string(),
        readonly,
        nocopy,
    })
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" | "t" => Some(true),
        "0" | "false" | "f" => Some(false),
        _ => None,
    }
}

/// The fields of one `--mount` value, docker's CSV syntax.
#[derive(Default)]
struct Fields {
    kind: Option<String>,
    source: Option<String>,
    target: Option<String>,
    readonly: bool,
    nocopy: bool,
    size: Option<u64>,
    /// The first option of each family, for docker's "cannot mix" error.
    volume_opt: bool,
    bind_opt: bool,
    tmpfs_opt: bool,
}

fn read_fields(spec: &str) -> Result<Fields, String> {
    let mut f = Fields::default();
    for field in spec.split(',') {
        let (key, value) = match field.split_once('=') {
            Some((k, v)) => (k.to_ascii_lowercase(), Some(v)),
            None => (field.to_ascii_lowercase(), None),
        };
        let need =
            || value.ok_or_else(|| format!("invalid field '{field}' must be a key=value pair"));
        let boolean = |v: Option<&str>| match v {
            None => Ok(true),
            Some(v) => parse_bool(v).ok_or_else(|| format!("invalid value for {key}: {v}")),
        };
        match key.as_str() {
            "type" => f.kind = Some(need()?.to_string()),
            "source" | "src" => f.source = Some(need()?.to_string()),
            "target" | "dst" | "destination" => f.target = Some(need()?.to_string()),
            "readonly" | "ro" => f.readonly = boolean(value)?,
            "volume-nocopy" => {
                f.nocopy = boolean(value)?;
                f.volume_opt = true;
            }
            "consistency" => {
                need()?;
            }
            "bind-propagation" => {
                f.bind_opt = true;
                match need()? {
                    "rprivate" | "private" => {}
                    p => {
                        return Err(format!(
                            "bind-propagation={p} is not built yet (kiln's binds are rprivate)"
                        ))
                    }
                }
            }
            "tmpfs-size" => {
                let v = need()?;
                f.tmpfs_opt = true;
                let n = kiln_runner::cgroups::parse_memory(v)
                    .map_err(|_| format!("invalid value for tmpfs-size: {v}"))?;
                f.size = Some(n as u64);
            }
            "bind-nonrecursive" | "volume-label" | "volume-driver" | "volume-opt"
            | "tmpfs-mode" => {
                return Err(format!("{key} is not built yet in kiln"));
            }
            _ => {
                let Some(_) = value else {
                    return Err(format!("invalid field '{field}' must be a key=value pair"));
                };
                return Err(format!("unexpected key '{key}' in '{field}'"));
            }
        }
    }
    Ok(f)
}

/// `--mount type=bind|volume|tmpfs,source=...,target=...[,readonly]...`.
/// Errors docker gives while parsing the flag come as `invalid argument
/// ... for "--mount" flag`; those its daemon gives later come bare.
pub fn parse_mount_flag(spec: &str) -> Result<MountReq, String> {
    let flag_err = |m: String| format!("invalid argument \"{spec}\" for \"--mount\" flag: {m}");
    let f = read_fields(spec).map_err(flag_err)?;
    let kind = f.kind.clone().unwrap_or_else(|| "volume".into());
    let mix = |opt: &str| {
        flag_err(format!(
            "cannot mix '{opt}-*' options with mount type '{kind}'"
        ))
    };
    match kind.as_str() {
        "bind" if f.volume_opt => return Err(mix("volume")),
        "bind" | "volume" if f.tmpfs_opt => return Err(mix("tmpfs")),
        "volume" | "tmpfs" if f.bind_opt => return Err(mix("bind")),
        "tmpfs" if f.volume_opt => return Err(mix("volume")),
        _ => {}
    }
    let Some(target) = f.target.clone() else {
        return Err(flag_err("target is required".into()));
    };
    let plain = |m: String| m;
    match kind.as_str() {
        "bind" => {
            let Some(source) = f.source else {
                return Err(
                    "invalid mount config for type \"bind\": field Source must not be empty"
                        .to_string(),
                );
            };
            check_target(&plain, "bind", &target)?;
            if !source.starts_with('/') {
                return Err(format!(
                    "invalid mount config for type \"bind\": invalid mount path: '{source}' mount path must be absolute"
                ));
            }
            Ok(MountReq::Bind {
                source: PathBuf::from(source),
                target,
                readonly: f.readonly,
                create: false,
            })
        }
        "volume" => {
            if let Some(n) = &f.source {
                kiln_store::check_volume_name(n)?;
            }
            check_target(&plain, "volume", &target)?;
            Ok(MountReq::Volume {
                name: f.source,
                target,
                readonly: f.readonly,
                nocopy: f.nocopy,
            })
        }
        "tmpfs" => {
            if f.source.is_some() {
                return Err(
                    "invalid mount config for type \"tmpfs\": field Source must not be specified"
                        .into(),
                );
            }
            check_target(&plain, "tmpfs", &target)?;
            Ok(MountReq::Tmpfs {
                target,
                size: f.size,
            })
        }
        other => Err(format!(
            "invalid mount config for type \"{other}\": mount type unknown"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_flag_forms() {
        assert_eq!(
            parse_volume_flag("/src:/app:ro").unwrap(),
            MountReq::Bind {
                source: "/src".into(),
                target: "/app".into(),
                readonly: true,
                create: true
            }
        );
        assert_eq!(
            parse_volume_flag("data:/var/lib/db").unwrap(),
            MountReq::Volume {
                name: Some("data".into()),
                target: "/var/lib/db".into(),
                readonly: false,
                nocopy: false
            }
        );
        assert!(matches!(
            parse_volume_flag("/cache").unwrap(),
            MountReq::Volume { name: None, .. }
        ));
    }

    #[test]
    fn volume_flag_errors_are_dockers() {
        assert_eq!(
            parse_volume_flag("/tmp:/x:xyz").unwrap_err(),
            "invalid mode: xyz"
        );
        assert_eq!(
            parse_volume_flag(":/x").unwrap_err(),
            "invalid spec: :/x: empty section between colons"
        );
        assert_eq!(
            parse_volume_flag("/tmp:/x:ro:z").unwrap_err(),
            "invalid spec: /tmp:/x:ro:z: too many colons"
        );
        assert_eq!(
            parse_volume_flag("/tmp:rel").unwrap_err(),
            "invalid volume specification: '/tmp:rel': invalid mount config for type \"bind\": \
             invalid mount path: 'rel' mount path must be absolute"
        );
        assert_eq!(
            parse_volume_flag("/tmp:/").unwrap_err(),
            "invalid volume specification: '/tmp:/': invalid mount config for type \"bind\": \
             invalid specification: destination can't be '/'"
        );
        assert!(parse_volume_flag("a/b:/x")
            .unwrap_err()
            .starts_with("create a/b: \"a/b\" includes invalid characters"));
    }

    #[test]
    fn mount_flag_forms_and_errors() {
        assert_eq!(
            parse_mount_flag("type=bind,src=/h,dst=/c,readonly").unwrap(),
            MountReq::Bind {
                source: "/h".into(),
                target: "/c".into(),
                readonly: true,
                create: false
            }
        );
        assert_eq!(
            parse_mount_flag("type=tmpfs,target=/t,tmpfs-size=64m").unwrap(),
            MountReq::Tmpfs {
                target: "/t".into(),
                size: Some(64 << 20)
            }
        );
        assert!(matches!(
            parse_mount_flag("target=/d").unwrap(),
            MountReq::Volume { name: None, .. }
        ));
        let cases = [
            ("type=foo,target=/x", "invalid mount config for type \"foo\": mount type unknown"),
            ("type=bind,target=/x", "invalid mount config for type \"bind\": field Source must not be empty"),
            ("type=volume,source=v1", "invalid argument \"type=volume,source=v1\" for \"--mount\" flag: target is required"),
            ("type=tmpfs,source=/tmp,target=/x", "invalid mount config for type \"tmpfs\": field Source must not be specified"),
            ("type=bind,src=/tmp,dst=/x,readonly,bogus=1", "invalid argument \"type=bind,src=/tmp,dst=/x,readonly,bogus=1\" for \"--mount\" flag: unexpected key 'bogus' in 'bogus=1'"),
            ("type=bind,src=/tmp,dst=/x,bogus", "invalid argument \"type=bind,src=/tmp,dst=/x,bogus\" for \"--mount\" flag: invalid field 'bogus' must be a key=value pair"),
            ("type=tmpfs,dst=/x,tmpfs-size=abc", "invalid argument \"type=tmpfs,dst=/x,tmpfs-size=abc\" for \"--mount\" flag: invalid value for tmpfs-size: abc"),
            ("type=bind,src=/tmp,dst=x", "invalid mount config for type \"bind\": invalid mount path: 'x' mount path must be absolute"),
            ("type=bind,src=/tmp,dst=/x,volume-nocopy", "invalid argument \"type=bind,src=/tmp,dst=/x,volume-nocopy\" for \"--mount\" flag: cannot mix 'volume-*' options with mount type 'bind'"),
        ];
        for (spec, want) in cases {
            assert_eq!(parse_mount_flag(spec).unwrap_err(), want, "{spec}");
        }
    }
}
