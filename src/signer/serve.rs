//! Runs in the signer: one worker's serving loop. Say ready, then read a request, answer it,
//! wipe the answer, repeat, until the host closes the lane. What a request does is decided in
//! `dispatch`; this file only moves frames.

use std::os::fd::AsFd;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use zeroize::Zeroize;

use crate::signer::descriptors::Lane;
use crate::signer::dispatch::{LaneState, Outcome, handle_frame, read_store};
use crate::signer::key_store::KeyStore;
use crate::sys::{self, SecretMemoryBacking};
use crate::wire::PROTOCOL_VERSION;
use crate::wire::framing::{FrameReader, ReadError, encode_frame, frame_buffer, write_all};
use crate::wire::key_types::KeyMemory;
use crate::wire::startup::{Greeting, exit_code};

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

/// Serves one lane until the host closes it: tell it we are ready, then read a request,
/// answer it, wipe the answer, repeat.
pub(crate) fn serve_lane(
    lane: Lane,
    store: &RwLock<KeyStore>,
    spin: Duration,
    buffers: LaneBuffers,
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
    loop {
        let wait = if flowing { spin } else { Duration::ZERO };
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
        match handle_frame(store, &mut state, payload, &mut answer) {
            Outcome::Answer(length) => {
                let sent = send(&answer[..length]);
                // Answers may carry Diffie-Hellman results.
                answer[..length].zeroize();
                if sent.is_err() {
                    sys::exit_immediately(exit_code::PIPE_FAILED);
                }
                last_answer = Some(Instant::now());
            }
            Outcome::CorruptStream => sys::exit_immediately(exit_code::CORRUPT_REQUEST_STREAM),
        }
    }
}
