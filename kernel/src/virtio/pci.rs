//! The virtio-over-PCI (modern) transport: finds the vendor capabilities, maps their BAR regions
//! and implements virtio-drivers' `Transport`, plus what that trait lacks: MSI-X vector routing
//! and a [`Doorbell`] per queue that is rung without holding any lock.

use core::ptr::NonNull;

use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::{Error as VirtioError, PhysAddr};
use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::arch::trips::{self, Trip};
use crate::mm::paging;
use crate::pci::{Bar, CAP_VENDOR, PciDevice};

const CFG_COMMON: u8 = 1;
const CFG_NOTIFY: u8 = 2;
const CFG_ISR: u8 = 3;
const CFG_DEVICE: u8 = 4;

// Common configuration layout (virtio 1.x, 4.1.4.3).
const DEVICE_FEATURE_SELECT: usize = 0x00;
const DEVICE_FEATURE: usize = 0x04;
const DRIVER_FEATURE_SELECT: usize = 0x08;
const DRIVER_FEATURE: usize = 0x0c;
const MSIX_CONFIG: usize = 0x10;
const NUM_QUEUES: usize = 0x12;
const DEVICE_STATUS: usize = 0x14;
const CONFIG_GENERATION: usize = 0x15;
const QUEUE_SELECT: usize = 0x16;
const QUEUE_SIZE: usize = 0x18;
const QUEUE_MSIX_VECTOR: usize = 0x1a;
const QUEUE_ENABLE: usize = 0x1c;
const QUEUE_NOTIFY_OFF: usize = 0x1e;
const QUEUE_DESC: usize = 0x20;
const QUEUE_DRIVER: usize = 0x28;
const QUEUE_DEVICE: usize = 0x30;

/// The value of an MSI-X vector register that means "no vector".
pub const NO_VECTOR: u16 = 0xffff;

/// Why the transport could not be set up.
#[derive(Debug)]
pub enum TransportError {
    MissingCapability(&'static str),
    BadBar(u8),
    Unmappable,
}

impl core::fmt::Display for TransportError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            TransportError::MissingCapability(what) => write!(f, "no virtio {what} capability"),
            TransportError::BadBar(bar) => write!(f, "a virtio capability points outside BAR{bar}"),
            TransportError::Unmappable => f.write_str("a virtio structure cannot be mapped"),
        }
    }
}

/// A mapped MMIO region: every access is volatile and bounds-checked.
#[derive(Clone, Copy, Debug)]
struct Region {
    base: NonNull<u8>,
    len: usize,
}

impl Region {
    fn ptr<T>(&self, offset: usize) -> *mut T {
        assert!(
            offset + size_of::<T>() <= self.len,
            "MMIO access past the region"
        );
        // SAFETY: the offset is within the mapped region (checked above).
        unsafe { self.base.as_ptr().add(offset).cast() }
    }
    fn read<T: Copy>(&self, offset: usize) -> T {
        // SAFETY: `ptr` checked bounds; the region is device MMIO mapped for the kernel's life.
        trips::timed(Trip::MmioRead, || unsafe {
            core::ptr::read_volatile(self.ptr(offset))
        })
    }
    fn write<T: Copy>(&self, offset: usize, value: T) {
        // SAFETY: as in `read`.
        unsafe { core::ptr::write_volatile(self.ptr(offset), value) }
    }
}

/// Rings one queue's notification register. Holds no lock and needs none: the write is a single
/// MMIO store, which is why the driver can ring it after dropping the queue lock.
#[derive(Clone, Copy, Debug)]
pub struct Doorbell {
    register: NonNull<u16>,
    queue: u16,
}

// SAFETY: the register is MMIO that stays mapped; concurrent rings are independent stores.
unsafe impl Send for Doorbell {}
// SAFETY: as above.
unsafe impl Sync for Doorbell {}

impl Doorbell {
    /// Tells the device that `queue` has new available buffers (a VM exit).
    pub fn ring(&self) {
        // SAFETY: `register` is this queue's notify address inside the mapped notify region.
        trips::timed(Trip::Doorbell, || unsafe {
            core::ptr::write_volatile(self.register.as_ptr(), self.queue)
        })
    }
}

/// Reads the device status register; for checking DEVICE_NEEDS_RESET from anywhere.
#[derive(Clone, Copy, Debug)]
pub struct StatusReader {
    common: Region,
}

// SAFETY: a read-only view of an MMIO register that stays mapped.
unsafe impl Send for StatusReader {}
// SAFETY: as above.
unsafe impl Sync for StatusReader {}

impl StatusReader {
    pub fn needs_reset(&self) -> bool {
        DeviceStatus::from_bits_truncate(self.common.read::<u8>(DEVICE_STATUS) as u32)
            .contains(DeviceStatus::DEVICE_NEEDS_RESET)
    }
}

/// Reads (and so clears) the ISR status byte: for the legacy INTx interrupt handler, which must
/// acknowledge the device without taking the transport.
#[derive(Clone, Copy, Debug)]
pub struct IsrReader {
    isr: Region,
}

// SAFETY: a view of one MMIO register that stays mapped; reading it is the device's protocol.
unsafe impl Send for IsrReader {}
// SAFETY: as above.
unsafe impl Sync for IsrReader {}

impl IsrReader {
    /// The interrupt causes (bit 0: a queue, bit 1: configuration); reading deasserts INTx.
    pub fn read_and_clear(&self) -> InterruptStatus {
        InterruptStatus::from_bits_retain(self.isr.read::<u8>(0) as u32)
    }
}

/// A modern virtio PCI device.
#[derive(Debug)]
pub struct VirtioPciTransport {
    device_type: DeviceType,
    common: Region,
    notify: Region,
    notify_off_multiplier: u32,
    isr: Region,
    device_cfg: Option<Region>,
}

// SAFETY: MMIO regions may be accessed from any CPU; `&mut self` methods serialise writers.
unsafe impl Send for VirtioPciTransport {}
// SAFETY: `&self` methods only read registers.
unsafe impl Sync for VirtioPciTransport {}

fn map_structure(device: &PciDevice, cap_offset: u8) -> Result<Region, TransportError> {
    let bar_index = device.address.read8(cap_offset + 4);
    let offset = device.address.read32(cap_offset + 8) as u64;
    let len = device.address.read32(cap_offset + 12) as u64;
    let Some(Some(Bar::Memory { address, size, .. })) = device.bars.get(bar_index as usize) else {
        return Err(TransportError::BadBar(bar_index));
    };
    if offset + len > *size || *address == 0 {
        return Err(TransportError::BadBar(bar_index));
    }
    let vaddr = paging::map_mmio(address + offset, len).map_err(|_| TransportError::Unmappable)?;
    let base = NonNull::new(vaddr as *mut u8).ok_or(TransportError::Unmappable)?;
    Ok(Region {
        base,
        len: len as usize,
    })
}

impl VirtioPciTransport {
    /// Finds and maps the common, notify, ISR and device configuration structures.
    pub fn new(device: &PciDevice, device_type: DeviceType) -> Result<Self, TransportError> {
        let (mut common, mut notify, mut isr, mut device_cfg) = (None, None, None, None);
        let mut notify_off_multiplier = 0;
        for cap in device
            .capabilities()
            .into_iter()
            .filter(|c| c.id == CAP_VENDOR)
        {
            let cfg_type = device.address.read8(cap.offset + 3);
            match cfg_type {
                CFG_COMMON if common.is_none() => common = Some(map_structure(device, cap.offset)?),
                CFG_NOTIFY if notify.is_none() => {
                    notify = Some(map_structure(device, cap.offset)?);
                    notify_off_multiplier = device.address.read32(cap.offset + 16);
                }
                CFG_ISR if isr.is_none() => isr = Some(map_structure(device, cap.offset)?),
                CFG_DEVICE if device_cfg.is_none() => {
                    device_cfg = Some(map_structure(device, cap.offset)?)
                }
                _ => {}
            }
        }
        Ok(VirtioPciTransport {
            device_type,
            common: common.ok_or(TransportError::MissingCapability("common configuration"))?,
            notify: notify.ok_or(TransportError::MissingCapability("notification"))?,
            notify_off_multiplier,
            isr: isr.ok_or(TransportError::MissingCapability("ISR status"))?,
            device_cfg,
        })
    }

    /// Number of virtqueues the device has.
    pub fn num_queues(&self) -> u16 {
        self.common.read(NUM_QUEUES)
    }

    /// Routes configuration-change interrupts to MSI-X `vector`; returns what the device
    /// accepted (`NO_VECTOR` if it refused).
    pub fn set_config_msix_vector(&mut self, vector: u16) -> u16 {
        self.common.write(MSIX_CONFIG, vector);
        self.common.read(MSIX_CONFIG)
    }

    /// Routes `queue`'s interrupts to MSI-X `vector`; returns what the device accepted.
    pub fn set_queue_msix_vector(&mut self, queue: u16, vector: u16) -> u16 {
        self.common.write(QUEUE_SELECT, queue);
        self.common.write(QUEUE_MSIX_VECTOR, vector);
        self.common.read(QUEUE_MSIX_VECTOR)
    }

    /// The doorbell of `queue`, to be rung without holding the transport.
    pub fn doorbell(&mut self, queue: u16) -> Doorbell {
        self.common.write(QUEUE_SELECT, queue);
        let notify_off: u16 = self.common.read(QUEUE_NOTIFY_OFF);
        let offset = notify_off as usize * self.notify_off_multiplier as usize;
        Doorbell {
            register: NonNull::new(self.notify.ptr::<u16>(offset)).expect("mapped"),
            queue,
        }
    }

    /// A reader of the ISR status that can be kept and used without the transport.
    pub fn isr_reader(&self) -> IsrReader {
        IsrReader { isr: self.isr }
    }

    /// A reader of the device status that can be kept and used without the transport.
    pub fn status_reader(&self) -> StatusReader {
        StatusReader {
            common: self.common,
        }
    }

    /// Resets the device and waits until the reset is complete.
    pub fn reset(&mut self) {
        self.set_status(DeviceStatus::empty());
        while self.common.read::<u8>(DEVICE_STATUS) != 0 {
            core::hint::spin_loop();
        }
    }

    /// Resets the device and waits at most `timeout_ns` for the status to read back 0 (the
    /// reset is complete: the device reaches no driver memory any more). Returns whether it did.
    pub fn reset_timeout(&mut self, timeout_ns: u64) -> bool {
        self.set_status(DeviceStatus::empty());
        let deadline = crate::arch::tsc::now_ns().saturating_add(timeout_ns);
        loop {
            if self.common.read::<u8>(DEVICE_STATUS) == 0 {
                return true;
            }
            if crate::arch::tsc::now_ns() >= deadline {
                return false;
            }
            core::hint::spin_loop();
        }
    }

    fn write_u64(&mut self, offset: usize, value: u64) {
        self.common.write(offset, value as u32);
        self.common.write(offset + 4, (value >> 32) as u32);
    }
}

impl Transport for VirtioPciTransport {
    fn device_type(&self) -> DeviceType {
        self.device_type
    }

    fn read_device_features(&mut self) -> u64 {
        self.common.write(DEVICE_FEATURE_SELECT, 0u32);
        let low: u32 = self.common.read(DEVICE_FEATURE);
        self.common.write(DEVICE_FEATURE_SELECT, 1u32);
        let high: u32 = self.common.read(DEVICE_FEATURE);
        (high as u64) << 32 | low as u64
    }

    fn write_driver_features(&mut self, driver_features: u64) {
        self.common.write(DRIVER_FEATURE_SELECT, 0u32);
        self.common.write(DRIVER_FEATURE, driver_features as u32);
        self.common.write(DRIVER_FEATURE_SELECT, 1u32);
        self.common
            .write(DRIVER_FEATURE, (driver_features >> 32) as u32);
    }

    fn max_queue_size(&mut self, queue: u16) -> u32 {
        self.common.write(QUEUE_SELECT, queue);
        self.common.read::<u16>(QUEUE_SIZE) as u32
    }

    fn notify(&mut self, queue: u16) {
        self.doorbell(queue).ring();
    }

    fn get_status(&self) -> DeviceStatus {
        DeviceStatus::from_bits_truncate(self.common.read::<u8>(DEVICE_STATUS) as u32)
    }

    fn set_status(&mut self, status: DeviceStatus) {
        self.common.write(DEVICE_STATUS, status.bits() as u8);
    }

    fn set_guest_page_size(&mut self, _guest_page_size: u32) {}

    fn requires_legacy_layout(&self) -> bool {
        false
    }

    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        descriptors: PhysAddr,
        driver_area: PhysAddr,
        device_area: PhysAddr,
    ) {
        self.common.write(QUEUE_SELECT, queue);
        self.common.write(QUEUE_SIZE, size as u16);
        self.write_u64(QUEUE_DESC, descriptors);
        self.write_u64(QUEUE_DRIVER, driver_area);
        self.write_u64(QUEUE_DEVICE, device_area);
        self.common.write(QUEUE_ENABLE, 1u16);
    }

    fn queue_unset(&mut self, _queue: u16) {
        // Modern PCI has no way to disable one queue short of a reset (RING_RESET aside).
    }

    fn queue_used(&mut self, queue: u16) -> bool {
        self.common.write(QUEUE_SELECT, queue);
        self.common.read::<u16>(QUEUE_ENABLE) == 1
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        InterruptStatus::from_bits_retain(self.isr.read::<u8>(0) as u32)
    }

    fn read_config_generation(&self) -> u32 {
        self.common.read::<u8>(CONFIG_GENERATION) as u32
    }

    fn read_config_space<T: FromBytes + IntoBytes>(&self, offset: usize) -> Result<T, VirtioError> {
        let region = self
            .device_cfg
            .as_ref()
            .ok_or(VirtioError::ConfigSpaceMissing)?;
        if offset + size_of::<T>() > region.len {
            return Err(VirtioError::ConfigSpaceTooSmall);
        }
        let mut value = T::new_zeroed();
        // Byte reads: the device config is little-endian and only byte access needs no alignment.
        for (i, byte) in value.as_mut_bytes().iter_mut().enumerate() {
            *byte = region.read(offset + i);
        }
        Ok(value)
    }

    fn write_config_space<T: IntoBytes + Immutable>(
        &mut self,
        offset: usize,
        value: T,
    ) -> Result<(), VirtioError> {
        let region = self
            .device_cfg
            .as_ref()
            .ok_or(VirtioError::ConfigSpaceMissing)?;
        if offset + size_of::<T>() > region.len {
            return Err(VirtioError::ConfigSpaceTooSmall);
        }
        for (i, byte) in value.as_bytes().iter().enumerate() {
            region.write(offset + i, *byte);
        }
        Ok(())
    }
}
