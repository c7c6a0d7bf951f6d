//! Runs in the signer: where a signer process begins. A forked signer starts in [`run_forked`]
//! on the host's watcher thread, in a copy of the host process where only that thread exists
//! (made by the C library's `fork`); a fork-exec signer starts there too, in a raw `clone` of
//! that thread that lays its descriptors out and execs (see `sys::clone_for_exec`), and goes on
//! in [`run_signer_if_requested`] in a fresh process image. Both go on to
//! `hardening::harden_and_serve`.
//!
//! One function here runs in the host: [`prepare_panic_exit`], called before the first fork so
//! that a forked signer's panic ends it at once. After fork nothing here takes a lock another
//! thread could hold, reads the environment, allocates before exec, or prints; every way out is
//! `_exit`.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Once;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::signer::descriptors::{self, Lane, LaneCount};
use crate::signer::hardening;
use crate::sys;
use crate::wire::framing::FrameReader;
use crate::wire::startup::{Bootstrap, Greeting, HardeningStep, SignerSettings, exit_code};
use crate::wire::{MAX_WORKERS, PROTOCOL_VERSION};

/// The first argument that makes the keyward binary (or any program that calls
/// [`crate::run_signer_if_requested`]) act as an exec'd signer.
pub const SIGNER_ARGUMENT: &str = "--keyward-signer";

/// Everything a forked signer needs, prepared by the host before fork.
pub(crate) struct ForkedLaunch {
    pub(crate) settings: SignerSettings,
    pub(crate) filter: Vec<seccompiler::sock_filter>,
    /// Per lane: the request pipe's read end and the response pipe's write end.
    pub(crate) lanes: Vec<(OwnedFd, OwnedFd)>,
    pub(crate) dev_null: OwnedFd,
    /// Set in fork-exec mode: the signer program (a descriptor, opened when the service was
    /// spawned) and its arguments, prepared before fork so that the child allocates nothing
    /// before exec.
    pub(crate) exec: Option<(OwnedFd, sys::ExecArguments)>,
}

/// The forked signer's entry point, on the watcher thread of a copy of the host process.
pub(crate) fn run_forked(launch: &ForkedLaunch) -> ! {
    // Not set_hook: it takes std's hook lock, which a host thread that was panicking at the
    // moment of fork holds forever in this copy. The hook installed by `prepare_panic_exit`
    // before fork reads this flag instead.
    IN_FORKED_SIGNER.store(true, Ordering::Relaxed);
    // Should a panic unwind (a host hook that returns), it must stop here and never reach the
    // host's frames that fork returned into.
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| lay_out_and_start(launch)));
    sys::exit_immediately(exit_code::PANICKED)
}

fn lay_out_and_start(launch: &ForkedLaunch) -> ! {
    if arm_parent_death_signal(launch.settings.parent_pid).is_err() {
        sys::exit_immediately(exit_code::PARENT_CHANGED);
    }
    // A fixed array, not a Vec: nothing between fork and exec allocates (a host allocator
    // without a fork handler could hold its lock in this copy forever).
    let mut lane_fds = [(0, 0); MAX_WORKERS];
    for (slot, (request, response)) in lane_fds.iter_mut().zip(&launch.lanes) {
        *slot = (request.as_raw_fd(), response.as_raw_fd());
    }
    let lanes = &lane_fds[..launch.lanes.len().min(MAX_WORKERS)];
    let program = launch.exec.as_ref().map(|(program, _)| program.as_raw_fd());
    if descriptors::lay_out(lanes, launch.dev_null.as_raw_fd(), program).is_err() {
        sys::exit_immediately(exit_code::HARDENING_FAILED);
    }
    if let Some((_, arguments)) = &launch.exec {
        // Through the descriptor opened when the service was spawned, not the path: the file
        // checked then is the file run now.
        let _error = sys::execute(sys::fixed_descriptor(descriptors::PROGRAM_FD), arguments);
        sys::exit_immediately(exit_code::EXEC_FAILED);
    }
    hardening::harden_and_serve(&launch.settings, &launch.filter)
}

/// Runs the exec'd signer if this process was started as one (its first argument is
/// [`SIGNER_ARGUMENT`]); otherwise returns at once.
///
/// A program that wants to serve as the signer for [`SpawnMode::ForkExec`](crate::SpawnMode)
/// calls this first thing in `main`. The keyward binary does.
pub fn run_signer_if_requested() {
    let mut arguments = std::env::args_os().skip(1);
    if arguments.next().as_deref() != Some(std::ffi::OsStr::new(SIGNER_ARGUMENT)) {
        return;
    }
    run_exec_entry()
}

fn run_exec_entry() -> ! {
    install_exit_on_panic();
    let bootstrap = match read_bootstrap() {
        Some(bootstrap) => bootstrap,
        None => sys::exit_immediately(exit_code::BAD_BOOTSTRAP),
    };
    if bootstrap.protocol_version != PROTOCOL_VERSION {
        hardening::greet_and_exit(
            Greeting::VersionMismatch {
                protocol_version: PROTOCOL_VERSION,
            },
            exit_code::BAD_BOOTSTRAP,
        );
    }
    // The death signal was armed before exec and survives it; check the parent once more.
    if nix::unistd::getppid().as_raw() != bootstrap.settings.parent_pid {
        sys::exit_immediately(exit_code::PARENT_CHANGED);
    }
    let Some(lanes) = LaneCount::new(bootstrap.settings.workers) else {
        sys::exit_immediately(exit_code::BAD_BOOTSTRAP)
    };
    if descriptors::close_unexpected(lanes).is_err() {
        hardening::report_failure(HardeningStep::DescriptorHygiene, 0);
    }
    let filter: Vec<seccompiler::sock_filter> = bootstrap
        .filter
        .iter()
        .map(|&(code, jt, jf, k)| seccompiler::sock_filter { code, jt, jf, k })
        .collect();
    hardening::harden_and_serve(&bootstrap.settings, &filter)
}

fn read_bootstrap() -> Option<Bootstrap> {
    let mut reader = FrameReader::new();
    let payload = reader
        .read_frame(Lane::FIRST.request_fd(), None, Duration::ZERO, None)
        .ok()?;
    postcard::from_bytes::<Bootstrap>(payload).ok()
}

/// A panic in the signer ends the process with a fixed code: nothing is printed, nothing
/// unwinds into the host's frames, and the supervisor reports "the signer panicked".
///
/// For the exec'd signer: a fresh process image with one thread, where setting the hook is safe.
fn install_exit_on_panic() {
    std::panic::set_hook(Box::new(|_| sys::exit_immediately(exit_code::PANICKED)));
}

/// Set first thing in a forked signer; read by the panic hook `prepare_panic_exit` installs.
static IN_FORKED_SIGNER: AtomicBool = AtomicBool::new(false);

/// Called in the host before the first fork: wraps the host's panic hook so that a panic in a
/// forked signer ends it with `_exit` before the host's hook runs, while the host's own panics
/// go to its hook as before. Nothing changes for the host unless it is the signer.
///
/// If the host replaces its panic hook after this, a forked signer that panics runs the host's
/// hook instead; the supervisor's deadlines still end such a signer (see SECURITY.md).
pub(crate) fn prepare_panic_exit() {
    static WRAPPED: Once = Once::new();
    // set_hook panics when called from a panicking thread (a service spawned in a Drop during
    // unwinding); the forked signer then relies on the deadlines alone.
    if std::thread::panicking() {
        return;
    }
    WRAPPED.call_once(|| {
        let host_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if IN_FORKED_SIGNER.load(Ordering::Relaxed) {
                sys::exit_immediately(exit_code::PANICKED);
            }
            host_hook(info)
        }));
    });
}

fn arm_parent_death_signal(expected_parent: i32) -> nix::Result<()> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
    // If the parent died before the signal was armed, we were reparented and nobody will ever
    // send it: stop now.
    if nix::unistd::getppid().as_raw() != expected_parent {
        return Err(nix::errno::Errno::ESRCH);
    }
    Ok(())
}
