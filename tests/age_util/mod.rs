//! The stock `age` tools, for tests that check keyward's age files against an implementation
//! keyward did not write.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Whether the `age` tools are here; if not, says so loudly, and fails under CI.
pub(crate) fn age_is_installed() -> bool {
    let found = Command::new("age")
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "the `age` binary is missing under CI: .ci/run installs it (apt-get install age)"
        );
        eprintln!(
            "\n\n*** SKIPPED: the `age` binary is not installed; install it (apt-get install age) \
             to run the backup and import tests against the stock tool ***\n"
        );
    }
    found
}

/// An age identity made by `age-keygen`: its file and its recipient.
pub(crate) struct Identity {
    pub(crate) file: PathBuf,
    pub(crate) recipient: String,
}

pub(crate) fn age_keygen(dir: &Path, name: &str) -> Identity {
    let file = dir.join(name);
    let output = Command::new("age-keygen")
        .arg("-o")
        .arg(&file)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let text = std::fs::read_to_string(&file).unwrap();
    let recipient = text
        .lines()
        .find_map(|line| line.strip_prefix("# public key: "))
        .expect("age-keygen writes its public key")
        .to_owned();
    Identity { file, recipient }
}

/// `age -d -i identity file`: the plaintext, or age's complaint.
pub(crate) fn age_decrypt(identity: &Identity, file: &Path) -> Result<Vec<u8>, String> {
    let output = Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(&identity.file)
        .arg(file)
        .output()
        .unwrap();
    if output.status.success() {
        Ok(output.stdout)
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// `age -r recipient [-a]` of `plaintext`: the ciphertext.
pub(crate) fn age_encrypt(recipient: &str, armor: bool, plaintext: &[u8]) -> Vec<u8> {
    let mut command = Command::new("age");
    command.arg("-r").arg(recipient);
    if armor {
        command.arg("-a");
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(plaintext).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{output:?}");
    output.stdout
}

/// The operator's offline step before a restore: `age -d -i identity file | age -r recipient`,
/// the plaintext only in the pipe between the two.
pub(crate) fn age_reencrypt(identity: &Identity, file: &Path, recipient: &str) -> Vec<u8> {
    let mut decrypt = Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(&identity.file)
        .arg(file)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let output = Command::new("age")
        .arg("-r")
        .arg(recipient)
        .stdin(decrypt.stdout.take().unwrap())
        .output()
        .unwrap();
    assert!(decrypt.wait().unwrap().success());
    assert!(output.status.success(), "{output:?}");
    output.stdout
}
