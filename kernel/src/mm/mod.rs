//! Memory: physical frames from the PVH memory map, the kernel heap, DMA memory for virtio, and
//! page-table edits for MMIO above the boot identity map.
//!
//! Everything below 4 GiB is identity-mapped at boot, so a physical address below that is also
//! its virtual address. RAM above 4 GiB is not used.

pub mod dma;
pub mod frames;
pub mod heap;
pub mod iommu;
pub mod paging;

use crate::arch::pvh::MemRegion;

pub const PAGE_SIZE: usize = 4096;

unsafe extern "C" {
    static __kernel_start: u8;
    static __kernel_end: u8;
}

/// The physical range the kernel image occupies.
pub fn kernel_image() -> (u64, u64) {
    // SAFETY: linker-defined symbols; only their addresses are taken.
    unsafe {
        (
            &__kernel_start as *const u8 as u64,
            &__kernel_end as *const u8 as u64,
        )
    }
}

/// The end of the highest RAM region of the boot memory map.
static MEMMAP_END: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// The first physical address above the RAM of the boot memory map: with more RAM than fits
/// below the PCI hole, QEMU puts the rest at 4 GiB and up (`hw/i386/pc.c`), so free physical
/// address space starts here, not at 4 GiB. (Reserved regions are not counted: QEMU reserves
/// 1012 GiB..1 TiB on AMD hosts, at the edge of a 40-bit physical address space.)
pub fn ram_end() -> u64 {
    MEMMAP_END.load(core::sync::atomic::Ordering::Relaxed)
}

/// Sets up frames and heap. Returns (usable RAM bytes, heap bytes), or why the RAM is not enough.
pub fn init(memmap: &[MemRegion]) -> Result<(u64, usize), NotEnoughRam> {
    let end = memmap
        .iter()
        .filter(|r| r.kind == crate::arch::pvh::MEMMAP_RAM)
        .map(|r| r.addr.saturating_add(r.size))
        .max()
        .unwrap_or(0);
    MEMMAP_END.store(end, core::sync::atomic::Ordering::Relaxed);
    let (kernel_start, kernel_end) = kernel_image();
    let ram = frames::init(memmap, kernel_start, kernel_end);
    let heap = heap::init(ram).ok_or(NotEnoughRam { usable: ram })?;
    Ok((ram, heap))
}

/// The heap could not be set up. Displays without allocating (there is no heap).
#[derive(Debug)]
pub struct NotEnoughRam {
    usable: u64,
}

impl core::fmt::Display for NotEnoughRam {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "not enough RAM: {} KiB usable, and the kernel needs its heap of {} MiB in one aligned piece (give QEMU at least {} MiB; run-qemu.sh: VCRYPT_MEM)",
            self.usable >> 10,
            heap::MIN_HEAP >> 20,
            MIN_RAM_MIB
        )
    }
}

/// The least guest RAM that boots and runs a command, in MiB: the heap (half the RAM, at least
/// 4 MiB in one 2 MiB-aligned piece above the kernel image) must also hold each data queue's
/// preallocated request memory (about 4.3 MiB). Measured: 10 MiB boots but cannot bring the device
/// up, 12 MiB runs kcapi. `run-qemu.sh` refuses less with the same number.
pub const MIN_RAM_MIB: u64 = 12;
