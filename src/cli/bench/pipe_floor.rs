//! Runs in the host: the pipe-floor room, the cheapest signing across a process boundary this
//! machine allows with keyward's design (pipes, both sides spinning as keyward's do), measured in
//! the same run so a target keyward misses can be told apart from one the machine rules out.
//!
//! The floor is a plain child: the `keyward` binary re-run in a hidden role, with no sandbox, no
//! protocol, no lanes and no locks. It writes its 32-byte public key to its stdout, then reads
//! 32-byte digests from its stdin and writes each one's 64-byte signature to its stdout. It waits
//! for the next digest as a keyward worker does (spinning for `signer_spin` only while requests
//! flow and its spins find them, else sleeping in `poll`), and the caller waits for the signature
//! as a lone keyward caller does (spinning for `caller_spin` while its spins find answers, then
//! sleeping), both by keyward's own [`SpinBackoff`]. What keyward costs above this row is
//! keyward's own: framing, encoding, lanes, the sandbox.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use keyward::{Latency, SpinBackoff};
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout};

/// The hidden subcommand the floor child runs as.
const CHILD_COMMAND: &str = "bench-pipe-floor-child";

const DIGEST_LEN: usize = 32;
const SIGNATURE_LEN: usize = 64;
/// How long the caller waits for one signature before it calls the floor child hung.
const ANSWER_DEADLINE: Duration = Duration::from_secs(10);

/// The options of the hidden floor child.
#[derive(Args, Debug, Clone)]
pub(crate) struct PipeFloorChildArgs {
    /// How long to spin for the next digest after an answer, while digests flow (µs).
    #[arg(long)]
    signer_spin_us: u64,
}

/// The floor child's loop: say the public key, then sign every digest that comes, until stdin
/// closes.
pub(crate) fn run_child(args: &PipeFloorChildArgs) -> Result<()> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|error| anyhow!("no entropy: {error}"))?;
    let key = SigningKey::from_bytes(&seed);
    // A bench key, but a secret all the same: no copy of the seed outlives the key.
    zeroize::Zeroize::zeroize(&mut seed);
    let spin = Duration::from_micros(args.signer_spin_us);
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let input = stdin.as_fd();
    let output = stdout.as_fd();
    set_nonblocking(input)?;
    write_all(output, key.verifying_key().as_bytes())?;
    let mut digest = [0u8; DIGEST_LEN];
    let mut last_answer: Option<Instant> = None;
    let mut flowing = false;
    let backoff = SpinBackoff::default();
    loop {
        let wait = if flowing && backoff.may_spin() {
            spin
        } else {
            Duration::ZERO
        };
        let Some(slept) = read_exactly(input, &mut digest, wait, None)? else {
            return Ok(());
        };
        flowing = last_answer.is_some_and(|answered| answered.elapsed() < spin);
        let signature = key.sign(&digest).to_bytes();
        write_all(output, &signature)?;
        last_answer = Some(Instant::now());
        if !wait.is_zero() {
            backoff.spun(!slept);
        }
    }
}

/// A running floor child and the caller's ends of its pipes. Dropping it closes the pipes and
/// reaps the child (killing it if it has not ended).
pub(super) struct PipeFloor {
    to_child: Option<OwnedFd>,
    from_child: OwnedFd,
    child: Child,
    caller_spin: Duration,
    backoff: SpinBackoff,
}

impl PipeFloor {
    /// Starts the floor child with keyward's spin settings.
    pub(super) fn start(latency: Latency) -> Result<Self> {
        let program = std::env::current_exe().context("finding the keyward binary")?;
        let mut child = Command::new(program)
            .arg(CHILD_COMMAND)
            .arg("--signer-spin-us")
            .arg(latency.signer_spin.as_micros().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the pipe-floor child")?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the pipe-floor child came without its pipes");
        };
        let from_child = OwnedFd::from(stdout);
        set_nonblocking(from_child.as_fd())?;
        let floor = Self {
            to_child: Some(OwnedFd::from(stdin)),
            from_child,
            child,
            caller_spin: latency.caller_spin,
            backoff: SpinBackoff::default(),
        };
        let mut public = [0u8; 32];
        if read_exactly(
            floor.from_child.as_fd(),
            &mut public,
            Duration::ZERO,
            Some(Instant::now() + ANSWER_DEADLINE),
        )?
        .is_none()
        {
            bail!("the pipe-floor child ended before saying its public key");
        }
        // What is timed must be real work: check one signature.
        let digest = [7u8; DIGEST_LEN];
        let signature = Signature::from_bytes(&floor.sign(&digest)?);
        VerifyingKey::from_bytes(&public)
            .context("the pipe-floor child's public key is not a point")?
            .verify_strict(&digest, &signature)
            .context("a signature from the pipe-floor child did not verify")?;
        Ok(floor)
    }

    /// The child's pid, for its CPU clock.
    pub(super) fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap_or(-1)
    }

    /// One signature through the child, waited for as a keyward caller waits.
    pub(super) fn sign(&self, digest: &[u8; DIGEST_LEN]) -> Result<[u8; SIGNATURE_LEN]> {
        let to_child = self
            .to_child
            .as_ref()
            .ok_or_else(|| anyhow!("the pipe-floor child is closed"))?;
        write_all(to_child.as_fd(), digest)?;
        let mut signature = [0u8; SIGNATURE_LEN];
        let deadline = Instant::now() + ANSWER_DEADLINE;
        let spin = if self.backoff.may_spin() {
            self.caller_spin
        } else {
            Duration::ZERO
        };
        let Some(slept) = read_exactly(
            self.from_child.as_fd(),
            &mut signature,
            spin,
            Some(deadline),
        )?
        else {
            bail!("the pipe-floor child ended");
        };
        if !spin.is_zero() {
            self.backoff.spun(!slept);
        }
        Ok(signature)
    }
}

impl Drop for PipeFloor {
    fn drop(&mut self) {
        // End of file ends the child's loop; a child that does not end is killed.
        drop(self.to_child.take());
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_)) | Err(_)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn set_nonblocking(fd: BorrowedFd<'_>) -> Result<()> {
    let flags = fcntl(fd, FcntlArg::F_GETFL).context("reading a pipe's flags")?;
    fcntl(
        fd,
        FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
    )
    .context("making a pipe non-blocking")?;
    Ok(())
}

/// Fills `buffer` from a non-blocking pipe: spins (read, yield) for `spin`, then sleeps in
/// `poll` until `deadline` (forever if `None`). `Some(slept)`: filled, and whether it had to
/// sleep; `None`: end of file before the first byte.
fn read_exactly(
    fd: BorrowedFd<'_>,
    buffer: &mut [u8],
    spin: Duration,
    deadline: Option<Instant>,
) -> Result<Option<bool>> {
    let spin_until = Instant::now() + spin;
    let mut filled = 0;
    let mut slept = false;
    while filled < buffer.len() {
        match nix::unistd::read(fd, &mut buffer[filled..]) {
            Ok(0) if filled == 0 => return Ok(None),
            Ok(0) => bail!("the pipe closed mid-message"),
            Ok(count) => filled += count,
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => {
                if !spin.is_zero() && Instant::now() < spin_until {
                    std::thread::yield_now();
                    continue;
                }
                let timeout = match deadline {
                    None => PollTimeout::NONE,
                    Some(deadline) => {
                        let left = deadline.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            bail!("no answer from the pipe-floor child in {ANSWER_DEADLINE:?}");
                        }
                        PollTimeout::try_from(left.as_millis().saturating_add(1))
                            .unwrap_or(PollTimeout::MAX)
                    }
                };
                slept = true;
                match nix::poll::poll(&mut [PollFd::new(fd, PollFlags::POLLIN)], timeout) {
                    Ok(_) | Err(Errno::EINTR) => {}
                    Err(errno) => return Err(errno).context("waiting on a pipe"),
                }
            }
            Err(errno) => return Err(errno).context("reading a pipe"),
        }
    }
    Ok(Some(slept))
}

/// Writes all of `bytes` (a blocking pipe, or one with room: the messages are tiny).
fn write_all(fd: BorrowedFd<'_>, mut bytes: &[u8]) -> Result<()> {
    while !bytes.is_empty() {
        match nix::unistd::write(fd, bytes) {
            Ok(count) => bytes = &bytes[count.min(bytes.len())..],
            Err(Errno::EINTR | Errno::EAGAIN) => std::thread::yield_now(),
            Err(errno) => return Err(errno).context("writing a pipe"),
        }
    }
    Ok(())
}
