//! Entry points for the fuzzers and the property tests: the same decode and dispatch code the
//! signer runs, driven in-process. Not part of the API.

use std::sync::RwLock;

use crate::dispatch::{LaneState, Outcome, handle_frame};
use crate::key_store::KeyStore;
use crate::protocol::{ResponseFrame, SecretMemory};
use crate::transport::{FrameReader, frame_buffer};

/// A signer's request handling without the process around it: a key store in locked memory and
/// one lane's state.
pub struct Dispatcher {
    store: RwLock<KeyStore>,
    lane: LaneState,
    answer: Box<[u8]>,
}

/// What the dispatcher did with one frame.
#[derive(Debug, PartialEq, Eq)]
pub enum DispatchResult {
    /// It answered; the answer decoded as a response frame with this id.
    Answered {
        /// The id the answer carries.
        id: u64,
        /// The answer's `Debug` form (no secrets: this store holds only fuzzer-made keys).
        summary: String,
    },
    /// It would stop serving: the stream cannot be trusted.
    Stopped,
}

impl Dispatcher {
    /// A dispatcher holding up to `key_limit` keys in locked anonymous memory.
    pub fn new(key_limit: u32) -> std::io::Result<Self> {
        let store = KeyStore::new(key_limit, SecretMemory::LockedAnonymous)
            .map_err(|error| std::io::Error::other(format!("{error:?}")))?;
        Ok(Self {
            store: RwLock::new(store),
            lane: LaneState::default(),
            answer: frame_buffer(),
        })
    }

    /// Handles one frame payload exactly as a signer worker would.
    ///
    /// # Panics
    /// If the dispatcher produced an answer that does not decode: that is the bug a fuzzer
    /// looks for.
    pub fn handle(&mut self, payload: &[u8]) -> DispatchResult {
        match handle_frame(&self.store, &mut self.lane, payload, &mut self.answer) {
            Outcome::Answer(length) => {
                let frame = postcard::from_bytes::<ResponseFrame>(&self.answer[4..length]);
                match frame {
                    Ok(frame) => DispatchResult::Answered {
                        id: frame.id,
                        summary: format!("{:?}", frame.response),
                    },
                    Err(error) => panic!("the dispatcher wrote an undecodable answer: {error}"),
                }
            }
            Outcome::CorruptStream => DispatchResult::Stopped,
        }
    }
}

/// Splits a byte stream into frames as a signer would, returning each payload's length, and
/// why it stopped (`None` if the bytes ran out cleanly at a frame boundary).
pub fn split_frames(stream: &[u8]) -> (Vec<usize>, Option<String>) {
    let mut reader = FrameReader::new();
    let mut rest = stream;
    let mut lengths = Vec::new();
    loop {
        let taken = reader
            .take_buffered()
            .map(|payload| payload.map(|payload| payload.len()));
        match taken {
            Ok(Some(length)) => lengths.push(length),
            Ok(None) if !rest.is_empty() => {
                let pushed = reader.push(rest);
                rest = &rest[pushed..];
            }
            Ok(None) if reader.has_partial_frame() => {
                return (lengths, Some("truncated frame".to_owned()));
            }
            Ok(None) => return (lengths, None),
            Err(error) => return (lengths, Some(format!("{error:?}"))),
        }
    }
}
