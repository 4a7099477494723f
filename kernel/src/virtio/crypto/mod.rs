//! The virtio-crypto driver in the kernel: probe (`probe`), then bring every device up with its
//! queues, doorbells and interrupt lines (`init_all`): per-queue MSI-X vectors routed by the
//! device's [`QueueRouting`], else one shared MSI-X vector, else INTx, else the timer tick; each
//! line's handler calls `CryptoQueue::handle_interrupt`. The request logic itself is in `vcrypt_drivers`
//! (`virtio_crypto::{device, queue}`, `crypto`).

pub mod probe;

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use vcrypt_drivers::sync::{SpinLock, WaitQueue};
use vcrypt_drivers::virtio_crypto::device::Recover;

use vcrypt_drivers::service::CryptoService;
use vcrypt_drivers::switches::Switches;
use vcrypt_drivers::virtio_crypto::device::CryptoDevice;
use vcrypt_drivers::virtio_crypto::queue::{CryptoQueue, Notify};
use vcrypt_drivers::virtio_crypto::routing::QueueRouting;
use virtio_drivers::transport::{DeviceStatus, InterruptStatus, Transport};

use crate::arch::irq::IrqLine;
use crate::arch::percpu;
use crate::mm::dma::KernelHal;
use crate::virtio::pci::{Doorbell, NO_VECTOR, VirtioPciTransport};
pub use probe::probe_all;

/// The kernel's device type.
pub type Device = CryptoDevice<KernelHal>;
pub type Queue = CryptoQueue<KernelHal>;
/// The kernel's crypto service over every device.
pub type Service = CryptoService<KernelHal>;

impl Notify for Doorbell {
    fn notify(&self) {
        self.ring();
    }
}

/// Every device that came up: set once by `init_all`, the one place devices are found.
static REGISTRY: spin::Once<Registry> = spin::Once::new();

struct Registry {
    /// Each device with its PCI function, interrupt lines and recovery task.
    functions: Vec<&'static CryptoFunction>,
    /// The same devices, for callers that need only the driver's side.
    devices: Vec<&'static Device>,
}
static SERVICE: spin::Once<Service> = spin::Once::new();
/// Data queues numbered across devices so far (the routing's global queue numbers).
static NEXT_GLOBAL_QUEUE: AtomicUsize = AtomicUsize::new(0);

/// How a device's interrupts reach the CPUs, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterruptMode {
    /// MSI-X: one vector for configuration changes and one per queue, each routed to the CPU
    /// that submits to the queue.
    PerQueueVectors,
    /// MSI-X with fewer vectors than queues + 1: one for configuration changes, one shared by
    /// every queue.
    SharedVector,
    /// No usable MSI-X: the legacy INTx pin through the I/O APIC (possibly shared with other
    /// devices), enabled in the command register.
    Intx,
    /// Neither: the queues are drained from the boot CPU's timer tick.
    Polled,
}

/// A device that came up and the interrupt lines it owns (they live as long as it does).
pub struct CryptoFunction {
    pub device: &'static Device,
    pub mode: InterruptMode,
    pub pci: crate::pci::PciDevice,
    lines: Vec<Arc<IrqLine>>,
    vectors: Vectors,
    /// What the probe found: the transport (for recovery) and the negotiated features.
    probed: &'static SpinLock<probe::ProbedDevice>,
    pub recovery: Recovery,
}

impl CryptoFunction {
    /// The vectors of the device's lines (configuration first where it has one).
    pub fn vectors(&self) -> Vec<u8> {
        self.lines.iter().map(|l| l.vector()).collect()
    }

    /// Whether the device's DMA is confined by the IOMMU: VIRTIO_F_ACCESS_PLATFORM negotiated
    /// and translation on.
    pub fn dma_confined(&self) -> bool {
        crate::mm::iommu::enabled()
            && self.probed.lock().features & probe::FEATURE_ACCESS_PLATFORM != 0
    }

    /// Interrupts taken on the device's lines (on a shared INTx line, also other devices').
    pub fn interrupts_taken(&self) -> u64 {
        self.lines.iter().map(|l| l.interrupts_taken()).sum()
    }
}

/// A device's view of the IOMMU for its drains (`vcrypt_drivers::virtio_crypto::queue::DmaGuard`).
struct IommuGuard {
    iommu: &'static crate::mm::iommu::Iommu,
    /// The device's requester id.
    source: u16,
}

impl vcrypt_drivers::virtio_crypto::queue::DmaGuard for IommuGuard {
    fn popping(&self) {
        self.iommu.defer_invalidations();
    }

    fn popped(&self, popped: bool) -> Option<vcrypt_drivers::error::Error> {
        self.iommu.finish_deferred();
        if !popped {
            return None;
        }
        self.iommu
            .take_fault(self.source)
            .map(|f| vcrypt_drivers::error::Error::DmaFault {
                address: f.address,
                write: f.write,
                reason: f.reason,
            })
    }
}

/// Every device that came up.
pub fn devices() -> &'static [&'static Device] {
    REGISTRY.get().map_or(&[], |r| r.devices.as_slice())
}

/// Every device that came up, with its interrupt set-up.
pub fn functions() -> &'static [&'static CryptoFunction] {
    REGISTRY.get().map_or(&[], |r| r.functions.as_slice())
}

/// The configuration interrupt: one status read (not one per request); if the device flags
/// DEVICE_NEEDS_RESET, submissions stop and the device's recovery task is woken.
fn report_needs_reset(device: &Device) {
    device.check_needs_reset();
}

/// Which MSI-X entry each queue and the configuration interrupt use, kept so that recovery can
/// write the device's vector registers again (a reset sets them to NO_VECTOR); the MSI-X table
/// itself and the interrupt lines are the PCI function's and survive a device reset.
pub struct Vectors {
    /// (queue index, MSI-X entry) for every queue, `None` without MSI-X.
    queue_entry: Vec<(u16, Option<u16>)>,
    config_entry: Option<u16>,
    /// The features negotiated at probe: a reset device must take exactly these again.
    features: u64,
}

impl Vectors {
    fn program_queue(&self, transport: &mut VirtioPciTransport, q: u16) -> Result<(), String> {
        let entry = self
            .queue_entry
            .iter()
            .find(|(i, _)| *i == q)
            .and_then(|(_, e)| *e);
        if let Some(entry) = entry
            && transport.set_queue_msix_vector(q, entry) == NO_VECTOR
        {
            return Err(format!("queue {q} refused MSI-X entry {entry}"));
        }
        Ok(())
    }

    fn program_config(&self, transport: &mut VirtioPciTransport) -> Result<(), String> {
        if let Some(entry) = self.config_entry
            && transport.set_config_msix_vector(entry) == NO_VECTOR
        {
            return Err(String::from(
                "the device refused the configuration MSI-X entry",
            ));
        }
        Ok(())
    }
}

fn recovery_error(what: &'static str) -> vcrypt_drivers::error::Error {
    vcrypt_drivers::error::Error::NotSupported { what }
}

/// The kernel's recovery steps for one device (`CryptoDevice::recover` runs them in order).
impl Recover<VirtioPciTransport> for &Vectors {
    fn reset_and_wait(
        &mut self,
        transport: &mut VirtioPciTransport,
    ) -> Result<(), vcrypt_drivers::error::Error> {
        if transport.reset_timeout(1_000_000_000) {
            Ok(())
        } else {
            Err(recovery_error(
                "a device reset that completes (status read back 0)",
            ))
        }
    }

    fn renegotiate(
        &mut self,
        transport: &mut VirtioPciTransport,
    ) -> Result<(), vcrypt_drivers::error::Error> {
        match probe::negotiate(transport, self.features) {
            Ok(features) if features == self.features => Ok(()),
            _ => Err(recovery_error("the features negotiated before the reset")),
        }
    }

    fn route_queue(
        &mut self,
        transport: &mut VirtioPciTransport,
        index: u16,
    ) -> Result<(), vcrypt_drivers::error::Error> {
        self.program_queue(transport, index)
            .map_err(|_| recovery_error("the queue's MSI-X entry after a reset"))
    }

    fn driver_ok(
        &mut self,
        transport: &mut VirtioPciTransport,
    ) -> Result<(), vcrypt_drivers::error::Error> {
        self.program_config(transport)
            .map_err(|_| recovery_error("the configuration MSI-X entry after a reset"))?;
        transport.finish_init();
        Ok(())
    }
}

/// Starts the device's recovery task (on the boot CPU) and makes the device's lifecycle wake it.
/// The hook runs in any context (configuration interrupt, a timed-out waiter, a drain that saw a
/// bad used id): it only sets a flag and wakes the task.
fn start_recovery_task(function: &'static CryptoFunction) -> Result<(), String> {
    let device = function.device;
    let recovery = &function.recovery;
    device.lifecycle().set_recovery_hook(Box::new(move || {
        recovery.pending.store(true, Ordering::Release);
        recovery.wake.wake_all();
    }));
    let name = format!("crypto-recovery {}", device.name);
    let handle = crate::sched::spawn(&name, Some(0), move || {
        loop {
            recovery
                .wake
                .wait_until(|| recovery.pending.swap(false, Ordering::AcqRel).then_some(()));
            let mut probed = function.probed.lock();
            match device.recover(&mut probed.transport, &mut &function.vectors) {
                Ok(generation) => {
                    recovery.done.fetch_add(1, Ordering::Release);
                    log::info!("{}: reset; generation {generation}", device.name);
                }
                Err(e) => {
                    recovery.failed.fetch_add(1, Ordering::Release);
                    crate::println!("virtio-crypto {}: recovery failed: {e}", device.name);
                }
            }
        }
    })
    .map_err(|e| format!("recovery task: {e:?}"))?;
    // Let it reach its wait (its first wait allocates a waiter) before anything else runs, so
    // that the boot's later work, and the tests, start from a quiet heap and scheduler.
    let start = crate::arch::tsc::now_ns();
    while handle.task().state() != crate::sched::TaskState::Blocked {
        if crate::arch::tsc::now_ns() - start > 1_000_000_000 {
            return Err(String::from("the recovery task did not start within 1 s"));
        }
        crate::sched::yield_now();
    }
    drop(handle);
    Ok(())
}

/// A device's recovery task's inbox and counters.
#[derive(Default)]
pub struct Recovery {
    pending: AtomicBool,
    wake: WaitQueue,
    /// Recoveries completed and failed.
    pub done: AtomicU64,
    pub failed: AtomicU64,
}

fn drain_all_queues(device: &Device) {
    device.control.handle_interrupt();
    for queue in &device.data {
        queue.handle_interrupt();
    }
}

/// Brings up every probed device: queues, interrupt lines, DRIVER_OK. Returns how many are up.
pub fn init_all() -> usize {
    let mut up = Vec::new();
    for probed in probe::probed() {
        let mut locked = probed.lock();
        let name = format!("{}", locked.pci.address);
        match init_device(probed, &mut locked) {
            Ok(function) => {
                drop(locked);
                if let Err(e) = start_recovery_task(function) {
                    crate::println!("virtio-crypto {name}: {e}; the device cannot be recovered");
                }
                up.push(function)
            }
            Err(e) => {
                locked.transport.set_status(DeviceStatus::FAILED);
                crate::println!("virtio-crypto {name}: set-up failed: {e}");
            }
        }
    }
    let registry = REGISTRY.call_once(|| Registry {
        devices: up.iter().map(|f| f.device).collect(),
        functions: up,
    });
    if let Ok(service) = CryptoService::new(registry.devices.clone()) {
        SERVICE.call_once(|| service);
    }
    registry.functions.len()
}

/// The crypto service over every device that came up (`None` without devices).
pub fn service() -> Option<&'static Service> {
    SERVICE.get()
}

fn alloc_line() -> Result<Arc<IrqLine>, String> {
    IrqLine::alloc()
        .map(Arc::new)
        .map_err(|e| format!("interrupt line: {e}"))
}

/// Brings one probed device up, as Linux's `virtcrypto_probe` does in steps: choose how its
/// interrupts reach the CPUs, build its queues with their MSI-X entries, assemble the device,
/// then wire the handlers and let the interrupts flow.
fn init_device(
    probed: &'static SpinLock<probe::ProbedDevice>,
    locked: &mut probe::ProbedDevice,
) -> Result<&'static CryptoFunction, String> {
    let queues = locked.queue_sizes.len();
    if queues < 2 {
        return Err(format!(
            "the device has {queues} virtqueue(s); it needs at least a data and a control queue"
        ));
    }
    // The control queue is number max_dataqueues; a device with fewer queues than it claims
    // gets the ones it has.
    let data_queues = (locked.config.max_dataqueues as usize).clamp(1, queues - 1);
    let (mode, routing) = choose_interrupts(locked, data_queues);
    let mut built = build_queues(locked, mode, &routing, data_queues)?;
    let control = built
        .queues
        .pop()
        .expect("the control queue was built last");
    let status = locked.transport.status_reader();
    let device = CryptoDevice::new(
        format!("{}", locked.pci.address),
        locked.config,
        control,
        core::mem::take(&mut built.queues),
        Box::new(move || status.needs_reset()),
    )
    .map_err(|e| format!("{e}"))?;
    let device: &'static Device = Box::leak(Box::new(device));
    device.set_routing(routing);
    if locked.features & probe::FEATURE_ACCESS_PLATFORM != 0
        && let Some(iommu) = crate::mm::iommu::get()
    {
        device.set_dma_fault_check(Arc::new(IommuGuard {
            iommu,
            source: locked.pci.address.source_id(),
        }));
    }
    let (mode, lines) = wire_handlers(device, locked, mode, built.lines, built.queue_lines);
    log::info!(
        "{}: interrupts {:?}, vectors {:x?}",
        device.name,
        mode,
        lines.iter().map(|l| l.vector()).collect::<Vec<_>>()
    );
    Ok(Box::leak(Box::new(CryptoFunction {
        device,
        mode,
        pci: locked.pci.clone(),
        lines,
        vectors: built.vectors,
        probed,
        recovery: Recovery::default(),
    })))
}

/// How the device's interrupts reach the CPUs, best first (per-queue MSI-X vectors, one shared
/// vector, INTx), and which CPU each queue's interrupt goes to.
fn choose_interrupts(
    probed: &probe::ProbedDevice,
    data_queues: usize,
) -> (InterruptMode, QueueRouting) {
    let cpus = percpu::cpu_count();
    let table_size = probed.msix.as_ref().map_or(0, |m| m.table_size() as usize);
    let mode = if table_size >= data_queues + 2 {
        InterruptMode::PerQueueVectors
    } else if table_size >= 2 {
        InterruptMode::SharedVector
    } else {
        InterruptMode::Intx
    };
    let first_global_queue = NEXT_GLOBAL_QUEUE.fetch_add(data_queues, Ordering::Relaxed);
    let routing = match mode {
        InterruptMode::PerQueueVectors => QueueRouting::new(first_global_queue, data_queues, cpus),
        // Everything on one line: to the CPU the device's first queue would have had.
        InterruptMode::SharedVector => {
            QueueRouting::all_on(first_global_queue % cpus, data_queues, cpus)
        }
        // The pin may be shared with devices routed before: it goes to the boot CPU.
        InterruptMode::Intx | InterruptMode::Polled => QueueRouting::all_on(0, data_queues, cpus),
    };
    (mode, routing)
}

/// A device's queues, built, and the interrupt lines allocated for them.
struct BuiltQueues {
    /// Data queues, then the control queue.
    queues: Vec<Queue>,
    /// Configuration line first (MSI-X), then the shared queue line or each queue's.
    lines: Vec<Arc<IrqLine>>,
    /// Each queue's own line (per-queue vectors only), in the order of `queues`.
    queue_lines: Vec<Option<Arc<IrqLine>>>,
    vectors: Vectors,
}

/// Sets up every queue on the transport (between FEATURES_OK and DRIVER_OK) with its MSI-X entry
/// and doorbell. MSI-X entries: 0 = configuration; per queue: 1 + queue index (control = 1 +
/// data_queues); shared: 1 for every queue.
fn build_queues(
    probed: &mut probe::ProbedDevice,
    mode: InterruptMode,
    routing: &QueueRouting,
    data_queues: usize,
) -> Result<BuiltQueues, String> {
    let control_index = data_queues as u16;
    let mut lines = Vec::new();
    let transport = &mut probed.transport;
    let mut queues: Vec<Queue> = Vec::new();
    let mut queue_lines: Vec<Option<Arc<IrqLine>>> = Vec::new();
    if mode != InterruptMode::Intx {
        lines.push(alloc_line()?);
    }
    if mode == InterruptMode::SharedVector {
        lines.push(alloc_line()?);
    }
    let msix = probed.msix.as_ref();
    let mut vectors = Vectors {
        queue_entry: Vec::new(),
        config_entry: match (mode, msix) {
            (InterruptMode::PerQueueVectors | InterruptMode::SharedVector, Some(_)) => Some(0),
            _ => None,
        },
        features: probed.features,
    };
    for q in (0..control_index).chain(core::iter::once(control_index)) {
        let (entry, cpu, line) = match mode {
            InterruptMode::PerQueueVectors => {
                let cpu = if q == control_index {
                    routing.control_cpu()
                } else {
                    routing.irq_cpu(q as usize)
                };
                let line = alloc_line()?;
                lines.push(line.clone());
                (Some(1 + q), cpu, Some(line))
            }
            InterruptMode::SharedVector => (Some(1), routing.control_cpu(), None),
            InterruptMode::Intx | InterruptMode::Polled => (None, 0, None),
        };
        vectors
            .queue_entry
            .push((q, entry.filter(|_| msix.is_some())));
        vectors.program_queue(transport, q)?;
        if let (Some(entry), Some(msix)) = (entry, msix) {
            let vector = line.as_ref().unwrap_or(&lines[1]).vector();
            msix.set_entry(entry, percpu::apic_id_of(cpu), vector)
                .map_err(|e| format!("MSI-X entry {entry}: {e}"))?;
        }
        queue_lines.push(line);
        let doorbell = transport.doorbell(q);
        queues.push(
            CryptoQueue::with_event_idx(
                transport,
                q,
                Box::new(doorbell),
                probed.features & probe::FEATURE_EVENT_IDX != 0,
            )
            .map_err(|e| format!("queue {q}: {e}"))?,
        );
    }
    vectors.program_config(transport)?;
    if let (InterruptMode::PerQueueVectors | InterruptMode::SharedVector, Some(msix)) = (mode, msix)
    {
        msix.set_entry(
            0,
            percpu::apic_id_of(routing.control_cpu()),
            lines[0].vector(),
        )
        .map_err(|e| format!("MSI-X entry 0: {e}"))?;
    }
    Ok(BuiltQueues {
        queues,
        lines,
        queue_lines,
        vectors,
    })
}

/// Registers each line's handler, now that they have a device to look at (INTx: routes the pin;
/// without it the queues are drained from the timer tick), enables MSI-X or INTx and sets
/// DRIVER_OK. Returns the mode in effect and every line of the device.
fn wire_handlers(
    device: &'static Device,
    probed: &mut probe::ProbedDevice,
    mut mode: InterruptMode,
    mut lines: Vec<Arc<IrqLine>>,
    mut queue_lines: Vec<Option<Arc<IrqLine>>>,
) -> (InterruptMode, Vec<Arc<IrqLine>>) {
    let isr = probed.transport.isr_reader();
    match mode {
        InterruptMode::PerQueueVectors => {
            lines[0].on_active(move || report_needs_reset(device));
            let control_line = queue_lines.pop().flatten().expect("a line per queue");
            control_line.on_active(move || {
                device.control.handle_interrupt();
            });
            for (queue, line) in device.data.iter().zip(queue_lines) {
                line.expect("a line per queue").on_active(move || {
                    queue.handle_interrupt();
                });
            }
        }
        InterruptMode::SharedVector => {
            lines[0].on_active(move || report_needs_reset(device));
            lines[1].on_active(move || drain_all_queues(device));
        }
        InterruptMode::Intx | InterruptMode::Polled => {
            match route_intx(device, &probed.pci) {
                Ok(line) => {
                    line.on_active(move || {
                        // Reading the ISR deasserts this device's line; other devices on the
                        // same pin answer their own ISR in their own handlers.
                        let cause = isr.read_and_clear();
                        if cause.contains(InterruptStatus::QUEUE_INTERRUPT) {
                            drain_all_queues(device);
                        }
                        if cause.contains(InterruptStatus::DEVICE_CONFIGURATION_INTERRUPT) {
                            report_needs_reset(device);
                        }
                    });
                    lines.push(line);
                }
                Err(e) => {
                    log::warn!(
                        "{}: no MSI-X and no INTx ({e}); queues are polled from the timer tick",
                        device.name
                    );
                    mode = InterruptMode::Polled;
                    crate::arch::timer_line().on_active(move || {
                        if percpu::cpu_index() == 0 {
                            drain_all_queues(device);
                        }
                    });
                }
            }
        }
    }
    match (mode, probed.msix.as_ref()) {
        (InterruptMode::PerQueueVectors | InterruptMode::SharedVector, Some(msix)) => {
            msix.enable(&probed.pci);
            probed.pci.set_intx_enabled(false);
        }
        (InterruptMode::Intx, _) => probed.pci.set_intx_enabled(true),
        _ => {}
    }
    probed.transport.finish_init();
    (mode, lines)
}

/// The (possibly shared) INTx line of a device without usable MSI-X.
fn route_intx(device: &Device, pci: &crate::pci::PciDevice) -> Result<Arc<IrqLine>, String> {
    let irq = pci.address.read8(0x3c);
    if irq == 0 || irq == 0xff {
        return Err(String::from("no interrupt line"));
    }
    let (line, gsi) = crate::arch::ioapic::pci_irq_line(irq, percpu::apic_id_of(0))
        .map_err(|e| format!("INTx routing: {e}"))?;
    log::warn!(
        "{}: no usable MSI-X; using INTx (IRQ {irq}, GSI {gsi}, vector {:#x})",
        device.name,
        line.vector()
    );
    Ok(line)
}

/// Sets the driver's switches (parsed once from the command line) on every device and on the
/// service; when any differs from the design's default, prints them all as the command line
/// spells them.
pub fn apply_switches(switches: &Switches) {
    for device in devices() {
        device.apply_switches(switches.device);
    }
    if let Some(service) = service() {
        service.set_queue_mode(switches.queues);
    }
    if switches.changed() {
        crate::println!("driver switches: {}", switches.words().join(" "));
    }
}
