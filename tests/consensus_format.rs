//! docs/consensus-format.md against the code: its worked example (the fields, the 101 bytes,
//! the signature) is what `ConsensusMessage::signing_bytes()` and Ed25519 give, its layout is
//! what keyward signs (bytes rebuilt here from the document's table, not from keyward's code,
//! verify keyward's real signatures), its kind codes are the code's, and its interchange example
//! is a document keyward reads and writes exactly so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use keyward::{
    CONSENSUS_DOMAIN, CONSENSUS_SIGNING_LEN, ChainId, Config, ConsensusKind, ConsensusMessage,
    KeyService, KeySpec, Purpose, SecretService, WatermarkInterchange,
};

const DOCUMENT: &str = include_str!("../docs/consensus-format.md");

/// The lines of the fenced block between `<!-- begin NAME -->` and `<!-- end NAME -->`.
fn block(name: &str) -> Vec<&'static str> {
    let begin = format!("<!-- begin {name} -->");
    let end = format!("<!-- end {name} -->");
    let start = DOCUMENT
        .find(&begin)
        .unwrap_or_else(|| panic!("no {begin}"))
        + begin.len();
    let stop = start
        + DOCUMENT[start..]
            .find(&end)
            .unwrap_or_else(|| panic!("no {end}"));
    DOCUMENT[start..stop]
        .lines()
        .filter(|line| !line.trim().is_empty() && !line.starts_with("```"))
        .collect()
}

fn unhex(text: &str) -> Vec<u8> {
    assert!(text.len().is_multiple_of(2), "{text}");
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(&text[at..at + 2], 16).unwrap())
        .collect()
}

fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    bytes.try_into().unwrap()
}

/// The example's fields: name, bytes, and the rest of the line (the value, in words).
fn fields() -> Vec<(&'static str, Vec<u8>, String)> {
    block("example fields")
        .into_iter()
        .map(|line| {
            let mut tokens = line.split_whitespace();
            let name = tokens.next().unwrap();
            let hex = unhex(tokens.next().unwrap());
            (name, hex, tokens.collect::<Vec<_>>().join(" "))
        })
        .collect()
}

fn field(name: &str) -> (Vec<u8>, String) {
    fields()
        .into_iter()
        .find(|(field, _, _)| *field == name)
        .map(|(_, hex, comment)| (hex, comment))
        .unwrap_or_else(|| panic!("the example has no {name}"))
}

/// The example's message, read from its fields.
fn example_message() -> ConsensusMessage {
    let (code, kind_name) = field("kind");
    let kind = ConsensusKind::ALL
        .into_iter()
        .find(|candidate| candidate.to_string() == kind_name)
        .expect("a kind by name");
    assert_eq!(code, vec![kind.code()], "the kind's name and code agree");
    let (epoch, epoch_value) = field("epoch");
    let (round, round_value) = field("round");
    let message = ConsensusMessage::new(
        ChainId(array(&field("chain").0)),
        u64::from_be_bytes(array(&epoch)),
        u64::from_be_bytes(array(&round)),
        kind,
        array(&field("digest").0),
    );
    assert_eq!(
        message.epoch.to_string(),
        epoch_value,
        "the epoch's hex and decimal agree"
    );
    assert_eq!(
        message.round.to_string(),
        round_value,
        "the round's hex and decimal agree"
    );
    message
}

#[test]
fn the_documents_example_is_what_keyward_signs() {
    let message = example_message();
    assert_eq!(field("domain").0, CONSENSUS_DOMAIN.to_vec());
    assert_eq!(field("domain").1, "\"keyward-consensus/v1\"");

    // The fields, concatenated in the document's order, are the signed bytes.
    let concatenated: Vec<u8> = fields().into_iter().flat_map(|(_, hex, _)| hex).collect();
    assert_eq!(concatenated, message.signing_bytes().to_vec());
    // And so are the bytes shown in one piece.
    let whole = unhex(&block("example bytes").concat());
    assert_eq!(whole.len(), CONSENSUS_SIGNING_LEN);
    assert_eq!(whole.len(), 101, "the document says 101 bytes");
    assert_eq!(whole, message.signing_bytes().to_vec());
}

#[test]
fn the_documents_example_signature_is_pure_ed25519_over_the_bytes() {
    let lines = block("example signature");
    let value = |name: &str| {
        let line = lines
            .iter()
            .find(|line| line.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no {name}"));
        unhex(line.split_whitespace().nth(1).unwrap())
    };
    let key = SigningKey::from_bytes(&array(&value("seed")));
    let public = VerifyingKey::from_bytes(&array(&value("public-key"))).unwrap();
    assert_eq!(key.verifying_key(), public);
    let signature = Signature::from_bytes(&array(&value("signature")));
    let bytes = example_message().signing_bytes();
    assert_eq!(
        key.sign(&bytes),
        signature,
        "deterministic: the same signature"
    );
    public.verify_strict(&bytes, &signature).unwrap();
}

#[test]
fn the_documents_kind_codes_are_the_codes() {
    for kind in ConsensusKind::ALL {
        let row = format!("| `{}` | {kind} |", kind.code());
        assert!(DOCUMENT.contains(&row), "the document lacks {row}");
    }
}

/// The signed bytes built from the document's layout table alone: domain, kind code, chain id,
/// epoch and round big-endian, digest.
fn bytes_from_the_document(message: &ConsensusMessage) -> Vec<u8> {
    let mut bytes = b"keyward-consensus/v1".to_vec();
    bytes.push(match message.kind {
        ConsensusKind::Proposal => 1,
        ConsensusKind::Vote => 2,
        ConsensusKind::Timeout => 3,
    });
    bytes.extend_from_slice(&message.chain.0);
    bytes.extend_from_slice(&message.epoch.to_be_bytes());
    bytes.extend_from_slice(&message.round.to_be_bytes());
    bytes.extend_from_slice(&message.digest);
    bytes
}

#[test]
fn a_verifier_built_from_the_document_verifies_keywards_signatures() {
    let service = SecretService::spawn(Config::default()).unwrap();
    let key = service
        .generate_key(KeySpec::new(Purpose::Consensus))
        .unwrap();
    let public = *service.public_key(key).unwrap().as_ed25519().unwrap();
    let chain = ChainId([0x5c; 32]);
    for (round, kind) in [
        (1, ConsensusKind::Proposal),
        (1, ConsensusKind::Vote),
        (2, ConsensusKind::Timeout),
        (u64::MAX, ConsensusKind::Vote),
    ] {
        let message = ConsensusMessage::new(chain, 0x0102_0304_0506_0708, round, kind, [0xa5; 32]);
        let signature = service.sign_consensus(key, &message).unwrap();
        let bytes = bytes_from_the_document(&message);
        assert_eq!(bytes, message.signing_bytes().to_vec(), "{message:?}");
        public.verify_strict(&bytes, &signature).unwrap();
    }
}

#[test]
fn the_documents_interchange_example_is_read_and_written_exactly() {
    let example = block("interchange example").join("\n") + "\n";
    let document = WatermarkInterchange::from_json(&example).unwrap();
    assert_eq!(document.chain, ChainId([0xc1; 32]));
    assert_eq!(document.keys.len(), 1);
    let vote = document.keys[0].vote.unwrap();
    assert_eq!((vote.epoch, vote.round), (7, 42));
    assert!(document.keys[0].timeout.is_none());
    assert_eq!(
        document.to_json(),
        example,
        "the example is exactly what keyward writes"
    );
}
