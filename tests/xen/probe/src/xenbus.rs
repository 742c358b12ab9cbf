//! Linux's `/dev/xen/xenbus`: the kernel's own connection to the store
//! (dom0's ring to the daemon, a guest's ring), shared by user programs.
//! The kernel passes whole messages through and routes replies and watch
//! events back to the process that asked.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::time::Duration;

use wire::client::Transport;

pub const DEVICE: &str = "/dev/xen/xenbus";

#[derive(Debug)]
pub struct Xenbus(File);

impl Xenbus {
    pub fn open() -> io::Result<Xenbus> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(DEVICE)
            .map(Xenbus)
            .map_err(|e| io::Error::new(e.kind(), format!("{DEVICE}: {e}")))
    }
}

impl Transport for Xenbus {
    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.0.write_all(bytes)
    }

    fn recv(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<Option<usize>> {
        let mut pfd = libc::pollfd { fd: self.0.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX).max(1);
        // SAFETY: one valid pollfd for the length of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted { Ok(None) } else { Err(e) };
        }
        if n == 0 {
            return Ok(None);
        }
        self.0.read(buf).map(Some)
    }
}
