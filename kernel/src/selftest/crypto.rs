//! virtio-crypto driver tests against the real device: known answers, differential tests against
//! RustCrypto, every bad input, session exhaustion, concurrency and volume.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use vcrypt_drivers::crypto::{Cipher, CipherSession, Direction, Session};
use vcrypt_drivers::error::Error;
use vcrypt_drivers::virtio_crypto::cipher::CipherRequest;
use vcrypt_drivers::virtio_crypto::request::RequestBatch;
use vcrypt_drivers::virtio_crypto::slots::OwnedBuffers;

use super::TestResult;
use super::reference::{Rng, reference};
use crate::ensure;
use crate::virtio::crypto::{Device, devices};

/// Test vectors as hex, spaces allowed.
pub fn hex(text: &str) -> Vec<u8> {
    let text: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    crate::kcapi::parse_hex("test vector", &text).expect("test vectors are valid hex")
}

/// Every device, each with AES-ECB/CTR/XTS allowed for the duration of `f`.
/// The command line's `unadvertised=` value is restored afterwards, not a fixed one.
fn with_unadvertised<T>(device: &Device, f: impl FnOnce() -> T) -> T {
    let before = device.allows_unadvertised();
    device.set_allow_unadvertised(true);
    let result = f();
    device.set_allow_unadvertised(before);
    result
}

struct Kat {
    name: &'static str,
    cipher: Cipher,
    key: &'static str,
    iv: &'static str,
    plain: &'static str,
    cipher_text: &'static str,
}

const PLAIN_38A: &str = "6bc1bee22e409f96e93d7e117393172a ae2d8a571e03ac9c9eb76fac45af8e51 \
                         30c81c46a35ce411e5fbc1191a0a52ef f69f2445df4f9b17ad2b417be66c3710";

/// NIST SP 800-38A (F.1, F.2, F.5) and SP 800-38E / IEEE 1619 (XTS) known answers.
const KATS: &[Kat] = &[
    Kat {
        name: "SP 800-38A F.1.1 ECB-AES128",
        cipher: Cipher::AesEcb,
        key: "2b7e151628aed2a6abf7158809cf4f3c",
        iv: "",
        plain: PLAIN_38A,
        cipher_text: "3ad77bb40d7a3660a89ecaf32466ef97 f5d3d58503b9699de785895a96fdbaaf \
                      43b1cd7f598ece23881b00e3ed030688 7b0c785e27e8ad3f8223207104725dd4",
    },
    Kat {
        name: "SP 800-38A F.1.5 ECB-AES256",
        cipher: Cipher::AesEcb,
        key: "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4",
        iv: "",
        plain: PLAIN_38A,
        cipher_text: "f3eed1bdb5d2a03c064b5a7e3db181f8 591ccb10d410ed26dc5ba74a31362870 \
                      b6ed21b99ca6f4f9f153e7b1beafed1d 23304b7a39f9f3ff067d8d8f9e24ecc7",
    },
    Kat {
        name: "SP 800-38A F.2.1 CBC-AES128",
        cipher: Cipher::AesCbc,
        key: "2b7e151628aed2a6abf7158809cf4f3c",
        iv: "000102030405060708090a0b0c0d0e0f",
        plain: PLAIN_38A,
        cipher_text: "7649abac8119b246cee98e9b12e9197d 5086cb9b507219ee95db113a917678b2 \
                      73bed6b8e3c1743b7116e69e22229516 3ff1caa1681fac09120eca307586e1a7",
    },
    Kat {
        name: "SP 800-38A F.2.3 CBC-AES192",
        cipher: Cipher::AesCbc,
        key: "8e73b0f7da0e6452c810f32b809079e562f8ead2522c6b7b",
        iv: "000102030405060708090a0b0c0d0e0f",
        plain: PLAIN_38A,
        cipher_text: "4f021db243bc633d7178183a9fa071e8 b4d9ada9ad7dedf4e5e738763f69145a \
                      571b242012fb7ae07fa9baac3df102e0 08b0e27988598881d920a9e64f5615cd",
    },
    Kat {
        name: "SP 800-38A F.2.5 CBC-AES256",
        cipher: Cipher::AesCbc,
        key: "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4",
        iv: "000102030405060708090a0b0c0d0e0f",
        plain: PLAIN_38A,
        cipher_text: "f58c4c04d6e5f1ba779eabfb5f7bfbd6 9cfc4e967edb808d679f777bc6702c7d \
                      39f23369a9d9bacfa530e26304231461 b2eb05e2c39be9fcda6c19078c6a9d1b",
    },
    Kat {
        name: "SP 800-38A F.5.1 CTR-AES128",
        cipher: Cipher::AesCtr,
        key: "2b7e151628aed2a6abf7158809cf4f3c",
        iv: "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff",
        plain: PLAIN_38A,
        cipher_text: "874d6191b620e3261bef6864990db6ce 9806f66b7970fdff8617187bb9fffdff \
                      5ae4df3edbd5d35e5b4f09020db03eab 1e031dda2fbe03d1792170a0f3009cee",
    },
    Kat {
        name: "SP 800-38A F.5.5 CTR-AES256",
        cipher: Cipher::AesCtr,
        key: "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4",
        iv: "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff",
        plain: PLAIN_38A,
        cipher_text: "601ec313775789a5b7a7f504bbf3d228 f443e3ca4d62b59aca84e990cacaf5c5 \
                      2b0930daa23de94ce87017ba2d84988d dfc9c58db67aada613c2dd08457941a6",
    },
    Kat {
        name: "IEEE 1619 XTS-AES128 vector 1",
        cipher: Cipher::AesXts,
        key: "00000000000000000000000000000000 00000000000000000000000000000000",
        iv: "00000000000000000000000000000000",
        plain: "00000000000000000000000000000000 00000000000000000000000000000000",
        cipher_text: "917cf69ebd68b2ec9b9fe9a3eadda692 cd43d2f59598ed858c02c2652fbf922e",
    },
    Kat {
        name: "IEEE 1619 XTS-AES128 vector 2",
        cipher: Cipher::AesXts,
        key: "11111111111111111111111111111111 22222222222222222222222222222222",
        iv: "33333333330000000000000000000000",
        plain: "44444444444444444444444444444444 44444444444444444444444444444444",
        cipher_text: "c454185e6a16936e39334038acef838b fb186fff7480adc4289382ecd6d394f0",
    },
];

/// Every known answer, encrypt and decrypt, in place and out of place, on every device.
pub fn known_answers_every_mode() -> TestResult {
    ensure!(!devices().is_empty(), "no device");
    for device in devices() {
        with_unadvertised(device, || -> TestResult {
            for kat in KATS {
                let (key, iv, plain, expected) = (
                    hex(kat.key),
                    hex(kat.iv),
                    hex(kat.plain),
                    hex(kat.cipher_text),
                );
                let enc =
                    Session::new(device, kat.cipher, Direction::Encrypt, &key).map_err(|e| {
                        format!("{}: {}: create encrypt session: {e}", device.name, kat.name)
                    })?;
                let mut out = vec![0u8; plain.len()];
                enc.encrypt(&iv, &plain, &mut out)
                    .map_err(|e| format!("{}: encrypt: {e}", kat.name))?;
                ensure!(
                    out == expected,
                    "{}: {}: encrypt gave {:02x?}",
                    device.name,
                    kat.name,
                    out
                );
                let soft = reference(kat.cipher, Direction::Encrypt, &key, &iv, &plain);
                ensure!(
                    soft == expected,
                    "{}: the software reference disagrees with the vector",
                    kat.name
                );
                let dec = Session::new(device, kat.cipher, Direction::Decrypt, &key)
                    .map_err(|e| format!("{}: create decrypt session: {e}", kat.name))?;
                let mut data = expected.clone();
                dec.decrypt_in_place(&iv, &mut data)
                    .map_err(|e| format!("{}: decrypt: {e}", kat.name))?;
                ensure!(
                    data == plain,
                    "{}: {}: decrypt in place gave {:02x?}",
                    device.name,
                    kat.name,
                    data
                );
            }
            Ok(())
        })?;
    }
    Ok(())
}

/// One random case: key, IV, plaintext for `cipher`.
fn random_case(
    rng: &mut Rng,
    cipher: Cipher,
    min_len: usize,
    max_len: usize,
) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let lengths = cipher.key_lengths();
    let key_len = lengths[rng.below(lengths.len() as u64) as usize];
    let key = rng.bytes(key_len);
    let iv = rng.bytes(cipher.iv_len());
    let len = rng.log_uniform_len(min_len, max_len, cipher.block_len().max(16));
    (key, iv, rng.bytes(len))
}

const DIFFERENTIAL_CASES: usize = 1000;

/// 1,000 random key/IV/length cases per mode (16 B .. 64 KiB), each encrypted by the device and
/// by RustCrypto and decrypted back by the device; the four modes run as tasks on different CPUs.
pub fn differential_1000_per_mode_vs_rustcrypto() -> TestResult {
    for device in devices() {
        let before = device.allows_unadvertised();
        device.set_allow_unadvertised(true);
        let handles: Vec<_> = Cipher::ALL
            .into_iter()
            .enumerate()
            .map(|(i, cipher)| {
                crate::sched::spawn("differential", None, move || -> TestResult {
                    let mut rng = Rng::new(0xd1ff_0000 + i as u64);
                    for case in 0..DIFFERENTIAL_CASES {
                        let (key, iv, plain) = random_case(&mut rng, cipher, 16, 64 * 1024);
                        let context = || {
                            format!(
                                "{} {} case {case}: key {} B, {} B",
                                device.name,
                                cipher.kcapi_name(),
                                key.len(),
                                plain.len()
                            )
                        };
                        let enc = Session::new(device, cipher, Direction::Encrypt, &key)
                            .map_err(|e| format!("{}: {e}", context()))?;
                        // Odd cases go zero copy (the device reads and writes our buffers).
                        let mut out = if case % 2 == 1 {
                            let queue = device.data_queue_for(crate::arch::percpu::cpu_index());
                            device
                                .start_cipher_owned(
                                    queue,
                                    &enc.as_cipher_session(),
                                    &iv,
                                    OwnedBuffers {
                                        src: plain.clone(),
                                        dst: vec![0; plain.len()],
                                    },
                                )
                                .and_then(|r| r.wait())
                                .map_err(|e| {
                                    format!("{}: encrypt (zero copy): {}", context(), e.error)
                                })?
                                .dst
                        } else {
                            let mut out = vec![0u8; plain.len()];
                            enc.encrypt(&iv, &plain, &mut out)
                                .map_err(|e| format!("{}: encrypt: {e}", context()))?;
                            out
                        };
                        ensure!(
                            out == reference(cipher, Direction::Encrypt, &key, &iv, &plain),
                            "{}: ciphertext differs from RustCrypto",
                            context()
                        );
                        let dec = Session::new(device, cipher, Direction::Decrypt, &key)
                            .map_err(|e| format!("{}: {e}", context()))?;
                        dec.decrypt_in_place(&iv, &mut out)
                            .map_err(|e| format!("{}: decrypt: {e}", context()))?;
                        ensure!(
                            out == plain,
                            "{}: decrypting the ciphertext did not give the plaintext back",
                            context()
                        );
                    }
                    Ok(())
                })
            })
            .collect::<Result<_, _>>()
            .map_err(|e| format!("spawn: {e:?}"))?;
        let results: Vec<TestResult> = handles.into_iter().map(|h| h.join()).collect();
        device.set_allow_unadvertised(before);
        results.into_iter().collect::<TestResult>()?;
    }
    Ok(())
}

/// `got` must be exactly the error `want`.
pub(super) fn expect_err<T>(what: &str, got: Result<T, Error>, want: Error) -> TestResult {
    match got {
        Err(e) if e == want => Ok(()),
        Err(e) => Err(format!("{what}: got error \"{e}\", expected \"{want}\"")),
        Ok(_) => Err(format!("{what}: succeeded, expected \"{want}\"")),
    }
}

/// Each bad input of docs/DESIGN.md ("Bad input and its errors") that applies gets its own error, and the next good
/// request still succeeds.
pub fn bad_inputs_get_their_error_and_device_stays_usable() -> TestResult {
    let key = hex("2b7e151628aed2a6abf7158809cf4f3c");
    let iv = [0u8; 16];
    for device in devices() {
        let good = |what: &str| -> TestResult {
            let s = Session::new(device, Cipher::AesCbc, Direction::Encrypt, &key)
                .map_err(|e| format!("after {what}: {e}"))?;
            let mut out = [0u8; 32];
            s.encrypt(&iv, &[7u8; 32], &mut out)
                .map_err(|e| format!("good request after {what}: {e}"))?;
            ensure!(
                out == reference(Cipher::AesCbc, Direction::Encrypt, &key, &iv, &[7u8; 32])[..],
                "wrong output after {what}"
            );
            Ok(())
        };
        expect_err(
            "AES-ECB not advertised",
            Session::new(device, Cipher::AesEcb, Direction::Encrypt, &key).map(|_| ()),
            Error::NotSupported { what: "ecb(aes)" },
        )?;
        good("unsupported algorithm")?;
        expect_err(
            "15-byte key",
            Session::new(device, Cipher::AesCbc, Direction::Encrypt, &key[..15]).map(|_| ()),
            Error::InvalidKeyLength {
                got: 15,
                allowed: "16, 24 or 32",
            },
        )?;
        good("bad key length")?;
        let before = device.allows_unadvertised();
        device.set_allow_unadvertised(true);
        let xts = expect_err(
            "48-byte XTS key",
            Session::new(device, Cipher::AesXts, Direction::Encrypt, &[1u8; 48]).map(|_| ()),
            Error::InvalidKeyLength {
                got: 48,
                allowed: "32 or 64",
            },
        );
        device.set_allow_unadvertised(before);
        xts?;
        let session = Session::new(device, Cipher::AesCbc, Direction::Encrypt, &key)
            .map_err(|e| format!("{e}"))?;
        let mut out = [0u8; 32];
        expect_err(
            "8-byte IV",
            session.encrypt(&iv[..8], &[0u8; 32], &mut out),
            Error::InvalidIvLength {
                got: 8,
                expected: 16,
            },
        )?;
        let mut odd = [0u8; 17];
        expect_err(
            "17 bytes of CBC",
            session.encrypt_in_place(&iv, &mut odd),
            Error::InvalidDataLength { got: 17, block: 16 },
        )?;
        expect_err(
            "empty request",
            session.encrypt(&iv, &[], &mut []),
            Error::EmptyRequest,
        )?;
        expect_err(
            "src 32, dst 16",
            session.encrypt(&iv, &[0u8; 32], &mut out[..16]),
            Error::LengthMismatch { src: 32, dst: 16 },
        )?;
        expect_err(
            "decrypt on an encrypt session",
            session.decrypt(&iv, &[0u8; 32], &mut out),
            Error::WrongDirection { session: "encrypt" },
        )?;
        let mut huge = vec![0u8; vcrypt_drivers::virtio_crypto::cipher::MAX_REQUEST_BYTES + 16];
        let max = vcrypt_drivers::virtio_crypto::cipher::MAX_REQUEST_BYTES as u64;
        expect_err(
            "oversized request",
            session.encrypt_in_place(&iv, &mut huge),
            Error::RequestTooLarge { got: max + 16, max },
        )?;
        drop(huge);
        good("request errors")?;
        let queue = device.data_queue_for(0);
        expect_err(
            "data request on an unknown session",
            device.cipher_request(
                queue,
                &CipherSession {
                    id: 0xdead_beef,
                    ..session.as_cipher_session()
                },
                &iv,
                &[0u8; 16],
            ),
            Error::UnknownSession,
        )?;
        good("unknown session")?;
        let destroyed = device
            .create_cipher_session(Cipher::AesCbc, Direction::Encrypt, &key)
            .map_err(|e| format!("{e}"))?;
        let id = destroyed.id;
        device
            .destroy_cipher_session(id)
            .map_err(|e| format!("destroy: {e}"))?;
        // QEMU prints its complaint on its own standard error; say here that it is expected
        // (run-qemu.sh sets aside the one for 0xdeadbeef = 3735928559 above by itself).
        crate::println!(
            "note: QEMU will print \"Cannot find a valid session id: {id}\": expected, session {id} was just destroyed on purpose"
        );
        expect_err(
            "destroying a destroyed session",
            device.destroy_cipher_session(id),
            Error::UnknownSession,
        )?;
        expect_err(
            "data request on a destroyed session",
            device.cipher_request(queue, &destroyed, &iv, &[0u8; 16]),
            Error::UnknownSession,
        )?;
        good("destroyed session")?;
        ensure!(
            !device.control.is_broken() && !queue.is_broken(),
            "a queue was marked broken"
        );
    }
    Ok(())
}

/// 256 sessions fit on the device; the next gets SessionsExhausted; after dropping some, new
/// ones work again and every held session still encrypts.
pub fn session_exhaustion_and_recovery() -> TestResult {
    use vcrypt_drivers::virtio_crypto::device::MAX_SESSIONS;
    let key = hex("2b7e151628aed2a6abf7158809cf4f3c");
    for device in devices() {
        let before = device.live_sessions();
        let mut held = Vec::new();
        for i in before..MAX_SESSIONS {
            held.push(
                Session::new(device, Cipher::AesCbc, Direction::Encrypt, &key)
                    .map_err(|e| format!("session {i}: {e}"))?,
            );
        }
        expect_err(
            "session 257",
            Session::new(device, Cipher::AesCbc, Direction::Encrypt, &key).map(|_| ()),
            Error::SessionsExhausted,
        )?;
        held.truncate(held.len() - 16);
        for i in 0..16 {
            held.push(
                Session::new(device, Cipher::AesCbc, Direction::Encrypt, &key)
                    .map_err(|e| format!("re-created session {i}: {e}"))?,
            );
        }
        let mut out = [0u8; 16];
        for s in held.iter().step_by(17) {
            s.encrypt(&[0u8; 16], &[1u8; 16], &mut out)
                .map_err(|e| format!("session {}: {e}", s.id()))?;
        }
        drop(held);
        ensure!(
            device.live_sessions() == before,
            "{} sessions live after dropping all, {before} before",
            device.live_sessions()
        );
    }
    Ok(())
}

/// Four tasks on every CPU, each keeping eight requests in flight on its own sessions, every
/// result checked against a decrypt round trip and, for a sample, against RustCrypto.
pub fn many_tasks_every_cpu_many_in_flight() -> TestResult {
    const TASKS_PER_CPU: usize = 4;
    const IN_FLIGHT: usize = 8;
    const ROUNDS: usize = 25;
    for device in devices() {
        let cpus = crate::arch::percpu::cpu_count();
        let handles: Vec<_> = (0..cpus * TASKS_PER_CPU)
            .map(|t| {
                crate::sched::spawn("crypto-worker", Some(t % cpus), move || -> TestResult {
                    let mut rng = Rng::new(0xc0c0_0000 + t as u64);
                    let key = rng.bytes(32);
                    let enc = Session::new(device, Cipher::AesCbc, Direction::Encrypt, &key)
                        .map_err(|e| format!("task {t}: {e}"))?;
                    let dec = Session::new(device, Cipher::AesCbc, Direction::Decrypt, &key)
                        .map_err(|e| format!("task {t}: {e}"))?;
                    let queue = device.data_queue_for(crate::arch::percpu::cpu_index());
                    for round in 0..ROUNDS {
                        let cases: Vec<(Vec<u8>, Vec<u8>)> = (0..IN_FLIGHT)
                            .map(|_| {
                                let len = rng.log_uniform_len(16, 8192, 16);
                                (rng.bytes(16), rng.bytes(len))
                            })
                            .collect();
                        let pending: Vec<_> = cases
                            .iter()
                            .map(|(iv, plain)| {
                                device.start_cipher_request(
                                    queue,
                                    &enc.as_cipher_session(),
                                    iv,
                                    plain,
                                )
                            })
                            .collect::<Result<_, _>>()
                            .map_err(|e| format!("task {t} round {round}: submit: {e}"))?;
                        for ((iv, plain), p) in cases.iter().zip(pending) {
                            let out = p
                                .wait()
                                .map_err(|e| format!("task {t} round {round}: {e}"))?;
                            if round == 0 {
                                ensure!(
                                    out[..]
                                        == reference(
                                            Cipher::AesCbc,
                                            Direction::Encrypt,
                                            &key,
                                            iv,
                                            plain
                                        ),
                                    "task {t}: ciphertext differs from RustCrypto"
                                );
                            }
                            let mut back = out.to_vec();
                            drop(out);
                            dec.decrypt_in_place(iv, &mut back)
                                .map_err(|e| format!("task {t}: decrypt: {e}"))?;
                            ensure!(
                                &back == plain,
                                "task {t} round {round}: round trip lost the plaintext"
                            );
                        }
                    }
                    Ok(())
                })
            })
            .collect::<Result<_, _>>()
            .map_err(|e| format!("spawn: {e:?}"))?;
        for h in handles {
            h.join()?;
        }
    }
    Ok(())
}

/// In one boot, through each device: 300,000 data requests (every 16-bit ring index wraps more
/// than four times) and 100,000 control requests, from tasks on every CPU with many in flight.
/// Request i encrypts one zero block under IV i, so its expected output is AES_k(i): each result
/// is checked, and a lost or duplicated completion would fail its check or the count.
pub fn volume_300k_data_100k_control() -> TestResult {
    use aes::cipher::{BlockCipherEncrypt, KeyInit};
    const DATA: u64 = 300_000;
    const CONTROL_PAIRS: u64 = 50_000;
    const IN_FLIGHT: usize = 32;
    let key = hex("000102030405060708090a0b0c0d0e0f");
    for device in devices() {
        let cpus = crate::arch::percpu::cpu_count() as u64;
        let tasks = cpus * 2;
        let submitted_before: u64 = device
            .data
            .iter()
            .map(|q| {
                q.counters
                    .completed
                    .load(core::sync::atomic::Ordering::Relaxed)
            })
            .sum();
        let handles: Vec<_> = (0..tasks)
            .map(|t| {
                let key = key.clone();
                crate::sched::spawn(
                    "volume",
                    Some((t % cpus) as usize),
                    move || -> Result<(u64, u64), String> {
                        let aes = aes::Aes128::new_from_slice(&key).map_err(|_| "key")?;
                        let session =
                            Session::new(device, Cipher::AesCbc, Direction::Encrypt, &key)
                                .map_err(|e| format!("{e}"))?;
                        let queue = device.data_queue_for(crate::arch::percpu::cpu_index());
                        let (mut data_done, mut control_done) = (0u64, 0u64);
                        let mut i = t;
                        let zero = [0u8; 16];
                        let mut round = 0u64;
                        while i < DATA {
                            let numbers: Vec<u64> = (0..IN_FLIGHT as u64)
                                .map(|k| i + k * tasks)
                                .filter(|&n| n < DATA)
                                .collect();
                            // Rounds take turns: one request at a time, one batch (one kick),
                            // one batch of zero-copy requests.
                            let outputs = match round % 3 {
                                0 => {
                                    let pending: Vec<_> = numbers
                                        .iter()
                                        .map(|n| {
                                            device.start_cipher_request(
                                                queue,
                                                &session.as_cipher_session(),
                                                &(*n as u128).to_le_bytes(),
                                                &zero,
                                            )
                                        })
                                        .collect::<Result<_, _>>()
                                        .map_err(|e| format!("request {i}: submit: {e}"))?;
                                    pending
                                        .into_iter()
                                        .map(|p| p.wait().map(|out| out.to_vec()))
                                        .collect::<Vec<_>>()
                                }
                                zero_copy => {
                                    let mut batch = RequestBatch::with_capacity(numbers.len());
                                    for n in &numbers {
                                        let iv = (*n as u128).to_le_bytes();
                                        let builder = if zero_copy == 2 {
                                            device
                                                .build_cipher_owned(
                                                    queue,
                                                    &session.as_cipher_session(),
                                                    &iv,
                                                    OwnedBuffers {
                                                        src: zero.to_vec(),
                                                        dst: vec![0xee; 16],
                                                    },
                                                )
                                                .map_err(|e| e.error)
                                        } else {
                                            device.build_cipher_request(
                                                queue,
                                                &session.as_cipher_session(),
                                                &iv,
                                                &zero,
                                            )
                                        };
                                        batch
                                            .push(builder.map_err(|e| format!("request {n}: {e}"))?)
                                            .map_err(|e| format!("request {n}: {e}"))?;
                                    }
                                    let mut posted = Vec::new();
                                    batch
                                        .submit(&mut posted)
                                        .map_err(|e| format!("batch at {i}: {e}"))?;
                                    posted
                                        .into_iter()
                                        .map(|r| {
                                            if zero_copy == 2 {
                                                device
                                                    .owned_request(r)
                                                    .wait()
                                                    .map(|b| b.dst)
                                                    .map_err(|e| e.error)
                                            } else {
                                                CipherRequest::from_request(
                                                    r,
                                                    device.health().clone(),
                                                )
                                                .wait()
                                                .map(|out| out.to_vec())
                                            }
                                        })
                                        .collect()
                                }
                            };
                            round += 1;
                            for (n, out) in numbers.iter().zip(outputs) {
                                let out = out.map_err(|e| format!("request {n}: {e}"))?;
                                let mut expected = (*n as u128).to_le_bytes().into();
                                aes.encrypt_block(&mut expected);
                                ensure!(out[..] == expected[..], "request {n}: wrong ciphertext");
                                data_done += 1;
                            }
                            i += IN_FLIGHT as u64 * tasks;
                            // Interleave the control work so both queues are busy at once.
                            let pairs =
                                CONTROL_PAIRS / tasks + u64::from(t < CONTROL_PAIRS % tasks);
                            let due = (pairs * data_done).div_ceil(DATA / tasks).min(pairs);
                            while control_done / 2 < due {
                                let id = device
                                    .create_cipher_session(Cipher::AesCbc, Direction::Decrypt, &key)
                                    .map_err(|e| format!("create: {e}"))?
                                    .id;
                                device
                                    .destroy_cipher_session(id)
                                    .map_err(|e| format!("destroy {id}: {e}"))?;
                                control_done += 2;
                            }
                        }
                        Ok((data_done, control_done))
                    },
                )
            })
            .collect::<Result<_, _>>()
            .map_err(|e| format!("spawn: {e:?}"))?;
        let (mut data, mut control) = (0, 0);
        for h in handles {
            let (d, c) = h.join()?;
            data += d;
            control += c;
        }
        let completed: u64 = device
            .data
            .iter()
            .map(|q| {
                q.counters
                    .completed
                    .load(core::sync::atomic::Ordering::Relaxed)
            })
            .sum::<u64>()
            - submitted_before;
        ensure!(
            data == DATA,
            "{}: {data} data requests checked, expected {DATA}",
            device.name
        );
        ensure!(
            completed == DATA,
            "{}: the data queues completed {completed} requests for {DATA} submitted",
            device.name
        );
        ensure!(
            control >= 2 * CONTROL_PAIRS,
            "{}: {control} control requests, expected {}",
            device.name,
            2 * CONTROL_PAIRS
        );
    }
    Ok(())
}

/// The data path allocates nothing in steady state: after a warm-up, 10,000 cipher requests
/// (blocking `Session` calls of 16 B .. 4 KiB, and owned requests kept 8 in flight) make no heap
/// allocation at all, counted by the heap itself.
pub fn data_path_allocates_nothing_after_warmup() -> TestResult {
    use vcrypt_drivers::virtio_crypto::cipher::CipherRequest;
    const REQUESTS: usize = 10_000;
    const IN_FLIGHT: usize = 8;
    const SIZES: [usize; 4] = [16, 256, 1024, 4096];
    let key = hex("2b7e151628aed2a6abf7158809cf4f3c");
    let iv = [0x11u8; 16];
    for device in devices() {
        let session = Session::new(device, Cipher::AesCbc, Direction::Encrypt, &key)
            .map_err(|e| format!("{e}"))?;
        let src = vec![0x5au8; 4096];
        let mut dst = vec![0u8; 4096];
        let expected = reference(Cipher::AesCbc, Direction::Encrypt, &key, &iv, &src);
        let queue = device.data_queue_for(crate::arch::percpu::cpu_index());
        let mut run = |count: usize| -> Result<usize, String> {
            let mut done = 0;
            while done < count {
                // Blocking calls of each size.
                for size in SIZES {
                    session
                        .encrypt(&iv, &src[..size], &mut dst[..size])
                        .map_err(|e| format!("{size} B: {e}"))?;
                    ensure!(dst[..size] == expected[..size], "{size} B: wrong output");
                    done += 1;
                }
                // Owned requests, several in flight, kept in a fixed array.
                let mut pending: [Option<CipherRequest<crate::mm::dma::KernelHal>>; IN_FLIGHT] =
                    Default::default();
                for p in pending.iter_mut() {
                    *p = Some(
                        device
                            .start_cipher_request(
                                queue,
                                &session.as_cipher_session(),
                                &iv,
                                &src[..256],
                            )
                            .map_err(|e| format!("submit: {e}"))?,
                    );
                }
                for p in pending.iter_mut() {
                    if let Some(p) = p.take() {
                        let out = p.wait().map_err(|e| format!("wait: {e}"))?;
                        ensure!(out[..] == expected[..256], "in flight: wrong output");
                        done += 1;
                    }
                }
            }
            Ok(done)
        };
        run(500)?;
        let before = crate::mm::heap::allocations();
        let done = run(REQUESTS)?;
        let allocations = crate::mm::heap::allocations() - before;
        crate::println!(
            "  {}: {done} data requests after warm-up, {allocations} heap allocations",
            device.name
        );
        ensure!(
            allocations == 0,
            "{}: {allocations} heap allocations during {done} data requests (expected none)",
            device.name
        );
    }
    Ok(())
}

/// AES-CTR of any length (QEMU's device takes whole blocks only; the session pads and cuts):
/// lengths around block edges and random ones, every key size, both directions and both call
/// shapes, against RustCrypto's `ctr`.
pub fn ctr_any_length_vs_rustcrypto() -> TestResult {
    const EDGES: [usize; 12] = [1, 2, 15, 16, 17, 31, 33, 63, 100, 1000, 4095, 65_535];
    let mut rng = Rng::new(0xc7_0001);
    for device in devices() {
        with_unadvertised(device, || -> TestResult {
            let randoms: Vec<usize> = (0..60).map(|_| 1 + rng.below(5000) as usize).collect();
            for (n, &len) in EDGES.iter().chain(randoms.iter()).enumerate() {
                let key = rng.bytes([16, 24, 32][n % 3]);
                let iv = rng.bytes(16);
                let plain = rng.bytes(len);
                let what = || format!("{} ctr(aes) {} B, key {} B", device.name, len, key.len());
                let want = reference(Cipher::AesCtr, Direction::Encrypt, &key, &iv, &plain);
                let enc = Session::new(device, Cipher::AesCtr, Direction::Encrypt, &key)
                    .map_err(|e| format!("{}: {e}", what()))?;
                let mut out = vec![0u8; len];
                enc.encrypt(&iv, &plain, &mut out)
                    .map_err(|e| format!("{}: encrypt: {e}", what()))?;
                ensure!(
                    out == want,
                    "{}: ciphertext differs from RustCrypto",
                    what()
                );
                let mut in_place = plain.clone();
                enc.encrypt_in_place(&iv, &mut in_place)
                    .map_err(|e| format!("{}: encrypt in place: {e}", what()))?;
                ensure!(in_place == want, "{}: in-place ciphertext differs", what());
                let dec = Session::new(device, Cipher::AesCtr, Direction::Decrypt, &key)
                    .map_err(|e| format!("{}: {e}", what()))?;
                dec.decrypt_in_place(&iv, &mut out)
                    .map_err(|e| format!("{}: decrypt: {e}", what()))?;
                ensure!(
                    out == plain,
                    "{}: decrypting did not give the plaintext",
                    what()
                );
            }
            Ok(())
        })?;
    }
    Ok(())
}
