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

/// Reads PIT channel 2's count (latched), between two TSC reads: `(tsc before, count, tsc after)`.
fn pit_count_between_tsc_reads() -> (u64, u16, u64) {
    let before = rdtsc();
    outb(0x43, 0b1000_0000); // latch channel 2
    let low = inb(0x42);
    let high = inb(0x42);
    let after = rdtsc();
    (before, u16::from_le_bytes([low, high]), after)
}

/// Measures the TSC against PIT channel 2 (one-shot, gate through port 0x61) and returns Hz.
///
/// The PIT count is read at both ends, each read between two TSC reads: a host that deschedules
/// the vCPU during a read widens that pair, never skews the result unseen. A window whose reads
/// are not both tight (together within 0.1 % of the window) is measured again; the tightest of
/// up to 20 is kept.
pub fn calibrate() -> u64 {
    let count = (PIT_HZ * CALIBRATION_MS / 1000) as u16;
    let mut best: Option<(u64, u64)> = None; // (uncertainty, Hz)
    for _ in 0..20 {
        // Gate on, speaker off.
        outb(0x61, (inb(0x61) & !0x02) | 0x01);
        outb(0x43, 0b1011_0000); // channel 2, lobyte/hibyte, mode 0, binary
        outb(0x42, count as u8);
        outb(0x42, (count >> 8) as u8);
        // Restart the count by toggling the gate.
        let gate = inb(0x61);
        outb(0x61, gate & !0x01);
        outb(0x61, gate | 0x01);
        let (a0, c0, b0) = pit_count_between_tsc_reads();
        // Until the count is near its end (mode 0 goes on below zero from 0xffff: stop early).
        let (mut a1, mut c1, mut b1) = (a0, c0, b0);
        while inb(0x61) & 0x20 == 0 && c1 > count / 16 {
            (a1, c1, b1) = pit_count_between_tsc_reads();
        }
        let pit_counts = u64::from(c0.saturating_sub(c1));
        if pit_counts < u64::from(count) / 2 {
            continue; // the count ran out unseen (a long stall): measure again
        }
        let tsc = (a1 + b1) / 2 - (a0 + b0) / 2;
        let hz = tsc * PIT_HZ / pit_counts;
        let uncertainty = (b0 - a0) + (b1 - a1);
        if best.is_none_or(|(u, _)| uncertainty < u) {
            best = Some((uncertainty, hz));
        }
        if uncertainty * 1000 <= tsc {
            break;
        }
    }
    let hz = best.map_or(0, |(_, hz)| hz);
    TSC_HZ.store(hz, Ordering::Relaxed);
    hz
}
