//! Host tests of notification suppression both ways (EVENT_IDX and the flags) and of batched
//! submission, against real virtio-drivers split rings with the device side played by
//! `fake::FakeRing`.

use alloc::boxed::Box;
use alloc::format;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;

use super::fake::*;
use super::queue::CryptoQueue;
use super::request::{Request, RequestBatch};
use super::ring::{need_event, virtio_drivers_should_notify};
use crate::error::Error;
use crate::sync::platform::host;

/// Sets its flag when dropped, also while a failing test unwinds: a device thread polling the
/// flag then ends, and the scope around it returns instead of hanging the test binary.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

fn rig(event_idx: bool) -> QueueRig {
    queue_rig(event_idx, CountingNotify::new())
}

/// Builds (does not post) a request carrying `k`, answered in 8 writable bytes.
fn build(queue: &CryptoQueue<FakeHal>, k: u64) -> super::request::RequestBuilder<FakeHal> {
    let mut builder = queue.reserve(8, 8).unwrap();
    builder.push(&k.to_le_bytes()).unwrap();
    builder
}

/// Device side: answers every pending chain with the bitwise NOT of the number it carries.
fn answer_all(ring: &mut FakeRing) -> usize {
    let chains = ring.pending();
    for chain in &chains {
        let k = u64::from_le_bytes(chain.readable()[0][..8].try_into().unwrap());
        chain.write(&(!k).to_le_bytes());
        ring.complete(chain.id as u32, 8);
    }
    chains.len()
}

fn check_answer(k: u64, request: &Request<FakeHal>) {
    let result = request.wait(5_000_000_000);
    assert_eq!(result, Ok(8), "request {k}");
    assert_eq!(request.writable(), (!k).to_le_bytes(), "request {k}");
}

/// Posts `n` requests numbered from `first` as one batch.
fn post_batch(queue: &CryptoQueue<FakeHal>, first: u64, n: u64) -> Vec<Request<FakeHal>> {
    let mut batch = RequestBatch::with_capacity(n as usize);
    for k in first..first + n {
        batch.push(build(queue, k)).unwrap();
    }
    let mut posted = Vec::new();
    batch.submit(&mut posted).unwrap();
    assert!(batch.is_empty());
    posted
}

/// The need-event check against the obvious definition on unwrapped positions ("the other side
/// asked to hear once the index passes `event`, and `event` is among the entries added since the
/// last notification"), for batches on both sides of the 16-bit wrap; and the place where
/// virtio-drivers 0.13's `avail_idx >= avail_event + 1` gets it wrong.
#[test]
fn need_event_is_wrap_safe_where_virtio_drivers_check_is_not() {
    let mut virtio_drivers_wrong = 0;
    for old in (0u32..8).chain(0xfff0..0x1_0008) {
        for n in 1u32..12 {
            for event in old.saturating_sub(16)..old + 24 {
                let expected = (old..old + n).contains(&event);
                let (e, new, o) = (event as u16, (old + n) as u16, old as u16);
                assert_eq!(
                    need_event(e, new, o),
                    expected,
                    "event {event:#x}, old {old:#x}, new {:#x}",
                    old + n
                );
                if virtio_drivers_should_notify(e, new) != expected {
                    virtio_drivers_wrong += 1;
                }
            }
        }
    }
    // The case of the test below: four adds from 0xfffd, the device waiting at 0xfffe.
    assert!(need_event(0xfffe, 0x0001, 0xfffd));
    assert!(!virtio_drivers_should_notify(0xfffe, 0x0001));
    assert!(virtio_drivers_wrong > 0);
}

/// A batch of adds crosses the wrap of the avail index while the device's `avail_event` sits
/// just behind it: exactly one doorbell, and the device finds every request. Then the device
/// asks for nothing until later (no doorbell), then for the next add (one).
#[test]
fn batched_adds_across_the_avail_wrap_ring_the_doorbell_once() {
    let mut rig = rig(true);
    // Walk the indices to 0xfffd in batches the device answers at once.
    let mut next = 0u64;
    while next < 0xfffd {
        let n = (0xfffd - next).min(200);
        rig.ring
            .set_avail_event(rig.ring.avail_index().wrapping_add(u16::MAX));
        let posted = post_batch(&rig.queue, next, n);
        assert_eq!(answer_all(&mut rig.ring), n as usize);
        assert_eq!(rig.queue.handle_interrupt(), n as usize);
        for (k, request) in (next..).zip(&posted) {
            check_answer(k, request);
        }
        next += n;
    }
    assert_eq!(rig.ring.avail_index(), 0xfffd);
    let rung = rig.bell.count();

    // "Kick me once the index passes 0xfffe": the batch takes it from 0xfffd to 0x0001.
    rig.ring.set_avail_event(0xfffe);
    let posted = post_batch(&rig.queue, next, 4);
    assert_eq!(rig.ring.avail_index(), 0x0001);
    assert_eq!(rig.bell.count(), rung + 1, "one doorbell for the batch");
    assert!(
        !virtio_drivers_should_notify(0xfffe, 0x0001),
        "virtio-drivers' own check would have rung none"
    );
    assert_eq!(answer_all(&mut rig.ring), 4);
    assert_eq!(rig.queue.handle_interrupt(), 4);
    for (k, request) in (next..).zip(&posted) {
        check_answer(k, request);
    }
    next += 4;

    // Busy: "kick me once past 0x0010"; two adds (to 0x0003) ring nothing.
    rig.ring.set_avail_event(0x0010);
    let quiet = post_batch(&rig.queue, next, 2);
    assert_eq!(rig.bell.count(), rung + 1);
    // Caught up: "kick me at the next one"; it rings.
    assert_eq!(answer_all(&mut rig.ring), 2);
    rig.ring.set_avail_event(rig.ring.avail_index());
    let last = post_batch(&rig.queue, next + 2, 1);
    assert_eq!(rig.bell.count(), rung + 2);
    assert_eq!(answer_all(&mut rig.ring), 1);
    assert_eq!(rig.queue.handle_interrupt(), 3);
    for (k, request) in (next..).zip(quiet.iter().chain(&last)) {
        check_answer(k, request);
    }
}

/// One batch of 300 requests: one doorbell while the device wants them (none while it set
/// NO_NOTIFY), every request on the ring in order and answered with its own result; with and
/// without EVENT_IDX.
#[test]
fn a_batch_rings_once_and_each_request_gets_its_own_answer() {
    for event_idx in [false, true] {
        for device_busy in [false, true] {
            let mut rig = rig(event_idx);
            if device_busy {
                if event_idx {
                    rig.ring.set_avail_event(0x8000);
                } else {
                    rig.ring.set_no_notify(true);
                }
            }
            let posted = post_batch(&rig.queue, 1000, 300);
            let what = format!("event_idx {event_idx}, device busy {device_busy}");
            assert_eq!(rig.bell.count(), usize::from(!device_busy), "{what}");
            let chains = rig.ring.pending();
            assert_eq!(chains.len(), 300, "{what}");
            for (k, chain) in (1000u64..).zip(&chains) {
                assert_eq!(chain.readable()[0], k.to_le_bytes(), "{what}: ring order");
                chain.write(&(!k).to_le_bytes());
            }
            // Answered in reverse: each still gets its own.
            for chain in chains.iter().rev() {
                rig.ring.complete(chain.id as u32, 8);
            }
            assert_eq!(rig.queue.handle_interrupt(), 300, "{what}");
            for (k, request) in (1000u64..).zip(&posted) {
                check_answer(k, request);
            }
            assert_eq!(
                rig.queue.counters.submitted.load(Ordering::Relaxed),
                300,
                "{what}"
            );
        }
    }
}

/// A batch bigger than the ring: what fits is posted and rung for, the submitter sleeps for
/// space, and a device answering in the background gets the rest; nothing is lost.
#[test]
fn a_batch_larger_than_the_ring_waits_for_space_and_loses_nothing() {
    let (tx, rx) = mpsc::channel();
    let mut rig = queue_rig(true, CountingNotify::with_signal(tx));
    let queue = &rig.queue;
    let stop = AtomicBool::new(false);
    thread::scope(|s| {
        let ring = &mut rig.ring;
        let stop = &stop;
        s.spawn(move || {
            while !stop.load(Ordering::Acquire) {
                // Only a doorbell makes it look (a lost one leaves the submitter waiting).
                if rx.recv_timeout(std::time::Duration::from_millis(5)).is_ok() {
                    let mut answered = answer_all(ring);
                    while ring.ask_for_next_kick() {
                        answered += answer_all(ring);
                    }
                    if answered > 0 {
                        queue.handle_interrupt();
                    }
                }
            }
        });
        // Stops the device thread however the test ends (a failed check panics here).
        let _stop_device = StopOnDrop(stop);
        // 2 descriptors each: 700 need 1400 of the ring's 1024.
        let posted = post_batch(queue, 0, 700);
        assert_eq!(posted.len(), 700);
        for (k, request) in (0u64..).zip(&posted) {
            check_answer(k, request);
        }
    });
    assert!(rig.queue.counters.full_waits.load(Ordering::Relaxed) >= 1);
    assert_eq!(rig.queue.in_flight(), 0);
}

/// A batch takes one queue's requests only.
#[test]
fn a_batch_refuses_a_request_for_another_queue() {
    let a = rig(false);
    let b = rig(false);
    let mut batch = RequestBatch::default();
    batch.push(build(&a.queue, 1)).unwrap();
    assert!(matches!(
        batch.push(build(&b.queue, 2)),
        Err(Error::NotSupported { .. })
    ));
    assert_eq!(
        b.queue.slots_in_use(),
        0,
        "the refused request was released"
    );
    assert_eq!(batch.len(), 1);
}

/// After a drain the driver wants an interrupt at the next used entry (EVENT_IDX: `used_event`
/// is the popped count; flags: NO_INTERRUPT clear); a polled queue asks for none at all, and
/// asks again once handed back.
#[test]
fn drains_ask_for_the_next_interrupt_and_a_polled_queue_for_none() {
    for event_idx in [false, true] {
        let mut rig = rig(event_idx);
        let posted = post_batch(&rig.queue, 0, 5);
        answer_all(&mut rig.ring);
        assert_eq!(rig.queue.handle_interrupt(), 5);
        let used = rig.ring.used_index();
        assert!(
            rig.ring
                .wants_interrupt(event_idx, used.wrapping_add(1), used)
        );
        if event_idx {
            assert_eq!(rig.ring.used_event(), 5);
        }
        drop(posted);

        rig.queue.set_polled(true);
        let posted = post_batch(&rig.queue, 10, 3);
        answer_all(&mut rig.ring);
        let now = rig.ring.used_index();
        assert!(
            !rig.ring
                .wants_interrupt(event_idx, now, now.wrapping_sub(3)),
            "event_idx {event_idx}: a polled queue asked for an interrupt"
        );
        assert_eq!(rig.queue.handle_interrupt(), 3);
        assert!(
            !rig.ring
                .wants_interrupt(event_idx, now.wrapping_add(1), now)
        );
        drop(posted);

        rig.queue.set_polled(false);
        let now = rig.ring.used_index();
        assert!(
            rig.ring
                .wants_interrupt(event_idx, now.wrapping_add(1), now)
        );
    }
}

/// The race the drain's re-check closes, made to happen: the device publishes an entry after
/// the drain's last look and before it asks for interrupts again, so the device (which saw them
/// suppressed) raises none. The drain must find the entry itself.
#[test]
fn an_entry_published_while_interrupts_were_off_is_found_by_the_drain() {
    for event_idx in [false, true] {
        let mut rig = rig(event_idx);
        let posted = post_batch(&rig.queue, 0, 2);
        let chains = rig.ring.pending();
        for (k, chain) in (0u64..).zip(&chains) {
            chain.write(&(!k).to_le_bytes());
        }
        rig.ring.complete(chains[0].id as u32, 8);
        let (addrs, late) = (rig.ring.addrs(), chains[1].id as u32);
        let (tx, rx) = mpsc::channel();
        super::ring::BEFORE_ENABLE.with(|h| {
            *h.borrow_mut() = Some(Box::new(move || {
                let mut device = FakeRing::new(addrs);
                let old = device.used_index();
                device.complete(late, 8);
                let _ = tx.send(device.wants_interrupt(event_idx, old.wrapping_add(1), old));
            }))
        });
        assert_eq!(rig.queue.handle_interrupt(), 2, "event_idx {event_idx}");
        assert_eq!(
            rx.recv(),
            Ok(false),
            "the device raised no interrupt for it"
        );
        for (k, request) in (0u64..).zip(&posted) {
            check_answer(k, request);
        }
    }
}

/// The interrupt race: a device thread answers requests one by one and raises an interrupt
/// only when the driver's `used_event` (or NO_INTERRUPT flag) asks for one, as QEMU does; an
/// interrupt thread drains. 20,000 requests in batches of varying size must all finish: an
/// entry published while a drain had interrupts suppressed is caught by the drain's re-check,
/// or it would never be seen (its waiter times out).
#[test]
fn no_completion_is_stranded_by_interrupt_suppression() {
    const TOTAL: u64 = 20_000;
    for event_idx in [false, true] {
        let (kick_tx, kick_rx) = mpsc::channel();
        let mut rig = queue_rig(event_idx, CountingNotify::with_signal(kick_tx));
        let (irq_tx, irq_rx) = mpsc::channel::<()>();
        let queue = &rig.queue;
        let stop = AtomicBool::new(false);
        let interrupts = thread::scope(|s| {
            let ring = &mut rig.ring;
            let stop = &stop;
            // The device: answers whatever is on the ring, one entry at a time.
            s.spawn(move || {
                let mut signalled = 0u16;
                while !stop.load(Ordering::Acquire) {
                    let _ = kick_rx.recv_timeout(std::time::Duration::from_millis(1));
                    loop {
                        let chains = ring.pending();
                        if chains.is_empty() {
                            break;
                        }
                        for chain in chains {
                            let k =
                                u64::from_le_bytes(chain.readable()[0][..8].try_into().unwrap());
                            chain.write(&(!k).to_le_bytes());
                            ring.complete(chain.id as u32, 8);
                            core::sync::atomic::fence(Ordering::SeqCst);
                            let used = ring.used_index();
                            if ring.wants_interrupt(event_idx, used, signalled) {
                                let _ = irq_tx.send(());
                            }
                            signalled = used;
                        }
                        // Ask for the next doorbell once caught up (and take what came
                        // meanwhile: the loop looks again).
                        ring.ask_for_next_kick();
                    }
                }
                drop(irq_tx);
            });
            // The interrupt handler.
            let irq = s.spawn(move || {
                let mut taken = 0u64;
                while irq_rx.recv().is_ok() {
                    queue.handle_interrupt();
                    taken += 1;
                }
                taken
            });
            let _stop_device = StopOnDrop(stop);
            let mut next = 0u64;
            let mut size = 0;
            while next < TOTAL {
                size = size % 17 + 1;
                let n = size.min(TOTAL - next);
                let posted = post_batch(queue, next, n);
                for (k, request) in (next..).zip(&posted) {
                    check_answer(k, request);
                }
                next += n;
            }
            drop(_stop_device);
            irq.join().unwrap()
        });
        assert!(interrupts > 0);
        assert_eq!(
            rig.queue.counters.completed.load(Ordering::Relaxed),
            TOTAL,
            "event_idx {event_idx}"
        );
    }
}

/// A doorbell like a trip into QEMU: the device takes what is on the ring while the doorbell
/// is being rung (the device thread acknowledges), and the ringer returns a while later.
struct SlowBell {
    count: std::sync::Arc<core::sync::atomic::AtomicUsize>,
    signal: std::sync::Mutex<(mpsc::Sender<()>, mpsc::Receiver<()>)>,
}

impl super::queue::Notify for SlowBell {
    fn notify(&self) {
        self.count.fetch_add(1, Ordering::SeqCst);
        {
            let signal = self.signal.lock().unwrap();
            let _ = signal.0.send(());
            let _ = signal.1.recv_timeout(std::time::Duration::from_secs(1));
        }
        thread::sleep(std::time::Duration::from_micros(100));
    }
}

/// Four submitters on one queue, one request at a time each, and a device that looks at the
/// ring only when its doorbell rings: requests added while another submitter is ringing ride
/// on its doorbell (the ringer rings once more for them), so there are fewer doorbells than
/// requests, and none is stranded (its waiter would time out).
#[test]
fn requests_added_during_a_doorbell_ride_on_it_and_none_is_stranded() {
    const PER_THREAD: u64 = 2_000;
    for event_idx in [false, true] {
        host::install();
        let (tx, rx) = mpsc::channel();
        let (ack_tx, ack_rx) = mpsc::channel();
        let count = std::sync::Arc::new(core::sync::atomic::AtomicUsize::new(0));
        let bell = SlowBell {
            count: count.clone(),
            signal: std::sync::Mutex::new((tx, ack_rx)),
        };
        let mut transport = FakeTransport::new(1);
        let queue =
            CryptoQueue::with_event_idx(&mut transport, 0, Box::new(bell), event_idx).unwrap();
        let mut ring = transport.ring(0);
        let stop = AtomicBool::new(false);
        thread::scope(|s| {
            let queue = &queue;
            let stop = &stop;
            s.spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    if rx.recv_timeout(std::time::Duration::from_millis(5)).is_ok() {
                        answer_all(&mut ring);
                        while ring.ask_for_next_kick() {
                            answer_all(&mut ring);
                        }
                        let _ = ack_tx.send(());
                        queue.handle_interrupt();
                    }
                }
            });
            // Stops the device thread however the submitters end (a failed one panics).
            let _stop_device = StopOnDrop(stop);
            let submitters: Vec<_> = (0..4u64)
                .map(|t| {
                    s.spawn(move || {
                        for i in 0..PER_THREAD {
                            let k = t << 32 | i;
                            let request = build(queue, k).submit().unwrap();
                            check_answer(k, &request);
                        }
                    })
                })
                .collect();
            for submitter in submitters {
                submitter.join().unwrap();
            }
        });
        let rode = queue.counters.rode_doorbell.load(Ordering::Relaxed);
        let rung = count.load(Ordering::SeqCst) as u64;
        assert!(
            rode > 0,
            "event_idx {event_idx}: no request rode a doorbell"
        );
        assert!(
            rung < 4 * PER_THREAD,
            "event_idx {event_idx}: {rung} doorbells for {} requests",
            4 * PER_THREAD
        );
        assert_eq!(
            queue.counters.completed.load(Ordering::Relaxed),
            4 * PER_THREAD
        );
    }
}
