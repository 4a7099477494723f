//! Time from the TSC, calibrated once at boot against PIT channel 2.

use core::sync::atomic::{AtomicU64, Ordering};

use super::port::{inb, outb};

static TSC_HZ: AtomicU64 = AtomicU64::new(0);

const PIT_HZ: u64 = 1_193_182;
const CALIBRATION_MS: u64 = 50;

/// Reads the time-stamp counter.
#[inline]
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no side effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// TSC frequency in Hz (0 before calibration).
pub fn hz() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}

/// Converts TSC ticks to nanoseconds.
pub fn ticks_to_ns(ticks: u64) -> u64 {
    let hz = hz().max(1);
    ((ticks as u128 * 1_000_000_000) / hz as u128) as u64
}

/// Converts nanoseconds to TSC ticks.
pub fn ns_to_ticks(ns: u64) -> u64 {
    ((ns as u128 * hz() as u128) / 1_000_000_000) as u64
}

/// Nanoseconds since the TSC started.
pub fn now_ns() -> u64 {
    ticks_to_ns(rdtsc())
}

/// Spins for `ns` nanoseconds.
pub fn spin_ns(ns: u64) {
    let end = rdtsc() + ns_to_ticks(ns);
    while rdtsc() < end {
        core::hint::spin_loop();
    }
}

/// Measures the TSC against PIT channel 2 (one-shot, gate through port 0x61) and returns Hz.
pub fn calibrate() -> u64 {
    let count = (PIT_HZ * CALIBRATION_MS / 1000) as u16;
    // Gate on, speaker off.
    outb(0x61, (inb(0x61) & !0x02) | 0x01);
    outb(0x43, 0b1011_0000); // channel 2, lobyte/hibyte, mode 0, binary
    outb(0x42, count as u8);
    outb(0x42, (count >> 8) as u8);
    // Restart the count by toggling the gate.
    let gate = inb(0x61);
    outb(0x61, gate & !0x01);
    outb(0x61, gate | 0x01);
    let start = rdtsc();
    while inb(0x61) & 0x20 == 0 {
        core::hint::spin_loop();
    }
    let ticks = rdtsc() - start;
    let hz = ticks * 1000 / CALIBRATION_MS;
    TSC_HZ.store(hz, Ordering::Relaxed);
    hz
}
