//! The slot phase changes (the only places a slot's phase is written, each under the slot's
//! lock) and what a request's owner may see of its slot.

use alloc::sync::Arc;

use super::{Leftovers, OwnedBuffers, Phase, Storage};
use crate::error::Error;
use crate::sync::Wake;
use crate::virtio_crypto::ring::{Region, Regions};

/// What [`Storage::finish`] did with a slot the ring gave back or a failure ended.
pub(crate) enum Finish {
    /// `Done`, and its waiting task (if any) woken: nothing more to do.
    Woken,
    /// `Done`: run its handler with the request (readable and writable lengths), after the
    /// slot lock was dropped.
    ToHandler { readable: usize, writable: usize },
    /// Abandoned by its owner and now free, or quarantined until the device is reset.
    Settled,
    /// Not a posted slot (the in-flight table names only posted ones): counted as malformed.
    NotPosted,
}

/// What a request owner may see of its slot's memory: the region while the CPU owns it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CpuView {
    pub(crate) base: usize,
    pub(crate) readable: usize,
    pub(crate) writable: usize,
}

/// The slot phase changes, each under the slot's lock: the only places a phase is written.
///
/// ```text
/// Free --reserve/assign--> Building --post--> InFlight --finish--> Done --drop--> Free
///                             ^                |    \                 \
///                             +---unpost-------+     drop: Abandoned   device may still own
///                                                    --finish--> Free  it: drop: Quarantined
///                                                    (or Quarantined)  --reset--> Free
/// ```
impl<H: virtio_drivers::Hal> Storage<H> {
    /// Building -> InFlight: the request's regions for the ring (its slot memory, then the
    /// caller's buffers it handed over), recording what the completion checks. `resets`: the
    /// queue's reset count now.
    pub(crate) fn post(
        &self,
        slot: u16,
        min_used: u32,
        reply_len: u32,
        generation: Option<u64>,
        resets: u64,
    ) -> Regions {
        let mut st = self.slots[slot as usize].state.lock();
        debug_assert_eq!(st.phase, Phase::Building);
        let (base, _) = self.region(slot, &st);
        let region = |addr: usize, len: usize| Region { addr, len };
        let regions = Regions {
            readable: region(base, st.readable),
            writable: region(base + st.readable, st.writable),
            src: st.external.as_ref().map_or(Region::default(), |b| {
                region(b.src.as_ptr() as usize, b.src.len())
            }),
            dst: st.external.as_ref().map_or(Region::default(), |b| {
                region(b.dst.as_ptr() as usize, b.dst.len())
            }),
            min_used,
        };
        st.phase = Phase::InFlight;
        st.min_used = min_used;
        st.reply_len = reply_len;
        st.posted_after_resets = resets;
        st.generation = generation;
        regions
    }

    /// InFlight -> Building: the request was not added after all; its owner has it again.
    pub(crate) fn unpost(&self, slot: u16) {
        self.slots[slot as usize].state.lock().phase = Phase::Building;
    }

    /// The device gave the request back, or it failed (`device_may_own`: without the device
    /// having given it back). `resets`: the queue's reset count now; a reset since it was
    /// posted means the device reaches it no more. InFlight -> Done (the writable bytes the
    /// device did not write are zeroed first, its reply never), Abandoned -> Free or
    /// Quarantined.
    pub(crate) fn finish(
        &self,
        slot: u16,
        result: Result<u32, Error>,
        device_may_own: bool,
        resets: u64,
        has_handler: bool,
    ) -> Finish {
        let mut st = self.slots[slot as usize].state.lock();
        let device_may_own = device_may_own && resets == st.posted_after_resets;
        match st.phase {
            Phase::InFlight => {
                if !device_may_own {
                    // The slot's writable bytes the device did not write (all of them on a
                    // failure) still hold an earlier request's: zero them before anyone can
                    // read them. The device's output is a prefix (the caller's own
                    // destination first, which is its own); the reply at the end (the status)
                    // is where the device writes it whatever the used length, and holds this
                    // request's preset until then: it is never cleared.
                    let reply = (st.reply_len as usize).min(st.writable);
                    let clearable = st.writable - reply;
                    let before = st.external.as_ref().map_or(0, |b| b.dst.len());
                    let written = match result {
                        Ok(len) => (len as usize)
                            .saturating_sub(reply)
                            .saturating_sub(before)
                            .min(clearable),
                        Err(_) => 0,
                    };
                    let (base, _) = self.region(slot, &st);
                    // SAFETY: the device returned the request (or never had it, or was reset),
                    // so the slot's region is the CPU's; this is inside its writable part,
                    // which `reserve` sized; the slot lock is held, so no owner reads it
                    // meanwhile.
                    unsafe {
                        core::ptr::write_bytes(
                            (base + st.readable + written) as *mut u8,
                            0,
                            clearable - written,
                        );
                    }
                }
                st.outcome = Some(result);
                st.device_may_own = device_may_own;
                st.phase = Phase::Done;
                if has_handler {
                    return Finish::ToHandler {
                        readable: st.readable,
                        writable: st.writable,
                    };
                }
                if let Some(waiter) = &st.waiter {
                    // Woken under the slot lock: the waiter removes its own registration under
                    // the same lock, so the `Arc` is never dropped here.
                    waiter.wake();
                }
                Finish::Woken
            }
            Phase::Abandoned if device_may_own => {
                st.phase = Phase::Quarantined;
                Finish::Settled
            }
            Phase::Abandoned => {
                let _none = self.release_locked(slot, st, false);
                Finish::Settled
            }
            _ => Finish::NotPosted,
        }
    }

    /// The owner drops its request: Building or Done -> Free (unless the device may still own
    /// the memory: Quarantined), InFlight -> Abandoned (freed when the device gives it back).
    /// `take_heap`: task context, the slot's heap memory is handed back to be freed.
    pub(crate) fn abandon(&self, slot: u16, take_heap: bool) -> Leftovers {
        let mut st = self.slots[slot as usize].state.lock();
        match st.phase {
            Phase::InFlight => st.phase = Phase::Abandoned,
            Phase::Done if st.device_may_own => st.phase = Phase::Quarantined,
            Phase::Building | Phase::Done => return self.release_locked(slot, st, take_heap),
            Phase::Free | Phase::Abandoned | Phase::Quarantined => {}
        }
        Leftovers::default()
    }

    /// The slot's region while the CPU owns it (Building, or Done and not the device's).
    pub(crate) fn cpu_view(&self, slot: u16) -> Option<CpuView> {
        let st = self.slots[slot as usize].state.lock();
        self.view_of(slot, &st)
    }

    fn view_of(&self, slot: u16, st: &super::SlotState) -> Option<CpuView> {
        let owned = matches!(st.phase, Phase::Building | Phase::Done) && !st.device_may_own;
        let (base, len) = self.region(slot, st);
        owned.then(|| CpuView {
            base,
            readable: st.readable.min(len),
            writable: st.writable.min(len - st.readable.min(len)),
        })
    }

    /// The used length, or why the request failed; `None` while it is in flight.
    pub(crate) fn outcome(&self, slot: u16) -> Option<Result<u32, Error>> {
        self.slots[slot as usize].state.lock().outcome
    }

    /// For a waiting task: the outcome once Done (its registration removed), with the region
    /// if the CPU owns it; else registers `waiter` (if given) to be woken by `finish`.
    pub(crate) fn poll_wait(
        &self,
        slot: u16,
        waiter: Option<Arc<dyn Wake>>,
    ) -> Option<(Result<u32, Error>, Option<CpuView>)> {
        let mut st = self.slots[slot as usize].state.lock();
        if st.phase == Phase::Done {
            let registered = st.waiter.take();
            let outcome = st.outcome;
            let view = self.view_of(slot, &st);
            drop(st);
            drop(registered);
            let outcome = outcome.unwrap_or(Err(Error::MalformedCompletion {
                what: "a finished request without a result",
            }));
            return Some((outcome, view));
        }
        if let Some(waiter) = waiter {
            st.waiter = Some(waiter);
        }
        None
    }

    /// The waiting task gives up: its registration is removed (outside the slot lock).
    pub(crate) fn stop_waiting(&self, slot: u16) {
        let waiter = self.slots[slot as usize].state.lock().waiter.take();
        drop(waiter);
    }

    /// The caller's buffers to point the device at instead of copying (Building only); an
    /// earlier pair comes back to be freed.
    pub(crate) fn hand_over(&self, slot: u16, buffers: OwnedBuffers) -> Option<OwnedBuffers> {
        self.slots[slot as usize]
            .state
            .lock()
            .external
            .replace(buffers)
    }

    /// The caller's buffers back, once the CPU owns them again.
    pub(crate) fn take_buffers(&self, slot: u16) -> Option<OwnedBuffers> {
        let mut st = self.slots[slot as usize].state.lock();
        let owned = matches!(st.phase, Phase::Building | Phase::Done) && !st.device_may_own;
        if owned { st.external.take() } else { None }
    }

    /// Zeroize the readable part when the slot is released (it holds key material).
    pub(crate) fn wipe_on_release(&self, slot: u16) {
        self.slots[slot as usize].state.lock().wipe_readable = true;
    }
}
