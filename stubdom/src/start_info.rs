//! The PVH start info (`struct hvm_start_info`, Xen's
//! `public/arch-x86/hvm/start_info.h`; QEMU's PVH loader fills the same):
//! little-endian, at the physical address the entry got in EBX.
//!
//! | offset | field |
//! | ---: | --- |
//! | 0 | magic `0x336ec578` |
//! | 4 | version (0; 1 adds the memory map) |
//! | 8 | flags |
//! | 12 | nr_modules |
//! | 16 | modlist_paddr (u64) |
//! | 24 | cmdline_paddr (u64) |
//! | 32 | rsdp_paddr (u64) |
//! | 40 | memmap_paddr (u64, v1) |
//! | 48 | memmap_entries (u32, v1) |

pub const MAGIC: u32 = 0x336e_c578;

/// The fields the image uses.
#[derive(Debug, Clone, Copy)]
#[allow(dead_code)]
pub struct StartInfo {
    pub paddr: u64,
    pub version: u32,
    pub flags: u32,
    pub cmdline_paddr: u64,
    pub rsdp_paddr: u64,
    pub memmap_paddr: u64,
    pub memmap_entries: u32,
}

/// Reads the start info if `paddr` holds one.
pub fn read(paddr: u32) -> Option<StartInfo> {
    if paddr == 0 {
        return None;
    }
    let p = paddr as usize as *const u8;
    // SAFETY: the boot ABI passes a valid start info below 4 GiB, which is
    // identity-mapped; reads are unaligned-safe.
    let u32_at = |off: usize| unsafe { p.add(off).cast::<u32>().read_unaligned() };
    // SAFETY: as above.
    let u64_at = |off: usize| unsafe { p.add(off).cast::<u64>().read_unaligned() };
    if u32_at(0) != MAGIC {
        return None;
    }
    let version = u32_at(4);
    Some(StartInfo {
        paddr: u64::from(paddr),
        version,
        flags: u32_at(8),
        cmdline_paddr: u64_at(24),
        rsdp_paddr: u64_at(32),
        memmap_paddr: if version >= 1 { u64_at(40) } else { 0 },
        memmap_entries: if version >= 1 { u32_at(48) } else { 0 },
    })
}
