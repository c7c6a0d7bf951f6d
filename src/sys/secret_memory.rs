//! Both sides: memory for secrets. `memfd_secret` pages or locked, don't-dump, wipe-on-fork
//! anonymous pages, mapped once, zeroized and unmapped on drop.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;

use super::{check, check_long, map_anonymous, page_size};

/// Creates a `memfd_secret` descriptor: pages only this process can map, removed from the
/// kernel's direct map, unreadable even through `/proc/<pid>/mem`.
fn memfd_secret() -> io::Result<OwnedFd> {
    // SAFETY: integer argument only; returns a new fd or -1.
    let fd = check_long(unsafe { libc::syscall(libc::SYS_memfd_secret, libc::O_CLOEXEC) })?;
    let fd = RawFd::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// What kind of memory a [`SecretCells`] region is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SecretMemoryBacking {
    /// `memfd_secret` pages: locked, out of the kernel's direct map, unreadable by ptrace.
    MemfdSecret,
    /// Anonymous private pages, `mlock`ed, `MADV_DONTDUMP` and `MADV_WIPEONFORK`.
    LockedAnonymous,
}

/// A fixed number of `T` values in memory that is locked, excluded from core dumps and wiped
/// when the region is dropped. The values are constructed in place.
pub(crate) struct SecretCells<T> {
    base: NonNull<T>,
    count: usize,
    mapped_len: usize,
    backing: SecretMemoryBacking,
}

// SAFETY: SecretCells owns its values exclusively (like a Box<[T]>), so it is Send/Sync exactly
// when T is.
unsafe impl<T: Send> Send for SecretCells<T> {}
// SAFETY: as above; shared access only hands out `&T`.
unsafe impl<T: Sync> Sync for SecretCells<T> {}

impl<T> SecretCells<T> {
    /// Maps a region for `count` values of `T` and fills it with `init()`.
    pub(crate) fn new(
        count: usize,
        backing: SecretMemoryBacking,
        mut init: impl FnMut() -> T,
    ) -> io::Result<Self> {
        let page = page_size();
        let bytes = std::mem::size_of::<T>()
            .checked_mul(count.max(1))
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        let mapped_len = bytes.div_ceil(page).max(1) * page;
        let base = match backing {
            SecretMemoryBacking::MemfdSecret => map_memfd_secret(mapped_len)?,
            SecretMemoryBacking::LockedAnonymous => map_locked_anonymous(mapped_len)?,
        };
        debug_assert!(std::mem::align_of::<T>() <= page);
        let base = base.cast::<T>();
        for index in 0..count {
            // SAFETY: the mapping is page-aligned (so aligned for T), `mapped_len` covers
            // `count` values, and slot `index` is in bounds and not yet initialised.
            unsafe { base.add(index).write(init()) };
        }
        Ok(Self {
            base,
            count,
            mapped_len,
            backing,
        })
    }

    /// The kind of memory backing this region.
    pub(crate) fn backing(&self) -> SecretMemoryBacking {
        self.backing
    }

    /// The values, shared.
    pub(crate) fn as_slice(&self) -> &[T] {
        // SAFETY: `count` values were initialised in `new` and stay so until `drop`.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr(), self.count) }
    }

    /// The values, exclusive.
    pub(crate) fn as_mut_slice(&mut self) -> &mut [T] {
        // SAFETY: as in `as_slice`; `&mut self` guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr(), self.count) }
    }
}

impl<T> Drop for SecretCells<T> {
    fn drop(&mut self) {
        // SAFETY: the values were initialised in `new` and are dropped exactly once, here.
        unsafe {
            std::ptr::drop_in_place(std::ptr::slice_from_raw_parts_mut(
                self.base.as_ptr(),
                self.count,
            ));
        }
        let bytes = self.base.cast::<u8>().as_ptr();
        for offset in 0..self.mapped_len {
            // SAFETY: the whole mapping is ours and writable; volatile so the wipe is not
            // optimised away even though the memory is unmapped next.
            unsafe { bytes.add(offset).write_volatile(0) };
        }
        // SAFETY: unmaps exactly the mapping made in `new`; no reference into it survives
        // `&mut self`. Failure leaves zeroed memory mapped, which is harmless.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.mapped_len);
        }
    }
}

fn map_memfd_secret(len: usize) -> io::Result<NonNull<u8>> {
    let fd = memfd_secret()?;
    let length =
        libc::off_t::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::ENOMEM))?;
    // SAFETY: integer arguments on a descriptor we own.
    check(unsafe { libc::ftruncate(fd.as_raw_fd(), length) })?;
    // SAFETY: a fresh shared mapping of our own memfd; the kernel picks the address. The fd can
    // be closed afterwards (dropped at the end of this function): the mapping keeps the pages.
    let address = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if address == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(address.cast()).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))
}

fn map_locked_anonymous(len: usize) -> io::Result<NonNull<u8>> {
    let address = map_anonymous(len)?.as_ptr();
    let unmap_on_error = |error: io::Error| {
        // SAFETY: undoes the mapping made above, which nothing references yet.
        unsafe { libc::munmap(address, len) };
        error
    };
    // SAFETY: the three calls act on exactly the mapping made above.
    unsafe {
        check(libc::mlock(address, len)).map_err(unmap_on_error)?;
        check(libc::madvise(address, len, libc::MADV_DONTDUMP)).map_err(unmap_on_error)?;
        check(libc::madvise(address, len, libc::MADV_WIPEONFORK)).map_err(unmap_on_error)?;
    }
    NonNull::new(address.cast()).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))
}

/// Whether this kernel lets us create `memfd_secret` memory.
pub(crate) fn memfd_secret_available() -> bool {
    memfd_secret().is_ok()
}
