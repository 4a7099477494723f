//! Trips into the hypervisor, counted per CPU: under TCG every doorbell write, MMIO read,
//! interrupt delivery, EOI and IPI is handled under QEMU's global lock, so their number per
//! request bounds throughput (docs/DESIGN.md, "The cost model: trips into QEMU"). Counting is a relaxed add to the CPU's
//! own counter: no lock, no shared cache line between CPUs.

use core::sync::atomic::{AtomicU64, Ordering};

use super::percpu::{self, MAX_CPUS};

/// One kind of trip.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Trip {
    /// A virtqueue notification (doorbell) write.
    Doorbell = 0,
    /// A read of device MMIO registers (status, ISR, configuration).
    MmioRead = 1,
    /// An interrupt taken (any vector but the spurious one).
    Interrupt = 2,
    /// A local APIC end-of-interrupt write.
    Eoi = 3,
    /// An inter-processor interrupt sent.
    Ipi = 4,
}

const KINDS: usize = 5;

/// A CPU's trips by kind, and the nanoseconds it spent in the writes and reads it timed.
#[repr(align(64))]
struct CpuTrips([AtomicU64; KINDS], AtomicU64);

static TRIPS: [CpuTrips; MAX_CPUS] =
    [const { CpuTrips([const { AtomicU64::new(0) }; KINDS], AtomicU64::new(0)) }; MAX_CPUS];

/// Counts one trip of `kind` on the current CPU.
pub fn count(kind: Trip) {
    TRIPS[percpu::cpu_index()].0[kind as usize].fetch_add(1, Ordering::Relaxed);
}

/// Counts one trip of `kind` and adds the time `access` (the write or read that is the trip)
/// takes: the vCPU waits there for QEMU's global lock, and that wait is guest CPU time lost.
pub fn timed<R>(kind: Trip, access: impl FnOnce() -> R) -> R {
    // Counted before the access, as `count` does: the count never lags behind the access (an
    // EOI write can wait tens of microseconds for QEMU's global lock).
    count(kind);
    let start = super::tsc::now_ns();
    let result = access();
    TRIPS[percpu::cpu_index()].1.fetch_add(
        super::tsc::now_ns().saturating_sub(start),
        Ordering::Relaxed,
    );
    result
}

/// Trips of every kind, as counted so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TripCounts {
    pub doorbells: u64,
    pub mmio_reads: u64,
    pub interrupts: u64,
    pub eois: u64,
    pub ipis: u64,
    /// Nanoseconds spent in the doorbell, MMIO, EOI and IPI accesses (`timed`).
    pub in_trips_ns: u64,
}

impl TripCounts {
    /// All kinds together.
    pub fn total(&self) -> u64 {
        self.doorbells + self.mmio_reads + self.interrupts + self.eois + self.ipis
    }

    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &TripCounts) -> TripCounts {
        TripCounts {
            doorbells: self.doorbells - earlier.doorbells,
            mmio_reads: self.mmio_reads - earlier.mmio_reads,
            interrupts: self.interrupts - earlier.interrupts,
            eois: self.eois - earlier.eois,
            ipis: self.ipis - earlier.ipis,
            in_trips_ns: self.in_trips_ns - earlier.in_trips_ns,
        }
    }
}

/// The trips CPU `cpu` has taken.
pub fn of_cpu(cpu: usize) -> TripCounts {
    let c = &TRIPS[cpu].0;
    let get = |kind: Trip| c[kind as usize].load(Ordering::Relaxed);
    TripCounts {
        doorbells: get(Trip::Doorbell),
        mmio_reads: get(Trip::MmioRead),
        interrupts: get(Trip::Interrupt),
        eois: get(Trip::Eoi),
        ipis: get(Trip::Ipi),
        in_trips_ns: TRIPS[cpu].1.load(Ordering::Relaxed),
    }
}

/// The trips of every CPU added up.
pub fn all_cpus() -> TripCounts {
    (0..percpu::cpu_count()).fold(TripCounts::default(), |sum, cpu| {
        let c = of_cpu(cpu);
        TripCounts {
            doorbells: sum.doorbells + c.doorbells,
            mmio_reads: sum.mmio_reads + c.mmio_reads,
            interrupts: sum.interrupts + c.interrupts,
            eois: sum.eois + c.eois,
            ipis: sum.ipis + c.ipis,
            in_trips_ns: sum.in_trips_ns + c.in_trips_ns,
        }
    })
}
