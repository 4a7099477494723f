//! The virtio-crypto driver in the kernel: probe (`probe`), then bring every device up with its
//! queues, doorbells and MSI-X vectors (`init_all`), and route each queue's interrupt to
//! `CryptoQueue::handle_interrupt`. The request logic itself is in `vcrypt_drivers`
//! (`virtio_crypto::{device, queue}`, `crypto`).

pub mod probe;

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicPtr, Ordering};

use vcrypt_drivers::sync::IrqSpinLock;
use vcrypt_drivers::virtio_crypto::device::CryptoDevice;
use vcrypt_drivers::virtio_crypto::queue::{CryptoQueue, Notify};
use virtio_drivers::transport::{DeviceStatus, InterruptStatus, Transport};

use crate::arch::{apic, idt, percpu};
use crate::mm::dma::KernelHal;
use crate::virtio::pci::{Doorbell, IsrReader, NO_VECTOR};
pub use probe::probe_all;

/// The kernel's device type.
pub type Device = CryptoDevice<KernelHal>;
pub type Queue = CryptoQueue<KernelHal>;

impl Notify for Doorbell {
    fn notify(&self) {
        self.ring();
    }
}

static DEVICES: spin::Once<Vec<&'static Device>> = spin::Once::new();
/// The queue each interrupt vector serves (null: none).
static QUEUE_BY_VECTOR: [AtomicPtr<Queue>; 256] =
    [const { AtomicPtr::new(core::ptr::null_mut()) }; 256];
/// The device whose configuration-change interrupt each vector is.
static DEVICE_BY_CONFIG_VECTOR: [AtomicPtr<Device>; 256] =
    [const { AtomicPtr::new(core::ptr::null_mut()) }; 256];

/// Every device that came up.
pub fn devices() -> &'static [&'static Device] {
    DEVICES.get().map_or(&[], |d| d.as_slice())
}

fn queue_interrupt(frame: &mut idt::TrapFrame) {
    let queue = QUEUE_BY_VECTOR[frame.vector as usize].load(Ordering::Acquire);
    // SAFETY: only `init_device` stores here, pointers to queues of leaked ('static) devices.
    if let Some(queue) = unsafe { queue.as_ref() } {
        queue.handle_interrupt();
    }
    apic::eoi();
}

fn config_interrupt(frame: &mut idt::TrapFrame) {
    let device = DEVICE_BY_CONFIG_VECTOR[frame.vector as usize].load(Ordering::Acquire);
    // SAFETY: as in `queue_interrupt`.
    if let Some(device) = unsafe { device.as_ref() }
        && device.fail_if_needs_reset()
    {
        log::error!(
            "{}: device needs a reset; failed every request in flight",
            device.name
        );
    }
    apic::eoi();
}

/// A device on a legacy INTx line (no usable MSI-X), found by the shared INTx handler.
struct IntxDevice {
    vector: u8,
    device: &'static Device,
    isr: IsrReader,
}

const MAX_INTX_DEVICES: usize = 16;
static INTX_DEVICES: [AtomicPtr<IntxDevice>; MAX_INTX_DEVICES] =
    [const { AtomicPtr::new(core::ptr::null_mut()) }; MAX_INTX_DEVICES];

/// INTx lines are level-triggered and may be shared: every device on this vector reads its ISR
/// (which deasserts its line) and drains its queues if it was the cause.
fn intx_interrupt(frame: &mut idt::TrapFrame) {
    for slot in &INTX_DEVICES {
        // SAFETY: slots hold null or leaked ('static) IntxDevice records, written once.
        let Some(intx) = (unsafe { slot.load(Ordering::Acquire).as_ref() }) else {
            continue;
        };
        if intx.vector != frame.vector as u8 {
            continue;
        }
        let cause = intx.isr.read_and_clear();
        if cause.contains(InterruptStatus::QUEUE_INTERRUPT) {
            intx.device.control.handle_interrupt();
            for q in &intx.device.data {
                q.handle_interrupt();
            }
        }
        if cause.contains(InterruptStatus::DEVICE_CONFIGURATION_INTERRUPT)
            && intx.device.fail_if_needs_reset()
        {
            log::error!(
                "{}: device needs a reset; failed every request in flight",
                intx.device.name
            );
        }
    }
    apic::eoi();
}

/// Routes a device without MSI-X to an INTx vector through the I/O APIC. Returns false when
/// that is impossible (no interrupt line, no I/O APIC).
fn route_intx(device: &'static Device, pci: &crate::pci::PciDevice, isr: IsrReader) -> bool {
    let line = pci.address.read8(0x3c);
    if line == 0 || line == 0xff {
        return false;
    }
    let Some(vector) = idt::alloc_vector() else {
        return false;
    };
    let Some(slot) = INTX_DEVICES
        .iter()
        .find(|s| s.load(Ordering::Acquire).is_null())
    else {
        return false;
    };
    let record = Box::leak(Box::new(IntxDevice {
        vector,
        device,
        isr,
    }));
    slot.store(record, Ordering::Release);
    idt::register_irq(vector, intx_interrupt);
    match crate::arch::ioapic::route_pci_irq(line, vector, percpu::apic_id_of(0)) {
        Ok(gsi) => {
            log::warn!(
                "{}: no usable MSI-X; using INTx (IRQ {line}, GSI {gsi}, vector {vector:#x})",
                device.name
            );
            true
        }
        Err(e) => {
            log::warn!("{}: INTx routing failed: {e}", device.name);
            slot.store(core::ptr::null_mut(), Ordering::Release);
            false
        }
    }
}

/// Devices with neither MSI-X nor INTx: drained from the boot CPU's timer tick.
static POLLED: IrqSpinLock<Vec<&'static Device>> = IrqSpinLock::new("crypto-polled", Vec::new());

/// Drains the queues of devices that have no interrupts (called from the timer tick).
pub fn poll_devices() {
    let polled = POLLED.lock();
    for device in polled.iter() {
        device.control.handle_interrupt();
        for q in &device.data {
            q.handle_interrupt();
        }
    }
}

/// Brings up every probed device: queues, MSI-X routing, DRIVER_OK. Returns how many are up.
pub fn init_all() -> usize {
    let mut up = Vec::new();
    for (index, probed) in probe::probed().iter().enumerate() {
        let mut probed = probed.lock();
        let name = format!("{}", probed.pci.address);
        match init_device(index, &mut probed) {
            Ok(device) => up.push(device),
            Err(e) => {
                probed.transport.set_status(DeviceStatus::FAILED);
                crate::println!("virtio-crypto {name}: set-up failed: {e}");
            }
        }
    }
    DEVICES.call_once(|| up).len()
}

fn init_device(index: usize, probed: &mut probe::ProbedDevice) -> Result<&'static Device, String> {
    let cpus = percpu::cpu_count();
    let queues = probed.queue_sizes.len() as u16;
    let data_queues = probed.config.max_dataqueues.min(queues as u32 - 1) as u16;
    // MSI-X entry 0: configuration changes; entry 1 + q: queue q.
    let vectors: Option<Vec<u8>> = match &probed.msix {
        Some(msix) if msix.table_size() > queues => {
            (0..=queues).map(|_| idt::alloc_vector()).collect()
        }
        _ => None,
    };
    let transport = &mut probed.transport;
    let queue_cpu = |q: u16| {
        if q < data_queues {
            (index + q as usize) % cpus
        } else {
            index % cpus
        }
    };
    let mut built: Vec<Queue> = Vec::new();
    for q in 0..queues {
        if let (Some(vectors), Some(msix)) = (&vectors, &probed.msix) {
            let entry = 1 + q;
            let accepted = transport.set_queue_msix_vector(q, entry);
            if accepted == NO_VECTOR {
                return Err(format!("queue {q} refused MSI-X entry {entry}"));
            }
            msix.set_entry(
                entry,
                percpu::apic_id_of(queue_cpu(q)),
                vectors[entry as usize],
            )
            .map_err(|e| format!("MSI-X entry {entry}: {e}"))?;
        }
        let doorbell = transport.doorbell(q);
        built.push(
            CryptoQueue::new(transport, q, Box::new(doorbell))
                .map_err(|e| format!("queue {q}: {e}"))?,
        );
    }
    if let (Some(vectors), Some(msix)) = (&vectors, &probed.msix) {
        if transport.set_config_msix_vector(0) == NO_VECTOR {
            return Err(String::from(
                "the device refused the configuration MSI-X entry",
            ));
        }
        msix.set_entry(0, percpu::apic_id_of(0), vectors[0])
            .map_err(|e| format!("MSI-X entry 0: {e}"))?;
        msix.enable(&probed.pci);
    }
    let control = built.pop().expect("at least one queue");
    built.truncate(data_queues as usize);
    transport.finish_init();
    let status = transport.status_reader();
    let device = CryptoDevice::new(
        format!("{}", probed.pci.address),
        probed.config,
        control,
        built,
        Box::new(move || status.needs_reset()),
    )
    .map_err(|e| format!("{e}"))?;
    let device: &'static Device = Box::leak(Box::new(device));
    if let Some(vectors) = &vectors {
        for queue in device.data.iter().chain(core::iter::once(&device.control)) {
            let vector = vectors[1 + queue.index() as usize];
            QUEUE_BY_VECTOR[vector as usize]
                .store(queue as *const Queue as *mut Queue, Ordering::Release);
            idt::register_irq(vector, queue_interrupt);
        }
        DEVICE_BY_CONFIG_VECTOR[vectors[0] as usize]
            .store(device as *const Device as *mut Device, Ordering::Release);
        idt::register_irq(vectors[0], config_interrupt);
    } else if !route_intx(device, &probed.pci, probed.transport.isr_reader()) {
        log::warn!(
            "{}: no MSI-X and no INTx; queues are polled from the timer tick",
            device.name
        );
        POLLED.lock().push(device);
    }
    Ok(device)
}

/// Applies the command-line switches to every device: `ctrl=poll|sleep`, `kick=locked|unlocked`,
/// `unadvertised=try|refuse`.
pub fn apply_switches(cmdline: &crate::cmdline::Cmdline) -> Result<(), String> {
    use vcrypt_drivers::virtio_crypto::device::CtrlMode;
    use vcrypt_drivers::virtio_crypto::queue::KickMode;
    let ctrl = match cmdline.switch("ctrl") {
        None | Some("sleep") => CtrlMode::Sleep,
        Some("poll") => CtrlMode::Poll,
        Some(other) => return Err(format!("ctrl={other}: expected ctrl=sleep or ctrl=poll")),
    };
    let kick = match cmdline.switch("kick") {
        None | Some("unlocked") => KickMode::Unlocked,
        Some("locked") => KickMode::Locked,
        Some(other) => {
            return Err(format!(
                "kick={other}: expected kick=unlocked or kick=locked"
            ));
        }
    };
    let unadvertised = match cmdline.switch("unadvertised") {
        None | Some("refuse") => false,
        Some("try") => true,
        Some(other) => {
            return Err(format!(
                "unadvertised={other}: expected unadvertised=try or unadvertised=refuse"
            ));
        }
    };
    for device in devices() {
        device.set_ctrl_mode(ctrl);
        device.set_kick_mode(kick);
        device.set_allow_unadvertised(unadvertised);
    }
    if ctrl != CtrlMode::Sleep || kick != KickMode::Unlocked || unadvertised {
        crate::println!(
            "driver switches: ctrl={ctrl:?} kick={kick:?} unadvertised={}",
            if unadvertised { "try" } else { "refuse" }
        );
    }
    Ok(())
}
