//! PCI: enumerate every bus through the configuration ports, decode 32/64-bit BARs, enable bus
//! mastering, and find capabilities (MSI-X in `msix`).

pub mod config;
pub mod msix;

use alloc::vec::Vec;

pub use config::PciAddress;

const VENDOR_NONE: u16 = 0xffff;
const REG_COMMAND: u8 = 0x04;
const REG_STATUS: u8 = 0x06;
const REG_BAR0: u8 = 0x10;
const REG_CAP_PTR: u8 = 0x34;
const STATUS_CAP_LIST: u16 = 1 << 4;
const COMMAND_IO: u16 = 1 << 0;
const COMMAND_MEMORY: u16 = 1 << 1;
const COMMAND_BUS_MASTER: u16 = 1 << 2;
const COMMAND_INTX_DISABLE: u16 = 1 << 10;

pub const CAP_MSIX: u8 = 0x11;
pub const CAP_VENDOR: u8 = 0x09;

/// A decoded base address register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bar {
    Memory {
        address: u64,
        size: u64,
        is_64bit: bool,
        prefetchable: bool,
    },
    Io {
        port: u32,
        size: u32,
    },
}

/// One PCI function.
#[derive(Clone, Debug)]
pub struct PciDevice {
    pub address: PciAddress,
    pub vendor_id: u16,
    pub device_id: u16,
    pub class: u8,
    pub subclass: u8,
    pub header_type: u8,
    pub bars: [Option<Bar>; 6],
}

/// A capability in the function's list.
#[derive(Clone, Copy, Debug)]
pub struct Capability {
    pub id: u8,
    pub offset: u8,
}

impl PciDevice {
    /// The function's capabilities (bounded walk: a looping list cannot hang us).
    pub fn capabilities(&self) -> Vec<Capability> {
        let mut caps = Vec::new();
        if self.address.read16(REG_STATUS) & STATUS_CAP_LIST == 0 {
            return caps;
        }
        let mut offset = self.address.read8(REG_CAP_PTR) & 0xfc;
        while offset >= 0x40 && caps.len() < 48 {
            let header = self.address.read16(offset);
            caps.push(Capability {
                id: header as u8,
                offset,
            });
            offset = (header >> 8) as u8 & 0xfc;
        }
        caps
    }

    pub fn find_capability(&self, id: u8) -> Option<Capability> {
        self.capabilities().into_iter().find(|c| c.id == id)
    }

    /// Turns on memory decoding and bus mastering (firmware leaves bus mastering off).
    pub fn enable(&self) {
        let command =
            self.address.read16(REG_COMMAND) | COMMAND_MEMORY | COMMAND_IO | COMMAND_BUS_MASTER;
        self.address.write16(REG_COMMAND, command);
    }

    /// Lets the function assert its legacy INTx line, or masks it (when MSI-X is used).
    pub fn set_intx_enabled(&self, enabled: bool) {
        let command = self.address.read16(REG_COMMAND);
        let command = if enabled {
            command & !COMMAND_INTX_DISABLE
        } else {
            command | COMMAND_INTX_DISABLE
        };
        self.address.write16(REG_COMMAND, command);
    }

    /// Whether legacy INTx is unmasked in the command register.
    pub fn intx_enabled(&self) -> bool {
        self.address.read16(REG_COMMAND) & COMMAND_INTX_DISABLE == 0
    }

    pub fn bus_master_enabled(&self) -> bool {
        self.address.read16(REG_COMMAND) & COMMAND_BUS_MASTER != 0
    }
}

/// Every function on every bus.
pub fn enumerate() -> Vec<PciDevice> {
    let mut found = Vec::new();
    for bus in 0..=255u8 {
        for device in 0..32u8 {
            let first = PciAddress {
                bus,
                device,
                function: 0,
            };
            if first.read16(0) == VENDOR_NONE {
                continue;
            }
            let functions = if first.read8(0x0e) & 0x80 != 0 { 8 } else { 1 };
            for function in 0..functions {
                let address = PciAddress {
                    bus,
                    device,
                    function,
                };
                let id = address.read32(0);
                if id as u16 == VENDOR_NONE {
                    continue;
                }
                let class = address.read32(0x08);
                let header_type = address.read8(0x0e) & 0x7f;
                let bars = if header_type == 0 {
                    decode_bars(address)
                } else {
                    [None; 6]
                };
                found.push(PciDevice {
                    address,
                    vendor_id: id as u16,
                    device_id: (id >> 16) as u16,
                    class: (class >> 24) as u8,
                    subclass: (class >> 16) as u8,
                    header_type,
                    bars,
                });
            }
        }
    }
    found
}

/// Decodes the six BARs of a type-0 header, sizing each by writing all-ones with decoding off.
fn decode_bars(address: PciAddress) -> [Option<Bar>; 6] {
    let mut bars = [None; 6];
    let command = address.read16(REG_COMMAND);
    address.write16(REG_COMMAND, command & !(COMMAND_IO | COMMAND_MEMORY));
    let mut index = 0;
    while index < 6 {
        let reg = REG_BAR0 + 4 * index as u8;
        let original = address.read32(reg);
        address.write32(reg, u32::MAX);
        let mask = address.read32(reg);
        address.write32(reg, original);
        if original & 1 == 1 {
            let size = (!(mask & !0x3)).wrapping_add(1) & 0xffff;
            if mask != 0 && size != 0 {
                bars[index] = Some(Bar::Io {
                    port: original & !0x3,
                    size,
                });
            }
            index += 1;
            continue;
        }
        let is_64bit = (original >> 1) & 0x3 == 0x2;
        let prefetchable = original & 0x8 != 0;
        let (base, size_mask) = if is_64bit && index < 5 {
            let high_reg = reg + 4;
            let original_high = address.read32(high_reg);
            address.write32(high_reg, u32::MAX);
            let mask_high = address.read32(high_reg);
            address.write32(high_reg, original_high);
            (
                (original_high as u64) << 32 | (original & !0xf) as u64,
                (mask_high as u64) << 32 | (mask & !0xf) as u64,
            )
        } else {
            (
                (original & !0xf) as u64,
                0xffff_ffff_0000_0000 | (mask & !0xf) as u64,
            )
        };
        let size = (!size_mask).wrapping_add(1);
        if mask != 0 && size != 0 {
            bars[index] = Some(Bar::Memory {
                address: base,
                size,
                is_64bit,
                prefetchable,
            });
        }
        index += if is_64bit { 2 } else { 1 };
    }
    address.write16(REG_COMMAND, command);
    bars
}
