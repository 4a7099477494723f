//! The request engine's two types: [`RequestBuilder`] (a slot being filled) and [`Request`] (an
//! owned handle to a posted or finished request).
//!
//! A request is `device-readable bytes | device-writable bytes`, one contiguous region of the
//! queue's preallocated memory ([`super::slots`]), posted as at most two descriptors. The
//! per-service builders (`cipher.rs`, `session.rs`) append the readable parts (header, IV, key,
//! source) and size the writable ones (destination, reply, status); the device writes its status
//! into the last writable byte(s).
//!
//! Completion goes either to a task waiting in [`Request::wait`] (it sleeps; no allocation) or to
//! an [`OnComplete`] handler run after the queue lock is dropped, which receives the finished
//! request by value. A `Request` owns its slot and holds the queue by `Arc`, so a task or a stream
//! can keep it as long as it likes; dropping it releases the slot — or, while the device still
//! has it, leaves the memory with the queue until the device gives it back.

use alloc::sync::Arc;
use alloc::vec::Vec;
use spin::Once;

use virtio_drivers::Hal;
use zerocopy::{Immutable, IntoBytes};

use super::queue::{CryptoQueue, QueueCore, Seal, SpaceWait};
pub use super::queue::{Finished, OnComplete};
use super::slots::CpuView;
use super::slots::OwnedBuffers;
use crate::error::Error;
use crate::sync::platform;

/// A request being built in its slot. Dropping it releases the slot.
///
/// The builder works on its slot's memory without locks: the slot is `Building` and this is its
/// only handle, so nothing else reads or writes the region until it is posted. What the queue
/// needs to know of it besides the bytes travels with it (its seal) and is recorded when it
/// is posted.
pub struct RequestBuilder<H: Hal> {
    request: Request<H>,
    cursor: usize,
    /// Address of the slot's region (at least readable + writable bytes).
    base: usize,
    seal: Seal,
}

impl<H: Hal> RequestBuilder<H> {
    /// A builder for the slot `reserve` took, with its region at `base`.
    pub(crate) fn new(
        core: Arc<QueueCore<H>>,
        slot: u16,
        base: usize,
        readable: usize,
        writable: usize,
    ) -> Self {
        RequestBuilder {
            request: Request {
                core,
                slot,
                readable,
                writable,
                from_callback: false,
                seen: Once::new(),
            },
            cursor: 0,
            base,
            seal: Seal::default(),
        }
    }

    /// The whole region (readable then writable). Its bytes are whatever the slot held before
    /// until written: the readable part must be pushed in full before posting, and the
    /// writable part is only handed out zeroed (`writable_mut`) or written by the device (the
    /// completion zeroes what the device did not write).
    fn region_mut(&mut self) -> &mut [u8] {
        let len = self.request.readable + self.request.writable;
        // SAFETY: `base` is the slot's region, at least `len` bytes (`Storage::reserve`). The
        // slot is `Building` and this builder is its only handle (`&mut self`), so neither the
        // device nor another CPU touches the region meanwhile.
        unsafe { core::slice::from_raw_parts_mut(self.base as *mut u8, len) }
    }

    /// Appends device-readable bytes. Fails if they overflow the size reserved.
    pub fn push(&mut self, bytes: &[u8]) -> Result<&mut Self, Error> {
        let readable = self.request.readable;
        let end = self.cursor + bytes.len();
        if end > readable {
            return Err(Error::RequestTooLarge {
                got: end as u64,
                max: readable as u64,
            });
        }
        let cursor = self.cursor;
        self.region_mut()[cursor..end].copy_from_slice(bytes);
        self.cursor = end;
        Ok(self)
    }

    /// Appends a wire struct as device-readable bytes.
    pub fn push_struct<T: IntoBytes + Immutable>(&mut self, value: &T) -> Result<&mut Self, Error> {
        self.push(value.as_bytes())
    }

    /// Overwrites device-readable bytes already pushed, at `offset` (a chained stream writes a
    /// chunk's IV once the previous chunk has finished). Fails outside what was pushed.
    pub fn patch(&mut self, offset: usize, bytes: &[u8]) -> Result<&mut Self, Error> {
        let end = offset.saturating_add(bytes.len());
        if end > self.cursor {
            return Err(Error::RequestTooLarge {
                got: end as u64,
                max: self.cursor as u64,
            });
        }
        self.region_mut()[offset..end].copy_from_slice(bytes);
        Ok(self)
    }

    /// The device-writable part, zeroed, to preset (a reply sentinel the device must
    /// overwrite).
    pub fn writable_mut(&mut self) -> &mut [u8] {
        let readable = self.request.readable;
        let writable = &mut self.region_mut()[readable..];
        writable.fill(0);
        writable
    }

    /// Presets the last device-writable byte (the status the device must overwrite), without
    /// touching the rest (the device writes it all, or the completion zeroes what it did not).
    pub fn preset_status(&mut self, status: u8) -> &mut Self {
        self.preset_reply(&[status])
    }

    /// Presets the trailing device-writable bytes with `reply` (the reply the device must
    /// overwrite: a status, or a session-create reply). These bytes are the device's reply
    /// wherever the used length ends: the virtio-crypto status is the last byte of the last
    /// writable descriptor (virtio 1.2, 5.9.7), and the used length counts the bytes written,
    /// not where (virtio 1.2, 2.7.8), so a device may write only its status and say 1. The
    /// completion never clears them: what the device did not write of them is this preset,
    /// never an earlier request's bytes.
    pub fn preset_reply(&mut self, reply: &[u8]) -> &mut Self {
        let readable = self.request.readable;
        let writable = &mut self.region_mut()[readable..];
        let n = reply.len().min(writable.len());
        let start = writable.len() - n;
        writable[start..].copy_from_slice(&reply[reply.len() - n..]);
        self.seal.reply_len = n as u32;
        self
    }

    /// The least used length a correct answer has (the reply and status the device must
    /// write): a shorter one fails the request with `MalformedCompletion`.
    pub fn expect_used(&mut self, min: usize) -> &mut Self {
        self.seal.min_used = min.min(u32::MAX as usize) as u32;
        self
    }

    /// Ties the request to device generation `generation` (that of the session it names): it is
    /// refused with `SessionLost` if the device was reset since (checked under the queue lock, so
    /// an old session id never reaches the new device, where it may name another session).
    pub fn bind_generation(&mut self, generation: u64) -> &mut Self {
        self.seal.generation = Some(generation);
        self
    }

    /// Points the device at the caller's own buffers instead of copying them (zero copy):
    /// `src` is read after the readable bytes pushed, `dst` written before the writable part.
    /// The request keeps them until [`Request::take_buffers`] (or frees them when dropped).
    pub fn hand_over(&mut self, buffers: OwnedBuffers) -> &mut Self {
        let old = self
            .request
            .core
            .storage()
            .hand_over(self.request.slot, buffers);
        drop(old);
        self
    }

    /// Zeroizes the readable part when the slot is released (it carries key material), also
    /// if the request is never posted.
    pub fn wipe_on_release(&mut self) -> &mut Self {
        self.request
            .core
            .storage()
            .wipe_on_release(self.request.slot);
        self
    }

    fn check_complete(&self) -> Result<(), Error> {
        if self.cursor != self.request.readable {
            return Err(Error::MalformedCompletion {
                what: "a request was submitted before its readable part was filled",
            });
        }
        Ok(())
    }

    /// Posts the request; completion is collected with [`Request::wait`]. Sleeps while the ring
    /// is full.
    pub fn submit(self) -> Result<Request<H>, Error> {
        self.check_complete()?;
        let request = self.request;
        request
            .core
            .post(request.slot, self.seal, None, SpaceWait::Sleep)?;
        Ok(request)
    }

    /// Like [`submit`](Self::submit), but a request that could not be posted comes back with
    /// the error (still unposted: its handed-over buffers can be taken back).
    pub fn submit_keeping(mut self) -> (Request<H>, Option<Error>) {
        if let Err(e) = self.check_complete() {
            // What was not pushed still holds an earlier request's bytes.
            let cursor = self.cursor;
            self.region_mut()[cursor..].fill(0);
            return (self.request, Some(e));
        }
        let request = self.request;
        let error = request
            .core
            .post(request.slot, self.seal, None, SpaceWait::Sleep)
            .err();
        (request, error)
    }

    /// Like [`submit`](Self::submit), but never sleeps: on a full ring it drains the queue and
    /// spins (for callers holding a preemption-off lock: the `ctrl=poll` baseline).
    pub fn submit_polled(self) -> Result<Request<H>, Error> {
        self.check_complete()?;
        let request = self.request;
        request
            .core
            .post(request.slot, self.seal, None, SpaceWait::Poll)?;
        Ok(request)
    }

    /// Posts the request; `handler` gets it when it finishes (see [`OnComplete`] for the
    /// context it runs in). On error the request is released and the handler not called; the
    /// release frees nothing (a spill stays with its slot), so a completion handler may call
    /// this.
    ///
    /// With interrupts off (a completion handler in interrupt context) a full ring is
    /// `QueueFull` at once instead of a sleep, which is impossible there.
    pub fn submit_with(self, handler: Arc<dyn OnComplete<H>>) -> Result<(), Error> {
        self.check_complete()?;
        let mut request = self.request;
        let platform = platform::get();
        let irqs_enabled = platform.irq_save();
        platform.irq_restore(irqs_enabled);
        let wait = if irqs_enabled {
            SpaceWait::Sleep
        } else {
            SpaceWait::Never
        };
        if let Err(e) = request
            .core
            .post(request.slot, self.seal, Some(handler), wait)
        {
            // Possibly in interrupt context: the drop must not free a spill.
            request.from_callback = true;
            return Err(e);
        }
        // The handler gets a new handle for the slot; this one must not release it.
        core::mem::forget(request);
        Ok(())
    }
}

impl<H: Hal> CryptoQueue<H> {
    /// Takes a slot for a request of `readable + writable` bytes (sleeping while every slot is
    /// in use) and returns its builder. No allocation for requests that fit the queue's
    /// preallocated memory.
    pub fn reserve(&self, readable: usize, writable: usize) -> Result<RequestBuilder<H>, Error> {
        if readable + writable == 0 {
            return Err(Error::EmptyRequest);
        }
        if self.is_broken() {
            return Err(self.closed_error());
        }
        let deadline = crate::sync::platform::get()
            .now_ns()
            .saturating_add(self.timeout_ns());
        let (slot, base) = self
            .core()
            .storage()
            .reserve(readable, writable, &|| self.is_broken(), deadline)
            .map_err(|e| match e {
                Error::DeviceNeedsReset => self.closed_error(),
                e => e,
            })?;
        if self.is_broken() {
            let _none = self.core().storage().release(slot, false);
            return Err(self.closed_error());
        }
        Ok(RequestBuilder::new(
            self.core().clone(),
            slot,
            base,
            readable,
            writable,
        ))
    }

    /// Takes `count` request slots at once for a batch, sleeping until that many are free (all
    /// or none, so batches never hold part and wait for each other), at most the queue's
    /// timeout; more than the queue has is [`Error::BatchTooLarge`] at once. Build the batch's
    /// requests from the group ([`SlotGroup::builder`]); slots it does not use are freed when
    /// it is dropped.
    pub fn reserve_group(&self, count: usize) -> Result<SlotGroup<H>, Error> {
        if self.is_broken() {
            return Err(self.closed_error());
        }
        let deadline = crate::sync::platform::get()
            .now_ns()
            .saturating_add(self.timeout_ns());
        let slots = self
            .core()
            .storage()
            .take(count, &|| self.is_broken(), deadline)
            .map_err(|e| match e {
                Error::DeviceNeedsReset => self.closed_error(),
                e => e,
            })?;
        Ok(SlotGroup::new(self.core().clone(), slots))
    }
}

/// Request slots taken together for a batch ([`CryptoQueue::reserve_group`]): each
/// [`builder`](Self::builder) call uses one. Those not used go back to the queue when the group
/// is dropped.
pub struct SlotGroup<H: Hal> {
    core: Arc<QueueCore<H>>,
    slots: Vec<u16>,
}

impl<H: Hal> SlotGroup<H> {
    pub(crate) fn new(core: Arc<QueueCore<H>>, slots: Vec<u16>) -> Self {
        SlotGroup { core, slots }
    }

    /// Slots not used yet.
    pub fn remaining(&self) -> usize {
        self.slots.len()
    }

    /// A builder for a request of `readable + writable` bytes in one of the group's slots
    /// (never waits); `BatchTooLarge` when the group has none left.
    pub fn builder(
        &mut self,
        readable: usize,
        writable: usize,
    ) -> Result<RequestBuilder<H>, Error> {
        if readable + writable == 0 {
            return Err(Error::EmptyRequest);
        }
        if self.core.is_broken() {
            return Err(self.core.closed_error());
        }
        let Some(slot) = self.slots.pop() else {
            return Err(Error::BatchTooLarge { got: 1, max: 0 });
        };
        let base = self.core.storage().assign(slot, readable, writable)?;
        Ok(RequestBuilder::new(
            self.core.clone(),
            slot,
            base,
            readable,
            writable,
        ))
    }
}

impl<H: Hal> Drop for SlotGroup<H> {
    fn drop(&mut self) {
        self.core.storage().give_back(&self.slots);
    }
}

/// Where a request's slot comes from: its queue (sleeping while every slot is taken), or a
/// group of slots a batch took together.
pub enum SlotSource<'a, H: Hal> {
    Queue(&'a CryptoQueue<H>),
    Group(&'a mut SlotGroup<H>),
}

impl<H: Hal> SlotSource<'_, H> {
    /// A builder for a request of `readable + writable` bytes.
    pub fn reserve(self, readable: usize, writable: usize) -> Result<RequestBuilder<H>, Error> {
        match self {
            SlotSource::Queue(queue) => queue.reserve(readable, writable),
            SlotSource::Group(group) => group.builder(readable, writable),
        }
    }
}

impl<'a, H: Hal> From<&'a CryptoQueue<H>> for SlotSource<'a, H> {
    fn from(queue: &'a CryptoQueue<H>) -> Self {
        SlotSource::Queue(queue)
    }
}

impl<'a, H: Hal> From<&'a mut SlotGroup<H>> for SlotSource<'a, H> {
    fn from(group: &'a mut SlotGroup<H>) -> Self {
        SlotSource::Group(group)
    }
}

/// Requests built on one queue and posted together by [`submit`](Self::submit): one
/// kick-prepare, and at most one doorbell, for all of them instead of one per request. Keep one
/// and reuse it: once its vectors have grown it allocates nothing.
pub struct RequestBatch<H: Hal> {
    builders: Vec<RequestBuilder<H>>,
    slots: Vec<(u16, Seal)>,
}

impl<H: Hal> Default for RequestBatch<H> {
    fn default() -> Self {
        RequestBatch {
            builders: Vec::new(),
            slots: Vec::new(),
        }
    }
}

impl<H: Hal> RequestBatch<H> {
    pub fn with_capacity(requests: usize) -> Self {
        RequestBatch {
            builders: Vec::with_capacity(requests),
            slots: Vec::with_capacity(requests),
        }
    }

    pub fn len(&self) -> usize {
        self.builders.len()
    }

    pub fn is_empty(&self) -> bool {
        self.builders.is_empty()
    }

    /// Adds a built request. All requests of a batch go to one queue: another queue's is
    /// refused (and released).
    pub fn push(&mut self, builder: RequestBuilder<H>) -> Result<(), Error> {
        builder.check_complete()?;
        if let Some(first) = self.builders.first()
            && !Arc::ptr_eq(&first.request.core, &builder.request.core)
        {
            return Err(Error::NotSupported {
                what: "a request batch over several queues",
            });
        }
        self.builders.push(builder);
        Ok(())
    }

    /// Posts every request in order and appends each to `posted` (collect them with
    /// [`Request::wait`]). A full ring rings for what was added and sleeps for space, as
    /// [`RequestBuilder::submit`] does. On an error the requests posted before it are in
    /// `posted`, the others are released, and the error is returned. The batch is empty after.
    pub fn submit(&mut self, posted: &mut Vec<Request<H>>) -> Result<(), Error> {
        let Some(first) = self.builders.first() else {
            return Ok(());
        };
        let core = first.request.core.clone();
        self.slots.clear();
        self.slots
            .extend(self.builders.iter().map(|b| (b.request.slot, b.seal)));
        let (count, result) = core.post_batch(&self.slots);
        for (i, builder) in self.builders.drain(..).enumerate() {
            if i < count {
                posted.push(builder.request);
            }
        }
        result
    }
}

/// An owned request: in flight, or finished and holding its result and output.
pub struct Request<H: Hal> {
    core: Arc<QueueCore<H>>,
    slot: u16,
    /// Sizes of the device-readable and device-writable parts (fixed once reserved).
    readable: usize,
    writable: usize,
    /// Handed to an `OnComplete` handler, possibly in interrupt context: dropping it must not
    /// free a spill.
    from_callback: bool,
    /// The outcome and the region, kept once this owner saw the request finished with its
    /// memory the CPU's: neither changes again until the request is dropped, so reading them
    /// needs no slot lock (under TCG a lock round trip, which enables interrupts again, costs
    /// about 0.3 us).
    seen: Once<(Result<u32, Error>, CpuView)>,
}

impl<H: Hal> From<Finished<H>> for Request<H> {
    /// The request a handler was given (possibly in interrupt context: dropping it frees
    /// nothing).
    fn from(finished: Finished<H>) -> Self {
        Request {
            core: finished.core,
            slot: finished.slot,
            readable: finished.readable,
            writable: finished.writable,
            from_callback: true,
            seen: Once::new(),
        }
    }
}

impl<H: Hal> Request<H> {
    fn lengths(&self) -> (usize, usize) {
        (self.readable, self.writable)
    }

    /// The whole region (readable then writable) while the CPU owns it; empty while the
    /// device may use it.
    fn region(&self) -> &[u8] {
        let view = match self.seen.get() {
            Some(&(_, view)) => view,
            None => match self.core.storage().cpu_view(self.slot) {
                Some(view) => view,
                None => return &[],
            },
        };
        // SAFETY: `cpu_view` (and `poll_wait`, whose view `seen` keeps) gives the region only in
        // the phases where the CPU owns it (Building, or Done and not the device's), in which
        // only this request's owner touches it; the slice lives as long as `&self`, and the
        // phase cannot change while the owner holds the request (only the owner's drop or a
        // reset reclaim, which needs the device reset and leaves the memory the CPU's, change
        // it; a reclaim never moves a slot's memory).
        unsafe {
            core::slice::from_raw_parts(view.base as *const u8, view.readable + view.writable)
        }
    }

    /// The device-readable part (empty while in flight, and after a failure that left the
    /// memory with the device).
    pub fn readable(&self) -> &[u8] {
        let (readable, _) = self.lengths();
        let region = self.region();
        &region[..readable.min(region.len())]
    }

    /// The device-writable part (empty while in flight).
    pub fn writable(&self) -> &[u8] {
        let (readable, _) = self.lengths();
        let region = self.region();
        &region[readable.min(region.len())..]
    }

    /// The device-writable part, mutable (empty while in flight).
    pub fn writable_mut(&mut self) -> &mut [u8] {
        let Some(view) = self.core.storage().cpu_view(self.slot) else {
            return &mut [];
        };
        // SAFETY: as in `region`; `&mut self` makes this the only reference.
        unsafe {
            core::slice::from_raw_parts_mut((view.base + view.readable) as *mut u8, view.writable)
        }
    }

    /// The caller's buffers handed over with [`RequestBuilder::hand_over`], once the device is
    /// done with them (`None` while in flight, and after a failure that left them with the
    /// device: they are freed after its reset).
    pub fn take_buffers(&mut self) -> Option<OwnedBuffers> {
        self.core.storage().take_buffers(self.slot)
    }

    /// Whether the device returned the request (or it failed). Once it says yes, the outcome
    /// and the region are kept (`seen`): a wait or a read after it takes no slot lock.
    pub fn is_done(&self) -> bool {
        if self.seen.is_completed() {
            return true;
        }
        match self.core.storage().poll_wait(self.slot, None) {
            Some((outcome, Some(view))) => {
                self.seen.call_once(|| (outcome, view));
                true
            }
            Some((_, None)) => true,
            None => false,
        }
    }

    /// The used length, or why the request failed; `None` while in flight.
    pub fn outcome(&self) -> Option<Result<u32, Error>> {
        match self.seen.get() {
            Some(&(outcome, _)) => Some(outcome),
            None => self.core.storage().outcome(self.slot),
        }
    }

    /// Sleeps until the request finishes or `deadline_ns` (platform clock) passes; returns the
    /// used length, or why it failed (`Timeout` at the deadline: the request stays in flight and
    /// may be waited for again). Allocates nothing.
    pub fn wait_until(&self, deadline_ns: Option<u64>) -> Result<u32, Error> {
        if let Some(&(outcome, _)) = self.seen.get() {
            return outcome;
        }
        let platform = platform::get();
        let storage = self.core.storage();
        let seen = |(outcome, view): (Result<u32, Error>, Option<CpuView>)| {
            if let Some(view) = view {
                self.seen.call_once(|| (outcome, view));
            }
            outcome
        };
        let mut registered = false;
        loop {
            if let Some(finished) = storage.poll_wait(self.slot, None) {
                return seen(finished);
            }
            // Registered only once it is known to be needed: a request found finished is
            // collected without looking up the current task.
            if !registered {
                registered = true;
                // Reap: collect what the device answered before its interrupt came; if this
                // request is among it, no sleep, interrupt or wake-up is needed for it.
                if self.core.reaps()
                    && self.core.drain() > 0
                    && let Some(finished) = storage.poll_wait(self.slot, None)
                {
                    return seen(finished);
                }
                if let Some(finished) = storage.poll_wait(self.slot, Some(platform.current_task()))
                {
                    return seen(finished);
                }
            }
            if deadline_ns.is_some_and(|d| platform.now_ns() >= d) {
                storage.stop_waiting(self.slot);
                return match self.outcome() {
                    Some(outcome) => outcome,
                    None => Err(Error::Timeout),
                };
            }
            platform.block(deadline_ns);
        }
    }

    /// Like [`wait_until`](Self::wait_until) with a timeout from now.
    pub fn wait(&self, timeout_ns: u64) -> Result<u32, Error> {
        let deadline = platform::get().now_ns().saturating_add(timeout_ns);
        self.wait_until(Some(deadline))
    }

    /// Drains their queue until every request of `requests` (all on one queue) has finished,
    /// or `deadline_ns` passes (`Timeout`: the device stopped answering; the requests stay in
    /// flight). For a poller that owns the queue ([`CryptoQueue::set_polled`]).
    pub fn poll_all(requests: &[Request<H>], deadline_ns: u64) -> Result<(), Error> {
        let Some(first) = requests.first() else {
            return Ok(());
        };
        while !requests.iter().all(Request::is_done) {
            if platform::get().now_ns() >= deadline_ns {
                return Err(Error::Timeout);
            }
            first.core.drain();
            core::hint::spin_loop();
        }
        Ok(())
    }

    /// Drains the queue until this request finishes (the busy-poll baseline); `Timeout` after
    /// `deadline_ns`.
    pub fn poll_until(&self, deadline_ns: u64) -> Result<u32, Error> {
        loop {
            self.core.drain();
            if let Some(outcome) = self.outcome() {
                return outcome;
            }
            if platform::get().now_ns() >= deadline_ns {
                return Err(Error::Timeout);
            }
            core::hint::spin_loop();
        }
    }
}

impl<H: Hal> Drop for Request<H> {
    fn drop(&mut self) {
        // In flight, the drain frees the slot when the device gives it back; failed while the
        // device could still write, a reset does.
        let leftovers = self.core.storage().abandon(self.slot, !self.from_callback);
        drop(leftovers); // nothing from a handler: nothing is freed in interrupt context
    }
}
