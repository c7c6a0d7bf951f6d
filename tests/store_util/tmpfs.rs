//! A small disk for tests of what a full or read-only file system does to the store: a tmpfs
//! mounted (as root, as CI runs) on a directory of the test's base.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::StoreBase;

/// A tmpfs mounted on a directory of the test's base, the store directory itself; unmounted
/// (every mount stacked on it) when dropped, also when the test fails.
pub(crate) struct Tmpfs {
    pub(crate) path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (mount's syntax: `64k`) with mode 0700 (a tmpfs root is 1777
    /// by default, which the store refuses). `None` if this process may not mount.
    pub(crate) fn mount(base: &StoreBase, size: &str) -> Option<Self> {
        let path = base.base.join("disk");
        std::fs::create_dir(&path).unwrap();
        let mounted = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&path)
            .output()
            .unwrap();
        if !mounted.status.success() {
            eprintln!(
                "\n!!!!! SKIPPED: cannot mount a tmpfs ({}); tests on a small disk need root, as CI has !!!!!\n",
                String::from_utf8_lossy(&mounted.stderr).trim()
            );
            return None;
        }
        Some(Self { path })
    }

    /// Makes the store path read-only while the running service keeps what it has open: a
    /// read-only bind mount of the tmpfs on top of it (remounting the tmpfs itself read-only is
    /// refused while the service holds its lock file open for writing).
    pub(crate) fn make_read_only(&self) {
        run(Command::new("mount")
            .arg("--bind")
            .arg(&self.path)
            .arg(&self.path));
        run(Command::new("mount")
            .args(["-o", "remount,bind,ro"])
            .arg(&self.path));
    }

    /// Removes the read-only bind mount.
    pub(crate) fn make_writable(&self) {
        run(Command::new("umount").arg(&self.path));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Every mount on the path, the read-only bind if the test stopped before removing it.
        for _ in 0..4 {
            let unmounted = Command::new("umount").arg(&self.path).output();
            if !unmounted.is_ok_and(|output| output.status.success()) {
                break;
            }
        }
        // A mount still busy (a process of a failed test holding a file) goes when it is free.
        let _ = Command::new("umount").arg("-l").arg(&self.path).output();
    }
}

fn run(command: &mut Command) {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Fills the file system at `directory` with one file until a write fails with ENOSPC; returns
/// the file.
pub(crate) fn fill(directory: &Path) -> PathBuf {
    let path = directory.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk = [0xa5u8; 4096];
    loop {
        match file.write(&chunk) {
            Ok(0) => panic!("a write of nothing while filling {}", path.display()),
            Ok(_) => {}
            Err(error) if error.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(error) => panic!("filling {}: {error}", path.display()),
        }
    }
    file.sync_all().unwrap();
    path
}
