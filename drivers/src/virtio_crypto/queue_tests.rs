//! Host tests of `CryptoQueue` (and, through the fake device thread, of `CryptoDevice` and
//! `Session`) against real virtio-drivers split rings, with the device side played by
//! `fake::FakeRing` on the ring memory itself.

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use super::cipher::{Cipher, CipherSession, Direction};
use super::device::{CryptoDevice, CtrlMode};
use super::fake::*;
use super::queue::{CryptoQueue, KickMode};
use super::request::Request;
use super::ring::QUEUE_SIZE;
use super::slots::StorageConfig;
use super::wire;
use crate::crypto::Session;
use crate::error::Error;
use crate::sync::platform::host;

/// One queue and the device's view of its ring (without EVENT_IDX).
fn rig() -> QueueRig {
    queue_rig(false, CountingNotify::new())
}

/// A request's shape: readable parts (concatenated, as the engine posts them) and writable sizes.
struct Bufs {
    readable: Vec<u8>,
    writable: usize,
}

fn bufs(readable: &[&[u8]], writable: &[usize]) -> Bufs {
    Bufs {
        readable: readable.concat(),
        writable: writable.iter().sum(),
    }
}

/// Builds and posts a request of shape `b` on `queue`.
fn submit(queue: &CryptoQueue<FakeHal>, b: Bufs) -> Result<Request<FakeHal>, Error> {
    let mut builder = queue.reserve(b.readable.len(), b.writable)?;
    builder.push(&b.readable)?;
    builder.submit()
}

/// What a finished request gives back: the used length or error, and its bytes.
struct Finished {
    result: Result<u32, Error>,
    readable: Vec<u8>,
    writable: Vec<u8>,
}

/// Polls `cond` for up to 5 s (for states another thread reaches).
fn eventually(what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "timed out waiting for {what}"
        );
        thread::sleep(Duration::from_millis(1));
    }
}

/// Waits for a request, failing the test instead of hanging if it never completes.
fn finished(c: &Request<FakeHal>) -> Finished {
    let result = c.wait(5_000_000_000);
    assert_ne!(result, Err(Error::Timeout), "request never completed");
    Finished {
        result,
        readable: c.readable().to_vec(),
        writable: c.writable().to_vec(),
    }
}

/// Fails every request of the queue, and so wakes its sleepers, when dropped during a panic.
struct FailOnPanic<'a>(&'a CryptoQueue<FakeHal>);

impl Drop for FailOnPanic<'_> {
    fn drop(&mut self) {
        if thread::panicking() {
            self.0.fail_all(Error::DeviceNeedsReset);
        }
    }
}

fn is_malformed(r: &Result<u32, Error>) -> bool {
    matches!(r, Err(Error::MalformedCompletion { .. }))
}

// --- request layout -------------------------------------------------------------------------

/// `start_cipher_request` posts header, iv, src (device-readable) then dst, status
/// (device-writable), one descriptor each, chained in that order, with the header bytes of the
/// legacy layout; the device's answer comes back as the output.
#[test]
fn cipher_request_descriptors_are_header_iv_src_then_dst_status() {
    let bell = CountingNotify::new();
    let (dev, mut rings) = crypto_device(1, &bell);
    let session = 0x1122_3344_5566_7788;
    let iv: Vec<u8> = (0..16).collect();
    let src: Vec<u8> = (100..132).collect();
    let pending = dev
        .start_cipher_request(
            &dev.data[0],
            &CipherSession {
                id: session,
                generation: dev.generation(),
                cipher: Cipher::AesCbc,
                direction: Direction::Encrypt,
            },
            &iv,
            &src,
        )
        .unwrap();

    let chains = rings[1].pending();
    assert_eq!(chains.len(), 1);
    assert!(
        rings[0].pending().is_empty(),
        "nothing on the control queue"
    );
    let chain = &chains[0];
    let shape: Vec<(u32, u16)> = chain.descs.iter().map(|d| (d.len, d.flags)).collect();
    let (n, w) = (VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE);
    // Contiguous in the request's slot: header|iv|src in one readable descriptor, dst|status in
    // one writable one.
    assert_eq!(shape, [(72 + 16 + 32, n), (32 + 1, w)]);

    let readable = chain.readable();
    let hdr = &readable[0][..wire::DATA_HDR_LEN];
    let mut expected = [0u8; wire::DATA_HDR_LEN];
    expected[0..4].copy_from_slice(&wire::CIPHER_ENCRYPT.to_le_bytes());
    expected[4..8].copy_from_slice(&wire::CIPHER_AES_CBC.to_le_bytes());
    expected[8..16].copy_from_slice(&session.to_le_bytes());
    expected[24..28].copy_from_slice(&16u32.to_le_bytes()); // iv_len
    expected[28..32].copy_from_slice(&32u32.to_le_bytes()); // src_len
    expected[32..36].copy_from_slice(&32u32.to_le_bytes()); // dst_len
    expected[64..68].copy_from_slice(&wire::SYM_OP_CIPHER.to_le_bytes());
    assert_eq!(hdr[..], expected[..]);
    assert_eq!(readable[0][72..88], iv[..]);
    assert_eq!(readable[0][88..], src[..]);

    let answer: Vec<u8> = src
        .iter()
        .map(|b| b ^ XOR)
        .chain([wire::STATUS_OK as u8])
        .collect();
    assert_eq!(chain.write(&answer), 33);
    rings[1].complete(chain.id as u32, 33);
    assert_eq!(dev.data[0].handle_interrupt(), 1);
    assert_eq!(pending.wait().unwrap()[..], answer[..32]);

    // ECB has no IV: no IV descriptor either.
    let pending = dev
        .start_cipher_request(
            &dev.data[0],
            &CipherSession {
                id: 7,
                generation: dev.generation(),
                cipher: Cipher::AesEcb,
                direction: Direction::Decrypt,
            },
            &[],
            &src[..16],
        )
        .unwrap();
    let chain = rings[1].pending().pop().unwrap();
    let lens: Vec<u32> = chain.descs.iter().map(|d| d.len).collect();
    assert_eq!(lens, [72 + 16, 16 + 1]);
    let hdr = &chain.readable()[0];
    assert_eq!(hdr[0..4], wire::CIPHER_DECRYPT.to_le_bytes());
    assert_eq!(hdr[24..28], 0u32.to_le_bytes());
    chain.write(&[0; 17]);
    rings[1].complete(chain.id as u32, 17);
    dev.data[0].handle_interrupt();
    assert_eq!(pending.wait().unwrap()[..], [0; 16]);
}

// --- completion by token --------------------------------------------------------------------

/// Completions are matched by head descriptor, not by ring position: answering out of order
/// wakes exactly the request answered, with its own buffers and used length.
#[test]
fn out_of_order_completions_reach_their_own_waiters() {
    let mut rig = rig();
    let completions: Vec<_> = (0..4u8)
        .map(|i| submit(&rig.queue, bufs(&[&[i; 8]], &[4 + i as usize])).unwrap())
        .collect();
    let chains = rig.ring.pending();
    assert_eq!(chains.len(), 4);
    let mut answered = Vec::new();
    for order in [2usize, 0, 3, 1] {
        let chain = &chains[order];
        let tag = chain.readable()[0][0]; // which request this is, as the device sees it
        assert_eq!(tag as usize, order);
        assert_eq!(chain.writable_len(), 4 + tag as u32);
        chain.write(&[0xa0 | tag; 2]);
        rig.ring.complete(chain.id as u32, 2 + tag as u32); // a used len unique to the request
        assert_eq!(rig.queue.handle_interrupt(), 1);
        answered.push(order);
        for (i, c) in completions.iter().enumerate() {
            assert_eq!(
                c.is_done(),
                answered.contains(&i),
                "request {i} after answering {answered:?}"
            );
        }
    }
    for (i, c) in completions.into_iter().enumerate() {
        let Finished {
            result,
            readable,
            writable,
        } = finished(&c);
        assert_eq!(result, Ok(2 + i as u32));
        assert_eq!(readable, [i as u8; 8]);
        let mut out = vec![0u8; 4 + i];
        out[..2].fill(0xa0 | i as u8);
        assert_eq!(writable, out);
    }
    assert_eq!(rig.queue.in_flight(), 0);
    assert_eq!(rig.queue.free_descriptors(), QUEUE_SIZE);
    assert!(!rig.queue.is_broken());
}

// --- an untrusted device --------------------------------------------------------------------

/// A used id that is not a request in flight breaks the queue: counted once, entries before it
/// in the same drain still complete normally, every other request in flight fails with
/// `MalformedCompletion` but its memory is not handed back (its `Request` shows no bytes, and
/// its slot stays taken after the `Request` is dropped) until a reset, later submits get
/// `DeviceNeedsReset`, nothing panics.
#[test]
fn used_id_not_in_flight_breaks_the_queue() {
    // Each case: the bad id, given the three chains (A completed first, then B, then the bad id).
    type BadId = fn(&[Chain]) -> u32;
    let cases: [(&str, BadId); 5] = [
        ("already completed", |c| c[0].id as u32),
        ("never submitted", |c| {
            (c.iter().map(|c| c.id).max().unwrap() + 100) as u32
        }),
        ("inside a chain, not its head", |c| c[2].id as u32 + 1),
        ("beyond the ring", |_| QUEUE_SIZE as u32),
        ("u32::MAX", |_| u32::MAX),
    ];
    for (what, bad_id) in cases {
        let mut rig = rig();
        let a = submit(&rig.queue, bufs(&[b"a"], &[1])).unwrap();
        let b = submit(&rig.queue, bufs(&[b"b"], &[1])).unwrap();
        let c = submit(&rig.queue, bufs(&[b"c"], &[1])).unwrap();
        let d = submit(&rig.queue, bufs(&[b"d"], &[1])).unwrap();
        let chains = rig.ring.pending();
        rig.ring.complete(chains[0].id as u32, 1);
        assert_eq!(rig.queue.handle_interrupt(), 1, "{what}");
        assert_eq!(finished(&a).result, Ok(1), "{what}");

        rig.ring.complete(chains[1].id as u32, 1); // valid, ahead of the bad one in the same drain
        rig.ring.complete(bad_id(&chains), 1);
        rig.queue.handle_interrupt();
        assert_eq!(
            rig.queue.counters.malformed.load(Ordering::Relaxed),
            1,
            "{what}"
        );
        assert!(rig.queue.is_broken(), "{what}");
        assert_eq!(
            finished(&b).result,
            Ok(1),
            "{what}: B was used before the bad entry"
        );
        drop((a, b));
        for (name, x) in [("C", c), ("D", d)] {
            let Finished {
                result,
                readable,
                writable,
            } = finished(&x);
            assert!(is_malformed(&result), "{what}: {name} got {result:?}");
            assert!(
                readable.is_empty() && writable.is_empty(),
                "{what}: {name}'s buffers, which the device may still write, were handed back"
            );
        }
        // C and D dropped: their memory stays with the queue, the device was never reset.
        assert_eq!(
            rig.queue.slots_in_use(),
            2,
            "{what}: memory held for the device"
        );
        // The device writes into C's buffer after the failure: nobody else has that memory.
        chains[2].write(&[0xcc]);
        assert_eq!(rig.queue.in_flight(), 0, "{what}");
        assert!(
            matches!(
                submit(&rig.queue, bufs(&[b"e"], &[1])),
                Err(Error::DeviceNeedsReset)
            ),
            "{what}"
        );
        assert_eq!(
            rig.queue.slots_in_use(),
            2,
            "{what}: still held after a refused submit"
        );
        // Only a reset gives the memory back.
        assert_eq!(rig.queue.reclaim_after_reset(), 2, "{what}");
        assert_eq!(rig.queue.slots_in_use(), 0, "{what}");
    }
}

/// A used length longer than the writable buffers fails that request only; equal is fine.
#[test]
fn used_length_beyond_writable_buffers_fails_only_that_request() {
    let mut rig = rig();
    let long = submit(&rig.queue, bufs(&[&[1; 72]], &[16, 1])).unwrap();
    let exact = submit(&rig.queue, bufs(&[&[2; 72]], &[16, 1])).unwrap();
    let other = submit(&rig.queue, bufs(&[&[3; 72]], &[4])).unwrap();
    let chains = rig.ring.pending();
    rig.ring.complete(chains[0].id as u32, 18);
    rig.ring.complete(chains[1].id as u32, 17);
    rig.ring.complete(chains[2].id as u32, 0);
    assert_eq!(rig.queue.handle_interrupt(), 3);
    let Finished {
        result, readable, ..
    } = finished(&long);
    assert!(is_malformed(&result), "{result:?}");
    assert_eq!(readable, [1; 72]);
    assert_eq!(finished(&exact).result, Ok(17));
    assert_eq!(finished(&other).result, Ok(0));
    assert_eq!(rig.queue.counters.malformed.load(Ordering::Relaxed), 1);
    assert!(!rig.queue.is_broken());
    assert_eq!(
        rig.queue.free_descriptors(),
        QUEUE_SIZE,
        "the bad request's descriptors are recycled"
    );
    submit(&rig.queue, bufs(&[b"x"], &[1])).expect("queue still usable");
}

/// The used element's id is a le32, but virtio-drivers' `peek_used` returns `id as u16`: id
/// 0x1_0000 + t must not pass for token t (queue.rs reads the full id from the used ring).
#[test]
fn used_id_above_u16_range_breaks_the_queue() {
    let mut rig = rig();
    let a = submit(&rig.queue, bufs(&[b"a"], &[1])).unwrap();
    let chain = rig.ring.pending().pop().unwrap();
    rig.ring.complete(0x1_0000 | chain.id as u32, 1);
    rig.queue.handle_interrupt();
    assert!(rig.queue.is_broken());
    assert!(is_malformed(&finished(&a).result));
}

// --- flow control ---------------------------------------------------------------------------

/// A full ring puts the submitter to sleep; freeing fewer descriptors than it needs keeps it
/// asleep, freeing enough lets it post its request.
#[test]
fn full_ring_submitter_sleeps_until_enough_space() {
    let mut rig = rig();
    // Two one-descriptor requests (writable only), then two-descriptor ones up to a full ring.
    let posted: Vec<_> = (0..2)
        .map(|_| submit(&rig.queue, bufs(&[], &[8])).unwrap())
        .chain((0..QUEUE_SIZE / 2 - 1).map(|_| submit(&rig.queue, bufs(&[&[0; 8]], &[8])).unwrap()))
        .collect();
    assert_eq!(rig.queue.free_descriptors(), 0);
    let chains = rig.ring.pending();
    thread::scope(|s| {
        // If an assertion fails, release the sleeper so the scope's join cannot hang.
        let _release = FailOnPanic(&rig.queue);
        // Needs two descriptors.
        let late = s.spawn(|| submit(&rig.queue, bufs(&[b"late", b"!"], &[4])));
        eventually("the submitter to find the ring full", || {
            rig.queue.counters.full_waits.load(Ordering::Relaxed) == 1
        });
        thread::sleep(Duration::from_millis(20));
        assert!(!late.is_finished(), "submit returned on a full ring");

        rig.ring.complete(chains[0].id as u32, 8);
        assert_eq!(rig.queue.handle_interrupt(), 1);
        thread::sleep(Duration::from_millis(20));
        assert!(!late.is_finished(), "1 free descriptor is not enough for 2");
        assert!(rig.ring.pending().is_empty());

        rig.ring.complete(chains[1].id as u32, 8);
        assert_eq!(rig.queue.handle_interrupt(), 1);
        eventually("the drain to wake the submitter", || late.is_finished());
        let late = late.join().unwrap().expect("submit after space was freed");
        let chain = rig
            .ring
            .pending()
            .pop()
            .expect("the late request reached the ring");
        assert_eq!(chain.readable(), [b"late!".to_vec()]);
        assert_eq!(rig.queue.counters.full_waits.load(Ordering::Relaxed), 1);
        rig.ring.complete(chain.id as u32, 4);
        rig.queue.handle_interrupt();
        assert_eq!(finished(&late).result, Ok(4));
    });
    assert!(posted[0].is_done() && posted[1].is_done() && !posted[2].is_done());
}

/// More than three wraps of the 16-bit ring indices through one queue, in batches of varying
/// size answered in reverse: every request gets exactly its own answer, once.
#[test]
fn three_wraps_of_16_bit_indices_lose_and_duplicate_nothing() {
    const TOTAL: u64 = 3 * 65536 + 4321;
    let mut rig = rig();
    let mut next = 0u64;
    let mut batch = 0;
    while next < TOTAL {
        batch = batch % 13 + 1;
        let n = batch.min(TOTAL - next);
        let posted: Vec<_> = (next..next + n)
            .map(|k| {
                (
                    k,
                    submit(&rig.queue, bufs(&[&k.to_le_bytes()], &[8])).unwrap(),
                )
            })
            .collect();
        let chains = rig.ring.pending();
        assert_eq!(chains.len() as u64, n);
        for chain in chains.iter().rev() {
            let k = u64::from_le_bytes(chain.readable()[0][..].try_into().unwrap());
            chain.write(&(!k).to_le_bytes());
            rig.ring.complete(chain.id as u32, 8);
        }
        assert_eq!(rig.queue.handle_interrupt() as u64, n);
        for (k, completion) in posted {
            let Finished {
                result, writable, ..
            } = finished(&completion);
            assert_eq!(result, Ok(8));
            assert_eq!(writable, (!k).to_le_bytes(), "request {k}");
        }
        next += n;
    }
    assert_eq!(rig.ring.taken(), TOTAL);
    let c = &rig.queue.counters;
    assert_eq!(c.submitted.load(Ordering::Relaxed), TOTAL);
    assert_eq!(c.completed.load(Ordering::Relaxed), TOTAL);
    assert_eq!(c.malformed.load(Ordering::Relaxed), 0);
    assert_eq!(rig.queue.in_flight(), 0);
    assert_eq!(rig.queue.free_descriptors(), QUEUE_SIZE);
    assert!(rig.queue.handle_interrupt() == 0 && rig.ring.pending().is_empty());
}

/// Both kick modes ring the doorbell once per submit while the device wants notifications, and
/// never while it has set VRING_USED_F_NO_NOTIFY.
#[test]
fn kick_modes_respect_used_no_notify() {
    for mode in [KickMode::Unlocked, KickMode::Locked] {
        for suppressed in [false, true] {
            let mut rig = rig();
            rig.queue.set_kick_mode(mode);
            assert_eq!(rig.queue.kick_mode(), mode);
            rig.ring.set_no_notify(suppressed);
            for _ in 0..3 {
                submit(&rig.queue, bufs(&[b"x"], &[1])).unwrap();
            }
            let expected = if suppressed { 0 } else { 3 };
            assert_eq!(
                rig.bell.count(),
                expected,
                "{mode:?}, NO_NOTIFY={suppressed}"
            );
            assert_eq!(
                rig.queue.counters.notifies.load(Ordering::Relaxed),
                expected as u64
            );
            assert_eq!(
                rig.ring.pending().len(),
                3,
                "requests are posted either way"
            );
        }
    }
}

/// A submit racing `fail_all` is either refused with `DeviceNeedsReset` or failed by it, never
/// stranded in the broken queue (submit checks `broken` under the queue lock). The window is
/// widened by holding the lock in `FakeHal::share`; which of the two spinners gets the lock next
/// is up to the hardware, so this repeats the race.
#[test]
fn submit_racing_fail_all_is_refused_or_failed() {
    for round in 0..100 {
        let rig = rig();
        let (entered_tx, entered_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        thread::scope(|s| {
            let holder = s.spawn(|| {
                on_next_share(move || {
                    entered_tx.send(()).unwrap();
                    release_rx.recv().unwrap();
                });
                submit(&rig.queue, bufs(&[b"holder"], &[1]))
            });
            entered_rx.recv().unwrap(); // `holder` is inside submit with the queue lock held
            let racer = s.spawn(|| submit(&rig.queue, bufs(&[b"racer"], &[1])));
            thread::sleep(Duration::from_millis(5)); // racer passed the broken check, spins
            let failer = s.spawn(|| rig.queue.fail_all(Error::DeviceNeedsReset));
            thread::sleep(Duration::from_millis(5)); // broken is set, failer spins
            release_tx.send(()).unwrap();
            failer.join().unwrap();
            let holder = holder.join().unwrap().unwrap();
            assert_eq!(finished(&holder).result, Err(Error::DeviceNeedsReset));
            match racer.join().unwrap() {
                Err(Error::DeviceNeedsReset) => {}
                Err(e) => panic!("round {round}: {e:?}"),
                Ok(c) => assert!(
                    c.is_done(),
                    "round {round}: request left in flight on a broken queue"
                ),
            }
        });
    }
}

// --- end to end through CryptoDevice and Session --------------------------------------------

/// A device (control + `data_queues` data queues) answered by the fake device thread, whose
/// interrupts drain the queue they name; the control queue gets none in `CtrlMode::Poll`, so
/// only the driver's polling can complete control requests then.
fn live_device(data_queues: u16) -> (Arc<CryptoDevice<FakeHal>>, FakeCryptoDevice, CountingNotify) {
    let (tx, rx) = mpsc::channel();
    let bell = CountingNotify::with_signal(tx);
    let (dev, rings) = crypto_device(data_queues, &bell);
    dev.set_timeout_ns(5_000_000_000);
    let dev = Arc::new(dev);
    let irq_dev = dev.clone();
    let fake = FakeCryptoDevice::spawn(rings, rx, move |q| {
        if q == 0 {
            if irq_dev.ctrl_mode() == CtrlMode::Sleep {
                irq_dev.control.handle_interrupt();
            }
        } else {
            irq_dev.data[q as usize - 1].handle_interrupt();
        }
    });
    (dev, fake, bell)
}

/// Session create / encrypt / close through the driver and a device thread, in both control
/// modes, plus the status mappings: INVSESS on data and ERR on destroy are `UnknownSession`,
/// NOTSUPP and ERR on create are `NotSupported` and `DeviceError`, and failed creates do not
/// leak a session slot.
#[test]
fn sessions_end_to_end_with_device_thread() {
    let (dev, _fake, bell) = live_device(2);
    let key = [7u8; 16];
    let iv = [9u8; 16];
    let src: Vec<u8> = (0..64).collect();
    let xored: Vec<u8> = src.iter().map(|b| b ^ XOR).collect();
    for mode in [CtrlMode::Sleep, CtrlMode::Poll] {
        dev.set_ctrl_mode(mode);
        let s = Session::new(&*dev, Cipher::AesCbc, Direction::Encrypt, &key).unwrap();
        assert_eq!(dev.live_sessions(), 1);
        let mut dst = vec![0u8; 64];
        s.encrypt(&iv, &src, &mut dst).unwrap();
        assert_eq!(dst, xored, "{mode:?}");
        let mut data = src.clone();
        s.encrypt_in_place(&iv, &mut data).unwrap();
        assert_eq!(data, xored);
        assert!(matches!(
            s.decrypt(&iv, &src, &mut dst),
            Err(Error::WrongDirection { .. })
        ));
        let id = s.id();
        s.close().unwrap();
        assert_eq!(dev.live_sessions(), 0);

        // The device no longer knows `id`.
        let r = dev.cipher_request(
            &dev.data[1],
            &CipherSession {
                id,
                generation: dev.generation(),
                cipher: Cipher::AesCbc,
                direction: Direction::Encrypt,
            },
            &iv,
            &src,
        );
        assert_eq!(r, Err(Error::UnknownSession), "{mode:?}: INVSESS");
        assert_eq!(
            dev.destroy_cipher_session(id),
            Err(Error::UnknownSession),
            "{mode:?}: ERR on destroy"
        );

        assert_eq!(
            Session::new(&*dev, Cipher::AesCbc, Direction::Decrypt, &REJECTED_KEY).err(),
            Some(Error::DeviceError),
            "{mode:?}: ERR on create"
        );
        dev.set_allow_unadvertised(true);
        assert!(matches!(
            Session::new(&*dev, Cipher::AesEcb, Direction::Encrypt, &key),
            Err(Error::NotSupported { .. })
        ));
        dev.set_allow_unadvertised(false);
        assert_eq!(
            dev.live_sessions(),
            0,
            "{mode:?}: failed creates release their slot"
        );
    }
    // Poll mode really polled: its control requests completed without control interrupts.
    assert!(dev.control.counters.completed.load(Ordering::Relaxed) >= 10);
    assert!(bell.count() > 0);
    assert!(!dev.control.is_broken() && dev.data.iter().all(|q| !q.is_broken()));
}

/// Several threads with their own sessions keep many requests in flight on two data queues at
/// once; every output matches its input.
#[test]
fn concurrent_sessions_get_their_own_results() {
    let (dev, _fake, _bell) = live_device(2);
    thread::scope(|s| {
        for t in 0..4u8 {
            let dev = &*dev;
            s.spawn(move || {
                let session =
                    Session::new(dev, Cipher::AesCbc, Direction::Encrypt, &[t; 32]).unwrap();
                let queue = &dev.data[t as usize % 2];
                for round in 0..50u32 {
                    let inputs: Vec<Vec<u8>> = (0..8u32)
                        .map(|i| {
                            (0..48)
                                .map(|j| (t as u32 * 7 + round * 3 + i + j) as u8)
                                .collect()
                        })
                        .collect();
                    let pending: Vec<_> = inputs
                        .iter()
                        .map(|src| {
                            dev.start_cipher_request(
                                queue,
                                &session.as_cipher_session(),
                                &[0; 16],
                                src,
                            )
                            .unwrap()
                        })
                        .collect();
                    for (src, p) in inputs.iter().zip(pending) {
                        let out = p.wait().unwrap();
                        assert!(
                            out.iter().zip(src).all(|(o, s)| *o == s ^ XOR),
                            "thread {t} round {round}"
                        );
                    }
                }
                session.close().unwrap();
            });
        }
    });
    assert_eq!(dev.live_sessions(), 0);
    let completed: u64 = dev
        .data
        .iter()
        .map(|q| q.counters.completed.load(Ordering::Relaxed))
        .sum();
    assert_eq!(completed, 4 * 50 * 8);
}

// --- the request engine: slots and completion handlers ---------------------------------------

/// A finished request's slot (and so its memory) is reused by the next request; a request dropped
/// while in flight keeps its slot until the device gives it back; a failed-while-posted one
/// stays quarantined until `reclaim_after_reset`.
#[test]
fn slots_are_reused_and_held_while_the_device_owns_them() {
    let mut rig = rig();
    let mut addresses = Vec::new();
    for round in 0..3u8 {
        let r = submit(&rig.queue, bufs(&[&[round; 8]], &[4])).unwrap();
        let chain = rig.ring.pending().pop().unwrap();
        addresses.push(chain.descs[0].addr);
        rig.ring.complete(chain.id as u32, 4);
        rig.queue.handle_interrupt();
        assert_eq!(finished(&r).result, Ok(4));
        drop(r);
        assert_eq!(rig.queue.slots_in_use(), 0, "round {round}");
    }
    assert!(
        addresses.windows(2).all(|w| w[0] == w[1]),
        "the same slot memory serves each request: {addresses:x?}"
    );

    // Dropped in flight (a timed-out waiter): the slot stays with the queue.
    let r = submit(&rig.queue, bufs(&[b"abandoned"], &[4])).unwrap();
    assert_eq!(r.wait(1_000_000), Err(Error::Timeout));
    drop(r);
    assert_eq!(rig.queue.slots_in_use(), 1, "held while the device owns it");
    let chain = rig.ring.pending().pop().unwrap();
    rig.ring.complete(chain.id as u32, 4);
    assert_eq!(rig.queue.handle_interrupt(), 1);
    assert_eq!(
        rig.queue.slots_in_use(),
        0,
        "released when the device returned it"
    );

    // Failed while posted (device needs a reset): quarantined until the reset.
    let r = submit(&rig.queue, bufs(&[b"failed"], &[4])).unwrap();
    rig.queue.fail_all(Error::DeviceNeedsReset);
    assert_eq!(finished(&r).result, Err(Error::DeviceNeedsReset));
    drop(r);
    assert_eq!(rig.queue.slots_in_use(), 1, "quarantined");
    assert_eq!(rig.queue.reclaim_after_reset(), 1);
    assert_eq!(rig.queue.slots_in_use(), 0);
}

/// A completion handler gets the finished request by value after the queue lock is dropped (it
/// takes the queue lock itself), and can submit the next request from there: a chained stream.
#[test]
fn completion_handler_runs_unlocked_and_chains_the_next_request() {
    use super::request::{Finished, OnComplete};
    use std::sync::Mutex;

    type Seen = Vec<(Result<u32, Error>, Vec<u8>)>;
    struct Chain {
        queue: Arc<CryptoQueue<FakeHal>>,
        me: Mutex<Option<Arc<Chain>>>,
        seen: Mutex<Seen>,
    }
    impl OnComplete<FakeHal> for Chain {
        fn on_complete(&self, finished: Finished<FakeHal>) {
            let request = Request::from(finished);
            // Takes the queue lock: would spin forever if the drain still held it.
            let _ = self.queue.in_flight();
            let next = request.writable()[0];
            self.seen
                .lock()
                .unwrap()
                .push((request.outcome().unwrap(), request.writable().to_vec()));
            drop(request);
            if next < 3 {
                let me = self.me.lock().unwrap().clone().unwrap();
                let mut b = self.queue.reserve(1, 1).unwrap();
                b.push(&[next]).unwrap();
                b.submit_with(me).unwrap();
            }
        }
    }

    host::install();
    let mut transport = FakeTransport::new(1);
    let queue =
        Arc::new(CryptoQueue::new(&mut transport, 0, Box::new(CountingNotify::new())).unwrap());
    let mut ring = transport.ring(0);
    let chain = Arc::new(Chain {
        queue: queue.clone(),
        me: Mutex::new(None),
        seen: Mutex::new(Vec::new()),
    });
    *chain.me.lock().unwrap() = Some(chain.clone());
    let mut b = queue.reserve(1, 1).unwrap();
    b.push(&[0]).unwrap();
    b.submit_with(chain.clone()).unwrap();
    for step in 0..3u8 {
        let c = ring
            .pending()
            .pop()
            .expect("the handler posted the next request");
        assert_eq!(c.readable(), [vec![step]]);
        c.write(&[step + 1]);
        ring.complete(c.id as u32, 1);
        assert_eq!(queue.handle_interrupt(), 1);
    }
    assert!(ring.pending().is_empty());
    let seen = chain.seen.lock().unwrap().clone();
    assert_eq!(seen, [(Ok(1), vec![1]), (Ok(1), vec![2]), (Ok(1), vec![3])]);
    assert_eq!(
        queue.slots_in_use(),
        0,
        "every handled request released its slot"
    );
    *chain.me.lock().unwrap() = None;
}

/// Requests above the preallocated sizes still work (a heap spill), and the builder refuses
/// more readable bytes than reserved.
#[test]
fn oversized_requests_spill_and_builders_check_sizes() {
    let mut rig = rig();
    let big = vec![0xabu8; 1000]; // the rig's slots hold 128 bytes
    let r = submit(&rig.queue, bufs(&[&big], &[600])).unwrap();
    let chain = rig.ring.pending().pop().unwrap();
    assert_eq!(chain.readable(), core::slice::from_ref(&big));
    chain.write(&[7; 600]);
    rig.ring.complete(chain.id as u32, 600);
    rig.queue.handle_interrupt();
    let f = finished(&r);
    assert_eq!((f.result, &f.writable[..]), (Ok(600), &[7u8; 600][..]));
    drop(r);
    let mut b = rig.queue.reserve(4, 1).unwrap();
    assert!(matches!(
        b.push(&[1; 5]),
        Err(Error::RequestTooLarge { .. })
    ));
    b.push(&[1; 3]).unwrap();
    assert!(b.submit().is_err(), "a partly filled request is not posted");
    assert!(rig.ring.pending().is_empty());
    assert_eq!(rig.queue.slots_in_use(), 0);
}

/// In interrupt context (a completion handler posting a stream's next chunk) a full ring is a
/// clear `QueueFull` at once: sleeping there is impossible (`block` refuses it with interrupts
/// off), so `submit_with` must not try.
#[test]
fn submit_with_on_a_full_ring_in_interrupt_context_fails_at_once() {
    use super::request::{Finished, OnComplete};
    struct Ignore;
    impl OnComplete<FakeHal> for Ignore {
        fn on_complete(&self, _finished: Finished<FakeHal>) {}
    }
    let rig = rig();
    let _posted: Vec<_> = (0..QUEUE_SIZE / 2)
        .map(|_| submit(&rig.queue, bufs(&[&[0; 8]], &[8])).unwrap())
        .collect();
    assert_eq!(rig.queue.free_descriptors(), 0);
    let mut builder = rig.queue.reserve(8, 8).unwrap();
    builder.push(&[1; 8]).unwrap();
    // As an interrupt handler runs: local interrupts off.
    let platform = crate::sync::platform::get();
    let was = platform.irq_save();
    let result = builder.submit_with(Arc::new(Ignore));
    platform.irq_restore(was);
    assert_eq!(result, Err(Error::QueueFull));
    assert_eq!(rig.queue.counters.full_waits.load(Ordering::Relaxed), 1);
}

/// A slot's memory is reused without being cleared at build time, so the completion clears what
/// the device did not write: a caller sees its own input, the device's output and zeros, never
/// an earlier request's bytes (after a short answer, after a failure, through `writable_mut`).
#[test]
fn a_reused_slot_shows_no_bytes_of_the_request_before() {
    host::install();
    let mut transport = FakeTransport::new(1);
    let queue = CryptoQueue::new(&mut transport, 0, Box::new(CountingNotify::new())).unwrap();
    queue
        .provision(StorageConfig {
            slots: 1,
            inline_bytes: 64,
            large_blocks: 0,
            large_bytes: 0,
        })
        .unwrap();
    let mut ring = transport.ring(0);
    let mut answer = |fill: u8, len: u32| {
        let chain = ring.pending().pop().expect("a request on the ring");
        chain.write(&[fill; 8][..len.min(8) as usize]);
        ring.complete(chain.id as u32, len);
        queue.handle_interrupt();
    };
    // The device fills all 8 bytes.
    let full = submit(&queue, bufs(&[b"secret!!"], &[8])).unwrap();
    answer(0xaa, 8);
    assert_eq!(finished(&full).writable, [0xaa; 8]);
    drop(full);
    // The same slot; the device writes 3 bytes: the other 5 read as zeros.
    let short = submit(&queue, bufs(&[b"12345678"], &[8])).unwrap();
    answer(0xbb, 3);
    assert_eq!(finished(&short).writable, [0xbb, 0xbb, 0xbb, 0, 0, 0, 0, 0]);
    drop(short);
    // The device claims more than was posted: a failure, and nothing of before shows.
    let failed = submit(&queue, bufs(&[b"abcdefgh"], &[8])).unwrap();
    answer(0xcc, 9);
    let f = finished(&failed);
    assert!(is_malformed(&f.result));
    assert!(f.writable.iter().all(|&b| b == 0), "{:?}", f.writable);
    drop(failed);
    // A builder's preset view of the writable part is zeroed too.
    let full = submit(&queue, bufs(&[b"secret!!"], &[8])).unwrap();
    answer(0xdd, 8);
    drop(full);
    let mut builder = queue.reserve(8, 8).unwrap();
    assert_eq!(builder.writable_mut(), [0u8; 8]);
    drop(builder);
    // A request refused because its readable part was not filled shows zeros where it was not.
    let mut builder = queue.reserve(8, 8).unwrap();
    builder.push(b"abc").unwrap();
    let (refused, error) = builder.submit_keeping();
    assert!(error.is_some());
    assert_eq!(refused.readable(), b"abc\0\0\0\0\0");
}

/// Zero copy: the device reads the caller's source and writes its destination where they are
/// (the destination comes back as the same allocation, with the output), only the header, IV
/// and status use the queue's memory; failures give both buffers back.
#[test]
fn owned_buffers_are_used_in_place_and_come_back() {
    use super::cipher::OwnedFailure;
    use super::slots::OwnedBuffers;
    let (dev, _fake, _bell) = live_device(1);
    let s = Session::new(&*dev, Cipher::AesCbc, Direction::Encrypt, &[7u8; 16]).unwrap();
    let iv = [9u8; 16];
    let src: Vec<u8> = (0..64 * 1024).map(|i| (i * 7) as u8).collect();
    let dst = vec![0u8; src.len()];
    let (src_at, dst_at) = (src.as_ptr(), dst.as_ptr());
    let queue = &dev.data[0];
    let request = dev
        .start_cipher_owned(
            queue,
            &s.as_cipher_session(),
            &iv,
            OwnedBuffers { src, dst },
        )
        .unwrap();
    let back = request.wait().unwrap();
    assert_eq!((back.src.as_ptr(), back.dst.as_ptr()), (src_at, dst_at));
    assert!(
        back.src
            .iter()
            .enumerate()
            .all(|(i, &b)| b == (i * 7) as u8)
    );
    assert!(back.dst.iter().zip(&back.src).all(|(&d, &s)| d == s ^ XOR));
    assert_eq!(queue.slots_in_use(), 0);

    // Refused before posting (an IV of the wrong length): both buffers come back untouched.
    let OwnedFailure { error, buffers } = dev
        .start_cipher_owned(queue, &s.as_cipher_session(), &iv[..8], back)
        .err()
        .unwrap();
    assert!(matches!(error, Error::InvalidIvLength { .. }));
    let back = buffers.expect("buffers of a refused request");
    assert_eq!(back.dst.as_ptr(), dst_at);

    // Answered with an error status (a session the device does not know): buffers back too.
    let failed = dev
        .start_cipher_owned(
            queue,
            &CipherSession {
                id: 0xdead,
                generation: dev.generation(),
                cipher: Cipher::AesCbc,
                direction: Direction::Encrypt,
            },
            &iv,
            back,
        )
        .unwrap()
        .wait()
        .err()
        .unwrap();
    assert_eq!(failed.error, Error::UnknownSession);
    assert_eq!(
        failed
            .buffers
            .expect("buffers of a failed request")
            .src
            .as_ptr(),
        src_at
    );
    assert_eq!(queue.slots_in_use(), 0);
}

/// The descriptors of a request with handed-over buffers point at those buffers: readable slot
/// bytes, the source, the destination, the writable slot bytes, in that order.
#[test]
fn handed_over_buffers_are_the_descriptors() {
    use super::slots::OwnedBuffers;
    let mut rig = rig();
    let (src, dst) = (vec![1u8; 5000], vec![0u8; 5000]);
    let (src_at, dst_at) = (src.as_ptr() as u64, dst.as_ptr() as u64);
    let mut builder = rig.queue.reserve(4, 1).unwrap();
    builder.push(b"head").unwrap();
    builder.hand_over(OwnedBuffers { src, dst });
    let mut request = builder.submit().unwrap();
    let chain = rig.ring.pending().pop().unwrap();
    let shape: Vec<(u64, u32, bool)> = chain
        .descs
        .iter()
        .map(|d| (d.addr, d.len, d.writable()))
        .collect();
    assert_eq!(shape.len(), 4, "{shape:x?}");
    assert_eq!(&shape[1..3], [(src_at, 5000, false), (dst_at, 5000, true)]);
    assert_eq!(
        (shape[0].1, shape[0].2, shape[3].1, shape[3].2),
        (4, false, 1, true)
    );
    assert!(
        request.take_buffers().is_none(),
        "taken back while in flight"
    );
    chain.write(&[0xee; 5001]);
    rig.ring.complete(chain.id as u32, 5001);
    rig.queue.handle_interrupt();
    assert_eq!(finished(&request).result, Ok(5001));
    let back = request.take_buffers().unwrap();
    assert_eq!(back.dst.as_ptr() as u64, dst_at);
    assert!(back.dst.iter().all(|&b| b == 0xee));
}

/// The control path's batch: 20 creates and then 20 destroys each ride one doorbell, every
/// entry gets its own result (a key of a bad length among them fails alone), and the live count
/// follows exactly.
#[test]
fn sessions_created_and_destroyed_in_batches_ring_once_each() {
    let (dev, _fake, bell) = live_device(1);
    let good = [5u8; 16];
    let bad = [5u8; 15];
    let mut keys: Vec<&[u8]> = vec![&good; 20];
    keys.insert(7, &bad);
    let rung = bell.count();
    let created = dev.create_cipher_sessions(Cipher::AesCbc, Direction::Encrypt, &keys);
    assert_eq!(bell.count(), rung + 1, "one doorbell for 21 creates");
    assert_eq!(created.len(), 21);
    assert!(matches!(
        created[7],
        Err(Error::InvalidKeyLength { got: 15, .. })
    ));
    let sessions: Vec<CipherSession> = created
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 7)
        .map(|(_, r)| *r.as_ref().unwrap())
        .collect();
    let ids: Vec<u64> = sessions.iter().map(|s| s.id).collect();
    let distinct: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(distinct.len(), 20, "20 distinct session ids");
    assert_eq!(dev.live_sessions(), 20);
    let out = dev
        .cipher_request(&dev.data[0], &sessions[3], &[0; 16], &[1; 16])
        .unwrap();
    assert_eq!(out, [1 ^ XOR; 16]);
    let rung = bell.count();
    let mut to_destroy = ids.clone();
    to_destroy.push(0xdead_beef);
    let destroyed = dev.destroy_cipher_sessions(&to_destroy);
    assert_eq!(bell.count(), rung + 1, "one doorbell for 21 destroys");
    assert!(destroyed[..20].iter().all(Result::is_ok), "{destroyed:?}");
    assert!(destroyed[20].is_err(), "an unknown session");
    assert_eq!(dev.live_sessions(), 0);
}

/// The control queue's own rate (`time_polled_session_pairs`): its batches complete by polling
/// alone (here the control queue's interrupt drains nothing, so a wait that slept would time
/// out), in rounds when larger than a quarter of the queue, and every session it made is
/// destroyed; a key of a bad length is its error and leaves nothing behind either.
#[test]
fn polled_session_pairs_complete_without_interrupts_and_leave_no_session() {
    let (tx, rx) = mpsc::channel();
    let bell = CountingNotify::with_signal(tx);
    let (dev, rings, _transport, _status) = crypto_device_with(1, &bell, 256);
    dev.set_timeout_ns(2_000_000_000);
    let dev = Arc::new(dev);
    let irq = dev.clone();
    let _fake = FakeCryptoDevice::spawn(rings, rx, move |q| {
        if q > 0 {
            irq.data[q as usize - 1].handle_interrupt();
        }
    });
    let good = [5u8; 16];
    let mut keys: Vec<&[u8]> = vec![&good; 100];
    let ns = dev
        .time_polled_session_pairs(Cipher::AesCbc, Direction::Encrypt, &keys)
        .unwrap();
    assert!(ns > 0);
    assert_eq!(dev.live_sessions(), 0);
    let bad = [5u8; 15];
    keys.insert(3, &bad);
    assert!(matches!(
        dev.time_polled_session_pairs(Cipher::AesCbc, Direction::Encrypt, &keys),
        Err(Error::InvalidKeyLength { got: 15, .. })
    ));
    assert_eq!(
        dev.live_sessions(),
        0,
        "the 100 made beside the bad key are destroyed"
    );
}

// --- batches of any size ----------------------------------------------------------------------

/// A device with the fake device thread answering it; control queue of 256 slots.
fn answered_device(timeout_ns: u64) -> (Arc<CryptoDevice<FakeHal>>, FakeCryptoDevice) {
    let (tx, rx) = mpsc::channel();
    let bell = CountingNotify::with_signal(tx);
    let (dev, rings, _transport, _status) = crypto_device_with(1, &bell, 256);
    dev.set_timeout_ns(timeout_ns);
    let dev = Arc::new(dev);
    let irq = dev.clone();
    let fake = FakeCryptoDevice::spawn(rings, rx, drain_on_interrupt(irq));
    (dev, fake)
}

/// A batch of more requests than the queue has slots is refused at once, not after waiting
/// for a slot it holds itself.
#[test]
fn a_batch_larger_than_the_queue_is_refused_at_once() {
    let (dev, _fake) = answered_device(10_000_000_000);
    let queue = &dev.data[0];
    let started = Instant::now();
    assert_eq!(
        queue.reserve_group(queue.slot_capacity() + 1).err(),
        Some(Error::BatchTooLarge { got: 257, max: 256 })
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    let mut group = queue.reserve_group(256).unwrap();
    assert_eq!(queue.slots_in_use(), 256);
    let builder = group.builder(8, 8).unwrap();
    drop(group);
    assert_eq!(
        queue.slots_in_use(),
        1,
        "unused slots go back with the group"
    );
    drop(builder);
    assert_eq!(queue.slots_in_use(), 0);
}

/// A control batch of more requests than the control queue has slots completes: every item
/// gets the device's answer (destroying unknown sessions: UnknownSession), none a timeout.
#[test]
fn a_control_batch_larger_than_the_queue_completes() {
    let (dev, _fake) = answered_device(300_000_000);
    let ids: Vec<u64> = (0..300).map(|i| 0xdead_0000 + i).collect();
    let results = dev.destroy_cipher_sessions(&ids);
    assert_eq!(results.len(), 300);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(*r, Err(Error::UnknownSession), "item {i}");
    }
    assert_eq!(dev.control.slots_in_use(), 0);
}

/// A control batch that needs more slots than are free while another caller holds some (a
/// second batcher, mid-build) completes: it takes slots in rounds and never holds part of them
/// while it waits for the rest, so it neither waits for itself nor for the other holder.
#[test]
fn a_control_batch_completes_while_another_holds_slots() {
    let (dev, _fake) = answered_device(300_000_000);
    let held: Vec<_> = (0..100)
        .map(|_| dev.control.reserve(8, 1).unwrap())
        .collect();
    let batcher = {
        let dev = dev.clone();
        thread::spawn(move || dev.destroy_cipher_sessions(&(0..200).collect::<Vec<u64>>()))
    };
    let results = batcher.join().unwrap();
    let timeouts = results
        .iter()
        .filter(|r| **r == Err(Error::Timeout))
        .count();
    assert_eq!(timeouts, 0, "{timeouts} of 200 timed out");
    drop(held);
    assert_eq!(dev.control.slots_in_use(), 0);
}

/// A poller waiting for a batch (the device-rate probe) gives up at its deadline when the
/// device stops answering, and finishes as soon as the device answers everything.
#[test]
fn polling_a_batch_ends_at_the_deadline_when_the_device_is_silent() {
    let mut rig = rig();
    rig.queue.set_polled(true);
    let posted: Vec<_> = (0..4)
        .map(|_| submit(&rig.queue, bufs(&[&[1; 8]], &[8])).unwrap())
        .collect();
    let now = crate::sync::platform::get().now_ns();
    let started = Instant::now();
    assert_eq!(
        Request::poll_all(&posted, now + 50_000_000),
        Err(Error::Timeout)
    );
    assert!(started.elapsed() >= Duration::from_millis(50));
    for chain in rig.ring.pending() {
        rig.ring.complete(chain.id as u32, 8);
    }
    assert_eq!(Request::poll_all(&posted, u64::MAX), Ok(()));
    assert!(posted.iter().all(Request::is_done));
}

/// `reap=on`: a task about to sleep on a request the device already answered, whose interrupt
/// has not come (here it never does), drains the queue itself and returns without sleeping.
/// With `reap=off` the same wait sleeps until its timeout: only an interrupt would end it.
#[test]
fn a_waiter_reaps_an_answer_whose_interrupt_has_not_come() {
    for reap in [true, false] {
        let mut rig = rig();
        rig.queue.set_reap(reap);
        let request = submit(&rig.queue, bufs(&[&[1; 8]], &[8])).unwrap();
        let chains = rig.ring.pending();
        assert_eq!(chains.len(), 1);
        chains[0].write(&[2; 8]);
        rig.ring.complete(chains[0].id as u32, 8);
        let started = Instant::now();
        let result = request.wait(300_000_000);
        if reap {
            assert_eq!(result, Ok(8), "reaped");
            assert_eq!(request.writable(), [2; 8]);
        } else {
            assert_eq!(result, Err(Error::Timeout), "no interrupt, no reap");
            assert!(started.elapsed() >= Duration::from_millis(300));
        }
    }
}
