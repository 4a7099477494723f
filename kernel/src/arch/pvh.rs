//! The PVH `hvm_start_info` handed over in `ebx`: copied into kernel-owned storage before the
//! frame allocator may reuse the memory it lives in.

use heapless::Vec;

const START_INFO_MAGIC: u32 = 0x336e_c578;
pub const MAX_MEMMAP_ENTRIES: usize = 64;
/// QEMU's PVH loader copies `-append` into a buffer of this size (`CMDLINE_BUFSIZE` in
/// `pc-bios/optionrom/pvh_main.c`): at most 4095 bytes and the NUL fit. A longer one overruns
/// it (see the cmdline module); `run-qemu.sh` passes the command line through fw_cfg instead.
pub const PVH_CMDLINE_BUFFER: usize = 4096;

/// E820 type of usable RAM.
pub const MEMMAP_RAM: u32 = 1;

#[derive(Clone, Copy, Debug)]
pub struct MemRegion {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

pub struct BootInfo {
    pub memmap: Vec<MemRegion, MAX_MEMMAP_ENTRIES>,
    /// The `-append` command line's bytes, exactly (empty when there is none).
    pub cmdline: Vec<u8, PVH_CMDLINE_BUFFER>,
    pub rsdp_paddr: u64,
}

#[repr(C)]
struct HvmStartInfo {
    magic: u32,
    version: u32,
    flags: u32,
    nr_modules: u32,
    modlist_paddr: u64,
    cmdline_paddr: u64,
    rsdp_paddr: u64,
    memmap_paddr: u64,
    memmap_entries: u32,
    reserved: u32,
}

#[repr(C)]
struct HvmMemmapEntry {
    addr: u64,
    size: u64,
    kind: u32,
    reserved: u32,
}

/// Reads the start info at `paddr`. Errors name what is wrong with it.
pub fn read(paddr: u64) -> Result<BootInfo, &'static str> {
    if paddr == 0 || paddr >= super::boot::BOOT_IDENTITY_MAP_END {
        return Err("no PVH start info (was the kernel booted with PVH?)");
    }
    // SAFETY: the loader put an hvm_start_info at `paddr`, which is identity-mapped.
    let info = unsafe { core::ptr::read_volatile(paddr as *const HvmStartInfo) };
    if info.magic != START_INFO_MAGIC {
        return Err(
            "PVH start info has a bad magic number (an -append longer than 4095 bytes overwrites it in QEMU's PVH loader; run-qemu.sh passes the command line through fw_cfg instead)",
        );
    }
    let mut boot = BootInfo {
        memmap: Vec::new(),
        cmdline: Vec::new(),
        rsdp_paddr: info.rsdp_paddr,
    };
    if info.version >= 1 && info.memmap_paddr != 0 {
        for i in 0..info.memmap_entries as u64 {
            // SAFETY: the loader wrote `memmap_entries` entries at `memmap_paddr` (identity-mapped).
            let e = unsafe {
                core::ptr::read_volatile(
                    (info.memmap_paddr + i * core::mem::size_of::<HvmMemmapEntry>() as u64)
                        as *const HvmMemmapEntry,
                )
            };
            let region = MemRegion {
                addr: e.addr,
                size: e.size,
                kind: e.kind,
            };
            if boot.memmap.push(region).is_err() {
                log::warn!(
                    "memory map has more than {MAX_MEMMAP_ENTRIES} entries; the rest is ignored"
                );
                break;
            }
        }
    }
    if boot.memmap.is_empty() {
        return Err("PVH start info has no memory map");
    }
    if info.cmdline_paddr != 0 {
        let mut terminated = false;
        for i in 0..PVH_CMDLINE_BUFFER as u64 {
            // SAFETY: the command line is a NUL-terminated string at `cmdline_paddr` (identity-
            // mapped) in the loader's buffer of PVH_CMDLINE_BUFFER bytes; we stop at the NUL or
            // at the end of that buffer.
            let byte = unsafe { core::ptr::read_volatile((info.cmdline_paddr + i) as *const u8) };
            if byte == 0 {
                terminated = true;
                break;
            }
            // Cannot fail: at most PVH_CMDLINE_BUFFER bytes are pushed.
            let _ = boot.cmdline.push(byte);
        }
        if !terminated {
            return Err(
                "the PVH command line fills QEMU's 4096-byte buffer without an end: it was longer than 4095 bytes and is not used (run-qemu.sh passes long ones through fw_cfg)",
            );
        }
    }
    Ok(boot)
}
