//! Page-table edits: MMIO above the boot identity map (64-bit BARs the firmware placed above
//! 4 GiB) is identity-mapped on demand with uncached 2 MiB pages.

use vcrypt_drivers::sync::IrqSpinLock;
use x86_64::registers::control::Cr3;

use super::frames;
use crate::arch::boot::BOOT_IDENTITY_MAP_END;

const PRESENT: u64 = 1;
const WRITABLE: u64 = 1 << 1;
const WRITE_THROUGH: u64 = 1 << 3;
const CACHE_DISABLE: u64 = 1 << 4;
const HUGE: u64 = 1 << 7;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
const TWO_MIB: u64 = 2 << 20;
/// Highest physical address we map (canonical lower half, identity).
const MAX_MAPPABLE: u64 = 1 << 46;

static PAGING: IrqSpinLock<()> = IrqSpinLock::new("paging", ());

#[derive(Debug)]
pub enum MapError {
    OutOfFrames,
    AddressTooHigh(u64),
    /// A 4 KiB mapping or a non-MMIO mapping is already there.
    Conflict(u64),
}

impl core::fmt::Display for MapError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            MapError::OutOfFrames => f.write_str("out of frames for page tables"),
            MapError::AddressTooHigh(a) => write!(f, "address {a:#x} is beyond what can be mapped"),
            MapError::Conflict(a) => write!(f, "{a:#x} is already mapped differently"),
        }
    }
}

/// Returns the (identity) virtual address of `[paddr, paddr + size)`, mapping it uncached first if
/// it lies above the boot identity map.
pub fn map_mmio(paddr: u64, size: u64) -> Result<u64, MapError> {
    let end = paddr
        .checked_add(size)
        .ok_or(MapError::AddressTooHigh(paddr))?;
    if end <= BOOT_IDENTITY_MAP_END {
        return Ok(paddr);
    }
    if end > MAX_MAPPABLE {
        return Err(MapError::AddressTooHigh(paddr));
    }
    let _guard = PAGING.lock();
    let mut page = paddr & !(TWO_MIB - 1);
    while page < end {
        map_2mib_uncached(page)?;
        page += TWO_MIB;
    }
    x86_64::instructions::tlb::flush_all();
    Ok(paddr)
}

/// Maps one 2 MiB identity page; already-present identical mappings are kept.
fn map_2mib_uncached(page: u64) -> Result<(), MapError> {
    let (pml4, _) = Cr3::read();
    let mut table = pml4.start_address().as_u64() as *mut u64;
    for level in [3u32, 2] {
        let index = ((page >> (12 + 9 * level)) & 0x1ff) as usize;
        // SAFETY: page tables live in identity-mapped low memory and we hold the paging lock.
        let entry = unsafe { &mut *table.add(index) };
        if *entry & PRESENT == 0 {
            let frame = frames::alloc().ok_or(MapError::OutOfFrames)?;
            // SAFETY: a fresh frame of ours, identity-mapped; zeroing makes an empty table.
            unsafe { core::ptr::write_bytes(frame as *mut u8, 0, 4096) };
            *entry = frame | PRESENT | WRITABLE;
        } else if *entry & HUGE != 0 {
            return Err(MapError::Conflict(page));
        }
        table = (*entry & ADDR_MASK) as *mut u64;
    }
    let index = ((page >> 21) & 0x1ff) as usize;
    // SAFETY: as above.
    let entry = unsafe { &mut *table.add(index) };
    let wanted = page | PRESENT | WRITABLE | HUGE | WRITE_THROUGH | CACHE_DISABLE;
    if *entry & PRESENT != 0 && *entry != wanted {
        return Err(MapError::Conflict(page));
    }
    *entry = wanted;
    Ok(())
}

const STACK_REGION_BASE: u64 = 0xffff_8000_0000_0000;
const STACK_REGION_END: u64 = 0xffff_8080_0000_0000; // one PML4 slot: 512 GiB
const PAGE: u64 = 4096;

/// Next unused virtual address in the stack region. Addresses are never reused, so a stale TLB
/// entry on another CPU can never point a new stack at a freed frame.
static NEXT_STACK_VADDR: core::sync::atomic::AtomicU64 =
    core::sync::atomic::AtomicU64::new(STACK_REGION_BASE);

/// A kernel stack of 4 KiB pages with an unmapped guard page below it: running off its bottom
/// page-faults instead of overwriting whatever lies below.
pub struct GuardedStack {
    guard: u64,
    pages: usize,
}

impl GuardedStack {
    /// Maps `pages` fresh zeroed frames above one unmapped guard page.
    pub fn new(pages: usize) -> Result<GuardedStack, MapError> {
        let span = (pages as u64 + 1) * PAGE;
        let guard = NEXT_STACK_VADDR.fetch_add(span, core::sync::atomic::Ordering::Relaxed);
        if guard + span > STACK_REGION_END {
            return Err(MapError::AddressTooHigh(guard));
        }
        let _lock = PAGING.lock();
        for i in 0..pages as u64 {
            let frame = frames::alloc().ok_or(MapError::OutOfFrames)?;
            // SAFETY: a fresh frame of ours, identity-mapped.
            unsafe { core::ptr::write_bytes(frame as *mut u8, 0, PAGE as usize) };
            let entry = pte_for(guard + (i + 1) * PAGE)?;
            *entry = frame | PRESENT | WRITABLE;
        }
        Ok(GuardedStack { guard, pages })
    }

    /// The initial stack pointer (one past the highest byte).
    pub fn top(&self) -> u64 {
        self.guard + (self.pages as u64 + 1) * PAGE
    }

    /// The unmapped guard page's address range.
    pub fn guard_range(&self) -> core::ops::Range<u64> {
        self.guard..self.guard + PAGE
    }
}

impl Drop for GuardedStack {
    fn drop(&mut self) {
        let _lock = PAGING.lock();
        for i in 0..self.pages as u64 {
            let vaddr = self.guard + (i + 1) * PAGE;
            if let Ok(entry) = pte_for(vaddr) {
                let frame = *entry & ADDR_MASK;
                *entry = 0;
                x86_64::instructions::tlb::flush(x86_64::VirtAddr::new(vaddr));
                if let Err(e) = frames::free(frame, 1) {
                    log::error!("freeing stack frame: {e:?}");
                }
            }
        }
    }
}

/// The 4 KiB page-table entry for `vaddr` in the stack region, creating tables on the way.
/// Caller holds the paging lock.
fn pte_for(vaddr: u64) -> Result<&'static mut u64, MapError> {
    let (pml4, _) = Cr3::read();
    let mut table = pml4.start_address().as_u64() as *mut u64;
    for level in [3u32, 2, 1] {
        let index = ((vaddr >> (12 + 9 * level)) & 0x1ff) as usize;
        // SAFETY: page tables live in identity-mapped low memory; the caller holds the lock.
        let entry = unsafe { &mut *table.add(index) };
        if *entry & PRESENT == 0 {
            let frame = frames::alloc().ok_or(MapError::OutOfFrames)?;
            // SAFETY: a fresh frame of ours, identity-mapped; zeroed it is an empty table.
            unsafe { core::ptr::write_bytes(frame as *mut u8, 0, PAGE as usize) };
            *entry = frame | PRESENT | WRITABLE;
        } else if *entry & HUGE != 0 {
            return Err(MapError::Conflict(vaddr));
        }
        table = (*entry & ADDR_MASK) as *mut u64;
    }
    // SAFETY: as above; the index is below 512.
    Ok(unsafe { &mut *table.add(((vaddr >> 12) & 0x1ff) as usize) })
}
