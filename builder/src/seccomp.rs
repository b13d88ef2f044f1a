//! The seccomp filter every sandboxed process runs under, as the classic-BPF
//! program bubblewrap loads with `--seccomp FD`.
//!
//! A deny list: a build runs arbitrary toolchains, so the kernel interfaces
//! no build needs and every container escape of the last decade started from
//! are refused with EPERM (ENOSYS for `clone3`, whose flags a filter cannot
//! read, so that libc falls back to `clone`, which it can). Anything from
//! another architecture's syscall table (x32 on x86-64, or a foreign
//! `AUDIT_ARCH`) kills the process: numbers there mean other syscalls.

use nix::libc;

/// Syscalls no build needs: debugging and reading other processes, kernel
/// keyrings, mounts and namespaces (a nested user namespace would give the
/// build a root with capabilities again), eBPF and perf, module and kexec
/// loading, io_uring (a large kernel surface with its own escapes), and host
/// administration.
const BLOCKED: &[libc::c_long] = &[
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_kcmp,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_mount_setattr,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_fanotify_init,
    libc::SYS_open_by_handle_at,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_syslog,
    libc::SYS_acct,
    libc::SYS_quotactl,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
];

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

/// x32 syscalls on x86-64 have this bit set in their number.
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

// Classic BPF opcodes (linux/filter.h) and seccomp return values.
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JEQ_K: u16 = 0x15;
const BPF_JGE_K: u16 = 0x35;
const BPF_JSET_K: u16 = 0x45;
const BPF_RET_K: u16 = 0x06;
const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
// Offsets in struct seccomp_data.
const NR: u32 = 0;
const ARCH: u32 = 4;
const ARG0_LOW: u32 = 16;

#[derive(Debug, Clone, Copy)]
struct Insn {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

const fn stmt(code: u16, k: u32) -> Insn {
    Insn {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

const fn jump(code: u16, k: u32, jt: u8, jf: u8) -> Insn {
    Insn { code, jt, jf, k }
}

fn ret_errno(errno: i32) -> Insn {
    stmt(BPF_RET_K, SECCOMP_RET_ERRNO | (errno as u32 & 0xffff))
}

/// Syscall numbers are small and non-negative; seccomp compares 32 bits.
fn nr(sys: libc::c_long) -> u32 {
    sys as u32
}

fn program() -> Vec<Insn> {
    let mut p = vec![
        stmt(BPF_LD_W_ABS, ARCH),
        jump(BPF_JEQ_K, AUDIT_ARCH, 1, 0),
        stmt(BPF_RET_K, SECCOMP_RET_KILL_PROCESS),
        stmt(BPF_LD_W_ABS, NR),
    ];
    #[cfg(target_arch = "x86_64")]
    p.extend([
        jump(BPF_JGE_K, X32_SYSCALL_BIT, 0, 1),
        stmt(BPF_RET_K, SECCOMP_RET_KILL_PROCESS),
    ]);
    for &sys in BLOCKED {
        p.push(jump(BPF_JEQ_K, nr(sys), 0, 1));
        p.push(ret_errno(libc::EPERM));
    }
    p.push(jump(BPF_JEQ_K, nr(libc::SYS_clone3), 0, 1));
    p.push(ret_errno(libc::ENOSYS));
    // clone(flags, …) with CLONE_NEWUSER; the other namespace flags need
    // capabilities the build does not have.
    p.extend([
        jump(BPF_JEQ_K, nr(libc::SYS_clone), 0, 3),
        stmt(BPF_LD_W_ABS, ARG0_LOW),
        jump(BPF_JSET_K, libc::CLONE_NEWUSER as u32, 0, 1),
        ret_errno(libc::EPERM),
        stmt(BPF_RET_K, SECCOMP_RET_ALLOW),
    ]);
    p
}

/// The filter as `struct sock_filter[]` in native byte order.
pub(crate) fn filter_bytes() -> Vec<u8> {
    let mut out = Vec::new();
    for i in program() {
        out.extend_from_slice(&i.code.to_ne_bytes());
        out.push(i.jt);
        out.push(i.jf);
        out.extend_from_slice(&i.k.to_ne_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every jump lands inside the program and it ends in a return: the
    /// kernel would refuse it otherwise, and the build with it.
    #[test]
    fn the_program_is_well_formed() {
        let p = program();
        assert!(p.len() < 4096);
        for (at, i) in p.iter().enumerate() {
            if i.code == BPF_JEQ_K || i.code == BPF_JGE_K || i.code == BPF_JSET_K {
                assert!(
                    at + 1 + usize::from(i.jt.max(i.jf)) < p.len(),
                    "jump at {at}"
                );
            }
        }
        assert_eq!(p.last().map(|i| i.code), Some(BPF_RET_K));
        assert_eq!(filter_bytes().len(), p.len() * 8);
    }
}
