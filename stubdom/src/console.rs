//! The console: QEMU's debug port 0xE9 (`-debugcon stdio`). Under Xen the
//! lines also go to the console ring that xenconsoled reads
//! (`xen::console`); Xen itself prints a PVH domain's port 0xE9 bytes on
//! its own console as `(dN) ...`, so lines written before xenconsoled
//! connects are not lost either.

use core::fmt;

const DEBUG_PORT: u16 = 0xE9;

/// Writes bytes to the console.
pub fn write_bytes(bytes: &[u8]) {
    for &b in bytes {
        // SAFETY: port 0xE9 is the debug console; writing only prints.
        unsafe { crate::arch::outb(DEBUG_PORT, b) }
    }
    #[cfg(feature = "xen")]
    crate::xen::console::write(bytes);
}

/// `core::fmt` adapter for [`write_bytes`].
#[derive(Debug)]
pub struct Console;

impl fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_bytes(s.as_bytes());
        Ok(())
    }
}

#[macro_export]
macro_rules! println {
    () => { $crate::console::write_bytes(b"\n") };
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = writeln!($crate::console::Console, $($arg)*);
    }};
}
