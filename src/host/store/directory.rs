//! Runs in the host: the store's directory on disk. Its permissions, its lock, reading its files,
//! and the durable write: a temporary file written and synced, the current state kept as the
//! previous copy, the temporary file renamed over the current state, the directory synced. At
//! every moment the current state file exists and is whole, the one before or the one after.
//!
//! An error from any step fails that write and is never retried: a retried `fsync` can report
//! success for data the kernel already dropped (PostgreSQL's "fsyncgate").
//!
//! Not `tempfile` or `atomicwrites`: neither keeps the previous copy, neither lets a test stop
//! the process between the steps, and the recipe is five system calls.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::host::store::error::{StoreError, WriteStep};

/// The current state.
pub(crate) const STATE_FILE: &str = "keyward-store";
/// The state before the last write.
pub(crate) const PREVIOUS_FILE: &str = "keyward-store.previous";
/// A new state being written.
const TEMPORARY_FILE: &str = "keyward-store.new";
/// The previous copy being put in place.
const TEMPORARY_PREVIOUS_FILE: &str = "keyward-store.previous.new";
/// The store id the directory was created for, in hex: a state file of another store is refused.
pub(crate) const STORE_ID_FILE: &str = "keyward-store.id";
/// Held (`flock`, exclusive) by the one service using the store.
pub(crate) const LOCK_FILE: &str = "keyward.lock";

/// The permission bits no store file or directory may have: any access by group or others.
const GROUP_OR_OTHER: u32 = 0o077;

/// The points of a durable write where a crash test can make the host die
/// (`keyward::testing::crash_at_store_write`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(
    not(feature = "test-support"),
    allow(dead_code, reason = "crash tests only")
)]
#[cfg_attr(
    not(feature = "test-support"),
    allow(unreachable_pub, reason = "exported only with test-support")
)]
#[allow(missing_docs)]
pub enum WritePoint {
    BeforeTemporary = 1,
    AfterTemporaryWrite = 2,
    AfterTemporarySync = 3,
    AfterRename = 4,
    AfterDirectorySync = 5,
}

impl WritePoint {
    /// Every point of a durable write, in the order the write reaches them.
    #[cfg_attr(
        not(feature = "test-support"),
        allow(
            dead_code,
            unreachable_pub,
            reason = "the crash tests' list, exported only with test-support"
        )
    )]
    pub const ALL: [WritePoint; 5] = [
        WritePoint::BeforeTemporary,
        WritePoint::AfterTemporaryWrite,
        WritePoint::AfterTemporarySync,
        WritePoint::AfterRename,
        WritePoint::AfterDirectorySync,
    ];
}

/// A store directory, locked for this service.
#[derive(Debug)]
pub(crate) struct StoreDirectory {
    path: PathBuf,
    /// Held for as long as the service lives; closing it releases the lock.
    _lock: Flock<File>,
}

impl StoreDirectory {
    /// Opens (or, with `create`, makes with mode 0700) the directory, checks its mode and takes
    /// its lock.
    pub(crate) fn open(path: &Path, create: bool) -> Result<Self, StoreError> {
        let path = path.to_path_buf();
        match std::fs::metadata(&path) {
            Ok(metadata) if !metadata.is_dir() => {
                return Err(StoreError::NotADirectory { path });
            }
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound && create => {
                std::fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&path)
                    .map_err(|error| io_error(&path, "creating the store directory", &error))?;
                sync_directory_of(&path)
                    .map_err(|error| io_error(&path, "syncing the parent of", &error))?;
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::DirectoryMissing { path });
            }
            Err(error) => return Err(io_error(&path, "reading", &error)),
        }
        check_mode(&path, "0700")?;
        let lock_path = path.join(LOCK_FILE);
        // Read-only: a lock needs no write access, and a store on a file system that went
        // read-only must still open (its writes fail, typed). Created only when missing.
        let lock_file = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&lock_path)
        {
            Err(error) if error.kind() == io::ErrorKind::NotFound => OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&lock_path),
            opened => opened,
        }
        .map_err(|error| io_error(&lock_path, "opening the lock file", &error))?;
        let lock =
            Flock::lock(lock_file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
                match errno {
                    nix::errno::Errno::EWOULDBLOCK => StoreError::Locked {
                        directory: path.clone(),
                        lock: lock_path.clone(),
                    },
                    errno => StoreError::Io {
                        path: lock_path.clone(),
                        operation: "locking",
                        errno: errno as i32,
                    },
                }
            })?;
        Ok(Self { path, _lock: lock })
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// A file of the store.
    pub(crate) fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Whether a file of the store exists.
    pub(crate) fn has(&self, name: &str) -> Result<bool, StoreError> {
        has_in(&self.path, name)
    }

    /// Writes `bytes` as the new content of `name`, durably; with `keep_previous`, the current
    /// content is kept as `previous` first. Returns once the new content and its name are on
    /// disk (file and directory synced).
    pub(crate) fn write_durably(
        &self,
        name: &str,
        previous: Option<&str>,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        let temporary = self.file(TEMPORARY_FILE);
        let target = self.file(name);
        let failed = |path: &Path, step: WriteStep| {
            let path = path.to_path_buf();
            move |error: io::Error| StoreError::WriteFailed {
                path,
                step,
                errno: error.raw_os_error().unwrap_or(0),
            }
        };
        test_point(WritePoint::BeforeTemporary);
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&temporary)
            .map_err(failed(&temporary, WriteStep::WriteTemporary))?;
        file.write_all(bytes)
            .map_err(failed(&temporary, WriteStep::WriteTemporary))?;
        test_point(WritePoint::AfterTemporaryWrite);
        file.sync_all()
            .map_err(failed(&temporary, WriteStep::SyncTemporary))?;
        drop(file);
        test_point(WritePoint::AfterTemporarySync);
        if let Some(previous) = previous
            && self.has(name)?
        {
            // A hard link renamed over the previous copy: the current state never stops
            // existing under its own name.
            let staged = self.file(TEMPORARY_PREVIOUS_FILE);
            let keep = failed(&staged, WriteStep::KeepPrevious);
            match std::fs::remove_file(&staged) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => return Err(keep(error)),
            }
            std::fs::hard_link(&target, &staged)
                .and_then(|()| std::fs::rename(&staged, self.file(previous)))
                .map_err(failed(&staged, WriteStep::KeepPrevious))?;
        }
        std::fs::rename(&temporary, &target).map_err(failed(&target, WriteStep::Rename))?;
        test_point(WritePoint::AfterRename);
        File::open(&self.path)
            .and_then(|directory| directory.sync_all())
            .map_err(failed(&self.path, WriteStep::SyncDirectory))?;
        test_point(WritePoint::AfterDirectorySync);
        Ok(())
    }
}

/// Checks a store directory as opening it does (it exists, is a directory, and is closed to
/// group and others) without taking its lock: for reading its state while a service may hold it.
pub(crate) fn check_unlocked(path: &Path) -> Result<(), StoreError> {
    match std::fs::metadata(path) {
        Ok(metadata) if !metadata.is_dir() => Err(StoreError::NotADirectory {
            path: path.to_path_buf(),
        }),
        Ok(_) => check_mode(path, "0700"),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            Err(StoreError::DirectoryMissing {
                path: path.to_path_buf(),
            })
        }
        Err(error) => Err(io_error(path, "reading", &error)),
    }
}

/// Whether a file of the store in `directory` exists.
pub(crate) fn has_in(directory: &Path, name: &str) -> Result<bool, StoreError> {
    let path = directory.join(name);
    match std::fs::symlink_metadata(&path) {
        Ok(_) => Ok(true),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(error) => Err(io_error(&path, "reading", &error)),
    }
}

/// The bytes of a file of the store in `directory`, after checking its mode; `cap` bounds what
/// is read. Needs no lock: the store's files are only ever replaced whole, by rename.
pub(crate) fn read_in(directory: &Path, name: &str, cap: usize) -> Result<Vec<u8>, StoreError> {
    let path = directory.join(name);
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|error| io_error(&path, "opening", &error))?;
    check_mode(&path, "0600")?;
    let mut bytes = Vec::new();
    file.take(cap as u64)
        .read_to_end(&mut bytes)
        .map_err(|error| io_error(&path, "reading", &error))?;
    Ok(bytes)
}

/// Refuses a path open to group or others.
fn check_mode(path: &Path, expected: &'static str) -> Result<(), StoreError> {
    let metadata =
        std::fs::symlink_metadata(path).map_err(|error| io_error(path, "reading", &error))?;
    let mode = metadata.mode() & 0o7777;
    if mode & GROUP_OR_OTHER != 0 {
        return Err(StoreError::Permissions {
            path: path.to_path_buf(),
            mode,
            expected,
        });
    }
    Ok(())
}

fn sync_directory_of(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()
}

fn io_error(path: &Path, operation: &'static str, error: &io::Error) -> StoreError {
    StoreError::Io {
        path: path.to_path_buf(),
        operation,
        errno: error.raw_os_error().unwrap_or(0),
    }
}

/// Test builds only: the write point at which the host kills itself (0: none), and how many
/// writes reach it first.
#[cfg(feature = "test-support")]
pub(crate) static CRASH_POINT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);
#[cfg(feature = "test-support")]
pub(crate) static CRASH_AFTER_WRITES: std::sync::atomic::AtomicU32 =
    std::sync::atomic::AtomicU32::new(0);

/// In test builds, dies here by SIGKILL if a crash test asked for this point: no destructor,
/// no flush, nothing after it runs, as when the machine loses power or the OOM killer strikes.
#[cfg(feature = "test-support")]
fn test_point(point: WritePoint) {
    use std::sync::atomic::Ordering;
    if CRASH_POINT.load(Ordering::SeqCst) != point as u8 {
        return;
    }
    let remaining = CRASH_AFTER_WRITES.load(Ordering::SeqCst);
    if remaining > 0 {
        CRASH_AFTER_WRITES.store(remaining - 1, Ordering::SeqCst);
        return;
    }
    let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL);
    // SIGKILL to oneself is delivered before kill returns; nothing below runs.
    std::process::abort();
}

#[cfg(not(feature = "test-support"))]
fn test_point(_point: WritePoint) {}
