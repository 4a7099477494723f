//! Host tests of the akcipher service's key parsing and answer checks.

use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;

use rsa::traits::PublicKeyParts;

use super::*;
use crate::virtio_crypto::wire;

// pkcs1v15sign-vectors.txt (RSA Laboratories), example 1: 1024-bit key, SHA-1.
const EX1_DER: &str = include_str!("testdata/ex1_1024.der.hex");
const EX1_PUB: &str = include_str!("testdata/ex1_1024_pub.der.hex");
const EX1_MSG: &str = "cdc87da223d786df3b45e0bbbc721326d1ee2af806cc315475cc6f0d9c66e1b62371d45ce2392e1ac92844c310102f156a0d8d52c1f4c40ba3aa65095786cb769757a6563ba958fed0bcc984e8b517a3d5f515b23b8a41e74aa867693f90dfb061a6e86dfaaee64472c00e5f20945729cbebe77f06ce78e08f4098fba41f9d6193c0317e8b60d4b6084acb42d29e3808a3bc372d85e331170fcbf7cc72d0b71c296648b3a4d10f416295d0807aa625cab2744fd9ea8fd223c42537029828bd16be02546f130fd2e33b936d2676e08aed1b73318b750a0167d0";
const EX1_SIG: &str = "6bc3a06656842930a247e30d5864b4d819236ba7c68965862ad7dbc4e24af28e86bb531f03358be5fb74777c6086f850caef893f0d6fcc2d0c91ec013693b4ea00b80cd49aac4ecb5f8911afe539ada4a8f3823d1d13e472d1490547c659c7617f3d24087ddb6f2b72096167fc097cab18e9a458fcb634cdce8ee35894c484d7";

fn unhex(s: &str) -> Vec<u8> {
    let s: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    s.chunks(2)
        .map(|c| u8::from_str_radix(core::str::from_utf8(c).unwrap(), 16).unwrap())
        .collect()
}

fn params(kind: RsaKeyKind) -> RsaParams {
    let der = unhex(if kind == RsaKeyKind::Private {
        EX1_DER
    } else {
        EX1_PUB
    });
    RsaParams {
        key: Arc::new(RsaKeyInfo::parse(kind, &der).unwrap()),
        hash: RsaHash::Sha1,
        generation: 0,
        counters: Arc::default(),
    }
}

fn readable(op: RsaOp, src: &[u8]) -> Vec<u8> {
    let mut r = vec![0u8; wire::DATA_HDR_LEN];
    r[0..4].copy_from_slice(&op.opcode().to_le_bytes());
    r.extend_from_slice(src);
    r
}

fn writable(out: &[u8], room: usize, status: u8) -> Vec<u8> {
    let mut w = vec![0u8; room + 1];
    w[..out.len()].copy_from_slice(out);
    w[room] = status;
    w
}

#[test]
fn parses_keys_and_refuses_bad_ones() {
    let private = unhex(EX1_DER);
    let public = unhex(EX1_PUB);
    let key = RsaKeyInfo::parse(RsaKeyKind::Private, &private).unwrap();
    assert_eq!((key.bits(), key.modulus_len()), (1024, 128));
    let pkey = RsaKeyInfo::parse(RsaKeyKind::Public, &public).unwrap();
    assert_eq!(pkey.public_key(), key.public_key());
    assert!(matches!(
        RsaKeyInfo::parse(RsaKeyKind::Public, &private),
        Err(Error::InvalidKey { what }) if what.contains("RSAPrivateKey where")
    ));
    assert!(matches!(
        RsaKeyInfo::parse(RsaKeyKind::Private, &public),
        Err(Error::InvalidKey { what }) if what.contains("RSAPublicKey where")
    ));
    assert_eq!(
        RsaKeyInfo::parse(RsaKeyKind::Private, &[]).unwrap_err(),
        Error::InvalidKey { what: "empty DER" }
    );
    // Every truncation and every single-byte corruption: an error or a key, never a panic.
    for cut in 0..private.len() {
        assert!(RsaKeyInfo::parse(RsaKeyKind::Private, &private[..cut]).is_err());
    }
    for i in 0..private.len() {
        let mut bad = private.clone();
        bad[i] ^= 0x41;
        let _ = RsaKeyInfo::parse(RsaKeyKind::Private, &bad);
    }
    // A corrupted prime makes the numbers inconsistent.
    let mut bad = private.clone();
    let last = bad.len() - 200;
    bad[last] ^= 1;
    assert!(RsaKeyInfo::parse(RsaKeyKind::Private, &bad).is_err());
}

#[test]
fn sign_answers_are_verified_repaired_or_retried() {
    let p = params(RsaKeyKind::Private);
    let c = p.counters.clone();
    let digest = RsaHash::Sha1.digest(&unhex(EX1_MSG));
    let sig = unhex(EX1_SIG);
    let r = readable(RsaOp::Sign, &digest);
    let good = writable(&sig, 128, 0);
    assert_eq!(
        check_answer(&p, RsaOp::Sign, Ok(129), &r, &good),
        Verdict::Accept(sig.clone())
    );
    // One flipped bit: retried.
    let mut bad = good.clone();
    bad[5] ^= 1;
    assert!(matches!(
        check_answer(&p, RsaOp::Sign, Ok(129), &r, &bad),
        Verdict::Retry(Error::WrongAnswer { .. })
    ));
    // Status ERR, unknown status, short used length, malformed completion: retried.
    for (w, used) in [
        (writable(&sig, 128, 1), 129),
        (writable(&sig, 128, 9), 129),
        (good.clone(), 0),
    ] {
        assert!(matches!(
            check_answer(&p, RsaOp::Sign, Ok(used), &r, &w),
            Verdict::Retry(_)
        ));
    }
    // A used length that cuts the signature: the remainder does not verify.
    assert!(matches!(
        check_answer(&p, RsaOp::Sign, Ok(100), &r, &good),
        Verdict::Retry(_)
    ));
    assert_eq!(
        check_answer(&p, RsaOp::Sign, Ok(129), &r, &writable(&sig, 128, 4)),
        Verdict::Reject(Error::UnknownSession)
    );
    let s = c.snapshot();
    assert_eq!((s.answers, s.wrong, s.repaired), (7, 5, 0));
    assert_eq!(s.signatures_verified, 3);
}

#[test]
fn truncated_signature_is_repaired_when_provable() {
    use rsa::pkcs1::DecodeRsaPrivateKey;
    let p = params(RsaKeyKind::Private);
    let c = p.counters.clone();
    let private = rsa::RsaPrivateKey::from_pkcs1_der(&unhex(EX1_DER)).unwrap();
    // A digest whose signature starts with a zero byte (about one in 256).
    let (digest, sig) = (0u32..)
        .map(|i| {
            let digest = RsaHash::Sha1.digest(&i.to_le_bytes());
            let sig = private.sign(RsaHash::Sha1.scheme(), &digest).unwrap();
            (digest, sig)
        })
        .find(|(_, sig)| sig[0] == 0)
        .unwrap();
    let r = readable(RsaOp::Sign, &digest);
    // QEMU 7.2's answer: the first 127 bytes (leading zero kept, last byte lost).
    let w = writable(&sig[..127], 128, 0);
    assert_eq!(
        check_answer(&p, RsaOp::Sign, Ok(128), &r, &w),
        Verdict::Accept(sig.clone())
    );
    // A device that leaves out the leading zero.
    let w = writable(&sig[1..], 128, 0);
    assert_eq!(
        check_answer(&p, RsaOp::Sign, Ok(128), &r, &w),
        Verdict::Accept(sig.clone())
    );
    assert_eq!(c.snapshot().repaired, 2);
    // A signature without a leading zero cut the same way: not provable, retried.
    let digest = RsaHash::Sha1.digest(&unhex(EX1_MSG));
    let sig = unhex(EX1_SIG);
    assert_ne!(sig[0], 0);
    let r = readable(RsaOp::Sign, &digest);
    let w = writable(&sig[..127], 128, 0);
    assert!(matches!(
        check_answer(&p, RsaOp::Sign, Ok(128), &r, &w),
        Verdict::Retry(_)
    ));
    assert_eq!(c.snapshot().repaired, 2);
}

#[test]
fn verify_verdicts_come_from_software() {
    let p = params(RsaKeyKind::Public);
    let c = p.counters.clone();
    let digest = RsaHash::Sha1.digest(&unhex(EX1_MSG));
    let sig = unhex(EX1_SIG);
    let mut src = sig.clone();
    src.extend_from_slice(&digest);
    let r = readable(RsaOp::Verify, &src);
    let mut bad_src = sig.clone();
    bad_src[7] ^= 0x80;
    bad_src.extend_from_slice(&digest);
    let rb = readable(RsaOp::Verify, &bad_src);
    assert_eq!(
        check_answer(&p, RsaOp::Verify, Ok(1), &r, &[0]),
        Verdict::Accept(Vec::new())
    );
    assert_eq!(
        check_answer(&p, RsaOp::Verify, Ok(1), &rb, &[6]),
        Verdict::Reject(Error::BadSignature)
    );
    assert_eq!(c.snapshot().overruled, 0);
    // The device says OK to a bad signature, KEY_REJECTED to a good one, ERR: overruled.
    assert_eq!(
        check_answer(&p, RsaOp::Verify, Ok(1), &rb, &[0]),
        Verdict::Reject(Error::BadSignature)
    );
    assert_eq!(
        check_answer(&p, RsaOp::Verify, Ok(1), &r, &[6]),
        Verdict::Accept(Vec::new())
    );
    assert_eq!(
        check_answer(&p, RsaOp::Verify, Ok(1), &r, &[1]),
        Verdict::Accept(Vec::new())
    );
    assert_eq!(c.snapshot().overruled, 3);
}

#[test]
fn encrypt_and_decrypt_lengths_and_range() {
    let p = params(RsaKeyKind::Public);
    let r = readable(RsaOp::Encrypt, b"hello");
    let n = p.key.public_key().n().to_bytes_be();
    let mut ok = n.clone();
    ok[127] -= 1; // n - 1: the largest valid value
    assert_eq!(
        check_answer(&p, RsaOp::Encrypt, Ok(129), &r, &writable(&ok, 128, 0)),
        Verdict::Accept(ok.clone())
    );
    for (out, used) in [(n.clone(), 129), (ok.clone(), 128), (ok.clone(), 130)] {
        assert!(matches!(
            check_answer(&p, RsaOp::Encrypt, Ok(used), &r, &writable(&out, 128, 0)),
            Verdict::Retry(_)
        ));
    }
    let pd = params(RsaKeyKind::Private);
    let r = readable(RsaOp::Decrypt, &ok);
    let w = writable(&[7u8; 117], 128, 0);
    assert_eq!(
        check_answer(&pd, RsaOp::Decrypt, Ok(118), &r, &w),
        Verdict::Accept(vec![7u8; 117])
    );
    assert!(matches!(
        check_answer(&pd, RsaOp::Decrypt, Ok(119), &r, &w),
        Verdict::Retry(Error::WrongAnswer { .. })
    ));
    assert_eq!(
        check_answer(&pd, RsaOp::Decrypt, Ok(129), &r, &writable(&[], 128, 1)),
        Verdict::Reject(Error::DecryptionFailed)
    );
}

#[test]
fn requests_are_checked_before_sending() {
    type D = CryptoDevice<crate::virtio_crypto::fake::FakeHal>;
    let public = params(RsaKeyKind::Public);
    let private = params(RsaKeyKind::Private);
    let digest = [0u8; 20];
    let sig = unhex(EX1_SIG);
    assert_eq!(
        D::check_rsa_request(&public, RsaOp::Sign, &digest, &[]),
        Err(Error::WrongKeyKind {
            op: "sign",
            needs: "private"
        })
    );
    assert_eq!(
        D::check_rsa_request(&private, RsaOp::Sign, &[0u8; 32], &[]),
        Err(Error::InvalidDigestLength {
            got: 32,
            expected: 20
        })
    );
    assert_eq!(
        D::check_rsa_request(&public, RsaOp::Encrypt, &[1u8; 118], &[]),
        Err(Error::MessageTooLong { got: 118, max: 117 })
    );
    assert_eq!(
        D::check_rsa_request(&public, RsaOp::Encrypt, &[1u8; 117], &[]),
        Ok((117, 128))
    );
    assert_eq!(
        D::check_rsa_request(&public, RsaOp::Verify, &digest, &sig[1..]),
        Err(Error::InvalidInputLength {
            what: "signature",
            got: 127,
            expected: 128
        })
    );
    assert_eq!(
        D::check_rsa_request(&public, RsaOp::Verify, &digest, &[0xff; 128]),
        Err(Error::InputOutOfRange { what: "signature" })
    );
    assert_eq!(
        D::check_rsa_request(&private, RsaOp::Decrypt, &[0xff; 128], &[]),
        Err(Error::InputOutOfRange { what: "ciphertext" })
    );
    assert_eq!(
        D::check_rsa_request(&public, RsaOp::Verify, &digest, &sig),
        Ok((128, 20))
    );
}
