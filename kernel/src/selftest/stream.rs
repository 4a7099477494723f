//! Chained streams against the real device (drivers/src/stream.rs): random lengths and chunk
//! sizes in every chaining mode and both `chain=` modes against RustCrypto over the whole
//! stream; many streams and independent requests at once on every CPU; a failing chunk.

use alloc::format;
use alloc::vec::Vec;

use vcrypt_drivers::crypto::{ChainMode, Cipher, Direction, Session};
use vcrypt_drivers::error::Error;

use super::TestResult;
use super::crypto::expect_err;
use super::reference::{Rng, reference};
use crate::ensure;
use crate::virtio::crypto::{Device, devices};

/// The chaining modes: (cipher, direction).
const CHAINED: [(Cipher, Direction); 4] = [
    (Cipher::AesCbc, Direction::Encrypt),
    (Cipher::AesCbc, Direction::Decrypt),
    (Cipher::AesCtr, Direction::Encrypt),
    (Cipher::AesCtr, Direction::Decrypt),
];

/// Runs one stream of `data` in chunks of `chunk` bytes and checks it against one software
/// request over the whole.
#[allow(clippy::too_many_arguments)]
fn check_stream(
    device: &Device,
    cipher: Cipher,
    direction: Direction,
    mode: ChainMode,
    key: &[u8],
    iv: &[u8],
    data: &[u8],
    chunk: usize,
) -> TestResult {
    let what = || {
        format!(
            "{} {:?} chain={} {} B in chunks of {chunk}",
            cipher.kcapi_name(),
            direction,
            mode.name(),
            data.len()
        )
    };
    let session =
        Session::new(device, cipher, direction, key).map_err(|e| format!("{}: {e}", what()))?;
    let mut stream = session
        .stream_with(iv, mode, 16)
        .map_err(|e| format!("{}: {e}", what()))?;
    let mut out = Vec::with_capacity(data.len());
    stream
        .process(data.chunks(chunk), |o| out.extend_from_slice(o))
        .map_err(|e| format!("{}: {e}", what()))?;
    drop(stream);
    ensure!(
        out == reference(cipher, direction, key, iv, data),
        "{}: differs from one RustCrypto request over the whole",
        what()
    );
    Ok(())
}

/// Random keys, IVs (CTR ones near the 64-bit carry too), lengths (16 B .. 256 KiB) and chunk
/// sizes (16 B .. 16 KiB), every chaining mode, serial and pipelined.
pub fn streams_random_lengths_every_mode_vs_rustcrypto() -> TestResult {
    const CASES: usize = 12;
    for device in devices() {
        let unadvertised_before = device.allows_unadvertised();
        device.set_allow_unadvertised(true);
        let result = (|| -> TestResult {
            let mut rng = Rng::new(0x57e4_0001);
            for (cipher, direction) in CHAINED {
                for mode in ChainMode::ALL {
                    for case in 0..CASES {
                        let key_len = 16 + 8 * rng.below(3) as usize;
                        let key = rng.bytes(key_len);
                        let mut iv = rng.bytes(16);
                        if case % 3 == 0 {
                            iv[8..15].fill(0xff); // the counter's low half carries inside
                        }
                        let len = rng.log_uniform_len(16, 256 * 1024, 16);
                        let chunk = rng.log_uniform_len(16, 16 * 1024, 16);
                        let data = rng.bytes(len);
                        check_stream(device, cipher, direction, mode, &key, &iv, &data, chunk)?;
                    }
                }
            }
            Ok(())
        })();
        device.set_allow_unadvertised(unadvertised_before);
        result?;
    }
    Ok(())
}

/// On every CPU at once: two tasks running streams (each mode in turn) and one sending
/// independent requests with their own IVs on the same session kind; everything is checked and
/// the independent requests finish while the streams run.
pub fn many_streams_and_independent_requests_on_every_cpu() -> TestResult {
    for device in devices() {
        let unadvertised_before = device.allows_unadvertised();
        device.set_allow_unadvertised(true);
        let cpus = crate::arch::percpu::cpu_count();
        let handles: Vec<_> = (0..cpus * 3)
            .map(|t| {
                crate::sched::spawn("stream-mix", Some(t % cpus), move || -> TestResult {
                    let mut rng = Rng::new(0x5a5a_0000 + t as u64);
                    if t / cpus < 2 {
                        for round in 0..8 {
                            let (cipher, direction) = CHAINED[(t + round) % CHAINED.len()];
                            let mode = ChainMode::ALL[round % 2];
                            let key = rng.bytes(32);
                            let iv = rng.bytes(16);
                            let len = rng.log_uniform_len(4096, 64 * 1024, 16);
                            let data = rng.bytes(len);
                            let chunk = [512, 4096, 16384][round % 3];
                            check_stream(device, cipher, direction, mode, &key, &iv, &data, chunk)
                                .map_err(|e| format!("stream task {t} round {round}: {e}"))?;
                        }
                    } else {
                        let key = rng.bytes(16);
                        let session =
                            Session::new(device, Cipher::AesCbc, Direction::Encrypt, &key)
                                .map_err(|e| format!("{e}"))?;
                        for i in 0..200 {
                            let iv = rng.bytes(16);
                            let len = rng.log_uniform_len(16, 4096, 16);
                            let data = rng.bytes(len);
                            let mut out = data.clone();
                            session
                                .encrypt_in_place(&iv, &mut out)
                                .map_err(|e| format!("independent task {t} request {i}: {e}"))?;
                            ensure!(
                                out == reference(
                                    Cipher::AesCbc,
                                    Direction::Encrypt,
                                    &key,
                                    &iv,
                                    &data
                                ),
                                "independent task {t} request {i}: wrong ciphertext"
                            );
                        }
                    }
                    Ok(())
                })
            })
            .collect::<Result<_, _>>()
            .map_err(|e| format!("spawn: {e:?}"))?;
        let results: Vec<TestResult> = handles.into_iter().map(|h| h.join()).collect();
        device.set_allow_unadvertised(unadvertised_before);
        results.into_iter().collect::<TestResult>()?;
    }
    Ok(())
}

/// A chunk of a bad length fails its stream with that error, later feeds get `StreamBroken`;
/// a chunk the device fails (unknown session) fails with the device's error; ECB and XTS
/// streams are refused; afterwards new streams work.
pub fn failing_chunk_fails_the_stream_and_later_streams_work() -> TestResult {
    let key = [0x24u8; 16];
    let iv = [0x42u8; 16];
    for device in devices() {
        for mode in ChainMode::ALL {
            let session = Session::new(device, Cipher::AesCbc, Direction::Encrypt, &key)
                .map_err(|e| format!("{e}"))?;
            let mut stream = session
                .stream_with(&iv, mode, 8)
                .map_err(|e| format!("{e}"))?;
            stream
                .feed(&[1; 64])
                .map_err(|e| format!("first chunk: {e}"))?;
            expect_err(
                "a 17-byte CBC chunk",
                stream.feed(&[1; 17]),
                Error::InvalidDataLength { got: 17, block: 16 },
            )?;
            expect_err(
                "a chunk after the failed one",
                stream.feed(&[1; 16]),
                Error::StreamBroken { chunk: 1 },
            )?;
            let first = stream.next_output().ok_or("no first output")?;
            ensure!(
                first.map_err(|e| format!("{e}"))?[..]
                    == reference(Cipher::AesCbc, Direction::Encrypt, &key, &iv, &[1; 64])[..],
                "the chunk before the failure is still right"
            );
            drop(stream);

            // The device fails a chunk: a session it does not know.
            let queue = device.current_data_queue();
            let unknown = vcrypt_drivers::crypto::CipherSession {
                id: 0xdead_beef,
                generation: device.generation(),
                cipher: Cipher::AesCbc,
                direction: Direction::Encrypt,
            };
            let mut stream =
                vcrypt_drivers::stream::Stream::open(device, queue, &unknown, &iv, mode, 8)
                    .map_err(|e| format!("{e}"))?;
            stream.feed(&[2; 32]).map_err(|e| format!("{e}"))?;
            // Later chunks are refused as soon as the device has failed chunk 0, and replaced
            // by `StreamBroken` if they were fed before.
            let mut fed = 1;
            while fed < 3 && stream.feed(&[2; 32]).is_ok() {
                fed += 1;
            }
            expect_err(
                "chunk 0 on an unknown session",
                stream.next_output().ok_or("no output")?,
                Error::UnknownSession,
            )?;
            for _ in 1..fed {
                expect_err(
                    "a chunk after the failed one",
                    stream.next_output().ok_or("no output")?,
                    Error::StreamBroken { chunk: 0 },
                )?;
            }
            expect_err(
                "feeding after the failed chunk",
                stream.feed(&[2; 32]),
                Error::StreamBroken { chunk: 0 },
            )?;
            drop(stream);
            check_stream(
                device,
                Cipher::AesCbc,
                Direction::Encrypt,
                mode,
                &key,
                &iv,
                &[3; 4096],
                1024,
            )?;
        }
        let unadvertised_before = device.allows_unadvertised();
        device.set_allow_unadvertised(true);
        let refused = (|| -> TestResult {
            for cipher in [Cipher::AesEcb, Cipher::AesXts] {
                let key = alloc::vec![5u8; cipher.key_lengths()[1]];
                let session = Session::new(device, cipher, Direction::Encrypt, &key)
                    .map_err(|e| format!("{e}"))?;
                match session.stream(&iv) {
                    Err(Error::StreamNotSupported { .. }) => {}
                    Err(e) => return Err(format!("{} stream: {e}", cipher.kcapi_name())),
                    Ok(_) => return Err(format!("{} stream was accepted", cipher.kcapi_name())),
                }
            }
            Ok(())
        })();
        device.set_allow_unadvertised(unadvertised_before);
        refused?;
        ensure!(
            device.data.iter().all(|q| q.slots_in_use() == 0),
            "request slots still held after the streams were dropped"
        );
    }
    Ok(())
}
