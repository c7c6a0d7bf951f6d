//! Spawning is fork-safe even while another host thread is panicking: the forked signer must not
//! wait for the panic-hook lock that thread holds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use keyward::{KeyService, KeySpec, Purpose, SecretService};

/// The host thread that panics over and over.
const PANICKING_THREAD: &str = "host-thread-that-panics";
/// Each spawn and its requests must finish within this.
const DEADLINE: Duration = Duration::from_secs(8);

#[test]
fn signers_forked_while_a_host_thread_panics_start_and_serve() {
    // A host panic hook that takes a moment, as one that logs would. std holds its hook lock
    // while the hook runs. Panics of other threads (a failed assertion here) still go to the
    // default hook.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().name() == Some(PANICKING_THREAD) {
            std::thread::sleep(Duration::from_micros(200));
        } else {
            default_hook(info);
        }
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let panics = Arc::new(AtomicUsize::new(0));
    let panicker = {
        let (stop, panics) = (Arc::clone(&stop), Arc::clone(&panics));
        std::thread::Builder::new()
            .name(PANICKING_THREAD.to_owned())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let caught = std::panic::catch_unwind(|| panic!("a host thread panics"));
                    assert!(caught.is_err());
                    panics.fetch_add(1, Ordering::Relaxed);
                }
            })
            .unwrap()
    };
    for (mode, config) in common::spawn_modes() {
        let spawns = 20;
        let (done, finished) = mpsc::channel::<Result<(), String>>();
        // Detached: a deadlocked spawn must fail the test, not hang it.
        let _worker = std::thread::spawn(move || {
            for _ in 0..spawns {
                let result = (|| {
                    let config = config.clone().with_spawn_timeout(DEADLINE / 2);
                    let service = SecretService::spawn(config).map_err(|e| e.to_string())?;
                    let key = service
                        .generate_key(KeySpec::new(Purpose::Account))
                        .map_err(|e| e.to_string())?;
                    let public = *service
                        .public_key(key)
                        .map_err(|e| e.to_string())?
                        .as_ed25519()
                        .ok_or("not an Ed25519 key")?;
                    for request in 0u8..10 {
                        let digest = [request; 32];
                        let signature = service.sign(key, &digest).map_err(|e| e.to_string())?;
                        public
                            .verify_strict(&digest, &signature)
                            .map_err(|e| e.to_string())?;
                    }
                    Ok(())
                })();
                let failed = result.is_err();
                if done.send(result).is_err() || failed {
                    return;
                }
            }
        });
        for spawn in 0..spawns {
            match finished.recv_timeout(DEADLINE) {
                Ok(Ok(())) => {}
                Ok(Err(error)) => panic!(
                    "{mode}: spawn #{spawn} failed while a host thread was panicking: {error}"
                ),
                Err(_) => panic!("{mode}: spawn #{spawn} did not finish within {DEADLINE:?}"),
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    panicker.join().unwrap();
    assert!(
        panics.load(Ordering::Relaxed) > 20,
        "the host thread hardly panicked"
    );
}
