//! Runs in the host: the fork-exec signer program, opened once when the service is spawned and
//! run through that descriptor for every signer of the service, so that the file checked is the
//! file run: replacing what is at the path later (a rename over it, a symlink swap) changes
//! nothing for this service, respawns included.

use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::stat::{Mode, SFlag};

use crate::host::error::SpawnError;
use crate::sys;

/// The signer program of a fork-exec service: its path, as configured, and the file found there
/// when the service was spawned.
#[derive(Debug)]
pub(crate) struct SignerProgram {
    path: PathBuf,
    /// `O_PATH | O_CLOEXEC`, at 3 or above: names the file without reading it; exec'd through.
    file: OwnedFd,
}

impl SignerProgram {
    /// Opens the program at `path` and checks that it is a regular file someone may execute.
    pub(crate) fn open(path: &Path) -> Result<Self, SpawnError> {
        let refuse = |source: std::io::Error| SpawnError::SignerProgram {
            path: path.to_owned(),
            source,
        };
        let file = nix::fcntl::open(path, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(|errno| refuse(errno.into()))
            .and_then(|file| sys::clear_of_standard_streams(file).map_err(refuse))?;
        let stat = nix::sys::stat::fstat(&file).map_err(|errno| refuse(errno.into()))?;
        let kind = SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits());
        if kind != SFlag::S_IFREG {
            return Err(refuse(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "it is not a regular file",
            )));
        }
        if stat.st_mode & 0o111 == 0 {
            return Err(refuse(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "no one may execute it",
            )));
        }
        Ok(Self {
            path: path.to_owned(),
            file,
        })
    }

    /// For one spawn: a copy of the program's descriptor (the child lays it out and execs through
    /// it) and the program's name for its argument vector.
    pub(crate) fn for_spawn(&self) -> Result<(OwnedFd, CString), SpawnError> {
        let file =
            sys::duplicate_clear_of_standard_streams(self.file.as_fd()).map_err(|source| {
                SpawnError::System {
                    what: "copying the signer program's descriptor",
                    source,
                }
            })?;
        let name = CString::new(self.path.as_os_str().as_bytes()).map_err(|_| {
            SpawnError::SignerProgram {
                path: self.path.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "its path contains a NUL byte",
                ),
            }
        })?;
        Ok((file, name))
    }
}
