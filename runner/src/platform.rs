//! Whether this machine can run a platform's programs: natively, or under
//! user-mode emulation through a binfmt_misc handler (Debian's
//! `qemu-user-static`). Asked before a container starts, so that "exec
//! format error" from deep inside a container is never the first clue.
//!
//! A handler must carry the `F` (fix-binary) flag: the kernel then opens
//! the emulator when the handler is registered, and it works inside a
//! container whose root has no `/usr/libexec/qemu-binfmt/...`. Without `F`
//! the interpreter path is looked up in the container's root at exec time
//! and the container fails.

use std::path::{Path, PathBuf};

/// Where binfmt_misc is mounted.
pub const BINFMT_MISC: &str = "/proc/sys/fs/binfmt_misc";

/// How a platform's programs run here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Execution {
    Native,
    /// Through the binfmt_misc handler `handler` (e.g. `qemu-aarch64`).
    Emulated {
        handler: String,
        interpreter: PathBuf,
    },
}

/// Why a platform's programs cannot run here.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlatformError {
    #[error("image platform {platform} cannot run here: kiln runs Linux containers only")]
    NotLinux { platform: String },
    #[error("image platform {platform}: unknown architecture {arch:?} (known: amd64, 386, arm64, arm, ppc64le, s390x, riscv64)")]
    UnknownArch { platform: String, arch: String },
    #[error(
        "image platform {platform} cannot run on this {host} machine: {why}\n\
         To run it under QEMU user emulation: apt-get install qemu-user-static, mount binfmt_misc \
         (mount -t binfmt_misc binfmt_misc {BINFMT_MISC}) and register the handler with the F flag \
         (kiln's fixtures/binfmt/register.sh {qemu} does all three)"
    )]
    NoHandler {
        platform: String,
        host: String,
        why: String,
        qemu: String,
    },
    #[error(
        "image platform {platform}: the binfmt_misc handler {handler} ({interpreter}) is registered \
         without the F (fix-binary) flag, so it cannot start inside a container's root; register it \
         again with flags F (fixtures/binfmt/register.sh re-registers it)"
    )]
    NotFixBinary {
        platform: String,
        handler: String,
        interpreter: String,
    },
}

/// The OCI architecture of this machine (`amd64`, `arm64`, ...).
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "x86" => "386",
        "aarch64" => "arm64",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}

/// Whether `os/arch[/variant]` runs here, and how.
pub fn check(os: &str, arch: &str, variant: Option<&str>) -> Result<Execution, PlatformError> {
    check_in(Path::new(BINFMT_MISC), host_arch(), os, arch, variant)
}

/// [`check`] against a given binfmt_misc directory and host architecture.
pub fn check_in(
    binfmt: &Path,
    host: &str,
    os: &str,
    arch: &str,
    variant: Option<&str>,
) -> Result<Execution, PlatformError> {
    let platform = match variant {
        Some(v) => format!("{os}/{arch}/{v}"),
        None => format!("{os}/{arch}"),
    };
    if os != "linux" {
        return Err(PlatformError::NotLinux { platform });
    }
    if arch == host || (host == "amd64" && arch == "386") {
        return Ok(Execution::Native);
    }
    let Some(elf) = ElfId::of(arch) else {
        return Err(PlatformError::UnknownArch {
            platform,
            arch: arch.to_string(),
        });
    };
    let no_handler = |why: String| PlatformError::NoHandler {
        platform: platform.clone(),
        host: format!("linux/{host}"),
        why,
        qemu: elf.qemu.to_string(),
    };
    if !binfmt.join("register").exists() {
        return Err(no_handler(format!(
            "binfmt_misc is not mounted on {}",
            binfmt.display()
        )));
    }
    if std::fs::read_to_string(binfmt.join("status")).is_ok_and(|s| s.trim() == "disabled") {
        return Err(no_handler(
            "binfmt_misc is disabled (its status file says so)".into(),
        ));
    }
    let header = elf.header();
    for h in handlers(binfmt) {
        if !h.enabled || !h.matches(&header) {
            continue;
        }
        if !h.flags.contains('F') {
            return Err(PlatformError::NotFixBinary {
                platform,
                handler: h.name,
                interpreter: h.interpreter,
            });
        }
        return Ok(Execution::Emulated {
            handler: h.name,
            interpreter: PathBuf::from(h.interpreter),
        });
    }
    Err(no_handler(format!(
        "no enabled binfmt_misc handler matches {arch} ELF programs"
    )))
}

/// What identifies an architecture's ELF programs.
struct ElfId {
    class64: bool,
    big_endian: bool,
    machine: u16,
    /// The name of QEMU's handler for it.
    qemu: &'static str,
}

impl ElfId {
    fn of(arch: &str) -> Option<ElfId> {
        let (class64, big_endian, machine, qemu) = match arch {
            "amd64" => (true, false, 62, "x86_64"),
            "386" => (false, false, 3, "i386"),
            "arm64" => (true, false, 183, "aarch64"),
            "arm" => (false, false, 40, "arm"),
            "ppc64le" => (true, false, 21, "ppc64le"),
            "s390x" => (true, true, 22, "s390x"),
            "riscv64" => (true, false, 243, "riscv64"),
            _ => return None,
        };
        Some(ElfId {
            class64,
            big_endian,
            machine,
            qemu,
        })
    }

    /// The first 20 bytes of an executable for this architecture.
    fn header(&self) -> [u8; 20] {
        let mut h = [0u8; 20];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = if self.class64 { 2 } else { 1 };
        h[5] = if self.big_endian { 2 } else { 1 };
        h[6] = 1;
        let (e_type, machine) = if self.big_endian {
            (2u16.to_be_bytes(), self.machine.to_be_bytes())
        } else {
            (2u16.to_le_bytes(), self.machine.to_le_bytes())
        };
        h[16..18].copy_from_slice(&e_type);
        h[18..20].copy_from_slice(&machine);
        h
    }
}

/// One registered magic-number handler.
#[derive(Debug)]
struct Handler {
    name: String,
    enabled: bool,
    interpreter: String,
    flags: String,
    offset: usize,
    magic: Vec<u8>,
    mask: Vec<u8>,
}

impl Handler {
    fn parse(name: &str, text: &str) -> Option<Handler> {
        let mut h = Handler {
            name: name.to_string(),
            enabled: false,
            interpreter: String::new(),
            flags: String::new(),
            offset: 0,
            magic: Vec::new(),
            mask: Vec::new(),
        };
        for line in text.lines() {
            let (k, v) = line.split_once(' ').unwrap_or((line, ""));
            match k {
                "enabled" => h.enabled = true,
                "interpreter" => h.interpreter = v.to_string(),
                "flags:" => h.flags = v.to_string(),
                "offset" => h.offset = v.parse().ok()?,
                "magic" => h.magic = hex(v)?,
                "mask" => h.mask = hex(v)?,
                _ => {}
            }
        }
        // Extension handlers (`extension .jar`) have no magic.
        (!h.magic.is_empty()).then_some(h)
    }

    fn matches(&self, header: &[u8]) -> bool {
        self.magic.iter().enumerate().all(|(i, &m)| {
            let mask = self.mask.get(i).copied().unwrap_or(0xff);
            header
                .get(self.offset + i)
                .is_some_and(|&b| b & mask == m & mask)
        })
    }
}

fn hex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn handlers(dir: &Path) -> Vec<Handler> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<Handler> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if name == "register" || name == "status" {
                return None;
            }
            let text = std::fs::read_to_string(e.path()).ok()?;
            Handler::parse(&name, &text)
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const AARCH64: &str = "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: POF\noffset 0\nmagic 7f454c460201010000000000000000000200b700\nmask ffffffffffffff00fffffffffffffffffeffffff\n";

    fn binfmt(entries: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("register"), "").unwrap();
        std::fs::write(d.path().join("status"), "enabled\n").unwrap();
        for (n, t) in entries {
            std::fs::write(d.path().join(n), t).unwrap();
        }
        d
    }

    #[test]
    fn native_and_emulated_with_the_f_flag() {
        let d = binfmt(&[
            ("qemu-aarch64", AARCH64),
            (
                "jar",
                "enabled\ninterpreter /usr/bin/jexec\nflags: \nextension .jar\n",
            ),
        ]);
        let c = |arch| check_in(d.path(), "amd64", "linux", arch, None);
        assert_eq!(c("amd64"), Ok(Execution::Native));
        assert_eq!(c("386"), Ok(Execution::Native));
        assert_eq!(
            c("arm64"),
            Ok(Execution::Emulated {
                handler: "qemu-aarch64".into(),
                interpreter: "/usr/libexec/qemu-binfmt/aarch64-binfmt-P".into()
            })
        );
        let e = c("arm").unwrap_err().to_string();
        assert!(
            e.contains("linux/arm cannot run on this linux/amd64 machine"),
            "{e}"
        );
        assert!(e.contains("register.sh arm"), "{e}");
    }

    #[test]
    fn a_handler_without_f_disabled_or_unmounted_binfmt_is_refused_with_the_reason() {
        let no_f = AARCH64.replace("flags: POF", "flags: P");
        let d = binfmt(&[("qemu-aarch64", &no_f)]);
        let e = check_in(d.path(), "amd64", "linux", "arm64", Some("v8")).unwrap_err();
        assert!(matches!(e, PlatformError::NotFixBinary { .. }), "{e}");
        assert!(e.to_string().contains("linux/arm64/v8"), "{e}");

        let off = AARCH64.replace("enabled\n", "disabled\n");
        let d = binfmt(&[("qemu-aarch64", &off)]);
        let e = check_in(d.path(), "amd64", "linux", "arm64", None).unwrap_err();
        assert!(
            e.to_string().contains("no enabled binfmt_misc handler"),
            "{e}"
        );

        let empty = tempfile::tempdir().unwrap();
        let e = check_in(empty.path(), "amd64", "linux", "arm64", None).unwrap_err();
        assert!(e.to_string().contains("binfmt_misc is not mounted"), "{e}");

        let e = check_in(empty.path(), "amd64", "windows", "amd64", None).unwrap_err();
        assert!(matches!(e, PlatformError::NotLinux { .. }));
        let e = check_in(empty.path(), "amd64", "linux", "vax", None).unwrap_err();
        assert!(matches!(e, PlatformError::UnknownArch { .. }));
    }

    #[test]
    fn elf_headers_match_qemu_masks_for_their_own_arch_only() {
        let h = Handler::parse("q", AARCH64).unwrap();
        assert!(h.matches(&ElfId::of("arm64").unwrap().header()));
        assert!(!h.matches(&ElfId::of("amd64").unwrap().header()));
        assert!(!h.matches(&ElfId::of("arm").unwrap().header()));
        assert!(Handler::parse("bad", "enabled\nmagic 7f4\n").is_none());
    }
}
