//! PCI configuration space through the legacy ports 0xCF8/0xCFC, just
//! enough to find QEMU's `ivshmem-plain` device (1af4:1110) and its BAR2,
//! the shared-memory region. The firmware (SeaBIOS) assigns BARs; qboot
//! does not, so an unassigned BAR2 — or one above the 4 GiB the boot page
//! tables map — is placed here.

use crate::arch::{inl, outl};

const CONFIG_ADDRESS: u16 = 0xCF8;
const CONFIG_DATA: u16 = 0xCFC;

/// A device's function on bus 0..=255.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bdf {
    pub bus: u8,
    pub dev: u8,
    pub func: u8,
}

impl Bdf {
    fn address(self, offset: u8) -> u32 {
        0x8000_0000
            | (u32::from(self.bus) << 16)
            | (u32::from(self.dev) << 11)
            | (u32::from(self.func) << 8)
            | u32::from(offset & 0xFC)
    }

    pub fn read(self, offset: u8) -> u32 {
        // SAFETY: the PCI configuration mechanism #1 ports.
        unsafe {
            outl(CONFIG_ADDRESS, self.address(offset));
            inl(CONFIG_DATA)
        }
    }

    pub fn write(self, offset: u8, value: u32) {
        // SAFETY: as `read`; the callers write only BARs and COMMAND of
        // the device they found.
        unsafe {
            outl(CONFIG_ADDRESS, self.address(offset));
            outl(CONFIG_DATA, value);
        }
    }
}

/// The first function with this vendor and device id (buses 0..4 are
/// plenty for QEMU's `pc` machine).
pub fn find(vendor: u16, device: u16) -> Option<Bdf> {
    for bus in 0..4u8 {
        for dev in 0..32u8 {
            for func in 0..8u8 {
                let bdf = Bdf { bus, dev, func };
                let id = bdf.read(0x00);
                if id & 0xFFFF == 0xFFFF {
                    if func == 0 {
                        break;
                    }
                    continue;
                }
                if id == (u32::from(device) << 16) | u32::from(vendor) {
                    return Some(bdf);
                }
            }
        }
    }
    None
}

const COMMAND: u8 = 0x04;
const COMMAND_MEMORY: u32 = 1 << 1;

/// Where a memory BAR was found or placed.
#[derive(Clone, Copy, Debug)]
pub struct Bar {
    pub base: u64,
    pub size: u64,
    /// Assigned by us (the firmware had not, or had put it above 4 GiB).
    pub assigned: bool,
}

/// Sizes the 64-bit memory BAR at `index` (and `index + 1`), assigns it at
/// `fallback` if it is unassigned or not below `limit`, and enables memory
/// decoding. `None` if it is not a 64-bit memory BAR.
pub fn map_bar64(bdf: Bdf, index: u8, fallback: u64, limit: u64) -> Option<Bar> {
    let lo_off = 0x10 + 4 * index;
    let hi_off = lo_off + 4;
    let lo = bdf.read(lo_off);
    if lo & 1 != 0 || (lo >> 1) & 3 != 2 {
        return None;
    }
    let hi = bdf.read(hi_off);
    let base = (u64::from(hi) << 32) | u64::from(lo & !0xF);

    // Size: write all ones with decoding off, read back the mask.
    let cmd = bdf.read(COMMAND);
    bdf.write(COMMAND, cmd & !COMMAND_MEMORY);
    bdf.write(lo_off, 0xFFFF_FFFF);
    bdf.write(hi_off, 0xFFFF_FFFF);
    let mask = (u64::from(bdf.read(hi_off)) << 32) | u64::from(bdf.read(lo_off) & !0xF);
    let size = (!mask).wrapping_add(1);

    let assigned = base == 0 || base.saturating_add(size) > limit;
    let base = if assigned { fallback } else { base };
    bdf.write(lo_off, (base as u32) | (lo & 0xF));
    bdf.write(hi_off, (base >> 32) as u32);
    bdf.write(COMMAND, cmd | COMMAND_MEMORY);
    Some(Bar { base, size, assigned })
}
