//! Where the kernel command line comes from. Its format and the one parser for it are in
//! [`vcrypt_drivers::cmdline`] (host-tested); this module only fetches the bytes.
//!
//! `run-qemu.sh` hands the line over as the fw_cfg file `opt/vcrypt/cmdline` (`-fw_cfg
//! name=...,file=...`), read here through fw_cfg's I/O ports, in full: QEMU's PVH loader copies
//! `-append` into a 4096-byte buffer of its option ROM (`pc-bios/optionrom/pvh_main.c`,
//! `CMDLINE_BUFSIZE`) without a bound, so a longer `-append` overwrites the start info before
//! the kernel runs. Without that file (QEMU started by hand) the PVH start info's copy is used.

use alloc::string::String;
use alloc::vec::Vec;

pub use vcrypt_drivers::cmdline::{Cmdline, MAX_CMDLINE_BYTES, shown};

/// The fw_cfg file `run-qemu.sh` writes the command line to.
pub const FW_CFG_FILE: &str = "opt/vcrypt/cmdline";

/// The parsed words for the boot line, each shown quoted and escaped (long ones cut, with their
/// length: this is for the reader, the parse above has every byte).
pub fn shown_words(cmdline: &Cmdline) -> String {
    let words = cmdline.words.iter().map(|w| shown(w));
    let switches = cmdline
        .switches
        .iter()
        .map(|(k, v)| alloc::format!("{k}={}", shown(v)));
    words.chain(switches).collect::<Vec<_>>().join(" ")
}

/// The command line's bytes and where they came from.
pub fn fetch(pvh_cmdline: &[u8]) -> Result<(Vec<u8>, &'static str), String> {
    match fw_cfg::find_file(FW_CFG_FILE) {
        Some((select, size)) => {
            let size = size as usize;
            if size > MAX_CMDLINE_BYTES {
                return Err(alloc::format!(
                    "the command line in fw_cfg {FW_CFG_FILE} is {size} bytes; the limit is {MAX_CMDLINE_BYTES} bytes"
                ));
            }
            let mut line = alloc::vec![0; size];
            fw_cfg::read(select, &mut line);
            Ok((line, "fw_cfg"))
        }
        None => Ok((pvh_cmdline.to_vec(), "PVH -append")),
    }
}

/// QEMU's firmware configuration device at the hardware edge: a 16-bit selector port and an
/// 8-bit data port (the traditional I/O interface; no DMA needed for a few KiB).
mod fw_cfg {
    use x86_64::instructions::port::Port;

    const SELECTOR: u16 = 0x510;
    const DATA: u16 = 0x511;
    const SIGNATURE: u16 = 0x0000;
    const FILE_DIR: u16 = 0x0019;

    fn select(key: u16) {
        // SAFETY: 0x510 is fw_cfg's selector port on QEMU's PC machines; selecting an item only
        // changes which item the data port reads, and touches no memory.
        unsafe { Port::<u16>::new(SELECTOR).write(key) }
    }

    fn byte() -> u8 {
        // SAFETY: 0x511 is fw_cfg's data port; a read returns the next byte of the selected
        // item (0 past its end, or 0xff when there is no fw_cfg) and touches no memory.
        unsafe { Port::<u8>::new(DATA).read() }
    }

    /// Selects `key` and fills `buf` from it.
    pub fn read(key: u16, buf: &mut [u8]) {
        select(key);
        buf.iter_mut().for_each(|b| *b = byte());
    }

    fn be32() -> u32 {
        u32::from_be_bytes([byte(), byte(), byte(), byte()])
    }

    /// (selector, size) of the named file, if fw_cfg exists and has it.
    pub fn find_file(name: &str) -> Option<(u16, u32)> {
        let mut signature = [0; 4];
        read(SIGNATURE, &mut signature);
        if &signature != b"QEMU" {
            return None;
        }
        select(FILE_DIR);
        let count = be32();
        // The directory is read in order; a short QEMU list means a few entries.
        for _ in 0..count.min(4096) {
            let size = be32();
            let key = u16::from_be_bytes([byte(), byte()]);
            let _reserved = [byte(), byte()];
            let mut entry = [0u8; 56];
            entry.iter_mut().for_each(|b| *b = byte());
            let len = entry.iter().position(|&b| b == 0).unwrap_or(56);
            if &entry[..len] == name.as_bytes() {
                return Some((key, size));
            }
        }
        None
    }
}
