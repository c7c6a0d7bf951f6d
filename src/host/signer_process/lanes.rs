//! Runs in the host: one lane (a pipe pair to one signer worker) seen from the callers that
//! share it. Sending a request and matching its answer to its caller.
//!
//! Each request takes the lane's writer lock only to write its frame. For answers, whichever
//! waiting caller gets the lane's reader lock reads frames for everyone and hands each answer to
//! its caller by id, waking that caller alone; the others sleep (parked) until their answer is
//! there or it is their turn to read. A single caller thus reads its own answer directly, with no
//! hand-off thread in between, and many callers cost one wake-up per answer, not one per caller.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::AtomicUsize;
use std::sync::{Mutex, MutexGuard, TryLockError};
use std::thread::Thread;
use std::time::{Duration, Instant};

use serde::Serialize;
use zeroize::Zeroize;

use crate::host::signer_process::CallFailure;
use crate::wire::framing::{
    FrameReader, ReadError, SpinBackoff, WriteError, encode_frame, frame_buffer, write_frame,
};
use crate::wire::messages::{Answer, AnswerFrame, Request, RequestFrame};
use crate::wire::startup::Greeting;

/// One call in flight on a lane: its answer once read, and its caller if asleep.
#[derive(Default)]
struct Call {
    answer: Option<Answer>,
    /// Set while the caller sleeps, so the reader can wake exactly it.
    sleeping: Option<Thread>,
}

/// Calls waiting on one lane, and answers read for callers not yet back to collect them.
#[derive(Default)]
struct Pending {
    calls: HashMap<u64, Call>,
    /// Requests whose callers gave up (timed out): an answer that arrives for one later is
    /// dropped quietly rather than taken for a protocol violation.
    abandoned: HashSet<u64>,
    failed: Option<CallFailure>,
}

impl Pending {
    /// Forgets a call whose caller is giving up, remembering its id so a late answer is dropped.
    fn abandon(&mut self, id: u64) {
        if self.calls.remove(&id).is_some() {
            self.abandoned.insert(id);
        }
    }

    /// Wakes one sleeping caller still without an answer, to take over reading the lane.
    fn wake_next_reader(&self) {
        let next = self
            .calls
            .values()
            .find(|call| call.answer.is_none() && call.sleeping.is_some());
        if let Some(thread) = next.and_then(|call| call.sleeping.as_ref()) {
            thread.unpark();
        }
    }

    /// Wakes every sleeping caller (the lane has failed).
    fn wake_all(&self) {
        for thread in self
            .calls
            .values()
            .filter_map(|call| call.sleeping.as_ref())
        {
            thread.unpark();
        }
    }
}

struct LaneWriter {
    /// The request pipe's write end, non-blocking.
    fd: OwnedFd,
    buffer: Box<[u8]>,
    next_id: u64,
}

struct LaneReader {
    fd: OwnedFd,
    frames: FrameReader,
}

/// One pipe pair to one signer worker.
pub(super) struct Lane {
    writer: Mutex<LaneWriter>,
    reader: Mutex<LaneReader>,
    pending: Mutex<Pending>,
    /// A copy of the request pipe's read end, never read: with it the pipe always has a reader,
    /// so writing a request never raises SIGPIPE in the host (see `transport::write_frame`).
    _request_reader_copy: OwnedFd,
    pub(super) in_flight: AtomicUsize,
    /// Whether a caller waiting alone on this lane spins for its answer (see [`SpinBackoff`]).
    pub(super) caller_spin: SpinBackoff,
}

/// Locks a mutex, ignoring poison: every critical section here leaves its data consistent at
/// each step, so a panic elsewhere cannot leave it half-updated.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Lane {
    /// A lane over the host's ends of its two pipes, made non-blocking by the caller.
    /// `request_reader_copy` is kept so the request pipe always has a reader.
    pub(super) fn new(
        request_write: OwnedFd,
        response_read: OwnedFd,
        request_reader_copy: OwnedFd,
    ) -> Self {
        Self {
            writer: Mutex::new(LaneWriter {
                fd: request_write,
                buffer: frame_buffer(),
                next_id: 1,
            }),
            reader: Mutex::new(LaneReader {
                fd: response_read,
                frames: FrameReader::new(),
            }),
            pending: Mutex::new(Pending::default()),
            _request_reader_copy: request_reader_copy,
            in_flight: AtomicUsize::new(0),
            caller_spin: SpinBackoff::default(),
        }
    }

    /// Writes a start-up frame (an exec'd signer's bootstrap). `Err(None)`: it did not encode.
    pub(super) fn send_start_frame<T: Serialize>(
        &self,
        message: &T,
        pidfd: BorrowedFd<'_>,
        deadline: Instant,
    ) -> Result<(), Option<WriteError>> {
        let mut writer = lock(&self.writer);
        let LaneWriter { fd, buffer, .. } = &mut *writer;
        let length = encode_frame(message, buffer).map_err(|_| None)?;
        let written = write_frame(fd.as_fd(), &buffer[..length], pidfd, deadline).map_err(Some);
        // The bootstrap may carry an in-memory passphrase for the store: no copy stays behind.
        zeroize::Zeroize::zeroize(&mut buffer[..length]);
        written
    }

    /// Reads the lane's greeting. `Err(None)`: a frame came that is not a greeting.
    pub(super) fn read_greeting(
        &self,
        pidfd: BorrowedFd<'_>,
        deadline: Instant,
    ) -> Result<Greeting, Option<ReadError>> {
        let mut reader = lock(&self.reader);
        let LaneReader { fd, frames } = &mut *reader;
        let payload = frames
            .read_frame(fd.as_fd(), Some(pidfd), Duration::ZERO, Some(deadline))
            .map_err(Some)?;
        postcard::from_bytes::<Greeting>(payload).map_err(|_| None)
    }

    /// The lane's two pipe ends (request write, answer read), for the raw-pipe test harness.
    #[cfg(feature = "test-support")]
    pub(super) fn into_raw_ends(self) -> (OwnedFd, OwnedFd) {
        let writer = self
            .writer
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let reader = self
            .reader
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        (writer.fd, reader.fd)
    }

    /// Writes a request frame; returns its id. The id is registered before the write, so the
    /// answer always finds its caller.
    pub(super) fn send(
        &self,
        request: Request<'_>,
        pidfd: &OwnedFd,
        deadline: Instant,
    ) -> Result<u64, CallFailure> {
        let mut writer = lock(&self.writer);
        let id = writer.next_id;
        writer.next_id += 1;
        lock(&self.pending).calls.insert(id, Call::default());
        let LaneWriter { fd, buffer, .. } = &mut *writer;
        let written = encode_frame(&RequestFrame { id, request }, buffer)
            .map_err(|_| CallFailure::Internal("a request did not fit in a frame"))
            .and_then(|length| {
                write_frame(fd.as_fd(), &buffer[..length], pidfd.as_fd(), deadline).map_err(
                    |error| match error {
                        WriteError::PeerExited => CallFailure::Ended,
                        WriteError::TimedOut => CallFailure::WriteTimedOut,
                        WriteError::Io(error) => CallFailure::Io(error.kind()),
                    },
                )
            });
        drop(writer);
        match written {
            Ok(()) => Ok(id),
            Err(failure) => {
                lock(&self.pending).calls.remove(&id);
                Err(failure)
            }
        }
    }

    /// Gives up on the call `id` without waiting for its answer (a caller that sent requests on
    /// several lanes and has failed on another): a late answer to it is dropped quietly.
    pub(super) fn abandon(&self, id: u64) {
        let mut pending = lock(&self.pending);
        pending.abandon(id);
        pending.wake_next_reader();
    }

    /// Waits for the answer to `id`, reading the lane for everyone if no one else is.
    pub(super) fn receive(
        &self,
        id: u64,
        deadline: Instant,
        spin: Duration,
        pidfd: &OwnedFd,
    ) -> Result<Answer, CallFailure> {
        let mut pending = lock(&self.pending);
        loop {
            if let Some(failure) = &pending.failed {
                let failure = failure.clone();
                pending.abandon(id);
                return Err(failure);
            }
            if let Some(Call {
                answer: Some(_), ..
            }) = pending.calls.get(&id)
                && let Some(Call {
                    answer: Some(answer),
                    ..
                }) = pending.calls.remove(&id)
            {
                return Ok(answer);
            }
            let reader = match self.reader.try_lock() {
                Ok(reader) => Some(reader),
                Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
                Err(TryLockError::WouldBlock) => None,
            };
            match reader {
                Some(mut reader) => {
                    if let Some(call) = pending.calls.get_mut(&id) {
                        call.sleeping = None;
                    }
                    drop(pending);
                    let result = self.read_until(&mut reader, id, deadline, spin, pidfd);
                    drop(reader);
                    // The reader lock is free again before this lock is taken: a caller that
                    // found it taken is registered as sleeping by now, and is woken here.
                    let mut pending = lock(&self.pending);
                    pending.calls.remove(&id);
                    match &result {
                        // A deadline passing is this caller's failure, not the lane's: the
                        // signer may only be stopped, and the next reader carries on (a late
                        // answer to this id is dropped). If the signer is hung, the verdict
                        // kills it and the others see it end.
                        Err(CallFailure::TimedOut) => {
                            pending.abandoned.insert(id);
                            pending.wake_next_reader();
                        }
                        Err(failure) => {
                            pending.abandoned.insert(id);
                            pending.failed.get_or_insert_with(|| failure.clone());
                            pending.wake_all();
                        }
                        Ok(_) => pending.wake_next_reader(),
                    }
                    return result;
                }
                None => {
                    let now = Instant::now();
                    if now >= deadline {
                        pending.abandon(id);
                        pending.wake_next_reader();
                        return Err(CallFailure::TimedOut);
                    }
                    let Some(call) = pending.calls.get_mut(&id) else {
                        return Err(CallFailure::Internal("a call lost its place on the lane"));
                    };
                    if call.sleeping.is_none() {
                        call.sleeping = Some(std::thread::current());
                    }
                    drop(pending);
                    // A wake-up given before this point is kept by park, so none is lost.
                    std::thread::park_timeout(deadline - now);
                    pending = lock(&self.pending);
                }
            }
        }
    }

    /// Reads answers until the one for `id` arrives, handing the others to their callers.
    fn read_until(
        &self,
        reader: &mut LaneReader,
        id: u64,
        deadline: Instant,
        spin: Duration,
        pidfd: &OwnedFd,
    ) -> Result<Answer, CallFailure> {
        let LaneReader { fd, frames } = reader;
        loop {
            let payload = frames
                .read_frame(fd.as_fd(), Some(pidfd.as_fd()), spin, Some(deadline))
                .map_err(|error| match error {
                    ReadError::Closed { .. } | ReadError::PeerExited => CallFailure::Ended,
                    ReadError::TooLong => CallFailure::Misbehaved("an answer over the frame cap"),
                    ReadError::TimedOut => CallFailure::TimedOut,
                    ReadError::Io(error) => CallFailure::Io(error.kind()),
                })?;
            let decoded = postcard::from_bytes::<AnswerFrame>(payload);
            // Answers may carry Diffie-Hellman results.
            payload.zeroize();
            let frame = decoded.map_err(|_| CallFailure::Misbehaved("an undecodable answer"))?;
            if frame.id == id {
                if !spin.is_zero() {
                    self.caller_spin.spun(!frames.slept_last());
                }
                return Ok(frame.answer);
            }
            let mut pending = lock(&self.pending);
            let Pending {
                calls, abandoned, ..
            } = &mut *pending;
            match calls.get_mut(&frame.id) {
                Some(call @ Call { answer: None, .. }) => {
                    call.answer = Some(frame.answer);
                    if let Some(caller) = &call.sleeping {
                        caller.unpark();
                    }
                }
                None if abandoned.remove(&frame.id) => {}
                _ => {
                    return Err(CallFailure::Misbehaved(
                        "an answer to a request nobody is waiting for",
                    ));
                }
            }
        }
    }
}
