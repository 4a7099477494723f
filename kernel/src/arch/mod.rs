//! The hardware edge for x86_64: boot, descriptor tables, interrupts, APIC, time, port I/O.

pub mod acpi;
pub mod apic;
pub mod boot;
pub mod gdt;
pub mod idt;
pub mod ioapic;
pub mod irq;
pub mod percpu;
pub mod port;
pub mod pvh;
pub mod qemu;
pub mod smp;
pub mod trips;
pub mod tsc;

use core::sync::atomic::Ordering;

/// Timer ticks taken by CPU `cpu` (each CPU counts its own in its per-CPU slot).
pub fn ticks(cpu: usize) -> u64 {
    percpu::get(cpu).ticks().load(Ordering::Relaxed)
}

/// Timer ticks taken by the current CPU.
pub fn this_cpu_ticks() -> u64 {
    percpu::this().ticks().load(Ordering::Relaxed)
}

/// Whether local interrupts are enabled.
pub fn irqs_enabled() -> bool {
    x86_64::instructions::interrupts::are_enabled()
}

/// Disables local interrupts; returns whether they were enabled.
pub fn irq_save() -> bool {
    let was = irqs_enabled();
    x86_64::instructions::interrupts::disable();
    was
}

/// Re-enables local interrupts if they were enabled.
pub fn irq_restore(was_enabled: bool) {
    if was_enabled {
        x86_64::instructions::interrupts::enable();
    }
}

/// Enables interrupts.
pub fn enable_irqs() {
    x86_64::instructions::interrupts::enable();
}

/// Halts until the next interrupt, atomically enabling interrupts first (`sti; hlt`), so a
/// wake-up that arrives between the decision to sleep and the `hlt` is not lost.
pub fn enable_irqs_and_halt() {
    x86_64::instructions::interrupts::enable_and_hlt();
}

/// Stops this CPU for good.
pub fn halt_forever() -> ! {
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}

static TIMER_LINE: spin::Once<irq::IrqLine> = spin::Once::new();
static SPURIOUS_LINE: spin::Once<irq::IrqLine> = spin::Once::new();

/// The local APIC timer's line (every CPU's timer uses it): upper layers add their tick work
/// with `timer_line().on_active(..)`.
pub fn timer_line() -> &'static irq::IrqLine {
    TIMER_LINE
        .get()
        .expect("arch::init_boot_cpu claims the timer line")
}

/// Loads descriptor tables and enables the local APIC on the boot CPU; calibrates time and starts
/// the timer. Interrupts stay disabled. The boot CPU's GS base (`percpu::init_this_cpu(0)`) is
/// set before this, at the start of `kernel_main`.
pub fn init_boot_cpu() -> (u64, u32) {
    gdt::load_for_this_cpu();
    idt::load();
    apic::init_this_cpu();
    percpu::set_apic_id(apic::id());
    let timer = irq::IrqLine::claim(irq::vectors::TIMER).expect("the timer vector is free at boot");
    timer.on_active(|| {
        percpu::this().ticks().fetch_add(1, Ordering::Relaxed);
    });
    TIMER_LINE.call_once(|| timer);
    // Owned so that nothing else takes it; it has no handlers and gets no EOI.
    SPURIOUS_LINE.call_once(|| {
        irq::IrqLine::claim(irq::vectors::SPURIOUS).expect("the spurious vector is free at boot")
    });
    let tsc_hz = tsc::calibrate();
    let per_tick = apic::calibrate_timer();
    apic::start_timer();
    (tsc_hz, per_tick)
}
