//! Runs in the signer, test builds only: the forbidden system calls the sandbox tests make the
//! signer attempt.

/// Test-only: attempt a system call the sandbox forbids. Under the filter the kernel kills the
/// process before this returns; without it the call's result is returned.
pub(crate) fn attempt_forbidden_syscall(call: crate::wire::messages::ForbiddenSyscall) -> i64 {
    use crate::wire::messages::ForbiddenSyscall;
    let path = c"/etc/hostname";
    // SAFETY: each call below is made only to be killed by the seccomp filter. The arguments
    // are valid for the call even if it were allowed: a static path, no memory handed over
    // except a static string, and mappings/processes that the kernel creates itself.
    unsafe {
        match call {
            ForbiddenSyscall::Open => libc::syscall(libc::SYS_open, path.as_ptr(), libc::O_RDONLY),
            ForbiddenSyscall::OpenAt => libc::syscall(
                libc::SYS_openat,
                libc::AT_FDCWD,
                path.as_ptr(),
                libc::O_RDONLY,
            ),
            ForbiddenSyscall::Socket => {
                libc::syscall(libc::SYS_socket, libc::AF_INET, libc::SOCK_STREAM, 0)
            }
            ForbiddenSyscall::Execve => {
                let argv: [*const libc::c_char; 1] = [std::ptr::null()];
                libc::syscall(
                    libc::SYS_execve,
                    c"/bin/true".as_ptr(),
                    argv.as_ptr(),
                    argv.as_ptr(),
                )
            }
            ForbiddenSyscall::Ptrace => {
                libc::syscall(libc::SYS_ptrace, libc::PTRACE_TRACEME, 0, 0, 0)
            }
            ForbiddenSyscall::Fork => libc::syscall(libc::SYS_fork),
            ForbiddenSyscall::Clone => libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0),
            ForbiddenSyscall::MmapExecutable => libc::syscall(
                libc::SYS_mmap,
                0,
                4096,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            ),
            ForbiddenSyscall::Mprotect => {
                // A page of read-only data, asked to stay read-only: harmless if it were allowed.
                static READ_ONLY: [u8; 1] = [0];
                let page = (READ_ONLY.as_ptr() as usize) & !4095;
                libc::syscall(libc::SYS_mprotect, page, 4096, libc::PROT_READ)
            }
            ForbiddenSyscall::X32Write => {
                const X32_SYSCALL_BIT: libc::c_long = 0x4000_0000;
                let message = b"x";
                libc::syscall(X32_SYSCALL_BIT | libc::SYS_write, 2, message.as_ptr(), 0)
            }
            ForbiddenSyscall::I386IntX80 => {
                // getpid through the i386 entry point (number 20 there): no arguments, so no
                // registers beyond eax are involved. The filter's architecture check kills it.
                let mut result: i64 = 20;
                std::arch::asm!("int 0x80", inout("rax") result);
                result
            }
        }
    }
}
