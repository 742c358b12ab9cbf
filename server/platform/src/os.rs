//! Small wrappers over the Linux calls the ring platforms share: a mapped
//! page, an epoll set, non-blocking byte kicks.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;

use rxenstored_core::ring::{PAGE_SIZE, RingPage};

/// One shared 4 KiB mapping; unmapped on drop.
#[derive(Debug)]
pub struct MappedPage {
    ptr: NonNull<u8>,
}

// SAFETY: the mapping is process-wide memory; the pointer may be used from
// any thread (the ring accesses it only through atomics).
unsafe impl Send for MappedPage {}

impl MappedPage {
    /// Maps `PAGE_SIZE` bytes of `fd` at `offset`, shared, read/write.
    pub fn map(fd: BorrowedFd<'_>, offset: u64) -> io::Result<MappedPage> {
        let offset = libc::off_t::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let p = loop {
            // SAFETY: a fresh mapping chosen by the kernel; no Rust object
            // aliases it.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    PAGE_SIZE,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    fd.as_raw_fd(),
                    offset,
                )
            };
            if p != libc::MAP_FAILED {
                break p;
            }
            // A signal (see `xen::ioctl`) is no reason to fail.
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        };
        NonNull::new(p.cast::<u8>()).map(|ptr| MappedPage { ptr }).ok_or_else(|| io::Error::other("mmap gave NULL"))
    }
}

impl Drop for MappedPage {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `map` mapped; nothing refers to
        // it after the drop.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), PAGE_SIZE) };
    }
}

// SAFETY: page-aligned (so 4-aligned), PAGE_SIZE bytes, read/write, mapped
// until drop.
unsafe impl RingPage for MappedPage {
    fn base(&self) -> NonNull<u8> {
        self.ptr
    }
}

/// An epoll set used as one pollable descriptor for many (the way
/// `/dev/xen/evtchn` is one descriptor for many ports).
#[derive(Debug)]
pub struct Epoll {
    fd: OwnedFd,
}

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: plain system call.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a descriptor we just got and own.
        Ok(Epoll { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Watches `fd` for readability (level-triggered), tagged `data`.
    pub fn add(&self, fd: RawFd, data: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: data };
        // SAFETY: `ev` is a valid epoll_event for the call's duration.
        if unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn remove(&self, fd: RawFd) {
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: as in `add`; a failure (already closed) is harmless.
        unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, &mut ev) };
    }

    /// The tags of the ready descriptors, without waiting.
    pub fn ready(&self, out: &mut Vec<u64>) -> io::Result<()> {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 64];
        // SAFETY: the buffer holds 64 events.
        let n = unsafe { libc::epoll_wait(self.fd.as_raw_fd(), events.as_mut_ptr(), 64, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted { Ok(()) } else { Err(e) };
        }
        out.extend(events[..n as usize].iter().map(|e| e.u64));
        Ok(())
    }
}

/// Reads and discards whatever a non-blocking descriptor holds (pending
/// kicks); returns whether there was anything.
pub fn drain(file: &mut File) -> bool {
    let mut buf = [0u8; 256];
    let mut any = false;
    loop {
        match file.read(&mut buf) {
            Ok(0) => return any,
            Ok(_) => any = true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return any,
        }
    }
}

/// Writes one byte to a non-blocking descriptor; a full pipe already holds
/// a pending kick, which is all a kick means.
pub fn kick(file: &File) {
    let _ = (&*file).write(&[1]);
}

/// Waits until `fd` is readable or `timeout_ms` passes (-1: forever).
pub fn wait_readable(fd: RawFd, timeout_ms: i32) -> bool {
    let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, timeout_ms) };
    n > 0
}
