//! The ACPI DMA Remapping Reporting table (DMAR): where the remapping hardware units are and
//! which PCI devices each one covers (Intel VT-d specification, chapter 8: 8.1 the table, 8.3 a
//! DMA Remapping Hardware Unit Definition (DRHD), 8.3.1 its device scopes).
//!
//! The table is found through the RSDP with the `acpi` crate (which checks its signature and
//! checksum); its remapping structures are walked here, every length checked against the table
//! before anything inside it is read.

use acpi::sdt::{SdtHeader, Signature};
use acpi::{AcpiTable, AcpiTables};
use heapless::Vec;

use crate::arch::acpi::IdentityHandler;

/// Most remapping units remembered.
pub const MAX_UNITS: usize = 4;
/// Most explicit PCI endpoints remembered per unit.
pub const MAX_SCOPE: usize = 16;

/// The DMAR's fixed part: the header, the host address width (minus one) and the flags
/// (VT-d 8.1). Remapping structures follow at offset 48.
#[repr(C, packed)]
pub struct Dmar {
    header: SdtHeader,
    host_address_width: u8,
    flags: u8,
    _reserved: [u8; 10],
}

// SAFETY: `Dmar` starts with the SDT header and is the DMAR's layout (VT-d 8.1); the crate maps
// the table's full length before handing it out.
unsafe impl AcpiTable for Dmar {
    const SIGNATURE: Signature = Signature::DMAR;
    fn header(&self) -> &SdtHeader {
        &self.header
    }
}

/// One DMA remapping hardware unit (a DRHD structure).
#[derive(Clone, Debug, Default)]
pub struct Unit {
    /// Physical address of its register set (4 KiB aligned).
    pub registers: u64,
    pub segment: u16,
    /// INCLUDE_PCI_ALL: the unit covers every device of its segment not named by another unit.
    pub include_all: bool,
    /// PCI endpoints named in its scope, as source ids (bus << 8 | device << 3 | function).
    /// Only single-step paths (a device on the start bus) are taken: vcrypt never programs
    /// bridges.
    pub endpoints: Vec<u16, MAX_SCOPE>,
}

/// What the DMAR says.
#[derive(Debug, Default)]
pub struct DmarInfo {
    /// The host address width: the highest DMA-addressable physical address bit plus one.
    pub host_address_width: u8,
    pub units: Vec<Unit, MAX_UNITS>,
}

/// Why the DMAR could not be used.
#[derive(Debug)]
pub enum DmarError {
    /// No DMAR (no remapping hardware), or an ACPI error reaching it.
    Acpi(acpi::AcpiError),
    /// A structure whose length is too short or runs past the end of the table.
    BadStructure {
        offset: usize,
        kind: u16,
        length: u16,
    },
    /// No DRHD structure at all.
    NoUnit,
}

impl core::fmt::Display for DmarError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DmarError::Acpi(acpi::AcpiError::TableMissing(_)) => {
                f.write_str("no DMAR table (no IOMMU)")
            }
            DmarError::Acpi(e) => write!(f, "DMAR: {e:?}"),
            DmarError::BadStructure {
                offset,
                kind,
                length,
            } => write!(
                f,
                "DMAR structure at offset {offset} (type {kind}) has a bad length {length}"
            ),
            DmarError::NoUnit => f.write_str("the DMAR lists no remapping unit"),
        }
    }
}

/// Reads the DMAR reached through the RSDP at `rsdp_paddr` (0: search the BIOS area).
pub fn read(rsdp_paddr: u64) -> Result<DmarInfo, DmarError> {
    let tables = if rsdp_paddr == 0 {
        // SAFETY: as in `arch::acpi`: SeaBIOS's RSDP lives in identity-mapped low memory.
        unsafe { AcpiTables::search_for_rsdp_bios(IdentityHandler) }
    } else {
        // SAFETY: the start info names the RSDP; the crate validates it before following it, and
        // the handler maps only identity-mapped memory.
        unsafe { AcpiTables::from_rsdp(IdentityHandler, rsdp_paddr as usize) }
    }
    .map_err(DmarError::Acpi)?;
    let dmar = tables.find_table::<Dmar>().map_err(DmarError::Acpi)?;
    let total = dmar.get().header.length as usize;
    let base = dmar.virtual_start().as_ptr() as *const u8;
    // SAFETY: the crate mapped (and checksummed) all `total` bytes of the table; every read
    // below is at an offset checked to be inside it.
    let byte = |offset: usize| unsafe { *base.add(offset) };
    let u16_at = |offset: usize| u16::from_le_bytes([byte(offset), byte(offset + 1)]);
    let u64_at = |offset: usize| {
        let mut b = [0u8; 8];
        for (i, v) in b.iter_mut().enumerate() {
            *v = byte(offset + i);
        }
        u64::from_le_bytes(b)
    };
    let mut info = DmarInfo {
        host_address_width: dmar.get().host_address_width.saturating_add(1),
        units: Vec::new(),
    };
    let mut offset = core::mem::size_of::<Dmar>();
    while offset + 4 <= total {
        let (kind, length) = (u16_at(offset), u16_at(offset + 2));
        let bad = DmarError::BadStructure {
            offset,
            kind,
            length,
        };
        if (length as usize) < 4 || length as usize > total - offset {
            return Err(bad);
        }
        let end = offset + length as usize;
        if kind == 0 {
            // DRHD (VT-d 8.3): flags, size, segment, register base, then device scopes.
            if (length as usize) < 16 {
                return Err(bad);
            }
            let mut unit = Unit {
                registers: u64_at(offset + 8),
                segment: u16_at(offset + 6),
                include_all: byte(offset + 4) & 1 != 0,
                endpoints: Vec::new(),
            };
            let mut scope = offset + 16;
            while scope + 6 <= end {
                let (scope_kind, scope_len) = (byte(scope), byte(scope + 1) as usize);
                if scope_len < 6 || scope_len > end - scope {
                    return Err(bad);
                }
                // Type 1: a PCI endpoint; one path step (device, function) on the start bus.
                if scope_kind == 1 && scope_len == 8 {
                    let bus = byte(scope + 5) as u16;
                    let sid =
                        bus << 8 | (byte(scope + 6) as u16 & 31) << 3 | byte(scope + 7) as u16 & 7;
                    let _ = unit.endpoints.push(sid);
                }
                scope += scope_len;
            }
            if info.units.push(unit).is_err() {
                log::warn!("iommu: more than {MAX_UNITS} remapping units; the rest ignored");
            }
        }
        offset = end;
    }
    if info.units.is_empty() {
        return Err(DmarError::NoUnit);
    }
    Ok(info)
}
