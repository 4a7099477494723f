//! DMA confinement with an Intel VT-d remapping unit (Intel Virtualization Technology for
//! Directed I/O, Architecture Specification, rev. 3.x; section numbers below are its own).
//!
//! The device reaches only the pages the driver mapped for it:
//! - `init` finds the unit in the ACPI DMAR table (`dmar`), builds a root table and a context
//!   table (legacy mode, 3.4.2/3.4.3, 9.1/9.3) whose entries name the devices vcrypt drives, all
//!   in one domain whose second-level page tables (3.6, 9.8) are kept here, and enables
//!   translation (11.4.4, TE). Interrupt remapping stays off (run-qemu.sh: `intremap=off`);
//!   MSI writes to 0xfee0_0000.. are interrupt requests, not translated (5.1).
//! - I/O virtual addresses equal physical addresses (an identity layout), but only pages mapped
//!   here translate: every other access faults. The DMA interface (`mm::dma::KernelHal`) maps
//!   ring memory at allocation and every region virtio-drivers shares for a request, read-only
//!   when the device only reads it and write-only when it only writes it.
//! - Each page keeps counts of its readers and writers (regions share pages: a request's
//!   header and reply live in one block, and request memory is mapped for its queue's life
//!   while each request maps it again). A page's entry changes only when its permission does;
//!   the leaf tables for all RAM are allocated at `init`, so mapping never allocates and works
//!   in interrupt context.
//! - Invalidation is register-based (11.4.7 context command, 11.4.8 IOTLB registers): QEMU 7.2
//!   offers both that and queued invalidation (ECAP.QI), and register-based needs no queue
//!   memory. Making a not-present entry present needs no invalidation (CAP.CM = 0: no caching
//!   of not-present entries, 6.1); removing or changing a present permission invalidates the
//!   changed pages' IOTLB entries (page-selective with an address mask, 6.5.1.2, or the domain
//!   when the range is too large) before the memory goes back to its owner.
//! - Faults (7.1, 7.3): the fault recording registers (10.4.14, CAP.FRO/NFR) are read by
//!   `take_fault`, which the driver calls when a drain popped answers and when a device is
//!   reset: each fault is logged with its device, address, direction and reason, cleared, and
//!   kept for its device until taken. The fault event interrupt stays masked (FECTL.IM): the
//!   driver asks exactly when an answer would be trusted.

pub mod dmar;
mod regs;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use vcrypt_drivers::sync::IrqSpinLock;

use super::{PAGE_SIZE, frames};
use regs::Regs;

/// The domain id every device vcrypt drives is put in.
const DOMAIN: u64 = 1;
/// Second-level entry permission bits (9.8).
const READ: u64 = 1 << 0;
const WRITE: u64 = 1 << 1;
/// Entries per table.
const ENTRIES: usize = 512;
/// Most faults kept until taken.
const MAX_PENDING: usize = 16;

/// A DMA remapping fault, as the fault recording register told it (10.4.14).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// The requester: bus << 8 | device << 3 | function.
    pub source: u16,
    /// The faulting page (fault info, bits 63:12).
    pub address: u64,
    /// A write request (type bit 0), else a read.
    pub write: bool,
    /// The fault reason (7.1.3; 5 = no write permission, 6 = no read permission, 7 = entry not
    /// present).
    pub reason: u8,
}

impl Fault {
    /// "bb:dd.f" of the requester.
    pub fn device(&self) -> String {
        format!(
            "{:02x}:{:02x}.{}",
            self.source >> 8,
            (self.source >> 3) & 31,
            self.source & 7
        )
    }
}

/// Why `init` did not enable translation.
#[derive(Debug)]
pub enum IommuError {
    Dmar(dmar::DmarError),
    /// `init` ran before (the unit has one owner).
    AlreadyOwned,
    /// The unit offers neither 3- nor 4-level second-level tables (CAP.SAGAW).
    NoUsableWidth {
        sagaw: u8,
    },
    /// No frames for the tables, or no heap for the page counts.
    NoMemory,
    /// A command the unit did not complete.
    Stuck {
        what: &'static str,
    },
    /// A device vcrypt drives is on another PCI segment than the unit's.
    NotCovered {
        source: u16,
    },
}

impl core::fmt::Display for IommuError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            IommuError::Dmar(e) => write!(f, "{e}"),
            IommuError::AlreadyOwned => f.write_str("the IOMMU is already set up"),
            IommuError::NoUsableWidth { sagaw } => write!(
                f,
                "the IOMMU offers no 3- or 4-level page tables (SAGAW {sagaw:#x})"
            ),
            IommuError::NoMemory => f.write_str("no memory for the IOMMU's tables"),
            IommuError::Stuck { what } => write!(f, "the IOMMU did not complete {what}"),
            IommuError::NotCovered { source } => {
                write!(f, "device {source:#06x} is not behind the IOMMU")
            }
        }
    }
}

/// The page tables and per-page counts of the one domain.
struct Domain {
    /// Physical address of each leaf table, per 2 MiB of I/O virtual space below `limit`.
    leaves: Vec<u64>,
    /// Per 4 KiB page below `limit`: device readers in the low half, writers in the high half.
    counts: Vec<u32>,
    /// First I/O virtual address not covered (the end of RAM).
    limit: u64,
    /// Pages (first, last) whose present entries changed during a drain and whose IOTLB
    /// invalidation waits for the drain's `finish_deferred`.
    stale: Option<(u64, u64)>,
}

/// Per CPU: a drain is popping answers, and its unmaps leave their invalidation to
/// `finish_deferred` (one for the batch instead of one per buffer).
static DEFERRING: [core::sync::atomic::AtomicBool; crate::arch::percpu::MAX_CPUS] =
    [const { core::sync::atomic::AtomicBool::new(false) }; crate::arch::percpu::MAX_CPUS];

/// What the driver's mapping calls did (for the benchmark's notes and the self-tests).
#[derive(Default)]
pub struct Counters {
    pub maps: AtomicU64,
    pub unmaps: AtomicU64,
    /// Page entries written.
    pub entry_writes: AtomicU64,
    /// IOTLB invalidations issued (register writes + a completion read each).
    pub invalidations: AtomicU64,
    /// Fault status register reads.
    pub fault_polls: AtomicU64,
    pub faults: AtomicU64,
}

/// The one remapping unit vcrypt uses.
pub struct Iommu {
    regs: IrqSpinLock<Regs>,
    domain: IrqSpinLock<Domain>,
    /// Faults read from the unit, not yet taken by their device's driver.
    pending: IrqSpinLock<heapless::Vec<Fault, MAX_PENDING>>,
    /// Where the IOTLB registers are (ECAP.IRO * 16).
    iotlb: usize,
    /// Where the fault recording registers are (CAP.FRO * 16) and how many.
    fault_records: (usize, usize),
    /// Most address-mask bits a page-selective invalidation takes (CAP.MAMV), or None without
    /// page-selective invalidation (CAP.PSI).
    max_mask: Option<u32>,
    drain: u64,
    /// Page-walk coherent (ECAP.C): otherwise entries are flushed from the CPU caches.
    coherent: bool,
    levels: u8,
    base: u64,
    pub counters: Counters,
}

static IOMMU: spin::Once<Iommu> = spin::Once::new();

/// The unit, once translation is on.
pub fn get() -> Option<&'static Iommu> {
    IOMMU.get()
}

/// Whether DMA goes through the IOMMU.
pub fn enabled() -> bool {
    IOMMU.get().is_some()
}

/// One line for the inventory.
pub fn describe() -> String {
    match IOMMU.get() {
        Some(u) => format!(
            "VT-d at {:#x}, translation on, {}-level tables, register-based invalidation",
            u.base, u.levels
        ),
        None => String::from("no IOMMU translation: I/O virtual addresses are physical"),
    }
}

fn zeroed_frame() -> Option<u64> {
    let frame = frames::alloc()?;
    // SAFETY: the frame was just allocated to us and is identity-mapped.
    unsafe { core::ptr::write_bytes(frame as *mut u8, 0, PAGE_SIZE) };
    Some(frame)
}

/// Writes one 64-bit table entry the unit reads, and makes it visible to the unit's page walk.
///
/// # Safety
/// `entry` must be an entry of a table this module allocated (identity-mapped, owned here).
unsafe fn write_entry(entry: u64, value: u64, coherent: bool) {
    // SAFETY: guaranteed by the caller.
    unsafe { core::ptr::write_volatile(entry as *mut u64, value) };
    if !coherent {
        // SAFETY: `entry` is mapped memory; CLFLUSH has no other effect (VT-d 6.8: software
        // flushes entries the unit reads when ECAP.C is 0).
        unsafe { core::arch::x86_64::_mm_clflush(entry as *const u8) };
    }
}

/// Finds the remapping unit of the DMAR, gives the devices `sources` (bus << 8 | device << 3 |
/// function) one domain with second-level tables covering RAM below `ram_end`, and enables
/// translation. From then on every DMA of those devices goes through `map`. Once only.
pub fn init(rsdp_paddr: u64, sources: &[u16], ram_end: u64) -> Result<&'static Iommu, IommuError> {
    if IOMMU.get().is_some() {
        return Err(IommuError::AlreadyOwned);
    }
    let info = dmar::read(rsdp_paddr).map_err(IommuError::Dmar)?;
    // The unit that covers the devices: one naming them, else the one including every device.
    let unit = info
        .units
        .iter()
        .find(|u| sources.iter().any(|s| u.endpoints.contains(s)))
        .or_else(|| info.units.iter().find(|u| u.include_all))
        .ok_or(IommuError::Dmar(dmar::DmarError::NoUnit))?;
    if unit.segment != 0 {
        return Err(IommuError::NotCovered {
            source: sources.first().copied().unwrap_or(0),
        });
    }
    // SAFETY: the DMAR names this page as the unit's registers; nothing else uses them.
    let regs = unsafe { Regs::new(unit.registers) };
    let cap = regs.read64(regs::CAP);
    let ecap = regs.read64(regs::ECAP);
    let sagaw = ((cap >> 8) & 0x1f) as u8;
    let (levels, aw) = if sagaw & 0b010 != 0 {
        (3u8, 1u64)
    } else if sagaw & 0b100 != 0 {
        (4, 2)
    } else {
        return Err(IommuError::NoUsableWidth { sagaw });
    };
    let coherent = ecap & 1 != 0;
    // I/O virtual addresses equal physical ones, so RAM must be within what the unit can
    // address (the DMAR's host address width) as well as below 4 GiB.
    let ram_end = ram_end.min(crate::arch::boot::BOOT_IDENTITY_MAP_END).min(
        1u64.checked_shl(info.host_address_width as u32)
            .unwrap_or(u64::MAX),
    );
    let no_memory = || IommuError::NoMemory;

    // Second-level tables: the top (a PML4 for 4 levels) -> one PDPT -> a PD per GiB -> a leaf
    // table per 2 MiB, every non-leaf entry readable and writable (the leaf decides, 9.8).
    let pdpt = zeroed_frame().ok_or_else(no_memory)?;
    let top = if levels == 4 {
        let pml4 = zeroed_frame().ok_or_else(no_memory)?;
        // SAFETY: entry 0 of the table just allocated.
        unsafe { write_entry(pml4, pdpt | READ | WRITE, coherent) };
        pml4
    } else {
        pdpt
    };
    let two_mib = 2u64 << 20;
    let leaf_count = ram_end.div_ceil(two_mib) as usize;
    let mut leaves = Vec::new();
    leaves
        .try_reserve_exact(leaf_count)
        .map_err(|_| no_memory())?;
    let mut pd = 0;
    for i in 0..leaf_count {
        if i % ENTRIES == 0 {
            pd = zeroed_frame().ok_or_else(no_memory)?;
            // SAFETY: entry i / 512 (< 4: RAM below 4 GiB) of the PDPT allocated above.
            unsafe { write_entry(pdpt + (i / ENTRIES) as u64 * 8, pd | READ | WRITE, coherent) };
        }
        let leaf = zeroed_frame().ok_or_else(no_memory)?;
        // SAFETY: entry i % 512 of the PD allocated above.
        unsafe { write_entry(pd + (i % ENTRIES) as u64 * 8, leaf | READ | WRITE, coherent) };
        leaves.push(leaf);
    }
    let pages = (ram_end / PAGE_SIZE as u64) as usize;
    let mut counts = Vec::new();
    counts.try_reserve_exact(pages).map_err(|_| no_memory())?;
    counts.resize(pages, 0);

    // Root table -> a context table per bus (9.1, 9.3): present, translation type 0 (untranslated
    // requests through the second-level tables), the domain and the address width.
    let root = zeroed_frame().ok_or_else(no_memory)?;
    let mut contexts: heapless::Vec<(u8, u64), 8> = heapless::Vec::new();
    for &source in sources {
        let bus = (source >> 8) as u8;
        let context = match contexts.iter().find(|(b, _)| *b == bus) {
            Some(&(_, c)) => c,
            None => {
                let c = zeroed_frame().ok_or_else(no_memory)?;
                contexts.push((bus, c)).map_err(|_| no_memory())?;
                // SAFETY: entry `bus` (16 bytes each) of the root table allocated above.
                unsafe { write_entry(root + bus as u64 * 16, c | 1, coherent) };
                c
            }
        };
        let entry = context + (source & 0xff) as u64 * 16;
        // SAFETY: entry devfn (16 bytes each) of a context table allocated above; the high
        // half first, the present bit last.
        unsafe {
            write_entry(entry + 8, aw | DOMAIN << 8, coherent);
            write_entry(entry, top | 1, coherent);
        }
    }

    // Root table pointer, then global context-cache and IOTLB invalidations, then translation.
    let iotlb = (((ecap >> 8) & 0x3ff) * 16) as usize;
    let drain = if cap & (1 << 55) != 0 {
        regs::IOTLB_DRAIN_READS
    } else {
        0
    } | if cap & (1 << 54) != 0 {
        regs::IOTLB_DRAIN_WRITES
    } else {
        0
    };
    let gsts = regs.read32(regs::GSTS);
    if gsts & (regs::GCMD_QIE | regs::GCMD_IRE) != 0 {
        log::warn!("iommu: queued invalidation or interrupt remapping already on (GSTS {gsts:#x})");
    }
    regs.write64(regs::RTADDR, root);
    if !regs.command(regs::GCMD_SRTP, true) {
        return Err(IommuError::Stuck {
            what: "setting the root table",
        });
    }
    regs.write64(regs::CCMD, regs::CCMD_ICC | regs::CCMD_GLOBAL);
    if !regs.wait_clear64(regs::CCMD, regs::CCMD_ICC) {
        return Err(IommuError::Stuck {
            what: "a context-cache invalidation",
        });
    }
    regs.write64(iotlb + 8, regs::IOTLB_IVT | regs::IOTLB_GLOBAL | drain);
    if !regs.wait_clear64(iotlb + 8, regs::IOTLB_IVT) {
        return Err(IommuError::Stuck {
            what: "an IOTLB invalidation",
        });
    }
    regs.write32(regs::FECTL, regs::FECTL_IM);
    // Start without an old overflow.
    let fsts = regs.read32(regs::FSTS);
    if fsts & regs::FSTS_PFO != 0 {
        regs.write32(regs::FSTS, regs::FSTS_PFO);
    }
    // Translation is a status bit that stays: written back with later commands.
    let gsts = regs.read32(regs::GSTS) & regs::GSTS_ONE_SHOT;
    regs.write32(regs::GCMD, gsts | regs::GCMD_TE);
    if !regs.wait_status(regs::GCMD_TE, regs::GCMD_TE) {
        return Err(IommuError::Stuck {
            what: "enabling translation",
        });
    }
    let fault_records = (
        (((cap >> 24) & 0x3ff) * 16) as usize,
        ((cap >> 40) & 0xff) as usize + 1,
    );
    let max_mask = (cap & (1 << 39) != 0).then_some(((cap >> 48) & 0x3f) as u32);
    let iommu = Iommu {
        regs: IrqSpinLock::new("iommu-regs", regs),
        domain: IrqSpinLock::new(
            "iommu-domain",
            Domain {
                leaves,
                counts,
                limit: ram_end,
                stale: None,
            },
        ),
        pending: IrqSpinLock::new("iommu-faults", heapless::Vec::new()),
        iotlb,
        fault_records,
        max_mask,
        drain,
        coherent,
        levels,
        base: unit.registers,
        counters: Counters::default(),
    };
    let mut first = false;
    let unit = IOMMU.call_once(|| {
        first = true;
        iommu
    });
    if !first {
        return Err(IommuError::AlreadyOwned);
    }
    log::info!(
        "iommu: VT-d at {:#x}: cap {cap:#x} ecap {ecap:#x}, {levels}-level tables, {} leaf tables for {} MiB, {} fault record(s), translation on for {} device(s)",
        unit.base,
        leaf_count,
        ram_end >> 20,
        fault_records.1,
        sources.len()
    );
    Ok(unit)
}

/// Which counts a direction touches: (readers, writers).
fn uses(device_reads: bool, device_writes: bool) -> u32 {
    (device_reads as u32) | (device_writes as u32) << 16
}

fn permission(count: u32) -> u64 {
    (if count & 0xffff != 0 { READ } else { 0 }) | (if count >> 16 != 0 { WRITE } else { 0 })
}

/// Why a map was refused (the device then faults on the region instead of reaching it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// Outside the RAM the domain covers.
    OutOfRange { address: u64, len: usize },
    /// A page with 65,535 mappings of one direction already.
    TooManyMappings { address: u64 },
}

impl Iommu {
    /// Maps `[address, address + len)` for the device: readable if `device_reads`, writable if
    /// `device_writes` (in addition to what the pages already allow). Counted per page: each
    /// `map` needs its `unmap` with the same arguments. Any context; never allocates.
    pub fn map(
        &self,
        address: u64,
        len: usize,
        device_reads: bool,
        device_writes: bool,
    ) -> Result<(), MapError> {
        self.counters.maps.fetch_add(1, Ordering::Relaxed);
        self.change(address, len, uses(device_reads, device_writes), true)
    }

    /// Undoes one `map` with the same arguments; pages whose permission shrinks are invalidated
    /// in the IOTLB before this returns, so the device no longer reaches them.
    pub fn unmap(&self, address: u64, len: usize, device_reads: bool, device_writes: bool) {
        self.counters.unmaps.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.change(address, len, uses(device_reads, device_writes), false) {
            log::error!("iommu: unmap of {address:#x}+{len:#x}: {e:?}");
        }
    }

    /// Unmaps memory mapped by `map` calls of one owner that shares it with nobody (ring memory
    /// from the DMA interface's `dma_alloc`), whatever directions they had.
    pub fn unmap_all(&self, address: u64, len: usize) {
        if len == 0 {
            return;
        }
        let first = address / PAGE_SIZE as u64;
        let count = self
            .domain
            .lock()
            .counts
            .get(first as usize)
            .copied()
            .unwrap_or(0);
        self.unmap(address, len, count & 0xffff != 0, count >> 16 != 0);
    }

    fn change(&self, address: u64, len: usize, delta: u32, add: bool) -> Result<(), MapError> {
        if len == 0 {
            return Ok(());
        }
        let first = address / PAGE_SIZE as u64;
        let last = (address + len as u64 - 1) / PAGE_SIZE as u64;
        let mut domain = self.domain.lock();
        if (last + 1) * PAGE_SIZE as u64 > domain.limit {
            return Err(MapError::OutOfRange { address, len });
        }
        if add {
            // All or nothing: refuse before changing a count.
            let full = (first..=last).find(|&p| {
                let c = domain.counts[p as usize];
                (delta & 0xffff != 0 && c & 0xffff == 0xffff)
                    || (delta >> 16 != 0 && c >> 16 == 0xffff)
            });
            if let Some(p) = full {
                return Err(MapError::TooManyMappings {
                    address: p * PAGE_SIZE as u64,
                });
            }
        }
        // A page made present again while an invalidation for it is deferred: invalidate first,
        // so the device cannot use an old translation with the old permission meanwhile.
        if add
            && let Some((a, b)) = domain.stale
            && a <= last
            && first <= b
        {
            domain.stale = None;
            self.invalidate(a, b);
        }
        // Pages whose present permission changed (need an IOTLB invalidation).
        let mut stale: Option<(u64, u64)> = None;
        for page in first..=last {
            let count = domain.counts[page as usize];
            let next = if add {
                count + delta
            } else {
                let reads = (count & 0xffff).saturating_sub(delta & 0xffff);
                let writes = (count >> 16).saturating_sub(delta >> 16);
                if (delta & 0xffff != 0 && count & 0xffff == 0)
                    || (delta >> 16 != 0 && count >> 16 == 0)
                {
                    log::error!(
                        "iommu: unmap of page {:#x} that is not mapped so",
                        page * PAGE_SIZE as u64
                    );
                }
                reads | writes << 16
            };
            domain.counts[page as usize] = next;
            let (old, new) = (permission(count), permission(next));
            if old != new {
                let leaf = domain.leaves[(page / ENTRIES as u64) as usize];
                let entry = leaf + (page % ENTRIES as u64) * 8;
                let value = if new == 0 {
                    0
                } else {
                    (page * PAGE_SIZE as u64) | new
                };
                // SAFETY: an entry of a leaf table allocated by `init`, under the domain lock.
                unsafe { write_entry(entry, value, self.coherent) };
                self.counters.entry_writes.fetch_add(1, Ordering::Relaxed);
                if old != 0 {
                    stale = Some(stale.map_or((page, page), |(a, _)| (a, page)));
                }
            }
        }
        // Invalidated under the domain lock: a concurrent map of the same page cannot be
        // overtaken by this invalidation's completion. An unmap inside a drain's pops (flagged by
        // `defer_invalidations`, made under the queue lock: interrupts off, so no other task of
        // this CPU runs meanwhile) leaves it to the drain's `finish_deferred`, which runs before
        // the drain hands anything back. Never a map: a wider permission is invalidated at once.
        if let Some((a, b)) = stale {
            let cpu = crate::arch::percpu::cpu_index();
            if !add
                && DEFERRING[cpu].load(Ordering::Relaxed)
                && !x86_64::instructions::interrupts::are_enabled()
            {
                domain.stale = Some(match domain.stale {
                    Some((x, y)) => (x.min(a), y.max(b)),
                    None => (a, b),
                });
            } else {
                self.invalidate(a, b);
            }
        }
        Ok(())
    }

    /// From now until `finish_deferred` on this CPU, unmaps made with interrupts off (a drain's,
    /// under its queue lock) clear their entries but leave the IOTLB invalidation to
    /// `finish_deferred`. Another drain on this CPU in between (an interrupt's) ends it early:
    /// later unmaps then invalidate at once, and whoever finishes first invalidates everything
    /// left.
    pub fn defer_invalidations(&self) {
        DEFERRING[crate::arch::percpu::cpu_index()].store(true, Ordering::Relaxed);
    }

    /// Ends `defer_invalidations` on this CPU and issues the invalidations left for it (one,
    /// covering every page whose entry changed; domain-wide when they are far apart). After this
    /// the device reaches none of the pages unmapped meanwhile.
    pub fn finish_deferred(&self) {
        DEFERRING[crate::arch::percpu::cpu_index()].store(false, Ordering::Relaxed);
        let mut domain = self.domain.lock();
        if let Some((a, b)) = domain.stale.take() {
            self.invalidate(a, b);
        }
    }

    /// Invalidates the IOTLB entries of pages `first..=last` of the domain (11.4.8): one
    /// page-selective invalidation with the address mask that covers them, or the domain.
    fn invalidate(&self, first: u64, last: u64) {
        self.counters.invalidations.fetch_add(1, Ordering::Relaxed);
        let mut mask = 0u32;
        while first >> mask != last >> mask {
            mask += 1;
        }
        let regs = self.regs.lock();
        let command = match self.max_mask {
            Some(max) if mask <= max => {
                let address = (first >> mask << mask) * PAGE_SIZE as u64;
                regs.write64(self.iotlb, address | mask as u64);
                regs::IOTLB_PAGE
            }
            _ => regs::IOTLB_DOMAIN,
        };
        regs.write64(
            self.iotlb + 8,
            regs::IOTLB_IVT | command | self.drain | DOMAIN << 32,
        );
        if !regs.wait_clear64(self.iotlb + 8, regs::IOTLB_IVT) {
            log::error!("iommu: an IOTLB invalidation did not complete");
        }
    }

    /// Reads and clears the fault recording registers (7.3, 10.4.14): each fault is logged and
    /// kept for its device. Returns how many were read. Any context.
    pub fn poll_faults(&self) -> usize {
        self.counters.fault_polls.fetch_add(1, Ordering::Relaxed);
        let regs = self.regs.lock();
        let status = regs.read32(regs::FSTS);
        if status & (regs::FSTS_PPF | regs::FSTS_PFO) == 0 {
            return 0;
        }
        let (offset, count) = self.fault_records;
        let start = ((status >> 8) & 0xff) as usize;
        let mut read = 0;
        for i in 0..count {
            let record = offset + ((start + i) % count) * 16;
            let high = regs.read64(record + 8);
            if high & (1 << 63) == 0 {
                continue;
            }
            let fault = Fault {
                source: high as u16,
                address: regs.read64(record) & !0xfff,
                write: high & (1 << 62) == 0,
                reason: (high >> 32) as u8,
            };
            // Write 1 to F (bit 127 of the record) to free it.
            regs.write32(record + 12, 1 << 31);
            read += 1;
            self.counters.faults.fetch_add(1, Ordering::Relaxed);
            crate::println!(
                "iommu: DMA fault: device {} {} {:#x} (VT-d fault reason {:#x}{})",
                fault.device(),
                if fault.write { "write to" } else { "read of" },
                fault.address,
                fault.reason,
                match fault.reason {
                    5 => ": no write permission",
                    6 => ": no read permission",
                    7 => ": page not mapped",
                    _ => "",
                }
            );
            let mut pending = self.pending.lock();
            if !pending.iter().any(|f| f.source == fault.source) {
                let _ = pending.push(fault);
            }
        }
        if status & regs::FSTS_PFO != 0 {
            crate::println!("iommu: fault records overflowed: faults were lost");
            regs.write32(regs::FSTS, regs::FSTS_PFO);
        }
        read
    }

    /// Polls the fault registers and takes the first fault of `source` kept since the last
    /// call, if any. Any context; never allocates.
    pub fn take_fault(&self, source: u16) -> Option<Fault> {
        self.poll_faults();
        let mut pending = self.pending.lock();
        let i = pending.iter().position(|f| f.source == source)?;
        Some(pending.swap_remove(i))
    }

    /// What the device may do with the page at `address`: (read it, write it).
    pub fn permission(&self, address: u64) -> (bool, bool) {
        let count = self
            .domain
            .lock()
            .counts
            .get((address / PAGE_SIZE as u64) as usize)
            .copied()
            .unwrap_or(0);
        let p = permission(count);
        (p & READ != 0, p & WRITE != 0)
    }

    /// Pages mapped for the device right now.
    pub fn mapped_pages(&self) -> usize {
        self.domain
            .lock()
            .counts
            .iter()
            .filter(|&&c| c != 0)
            .count()
    }

    /// Whether any page of `[address, address + len)` is mapped for the device (self-tests).
    pub fn is_mapped(&self, address: u64, len: usize) -> bool {
        let first = address / PAGE_SIZE as u64;
        let last = (address + len.max(1) as u64 - 1) / PAGE_SIZE as u64;
        let domain = self.domain.lock();
        (first..=last).any(|p| domain.counts.get(p as usize).is_some_and(|&c| c != 0))
    }
}

/// TEST ONLY (fault injection): the next time the DMA interface is asked to share a buffer that
/// starts at `buffer`, it hands the device `iova` instead, without mapping anything (a wrong
/// descriptor), and the matching unshare changes nothing. `disarm` undoes an unused one.
#[doc(hidden)]
pub mod inject {
    use core::sync::atomic::{AtomicU64, Ordering};

    static FROM: AtomicU64 = AtomicU64::new(0);
    static TO: AtomicU64 = AtomicU64::new(0);
    /// The buffer whose one unshare is skipped.
    static SKIP_UNSHARE: AtomicU64 = AtomicU64::new(0);

    pub fn redirect_next_share(buffer: u64, iova: u64) {
        TO.store(iova, Ordering::Relaxed);
        FROM.store(buffer, Ordering::Release);
    }

    pub fn disarm() {
        FROM.store(0, Ordering::Release);
        SKIP_UNSHARE.store(0, Ordering::Release);
    }

    /// The I/O virtual address to hand out instead of mapping `buffer`, if armed for it.
    pub(crate) fn take_redirect(buffer: u64) -> Option<u64> {
        if buffer == 0 || FROM.load(Ordering::Acquire) != buffer {
            return None;
        }
        FROM.compare_exchange(buffer, 0, Ordering::AcqRel, Ordering::Acquire)
            .ok()?;
        SKIP_UNSHARE.store(buffer, Ordering::Release);
        Some(TO.load(Ordering::Relaxed))
    }

    /// Whether this unshare of `buffer` undoes a redirected share (and must change nothing).
    pub(crate) fn take_skip_unshare(buffer: u64) -> bool {
        buffer != 0
            && SKIP_UNSHARE
                .compare_exchange(buffer, 0, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }
}
