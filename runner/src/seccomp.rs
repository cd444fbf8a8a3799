//! The container's syscall filter: the calls Docker's default seccomp
//! profile keeps from a container that has only the default capabilities,
//! as a deny list. Most of them already fail for want of a capability; the
//! filter matters for those that need none: creating user namespaces
//! (`unshare`/`clone` with `CLONE_NEWUSER`, the door to most kernel
//! privilege escalations), the kernel keyring (not namespaced), `bpf`,
//! `perf_event_open`, `userfaultfd` and io_uring. `clone3` gets `ENOSYS`
//! (its flags are behind a pointer a filter cannot read), so libc falls
//! back to `clone`, which is checked. Denied calls fail with `EPERM`, as
//! under Docker.
//!
//! The filter is classic BPF over `seccomp_data`, generated from syscall
//! NAMES for each ABI of the host kernel: on x86_64 the native ABI and
//! 32-bit x86 programs; on aarch64 the native ABI and 32-bit ARM programs.
//! The numbers come from [`crate::syscall_table`] (the kernel's tables, via
//! the `syscalls` crate), checked against the kernel headers by its tests.
//! x32 calls and any other architecture are refused. It is installed while
//! the process still holds CAP_SYS_ADMIN, so `no_new_privs` is not needed
//! (setuid programs keep working, as under Docker), and is inherited across
//! `execve` by everything the container starts.
//!
//! Under QEMU user emulation (a foreign-platform RUN step) the emulator is
//! a host-architecture process that makes the guest's syscalls itself, so
//! an emulated step is filtered by the HOST's filter: the aarch64 filter
//! is for a native arm64 host (and is checked by the unit tests here).

use crate::syscall_table::{Abi, Host};

const X32_BIT: u32 = 0x4000_0000;
const CLONE_NEWUSER: u32 = 0x1000_0000;

const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;

/// Docker's default deny list, by name; a name an ABI does not have is
/// skipped for that ABI.
const DENIED: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "init_module",
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mount",
    "move_mount",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "query_module",
    "quotactl",
    "reboot",
    "request_key",
    "setns",
    "settimeofday",
    "stime",
    "swapoff",
    "swapon",
    "_sysctl",
    "sysfs",
    "umount",
    "umount2",
    "uselib",
    "userfaultfd",
    "ustat",
    "vm86",
    "vm86old",
];
/// Answered with ENOSYS: its flags are behind a pointer.
const CLONE3: &str = "clone3";
/// Checked for CLONE_NEWUSER in their first argument.
const FLAG_CHECKED: &[&str] = &["clone", "unshare"];

/// Every syscall name the filter mentions.
#[cfg(test)]
pub(crate) fn names() -> Vec<&'static str> {
    let mut v = DENIED.to_vec();
    v.push(CLONE3);
    v.extend(FLAG_CHECKED);
    v
}

/// One instruction before the jumps are resolved.
enum Op {
    /// Load the 32-bit word at this offset of `seccomp_data`.
    Load(u32),
    /// if A == k goto label else fall through.
    JumpIfEq(u32, &'static str),
    /// if A & k goto label else fall through.
    JumpIfSet(u32, &'static str),
    Ret(u32),
    Label(&'static str),
}

const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JEQ_K: u16 = 0x15;
const BPF_JSET_K: u16 = 0x45;
const BPF_RET_K: u16 = 0x06;

fn nr(abi: Abi, name: &str) -> Result<u32, String> {
    abi.nr(name)
        .ok_or_else(|| format!("seccomp: {name} has no number on {}", abi.name()))
}

fn arch_block(ops: &mut Vec<Op>, abi: Abi, label: &'static str) -> Result<(), String> {
    ops.push(Op::Label(label));
    ops.push(Op::Load(0)); // nr
    if abi == Abi::X86_64 {
        ops.push(Op::JumpIfSet(X32_BIT, "enosys"));
    }
    for name in DENIED {
        if let Some(n) = abi.nr(name) {
            ops.push(Op::JumpIfEq(n, "eperm"));
        }
    }
    ops.push(Op::JumpIfEq(nr(abi, CLONE3)?, "enosys"));
    for name in FLAG_CHECKED {
        ops.push(Op::JumpIfEq(nr(abi, name)?, "flags"));
    }
    ops.push(Op::Ret(SECCOMP_RET_ALLOW));
    Ok(())
}

/// The filter program for this machine.
pub(crate) fn program() -> Result<Vec<libc::sock_filter>, String> {
    let host = Host::current().ok_or_else(|| {
        "kiln's syscall filter knows x86_64 and aarch64 hosts only (use --security-opt seccomp=unconfined elsewhere)".to_string()
    })?;
    program_for(host)
}

/// The filter program for a host of architecture `host`.
pub(crate) fn program_for(host: Host) -> Result<Vec<libc::sock_filter>, String> {
    let [native, compat] = host.abis();
    let mut ops = vec![
        Op::Load(4), // arch
        Op::JumpIfEq(native.audit_arch(), "native"),
        Op::JumpIfEq(compat.audit_arch(), "compat"),
        Op::Ret(SECCOMP_RET_KILL_PROCESS),
    ];
    arch_block(&mut ops, native, "native")?;
    arch_block(&mut ops, compat, "compat")?;
    ops.extend([
        // clone/unshare: the low word of args[0] holds the flags (every
        // ABI here is little-endian, and clone's flags come first on all).
        Op::Label("flags"),
        Op::Load(16),
        Op::JumpIfSet(CLONE_NEWUSER, "eperm"),
        Op::Ret(SECCOMP_RET_ALLOW),
        Op::Label("eperm"),
        Op::Ret(SECCOMP_RET_ERRNO | libc::EPERM as u32),
        Op::Label("enosys"),
        Op::Ret(SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
    ]);
    assemble(&ops)
}

/// Resolves labels to instruction offsets.
fn assemble(ops: &[Op]) -> Result<Vec<libc::sock_filter>, String> {
    // Resolve labels to instruction indexes.
    let mut at = std::collections::HashMap::new();
    let mut n = 0usize;
    for op in ops {
        match op {
            Op::Label(l) => {
                at.insert(*l, n);
            }
            _ => n += 1,
        }
    }
    let mut out = Vec::with_capacity(n);
    for op in ops {
        let here = out.len();
        let jump = |l: &str| -> Result<u8, String> {
            let to = *at.get(l).ok_or_else(|| format!("seccomp: no label {l}"))?;
            to.checked_sub(here + 1)
                .and_then(|d| u8::try_from(d).ok())
                .ok_or_else(|| format!("seccomp: jump to {l} is backwards or too far"))
        };
        let f = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
        match op {
            Op::Label(_) => continue,
            Op::Load(off) => out.push(f(BPF_LD_W_ABS, 0, 0, *off)),
            Op::JumpIfEq(k, l) => out.push(f(BPF_JEQ_K, jump(l)?, 0, *k)),
            Op::JumpIfSet(k, l) => out.push(f(BPF_JSET_K, jump(l)?, 0, *k)),
            Op::Ret(k) => out.push(f(BPF_RET_K, 0, 0, *k)),
        }
    }
    Ok(out)
}

/// Installs `prog` on the calling thread (and what it executes).
/// Needs CAP_SYS_ADMIN (or no_new_privs).
pub(crate) fn install(prog: &[libc::sock_filter]) -> Result<(), String> {
    let fprog = libc::sock_fprog {
        len: u16::try_from(prog.len()).map_err(|_| "seccomp: program too long".to_string())?,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: fprog points at `prog`, alive for the call; the kernel copies
    // the program.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &fprog as *const libc::sock_fprog,
        )
    };
    if r != 0 {
        return Err(format!(
            "installing the seccomp filter: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_numbers_are_libcs() {
        // The host's table against libc's own constants.
        let known: &[(&str, i64)] = &[
            ("keyctl", libc::SYS_keyctl),
            ("add_key", libc::SYS_add_key),
            ("bpf", libc::SYS_bpf),
            ("userfaultfd", libc::SYS_userfaultfd),
            ("mount", libc::SYS_mount),
            ("setns", libc::SYS_setns),
            ("kexec_file_load", libc::SYS_kexec_file_load),
            ("clone", libc::SYS_clone),
            ("unshare", libc::SYS_unshare),
            ("clone3", libc::SYS_clone3),
        ];
        let abi = Host::current().unwrap().abis()[0];
        for (name, n) in known {
            assert_eq!(abi.nr(name).map(i64::from), Some(*n), "{name}");
        }
    }

    /// Runs a classic BPF program (the four opcodes we emit) on a
    /// `seccomp_data` of (nr, arch, args[0]).
    fn eval(p: &[libc::sock_filter], nr: u32, arch: u32, arg0: u32) -> u32 {
        let (mut pc, mut a) = (0usize, 0u32);
        loop {
            let i = p[pc];
            pc += 1;
            match i.code {
                BPF_LD_W_ABS => {
                    a = match i.k {
                        0 => nr,
                        4 => arch,
                        16 => arg0,
                        k => panic!("load of offset {k}"),
                    }
                }
                BPF_JEQ_K => pc += usize::from(if a == i.k { i.jt } else { i.jf }),
                BPF_JSET_K => pc += usize::from(if a & i.k != 0 { i.jt } else { i.jf }),
                BPF_RET_K => return i.k,
                c => panic!("opcode {c:#x}"),
            }
        }
    }

    const EPERM: u32 = SECCOMP_RET_ERRNO | libc::EPERM as u32;
    const ENOSYS: u32 = SECCOMP_RET_ERRNO | libc::ENOSYS as u32;

    #[test]
    fn every_abi_of_every_host_is_filtered_by_name() {
        for host in [Host::X86_64, Host::Aarch64] {
            let p = program_for(host).unwrap();
            assert!(p.len() < 4096);
            for abi in host.abis() {
                let arch = abi.audit_arch();
                let n = |name| abi.nr(name).unwrap();
                let mut denied = 0;
                for name in DENIED {
                    if let Some(nr) = abi.nr(name) {
                        assert_eq!(eval(&p, nr, arch, 0), EPERM, "{host:?} {abi:?} {name}");
                        denied += 1;
                    }
                }
                assert!(denied >= 30, "{abi:?}: only {denied} denied calls");
                for ok in ["getpid", "openat", "execve", "write"] {
                    assert_eq!(eval(&p, n(ok), arch, 0), SECCOMP_RET_ALLOW, "{abi:?} {ok}");
                }
                for name in FLAG_CHECKED {
                    let newuser = eval(&p, n(name), arch, CLONE_NEWUSER | 0x11);
                    assert_eq!(newuser, EPERM, "{abi:?} {name}(CLONE_NEWUSER)");
                    let plain = eval(&p, n(name), arch, 0x11);
                    assert_eq!(plain, SECCOMP_RET_ALLOW, "{abi:?} {name}");
                }
                assert_eq!(eval(&p, n(CLONE3), arch, 0), ENOSYS, "{abi:?}");
            }
            // Another architecture's calls are refused outright.
            let other = match host {
                Host::X86_64 => Abi::Aarch64,
                Host::Aarch64 => Abi::X86_64,
            };
            let kill = eval(&p, 39, other.audit_arch(), 0);
            assert_eq!(kill, SECCOMP_RET_KILL_PROCESS, "{host:?}");
        }
        // x32 calls on x86_64: ENOSYS.
        let p = program_for(Host::X86_64).unwrap();
        let x32_getpid = X32_BIT | 39;
        assert_eq!(eval(&p, x32_getpid, Abi::X86_64.audit_arch(), 0), ENOSYS);
    }

    #[test]
    fn aarch64_lacks_the_legacy_calls_and_keeps_the_rest() {
        // The generic table has no umount/ioperm/create_module: they are
        // skipped, not a reason to fail.
        for gone in ["umount", "ioperm", "iopl", "create_module", "stime"] {
            assert_eq!(Abi::Aarch64.nr(gone), None, "{gone}");
        }
        assert_eq!(Abi::Aarch64.nr("keyctl"), Some(219));
        assert_eq!(Abi::Aarch64.nr("clone"), Some(220));
    }

    #[test]
    fn the_program_ends_with_the_two_error_returns() {
        let p = program().unwrap();
        assert_eq!(p[p.len() - 1].k, ENOSYS);
        assert_eq!(p[p.len() - 2].k, EPERM);
    }
}
