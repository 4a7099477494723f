//! Leaving QEMU through isa-debug-exit (port 0xf4): QEMU exits with `(code << 1) | 1`.

const DEBUG_EXIT_PORT: u16 = 0xf4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ExitCode {
    /// QEMU exits 33.
    Success = 0x10,
    /// QEMU exits 35.
    Failure = 0x11,
}

/// Exits QEMU. If no isa-debug-exit device is present, halts forever.
pub fn exit(code: ExitCode) -> ! {
    super::port::outl(DEBUG_EXIT_PORT, code as u32);
    super::halt_forever()
}
