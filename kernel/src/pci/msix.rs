//! MSI-X: the capability, the table in a BAR, and programming entries to deliver a vector to a
//! chosen CPU's local APIC.

use super::{Bar, CAP_MSIX, PciDevice};
use crate::mm::paging;

const MSG_CTRL_ENABLE: u16 = 1 << 15;
const MSG_CTRL_FUNCTION_MASK: u16 = 1 << 14;
const ENTRY_SIZE: usize = 16;
const ENTRY_VECTOR_MASKED: u32 = 1;

/// The MSI-X capability and its mapped table.
#[derive(Debug)]
pub struct Msix {
    cap_offset: u8,
    table_size: u16,
    table: *mut u32,
}

// SAFETY: the table pointer is an MMIO mapping that lives forever; entries are written by one
// owner (the driver holding this value).
unsafe impl Send for Msix {}
// SAFETY: as above; shared reads of MMIO are harmless.
unsafe impl Sync for Msix {}

/// Why MSI-X could not be set up.
#[derive(Debug)]
pub enum MsixError {
    NoCapability,
    BadBar(u8),
    Unmappable,
    EntryOutOfRange { entry: u16, size: u16 },
}

impl core::fmt::Display for MsixError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            MsixError::NoCapability => f.write_str("no MSI-X capability"),
            MsixError::BadBar(bar) => {
                write!(f, "the MSI-X table's BAR{bar} is missing or too small")
            }
            MsixError::Unmappable => f.write_str("the MSI-X table cannot be mapped"),
            MsixError::EntryOutOfRange { entry, size } => {
                write!(f, "MSI-X entry {entry} is past the table ({size} entries)")
            }
        }
    }
}

/// An entry as read back from the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixEntry {
    pub address: u64,
    pub data: u32,
    pub masked: bool,
}

impl Msix {
    /// Finds the capability and maps the table. The function stays disabled until `enable`.
    pub fn probe(device: &PciDevice) -> Result<Msix, MsixError> {
        let cap = device
            .find_capability(CAP_MSIX)
            .ok_or(MsixError::NoCapability)?;
        let control = device.address.read16(cap.offset + 2);
        let table_size = (control & 0x7ff) + 1;
        let table_info = device.address.read32(cap.offset + 4);
        let bir = (table_info & 0x7) as u8;
        let Some(Some(Bar::Memory { address, size, .. })) = device.bars.get(bir as usize) else {
            return Err(MsixError::BadBar(bir));
        };
        let offset = (table_info & !0x7) as u64;
        let length = table_size as u64 * ENTRY_SIZE as u64;
        if offset + length > *size {
            return Err(MsixError::BadBar(bir));
        }
        let table =
            paging::map_mmio(address + offset, length).map_err(|_| MsixError::Unmappable)?;
        Ok(Msix {
            cap_offset: cap.offset,
            table_size,
            table: table as *mut u32,
        })
    }

    /// Number of table entries (vectors).
    pub fn table_size(&self) -> u16 {
        self.table_size
    }

    fn entry_word(&self, entry: u16, word: usize) -> Result<*mut u32, MsixError> {
        if entry >= self.table_size {
            return Err(MsixError::EntryOutOfRange {
                entry,
                size: self.table_size,
            });
        }
        // SAFETY: `entry` is within the mapped table (checked above).
        Ok(unsafe { self.table.add(entry as usize * ENTRY_SIZE / 4 + word) })
    }

    /// Routes `entry` to `vector` on the CPU with local APIC id `apic_id` and unmasks it.
    pub fn set_entry(&self, entry: u16, apic_id: u32, vector: u8) -> Result<(), MsixError> {
        let address = crate::arch::apic::base() | (apic_id as u64) << 12;
        let words = [
            address as u32,
            (address >> 32) as u32,
            vector as u32,
            0, // vector control: unmasked
        ];
        for (i, value) in words.into_iter().enumerate() {
            let word = self.entry_word(entry, i)?;
            // SAFETY: `word` points into the mapped MSI-X table.
            unsafe { core::ptr::write_volatile(word, value) };
        }
        Ok(())
    }

    /// Reads `entry` back from the table.
    pub fn entry(&self, entry: u16) -> Result<MsixEntry, MsixError> {
        let mut words = [0u32; 4];
        for (i, w) in words.iter_mut().enumerate() {
            // SAFETY: `entry_word` checked the index against the mapped table.
            *w = unsafe { core::ptr::read_volatile(self.entry_word(entry, i)?) };
        }
        Ok(MsixEntry {
            address: words[0] as u64 | (words[1] as u64) << 32,
            data: words[2],
            masked: words[3] & ENTRY_VECTOR_MASKED != 0,
        })
    }

    /// Writes `value` back into `entry` (address, data and mask), e.g. to restore it.
    pub fn write_entry(&self, entry: u16, value: MsixEntry) -> Result<(), MsixError> {
        let words = [
            value.address as u32,
            (value.address >> 32) as u32,
            value.data,
            value.masked as u32,
        ];
        for (i, word) in words.into_iter().enumerate() {
            // SAFETY: `entry_word` checked the index against the mapped table.
            unsafe { core::ptr::write_volatile(self.entry_word(entry, i)?, word) };
        }
        Ok(())
    }

    /// Masks `entry`.
    pub fn mask(&self, entry: u16) -> Result<(), MsixError> {
        let word = self.entry_word(entry, 3)?;
        // SAFETY: as in `set_entry`.
        unsafe { core::ptr::write_volatile(word, ENTRY_VECTOR_MASKED) };
        Ok(())
    }

    /// Enables MSI-X for the function (and clears the function mask).
    pub fn enable(&self, device: &PciDevice) {
        let control = device.address.read16(self.cap_offset + 2);
        device.address.write16(
            self.cap_offset + 2,
            (control | MSG_CTRL_ENABLE) & !MSG_CTRL_FUNCTION_MASK,
        );
    }

    /// Whether the function has MSI-X enabled.
    pub fn enabled(&self, device: &PciDevice) -> bool {
        device.address.read16(self.cap_offset + 2) & MSG_CTRL_ENABLE != 0
    }
}
