//! A queue's side of a device reset: closing it to new requests, failing what the device held
//! once it was reset (or at once, when the ring broke), and a fresh ring after the reset. The
//! order that makes it safe is the device's (`CryptoDevice::recover`): close, reset and read
//! back 0, `fail_after_reset`, `rebuild`, `reopen`.

use alloc::sync::Arc;
use core::sync::atomic::Ordering;

use core::ptr::NonNull;

use virtio_drivers::transport::Transport;
use virtio_drivers::{BufferDirection, Hal, PhysAddr};

#[cfg(test)]
use super::BETWEEN_DETACH_AND_FAIL;
use super::{Locked, Posted, QueueCore, QueueGuard};
use crate::error::Error;
use crate::virtio_crypto::ring::{Regions, Ring};

/// Gives back the mappings of a request the ring no longer holds but `pop_used` never saw (failed
/// by a reset): the same regions and directions `VirtQueue::add` shared.
fn unshare_regions<H: Hal>(regions: &Regions) {
    let (src, dst) = (regions.src, regions.dst);
    for (region, direction) in [
        (regions.readable, BufferDirection::DriverToDevice),
        (src, BufferDirection::DriverToDevice),
        (dst, BufferDirection::DeviceToDriver),
        (regions.writable, BufferDirection::DeviceToDriver),
    ] {
        if let (Some(ptr), true) = (NonNull::new(region.addr as *mut u8), region.len > 0) {
            // SAFETY: the region was shared by `add` for this request and is still allocated
            // (the slot or the caller's buffers the slot holds); the device was reset, so it no
            // longer reaches it.
            unsafe {
                H::unshare(
                    region.addr as PhysAddr,
                    NonNull::slice_from_raw_parts(ptr, region.len),
                    direction,
                )
            };
        }
    }
}

impl<H: Hal> QueueCore<H> {
    /// Closes the queue to new requests and wakes every submitter waiting for space or a slot
    /// (they get [`closed_error`](Self::closed_error)). Requests in flight stay in flight: the
    /// device may still own their memory. Any context.
    pub fn close(&self) {
        self.broken.store(true, Ordering::Release);
        // Take and drop the queue lock: a submitter that checked `broken` under it before the
        // store above has finished its add, so the in-flight table is final for `fail_after_reset`.
        drop(self.locked.lock());
        self.space.wake_all();
        if let Some(storage) = self.storage.get() {
            storage.wake_all();
        }
    }

    /// After the device was reset (status 0 read back: it reaches no request memory any more):
    /// fails every request still in flight with `error` and frees the memory of every request
    /// the device held (in flight, abandoned by a timed-out waiter, or quarantined). Returns
    /// how many requests were in flight. Task context. The queue must be closed.
    pub fn fail_after_reset(self: &Arc<Self>, error: Error) -> usize {
        // Before anything is failed or reclaimed: a `fail_all` that took a request off the
        // ring before the reset and completes it after sees that the device no longer owns it
        // (checked under the slot lock, which the reclaim below also takes), so its slot is not
        // quarantined until the next reset.
        self.resets.fetch_add(1, Ordering::AcqRel);
        let mut failed = 0;
        let iommu = self.dma_faults.get().is_some();
        while let Some(entry) = self.detach_one() {
            if iommu {
                unshare_regions::<H>(&entry.regions);
            }
            self.complete(entry.slot, entry.handler, Err(error), false);
            failed += 1;
        }
        let parked = core::mem::take(&mut *self.unshare_after_reset.lock());
        for regions in &parked {
            unshare_regions::<H>(regions);
        }
        self.storage().reclaim_after_reset();
        if iommu {
            // Keep the reservation for the next reset (this is task context).
            let mut list = self.unshare_after_reset.lock();
            *list = parked;
            list.clear();
        }
        failed
    }

    /// Replaces the ring with a fresh one set up on `transport` (after a reset, between
    /// FEATURES_OK and DRIVER_OK); the request slots stay. Nothing may be in flight
    /// ([`fail_after_reset`](Self::fail_after_reset) first). The queue stays closed until
    /// [`reopen`](Self::reopen).
    pub fn rebuild<T: Transport>(&self, transport: &mut T) -> Result<(), Error> {
        let event_idx = self.locked.lock().ring.event_idx();
        let slots = self.locked.lock().posted.len();
        let fresh = Locked::new(Ring::<H>::new(transport, self.index, event_idx)?, slots);
        let old = {
            let mut locked = self.locked.lock();
            if locked.in_flight() > 0 {
                return Err(Error::NotSupported {
                    what: "rebuilding a queue with requests in flight",
                });
            }
            core::mem::replace(&mut *locked, fresh)
        };
        drop(old); // outside the lock: frees the old rings' DMA memory
        Ok(())
    }

    /// Opens a rebuilt queue to new requests.
    pub fn reopen(&self) {
        self.broken.store(false, Ordering::Release);
    }

    /// After a device reset: memory of requests failed while the device had them is reusable.
    pub fn reclaim_after_reset(&self) -> usize {
        self.storage().reclaim_after_reset()
    }

    /// See [`CryptoQueue::fail_all`].
    pub(crate) fn fail_all(self: &Arc<Self>, error: Error) {
        self.broken.store(true, Ordering::Release);
        // One at a time, completing outside the lock: no allocation, usable from interrupts.
        while let Some(entry) = self.detach_one() {
            #[cfg(test)]
            if let Some(hook) = BETWEEN_DETACH_AND_FAIL.with(|h| h.borrow_mut().take()) {
                hook();
            }
            if self.dma_faults.get().is_some() {
                // Mapped until the reset: the device may still use it.
                let mut list = self.unshare_after_reset.lock();
                if list.len() < list.capacity() {
                    list.push(entry.regions);
                }
            }
            self.complete(entry.slot, entry.handler, Err(error), true);
        }
        self.space.wake_all();
        if let Some(storage) = self.storage.get() {
            storage.wake_all();
        }
    }

    /// Takes one in-flight request off the ring (the guard is dropped before returning).
    fn detach_one(&self) -> Option<Posted<H>> {
        QueueGuard {
            locked: self.locked.lock(),
        }
        .take_any()
    }
}
