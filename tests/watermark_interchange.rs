//! The watermark interchange, as behaviour: a store's watermarks exported, the document edited
//! higher and imported (raised, and still raised after a restart), edited lower (nothing
//! lowered, nothing written); a document that names a key the store does not hold changes
//! nothing; every malformed document refused with its own typed error; and the `keyward
//! watermark export|import` commands end to end, exit codes included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use keyward::{
    ChainId, Config, ConsensusKind, ConsensusMessage, Error, GuardRule, InterchangeError,
    KdfParameters, KeyId, KeyService, KeySpec, KeyWatermarks, MarkImport, Purpose, SecretService,
    StoreConfig, UnlockSecret, Watermark, WatermarkInterchange,
};

const TEST_KDF: KdfParameters = KdfParameters {
    memory_kib: 64,
    passes: 1,
    lanes: 1,
};
const CHAIN: ChainId = ChainId([0xc1; 32]);
const OTHER_CHAIN: ChainId = ChainId([0xc2; 32]);
const UNLOCK_SECRET: &str = "interchange tests unlock secret";

/// A 0700 directory with a 0600 unlock file, removed on drop.
struct StoreDir {
    base: PathBuf,
}

impl StoreDir {
    fn new(name: &str) -> Self {
        let base =
            std::env::temp_dir().join(format!("keyward-interchange-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(base.join("unlock"), format!("{UNLOCK_SECRET}\n")).unwrap();
        std::fs::set_permissions(base.join("unlock"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        Self { base }
    }

    fn store(&self) -> PathBuf {
        self.base.join("store")
    }

    fn unlock(&self) -> PathBuf {
        self.base.join("unlock")
    }

    fn open(&self) -> SecretService {
        SecretService::spawn(
            Config::default().with_store(
                StoreConfig::new(self.store(), UnlockSecret::file(self.unlock()))
                    .create_if_missing()
                    .with_kdf(TEST_KDF),
            ),
        )
        .unwrap()
    }

    /// The sequence number of the state on disk (bytes 119..127 of the state file): it grows
    /// with every write.
    fn sequence(&self) -> u64 {
        let bytes = std::fs::read(self.store().join("keyward-store")).unwrap();
        u64::from_le_bytes(bytes[119..127].try_into().unwrap())
    }

    fn file(&self, name: &str) -> PathBuf {
        self.base.join(name)
    }
}

impl Drop for StoreDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

fn consensus_key(service: &SecretService) -> (KeyId, [u8; 32]) {
    let key = service
        .generate_key(KeySpec::new(Purpose::Consensus))
        .unwrap();
    let public = service.public_key(key).unwrap().to_bytes();
    (key, public)
}

fn mark(epoch: u64, round: u64, digest: u8) -> Watermark {
    Watermark {
        epoch,
        round,
        digest: [digest; 32],
    }
}

/// The key's watermarks on `chain`, as the store keeps them.
fn marks_on(
    service: &SecretService,
    key: KeyId,
    chain: ChainId,
) -> Option<keyward::ChainWatermarks> {
    service
        .watermarks(key)
        .unwrap()
        .into_iter()
        .find(|marks| marks.chain == chain)
}

/// A store with two consensus keys (the first has signed a proposal and a vote on CHAIN, the
/// second nothing) and an account key.
struct Signed {
    first: (KeyId, [u8; 32]),
    second: (KeyId, [u8; 32]),
    account: (KeyId, [u8; 32]),
}

fn signed_store(store: &StoreDir) -> Signed {
    let service = store.open();
    let first = consensus_key(&service);
    let second = consensus_key(&service);
    let account = service
        .generate_key(KeySpec::new(Purpose::Account))
        .unwrap();
    let account = (account, service.public_key(account).unwrap().to_bytes());
    service
        .sign_consensus(
            first.0,
            &ConsensusMessage::proposal(CHAIN, 1, 4, [0x11; 32]),
        )
        .unwrap();
    service
        .sign_consensus(first.0, &ConsensusMessage::vote(CHAIN, 1, 5, [0x22; 32]))
        .unwrap();
    Signed {
        first,
        second,
        account,
    }
}

fn refused(result: keyward::Result<keyward::ImportReport>) -> InterchangeError {
    match result {
        Err(Error::Interchange(error)) => error,
        other => panic!("expected a refused document, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Export and import through the library.

#[test]
fn an_export_lists_every_consensus_key_with_its_watermarks_on_the_chain() {
    let store = StoreDir::new("export");
    let keys = signed_store(&store);
    let service = store.open();
    assert_eq!(WatermarkInterchange::chains(&service).unwrap(), vec![CHAIN]);
    let document = WatermarkInterchange::export(&service, CHAIN).unwrap();
    assert_eq!(document.chain, CHAIN);
    assert_eq!(
        document.keys,
        vec![
            KeyWatermarks {
                public_key: keys.first.1,
                proposal: Some(mark(1, 4, 0x11)),
                vote: Some(mark(1, 5, 0x22)),
                timeout: None,
            },
            KeyWatermarks {
                public_key: keys.second.1,
                proposal: None,
                vote: None,
                timeout: None,
            },
        ],
        "both consensus keys, the account key left out"
    );
    // Through JSON and back: the same document.
    let text = document.to_json();
    assert_eq!(WatermarkInterchange::from_json(&text).unwrap(), document);
    assert!(text.contains("\"interchange_format\": \"keyward-watermarks\""));
    assert!(
        text.contains("\"round\": \"5\""),
        "integers are strings:\n{text}"
    );
    // Another chain: every key listed, none with a watermark.
    let other = WatermarkInterchange::export(&service, OTHER_CHAIN).unwrap();
    assert_eq!(other.keys.len(), 2);
    assert!(other.keys.iter().all(|key| {
        ConsensusKind::ALL
            .iter()
            .all(|&kind| key.of(kind).is_none())
    }));
}

#[test]
fn an_import_edited_higher_raises_durably_and_reports_what_it_raised() {
    let store = StoreDir::new("higher");
    let keys = signed_store(&store);
    let mut document = WatermarkInterchange::export(&store.open(), CHAIN).unwrap();
    // The validator went on signing elsewhere: a higher vote, a timeout, and the second key's
    // first proposal. The first key's proposal is the store's own.
    document.keys[0].vote = Some(mark(1, 9, 0x33));
    document.keys[0].timeout = Some(mark(1, 8, 0x44));
    document.keys[1].proposal = Some(mark(2, 0, 0x55));
    let text = document.to_json();

    let service = store.open();
    let before = store.sequence();
    let report = WatermarkInterchange::from_json(&text)
        .unwrap()
        .import(&service)
        .unwrap();
    assert_eq!(report.chain, CHAIN);
    let (first, second) = (&report.keys[0], &report.keys[1]);
    assert_eq!(first.key, keys.first.0);
    assert_eq!(first.public_key, keys.first.1);
    assert_eq!(
        first.proposal,
        MarkImport::Kept {
            held: mark(1, 4, 0x11),
            offered: mark(1, 4, 0x11)
        }
    );
    assert_eq!(
        first.vote,
        MarkImport::Raised {
            from: Some(mark(1, 5, 0x22)),
            to: mark(1, 9, 0x33)
        }
    );
    assert_eq!(
        first.timeout,
        MarkImport::Raised {
            from: None,
            to: mark(1, 8, 0x44)
        }
    );
    assert_eq!(
        second.proposal,
        MarkImport::Raised {
            from: None,
            to: mark(2, 0, 0x55)
        }
    );
    assert_eq!(second.vote, MarkImport::NotOffered);
    assert_eq!((report.raised(), report.kept()), (3, 1));
    assert_eq!(
        store.sequence(),
        before + 2,
        "one durable write per key raised"
    );
    drop(service);

    // After a restart the store holds the document's watermarks, and the guard applies them.
    let service = store.open();
    assert_eq!(
        WatermarkInterchange::export(&service, CHAIN).unwrap(),
        document
    );
    let (rule, _) = refusal(service.sign_consensus(
        keys.first.0,
        &ConsensusMessage::vote(CHAIN, 1, 7, [0x66; 32]),
    ));
    assert_eq!(rule, GuardRule::BelowWatermark, "below the imported vote");
    let (rule, _) = refusal(service.sign_consensus(
        keys.second.0,
        &ConsensusMessage::proposal(CHAIN, 2, 0, [0x77; 32]),
    ));
    assert_eq!(
        rule,
        GuardRule::ConflictingDigest,
        "at the imported proposal"
    );
    service
        .sign_consensus(
            keys.first.0,
            &ConsensusMessage::vote(CHAIN, 1, 10, [0x66; 32]),
        )
        .unwrap();
}

#[test]
fn an_import_edited_lower_lowers_nothing_and_writes_nothing() {
    let store = StoreDir::new("lower");
    let keys = signed_store(&store);
    let service = store.open();
    let mut document = WatermarkInterchange::export(&service, CHAIN).unwrap();
    document.keys[0].proposal = Some(mark(1, 3, 0x11));
    document.keys[0].vote = Some(mark(0, 99, 0x99));
    let text = document.to_json();
    let before = store.sequence();
    let marks = marks_on(&service, keys.first.0, CHAIN);

    let report = WatermarkInterchange::from_json(&text)
        .unwrap()
        .import(&service)
        .unwrap();
    assert_eq!(
        report.keys[0].proposal,
        MarkImport::Kept {
            held: mark(1, 4, 0x11),
            offered: mark(1, 3, 0x11)
        }
    );
    assert_eq!(
        report.keys[0].vote,
        MarkImport::Kept {
            held: mark(1, 5, 0x22),
            offered: mark(0, 99, 0x99)
        },
        "an earlier epoch is lower, whatever its round"
    );
    assert_eq!(report.keys[0].timeout, MarkImport::NotOffered);
    assert_eq!((report.raised(), report.kept()), (0, 2));
    assert_eq!(marks_on(&service, keys.first.0, CHAIN), marks);
    assert_eq!(store.sequence(), before, "nothing raised, nothing written");
}

#[test]
fn an_import_at_the_same_round_with_another_digest_keeps_the_stores_and_says_so() {
    let store = StoreDir::new("conflict");
    let keys = signed_store(&store);
    let service = store.open();
    let mut document = WatermarkInterchange::export(&service, CHAIN).unwrap();
    document.keys[0].vote = Some(mark(1, 5, 0xee));
    let report = document.import(&service).unwrap();
    assert!(report.keys[0].vote.is_conflicting(), "{report:?}");
    assert!(!report.keys[0].proposal.is_conflicting());
    assert_eq!(
        marks_on(&service, keys.first.0, CHAIN).unwrap().vote,
        Some(mark(1, 5, 0x22))
    );
}

#[test]
fn an_import_naming_a_key_the_store_does_not_hold_changes_nothing() {
    let store = StoreDir::new("unknown");
    let keys = signed_store(&store);
    let service = store.open();
    let mut document = WatermarkInterchange::export(&service, CHAIN).unwrap();
    // The first entry alone would raise; the unknown key comes after it.
    document.keys[0].vote = Some(mark(5, 0, 0x01));
    document.keys.push(KeyWatermarks {
        public_key: [0x5a; 32],
        proposal: None,
        vote: Some(mark(1, 1, 0x01)),
        timeout: None,
    });
    let before = store.sequence();
    let marks = marks_on(&service, keys.first.0, CHAIN);
    let error = refused(document.import(&service));
    assert_eq!(
        error,
        InterchangeError::UnknownKey {
            public_key: [0x5a; 32],
            index: 2
        }
    );
    assert!(error.to_string().contains(&"5a".repeat(32)), "{error}");
    assert_eq!(
        marks_on(&service, keys.first.0, CHAIN),
        marks,
        "nothing raised"
    );
    assert_eq!(store.sequence(), before, "nothing written");
}

#[test]
fn an_import_naming_a_key_of_another_purpose_changes_nothing() {
    let store = StoreDir::new("purpose");
    let keys = signed_store(&store);
    let service = store.open();
    let mut document = WatermarkInterchange::export(&service, CHAIN).unwrap();
    document.keys[0].vote = Some(mark(5, 0, 0x01));
    document.keys.push(KeyWatermarks {
        public_key: keys.account.1,
        proposal: None,
        vote: Some(mark(1, 1, 0x01)),
        timeout: None,
    });
    let before = store.sequence();
    assert_eq!(
        refused(document.import(&service)),
        InterchangeError::NotAConsensusKey {
            public_key: keys.account.1,
            index: 2,
            purpose: Purpose::Account,
        }
    );
    assert_eq!(store.sequence(), before, "nothing written");
    assert_eq!(
        marks_on(&service, keys.first.0, CHAIN).unwrap().vote,
        Some(mark(1, 5, 0x22))
    );
}

#[test]
fn an_import_for_a_chain_beyond_a_keys_limit_changes_nothing() {
    let store = StoreDir::new("chains");
    let keys = signed_store(&store);
    let service = store.open();
    // The second key signs on four chains; the first keeps one.
    for chain in 1..=4u8 {
        service
            .sign_consensus(
                keys.second.0,
                &ConsensusMessage::vote(ChainId([chain; 32]), 1, 1, [chain; 32]),
            )
            .unwrap();
    }
    let fifth = ChainId([0xf5; 32]);
    let document = WatermarkInterchange {
        chain: fifth,
        keys: vec![
            KeyWatermarks {
                public_key: keys.first.1,
                proposal: None,
                vote: Some(mark(1, 1, 0x01)),
                timeout: None,
            },
            KeyWatermarks {
                public_key: keys.second.1,
                proposal: None,
                vote: Some(mark(1, 1, 0x01)),
                timeout: None,
            },
        ],
    };
    let before = store.sequence();
    assert_eq!(
        refused(document.import(&service)),
        InterchangeError::ChainLimit {
            public_key: keys.second.1,
            index: 1,
            cap: 4
        }
    );
    assert_eq!(store.sequence(), before, "nothing written");
    assert_eq!(
        marks_on(&service, keys.first.0, fifth),
        None,
        "the first key untouched"
    );
    // An entry that offers nothing for such a key is no reason to refuse.
    let mut nothing = document.clone();
    nothing.keys[1].vote = None;
    nothing.import(&service).unwrap();
}

#[test]
fn a_document_built_with_a_key_twice_is_refused_on_import() {
    let store = StoreDir::new("twice");
    let keys = signed_store(&store);
    let service = store.open();
    let mut document = WatermarkInterchange::export(&service, CHAIN).unwrap();
    document.keys[1].public_key = keys.first.1;
    document.keys[1].vote = Some(mark(9, 9, 0x09));
    let before = store.sequence();
    assert_eq!(
        refused(document.import(&service)),
        InterchangeError::DuplicateKey {
            public_key: keys.first.1,
            first: 0,
            second: 1
        }
    );
    assert_eq!(store.sequence(), before);
}

fn refusal(result: keyward::Result<ed25519_dalek::Signature>) -> (GuardRule, Option<Watermark>) {
    match result {
        Err(Error::WouldDoubleSign {
            rule, watermark, ..
        }) => (rule, watermark),
        other => panic!("expected a double-sign refusal, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Strict parsing: every bad input its own typed error.

const KEY_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const KEY_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const DIGEST: &str = "dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd";
const CHAIN_HEX: &str = "c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1";

/// A valid document with one entry whose vote is `vote` (a JSON value), the rest as given.
fn document(format: &str, version: &str, chain: &str, entries: &str) -> String {
    format!(
        r#"{{
  "metadata": {{
    "interchange_format": {format},
    "interchange_format_version": {version},
    "chain_id": {chain}
  }},
  "data": [{entries}]
}}"#
    )
}

fn entry(public_key: &str, vote: &str) -> String {
    format!(
        r#"{{"public_key": "{public_key}", "proposal": null, "vote": {vote}, "timeout": null}}"#
    )
}

fn vote(epoch: &str, round: &str, digest: &str) -> String {
    format!(r#"{{"epoch": "{epoch}", "round": "{round}", "digest": "{digest}"}}"#)
}

/// A document that is valid but for what the arguments change.
fn with_vote(vote_json: &str) -> String {
    document(
        r#""keyward-watermarks""#,
        r#""1""#,
        &format!(r#""{CHAIN_HEX}""#),
        &entry(KEY_A, vote_json),
    )
}

fn parse(text: &str) -> Result<WatermarkInterchange, InterchangeError> {
    WatermarkInterchange::from_json(text)
}

#[test]
fn a_valid_document_parses() {
    let parsed = parse(&with_vote(&vote("3", "18446744073709551615", DIGEST))).unwrap();
    assert_eq!(parsed.chain, CHAIN);
    assert_eq!(
        parsed.keys,
        vec![KeyWatermarks {
            public_key: [0xaa; 32],
            proposal: None,
            vote: Some(Watermark {
                epoch: 3,
                round: u64::MAX,
                digest: [0xdd; 32]
            }),
            timeout: None,
        }]
    );
    // Upper-case hex reads the same.
    let upper = with_vote(&vote("3", "4", &DIGEST.to_uppercase()));
    assert_eq!(
        parse(&upper).unwrap().keys[0].vote.unwrap().digest,
        [0xdd; 32]
    );
}

#[test]
fn a_document_that_is_not_json_is_malformed() {
    for text in ["", "not json", "{", "[]", "null"] {
        assert!(
            matches!(parse(text), Err(InterchangeError::Malformed(_))),
            "{text:?}: {:?}",
            parse(text)
        );
    }
}

#[test]
fn an_unknown_field_is_malformed_not_ignored() {
    // A typo in a kind's name must not drop that watermark silently.
    let text = with_vote("null").replace(r#""vote": null"#, r#""vote": null, "vot": null"#);
    let error = parse(&text).unwrap_err();
    assert!(
        matches!(&error, InterchangeError::Malformed(message) if message.contains("vot")),
        "{error:?}"
    );
    let text =
        with_vote(&vote("1", "2", DIGEST)).replace(r#""epoch""#, r#""height": "1", "epoch""#);
    assert!(matches!(parse(&text), Err(InterchangeError::Malformed(_))));
}

#[test]
fn a_missing_kind_is_malformed_even_though_null_is_allowed() {
    let text = with_vote("null").replace(r#", "timeout": null"#, "");
    let error = parse(&text).unwrap_err();
    assert!(
        matches!(&error, InterchangeError::Malformed(message) if message.contains("timeout")),
        "{error:?}"
    );
}

#[test]
fn a_field_given_twice_is_malformed() {
    let text = with_vote(&vote("1", "2", DIGEST))
        .replace(r#""round": "2""#, r#""round": "2", "round": "3""#);
    let error = parse(&text).unwrap_err();
    assert!(
        matches!(&error, InterchangeError::Malformed(message) if message.contains("duplicate")),
        "{error:?}"
    );
}

#[test]
fn an_integer_as_a_json_number_is_malformed() {
    let text = with_vote(r#"{"epoch": 1, "round": "2", "digest": "dd"}"#);
    assert!(matches!(parse(&text), Err(InterchangeError::Malformed(_))));
}

#[test]
fn another_format_is_refused_by_name() {
    // An EIP-3076 file: no interchange_format at all.
    let eip_3076 = r#"{"metadata": {"interchange_format_version": "5", "genesis_validators_root": "0x04700007fabc8282644aed6d1c7c9e21d38a03a0c4ba193f3afe428824b3a673"}, "data": []}"#;
    assert_eq!(
        parse(eip_3076).unwrap_err(),
        InterchangeError::UnknownFormat { found: None }
    );
    let other = document(
        r#""tmkms-state""#,
        r#""1""#,
        &format!(r#""{CHAIN_HEX}""#),
        "",
    );
    assert_eq!(
        parse(&other).unwrap_err(),
        InterchangeError::UnknownFormat {
            found: Some("tmkms-state".to_owned())
        }
    );
}

#[test]
fn another_version_is_refused_by_number() {
    let later = document(
        r#""keyward-watermarks""#,
        r#""2""#,
        &format!(r#""{CHAIN_HEX}""#),
        "",
    );
    let error = parse(&later).unwrap_err();
    assert_eq!(
        error,
        InterchangeError::UnsupportedVersion {
            found: Some("2".to_owned())
        }
    );
    assert!(error.to_string().contains("\"1\""), "{error}");
    let missing = later.replace(r#""interchange_format_version": "2","#, "");
    assert_eq!(
        parse(&missing).unwrap_err(),
        InterchangeError::UnsupportedVersion { found: None }
    );
}

#[test]
fn bad_hex_is_refused_naming_the_field() {
    let chain = document(
        r#""keyward-watermarks""#,
        r#""1""#,
        &format!(r#""{}""#, CHAIN_HEX.replacen('c', "g", 1)),
        "",
    );
    assert_eq!(
        parse(&chain).unwrap_err(),
        InterchangeError::BadHex {
            field: "metadata.chain_id".to_owned()
        }
    );
    let prefixed = document(
        r#""keyward-watermarks""#,
        r#""1""#,
        &format!(r#""0x{}""#, &CHAIN_HEX[2..]),
        "",
    );
    assert_eq!(
        parse(&prefixed).unwrap_err(),
        InterchangeError::BadHex {
            field: "metadata.chain_id".to_owned()
        },
        "no 0x prefix"
    );
    let key = with_vote("null").replace(KEY_A, &KEY_A.replacen('a', "z", 1));
    assert_eq!(
        parse(&key).unwrap_err(),
        InterchangeError::BadHex {
            field: "data[0].public_key".to_owned()
        }
    );
    let digest = with_vote(&vote("1", "2", &DIGEST.replacen('d', " ", 1)));
    assert_eq!(
        parse(&digest).unwrap_err(),
        InterchangeError::BadHex {
            field: "data[0].vote.digest".to_owned()
        }
    );
}

#[test]
fn a_wrong_length_is_refused_naming_the_field() {
    let key = with_vote("null").replace(KEY_A, &KEY_A[2..]);
    assert_eq!(
        parse(&key).unwrap_err(),
        InterchangeError::WrongLength {
            field: "data[0].public_key".to_owned(),
            expected: 64,
            found: 62
        }
    );
    let digest = with_vote(&vote("1", "2", &format!("{DIGEST}dd")));
    assert_eq!(
        parse(&digest).unwrap_err(),
        InterchangeError::WrongLength {
            field: "data[0].vote.digest".to_owned(),
            expected: 64,
            found: 66
        }
    );
    let odd = with_vote(&vote("1", "2", &DIGEST[1..]));
    assert!(matches!(
        parse(&odd),
        Err(InterchangeError::WrongLength { found: 63, .. })
    ));
    let chain = document(r#""keyward-watermarks""#, r#""1""#, r#""""#, "");
    assert_eq!(
        parse(&chain).unwrap_err(),
        InterchangeError::WrongLength {
            field: "metadata.chain_id".to_owned(),
            expected: 64,
            found: 0
        }
    );
}

#[test]
fn a_non_decimal_integer_is_refused_naming_the_field() {
    for bad in [
        "",
        "-1",
        "+1",
        "01",
        "1.0",
        "1e3",
        " 1",
        "0x1",
        "18446744073709551616",
        "one",
    ] {
        assert_eq!(
            parse(&with_vote(&vote(bad, "2", DIGEST))).unwrap_err(),
            InterchangeError::NotADecimal {
                field: "data[0].vote.epoch".to_owned(),
                found: bad.to_owned()
            },
            "{bad:?}"
        );
        assert_eq!(
            parse(&with_vote(&vote("1", bad, DIGEST))).unwrap_err(),
            InterchangeError::NotADecimal {
                field: "data[0].vote.round".to_owned(),
                found: bad.to_owned()
            },
            "{bad:?}"
        );
    }
}

#[test]
fn a_public_key_listed_twice_is_refused() {
    let text = document(
        r#""keyward-watermarks""#,
        r#""1""#,
        &format!(r#""{CHAIN_HEX}""#),
        &[
            entry(KEY_A, "null"),
            entry(KEY_B, "null"),
            entry(&KEY_A.to_uppercase(), &vote("1", "2", DIGEST)),
        ]
        .join(", "),
    );
    assert_eq!(
        parse(&text).unwrap_err(),
        InterchangeError::DuplicateKey {
            public_key: [0xaa; 32],
            first: 0,
            second: 2
        }
    );
}

#[test]
fn a_chain_id_parses_from_its_hex() {
    assert_eq!(CHAIN_HEX.parse::<ChainId>().unwrap(), CHAIN);
    assert_eq!(CHAIN.to_string().parse::<ChainId>().unwrap(), CHAIN);
    assert!(matches!(
        "c1".parse::<ChainId>(),
        Err(InterchangeError::WrongLength { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// The command line, end to end.

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn keyward(arguments: &[&std::ffi::OsStr]) -> Run {
    let output = Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args(arguments)
        .output()
        .unwrap();
    let run = Run {
        code: output.status.code().expect("exited, not killed"),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    };
    // Nothing secret: the unlock secret never appears.
    assert!(
        !run.stdout.contains(UNLOCK_SECRET) && !run.stderr.contains(UNLOCK_SECRET),
        "{}{}",
        run.stdout,
        run.stderr
    );
    run
}

fn watermark_command(verb: &str, store: &StoreDir, rest: &[&Path]) -> Vec<std::ffi::OsString> {
    let mut arguments: Vec<std::ffi::OsString> = vec![
        "watermark".into(),
        verb.into(),
        "--store".into(),
        store.store().into(),
        "--unlock-file".into(),
        store.unlock().into(),
    ];
    arguments.extend(rest.iter().map(|part| part.as_os_str().to_owned()));
    arguments
}

fn run(arguments: &[std::ffi::OsString]) -> Run {
    let arguments: Vec<&std::ffi::OsStr> = arguments.iter().map(|part| part.as_os_str()).collect();
    keyward(&arguments)
}

#[test]
fn the_cli_exports_and_imports_a_store_that_no_validator_uses() {
    let store = StoreDir::new("cli");
    let keys = signed_store(&store);
    let out = store.file("exported.json");

    // Export to a file: the chain is found, being the only one.
    let exported = run(&watermark_command(
        "export",
        &store,
        &[Path::new("--out"), &out],
    ));
    assert_eq!(exported.code, 0, "{}", exported.stderr);
    assert!(exported.stdout.is_empty());
    assert!(
        exported.stderr.contains(&CHAIN.to_string()),
        "{}",
        exported.stderr
    );
    let mut document =
        WatermarkInterchange::from_json(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(
        document,
        WatermarkInterchange::export(&store.open(), CHAIN).unwrap()
    );

    // Export to standard output, the chain named.
    let chain = CHAIN.to_string();
    let to_stdout = run(&watermark_command(
        "export",
        &store,
        &[Path::new("--chain"), Path::new(&chain)],
    ));
    assert_eq!(to_stdout.code, 0, "{}", to_stdout.stderr);
    assert_eq!(
        WatermarkInterchange::from_json(&to_stdout.stdout).unwrap(),
        document
    );

    // Edited higher (the vote) and lower (the proposal), imported.
    document.keys[0].vote = Some(mark(1, 50, 0x50));
    document.keys[0].proposal = Some(mark(0, 1, 0x01));
    let edited = store.file("edited.json");
    std::fs::write(&edited, document.to_json()).unwrap();
    let imported = run(&watermark_command(
        "import",
        &store,
        &[Path::new("--in"), &edited],
    ));
    assert_eq!(imported.code, 0, "{}", imported.stderr);
    assert!(
        imported.stdout.contains(&format!(
            "raised from epoch 1 round 5 (digest {}) to epoch 1 round 50 (digest {})",
            "22".repeat(32),
            "50".repeat(32)
        )),
        "{}",
        imported.stdout
    );
    assert!(
        imported
            .stdout
            .contains("kept at epoch 1 round 4 (digest 1111"),
        "{}",
        imported.stdout
    );
    assert!(
        imported.stdout.contains("1 watermark(s) raised, 1 kept"),
        "{}",
        imported.stdout
    );
    let service = store.open();
    let marks = marks_on(&service, keys.first.0, CHAIN).unwrap();
    assert_eq!(marks.vote, Some(mark(1, 50, 0x50)));
    assert_eq!(marks.proposal, Some(mark(1, 4, 0x11)), "not lowered");
}

#[test]
fn the_cli_refuses_a_bad_document_with_exit_code_3_and_imports_nothing() {
    let store = StoreDir::new("cli-refused");
    let keys = signed_store(&store);
    let before = store.sequence();
    let mut document = WatermarkInterchange::export(&store.open(), CHAIN).unwrap();
    document.keys[0].vote = Some(mark(7, 7, 0x07));
    document.keys.push(KeyWatermarks {
        public_key: [0x5a; 32],
        proposal: None,
        vote: None,
        timeout: None,
    });
    let unknown = store.file("unknown.json");
    std::fs::write(&unknown, document.to_json()).unwrap();
    let refused = run(&watermark_command(
        "import",
        &store,
        &[Path::new("--in"), &unknown],
    ));
    assert_eq!(refused.code, 3, "{}{}", refused.stdout, refused.stderr);
    assert!(
        refused.stderr.contains("nothing was imported")
            && refused.stderr.contains("holds no key with public key 5a5a"),
        "{}",
        refused.stderr
    );
    assert!(refused.stdout.is_empty());

    let malformed = store.file("malformed.json");
    std::fs::write(&malformed, with_vote(&vote("1", "01", DIGEST))).unwrap();
    let refused = run(&watermark_command(
        "import",
        &store,
        &[Path::new("--in"), &malformed],
    ));
    assert_eq!(refused.code, 3, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("data[0].vote.round"),
        "{}",
        refused.stderr
    );

    let missing = store.file("missing.json");
    let failed = run(&watermark_command(
        "import",
        &store,
        &[Path::new("--in"), &missing],
    ));
    assert_eq!(
        failed.code, 1,
        "a file that cannot be read: {}",
        failed.stderr
    );

    assert_eq!(store.sequence(), before, "nothing written");
    assert_eq!(
        marks_on(&store.open(), keys.first.0, CHAIN).unwrap().vote,
        Some(mark(1, 5, 0x22))
    );
}

#[test]
fn the_cli_export_needs_a_chain_when_the_keys_have_signed_on_several() {
    let store = StoreDir::new("cli-chains");
    let keys = signed_store(&store);
    store
        .open()
        .sign_consensus(
            keys.second.0,
            &ConsensusMessage::vote(OTHER_CHAIN, 1, 1, [1; 32]),
        )
        .unwrap();
    let ambiguous = run(&watermark_command("export", &store, &[]));
    assert_eq!(ambiguous.code, 2, "{}", ambiguous.stderr);
    assert!(
        ambiguous.stderr.contains(&CHAIN.to_string())
            && ambiguous.stderr.contains(&OTHER_CHAIN.to_string())
            && ambiguous.stderr.contains("--chain"),
        "{}",
        ambiguous.stderr
    );
    assert!(ambiguous.stdout.is_empty());
    let bad_chain = run(&watermark_command(
        "export",
        &store,
        &[Path::new("--chain"), Path::new("c1c1")],
    ));
    assert_eq!(
        bad_chain.code, 2,
        "clap refuses the value: {}",
        bad_chain.stderr
    );
}

#[test]
fn the_cli_cannot_open_a_store_a_validator_is_using() {
    let store = StoreDir::new("cli-locked");
    signed_store(&store);
    let validator = store.open();
    let locked = run(&watermark_command("export", &store, &[]));
    assert_eq!(locked.code, 1, "{}", locked.stderr);
    assert!(
        locked.stderr.contains("stop the validator"),
        "{}",
        locked.stderr
    );
    assert!(locked.stdout.is_empty());
    drop(validator);
}
