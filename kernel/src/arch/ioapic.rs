//! The I/O APIC, for the one thing it is needed for here: legacy INTx interrupts of PCI devices
//! without MSI-X (the fallback path of the virtio driver).
//!
//! INTx lines are shared: several devices may sit on one pin. The first device to ask routes the
//! pin to a newly allocated [`IrqLine`]; later devices on the same pin get that same line and
//! add their own handler to it, so every device on the pin is looked at on each interrupt.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use vcrypt_drivers::sync::IrqSpinLock;

use super::acpi::IoApicInfo;
use super::irq::{IrqError, IrqLine};
use crate::mm::paging;

const IOREGSEL: usize = 0x00;
const IOWIN: usize = 0x10;
const REDIRECTION_TABLE: u32 = 0x10;
const POLARITY_LOW: u32 = 1 << 13;
const TRIGGER_LEVEL: u32 = 1 << 15;
const MASKED: u32 = 1 << 16;

static BASE: AtomicU64 = AtomicU64::new(0);
static INFO: IrqSpinLock<Option<IoApicInfo>> = IrqSpinLock::new("ioapic", None);
/// The line each routed GSI delivers to (shared by every device on that pin).
static ROUTED: IrqSpinLock<Vec<(u32, Arc<IrqLine>)>> =
    IrqSpinLock::new("ioapic-routed", Vec::new());

/// Remembers the I/O APIC found in the MADT and maps its registers.
pub fn init(info: IoApicInfo) -> Result<(), paging::MapError> {
    let base = paging::map_mmio(info.address, 0x20)?;
    BASE.store(base, Ordering::Release);
    *INFO.lock() = Some(info);
    Ok(())
}

fn write(reg: u32, value: u32) {
    let base = BASE.load(Ordering::Acquire) as usize;
    // SAFETY: `base` maps the I/O APIC's two registers (`init`); callers hold the INFO lock, so
    // the select/window pair is not interleaved.
    unsafe {
        core::ptr::write_volatile((base + IOREGSEL) as *mut u32, reg);
        core::ptr::write_volatile((base + IOWIN) as *mut u32, value);
    }
}

/// Why an interrupt could not be routed.
#[derive(Debug)]
pub enum RouteError {
    NoIoApic,
    PinOutOfRange(u32),
    NoVector(IrqError),
}

impl core::fmt::Display for RouteError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RouteError::NoIoApic => f.write_str("no I/O APIC"),
            RouteError::PinOutOfRange(gsi) => write!(f, "GSI {gsi} is not a pin of the I/O APIC"),
            RouteError::NoVector(e) => write!(f, "no vector for the line: {e}"),
        }
    }
}

/// The interrupt line of the PCI interrupt on ISA IRQ `irq` (the configuration space's
/// interrupt line) and its GSI. The first call for a pin routes it to a new line on the CPU with
/// APIC id `apic_id`; later calls for the same pin return the same line (shared INTx).
pub fn pci_irq_line(irq: u8, apic_id: u32) -> Result<(Arc<IrqLine>, u32), RouteError> {
    let gsi = gsi_of(irq)?;
    let mut routed = ROUTED.lock();
    if let Some((_, line)) = routed.iter().find(|(g, _)| *g == gsi) {
        return Ok((line.clone(), gsi));
    }
    let line = Arc::new(IrqLine::alloc().map_err(RouteError::NoVector)?);
    route_pci_irq(irq, line.vector(), apic_id)?;
    routed.push((gsi, line.clone()));
    Ok((line, gsi))
}

fn gsi_of(irq: u8) -> Result<u32, RouteError> {
    let info = INFO.lock();
    let info = info.as_ref().ok_or(RouteError::NoIoApic)?;
    Ok(info
        .overrides
        .iter()
        .find(|(source, _, _)| *source == irq)
        .map_or(irq as u32, |&(_, gsi, _)| gsi))
}

/// Routes the PCI interrupt on ISA IRQ `irq` to `vector` on the CPU with APIC id `apic_id`. PCI
/// interrupts are level-triggered and active low unless the MADT overrides it (QEMU declares its
/// PCI links level / active high).
fn route_pci_irq(irq: u8, vector: u8, apic_id: u32) -> Result<u32, RouteError> {
    let info = INFO.lock();
    let info = info.as_ref().ok_or(RouteError::NoIoApic)?;
    let (gsi, flags) = info
        .overrides
        .iter()
        .find(|(source, _, _)| *source == irq)
        .map(|&(_, gsi, flags)| (gsi, flags))
        .unwrap_or((irq as u32, 0));
    let pin = gsi
        .checked_sub(info.gsi_base)
        .filter(|&p| p < 24)
        .ok_or(RouteError::PinOutOfRange(gsi))?;
    // MPS INTI flags: polarity bits 0-1 (1 high, 3 low, 0 bus default = low for PCI), trigger
    // bits 2-3 (1 edge, 3 level, 0 bus default = level for PCI).
    let mut low = vector as u32;
    if flags & 0b11 != 0b01 {
        low |= POLARITY_LOW;
    }
    if (flags >> 2) & 0b11 != 0b01 {
        low |= TRIGGER_LEVEL;
    }
    write(REDIRECTION_TABLE + 2 * pin + 1, apic_id << 24);
    write(REDIRECTION_TABLE + 2 * pin, low & !MASKED);
    Ok(gsi)
}
