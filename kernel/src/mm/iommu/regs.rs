//! A VT-d remapping unit's registers (Intel VT-d specification, chapter 11), reached by
//! volatile loads and stores at its register base (below 4 GiB, identity-mapped).

/// Register offsets (VT-d 11.4).
pub const CAP: usize = 0x08;
pub const ECAP: usize = 0x10;
pub const GCMD: usize = 0x18;
pub const GSTS: usize = 0x1c;
pub const RTADDR: usize = 0x20;
pub const CCMD: usize = 0x28;
pub const FSTS: usize = 0x34;
pub const FECTL: usize = 0x38;

/// GCMD/GSTS bits (VT-d 11.4.4, 11.4.5).
pub const GCMD_TE: u32 = 1 << 31;
pub const GCMD_SRTP: u32 = 1 << 30;
pub const GCMD_QIE: u32 = 1 << 26;
pub const GCMD_IRE: u32 = 1 << 25;
/// The one-shot command bits, which must not be written back from GSTS (VT-d 11.4.4: "software
/// must ... preserve" the others).
pub const GSTS_ONE_SHOT: u32 = 0x96ff_ffff;

/// CCMD: invalidate context cache, global granularity (VT-d 11.4.7).
pub const CCMD_ICC: u64 = 1 << 63;
pub const CCMD_GLOBAL: u64 = 1 << 61;

/// IOTLB invalidate register (at ECAP.IRO * 16 + 8; VT-d 11.4.8.1) and granularities.
pub const IOTLB_IVT: u64 = 1 << 63;
pub const IOTLB_GLOBAL: u64 = 1 << 60;
pub const IOTLB_DOMAIN: u64 = 2 << 60;
pub const IOTLB_PAGE: u64 = 3 << 60;
pub const IOTLB_DRAIN_READS: u64 = 1 << 49;
pub const IOTLB_DRAIN_WRITES: u64 = 1 << 48;

/// FSTS bits (VT-d 11.4.9.1): primary fault overflow, primary pending fault.
pub const FSTS_PFO: u32 = 1 << 0;
pub const FSTS_PPF: u32 = 1 << 1;
/// FECTL: interrupt mask (VT-d 11.4.9.2).
pub const FECTL_IM: u32 = 1 << 31;

/// A unit's register page.
pub struct Regs {
    base: u64,
}

impl Regs {
    /// # Safety
    /// `base` must be the physical (identity-mapped) address of a VT-d register set, used by no
    /// one else.
    pub unsafe fn new(base: u64) -> Self {
        Regs { base }
    }

    pub fn read32(&self, offset: usize) -> u32 {
        // SAFETY: `offset` is a register of the unit (the constants above, or offsets the unit's
        // own CAP/ECAP report), inside its register page, which `new`'s caller vouched for.
        unsafe { core::ptr::read_volatile((self.base + offset as u64) as *const u32) }
    }

    pub fn write32(&self, offset: usize, value: u32) {
        // SAFETY: as in `read32`.
        unsafe { core::ptr::write_volatile((self.base + offset as u64) as *mut u32, value) }
    }

    pub fn read64(&self, offset: usize) -> u64 {
        // SAFETY: as in `read32`; 64-bit registers are 8-byte aligned.
        unsafe { core::ptr::read_volatile((self.base + offset as u64) as *const u64) }
    }

    pub fn write64(&self, offset: usize, value: u64) {
        // SAFETY: as in `read64`.
        unsafe { core::ptr::write_volatile((self.base + offset as u64) as *mut u64, value) }
    }

    /// Reads GSTS until `(status & mask) == want` (a bounded number of times); returns whether it
    /// got there. Hardware completes these commands promptly (QEMU: within the register write).
    pub fn wait_status(&self, mask: u32, want: u32) -> bool {
        for _ in 0..1_000_000 {
            if self.read32(GSTS) & mask == want {
                return true;
            }
            core::hint::spin_loop();
        }
        false
    }

    /// Issues a global command bit (VT-d 11.4.4: the others are written back from GSTS, minus
    /// the one-shot ones) and waits for its status bit.
    pub fn command(&self, bit: u32, on: bool) -> bool {
        let status = self.read32(GSTS) & GSTS_ONE_SHOT;
        let value = if on { status | bit } else { status & !bit };
        self.write32(GCMD, value);
        self.wait_status(bit, if on { bit } else { 0 })
    }

    /// Reads a 64-bit register until `bit` is clear (an invalidation finished).
    pub fn wait_clear64(&self, offset: usize, bit: u64) -> bool {
        for _ in 0..1_000_000 {
            if self.read64(offset) & bit == 0 {
                return true;
            }
            core::hint::spin_loop();
        }
        false
    }
}
