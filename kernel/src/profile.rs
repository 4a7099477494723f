//! A sampling profiler: with `profile=on` on the command line, every timer tick of every CPU
//! records the instruction the tick interrupted into that CPU's own buffer (no lock, no
//! allocation in the interrupt), and just before QEMU is left the samples are printed as
//! `profile-sample <address> <count>` lines, most frequent first. `scripts/profile.sh` runs a
//! command with the profiler on and resolves the addresses against the kernel ELF into a table
//! of functions.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crate::arch::percpu::{self, MAX_CPUS};
use crate::arch::{self, irq};
use crate::println;

/// Samples one CPU keeps (32 s at the 1 kHz tick); later ones are counted as dropped.
const SAMPLES_PER_CPU: usize = 32 * 1024;
/// Distinct addresses printed; the rest are summed into one `profile-other` line.
const ADDRESSES_PRINTED: usize = 400;

struct CpuSamples {
    rips: Box<[AtomicU64]>,
    taken: AtomicUsize,
}

/// Allocated by `start` (task context), only when profiling: the kernel image stays small.
static SAMPLES: spin::Once<Vec<CpuSamples>> = spin::Once::new();
static ENABLED: AtomicBool = AtomicBool::new(false);

fn sample() {
    if !ENABLED.load(Ordering::Relaxed) {
        return;
    }
    let Some(samples) = SAMPLES.get() else {
        return;
    };
    let cpu = &samples[percpu::cpu_index()];
    let index = cpu.taken.fetch_add(1, Ordering::Relaxed);
    if let Some(slot) = cpu.rips.get(index) {
        slot.store(irq::interrupted_rip(), Ordering::Relaxed);
    }
}

/// Starts sampling on every CPU and arranges for the report at exit.
pub fn start() {
    SAMPLES.call_once(|| {
        (0..MAX_CPUS)
            .map(|_| CpuSamples {
                rips: (0..SAMPLES_PER_CPU).map(|_| AtomicU64::new(0)).collect(),
                taken: AtomicUsize::new(0),
            })
            .collect()
    });
    arch::timer_line().on_active(sample);
    arch::qemu::set_exit_hook(report);
    ENABLED.store(true, Ordering::SeqCst);
    println!(
        "profile: sampling every timer tick on {} CPUs",
        percpu::cpu_count()
    );
}

/// Prints the samples (most frequent addresses first).
fn report() {
    ENABLED.store(false, Ordering::SeqCst);
    let mut all: Vec<u64> = Vec::new();
    let mut dropped = 0;
    let Some(samples) = SAMPLES.get() else {
        return;
    };
    for cpu in &samples[..percpu::cpu_count()] {
        let taken = cpu.taken.load(Ordering::Relaxed);
        let kept = taken.min(SAMPLES_PER_CPU);
        dropped += taken - kept;
        all.extend(cpu.rips[..kept].iter().map(|r| r.load(Ordering::Relaxed)));
    }
    all.sort_unstable();
    let mut counts: Vec<(u64, u64)> = Vec::new();
    for rip in &all {
        match counts.last_mut() {
            Some((last, count)) if last == rip => *count += 1,
            _ => counts.push((*rip, 1)),
        }
    }
    counts.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    println!(
        "profile: {} samples, {} addresses, {dropped} dropped",
        all.len(),
        counts.len()
    );
    for (rip, count) in counts.iter().take(ADDRESSES_PRINTED) {
        println!("profile-sample {rip:#x} {count}");
    }
    let rest: u64 = counts.iter().skip(ADDRESSES_PRINTED).map(|c| c.1).sum();
    if rest > 0 {
        println!("profile-other {rest}");
    }
}
