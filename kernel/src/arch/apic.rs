//! The local APIC (xAPIC, MMIO at the address in IA32_APIC_BASE): enable, EOI, IPIs, and the
//! periodic timer that drives ticks and preemption.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use x86_64::registers::model_specific::Msr;

use super::port::outb;
use super::tsc;

const IA32_APIC_BASE: u32 = 0x1b;
const APIC_BASE_ENABLE: u64 = 1 << 11;

const REG_ID: usize = 0x20;
const REG_TPR: usize = 0x80;
const REG_EOI: usize = 0xb0;
const REG_SVR: usize = 0xf0;
const REG_ICR_LOW: usize = 0x300;
const REG_ICR_HIGH: usize = 0x310;
const REG_LVT_TIMER: usize = 0x320;
const REG_LVT_LINT0: usize = 0x350;
const REG_LVT_LINT1: usize = 0x360;
const REG_TIMER_INITIAL: usize = 0x380;
const REG_TIMER_CURRENT: usize = 0x390;
const REG_TIMER_DIVIDE: usize = 0x3e0;

const SVR_ENABLE: u32 = 1 << 8;
const LVT_MASKED: u32 = 1 << 16;
const LVT_TIMER_PERIODIC: u32 = 1 << 17;
const ICR_DELIVERY_PENDING: u32 = 1 << 12;
const ICR_INIT: u32 = 0b101 << 8;
const ICR_STARTUP: u32 = 0b110 << 8;
const ICR_LEVEL_ASSERT: u32 = 1 << 14;
const TIMER_DIVIDE_BY_16: u32 = 0b0011;

/// Vector of the periodic timer.
const TIMER_VECTOR: u8 = super::irq::vectors::TIMER;
/// Vector of the spurious interrupt (its low 4 bits must be 1s on old APICs).
const SPURIOUS_VECTOR: u8 = super::irq::vectors::SPURIOUS;
/// Timer frequency.
pub const TICK_HZ: u64 = 1000;

static APIC_BASE: AtomicU64 = AtomicU64::new(0);
/// APIC timer counts (divide by 16) per tick, measured once on the boot CPU.
static TIMER_COUNT_PER_TICK: AtomicU32 = AtomicU32::new(0);

fn read(reg: usize) -> u32 {
    let base = APIC_BASE.load(Ordering::Relaxed) as usize;
    // SAFETY: `base` is the identity-mapped xAPIC page (set by `init`), `reg` one of its
    // 16-byte aligned registers.
    unsafe { core::ptr::read_volatile((base + reg) as *const u32) }
}

fn write(reg: usize, value: u32) {
    let base = APIC_BASE.load(Ordering::Relaxed) as usize;
    // SAFETY: as for `read`.
    unsafe { core::ptr::write_volatile((base + reg) as *mut u32, value) }
}

/// Masks the legacy 8259 PICs (the APIC delivers everything) and enables this CPU's local APIC.
pub fn init_this_cpu() {
    let mut msr = Msr::new(IA32_APIC_BASE);
    // SAFETY: IA32_APIC_BASE exists on every x86_64 CPU; setting the enable bit keeps the base.
    let base = unsafe {
        let value = msr.read();
        msr.write(value | APIC_BASE_ENABLE);
        value & 0x000f_ffff_ffff_f000
    };
    APIC_BASE.store(base, Ordering::Relaxed);
    outb(0x21, 0xff);
    outb(0xa1, 0xff);
    write(REG_TPR, 0);
    write(REG_LVT_LINT0, LVT_MASKED);
    write(REG_LVT_LINT1, LVT_MASKED);
    write(REG_SVR, SVR_ENABLE | SPURIOUS_VECTOR as u32);
}

/// Physical address of the local APIC (the same on every CPU).
pub fn base() -> u64 {
    APIC_BASE.load(Ordering::Relaxed)
}

/// This CPU's APIC id.
pub fn id() -> u32 {
    read(REG_ID) >> 24
}

/// Signals end of interrupt. Only the interrupt dispatcher sends it (`irq::dispatch`).
pub(super) fn eoi() {
    super::trips::timed(super::trips::Trip::Eoi, || write(REG_EOI, 0));
}

/// Sends a fixed interrupt `vector` to the CPU with APIC id `apic_id`.
pub fn send_ipi(apic_id: u32, vector: u8) {
    super::trips::timed(super::trips::Trip::Ipi, || send_icr(apic_id, vector as u32));
}

/// Writes the interrupt command register and waits until it was accepted. Interrupts are off
/// meanwhile: a handler that sent its own IPI between the two writes would redirect this one.
pub fn send_icr(apic_id: u32, command: u32) {
    let was_enabled = super::irq_save();
    write(REG_ICR_HIGH, apic_id << 24);
    write(REG_ICR_LOW, command);
    while read(REG_ICR_LOW) & ICR_DELIVERY_PENDING != 0 {
        core::hint::spin_loop();
    }
    super::irq_restore(was_enabled);
}

/// Sends INIT to the CPU with APIC id `apic_id`: it resets and waits for a start-up IPI.
pub fn send_init(apic_id: u32) {
    send_icr(apic_id, ICR_INIT | ICR_LEVEL_ASSERT);
}

/// Sends a start-up IPI (SIPI): a CPU waiting after INIT starts in real mode at
/// `page << 12` (CS = `page << 8`, IP = 0).
pub fn send_startup(apic_id: u32, page: u8) {
    send_icr(apic_id, ICR_STARTUP | ICR_LEVEL_ASSERT | page as u32);
}

/// Measures how many APIC timer counts make one tick, against the calibrated TSC.
///
/// The count is started and read back each between two TSC reads, so a host that deschedules
/// the vCPU at either end widens that pair instead of skewing the result unseen (a stall of a
/// few ms in a 20 ms window once made every tick 20 % long). A window whose ends are not both
/// tight (together within 0.1 % of the window) is measured again; the tightest of up to 20 is
/// kept.
pub fn calibrate_timer() -> u32 {
    write(REG_TIMER_DIVIDE, TIMER_DIVIDE_BY_16);
    write(REG_LVT_TIMER, LVT_MASKED);
    let mut best: Option<(u64, u64)> = None; // (uncertainty, counts per tick)
    for _ in 0..20 {
        let a0 = tsc::rdtsc();
        write(REG_TIMER_INITIAL, u32::MAX);
        let b0 = tsc::rdtsc();
        tsc::spin_ns(20_000_000);
        let a1 = tsc::rdtsc();
        let elapsed = u64::from(u32::MAX - read(REG_TIMER_CURRENT));
        let b1 = tsc::rdtsc();
        let window_ns = tsc::ticks_to_ns((a1 + b1) / 2 - (a0 + b0) / 2).max(1);
        let per_tick = (elapsed * 1_000_000_000 / TICK_HZ / window_ns).max(1);
        let uncertainty = (b0 - a0) + (b1 - a1);
        if best.is_none_or(|(u, _)| uncertainty < u) {
            best = Some((uncertainty, per_tick));
        }
        if uncertainty * 1000 <= b1 - a0 {
            break;
        }
    }
    write(REG_TIMER_INITIAL, 0);
    let per_tick = best.map_or(1, |(_, n)| n).min(u64::from(u32::MAX)) as u32;
    TIMER_COUNT_PER_TICK.store(per_tick, Ordering::Relaxed);
    per_tick
}

/// This CPU's timer: `(initial count, current count)`; the current count runs down from the
/// initial one to zero once per tick.
pub fn timer_counts() -> (u32, u32) {
    (read(REG_TIMER_INITIAL), read(REG_TIMER_CURRENT))
}

/// This CPU's timer's current count between two TSC reads: `(tsc before, count, tsc after)`.
pub fn timer_count_between_tsc_reads() -> (u64, u32, u64) {
    let before = tsc::rdtsc();
    let count = read(REG_TIMER_CURRENT);
    (before, count, tsc::rdtsc())
}

/// Starts this CPU's periodic timer at `TICK_HZ` on `TIMER_VECTOR`.
pub fn start_timer() {
    write(REG_TIMER_DIVIDE, TIMER_DIVIDE_BY_16);
    write(REG_LVT_TIMER, LVT_TIMER_PERIODIC | TIMER_VECTOR as u32);
    write(
        REG_TIMER_INITIAL,
        TIMER_COUNT_PER_TICK.load(Ordering::Relaxed),
    );
}
