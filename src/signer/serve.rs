//! Runs in the signer: one worker's serving loop. Say ready, then read requests, answer them,
//! wipe the answers, repeat, until the host closes the lane. What a request does is decided in
//! `dispatch`; this file only moves frames.
//!
//! Callers queued on a lane send their requests while the worker is busy, so one read often
//! brings several whole frames. They are answered back to back in the answer buffer and written
//! with one write: one system call, and one wake-up of the host's reader, for the burst.

use std::os::fd::AsFd;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use zeroize::Zeroize;

use crate::signer::descriptors::Lane;
use crate::signer::dispatch::{LaneState, Outcome, handle_frame, read_store};
use crate::signer::key_store::KeyStore;
use crate::sys::{self, SecretMemoryBacking};
use crate::wire::PROTOCOL_VERSION;
use crate::wire::framing::{
    FrameReader, ReadError, SpinBackoff, encode_frame, frame_buffer, write_all,
};
use crate::wire::key_types::KeyMemory;
use crate::wire::startup::{Greeting, SealedSummary, exit_code};

/// A lane's read buffer and answer buffer, each one frame at the cap.
pub(crate) struct LaneBuffers {
    reader: FrameReader,
    answer: Box<[u8]>,
}

impl LaneBuffers {
    pub(crate) fn new() -> Self {
        Self {
            reader: FrameReader::new(),
            answer: frame_buffer(),
        }
    }
}

/// Serves one lane until the host closes it: tell it we are ready, then read requests, answer
/// every whole one read, write the answers at once, wipe them, repeat.
pub(crate) fn serve_lane(
    lane: Lane,
    store: &RwLock<KeyStore>,
    spin: Duration,
    buffers: LaneBuffers,
    sealed: Option<SealedSummary>,
) -> ! {
    let request = lane.request_fd();
    let response = lane.response_fd();
    let LaneBuffers {
        mut reader,
        mut answer,
    } = buffers;
    let mut state = LaneState::in_signer();
    let send = |bytes: &[u8]| {
        write_all(bytes, |chunk| {
            nix::unistd::write(response.as_fd(), chunk).map_err(std::io::Error::from)
        })
    };
    let (key_memory, store_id) = {
        let store = read_store(store);
        let key_memory = match store.backing() {
            SecretMemoryBacking::MemfdSecret => KeyMemory::MemfdSecret,
            SecretMemoryBacking::LockedAnonymous => KeyMemory::LockedAnonymous,
        };
        (key_memory, store.id())
    };
    let ready = Greeting::Ready {
        protocol_version: PROTOCOL_VERSION,
        key_memory,
        store: store_id,
        sealed,
    };
    match encode_frame(&ready, &mut answer) {
        Ok(length) if send(&answer[..length]).is_ok() => {}
        _ => sys::exit_immediately(exit_code::PIPE_FAILED),
    }
    // Spin for the next request only while requests are flowing: when this one came within a
    // spin of the previous answer. After an idle spell the worker answers and sleeps at once,
    // which keeps it on the core its caller wakes it from rather than on one that has halted.
    let mut flowing = false;
    let mut last_answer: Option<Instant> = None;
    // And only while its spins find requests: one that ran out makes the next waits sleep.
    let backoff = SpinBackoff::default();
    loop {
        let wait = if flowing && backoff.may_spin() {
            spin
        } else {
            Duration::ZERO
        };
        let payload = match reader.read_frame(request, None, wait, None) {
            Ok(payload) => payload,
            Err(ReadError::Closed { mid_frame: false }) => {
                sys::exit_immediately(exit_code::SHUTDOWN)
            }
            Err(ReadError::Closed { mid_frame: true } | ReadError::TooLong) => {
                sys::exit_immediately(exit_code::CORRUPT_REQUEST_STREAM)
            }
            Err(ReadError::TimedOut | ReadError::PeerExited) => continue,
            Err(ReadError::Io(_)) => sys::exit_immediately(exit_code::PIPE_FAILED),
        };
        flowing = last_answer.is_some_and(|answered| answered.elapsed() < spin);
        // The answers are written when the buffer cannot take the next one, and after the last
        // whole frame read. A frame that cannot be trusted part-way through still has the answers
        // before it written, as when each answer had a write of its own, and the signer stops
        // exactly where it stopped then: on that frame, serving nothing after it.
        let mut encoded = 0;
        let mut payload = payload;
        let stop = loop {
            match handle_frame(store, &mut state, payload, &mut answer[encoded..]) {
                Outcome::Answer(length) => encoded += length,
                Outcome::NoRoom if encoded > 0 => {
                    write_and_wipe(&send, &mut answer[..encoded]);
                    encoded = 0;
                    continue;
                }
                // No room in the whole buffer cannot happen (every answer fits in one frame): if
                // it ever did, stop rather than lie.
                Outcome::NoRoom | Outcome::CorruptStream => {
                    break Some(exit_code::CORRUPT_REQUEST_STREAM);
                }
            }
            match reader.take_buffered() {
                Ok(Some(next)) => payload = next,
                Ok(None) => break None,
                Err(_) => break Some(exit_code::CORRUPT_REQUEST_STREAM),
            }
        };
        write_and_wipe(&send, &mut answer[..encoded]);
        if let Some(code) = stop {
            sys::exit_immediately(code);
        }
        last_answer = Some(Instant::now());
        if !wait.is_zero() {
            backoff.spun(!reader.slept_last());
        }
    }
}

/// Writes `answers` and wipes them (answers may carry Diffie-Hellman results); a failed write
/// ends the signer.
fn write_and_wipe(send: &impl Fn(&[u8]) -> std::io::Result<()>, answers: &mut [u8]) {
    if answers.is_empty() {
        return;
    }
    let sent = send(answers);
    answers.zeroize();
    if sent.is_err() {
        sys::exit_immediately(exit_code::PIPE_FAILED);
    }
}
