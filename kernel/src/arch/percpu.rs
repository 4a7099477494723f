//! Per-CPU data, reached in O(1) through the GS base: IA32_GS_BASE of each CPU points at its own
//! [`PerCpu`] slot, whose first word points at itself (`mov rax, gs:[0]`). The boot CPU is index 0
//! and sets its GS base first thing in `kernel_main`; application processors set theirs first
//! thing in their Rust entry (`smp`). Nothing in the kernel loads the GS selector or uses
//! `swapgs`, so the base stays put.

use core::arch::asm;
use core::mem::offset_of;
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use x86_64::registers::model_specific::Msr;

/// Most CPUs the kernel brings up; the MADT may list more, the rest stay halted.
pub const MAX_CPUS: usize = 8;

const IA32_GS_BASE: u32 = 0xc000_0101;

/// One CPU's slot. Cache-line aligned so that CPUs do not share lines.
#[repr(C, align(64))]
pub struct PerCpu {
    /// The address of this slot (`gs:[0]`).
    self_ptr: AtomicUsize,
    /// This CPU's index, 0 = the boot CPU.
    index: AtomicUsize,
    /// This CPU's local APIC id.
    apic_id: AtomicU32,
    /// Timer interrupts this CPU has taken.
    ticks: AtomicU64,
}

impl PerCpu {
    const fn new() -> Self {
        PerCpu {
            self_ptr: AtomicUsize::new(0),
            index: AtomicUsize::new(0),
            apic_id: AtomicU32::new(0),
            ticks: AtomicU64::new(0),
        }
    }

    /// Timer interrupts this CPU has taken.
    pub fn ticks(&self) -> &AtomicU64 {
        &self.ticks
    }
}

static CPUS: [PerCpu; MAX_CPUS] = [const { PerCpu::new() }; MAX_CPUS];
/// CPUs online; the boot CPU counts from the start.
static ONLINE: AtomicUsize = AtomicUsize::new(1);

/// Points this CPU's GS base at slot `index`. Call once per CPU, before anything asks for
/// [`cpu_index`] or [`this`] there, with interrupts disabled.
pub fn init_this_cpu(index: usize) {
    assert!(index < MAX_CPUS, "CPU index {index} out of range");
    let slot = &CPUS[index];
    slot.self_ptr
        .store(slot as *const PerCpu as usize, Ordering::Relaxed);
    slot.index.store(index, Ordering::Relaxed);
    // SAFETY: IA32_GS_BASE exists on every x86_64 CPU; the value is the address of a 'static
    // slot, canonical (identity-mapped kernel image). Nothing else uses the GS base.
    unsafe { Msr::new(IA32_GS_BASE).write(slot as *const PerCpu as u64) };
}

/// Records this CPU's local APIC id (after its APIC is enabled).
pub fn set_apic_id(apic_id: u32) {
    this().apic_id.store(apic_id, Ordering::Release);
}

/// This CPU's slot, through `gs:[0]`.
pub fn this() -> &'static PerCpu {
    let ptr: usize;
    // SAFETY: after `init_this_cpu`, gs:[0] holds the address of this CPU's 'static slot.
    unsafe {
        asm!("mov {}, gs:[0]", out(reg) ptr, options(nostack, readonly, preserves_flags));
        &*(ptr as *const PerCpu)
    }
}

/// The slot of CPU `cpu`.
pub fn get(cpu: usize) -> &'static PerCpu {
    &CPUS[cpu]
}

/// This CPU's index (0 = the boot CPU), one load through GS.
pub fn cpu_index() -> usize {
    let index: usize;
    // SAFETY: after `init_this_cpu`, the GS base points at this CPU's slot, which holds its
    // index at this offset.
    unsafe {
        asm!(
            "mov {}, gs:[{offset}]",
            out(reg) index,
            offset = const offset_of!(PerCpu, index),
            options(nostack, readonly, preserves_flags)
        )
    };
    index
}

/// CPUs online (1 until the application processors are started).
pub fn cpu_count() -> usize {
    ONLINE.load(Ordering::Acquire)
}

/// Counts one more CPU online; returns the new count. Called by `smp` on the boot CPU only,
/// after the new CPU checked in with index `cpu_count()` (so indices stay dense).
pub fn mark_online() -> usize {
    ONLINE.fetch_add(1, Ordering::AcqRel) + 1
}

/// Local APIC id of CPU `cpu`.
pub fn apic_id_of(cpu: usize) -> u32 {
    CPUS[cpu].apic_id.load(Ordering::Acquire)
}
