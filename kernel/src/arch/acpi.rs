//! CPU discovery from the ACPI MADT, with the `acpi` crate (RSDP -> RSDT/XSDT -> "APIC", every
//! checksum verified by the crate). Its default features need nightly (`allocator_api`), so it is
//! used without them: the table walk and the MADT entry iterator, not `PlatformInfo`.
//!
//! The crate trusts the length byte of each MADT entry (a 0 would loop forever, an overlong one
//! would read past the table), so the entry chain is checked here before it is iterated.

use core::ptr::NonNull;

use acpi::madt::{Madt, MadtEntry};
use acpi::{AcpiHandler, AcpiTables, PhysicalMapping};
use heapless::Vec;

use super::boot::BOOT_IDENTITY_MAP_END;
use super::percpu::MAX_CPUS;

/// Most local APIC ids remembered from the MADT (more than the kernel will ever start).
pub const MAX_MADT_CPUS: usize = 4 * MAX_CPUS;

/// Local APIC ids of the enabled processors, in MADT order.
pub type ApicIds = Vec<u32, MAX_MADT_CPUS>;

/// Maps ACPI tables: memory below 4 GiB is identity-mapped, so a physical address is its virtual
/// address. ACPI tables live in RAM the firmware reserved below 4 GiB; a pointer anywhere else is
/// a broken table, and reads as zeroes (a header of zeroes fails every signature check).
#[derive(Clone, Copy)]
pub(crate) struct IdentityHandler;

static ZEROES: [u8; 4096] = [0; 4096];

impl AcpiHandler for IdentityHandler {
    unsafe fn map_physical_region<T>(&self, paddr: usize, size: usize) -> PhysicalMapping<Self, T> {
        let below_4gib = (paddr as u64)
            .checked_add(size as u64)
            .is_some_and(|end| end <= BOOT_IDENTITY_MAP_END);
        let vaddr = if below_4gib && paddr != 0 {
            paddr as *mut T
        } else {
            log::warn!(
                "acpi: table pointer {paddr:#x}+{size:#x} is outside RAM below 4 GiB; ignored"
            );
            ZEROES.as_ptr() as *mut T
        };
        // SAFETY: `vaddr` is non-null and identity-mapped for `size` bytes, or the static page
        // of zeroes (only ever read: the crate does not write tables, and never reads more than
        // a header through a mapping whose header failed validation).
        unsafe { PhysicalMapping::new(paddr, NonNull::new_unchecked(vaddr), size, size, *self) }
    }

    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
}

/// Why the MADT could not be used.
#[derive(Debug)]
pub enum MadtError {
    Acpi(acpi::AcpiError),
    /// An entry whose length byte is too short or runs past the end of the table.
    BadEntry {
        offset: usize,
        entry_type: u8,
        length: u8,
    },
    /// No enabled processor at all.
    NoProcessors,
    /// No I/O APIC entry.
    NoIoApic,
}

impl core::fmt::Display for MadtError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            MadtError::Acpi(e) => write!(f, "{e:?}"),
            MadtError::BadEntry {
                offset,
                entry_type,
                length,
            } => write!(
                f,
                "MADT entry at offset {offset} (type {entry_type}) has a bad length {length}"
            ),
            MadtError::NoProcessors => write!(f, "the MADT lists no enabled processor"),
            MadtError::NoIoApic => write!(f, "the MADT lists no I/O APIC"),
        }
    }
}

/// The first I/O APIC of the MADT and the interrupt source overrides, for routing legacy (INTx)
/// interrupts of devices without MSI-X.
#[derive(Clone, Debug, Default)]
pub struct IoApicInfo {
    pub address: u64,
    pub gsi_base: u32,
    /// (ISA IRQ, global system interrupt, MPS INTI flags)
    pub overrides: Vec<(u8, u32, u16), 16>,
}

/// Reads the first I/O APIC and the interrupt source overrides from the MADT.
pub fn io_apic(rsdp_paddr: u64) -> Result<IoApicInfo, MadtError> {
    let madt = madt(rsdp_paddr)?;
    let mut info = None::<IoApicInfo>;
    let mut overrides = Vec::new();
    for entry in madt.get().entries() {
        match entry {
            MadtEntry::IoApic(e) if info.is_none() => {
                info = Some(IoApicInfo {
                    address: { e.io_apic_address } as u64,
                    gsi_base: { e.global_system_interrupt_base },
                    overrides: Vec::new(),
                })
            }
            MadtEntry::InterruptSourceOverride(e) if { e.bus } == 0 => {
                let _ = overrides.push((e.irq, { e.global_system_interrupt }, { e.flags }));
            }
            _ => {}
        }
    }
    let mut info = info.ok_or(MadtError::NoIoApic)?;
    info.overrides = overrides;
    Ok(info)
}

/// The MADT reached through the RSDP at `rsdp_paddr` (0: search the BIOS area), entries checked.
fn madt(rsdp_paddr: u64) -> Result<PhysicalMapping<IdentityHandler, Madt>, MadtError> {
    let tables = if rsdp_paddr == 0 {
        // SAFETY: PVH boots through the BIOS path (SeaBIOS), whose RSDP lives in the EBDA or at
        // 0xe0000..0x100000, identity-mapped.
        unsafe { AcpiTables::search_for_rsdp_bios(IdentityHandler) }
    } else {
        // SAFETY: the loader's start info names the RSDP; the crate validates its signature and
        // checksums before following it, and the handler maps only identity-mapped memory.
        unsafe { AcpiTables::from_rsdp(IdentityHandler, rsdp_paddr as usize) }
    }
    .map_err(MadtError::Acpi)?;
    let madt = tables.find_table::<Madt>().map_err(MadtError::Acpi)?;
    check_entries(&madt)?;
    Ok(madt)
}

/// Reads the local APIC ids of every enabled processor (processor local APIC and local x2APIC
/// entries) from the MADT reached through the RSDP at `rsdp_paddr` (0: search the BIOS area).
pub fn local_apic_ids(rsdp_paddr: u64) -> Result<ApicIds, MadtError> {
    let madt = madt(rsdp_paddr)?;
    let mut ids = ApicIds::new();
    let mut push = |id: u32| {
        if !ids.contains(&id) && ids.push(id).is_err() {
            log::warn!("acpi: more than {MAX_MADT_CPUS} processors in the MADT; the rest ignored");
        }
    };
    for entry in madt.get().entries() {
        match entry {
            MadtEntry::LocalApic(e) if e.flags & 1 != 0 => push(e.apic_id as u32),
            MadtEntry::LocalX2Apic(e) if e.flags & 1 != 0 => push(e.x2apic_id),
            _ => {}
        }
    }
    if ids.is_empty() {
        return Err(MadtError::NoProcessors);
    }
    Ok(ids)
}

/// Checks that the MADT's entries tile the table exactly, each long enough for its type.
fn check_entries(madt: &PhysicalMapping<IdentityHandler, Madt>) -> Result<(), MadtError> {
    let total = madt.get().header.length as usize;
    let base = madt.virtual_start().as_ptr() as *const u8;
    let mut offset = core::mem::size_of::<Madt>();
    while offset < total {
        if total - offset < 2 {
            return Err(MadtError::BadEntry {
                offset,
                entry_type: 0,
                length: 0,
            });
        }
        // SAFETY: the crate mapped (and checksummed) all `total` bytes of the table, and
        // `offset + 2 <= total`.
        let (entry_type, length) = unsafe { (*base.add(offset), *base.add(offset + 1)) };
        let min = match entry_type {
            0 => 8,  // processor local APIC
            1 => 12, // I/O APIC
            2 => 10, // interrupt source override
            9 => 16, // processor local x2APIC
            _ => 2,
        };
        if (length as usize) < min || length as usize > total - offset {
            return Err(MadtError::BadEntry {
                offset,
                entry_type,
                length,
            });
        }
        offset += length as usize;
    }
    Ok(())
}
