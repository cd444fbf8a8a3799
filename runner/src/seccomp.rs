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
//! The filter is classic BPF over `seccomp_data`, for the native
//! x86_64 ABI and for 32-bit x86 programs (their own numbers, from the
//! kernel's `syscall_32.tbl`); x32 calls and any other architecture are
//! refused. It is installed while the process still holds CAP_SYS_ADMIN,
//! so `no_new_privs` is not needed (setuid programs keep working, as under
//! Docker), and is inherited across `execve` by everything the container
//! starts.

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const AUDIT_ARCH_I386: u32 = 0x4000_0003;
const X32_BIT: u32 = 0x4000_0000;
const CLONE_NEWUSER: u32 = 0x1000_0000;

const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;

/// (name, x86_64 number, i386 number); 0 for i386 = no such call there.
const DENIED: &[(&str, u32, u32)] = &[
    ("acct", 163, 51),
    ("add_key", 248, 286),
    ("bpf", 321, 357),
    ("clock_adjtime", 305, 343),
    ("clock_settime", 227, 264),
    ("create_module", 174, 127),
    ("delete_module", 176, 129),
    ("finit_module", 313, 350),
    ("fsconfig", 431, 431),
    ("fsmount", 432, 432),
    ("fsopen", 430, 430),
    ("fspick", 433, 433),
    ("get_kernel_syms", 177, 130),
    ("init_module", 175, 128),
    ("io_uring_enter", 426, 426),
    ("io_uring_register", 427, 427),
    ("io_uring_setup", 425, 425),
    ("ioperm", 173, 101),
    ("iopl", 172, 110),
    ("kcmp", 312, 349),
    ("kexec_file_load", 320, 0),
    ("kexec_load", 246, 283),
    ("keyctl", 250, 288),
    ("lookup_dcookie", 212, 253),
    ("mount", 165, 21),
    ("move_mount", 429, 429),
    ("name_to_handle_at", 303, 341),
    ("nfsservctl", 180, 169),
    ("open_by_handle_at", 304, 342),
    ("open_tree", 428, 428),
    ("perf_event_open", 298, 336),
    ("pivot_root", 155, 217),
    ("query_module", 178, 167),
    ("quotactl", 179, 131),
    ("reboot", 169, 88),
    ("request_key", 249, 287),
    ("setns", 308, 346),
    ("settimeofday", 164, 79),
    ("stime", 0, 25),
    ("swapoff", 168, 115),
    ("swapon", 167, 87),
    ("_sysctl", 156, 149),
    ("sysfs", 139, 135),
    ("umount", 0, 22),
    ("umount2", 166, 52),
    ("uselib", 134, 86),
    ("userfaultfd", 323, 374),
    ("ustat", 136, 62),
    ("vm86", 0, 166),
    ("vm86old", 0, 113),
];
/// (x86_64, i386)
const CLONE: (u32, u32) = (56, 120);
const UNSHARE: (u32, u32) = (272, 310);
const CLONE3: (u32, u32) = (435, 435);

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

fn arch_block(ops: &mut Vec<Op>, native: bool, prefix: &'static str) {
    let pick = |t: (u32, u32)| if native { t.0 } else { t.1 };
    ops.push(Op::Label(prefix));
    ops.push(Op::Load(0)); // nr
    if native {
        ops.push(Op::JumpIfSet(X32_BIT, "enosys"));
    }
    for &(_, x64, x86) in DENIED {
        let nr = if native { x64 } else { x86 };
        if nr != 0 {
            ops.push(Op::JumpIfEq(nr, "eperm"));
        }
    }
    ops.push(Op::JumpIfEq(pick(CLONE3), "enosys"));
    ops.push(Op::JumpIfEq(pick(CLONE), "flags"));
    ops.push(Op::JumpIfEq(pick(UNSHARE), "flags"));
    ops.push(Op::Ret(SECCOMP_RET_ALLOW));
}

/// The filter program.
pub(crate) fn program() -> Result<Vec<libc::sock_filter>, String> {
    if !cfg!(target_arch = "x86_64") {
        return Err("kiln's syscall filter is written for x86_64 hosts (use --security-opt seccomp=unconfined elsewhere)".into());
    }
    let mut ops = vec![
        Op::Load(4), // arch
        Op::JumpIfEq(AUDIT_ARCH_X86_64, "x86_64"),
        Op::JumpIfEq(AUDIT_ARCH_I386, "i386"),
        Op::Ret(SECCOMP_RET_KILL_PROCESS),
    ];
    arch_block(&mut ops, true, "x86_64");
    arch_block(&mut ops, false, "i386");
    ops.extend([
        // clone/unshare: the low word of args[0] holds the flags.
        Op::Label("flags"),
        Op::Load(16),
        Op::JumpIfSet(CLONE_NEWUSER, "eperm"),
        Op::Ret(SECCOMP_RET_ALLOW),
        Op::Label("eperm"),
        Op::Ret(SECCOMP_RET_ERRNO | libc::EPERM as u32),
        Op::Label("enosys"),
        Op::Ret(SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
    ]);
    // Resolve labels to instruction indexes.
    let mut at = std::collections::HashMap::new();
    let mut n = 0usize;
    for op in &ops {
        match op {
            Op::Label(l) => {
                at.insert(*l, n);
            }
            _ => n += 1,
        }
    }
    let mut out = Vec::with_capacity(n);
    for op in &ops {
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
    fn native_numbers_are_the_kernels() {
        // The x86_64 column against libc's own constants.
        let known: &[(&str, i64)] = &[
            ("keyctl", libc::SYS_keyctl),
            ("add_key", libc::SYS_add_key),
            ("request_key", libc::SYS_request_key),
            ("bpf", libc::SYS_bpf),
            ("userfaultfd", libc::SYS_userfaultfd),
            ("perf_event_open", libc::SYS_perf_event_open),
            ("io_uring_setup", libc::SYS_io_uring_setup),
            ("mount", libc::SYS_mount),
            ("setns", libc::SYS_setns),
            ("open_by_handle_at", libc::SYS_open_by_handle_at),
            ("kexec_file_load", libc::SYS_kexec_file_load),
            ("fsopen", libc::SYS_fsopen),
        ];
        for (name, nr) in known {
            let row = DENIED.iter().find(|r| r.0 == *name).unwrap();
            assert_eq!(row.1 as i64, *nr, "{name}");
        }
        assert_eq!(CLONE.0 as i64, libc::SYS_clone);
        assert_eq!(UNSHARE.0 as i64, libc::SYS_unshare);
        assert_eq!(CLONE3.0 as i64, libc::SYS_clone3);
    }

    #[test]
    fn the_program_assembles_within_bpf_limits() {
        let p = program().unwrap();
        assert!(p.len() < 4096);
        // Ends with the two error returns.
        assert_eq!(p[p.len() - 1].k, SECCOMP_RET_ERRNO | libc::ENOSYS as u32);
        assert_eq!(p[p.len() - 2].k, SECCOMP_RET_ERRNO | libc::EPERM as u32);
    }
}
