//! Property test of the request engine's lifecycle against a hostile device.
//!
//! One data queue of a `CryptoDevice` on the fake transport, with small request memory (6
//! slots, 96-byte inline blocks, two 512-byte large blocks, heap spills above), is driven by a
//! random sequence of operations, single-threaded and by hand (so every case is deterministic
//! and proptest can shrink it):
//!
//! - submits of various sizes (inline, large block, spill), waited for or with a completion
//!   handler, with a random least used length (`expect_used`), with or without a status byte
//!   preset at the end of the writable part (`preset_status`);
//! - the device answering any chain it holds, in any order, as a hostile or merely conformant
//!   device may: any used length (correct, too long, too short, anything from 0 to the whole
//!   writable part), its output as a prefix, or a short prefix and any status byte at the end
//!   of the writable part (where virtio-crypto puts it) with a used length that counts only the
//!   bytes written; or never (silence, until a timeout or a reset);
//! - bad used entries: an id never posted, beyond the ring, with high bits set, or a duplicate
//!   of an id already returned;
//! - interrupts (drains);
//! - a waiter giving up (a deadline already passed, then `DeviceHealth::timed_out` as the
//!   control path does): the request must stay with the queue;
//! - a `Request` dropped (in flight: abandoned);
//! - the device flagging NEEDS_RESET (noticed by the configuration interrupt, or left for a
//!   timeout to find);
//! - recovery: `CryptoDevice::recover` with the fake steps (reset, read back, fail, rebuild),
//!   then a request through the rebuilt queue.
//!
//! A model predicts every result, and after every step the test checks:
//! 1. memory: no slot, large block or spill a chain the device still holds points into is
//!    free, reused, replaced or handed back (also at the moment of the reset, before anything
//!    is failed);
//! 2. every request ends exactly once: its result (or its handler call, exactly one) is the
//!    one the model predicts, results never change, the in-flight table, the slots in use and
//!    the malformed counter match the model (nothing lost, nothing leaked, nothing completed
//!    twice); and no wrong answer: the status byte a request shows is the one the device wrote
//!    there, or the preset if it wrote none (never a cleared 0, which reads as OK), what the
//!    device wrote of the output is there, and the rest of the writable part is zero (never an
//!    earlier request's bytes);
//! 3. after a recovery every request that was in flight has failed with `DeviceReset`, the
//!    memory the device held is free again, and the queue serves new requests.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;
use std::collections::BTreeMap;
use std::sync::Mutex;

use proptest::prelude::*;
use proptest::sample::Index;

use super::device::CryptoDevice;
use super::fake::*;
use super::lifecycle::DeviceState;
use super::queue::CryptoQueue;
use super::request::Request;
use super::request::{Finished, OnComplete};
use super::ring::QUEUE_SIZE;
use super::slots::{Phase, StorageConfig};
use crate::error::Error;
use crate::sync::platform::host;

const SLOTS: usize = 6;
const STORAGE: StorageConfig = StorageConfig {
    slots: SLOTS,
    inline_bytes: 96,
    large_blocks: 2,
    large_bytes: 512,
};

// --- operations -------------------------------------------------------------------------------

/// The used length the device reports for a chain.
#[derive(Clone, Copy, Debug)]
enum Len {
    /// Between the request's least used length and its writable length (picked by the seed).
    Correct(u16),
    /// Writable length + 1 + n.
    TooLong(u8),
    /// One less than the least used length (correct if that is 0).
    TooShort,
    /// Anything from 0 to the writable length (picked by the seed).
    Any(u16),
}

/// What the device writes into a chain's writable part.
#[derive(Clone, Copy, Debug)]
enum Shape {
    /// Its answer from the start, as many bytes as the used length says (at most the whole).
    Prefix,
    /// `out` bytes of answer (mod the writable length) and `status` in the last writable byte.
    StatusAtEnd { out: u16, status: u8 },
}

/// A used entry naming no chain the device holds.
#[derive(Clone, Copy, Debug)]
enum Bad {
    NeverPosted,
    BeyondRing,
    /// 0x1_0000 + a token (virtio-drivers cuts ids to 16 bits).
    HighBits,
    /// An id the device already returned (and does not hold again); else like `NeverPosted`.
    Duplicate,
}

#[derive(Clone, Debug)]
enum Op {
    Submit {
        readable: usize,
        writable: usize,
        /// Least used length, as a fraction (/255) of `writable`.
        min_used: u8,
        handler: bool,
        /// A status byte preset at the end of the writable part.
        status: bool,
    },
    /// The device answers one of the chains it holds.
    Complete {
        pick: Index,
        len: Len,
        shape: Shape,
    },
    BadEntry {
        pick: Index,
        bad: Bad,
    },
    Interrupt,
    /// A waiter of a request the test holds gives up.
    Timeout {
        pick: Index,
    },
    /// A request the test holds is dropped.
    Drop {
        pick: Index,
    },
    /// The device sets NEEDS_RESET; `notice`: the configuration interrupt reads it.
    NeedsReset {
        notice: bool,
    },
    /// The recovery task runs (asked for first if nobody did).
    Recover,
}

fn size() -> impl Strategy<Value = usize> {
    prop_oneof![1..=48usize, 49..=300usize, 400..=900usize]
}

fn op() -> impl Strategy<Value = Op> {
    let len = prop_oneof![
        3 => any::<u16>().prop_map(Len::Correct),
        1 => any::<u8>().prop_map(Len::TooLong),
        1 => Just(Len::TooShort),
        2 => any::<u16>().prop_map(Len::Any),
    ];
    let shape = prop_oneof![
        2 => Just(Shape::Prefix),
        1 => (any::<u16>(), any::<u8>()).prop_map(|(out, status)| Shape::StatusAtEnd { out, status }),
    ];
    let bad = prop_oneof![
        Just(Bad::NeverPosted),
        Just(Bad::BeyondRing),
        Just(Bad::HighBits),
        Just(Bad::Duplicate),
    ];
    prop_oneof![
        5 => (size(), size(), any::<u8>(), any::<bool>(), any::<bool>()).prop_map(
            |(readable, writable, min_used, handler, status)| Op::Submit {
                readable,
                writable,
                min_used,
                handler,
                status,
            }
        ),
        5 => (any::<Index>(), len, shape).prop_map(|(pick, len, shape)| Op::Complete {
            pick,
            len,
            shape
        }),
        1 => (any::<Index>(), bad).prop_map(|(pick, bad)| Op::BadEntry { pick, bad }),
        3 => Just(Op::Interrupt),
        2 => any::<Index>().prop_map(|pick| Op::Timeout { pick }),
        2 => any::<Index>().prop_map(|pick| Op::Drop { pick }),
        1 => any::<bool>().prop_map(|notice| Op::NeedsReset { notice }),
        1 => Just(Op::Recover),
    ]
}

// --- the model --------------------------------------------------------------------------------

/// The result the driver must give a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Ok(u32),
    Malformed,
    Reset,
}

impl Expect {
    fn matches(self, got: &Result<u32, Error>) -> bool {
        match (self, got) {
            (Expect::Ok(n), Ok(m)) => n == *m,
            (Expect::Malformed, Err(Error::MalformedCompletion { .. })) => true,
            (Expect::Reset, Err(Error::DeviceReset)) => true,
            _ => false,
        }
    }
}

enum Handle {
    /// The test holds the `Request`.
    Held(Request<FakeHal>),
    /// Submitted with a handler, not delivered yet: the queue has it.
    Queue,
    Dropped,
}

struct Req {
    handler: bool,
    slot: usize,
    readable: usize,
    writable: usize,
    min_used: u32,
    /// In the driver's in-flight table (posted, neither popped nor failed).
    in_flight: bool,
    /// What the driver delivered (once set, never again).
    result: Option<Expect>,
    /// Failed while the device still had the memory (before a reset).
    device_may_own: bool,
    /// Bytes of its answer the device wrote from the start (a duplicate entry may pop the
    /// request with another length, or before the device answered it).
    written: usize,
    /// A status byte was preset at the end of the writable part.
    status: bool,
    /// What the device wrote into the last writable byte, if it did.
    last_written: Option<u8>,
    handle: Handle,
}

impl Req {
    /// Whether its slot is not free: held by the test or the queue, abandoned while in flight,
    /// or quarantined (failed while the device had it, dropped, no reset since).
    fn slot_taken(&self) -> bool {
        match self.handle {
            Handle::Held(_) | Handle::Queue => true,
            Handle::Dropped => self.in_flight || self.device_may_own,
        }
    }
}

fn pattern(id: usize, n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| (id as u8).wrapping_mul(31) ^ i as u8)
        .collect()
}

fn answer(id: usize) -> u8 {
    !(id as u8)
}

/// The status byte preset by the submitter: no status code.
const PRESET_STATUS: u8 = 0xee;

/// A chain the fake device took off the available ring and has not returned.
struct Held {
    req: usize,
    slot: usize,
    chain: Chain,
    /// The slot's block when it was posted.
    block: (usize, usize),
}

/// The fake device, played by hand.
struct Device {
    ring: FakeRing,
    held: Vec<Held>,
    /// Used entries published and not yet drained, in ring order.
    used: Vec<(u32, u32)>,
    /// Tokens returned on this ring (candidates for duplicates).
    returned: Vec<u16>,
}

/// Requests handed to their handlers, by request number.
type Deliveries = Arc<Mutex<Vec<(usize, Request<FakeHal>)>>>;

/// Hands a handler's request to the test.
struct Sink {
    id: usize,
    delivered: Deliveries,
}

impl OnComplete<FakeHal> for Sink {
    fn on_complete(&self, finished: Finished<FakeHal>) {
        let request = Request::from(finished);
        self.delivered.lock().unwrap().push((self.id, request));
    }
}

fn overlaps(a: (usize, usize), b: (usize, usize)) -> bool {
    a.0 < b.0 + b.1 && b.0 < a.0 + a.1
}

/// Invariant 1: the memory of every chain the device holds is still its request's, in a phase
/// where only the device touches it, not on a free list and in no other live slot.
fn check_device_memory(queue: &CryptoQueue<FakeHal>, held: &[Held]) {
    let view = queue.storage().view();
    for h in held {
        let slot = h.slot;
        let s = view.slots[slot];
        let device_owned = matches!(
            s.phase,
            Phase::InFlight | Phase::Abandoned | Phase::Quarantined
        ) || (s.phase == Phase::Done && s.device_may_own);
        assert!(
            device_owned,
            "request {}: slot {slot} is {:?} (device_may_own {}) while the device holds \
             chain {} at {:#x}",
            h.req, s.phase, s.device_may_own, h.chain.id, h.block.0
        );
        assert_eq!(
            s.block, h.block,
            "request {}: slot {slot}'s memory changed while the device holds it",
            h.req
        );
        assert!(
            !view.free_slots.contains(&(slot as u16)),
            "request {}: slot {slot} is on the free list while the device holds it",
            h.req
        );
        for d in &h.chain.descs {
            let range = (d.addr as usize, d.len as usize);
            assert!(
                range.0 >= h.block.0 && range.0 + range.1 <= h.block.0 + h.block.1,
                "request {}: descriptor outside its slot's block",
                h.req
            );
            for &large in &view.free_large {
                assert!(
                    !overlaps(large, range),
                    "request {}: a free large block holds memory the device has",
                    h.req
                );
            }
            for (j, other) in view.slots.iter().enumerate() {
                if j != slot && other.phase != Phase::Free {
                    assert!(
                        !overlaps(other.block, range),
                        "request {}: slot {j} ({:?}) uses memory the device holds for slot \
                         {slot}",
                        h.req,
                        other.phase
                    );
                }
            }
        }
    }
}

struct Harness {
    dev: CryptoDevice<FakeHal>,
    transport: FakeTransport,
    status: FakeStatus,
    device: Device,
    reqs: Vec<Req>,
    /// The driver's in-flight table as the model has it: token -> request.
    in_flight: BTreeMap<u16, usize>,
    /// Queue closed (recovery asked for, or the queue broke).
    closed: bool,
    malformed: u64,
    generation: u64,
    delivered: Deliveries,
    /// Handler requests finished in this step: each must be delivered exactly once.
    due: Vec<usize>,
}

impl Harness {
    fn new() -> Self {
        host::install();
        let bell = CountingNotify::new();
        let mut transport = FakeTransport::new(2);
        let control = CryptoQueue::new(&mut transport, 0, Box::new(bell.clone())).unwrap();
        control
            .provision(StorageConfig {
                slots: 2,
                ..StorageConfig::CONTROL
            })
            .unwrap();
        let data = CryptoQueue::new(&mut transport, 1, Box::new(bell)).unwrap();
        data.provision(STORAGE).unwrap();
        let status = FakeStatus::default();
        let flag = status.needs_reset.clone();
        let dev = CryptoDevice::new(
            String::from("props"),
            config(1),
            control,
            vec![data],
            Box::new(move || flag.load(Ordering::SeqCst)),
        )
        .unwrap();
        // Waits for a slot give up at once (the model predicts `Timeout` when none is free).
        dev.set_timeout_ns(0);
        let ring = transport.ring(1);
        Harness {
            dev,
            transport,
            status,
            device: Device {
                ring,
                held: Vec::new(),
                used: Vec::new(),
                returned: Vec::new(),
            },
            reqs: Vec::new(),
            in_flight: BTreeMap::new(),
            closed: false,
            malformed: 0,
            generation: 0,
            delivered: Arc::default(),
            due: Vec::new(),
        }
    }

    fn queue(&self) -> &CryptoQueue<FakeHal> {
        &self.dev.data[0]
    }

    fn free_slots(&self) -> usize {
        SLOTS - self.reqs.iter().filter(|r| r.slot_taken()).count()
    }

    fn step(&mut self, op: &Op) {
        match *op {
            Op::Submit {
                readable,
                writable,
                min_used,
                handler,
                status,
            } => {
                let min_used = (writable * min_used as usize / 255) as u32;
                self.submit(readable, writable, min_used, handler, status);
            }
            Op::Complete { pick, len, shape } => {
                if !self.device.held.is_empty() {
                    self.complete(pick.index(self.device.held.len()), len, shape);
                }
            }
            Op::BadEntry { pick, bad } => self.bad_entry(pick, bad),
            Op::Interrupt => self.interrupt(),
            Op::Timeout { pick } => self.timeout(pick),
            Op::Drop { pick } => {
                let held: Vec<usize> = (0..self.reqs.len())
                    .filter(|&i| matches!(self.reqs[i].handle, Handle::Held(_)))
                    .collect();
                if !held.is_empty() {
                    self.drop_req(held[pick.index(held.len())]);
                }
            }
            Op::NeedsReset { notice } => {
                self.status.needs_reset.store(true, Ordering::SeqCst);
                if notice {
                    assert!(self.dev.check_needs_reset());
                    self.closed = true;
                }
            }
            Op::Recover => self.recover(),
        }
        self.collect_deliveries();
    }

    fn submit(
        &mut self,
        readable: usize,
        writable: usize,
        min_used: u32,
        handler: bool,
        status: bool,
    ) {
        let id = self.reqs.len();
        let expected_error = if self.closed {
            Some(Error::DeviceReset)
        } else if self.free_slots() == 0 {
            Some(Error::Timeout)
        } else {
            None
        };
        let delivered = self.delivered.clone();
        let result = (|| {
            let mut b = self.queue().reserve(readable, writable)?;
            b.push(&pattern(id, readable))?;
            b.expect_used(min_used as usize);
            if status {
                b.preset_status(PRESET_STATUS);
            }
            if handler {
                b.submit_with(Arc::new(Sink { id, delivered }))?;
                Ok(Handle::Queue)
            } else {
                b.submit().map(Handle::Held)
            }
        })();
        let handle = match (expected_error, result) {
            (Some(e), Err(got)) => {
                assert_eq!(got, e, "submit {id}");
                assert!(self.device.ring.pending().is_empty());
                return;
            }
            (None, Ok(handle)) => handle,
            (Some(e), Ok(_)) => panic!("submit {id}: accepted, expected {e:?}"),
            (None, Err(e)) => panic!("submit {id}: {e:?}, expected it accepted"),
        };
        let mut chains = self.device.ring.pending();
        assert_eq!(chains.len(), 1, "submit {id}: one chain posted");
        let chain = chains.pop().unwrap();
        let lens: Vec<(u32, bool)> = chain.descs.iter().map(|d| (d.len, d.writable())).collect();
        assert_eq!(
            lens,
            [(readable as u32, false), (writable as u32, true)],
            "submit {id}"
        );
        // Its slot: the in-flight one whose block the chain starts in, not held for another.
        let view = self.queue().storage().view();
        let start = chain.descs[0].addr as usize;
        let candidates: Vec<usize> = (0..SLOTS)
            .filter(|&s| {
                let v = view.slots[s];
                v.phase == Phase::InFlight
                    && overlaps(v.block, (start, 1))
                    && !self.device.held.iter().any(|h| h.slot == s)
            })
            .collect();
        assert_eq!(candidates.len(), 1, "submit {id}: the posted slot");
        let slot = candidates[0];
        assert!(
            self.in_flight.insert(chain.id, id).is_none(),
            "submit {id}: token {} is already in flight",
            chain.id
        );
        self.device.held.push(Held {
            req: id,
            slot,
            chain,
            block: view.slots[slot].block,
        });
        self.reqs.push(Req {
            handler,
            slot,
            readable,
            writable,
            min_used,
            in_flight: true,
            result: None,
            device_may_own: false,
            written: 0,
            status,
            last_written: None,
            handle,
        });
    }

    fn complete(&mut self, which: usize, len: Len, shape: Shape) {
        let h = self.device.held.remove(which);
        let r = &self.reqs[h.req];
        let w = r.writable as u32;
        let len = match len {
            Len::Correct(seed) => r.min_used + seed as u32 % (w - r.min_used + 1),
            Len::TooLong(n) => w + 1 + n as u32,
            Len::TooShort => r.min_used.saturating_sub(1),
            Len::Any(seed) => seed as u32 % (w + 1),
        };
        let (written, last_written) = match shape {
            Shape::Prefix => {
                let written = h.chain.write(&vec![answer(h.req); len.min(w) as usize]);
                (written, (written == w as usize).then_some(answer(h.req)))
            }
            Shape::StatusAtEnd { out, status } => {
                let out = out as usize % w as usize;
                let mut bytes = vec![answer(h.req); out];
                // The bytes in between are left as they are: read back what is there now.
                let mut gap = vec![0u8; w as usize - out - 1];
                h.chain.read_writable(out, &mut gap);
                bytes.extend_from_slice(&gap);
                bytes.push(status);
                h.chain.write(&bytes);
                (out, Some(status))
            }
        };
        self.reqs[h.req].written = written;
        self.reqs[h.req].last_written = last_written;
        self.device.ring.complete(h.chain.id as u32, len);
        self.device.used.push((h.chain.id as u32, len));
        self.device.returned.push(h.chain.id);
    }

    fn bad_entry(&mut self, pick: Index, bad: Bad) {
        let held_tokens: Vec<u16> = self.device.held.iter().map(|h| h.chain.id).collect();
        let never = (QUEUE_SIZE - 1 - pick.index(16)) as u32;
        let id = match bad {
            Bad::NeverPosted => never,
            Bad::BeyondRing => [QUEUE_SIZE as u32, 0xffff, u32::MAX][pick.index(3)],
            Bad::HighBits => 0x1_0000 | held_tokens.first().copied().unwrap_or(0) as u32,
            Bad::Duplicate => {
                let old: Vec<u16> = self
                    .device
                    .returned
                    .iter()
                    .copied()
                    .filter(|t| !held_tokens.contains(t))
                    .collect();
                if old.is_empty() {
                    never
                } else {
                    old[pick.index(old.len())] as u32
                }
            }
        };
        assert!(
            !self.in_flight.contains_key(&(never as u16)),
            "model: token {never} is in flight"
        );
        self.device.ring.complete(id, 1);
        self.device.used.push((id, 1));
    }

    /// The model's drain: entries in ring order, each must name a request in flight; the first
    /// that does not breaks the queue (every other request in flight fails, its memory stays
    /// the device's) and recovery is asked for.
    fn interrupt(&mut self) {
        let n = self.queue().handle_interrupt();
        if self.closed {
            assert_eq!(n, 0, "a closed queue drains nothing");
            return;
        }
        let mut completed = 0;
        let used = core::mem::take(&mut self.device.used);
        for (i, &(id, len)) in used.iter().enumerate() {
            let req = (id < QUEUE_SIZE as u32)
                .then(|| self.in_flight.remove(&(id as u16)))
                .flatten();
            match req {
                Some(req) => {
                    completed += 1;
                    // A duplicate of a token posted again since: the driver cannot tell it
                    // from an answer, so the device returned that chain with it.
                    self.device.held.retain(|h| h.req != req);
                    let r = &self.reqs[req];
                    let expect = if len > r.writable as u32 || len < r.min_used {
                        self.malformed += 1;
                        Expect::Malformed
                    } else {
                        Expect::Ok(len)
                    };
                    self.finish(req, expect, false);
                }
                None => {
                    self.malformed += 1;
                    self.closed = true;
                    for req in core::mem::take(&mut self.in_flight).into_values() {
                        self.finish(req, Expect::Malformed, true);
                    }
                    // The rest stays in the ring (never drained: a reset replaces it).
                    self.device.used = used[i..].to_vec();
                    break;
                }
            }
        }
        assert_eq!(n, completed, "requests completed by the drain");
    }

    fn finish(&mut self, req: usize, expect: Expect, device_may_own: bool) {
        let r = &mut self.reqs[req];
        assert!(
            r.in_flight && r.result.is_none(),
            "model: {req} finished twice"
        );
        r.in_flight = false;
        r.result = Some(expect);
        r.device_may_own = device_may_own;
        if r.handler {
            self.due.push(req);
        }
    }

    fn timeout(&mut self, pick: Index) {
        let held: Vec<usize> = (0..self.reqs.len())
            .filter(|&i| matches!(self.reqs[i].handle, Handle::Held(_)))
            .collect();
        if held.is_empty() {
            return;
        }
        let id = held[pick.index(held.len())];
        // A waiter reaps (`reap=on`): a request not finished yet has the queue drained before
        // the wait sleeps, which the model does as an interrupt.
        if self.reqs[id].result.is_none() && self.queue().reaps() {
            self.interrupt();
        }
        let Handle::Held(request) = &self.reqs[id].handle else {
            unreachable!()
        };
        let got = request.wait_until(Some(0));
        match self.reqs[id].result {
            Some(e) => assert!(e.matches(&got), "wait {id}: got {got:?}, expected {e:?}"),
            None => {
                assert_eq!(got, Err(Error::Timeout), "wait {id}");
                // What the control path does next: a set NEEDS_RESET turns it into DeviceReset.
                let needs_reset = self.status.needs_reset.load(Ordering::SeqCst);
                let error = self.dev.health().timed_out();
                if needs_reset {
                    assert_eq!(error, Error::DeviceReset);
                    self.closed = true;
                } else {
                    assert_eq!(error, Error::Timeout);
                }
            }
        }
    }

    fn drop_req(&mut self, id: usize) {
        let handle = core::mem::replace(&mut self.reqs[id].handle, Handle::Dropped);
        assert!(matches!(handle, Handle::Held(_)));
        drop(handle);
    }

    fn recover(&mut self) {
        if !self.closed {
            // Whoever noticed asks for recovery first (that closes the queues).
            self.dev.request_recovery();
            self.closed = true;
        }
        let in_flight = self.in_flight.len();
        let dev = &self.dev;
        let device = &mut self.device;
        let mut reset_seen = false;
        let mut at_reset = || {
            // Status 0 read back: until now the device could reach everything it held.
            check_device_memory(&dev.data[0], &device.held);
            assert_eq!(
                dev.data[0].in_flight(),
                in_flight,
                "requests failed before the reset"
            );
            device.held.clear();
            device.used.clear();
            device.returned.clear();
            reset_seen = true;
        };
        let generation = self
            .dev
            .recover(
                &mut self.transport,
                &mut FakeSteps {
                    status: self.status.clone(),
                    at_reset: &mut at_reset,
                },
            )
            .unwrap();
        assert!(reset_seen);
        self.generation += 1;
        assert_eq!(generation, self.generation);
        self.device.ring = self.transport.ring(1);
        for req in core::mem::take(&mut self.in_flight).into_values() {
            self.finish(req, Expect::Reset, false);
        }
        // The device was reset: it reaches no request memory any more.
        for r in &mut self.reqs {
            r.device_may_own = false;
        }
        self.closed = false;
        self.collect_deliveries();
        self.check();
        // The rebuilt queue serves a new request.
        if self.free_slots() > 0 {
            let id = self.reqs.len();
            self.submit(8, 8, 1, false, true);
            self.complete(self.device.held.len() - 1, Len::Correct(3), Shape::Prefix);
            self.interrupt();
            assert_eq!(self.reqs[id].result, Some(Expect::Ok(4)));
            self.check();
            self.drop_req(id);
        }
    }

    /// Hands handler deliveries to the test; each due one exactly once, no other.
    fn collect_deliveries(&mut self) {
        let delivered = core::mem::take(&mut *self.delivered.lock().unwrap());
        let mut due = core::mem::take(&mut self.due);
        for (id, request) in delivered {
            let Some(pos) = due.iter().position(|&d| d == id) else {
                panic!("handler of request {id} called when not due (twice?)");
            };
            due.swap_remove(pos);
            assert!(matches!(self.reqs[id].handle, Handle::Queue));
            self.reqs[id].handle = Handle::Held(request);
        }
        assert!(due.is_empty(), "handlers not called for {due:?}");
    }

    /// Everything the driver shows against the model.
    fn check(&self) {
        let queue = self.queue();
        // 1. memory the device holds
        check_device_memory(queue, &self.device.held);
        // 2. nothing lost, leaked or completed twice
        assert_eq!(queue.in_flight(), self.in_flight.len(), "in flight");
        assert_eq!(
            queue.slots_in_use(),
            SLOTS - self.free_slots(),
            "slots in use"
        );
        assert_eq!(
            queue.counters.malformed.load(Ordering::Relaxed),
            self.malformed,
            "malformed completions counted"
        );
        let view = queue.storage().view();
        for (id, r) in self.reqs.iter().enumerate() {
            assert!(
                r.in_flight != r.result.is_some(),
                "request {id}: in flight xor finished"
            );
            if r.slot_taken() {
                let slot = view.slots[r.slot];
                let phase = match (&r.handle, r.in_flight) {
                    (Handle::Dropped, true) => Phase::Abandoned,
                    (Handle::Dropped, false) => Phase::Quarantined,
                    (_, true) => Phase::InFlight,
                    (_, false) => Phase::Done,
                };
                assert_eq!(slot.phase, phase, "request {id}: slot {}", r.slot);
                if phase == Phase::Done {
                    assert_eq!(slot.device_may_own, r.device_may_own, "request {id}");
                }
            }
            let Handle::Held(request) = &r.handle else {
                continue;
            };
            let outcome = request.outcome();
            match (r.result, &outcome) {
                (None, None) => {}
                (Some(e), Some(got)) if e.matches(got) => {}
                _ => panic!("request {id}: outcome {outcome:?}, expected {:?}", r.result),
            }
            if r.result.is_none() {
                continue;
            }
            if r.device_may_own {
                assert!(
                    request.readable().is_empty(),
                    "request {id}: shown to the CPU"
                );
                continue;
            }
            assert_eq!(
                request.readable(),
                &pattern(id, r.readable)[..],
                "request {id}: readable bytes"
            );
            // What the request shows: the device's output as far as the used length says
            // (and it wrote), zeros after it, and the status the device wrote, else the preset.
            let w = request.writable();
            assert_eq!(w.len(), r.writable, "request {id}");
            let reply = r.status as usize;
            let clearable = r.writable - reply;
            let kept = match r.result {
                Some(Expect::Ok(len)) => (len as usize).saturating_sub(reply).min(clearable),
                _ => 0,
            };
            assert!(
                w[..kept.min(r.written)].iter().all(|&b| b == answer(id)),
                "request {id}: the device's answer"
            );
            assert!(
                w[kept..clearable].iter().all(|&b| b == 0),
                "request {id}: bytes the device did not write are not zero: {:?}",
                &w[kept..clearable]
            );
            if r.status {
                assert_eq!(
                    w[r.writable - 1],
                    r.last_written.unwrap_or(PRESET_STATUS),
                    "request {id}: the status shown is not the one the device wrote (or the \
                     preset), used length {:?}",
                    r.result
                );
            }
        }
        // 3. the lifecycle
        let state = self.dev.state();
        assert_eq!(queue.is_broken(), self.closed, "queue closed");
        assert_eq!(
            state == DeviceState::NeedsReset,
            self.closed,
            "device state {state:?}"
        );
    }

    /// End of a case: recover, drop everything; every request has ended and no memory leaked.
    fn finish_case(mut self) {
        self.recover();
        for id in 0..self.reqs.len() {
            if matches!(self.reqs[id].handle, Handle::Held(_)) {
                self.drop_req(id);
            }
        }
        self.check();
        assert!(self.reqs.iter().all(|r| r.result.is_some()));
        assert_eq!(self.queue().slots_in_use(), 0, "request memory leaked");
        assert_eq!(self.queue().in_flight(), 0);
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(192)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Random interleavings of submits, answers (right and wrong lengths), bad used entries,
    /// interrupts, timeouts, drops, NEEDS_RESET and recoveries keep the three invariants.
    #[test]
    fn random_interleavings_keep_memory_results_and_recovery_right(
        ops in prop::collection::vec(op(), 1..100)
    ) {
        let mut h = Harness::new();
        for op in &ops {
            h.step(op);
            h.check();
        }
        h.finish_case();
    }
}
