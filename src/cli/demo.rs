//! Runs in the host (the binary): `keyward demo`, the validator's four keys end to end.

use anyhow::{Context, Result, bail};
use ed25519_dalek::Verifier;
use keyward::{Config, KeyService, KeySpec, Purpose, SecretService};
use sha2::{Digest, Sha256};

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
        .filter(|(purpose, ..)| *purpose != Purpose::NetworkHandshake)
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
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
