//! Host tests of how the driver reads a device's answers that are legal but unusual, or broken:
//! a status written at the end of the writable area with a short used length (virtio 1.2,
//! 2.7.8: the used length counts bytes written, not where), and a queue that breaks under an
//! akcipher request. The device side is played by hand on the ring (`FakeRing`).

use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use std::thread;

use super::akcipher::{RsaHash, RsaKeyInfo, RsaKeyKind, RsaOp, RsaParams};
use super::device::CryptoDevice;
use super::fake::*;
use super::lifecycle::DeviceState;
use super::wire;
use crate::error::Error;

const EX1_DER: &str = include_str!("akcipher/testdata/ex1_1024.der.hex");

fn unhex(s: &str) -> Vec<u8> {
    let s: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    s.chunks(2)
        .map(|c| u8::from_str_radix(core::str::from_utf8(c).unwrap(), 16).unwrap())
        .collect()
}

fn private_params() -> RsaParams {
    RsaParams {
        key: Arc::new(RsaKeyInfo::parse(RsaKeyKind::Private, &unhex(EX1_DER)).unwrap()),
        hash: RsaHash::Sha1,
        generation: 0,
        counters: Arc::default(),
    }
}

/// A 1024-bit ciphertext below any modulus: the value 1.
fn ciphertext() -> Vec<u8> {
    let mut c = vec![0u8; 128];
    c[127] = 1;
    c
}

/// Writes `status` into the last writable byte of `chain` (where virtio-crypto puts it) and
/// nothing else.
fn write_status_only(chain: &Chain, status: u8) {
    let last = chain
        .descs
        .iter()
        .rev()
        .find(|d| d.writable())
        .expect("a writable descriptor");
    // SAFETY: the last byte of a device-writable buffer the driver posted and does not touch
    // until the chain is used.
    unsafe { core::ptr::write_volatile((last.addr + last.len as u64 - 1) as *mut u8, status) };
}

fn device() -> (CryptoDevice<FakeHal>, Vec<FakeRing>) {
    crypto_device(1, &CountingNotify::new())
}

/// An RSA decrypt the device fails and answers with its status byte only (used length 1, as
/// "bytes written" allows) must fail with that status, not come back as an empty plaintext.
#[test]
fn a_failed_decrypt_answered_with_only_its_status_is_an_error() {
    for (status, expected) in [
        (wire::STATUS_ERR, Error::DecryptionFailed),
        (wire::STATUS_INVSESS, Error::UnknownSession),
    ] {
        let (dev, mut rings) = device();
        let params = private_params();
        let request = dev
            .start_rsa_request(&dev.data[0], 7, &params, RsaOp::Decrypt, &ciphertext(), &[])
            .unwrap();
        let chains = rings[1].pending();
        assert_eq!(chains.len(), 1);
        write_status_only(&chains[0], status as u8);
        rings[1].complete(chains[0].id as u32, 1);
        dev.data[0].handle_interrupt();
        assert_eq!(request.wait(), Err(expected), "status {status}");
    }
}

/// A status byte the device never wrote reads as the preset (no status), never as OK: every
/// send is answered with used length 1 and nothing written, so the request is retried and then
/// fails; it never succeeds.
#[test]
fn an_unwritten_status_is_never_ok() {
    let (dev, mut rings) = device();
    let params = private_params();
    let request = dev
        .start_rsa_request(&dev.data[0], 7, &params, RsaOp::Decrypt, &ciphertext(), &[])
        .unwrap();
    let waiter = thread::spawn(move || request.wait());
    let mut answered = 0;
    while !waiter.is_finished() {
        for chain in rings[1].pending() {
            rings[1].complete(chain.id as u32, 1);
            answered += 1;
        }
        dev.data[0].handle_interrupt();
        thread::sleep(std::time::Duration::from_millis(1));
    }
    let result = waiter.join().unwrap();
    assert!(
        matches!(result, Err(Error::MalformedCompletion { .. })),
        "{result:?} after {answered} answers"
    );
    assert_eq!(answered, super::akcipher::MAX_ATTEMPTS);
}

/// The engine keeps the reply bytes (the status) where the device wrote them whatever the used
/// length, clears what it did not write of the output, and shows the preset where it wrote
/// nothing.
#[test]
fn the_reply_at_the_end_survives_a_short_used_length() {
    let rig = queue_rig(false, CountingNotify::new());
    let (queue, mut ring) = (rig.queue, rig.ring);
    // An earlier request leaves its bytes in the slot.
    let mut b = queue.reserve(4, 12).unwrap();
    b.push(&[1; 4]).unwrap();
    let first = b.submit().unwrap();
    let chain = ring.pending().pop().unwrap();
    chain.write(&[0xbb; 12]);
    ring.complete(chain.id as u32, 12);
    queue.handle_interrupt();
    assert_eq!(first.wait(1_000_000_000), Ok(12));
    drop(first);
    // The next one in the same slot: 11 bytes of output and a status; the device writes two
    // bytes of output and the status, and says 3.
    let mut b = queue.reserve(4, 12).unwrap();
    b.push(&[2; 4]).unwrap().preset_status(0xff).expect_used(1);
    let second = b.submit().unwrap();
    let chain = ring.pending().pop().unwrap();
    chain.write(&[7, 7]);
    write_status_only(&chain, wire::STATUS_ERR as u8);
    ring.complete(chain.id as u32, 3);
    queue.handle_interrupt();
    assert_eq!(second.wait(1_000_000_000), Ok(3));
    let mut expected = vec![7, 7];
    expected.extend([0; 9]);
    expected.push(wire::STATUS_ERR as u8);
    assert_eq!(second.writable(), &expected[..]);
    drop(second);
    // And one the device answers with nothing written at all: the preset shows.
    let mut b = queue.reserve(4, 12).unwrap();
    b.push(&[3; 4]).unwrap().preset_status(0xff).expect_used(0);
    let third = b.submit().unwrap();
    let chain = ring.pending().pop().unwrap();
    ring.complete(chain.id as u32, 0);
    queue.handle_interrupt();
    assert_eq!(third.wait(1_000_000_000), Ok(0));
    let mut expected = vec![0; 11];
    expected.push(0xff);
    assert_eq!(third.writable(), &expected[..]);
}

/// An RSA request on a queue that breaks (the device returns an id that is not in flight) ends
/// with the device's fault, and the device is asked for a reset; it is not resent from memory
/// the device may still own.
#[test]
fn an_akcipher_request_on_a_queue_that_breaks_reports_the_fault() {
    let (dev, mut rings) = device();
    let params = private_params();
    let request = dev
        .start_rsa_request(&dev.data[0], 7, &params, RsaOp::Decrypt, &ciphertext(), &[])
        .unwrap();
    let chains = rings[1].pending();
    assert_eq!(chains.len(), 1);
    rings[1].complete(chains[0].id as u32 + 1, 1);
    dev.data[0].handle_interrupt();
    let result = request.wait();
    assert!(
        matches!(result, Err(Error::MalformedCompletion { .. })),
        "{result:?}"
    );
    assert_eq!(dev.state(), DeviceState::NeedsReset);
    assert!(rings[1].pending().is_empty(), "nothing was sent again");
}
