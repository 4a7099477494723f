//! Port I/O at the hardware edge.

use x86_64::instructions::port::Port;

/// Writes a byte to an I/O port.
pub fn outb(port: u16, value: u8) {
    // SAFETY: callers use this only for the fixed legacy ports of this platform (PIT, PIC,
    // system control); a write to them cannot break memory safety.
    unsafe { Port::<u8>::new(port).write(value) }
}

/// Reads a byte from an I/O port.
pub fn inb(port: u16) -> u8 {
    // SAFETY: as for `outb`.
    unsafe { Port::<u8>::new(port).read() }
}

/// Writes a double word to an I/O port.
pub fn outl(port: u16, value: u32) {
    // SAFETY: as for `outb` (PCI configuration ports, isa-debug-exit).
    unsafe { Port::<u32>::new(port).write(value) }
}

/// Reads a double word from an I/O port.
pub fn inl(port: u16) -> u32 {
    // SAFETY: as for `outb`.
    unsafe { Port::<u32>::new(port).read() }
}
