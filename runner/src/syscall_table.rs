//! Syscall numbers by name, for every ABI the container filter covers.
//!
//! The numbers come from the `syscalls` crate, whose per-architecture
//! tables are generated from the kernel's own (`syscall_64.tbl`,
//! `syscall_32.tbl`, `asm-generic/unistd.h`, ...); nothing here is typed
//! by hand. The tests check them against this machine's kernel headers.

use std::str::FromStr;

/// A syscall ABI: what `seccomp_data.arch` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Abi {
    X86_64,
    /// 32-bit x86 programs on an x86_64 kernel.
    I386,
    Aarch64,
    /// 32-bit ARM (EABI) programs on an aarch64 kernel.
    Arm,
}

impl Abi {
    /// The `AUDIT_ARCH_*` value the kernel puts in `seccomp_data.arch`.
    pub(crate) fn audit_arch(self) -> u32 {
        match self {
            Abi::X86_64 => 0xc000_003e,
            Abi::I386 => 0x4000_0003,
            Abi::Aarch64 => 0xc000_00b7,
            Abi::Arm => 0x4000_0028,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Abi::X86_64 => "x86_64",
            Abi::I386 => "i386",
            Abi::Aarch64 => "aarch64",
            Abi::Arm => "arm",
        }
    }

    /// The number of syscall `name` in this ABI; `None` when the ABI has
    /// no such call (aarch64 has no `umount`, `ioperm`, `create_module`...).
    pub(crate) fn nr(self, name: &str) -> Option<u32> {
        let id = match self {
            Abi::X86_64 => syscalls::x86_64::Sysno::from_str(name).ok()?.id(),
            Abi::I386 => syscalls::x86::Sysno::from_str(name).ok()?.id(),
            Abi::Aarch64 => syscalls::aarch64::Sysno::from_str(name).ok()?.id(),
            Abi::Arm => syscalls::arm::Sysno::from_str(name).ok()?.id(),
        };
        u32::try_from(id).ok()
    }
}

/// A host architecture kiln's filter is written for, with the ABIs its
/// kernel runs: the native one first, then the 32-bit compat one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Host {
    X86_64,
    Aarch64,
}

impl Host {
    /// The machine this binary runs on, if the filter knows it.
    pub(crate) fn current() -> Option<Host> {
        if cfg!(target_arch = "x86_64") {
            Some(Host::X86_64)
        } else if cfg!(target_arch = "aarch64") {
            Some(Host::Aarch64)
        } else {
            None
        }
    }

    pub(crate) fn abis(self) -> [Abi; 2] {
        match self {
            Host::X86_64 => [Abi::X86_64, Abi::I386],
            Host::Aarch64 => [Abi::Aarch64, Abi::Arm],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// `#define __NR_name 123` lines of a kernel header (the ones whose
    /// value is a plain number).
    fn header(path: &str) -> Option<HashMap<String, u32>> {
        let text = std::fs::read_to_string(path).ok()?;
        let mut out = HashMap::new();
        for line in text.lines() {
            let mut w = line.split_whitespace();
            if w.next() != Some("#define") {
                continue;
            }
            let (Some(name), Some(val)) = (w.next(), w.next()) else {
                continue;
            };
            if let (Some(n), Ok(v)) = (name.strip_prefix("__NR_"), val.parse()) {
                out.insert(n.to_string(), v);
            }
        }
        Some(out)
    }

    fn check(abi: Abi, path: &str, names: &[&str]) {
        let Some(h) = header(path) else {
            kiln_testkit::require(false, &format!("kernel header {path} (linux-libc-dev)"));
            return;
        };
        assert!(h.len() > 250, "{path}: only {} syscalls parsed", h.len());
        for name in names {
            assert_eq!(
                abi.nr(name),
                h.get(*name).copied(),
                "{} {name} vs {path}",
                abi.name()
            );
        }
    }

    #[test]
    fn the_tables_agree_with_this_machines_kernel_headers() {
        let names = crate::seccomp::names();
        check(
            Abi::X86_64,
            "/usr/include/x86_64-linux-gnu/asm/unistd_64.h",
            &names,
        );
        check(
            Abi::I386,
            "/usr/include/x86_64-linux-gnu/asm/unistd_32.h",
            &names,
        );
        // aarch64 uses the generic table; its `#define`s of the 64-bit
        // numbers are plain, the `__NR3264_*` aliases are not among ours.
        check(Abi::Aarch64, "/usr/include/asm-generic/unistd.h", &names);
    }

    #[test]
    fn every_filtered_name_exists_somewhere() {
        // A misspelt name would silently filter nothing.
        for name in crate::seccomp::names() {
            let abis = [Abi::X86_64, Abi::I386, Abi::Aarch64, Abi::Arm];
            assert!(abis.iter().any(|a| a.nr(name).is_some()), "{name}");
        }
    }
}
