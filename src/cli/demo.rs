//! Runs in the host (the binary): `keyward demo`, the validator's four keys end to end, then the
//! same keys surviving a restart in a sealed store made for the demo.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use ed25519_dalek::Verifier;
use keyward::{
    ChainId, Config, ConsensusMessage, KeyService, KeySpec, Purpose, SecretService, StoreConfig,
    StoreCreation, StoreListing, UnlockSecret,
};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

pub(crate) fn run() -> Result<()> {
    let started = std::time::Instant::now();
    let service = SecretService::spawn(Config::default()).context("spawning the signer")?;
    println!(
        "keyward demo: signer started in {:.1} ms, pid {}, generation {}",
        started.elapsed().as_secs_f64() * 1000.0,
        service.pid(),
        service.generation()
    );

    println!("\nKeys generated inside the signer (only public halves ever leave it):");
    let mut keys = Vec::new();
    for purpose in Purpose::ALL {
        let key = service.generate_key(KeySpec::new(purpose))?;
        let public = service.public_key(key)?;
        println!(
            "  {:<18} {:<8} id {}  public {}",
            purpose.to_string(),
            public.algorithm().to_string(),
            key,
            public
        );
        keys.push((purpose, key, public));
    }

    println!("\nSigning prehashed messages (SHA-256) in the signer, verifying in this process:");
    for (purpose, key, public) in keys
        .iter()
        .filter(|(purpose, ..)| !matches!(purpose, Purpose::NetworkHandshake | Purpose::Consensus))
    {
        let message = format!("{purpose} message for epoch 7, round 3");
        let digest: [u8; 32] = Sha256::digest(message.as_bytes()).into();
        let signature = service.sign(*key, &digest)?;
        let verifying = public
            .as_ed25519()
            .context("a signing key has an Ed25519 public key")?;
        let strict = verifying.verify_strict(&digest, &signature).is_ok();
        let plain = verifying.verify(&digest, &signature).is_ok();
        println!(
            "  {:<18} sig {}…  verify_strict: {}",
            purpose.to_string(),
            &signature.to_string()[..16],
            if strict && plain { "ok" } else { "FAILED" }
        );
        if !(strict && plain) {
            bail!("a signature from the signer did not verify");
        }
    }

    let (_, consensus, consensus_public) = keys
        .iter()
        .find(|(purpose, ..)| *purpose == Purpose::Consensus)
        .context("the consensus key was generated above")?;
    demonstrate_the_guard(&service, *consensus, consensus_public)?;

    println!("\nX25519 handshake with a peer:");
    let (_, handshake, handshake_public) = keys
        .iter()
        .find(|(purpose, ..)| *purpose == Purpose::NetworkHandshake)
        .context("the handshake key was generated above")?;
    let mut peer_seed = [0u8; 32];
    getrandom::fill(&mut peer_seed).map_err(|error| anyhow::anyhow!("no entropy: {error}"))?;
    let peer = x25519_dalek::StaticSecret::from(peer_seed);
    let peer_public = x25519_dalek::PublicKey::from(&peer);
    let ours = service.diffie_hellman(*handshake, &peer_public)?;
    let theirs = peer.diffie_hellman(
        handshake_public
            .as_x25519()
            .context("the handshake key is X25519")?,
    );
    let agree = ours.expose_secret() == theirs.as_bytes();
    println!("  peer public        {}", hex(peer_public.as_bytes()));
    println!(
        "  both sides derived the same 32-byte secret: {}",
        if agree { "yes" } else { "NO" }
    );
    if !agree {
        bail!("the Diffie-Hellman results differ");
    }
    let low_order = x25519_dalek::PublicKey::from([0u8; 32]);
    match service.diffie_hellman(*handshake, &low_order) {
        Err(error) => println!("  a low-order peer point is refused: {error}"),
        Ok(_) => bail!("a low-order peer point was accepted"),
    }
    match service.sign(*handshake, &[0u8; 32]) {
        Err(error) => println!("  signing with the handshake key is refused: {error}"),
        Ok(_) => bail!("an X25519 key signed"),
    }

    println!(
        "\nThe signer, as the kernel sees it (/proc/{}/status, smaps):",
        service.pid()
    );
    print!("{}", service.status()?);
    println!("\nListing keys: {} held.", service.list_keys()?.len());
    drop(service);
    println!("Service dropped: the signer was shut down and reaped; its keys were erased with it.");
    survive_a_restart()
}

/// The sealed store: keys made by one service are the next service's, same ids, same public
/// keys, and a signature made before the restart verifies beside one made after.
fn survive_a_restart() -> Result<()> {
    let scratch = Scratch::new()?;
    let store = scratch.path().join("store");
    let unlock = scratch.path().join("unlock-secret");
    write_random_unlock_secret(&unlock)?;
    println!(
        "\nKeys that survive a restart: a sealed store in {} (made for this demo, removed after).",
        scratch.path().display()
    );
    println!(
        "  unlock secret: 32 random bytes (hex) in {} (mode 0600), read by the signer;",
        unlock.display()
    );
    println!(
        "  in production it lives apart from the store (a systemd credential, another mount)."
    );
    let store_config = |creation| {
        Config::default().with_store(
            StoreConfig::new(&store, UnlockSecret::file(&unlock)).with_creation(creation),
        )
    };

    let started = std::time::Instant::now();
    let service = SecretService::spawn(store_config(StoreCreation::CreateNew))
        .context("creating the store")?;
    println!(
        "\nFirst service: store created and signer started in {:.0} ms (Argon2id, 64 MiB, 3 passes,",
        started.elapsed().as_secs_f64() * 1000.0
    );
    println!("  4 lanes, derives the store's key inside the signer). Keys generated and sealed:");
    let mut before = Vec::new();
    for purpose in Purpose::ALL {
        let key = service.generate_key(KeySpec::new(purpose))?;
        let public = service.public_key(key)?;
        println!("  {:<18} id {key}  public {public}", purpose.to_string());
        before.push((key, public));
    }
    let (consensus, consensus_public) = before[1];
    let vote = ConsensusMessage::vote(DEMO_CHAIN, 1, 41, block_digest(b"block at round 41"));
    let signature = service.sign_consensus(consensus, &vote)?;
    println!(
        "  signed a vote (epoch 1, round 41) with the consensus key: sig {}…; the watermark was \
         sealed to disk before the signature left the signer",
        &signature.to_string()[..16]
    );
    drop(service);
    let listing = StoreListing::read(&store)?;
    println!(
        "Service dropped: the signer is gone; the store file holds {} sealed keys at sequence {}.",
        listing.keys.len(),
        listing.sequence
    );

    let started = std::time::Instant::now();
    let service = SecretService::spawn(store_config(StoreCreation::OpenExisting))
        .context("opening the store again")?;
    println!(
        "\nSecond service: store opened and signer started in {:.0} ms (pid {}).",
        started.elapsed().as_secs_f64() * 1000.0,
        service.pid()
    );
    let listed = service.list_keys()?;
    for (key, public) in &before {
        let found = listed
            .iter()
            .find(|info| info.id == *key)
            .with_context(|| format!("key {key:#} is missing after the restart"))?;
        if found.public_key != *public {
            bail!("key {key:#} has another public key after the restart");
        }
        println!(
            "  {:<18} id {key}  public {}  same id, same public key",
            found.purpose.to_string(),
            found.public_key
        );
    }
    if listed.len() != before.len() {
        bail!(
            "{} keys after the restart, {} before",
            listed.len(),
            before.len()
        );
    }
    let verifying = consensus_public
        .as_ed25519()
        .context("the consensus key is Ed25519")?;
    let old_verifies = verifying
        .verify_strict(&vote.signing_bytes(), &signature)
        .is_ok();
    let conflicting = ConsensusMessage::vote(
        DEMO_CHAIN,
        1,
        41,
        block_digest(b"another block at round 41"),
    );
    match service.sign_consensus(consensus, &conflicting) {
        Err(error) => println!("  a second vote for round 41 is still refused: {error}"),
        Ok(_) => bail!("the restarted signer signed a conflicting vote for round 41"),
    }
    let next = ConsensusMessage::vote(DEMO_CHAIN, 1, 42, block_digest(b"block at round 42"));
    let new_signature = service.sign_consensus(consensus, &next)?;
    let new_verifies = verifying
        .verify_strict(&next.signing_bytes(), &new_signature)
        .is_ok();
    println!(
        "  the vote signed before the restart verifies: {}",
        if old_verifies { "yes" } else { "NO" }
    );
    println!(
        "  a vote signed after it, same key id, verifies under the same public key: {}",
        if new_verifies { "yes" } else { "NO" }
    );
    if !(old_verifies && new_verifies) {
        bail!("a signature did not verify across the restart");
    }
    drop(service);
    println!("Service dropped; the demo's store and unlock secret are removed.");
    Ok(())
}

/// The chain the demo's consensus messages name (any 32 bytes; a real validator uses its
/// chain's genesis hash or a digest of its chain name).
const DEMO_CHAIN: ChainId = ChainId([7u8; 32]);

fn block_digest(block: &[u8]) -> [u8; 32] {
    Sha256::digest(block).into()
}

/// The consensus key signs typed messages only: a vote verifies over the bytes the signer built,
/// a repeat gets the same signature, a conflicting vote for the same round and a blind digest
/// are refused.
fn demonstrate_the_guard(
    service: &SecretService,
    consensus: keyward::KeyId,
    public: &keyward::PublicKey,
) -> Result<()> {
    println!("\nConsensus messages, checked by the double-sign guard inside the signer:");
    let verifying = public
        .as_ed25519()
        .context("the consensus key is Ed25519")?;
    let vote = ConsensusMessage::vote(DEMO_CHAIN, 7, 3, block_digest(b"block at round 3"));
    let signature = service.sign_consensus(consensus, &vote)?;
    let verifies = verifying
        .verify_strict(&vote.signing_bytes(), &signature)
        .is_ok();
    println!(
        "  vote, epoch 7, round 3   sig {}…  verify_strict: {}",
        &signature.to_string()[..16],
        if verifies { "ok" } else { "FAILED" }
    );
    if !verifies {
        bail!("a consensus signature from the signer did not verify");
    }
    let repeat = service.sign_consensus(consensus, &vote)?;
    if repeat != signature {
        bail!("a repeated vote got another signature");
    }
    println!("  the same vote again (a retry): the same signature");
    let conflicting =
        ConsensusMessage::vote(DEMO_CHAIN, 7, 3, block_digest(b"another block at round 3"));
    match service.sign_consensus(consensus, &conflicting) {
        Err(error) => println!("  another block at round 3 is refused: {error}"),
        Ok(_) => bail!("the guard signed a conflicting vote"),
    }
    match service.sign(consensus, &block_digest(b"a blind digest")) {
        Err(error) => println!("  a blind digest is refused: {error}"),
        Ok(_) => bail!("the consensus key signed a blind digest"),
    }
    Ok(())
}

/// A directory of mode 0700 under the system's temporary directory, removed (with everything in
/// it) when dropped, on every path out of the demo.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Self> {
        let mut random = [0u8; 8];
        getrandom::fill(&mut random).map_err(|error| anyhow::anyhow!("no entropy: {error}"))?;
        let path = std::env::temp_dir().join(format!(
            "keyward-demo-{}-{}",
            std::process::id(),
            hex(&random)
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        let scratch = Self(path);
        // The umask can only have removed bits; this makes it 0700 exactly.
        std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o700))?;
        Ok(scratch)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes a fresh random unlock secret (32 bytes, as 64 hex digits and a newline) to a new file
/// of mode 0600. The demo makes its own secret, so this process holds it for a moment (wiped
/// after); a validator's unlock secret is provisioned outside it and only the signer reads it.
fn write_random_unlock_secret(path: &Path) -> Result<()> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    getrandom::fill(bytes.as_mut_slice())
        .map_err(|error| anyhow::anyhow!("no entropy: {error}"))?;
    let mut text = Zeroizing::new(String::with_capacity(65));
    for byte in bytes.iter() {
        text.push_str(&format!("{byte:02x}"));
    }
    text.push('\n');
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
