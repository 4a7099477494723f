//! The crypto service over every device (`queues=percpu|shared`): each CPU's requests go to
//! its mapped queue, one session serves every CPU with RustCrypto's answers and is destroyed on
//! every device when dropped, and 100,000 requests spread over all devices all come back right.

use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use vcrypt_drivers::crypto::{Cipher, Direction};
use vcrypt_drivers::service::{QueueMode, ServiceSession};

use super::TestResult;
use super::reference::{Rng, reference};
use crate::arch::percpu;
use crate::ensure;
use crate::mm::dma::KernelHal;
use crate::sched;
use crate::virtio::crypto::{Service, devices, service};

const JOIN_NS: u64 = 60_000_000_000;

fn the_service() -> Result<&'static Service, String> {
    service().ok_or_else(|| String::from("no crypto service (no device)"))
}

/// Requests submitted so far on every data queue of every device, in one list.
fn submitted_per_queue() -> Vec<u64> {
    devices()
        .iter()
        .flat_map(|d| d.data.iter())
        .map(|q| q.counters.submitted.load(Ordering::SeqCst))
        .collect()
}

/// The position of `queue` in `submitted_per_queue`'s list.
fn queue_position(queue: *const ()) -> Option<usize> {
    devices()
        .iter()
        .flat_map(|d| d.data.iter())
        .position(|q| core::ptr::eq(q as *const _ as *const (), queue))
}

/// Restores the queue mode it found when dropped.
struct ModeGuard(&'static Service, QueueMode);

impl Drop for ModeGuard {
    fn drop(&mut self) {
        self.0.set_queue_mode(self.1);
    }
}

/// Runs `requests` encryptions on CPU `cpu` through `session`.
fn run_on_cpu(
    session: &Arc<ServiceSession<KernelHal>>,
    cpu: usize,
    requests: u32,
) -> Result<(), String> {
    let session = session.clone();
    sched::spawn("service-cpu", Some(cpu), move || -> Result<(), String> {
        let mut dst = [0u8; 32];
        for i in 0..requests {
            let mut iv = [0u8; 16];
            iv[..4].copy_from_slice(&i.to_le_bytes());
            session
                .apply(&iv, &[0x42u8; 32], &mut dst)
                .map_err(|e| format!("CPU {cpu}, request {i}: {e}"))?;
        }
        Ok(())
    })
    .map_err(|e| format!("{e:?}"))?
    .join_timeout(JOIN_NS)
    .map_err(|_| format!("the worker on CPU {cpu} did not finish"))?
}

/// In both modes, every request a CPU makes lands on the queue the mode maps it to (counted on
/// every data queue of every device), and `percpu` gives each CPU a queue whose interrupt it
/// takes where there are enough queues.
pub fn every_cpu_submits_to_its_mapped_queue() -> TestResult {
    let service = the_service()?;
    let _restore = ModeGuard(service, service.queue_mode());
    let cpus = percpu::cpu_count();
    for mode in [QueueMode::PerCpu, QueueMode::Shared] {
        service.set_queue_mode(mode);
        let session = Arc::new(
            service
                .open(Cipher::AesCbc, Direction::Encrypt, &[3u8; 16])
                .map_err(|e| format!("open: {e}"))?,
        );
        for cpu in 0..cpus {
            let (device, queue) = service.route(cpu);
            if mode == QueueMode::Shared {
                ensure!(
                    device == 0 && core::ptr::eq(queue, &devices()[0].data[0]),
                    "queues=shared sends CPU {cpu} to device {device}"
                );
            }
            let position = queue_position(queue as *const _ as *const ())
                .ok_or("the mapped queue is not a data queue of any device")?;
            let before = submitted_per_queue();
            run_on_cpu(&session, cpu, 100)?;
            let after = submitted_per_queue();
            for (q, (a, b)) in after.iter().zip(&before).enumerate() {
                let expected = if q == position { 100 } else { 0 };
                ensure!(
                    a - b == expected,
                    "queues={}: CPU {cpu} put {} requests on data queue #{q}, expected {expected} (mapped: #{position})",
                    mode.name(),
                    a - b
                );
            }
        }
    }
    let total_queues: usize = devices().iter().map(|d| d.data.len()).sum();
    if total_queues >= cpus {
        service.set_queue_mode(QueueMode::PerCpu);
        for cpu in 0..cpus {
            let (device, _) = service.route(cpu);
            ensure!(
                devices()[device].routing().is_some_and(|r| r.is_local(cpu)),
                "{total_queues} queues for {cpu} CPUs, but CPU {cpu}'s queue interrupts another CPU"
            );
        }
    }
    Ok(())
}

/// One session used from every CPU (in `percpu` mode: every device with 1 CPU per device)
/// answers like RustCrypto, holds the key only until every device has its session, and
/// dropping it destroys it on every device.
pub fn one_session_every_cpu_matches_rustcrypto_and_drops_everywhere() -> TestResult {
    let service = the_service()?;
    let _restore = ModeGuard(service, service.queue_mode());
    service.set_queue_mode(QueueMode::PerCpu);
    let live_before: Vec<usize> = devices().iter().map(|d| d.live_sessions()).collect();
    let key: [u8; 32] = core::array::from_fn(|i| i as u8 * 7 + 1);
    let session = Arc::new(
        service
            .open(Cipher::AesCbc, Direction::Encrypt, &key)
            .map_err(|e| format!("open: {e}"))?,
    );
    ensure!(
        session.devices_opened() == 0,
        "a session was created before any request"
    );
    for cpu in 0..percpu::cpu_count() {
        let worker = session.clone();
        let result = sched::spawn("service-diff", Some(cpu), move || -> Result<(), String> {
            let mut rng = Rng::new(0x5e55_0000 + cpu as u64);
            for case in 0..50 {
                let len = 16 * (1 + rng.below(64) as usize);
                let iv = rng.bytes(16);
                let src = rng.bytes(len);
                let mut dst = alloc::vec![0u8; len];
                worker
                    .apply(&iv, &src, &mut dst)
                    .map_err(|e| format!("CPU {cpu}, case {case}: {e}"))?;
                let want = reference(Cipher::AesCbc, Direction::Encrypt, &key, &iv, &src);
                if dst != want {
                    return Err(format!(
                        "CPU {cpu}, case {case}: {len} bytes differ from RustCrypto"
                    ));
                }
            }
            // The same through batches (one kick for 8 requests of different lengths).
            for round in 0..5 {
                let inputs: Vec<(Vec<u8>, Vec<u8>)> = (0..8)
                    .map(|_| {
                        let len = 16 * (1 + rng.below(64) as usize);
                        (rng.bytes(16), rng.bytes(len))
                    })
                    .collect();
                let mut started = Vec::new();
                worker
                    .start_batch(
                        inputs.iter().map(|(iv, src)| (&iv[..], &src[..])),
                        &mut started,
                    )
                    .map_err(|e| format!("CPU {cpu}, batch {round}: {e}"))?;
                for ((iv, src), request) in inputs.iter().zip(started) {
                    let out = request
                        .wait()
                        .map_err(|e| format!("CPU {cpu}, batch {round}: {e}"))?;
                    if out[..] != reference(Cipher::AesCbc, Direction::Encrypt, &key, iv, src)[..] {
                        return Err(format!(
                            "CPU {cpu}, batch {round}: {} bytes differ from RustCrypto",
                            src.len()
                        ));
                    }
                }
            }
            Ok(())
        })
        .map_err(|e| format!("{e:?}"))?
        .join_timeout(JOIN_NS)
        .map_err(|_| format!("the worker on CPU {cpu} did not finish"))?;
        result?;
    }
    session
        .open_everywhere()
        .map_err(|e| format!("open everywhere: {e}"))?;
    ensure!(
        session.devices_opened() == devices().len(),
        "the session is open on {} of {} devices",
        session.devices_opened(),
        devices().len()
    );
    ensure!(
        !session.holds_key(),
        "the key is still held although every device has its session"
    );
    for (device, before) in devices().iter().zip(&live_before) {
        ensure!(
            device.live_sessions() == before + 1,
            "{}: {} live sessions, expected {}",
            device.name,
            device.live_sessions(),
            before + 1
        );
    }
    drop(Arc::try_unwrap(session).map_err(|_| "the session is still shared")?);
    for (device, before) in devices().iter().zip(&live_before) {
        ensure!(
            device.live_sessions() == *before,
            "{}: {} live sessions after the drop, expected {before}",
            device.name,
            device.live_sessions()
        );
    }
    Ok(())
}

/// 100,000 requests from every CPU, 8 in flight per CPU, spread over every device: each result
/// is checked (AES-ECB of a counter block, so every answer differs), none is lost, and the data
/// queues together completed exactly that many.
pub fn hundred_thousand_requests_over_all_devices_none_lost() -> TestResult {
    const TOTAL: u64 = 100_000;
    const IN_FLIGHT: usize = 8;
    let service = the_service()?;
    let _restore = ModeGuard(service, service.queue_mode());
    service.set_queue_mode(QueueMode::PerCpu);
    let key = [0x6bu8; 16];
    // CBC with a zero IV over one block is AES(block): the expected answer for each counter
    // comes from RustCrypto.
    let session = Arc::new(
        service
            .open(Cipher::AesCbc, Direction::Encrypt, &key)
            .map_err(|e| format!("open: {e}"))?,
    );
    let completed_before: u64 = devices()
        .iter()
        .flat_map(|d| d.data.iter())
        .map(|q| q.counters.completed.load(Ordering::SeqCst))
        .sum();
    let cpus = percpu::cpu_count();
    let handles: Vec<_> = (0..cpus)
        .map(|cpu| {
            let session = session.clone();
            let share = TOTAL / cpus as u64 + u64::from((cpu as u64) < TOTAL % cpus as u64);
            sched::spawn("service-100k", Some(cpu), move || -> Result<u64, String> {
                let block = |n: u64| {
                    let mut b = [0u8; 16];
                    b[..8].copy_from_slice(&(cpu as u64).to_le_bytes());
                    b[8..].copy_from_slice(&n.to_le_bytes());
                    b
                };
                let mut pending = alloc::collections::VecDeque::new();
                let (mut sent, mut done) = (0u64, 0u64);
                while done < share {
                    if sent < share && pending.len() < IN_FLIGHT {
                        let request = session
                            .start(&[0u8; 16], &block(sent))
                            .map_err(|e| format!("CPU {cpu}, request {sent}: {e}"))?;
                        pending.push_back((sent, request));
                        sent += 1;
                        continue;
                    }
                    let (n, request) = pending.pop_front().ok_or("nothing in flight")?;
                    let out = request
                        .wait()
                        .map_err(|e| format!("CPU {cpu}, request {n}: {e}"))?;
                    let want = reference(
                        Cipher::AesCbc,
                        Direction::Encrypt,
                        &key,
                        &[0u8; 16],
                        &block(n),
                    );
                    if out[..] != want[..] {
                        return Err(format!("CPU {cpu}, request {n}: wrong ciphertext"));
                    }
                    done += 1;
                }
                Ok(done)
            })
            .map_err(|e| format!("{e:?}"))
        })
        .collect::<Result<_, _>>()?;
    let mut done = 0;
    for h in handles {
        done += h
            .join_timeout(10 * JOIN_NS)
            .map_err(|_| "a worker did not finish")??;
    }
    let completed: u64 = devices()
        .iter()
        .flat_map(|d| d.data.iter())
        .map(|q| q.counters.completed.load(Ordering::SeqCst))
        .sum::<u64>()
        - completed_before;
    ensure!(done == TOTAL, "{done} of {TOTAL} requests came back");
    ensure!(
        completed == TOTAL,
        "the data queues completed {completed} requests, {TOTAL} were sent"
    );
    Ok(())
}
