//! PCI configuration space through the legacy 0xCF8/0xCFC ports. The address/data pair is one
//! critical section, so every access takes the configuration lock.

use core::fmt;

use vcrypt_drivers::sync::IrqSpinLock;

use crate::arch::port::{inl, outl};

const CONFIG_ADDRESS: u16 = 0xcf8;
const CONFIG_DATA: u16 = 0xcfc;

static CONFIG_LOCK: IrqSpinLock<()> = IrqSpinLock::new("pci-config", ());

/// A PCI function's address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PciAddress {
    pub bus: u8,
    pub device: u8,
    pub function: u8,
}

impl PciAddress {
    /// The requester id the function's DMA carries (bus << 8 | device << 3 | function).
    pub fn source_id(&self) -> u16 {
        (self.bus as u16) << 8 | (self.device as u16 & 31) << 3 | (self.function as u16 & 7)
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.device, self.function)
    }
}

impl fmt::Debug for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl PciAddress {
    fn port_address(self, offset: u8) -> u32 {
        0x8000_0000
            | (self.bus as u32) << 16
            | (self.device as u32) << 11
            | (self.function as u32) << 8
            | (offset as u32 & 0xfc)
    }

    /// Reads the aligned double word at `offset`.
    pub fn read32(self, offset: u8) -> u32 {
        let _guard = CONFIG_LOCK.lock();
        outl(CONFIG_ADDRESS, self.port_address(offset));
        inl(CONFIG_DATA)
    }

    /// Writes the aligned double word at `offset`.
    pub fn write32(self, offset: u8, value: u32) {
        let _guard = CONFIG_LOCK.lock();
        outl(CONFIG_ADDRESS, self.port_address(offset));
        outl(CONFIG_DATA, value);
    }

    pub fn read16(self, offset: u8) -> u16 {
        (self.read32(offset) >> ((offset & 2) * 8)) as u16
    }

    pub fn read8(self, offset: u8) -> u8 {
        (self.read32(offset) >> ((offset & 3) * 8)) as u8
    }

    /// Read-modify-write of the 16-bit register at `offset`.
    pub fn write16(self, offset: u8, value: u16) {
        let shift = (offset & 2) * 8;
        let old = self.read32(offset);
        let new = (old & !(0xffff << shift)) | (value as u32) << shift;
        self.write32(offset, new);
    }
}
