//! Host tests of an untrusted device and of recovery: a device that stops answering, too-short
//! used lengths, duplicate completions, the barrier before the NO_NOTIFY read, the doorbell rung
//! with the queue lock free, recovery (reset before failing, fresh rings, lost sessions), the
//! ring-wrap poll (65,536 completions between two polls, "Introduce optional VirtIO ring wrap
//! counters", 2022). The property test of random
//! interleavings (submits, answers, bad entries, timeouts, drops, resets) is `lifecycle_props`.

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use super::cipher::{Cipher, CipherSession, Direction};
use super::device::CtrlMode;
use super::fake::*;
use super::lifecycle::DeviceState;
use super::queue::{CryptoQueue, Notify, QueueCore};
use super::request::Request;
use super::ring::QUEUE_SIZE;
use super::slots::StorageConfig;
use super::wire;
use crate::crypto::Session;
use crate::error::Error;
use crate::sync::platform::host;

fn rig_queue(slots: usize) -> (CryptoQueue<FakeHal>, FakeRing, FakeTransport) {
    host::install();
    let mut transport = FakeTransport::new(1);
    let queue = CryptoQueue::new(&mut transport, 0, Box::new(CountingNotify::new())).unwrap();
    queue
        .provision(StorageConfig {
            slots,
            inline_bytes: 128,
            large_blocks: 0,
            large_bytes: 0,
        })
        .unwrap();
    let ring = transport.ring(0);
    (queue, ring, transport)
}

fn submit(
    queue: &CryptoQueue<FakeHal>,
    readable: &[u8],
    writable: usize,
) -> Result<Request<FakeHal>, Error> {
    let mut b = queue.reserve(readable.len(), writable)?;
    b.push(readable)?;
    b.submit()
}

/// Fills the ring with two-descriptor requests the device never answers.
fn fill_ring(queue: &CryptoQueue<FakeHal>) -> Vec<Request<FakeHal>> {
    let held: Vec<_> = (0..QUEUE_SIZE / 2)
        .map(|_| submit(queue, &[1; 8], 8).unwrap())
        .collect();
    assert_eq!(queue.free_descriptors(), 0);
    held
}

/// Runs `f` on a thread and fails the test if it has not returned after `limit` (then `rescue`
/// releases it so the test binary does not hang).
fn returns_within<T: Send>(
    limit: Duration,
    rescue: impl FnOnce(),
    f: impl FnOnce() -> T + Send,
) -> (T, Duration) {
    thread::scope(|s| {
        let start = Instant::now();
        let h = s.spawn(f);
        while !h.is_finished() && start.elapsed() < limit {
            thread::sleep(Duration::from_millis(2));
        }
        let finished = h.is_finished();
        if !finished {
            rescue();
        }
        let value = h.join().unwrap();
        assert!(finished, "did not return within {limit:?} (hung)");
        (value, start.elapsed())
    })
}

// --- defect 1: a device that stops answering -------------------------------------------------

/// Requests time out one by one (their descriptors stay with the device), the ring fills, and
/// the next submitter gets `Timeout` within its timeout instead of sleeping forever.
#[test]
fn silent_device_full_ring_submit_times_out() {
    let (queue, _ring, _t) = rig_queue(QUEUE_SIZE);
    queue.set_timeout_ns(100_000_000);
    let held = fill_ring(&queue);
    for r in &held[..3] {
        assert_eq!(r.wait(1_000_000), Err(Error::Timeout));
    }
    drop(held); // abandoned: the device still owns them
    assert_eq!(queue.free_descriptors(), 0);
    let (result, took) = returns_within(
        Duration::from_secs(3),
        || queue.fail_all(Error::DeviceNeedsReset),
        || submit(&queue, &[2; 8], 8).err(),
    );
    assert_eq!(result, Some(Error::Timeout));
    assert!(
        took >= Duration::from_millis(100),
        "gave up early: {took:?}"
    );
    assert_eq!(
        queue.slots_in_use(),
        QUEUE_SIZE / 2,
        "abandoned memory stays held"
    );
}

/// Under `ctrl=poll` a full control ring is waited for by polling, never by sleeping under
/// the preemption-off `ctrl-poll` lock (the host platform panics on that, as the kernel does),
/// and the create gives up with `Timeout`.
#[test]
fn ctrl_poll_full_ring_times_out_without_sleeping() {
    let bell = CountingNotify::new();
    let (dev, _rings, _t, _status) = crypto_device_with(1, &bell, QUEUE_SIZE);
    dev.set_ctrl_mode(CtrlMode::Poll);
    dev.set_timeout_ns(2_000_000);
    // Destroys (not counted against the session limit) that time out, holding two
    // descriptors each.
    for i in 0..QUEUE_SIZE / 2 {
        let r = dev.destroy_cipher_session(i as u64);
        assert_eq!(r, Err(Error::Timeout), "destroy {i}");
    }
    assert_eq!(dev.control.free_descriptors(), 0);
    dev.set_timeout_ns(100_000_000);
    let (r, took) = returns_within(
        Duration::from_secs(3),
        || dev.control.fail_all(Error::DeviceNeedsReset),
        || dev.create_cipher_session(Cipher::AesCbc, Direction::Encrypt, &[1; 16]),
    );
    assert_eq!(r, Err(Error::Timeout));
    assert!(took >= Duration::from_millis(100), "{took:?}");
}

/// A submitter sleeping for ring space wakes with `DeviceReset` as soon as the device is
/// flagged for a reset, well before its timeout.
#[test]
fn ring_space_waiters_wake_with_device_reset() {
    let bell = CountingNotify::new();
    let (dev, _rings, _t, status) = crypto_device_with(1, &bell, QUEUE_SIZE);
    dev.set_timeout_ns(30_000_000_000);
    let _held = fill_ring(&dev.control);
    let (r, took) = thread::scope(|s| {
        let h = s.spawn(|| {
            let start = Instant::now();
            (submit(&dev.control, &[3; 8], 8).err(), start.elapsed())
        });
        while dev.control.counters.full_waits.load(Ordering::Relaxed) == 0 {
            thread::sleep(Duration::from_millis(1));
        }
        status.needs_reset.store(true, Ordering::SeqCst);
        assert!(dev.check_needs_reset());
        h.join().unwrap()
    });
    assert_eq!(r, Some(Error::DeviceReset));
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(dev.state(), DeviceState::NeedsReset);
    // New work is refused from memory, no status read.
    assert_eq!(
        dev.create_cipher_session(Cipher::AesCbc, Direction::Encrypt, &[1; 16]),
        Err(Error::DeviceReset)
    );
}

// --- defect 3: too-short used lengths --------------------------------------------------------

/// A used length shorter than the reply the request expects fails it; exactly the reply is fine.
#[test]
fn used_length_shorter_than_the_reply_is_malformed() {
    let (queue, mut ring, _t) = rig_queue(16);
    let mut reqs = Vec::new();
    for _ in 0..3 {
        let mut b = queue.reserve(4, 17).unwrap();
        b.push(&[0; 4]).unwrap().expect_used(17);
        reqs.push(b.submit().unwrap());
    }
    let chains = ring.pending();
    ring.complete(chains[0].id as u32, 0);
    ring.complete(chains[1].id as u32, 16);
    ring.complete(chains[2].id as u32, 17);
    assert_eq!(queue.handle_interrupt(), 3);
    assert!(matches!(
        reqs[0].outcome(),
        Some(Err(Error::MalformedCompletion { .. }))
    ));
    assert!(matches!(
        reqs[1].outcome(),
        Some(Err(Error::MalformedCompletion { .. }))
    ));
    assert_eq!(reqs[2].outcome(), Some(Ok(17)));
    assert!(!queue.is_broken());
}

/// A create-session reply written in full (OK, id 5) but returned with used length 0 is not a
/// session; a data reply one byte short (no status) is not ciphertext.
#[test]
fn create_session_with_used_length_0_and_short_data_are_refused() {
    let bell = CountingNotify::new();
    let (dev, mut rings, _t, _s) = crypto_device_with(1, &bell, 16);
    thread::scope(|s| {
        let h = s.spawn(|| dev.create_cipher_session(Cipher::AesCbc, Direction::Encrypt, &[1; 16]));
        let chain = loop {
            if let Some(c) = rings[0].pending().pop() {
                break c;
            }
            thread::sleep(Duration::from_millis(1));
        };
        let mut reply = [0u8; wire::SESSION_INPUT_LEN];
        reply[0..8].copy_from_slice(&5u64.to_le_bytes());
        chain.write(&reply);
        rings[0].complete(chain.id as u32, 0);
        dev.control.handle_interrupt();
        assert!(matches!(
            h.join().unwrap(),
            Err(Error::MalformedCompletion { .. })
        ));
    });
    assert_eq!(dev.live_sessions(), 0);
    let p = dev
        .start_cipher_request(
            &dev.data[0],
            &CipherSession {
                id: 1,
                generation: dev.generation(),
                cipher: Cipher::AesCbc,
                direction: Direction::Encrypt,
            },
            &[0; 16],
            &[7; 16],
        )
        .unwrap();
    let chain = rings[1].pending().pop().unwrap();
    let mut out = vec![0x11u8; 16];
    out.push(wire::STATUS_OK as u8);
    chain.write(&out);
    rings[1].complete(chain.id as u32, 16);
    dev.data[0].handle_interrupt();
    assert!(matches!(p.wait(), Err(Error::MalformedCompletion { .. })));
}

// --- defect 4 and the doorbell ---------------------------------------------------------------

/// Between publishing the avail index and reading the used ring's NO_NOTIFY flag there is a
/// full barrier. Modelled as x86 allows it: the driver's ring stores reach the device only at
/// the driver's full barriers (a store buffer), and the driver's NO_NOTIFY read comes before
/// the device's move. The device was busy (NO_NOTIFY set); right after the driver read that,
/// it finishes: clears NO_NOTIFY, and looks at the avail index once more before it sleeps.
/// Without the barrier it sees the old index, the driver saw NO_NOTIFY and rang nothing: the
/// request is stranded. With it, the device sees the request.
#[test]
fn full_barrier_between_publishing_avail_and_reading_no_notify() {
    use super::ring::{AFTER_NO_NOTIFY_READ, AT_FULL_BARRIER};
    use std::cell::Cell;
    use std::rc::Rc;
    let (queue, mut ring, _t) = rig_queue(8);
    ring.set_no_notify(true);
    // What the device can see of the avail index: published at the driver's full barriers.
    let visible = Rc::new(Cell::new(ring.avail_index()));
    let (memory, published) = (FakeRing::new(ring.addrs()), visible.clone());
    AT_FULL_BARRIER.with(|h| {
        *h.borrow_mut() = Some(Box::new(move || published.set(memory.avail_index())));
    });
    let seen_by_device = Rc::new(Cell::new(None));
    let (mut device, seen, shown) = (
        FakeRing::new(ring.addrs()),
        seen_by_device.clone(),
        visible.clone(),
    );
    AFTER_NO_NOTIFY_READ.with(|h| {
        *h.borrow_mut() = Some(Box::new(move || {
            device.set_no_notify(false);
            core::sync::atomic::fence(Ordering::SeqCst);
            seen.set(Some(shown.get()));
        }));
    });
    let request = submit(&queue, b"x", 1).unwrap();
    AT_FULL_BARRIER.with(|h| h.borrow_mut().take());
    let rang = queue.counters.notifies.load(Ordering::Relaxed) > 0;
    let seen = seen_by_device.get().expect("the device looked");
    assert!(
        rang || seen == ring.avail_index(),
        "stranded: no doorbell, and the device's last look saw avail index {seen}, not {}",
        ring.avail_index()
    );
    drop(request);
}

/// A doorbell that tries the queue lock: it must be free whenever the doorbell rings (kick
/// mode Unlocked), and is not under the Locked baseline (so the check can fail).
#[test]
fn doorbell_is_rung_with_the_queue_lock_free() {
    struct TryLockBell {
        queue: Arc<OnceLock<Arc<QueueCore<FakeHal>>>>,
        free: Arc<Mutex<Vec<bool>>>,
    }
    impl Notify for TryLockBell {
        fn notify(&self) {
            let q = self.queue.get().expect("queue set");
            self.free.lock().unwrap().push(q.lock_is_free());
        }
    }
    for (mode, expect_free) in [
        (super::queue::KickMode::Unlocked, true),
        (super::queue::KickMode::Locked, false),
    ] {
        host::install();
        let cell = Arc::new(OnceLock::new());
        let free = Arc::new(Mutex::new(Vec::new()));
        let mut transport = FakeTransport::new(1);
        let queue = CryptoQueue::<FakeHal>::new(
            &mut transport,
            0,
            Box::new(TryLockBell {
                queue: cell.clone(),
                free: free.clone(),
            }),
        )
        .unwrap();
        let _ = cell.set(queue.core().clone());
        queue.set_kick_mode(mode);
        for _ in 0..5 {
            submit(&queue, b"x", 1).unwrap();
        }
        let seen = free.lock().unwrap().clone();
        assert_eq!(seen, vec![expect_free; 5], "{mode:?}");
    }
}

// --- duplicate completions -------------------------------------------------------------------

/// The device returns the same id twice in one drain: the request completes once, the second
/// entry breaks the queue, nothing is completed twice.
#[test]
fn duplicate_completion_completes_once_and_breaks_the_queue() {
    let (queue, mut ring, _t) = rig_queue(8);
    let a = submit(&queue, b"a", 1).unwrap();
    let b = submit(&queue, b"b", 1).unwrap();
    let chains = ring.pending();
    ring.complete(chains[0].id as u32, 1);
    ring.complete(chains[0].id as u32, 1);
    queue.handle_interrupt();
    assert_eq!(a.outcome(), Some(Ok(1)));
    assert!(queue.is_broken());
    assert!(matches!(
        b.outcome(),
        Some(Err(Error::MalformedCompletion { .. }))
    ));
    assert_eq!(queue.counters.completed.load(Ordering::Relaxed), 1);
    assert_eq!(queue.counters.malformed.load(Ordering::Relaxed), 1);
}

/// A request failed while the device had it (queue broken), still held when the device is
/// reset: its memory is the CPU's again, and dropping it afterwards frees its slot (it used to
/// be quarantined until the next reset; found by `lifecycle_props`).
#[test]
fn request_held_across_the_reset_gets_its_memory_back() {
    let (queue, mut ring, _t) = rig_queue(4);
    let a = submit(&queue, b"held", 1).unwrap();
    let chain = ring.pending().pop().unwrap();
    ring.complete(chain.id as u32 + 100, 1); // not in flight: the queue breaks
    queue.handle_interrupt();
    assert!(matches!(
        a.outcome(),
        Some(Err(Error::MalformedCompletion { .. }))
    ));
    assert!(a.readable().is_empty(), "the device may still own it");
    assert_eq!(queue.reclaim_after_reset(), 0); // the device was reset
    assert_eq!(a.readable(), b"held");
    drop(a);
    assert_eq!(
        queue.slots_in_use(),
        0,
        "freed by the drop, not quarantined"
    );
}

// --- recovery ---------------------------------------------------------------------------------

/// NEEDS_RESET with requests in flight (one waited for, one abandoned by a timed-out waiter):
/// nothing fails before the reset; recovery resets, only then fails them with `DeviceReset`
/// and frees their memory, sets every queue up on a fresh ring, re-routes, reopens with a new
/// generation. A session from before gets `SessionLost`; a new one works.
#[test]
fn recovery_resets_before_failing_and_old_sessions_are_lost() {
    let (tx, rx) = mpsc::channel();
    let bell = CountingNotify::with_signal(tx);
    let (dev, rings, mut transport, status) = crypto_device_with(1, &bell, 64);
    dev.set_timeout_ns(5_000_000_000);
    let dev = Arc::new(dev);
    let irq = dev.clone();
    let fake = FakeCryptoDevice::spawn(rings, rx, drain_on_interrupt(irq));
    let old = Session::new(&*dev, Cipher::AesCbc, Direction::Encrypt, &[4; 16]).unwrap();
    let mut out = [0u8; 16];
    old.encrypt(&[0; 16], &[1; 16], &mut out).unwrap();
    assert_eq!(dev.live_sessions(), 1);
    drop(fake); // the device stops answering
    let old_used = transport.ring(1);
    let waited = dev
        .start_cipher_request(&dev.data[0], &old.as_cipher_session(), &[0; 16], &[2; 16])
        .unwrap();
    let abandoned = submit(&dev.data[0], &[9; 8], 8).unwrap();
    assert_eq!(abandoned.wait(1_000_000), Err(Error::Timeout));
    drop(abandoned);
    assert_eq!(dev.data[0].slots_in_use(), 2);

    status.needs_reset.store(true, Ordering::SeqCst);
    let hooked = Arc::new(AtomicUsize::new(0));
    let h = hooked.clone();
    dev.lifecycle().set_recovery_hook(Box::new(move || {
        h.fetch_add(1, Ordering::SeqCst);
    }));
    assert!(dev.check_needs_reset());
    assert!(dev.check_needs_reset());
    assert_eq!(hooked.load(Ordering::SeqCst), 1, "one recovery asked for");
    assert_eq!(
        dev.data[0].in_flight(),
        2,
        "nothing failed before the reset"
    );
    let in_flight_at_reset = AtomicUsize::new(usize::MAX);
    let generation = dev
        .recover(
            &mut transport,
            &mut FakeSteps {
                status: status.clone(),
                at_reset: &mut || {
                    in_flight_at_reset.store(dev.data[0].in_flight(), Ordering::SeqCst)
                },
            },
        )
        .unwrap();
    assert_eq!(
        in_flight_at_reset.load(Ordering::SeqCst),
        2,
        "failed only after the reset"
    );
    assert_eq!(
        *status.steps.lock().unwrap(),
        ["reset", "negotiate", "route 0", "route 1", "driver_ok"]
    );
    assert_eq!(generation, 1);
    assert_eq!(dev.state(), DeviceState::Running);
    assert!(matches!(waited.wait(), Err(Error::DeviceReset)));
    assert_eq!(
        dev.data[0].slots_in_use(),
        0,
        "memory freed after the reset"
    );
    assert_eq!(dev.live_sessions(), 0);
    let new_ring = transport.ring(1);
    assert_ne!(
        format_addrs(&old_used),
        format_addrs(&new_ring),
        "a fresh ring"
    );

    // The device is back (a new device thread on the new rings).
    let (tx, rx) = mpsc::channel();
    let _ = tx; // the old bell's channel is gone: the new thread polls every millisecond
    let irq = dev.clone();
    let rings = (0..2).map(|q| transport.ring(q)).collect();
    let _fake = FakeCryptoDevice::spawn(rings, rx, drain_on_interrupt(irq));
    assert_eq!(
        old.encrypt(&[0; 16], &[1; 16], &mut out),
        Err(Error::SessionLost)
    );
    let new = Session::new(&*dev, Cipher::AesCbc, Direction::Encrypt, &[4; 16]).unwrap();
    new.encrypt(&[0; 16], &[1; 16], &mut out).unwrap();
    assert_eq!(out, [1 ^ XOR; 16]);
    assert_eq!(old.close(), Err(Error::SessionLost));
    assert_eq!(dev.live_sessions(), 1);
    new.close().unwrap();
    assert_eq!(dev.live_sessions(), 0);
}

fn format_addrs(r: &FakeRing) -> std::string::String {
    std::format!("{:?}", r.addrs())
}

/// Create and destroy requests that time out leave the session counted (the device may have
/// done them) until a reset; the key copy is wiped when the device answers ERR at once, and
/// after a timeout only once the device was reset (before, the device still owns it).
#[test]
fn control_timeouts_keep_sessions_counted_and_keys_are_wiped_after_reset() {
    let bell = CountingNotify::new();
    let (dev, mut rings, mut transport, status) = crypto_device_with(1, &bell, 16);
    dev.set_timeout_ns(5_000_000);
    let key = [0xabu8; 16];
    assert_eq!(
        dev.create_cipher_session(Cipher::AesCbc, Direction::Encrypt, &key),
        Err(Error::Timeout)
    );
    assert_eq!(dev.live_sessions(), 1, "the device may have created it");
    let chain = rings[0].pending().pop().unwrap();
    let key_at = chain.descs[0].addr as usize + wire::CTRL_REQ_LEN;
    // SAFETY: the slot's memory, held by the queue for the device (never freed in a test).
    let key_now = || unsafe { core::slice::from_raw_parts(key_at as *const u8, 16).to_vec() };
    assert_eq!(
        key_now(),
        key,
        "the device still owns the request: untouched"
    );

    // Answered ERR at once: the key is wiped when the request is released.
    dev.set_timeout_ns(5_000_000_000);
    thread::scope(|s| {
        let h = s
            .spawn(|| dev.create_cipher_session(Cipher::AesCbc, Direction::Encrypt, &REJECTED_KEY));
        let c = loop {
            if let Some(c) = rings[0].pending().pop() {
                break c;
            }
            thread::sleep(Duration::from_millis(1));
        };
        let at = c.descs[0].addr as usize + wire::CTRL_REQ_LEN;
        let mut reply = [0u8; wire::SESSION_INPUT_LEN];
        reply[8..12].copy_from_slice(&wire::STATUS_ERR.to_le_bytes());
        c.write(&reply);
        rings[0].complete(c.id as u32, wire::SESSION_INPUT_LEN as u32);
        dev.control.handle_interrupt();
        assert_eq!(h.join().unwrap(), Err(Error::DeviceError));
        // SAFETY: as above.
        let bytes = unsafe { core::slice::from_raw_parts(at as *const u8, 16) };
        assert_eq!(bytes, [0; 16], "key wiped after the error");
    });
    assert_eq!(dev.live_sessions(), 1);

    status.needs_reset.store(true, Ordering::SeqCst);
    dev.check_needs_reset();
    dev.recover(
        &mut transport,
        &mut FakeSteps {
            status,
            at_reset: &mut || {},
        },
    )
    .unwrap();
    assert_eq!(key_now(), [0; 16], "key wiped once the device was reset");
    assert_eq!(dev.live_sessions(), 0, "exact again after the reset");
}

// --- the 16-bit wrap under a poller --------------------------------------------------------------------------

/// The fake device completes exactly 65,536 requests between two polls of a poller: the 16-bit
/// used index is back where it was (a poller comparing it would see nothing new), yet the
/// poller sees every one of them: completions are found by token and counted in a 64-bit
/// counter, and each request's completion reaches its own handler exactly once.
#[test]
fn exactly_65536_completions_between_two_polls_are_all_seen() {
    use super::request::{Finished, OnComplete};
    struct Tags(Mutex<Vec<u32>>);
    impl OnComplete<FakeHal> for Tags {
        fn on_complete(&self, finished: Finished<FakeHal>) {
            let request = Request::from(finished);
            assert_eq!(request.outcome(), Some(Ok(4)));
            let tag = u32::from_le_bytes(request.readable()[..4].try_into().unwrap());
            self.0.lock().unwrap().push(tag);
        }
    }
    struct Poller {
        last: u64,
    }
    impl Poller {
        /// New completions since the last poll.
        fn poll(&mut self, queue: &CryptoQueue<FakeHal>) -> u64 {
            queue.handle_interrupt();
            let now = queue.counters.completed.load(Ordering::Acquire);
            let new = now - self.last;
            self.last = now;
            new
        }
    }
    let (queue, mut ring, _t) = rig_queue(1024);
    let tags = Arc::new(Tags(Mutex::new(Vec::new())));
    let mut poller = Poller { last: 0 };
    assert_eq!(poller.poll(&queue), 0);
    let used_before = ring.used_index();
    const TOTAL: u32 = 65_536;
    let mut next = 0u32;
    while next < TOTAL {
        for tag in next..next + 512 {
            let mut b = queue.reserve(4, 4).unwrap();
            b.push(&tag.to_le_bytes()).unwrap();
            b.submit_with(tags.clone()).unwrap();
        }
        next += 512;
        for chain in ring.pending() {
            ring.complete(chain.id as u32, 4);
        }
        if next < TOTAL {
            // An interrupt, not the poller, recycles the ring in between.
            queue.handle_interrupt();
        }
    }
    assert_eq!(
        ring.used_index(),
        used_before,
        "the used index wrapped to where it was"
    );
    assert_eq!(
        poller.poll(&queue),
        TOTAL as u64,
        "the poller sees every completion"
    );
    let mut seen = tags.0.lock().unwrap().clone();
    seen.sort_unstable();
    assert_eq!(seen, (0..TOTAL).collect::<Vec<_>>(), "each request once");
    assert_eq!(queue.slots_in_use(), 0);
}

/// A request that finds its queue closed gets `DeviceReset` while the device is being recovered
/// and also if the recovery finished in between (the device was reset: retry), `DeviceNeedsReset`
/// only when recovery failed or there is none.
#[test]
fn a_closed_queue_says_reset_unless_recovery_failed() {
    let bell = CountingNotify::new();
    let (dev, _rings, _transport, _status) = crypto_device_with(1, &bell, 8);
    let queue = &dev.data[0];
    queue.close();
    dev.lifecycle().set(DeviceState::Resetting);
    assert_eq!(queue.closed_error(), Error::DeviceReset);
    // Reopened by the recovery task between the caller's check and this one.
    dev.lifecycle().set(DeviceState::Running);
    assert_eq!(queue.closed_error(), Error::DeviceReset);
    dev.lifecycle().set(DeviceState::Failed);
    assert_eq!(queue.closed_error(), Error::DeviceNeedsReset);
    // A queue without a device lifecycle cannot be recovered.
    let (bare, _ring, _t) = rig_queue(4);
    bare.close();
    assert_eq!(bare.closed_error(), Error::DeviceNeedsReset);
}

/// A destroy built before a reset and posted after it (its task was preempted while a whole
/// recovery ran) is refused unsent: the reset dropped the session, and the device numbers
/// sessions from 0 again, so the id may now name another caller's live session.
#[test]
fn a_destroy_built_before_a_reset_is_refused_after_it() {
    let bell = CountingNotify::new();
    let (dev, _rings, mut transport, status) = crypto_device_with(1, &bell, 8);
    dev.set_timeout_ns(200_000_000);
    let stale = dev
        .build_destroy(
            (&dev.control).into(),
            super::session::SessionKind::Cipher,
            0,
            dev.generation(),
        )
        .unwrap();
    dev.request_recovery();
    dev.recover(
        &mut transport,
        &mut FakeSteps {
            status,
            at_reset: &mut || {},
        },
    )
    .unwrap();
    let mut ring = transport.ring(0);
    assert_eq!(
        dev.control_round_trip(stale).err(),
        Some(Error::SessionLost)
    );
    assert!(
        ring.pending().is_empty(),
        "the destroy from before the reset reached the device"
    );
}

/// A protocol violation found by one queue's drain (a used id not in flight) closes every queue
/// of the device at once, not only the one that saw it: builders on the others are refused
/// from then on instead of being admitted until the recovery task runs.
#[test]
fn a_protocol_violation_closes_every_queue_of_the_device() {
    let bell = CountingNotify::new();
    let (dev, mut rings, _transport, _status) = crypto_device_with(2, &bell, 8);
    rings[1].complete(7, 1); // never posted
    dev.data[0].handle_interrupt();
    assert_eq!(dev.state(), DeviceState::NeedsReset);
    assert!(dev.control.is_broken(), "control queue still open");
    assert!(dev.data[1].is_broken(), "the other data queue still open");
    assert_eq!(
        submit(&dev.data[1], &[1; 8], 8).err(),
        Some(Error::DeviceReset)
    );
}

/// A NEEDS_RESET noticed while a recovery runs (after its reset) is not dropped: the device
/// ends that recovery needing another, its queues stay closed, and the next one brings it back.
#[test]
fn needs_reset_noticed_during_a_recovery_asks_for_another() {
    let bell = CountingNotify::new();
    let (dev, _rings, mut transport, status) = crypto_device_with(1, &bell, 8);
    let asked = Arc::new(AtomicUsize::new(0));
    let a = asked.clone();
    dev.lifecycle().set_recovery_hook(Box::new(move || {
        a.fetch_add(1, Ordering::SeqCst);
    }));
    dev.request_recovery();
    assert_eq!(asked.load(Ordering::SeqCst), 1);
    let recover = |at_reset: &mut dyn FnMut(), transport: &mut FakeTransport| {
        dev.recover(
            transport,
            &mut FakeSteps {
                status: status.clone(),
                at_reset,
            },
        )
    };
    // The device flags NEEDS_RESET again right after it was reset; a timeout notices it.
    recover(
        &mut || {
            status.needs_reset.store(true, Ordering::SeqCst);
            assert!(dev.check_needs_reset());
        },
        &mut transport,
    )
    .unwrap();
    assert_eq!(
        dev.state(),
        DeviceState::NeedsReset,
        "the second request was dropped"
    );
    assert_eq!(
        asked.load(Ordering::SeqCst),
        2,
        "the recovery task was not woken"
    );
    assert!(dev.data[0].is_broken());
    recover(&mut || {}, &mut transport).unwrap();
    assert_eq!(dev.state(), DeviceState::Running);
    assert!(!dev.data[0].is_broken());
}

/// `fail_all` (a queue that broke, in interrupt context) takes a request off the ring before
/// the device is reset and completes it after the recovery reclaimed the memory the device
/// held: the request must not be left marked as the device's, which would quarantine its slot
/// until the next reset.
#[test]
fn a_request_failed_across_a_recovery_is_not_quarantined() {
    let bell = CountingNotify::new();
    let (dev, mut rings, mut transport, status) = crypto_device_with(1, &bell, 8);
    let request = submit(&dev.data[0], &[1; 8], 8).unwrap();
    assert_eq!(rings[1].pending().len(), 1);
    let dev = Arc::new(dev);
    let (d, st) = (dev.clone(), status.clone());
    let transport_ptr: *mut FakeTransport = &mut transport;
    let transport_addr = transport_ptr as usize;
    super::queue::BETWEEN_DETACH_AND_FAIL.with(|h| {
        *h.borrow_mut() = Some(Box::new(move || {
            d.request_recovery();
            // SAFETY (test): the transport outlives this call, made while the test thread is
            // inside `fail_all` and touches it nowhere else.
            let transport = unsafe { &mut *(transport_addr as *mut FakeTransport) };
            d.recover(
                transport,
                &mut FakeSteps {
                    status: st,
                    at_reset: &mut || {},
                },
            )
            .unwrap();
        }));
    });
    dev.data[0].fail_all(Error::DeviceNeedsReset);
    assert_eq!(dev.state(), DeviceState::Running);
    assert_eq!(request.outcome(), Some(Err(Error::DeviceNeedsReset)));
    assert_eq!(
        request.readable(),
        &[1; 8],
        "shown as the device's after its reset"
    );
    drop(request);
    assert_eq!(dev.data[0].slots_in_use(), 0, "the slot stayed quarantined");
}
