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

/// The longest command line kept.
const CMDLINE_MAX: usize = 1024;

/// The fields the image uses. The command line is copied: the loader
/// leaves it in RAM the heap may later take.
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
    cmdline: [u8; CMDLINE_MAX],
    cmdline_len: usize,
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
    let mut info = StartInfo {
        paddr: u64::from(paddr),
        version,
        flags: u32_at(8),
        cmdline_paddr: u64_at(24),
        rsdp_paddr: u64_at(32),
        memmap_paddr: if version >= 1 { u64_at(40) } else { 0 },
        memmap_entries: if version >= 1 { u32_at(48) } else { 0 },
        cmdline: [0; CMDLINE_MAX],
        cmdline_len: 0,
    };
    if info.cmdline_paddr != 0 && info.cmdline_paddr < 1 << 32 {
        let p = info.cmdline_paddr as usize as *const u8;
        while info.cmdline_len < CMDLINE_MAX {
            // SAFETY: a NUL-terminated string the loader wrote below 4 GiB
            // (identity-mapped); the copy stops at the NUL or when full.
            let b = unsafe { p.add(info.cmdline_len).read() };
            if b == 0 {
                break;
            }
            info.cmdline[info.cmdline_len] = b;
            info.cmdline_len += 1;
        }
    }
    Some(info)
}

/// One entry of the v1 memory map (`struct hvm_memmap_table_entry`).
const MEMMAP_ENTRY_SIZE: usize = 24;
/// Its type of usable RAM.
const MEMMAP_RAM: u32 = 1;

impl StartInfo {
    /// The RAM range of the memory map that holds `addr`, cut at the 4 GiB
    /// the boot page tables map.
    pub fn ram_range_from(&self, addr: u64) -> Option<(u64, u64)> {
        (0..self.memmap_entries as usize).find_map(|i| {
            let p = (self.memmap_paddr as usize + i * MEMMAP_ENTRY_SIZE) as *const u8;
            // SAFETY: the loader's memory map, below 4 GiB (identity-mapped).
            let (start, size, kind) = unsafe {
                (
                    p.cast::<u64>().read_unaligned(),
                    p.add(8).cast::<u64>().read_unaligned(),
                    p.add(16).cast::<u32>().read_unaligned(),
                )
            };
            let end = start.saturating_add(size).min(1 << 32);
            (kind == MEMMAP_RAM && start <= addr && addr < end).then_some((addr, end))
        })
    }

    /// The kernel command line (what `init-xenstore-domain` passes:
    /// `--event N` and the host's `--param`), empty if none or not UTF-8.
    pub fn cmdline(&self) -> &str {
        core::str::from_utf8(&self.cmdline[..self.cmdline_len]).unwrap_or("")
    }

    /// The first page after what the loader placed beside the image (this
    /// structure, the command line, the memory map): where the heap may
    /// start.
    pub fn end_of_boot_data(&self) -> u64 {
        let ends = [
            self.paddr + 56,
            self.cmdline_paddr + self.cmdline_len as u64 + 1,
            self.memmap_paddr + u64::from(self.memmap_entries) * MEMMAP_ENTRY_SIZE as u64,
        ];
        ends.iter().copied().max().unwrap_or(0).next_multiple_of(4096)
    }
}
