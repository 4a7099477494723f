//! Device reset and recovery against the real device: a malformed request (src_len != dst_len)
//! makes QEMU flag DEVICE_NEEDS_RESET; requests in flight from several tasks must fail cleanly
//! (`DeviceReset` or `SessionLost`, never a timeout or a wrong answer), the recovery task must
//! bring the device back with a new generation, and 10,000 requests afterwards must all be right.

use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use vcrypt_drivers::crypto::{Cipher, Direction, Session};
use vcrypt_drivers::error::Error;
use vcrypt_drivers::virtio_crypto::lifecycle::DeviceState;

use super::TestResult;
use super::reference::reference;
use crate::ensure;
use crate::virtio::crypto::{Device, devices, functions};

const CYCLES: usize = 20;
const AFTER: usize = 10_000;
const IN_FLIGHT: usize = 8;
const KEY: [u8; 16] = *b"reset-cycle-key!";
/// How long a step may take before it counts as hung: far beyond what a loaded host needs.
const HANG_NS: u64 = 60_000_000_000;

fn iv_of(i: u64) -> [u8; 16] {
    let mut iv = [0u8; 16];
    iv[..8].copy_from_slice(&i.to_le_bytes());
    iv
}

/// What a worker saw: requests that came back right, and the error that ended it.
type WorkerEnd = (usize, Error);

/// Keeps `IN_FLIGHT` requests in flight on its own session until one fails; every answer is
/// checked against RustCrypto.
fn worker(
    device: &'static Device,
    t: usize,
    started: Arc<AtomicUsize>,
) -> Result<WorkerEnd, String> {
    let session = loop {
        match Session::new(device, Cipher::AesCbc, Direction::Encrypt, &KEY) {
            Ok(s) => break s,
            Err(Error::DeviceReset) => crate::sched::yield_now(),
            Err(e) => return Err(format!("worker {t}: session: {e}")),
        }
    };
    let plain = [t as u8; 64];
    let queue = device.current_data_queue();
    let mut ok = 0usize;
    let mut counted = false;
    let start = crate::arch::tsc::now_ns();
    loop {
        if crate::arch::tsc::now_ns() - start > HANG_NS {
            return Err(format!(
                "worker {t}: no reset within {} s",
                HANG_NS / 1_000_000_000
            ));
        }
        let mut pending = Vec::new();
        let mut end = None;
        for k in 0..IN_FLIGHT {
            let i = (ok + k) as u64;
            match device.start_cipher_request(
                queue,
                &session.as_cipher_session(),
                &iv_of(i),
                &plain,
            ) {
                Ok(p) => pending.push((i, p)),
                Err(e) => {
                    end = Some(e);
                    break;
                }
            }
        }
        for (i, p) in pending {
            match p.wait() {
                Ok(out) => {
                    let want =
                        reference(Cipher::AesCbc, Direction::Encrypt, &KEY, &iv_of(i), &plain);
                    ensure!(
                        out[..] == want[..],
                        "worker {t}: request {i}: wrong ciphertext"
                    );
                    ok += 1;
                }
                Err(e) => end = end.or(Some(e)),
            }
        }
        if !counted && ok > 0 {
            counted = true;
            started.fetch_add(1, Ordering::AcqRel);
        }
        if let Some(e) = end {
            if !counted {
                started.fetch_add(1, Ordering::AcqRel);
            }
            return Ok((ok, e));
        }
    }
}

/// 10,000 requests, 32 in flight, each a different IV, each checked against RustCrypto.
fn check_after(device: &'static Device, cycle: usize) -> TestResult {
    let session = Session::new(device, Cipher::AesCbc, Direction::Encrypt, &KEY)
        .map_err(|e| format!("cycle {cycle}: session after the reset: {e}"))?;
    let queue = device.current_data_queue();
    let plain = [0x5au8; 32];
    let mut next = 0u64;
    while (next as usize) < AFTER {
        let batch: Vec<_> = (next..(next + 32).min(AFTER as u64))
            .map(|i| {
                device
                    .start_cipher_request(queue, &session.as_cipher_session(), &iv_of(i), &plain)
                    .map(|p| (i, p))
            })
            .collect::<Result<_, _>>()
            .map_err(|e| format!("cycle {cycle}: submit after the reset: {e}"))?;
        for (i, p) in batch {
            let out = p
                .wait()
                .map_err(|e| format!("cycle {cycle}: request {i} after the reset: {e}"))?;
            let want = reference(Cipher::AesCbc, Direction::Encrypt, &KEY, &iv_of(i), &plain);
            ensure!(
                out[..] == want[..],
                "cycle {cycle}: request {i}: wrong ciphertext"
            );
            next += 1;
        }
    }
    session
        .close()
        .map_err(|e| format!("cycle {cycle}: close: {e}"))
}

pub fn twenty_cycles_with_fault_injection() -> TestResult {
    let device: &'static Device = devices().first().copied().ok_or("no device")?;
    let function = functions().first().copied().ok_or("no device")?;
    let cpus = crate::arch::percpu::cpu_count();
    let workers = (2 * cpus).max(3);
    let (mut reset_errors, mut lost_errors, mut done_before) = (0usize, 0usize, 0usize);
    for cycle in 0..CYCLES {
        let generation = device.generation();
        let started = Arc::new(AtomicUsize::new(0));
        let handles: Vec<_> = (0..workers)
            .map(|t| {
                let started = started.clone();
                crate::sched::spawn("reset-worker", Some(t % cpus), move || {
                    worker(device, t, started)
                })
            })
            .collect::<Result<_, _>>()
            .map_err(|e| format!("spawn: {e:?}"))?;
        let wait_start = crate::arch::tsc::now_ns();
        while started.load(Ordering::Acquire) < workers {
            ensure!(
                crate::arch::tsc::now_ns() - wait_start < HANG_NS,
                "cycle {cycle}: workers did not start"
            );
            crate::sched::sleep_ns(1_000_000);
        }
        crate::println!(
            "reset cycle {cycle}: injecting a malformed request (src_len != dst_len); the QEMU \
             complaint that follows is expected"
        );
        let bad = device.inject_src_dst_mismatch(device.current_data_queue());
        let wait_start = crate::arch::tsc::now_ns();
        while device.generation() == generation || device.state() != DeviceState::Running {
            ensure!(
                crate::arch::tsc::now_ns() - wait_start < HANG_NS,
                "cycle {cycle}: no recovery within {} s (state {:?}, generation {})",
                HANG_NS / 1_000_000_000,
                device.state(),
                device.generation()
            );
            crate::sched::sleep_ns(1_000_000);
        }
        if let Ok(bad) = bad {
            ensure!(
                bad.outcome() == Some(Err(Error::DeviceReset)),
                "cycle {cycle}: the malformed request ended with {:?}",
                bad.outcome()
            );
        }
        for h in handles {
            let (ok, end) = h.join()?;
            done_before += ok;
            match end {
                Error::DeviceReset => reset_errors += 1,
                Error::SessionLost => lost_errors += 1,
                e => return Err(format!("cycle {cycle}: a worker ended with {e}")),
            }
        }
        ensure!(
            device.generation() == generation + 1,
            "cycle {cycle}: generation {} after one reset from {generation}",
            device.generation()
        );
        check_after(device, cycle)?;
    }
    let stopped = AtomicBool::new(device.state() == DeviceState::Running);
    ensure!(
        stopped.load(Ordering::Relaxed),
        "device not running at the end"
    );
    ensure!(
        function.recovery.failed.load(Ordering::Acquire) == 0,
        "a recovery failed"
    );
    crate::println!(
        "reset cycles: {CYCLES} on {cpus} CPU(s), generation {}, recoveries {}; {} worker(s) per \
         cycle ended cleanly (DeviceReset {reset_errors}, SessionLost {lost_errors}) after {done_before} \
         correct requests; {} requests after the resets all correct; live sessions {}",
        device.generation(),
        function.recovery.done.load(Ordering::Acquire),
        workers,
        CYCLES * AFTER,
        device.live_sessions()
    );
    Ok(())
}
