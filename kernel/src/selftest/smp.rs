//! Multiprocessor tests: every CPU the MADT lists came up, knows who it is, takes timer ticks and
//! takes interrupts sent to it.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, Ordering};

use super::TestResult;
use crate::arch::irq::IrqLine;
use crate::arch::percpu::{self, MAX_CPUS};
use crate::arch::{self, apic, smp, tsc};
use crate::ensure;

/// The CPUs online are exactly the MADT's enabled processors (up to MAX_CPUS).
pub fn cpu_count_matches_madt() -> TestResult {
    let madt = smp::madt_apic_ids();
    ensure!(
        !madt.is_empty(),
        "no usable MADT: the processors could not be discovered"
    );
    let expected = madt.len().min(MAX_CPUS);
    let online = percpu::cpu_count();
    ensure!(
        online == expected,
        "{online} CPUs online, the MADT lists {} enabled",
        madt.len()
    );
    Ok(())
}

/// Every CPU checked in with its own index as read through its GS base and a distinct APIC id
/// from the MADT, the one its per-CPU data records.
pub fn every_cpu_checked_in_with_own_index_and_apic_id() -> TestResult {
    ensure!(
        percpu::cpu_index() == 0,
        "tests run on CPU {}, not the boot CPU",
        percpu::cpu_index()
    );
    let madt = smp::madt_apic_ids();
    let mut seen: Vec<u32> = Vec::new();
    for cpu in 0..percpu::cpu_count() {
        let Some((index, apic_id)) = smp::checkin(cpu) else {
            return Err(alloc::format!("CPU {cpu} never checked in"));
        };
        ensure!(
            index == cpu,
            "CPU {cpu} read cpu_index() = {index} through its GS base"
        );
        ensure!(
            apic_id == percpu::apic_id_of(cpu),
            "CPU {cpu} has APIC id {apic_id}, its per-CPU data says {}",
            percpu::apic_id_of(cpu)
        );
        ensure!(
            !seen.contains(&apic_id),
            "CPU {cpu} has APIC id {apic_id}, as an earlier CPU does"
        );
        ensure!(
            madt.contains(&apic_id),
            "CPU {cpu} has APIC id {apic_id}, not in the MADT {madt:?}"
        );
        seen.push(apic_id);
    }
    Ok(())
}

/// Every CPU's timer ticks: each CPU takes 10 ticks (within 10 s: a stalled vCPU takes them
/// late, a dead timer never), none takes more over the window than TICK_HZ allows (within
/// 10 %; load only loses ticks), and each CPU's timer period, measured on that CPU from the rate
/// its count runs down, is 1/TICK_HZ within 10 %.
pub fn every_cpu_takes_timer_ticks() -> TestResult {
    ensure!(arch::irqs_enabled(), "interrupts are disabled");
    let count = percpu::cpu_count();
    let before: Vec<u64> = (0..count).map(arch::ticks).collect();
    let start = tsc::rdtsc();
    let took = |cpu: usize| arch::ticks(cpu) - before[cpu];
    loop {
        let elapsed_ns = tsc::ticks_to_ns(tsc::rdtsc() - start);
        let behind = (0..count).find(|&cpu| took(cpu) < 10);
        match behind {
            None if elapsed_ns >= 50_000_000 => break,
            Some(cpu) if elapsed_ns >= 10_000_000_000 => {
                return Err(alloc::format!(
                    "CPU {cpu} took {} timer ticks in 10 s",
                    took(cpu)
                ));
            }
            // Not a halt: with a dead timer here nothing might end it.
            _ => core::hint::spin_loop(),
        }
    }
    let elapsed_ns = tsc::ticks_to_ns(tsc::rdtsc() - start);
    let allowed = elapsed_ns * apic::TICK_HZ / 1_000_000_000;
    for cpu in 0..count {
        let ticks = took(cpu);
        // One more: a tick may land on each end of the window.
        ensure!(
            ticks * 10 <= allowed * 11 + 10,
            "CPU {cpu} took {ticks} timer ticks in {} ms, at most {allowed} + 10 % allowed: its timer runs fast",
            elapsed_ns / 1_000_000
        );
    }
    let want_ns = 1_000_000_000 / apic::TICK_HZ;
    for cpu in 0..count {
        let (tick_ns, initial) =
            crate::sched::spawn("tick-rate", Some(cpu), super::arch::measured_tick_ns)
                .map_err(|e| alloc::format!("{e:?}"))?
                .join_timeout(60_000_000_000)
                .map_err(|_| alloc::format!("the measurement on CPU {cpu} never finished"))??;
        ensure!(
            tick_ns * 10 >= want_ns * 9 && tick_ns * 10 <= want_ns * 11,
            "CPU {cpu}'s timer ticks every {tick_ns} ns of TSC time ({initial} counts), expected {want_ns} ns +- 10 %"
        );
    }
    Ok(())
}

/// How many test IPIs each CPU handled.
static IPI_HITS: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];

/// An IPI from CPU 0 to each CPU (itself included) runs the handler on exactly that CPU. Each
/// is waited for up to 10 s (a stalled vCPU handles it late; a lost one never).
pub fn ipi_runs_handler_on_target_cpu() -> TestResult {
    ensure!(arch::irqs_enabled(), "interrupts are disabled");
    ensure!(
        percpu::cpu_index() == 0,
        "tests run on CPU {}, not the boot CPU",
        percpu::cpu_index()
    );
    for hits in &IPI_HITS {
        hits.store(0, Ordering::SeqCst);
    }
    // A line of its own: the test cannot take a vector someone else owns (it once took the
    // scheduler's reschedule vector and left it without a handler).
    let line = IrqLine::alloc().map_err(|e| alloc::format!("{e}"))?;
    line.on_active(|| {
        IPI_HITS[percpu::cpu_index()].fetch_add(1, Ordering::SeqCst);
    });
    let result = (|| {
        for (target, target_hits) in IPI_HITS.iter().enumerate().take(percpu::cpu_count()) {
            apic::send_ipi(percpu::apic_id_of(target), line.vector());
            let start = tsc::rdtsc();
            while target_hits.load(Ordering::SeqCst) == 0
                && tsc::ticks_to_ns(tsc::rdtsc() - start) < 10_000_000_000
            {
                core::hint::spin_loop();
            }
            for (cpu, hits) in IPI_HITS.iter().enumerate() {
                let hits = hits.load(Ordering::SeqCst);
                let want = u32::from(cpu <= target);
                ensure!(
                    hits == want,
                    "after the IPI to CPU {target}, CPU {cpu} handled {hits} test IPIs, expected {want}"
                );
            }
        }
        Ok(())
    })();
    drop(line);
    result
}
