//! Host tests of chained streams: IV derivation against a one-shot model, and the stream over
//! fake devices (a hand-driven ring that completes in reverse, and the device thread).

use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use std::sync::mpsc;

use super::*;
use crate::crypto::Session;
use crate::virtio_crypto::cipher::CipherSession;
use crate::virtio_crypto::fake::*;

// --- IV derivation ----------------------------------------------------------------------------

/// A pipelined stream (window 4) on `dev`'s first data queue, for session 7 of `cipher` in
/// `direction`.
fn open_pipelined<'d>(
    dev: &'d CryptoDevice<FakeHal>,
    cipher: Cipher,
    direction: Direction,
    iv: &[u8],
) -> Result<Stream<'d, FakeHal>, Error> {
    let session = CipherSession {
        id: 7,
        generation: dev.generation(),
        cipher,
        direction,
    };
    Stream::open(dev, &dev.data[0], &session, iv, ChainMode::Pipelined, 4)
}

#[test]
fn ctr_counter_carries_across_64_and_128_bit_boundaries() {
    let mut low_full = [0u8; 16];
    low_full[8..].fill(0xff);
    let mut carried = [0u8; 16];
    carried[7] = 1;
    assert_eq!(ctr_add(low_full, 1), carried, "carry into the high 64 bits");
    let mut three_before = low_full;
    three_before[15] = 0xfd;
    let mut two_after = carried;
    two_after[15] = 2;
    assert_eq!(
        ctr_add(three_before, 5),
        two_after,
        "5 blocks across the boundary"
    );
    assert_eq!(ctr_add([0xff; 16], 1), [0; 16], "wraps at 2^128");
    let mut one_below_top = [0xff; 16];
    one_below_top[15] = 0xfe;
    let mut expected = [0u8; 16];
    expected[15] = 1;
    assert_eq!(ctr_add(one_below_top, 3), expected, "wraps across 128 bits");
    assert_eq!(
        ctr_add([0; 16], u64::MAX),
        u128::from(u64::MAX).to_be_bytes()
    );
}

/// A toy block cipher (a bijection on 16 bytes) so chaining can be checked without AES.
fn toy_enc(key: u8, b: [u8; 16]) -> [u8; 16] {
    let mut out = [0u8; 16];
    for i in 0..16 {
        out[(i + 5) % 16] = b[i].wrapping_add(key).rotate_left(3) ^ (i as u8);
    }
    out
}

fn toy_dec(key: u8, c: [u8; 16]) -> [u8; 16] {
    let mut out = [0u8; 16];
    for i in 0..16 {
        out[i] = (c[(i + 5) % 16] ^ (i as u8))
            .rotate_right(3)
            .wrapping_sub(key);
    }
    out
}

fn xor(a: [u8; 16], b: &[u8]) -> [u8; 16] {
    core::array::from_fn(|i| a[i] ^ b[i])
}

/// One request of `chaining` over `data` from `iv`, as the device would compute it.
fn one_shot(chaining: Chaining, key: u8, iv: [u8; 16], data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut prev = iv;
    for (i, block) in data.chunks(16).enumerate() {
        match chaining {
            Chaining::CbcEncrypt => {
                prev = toy_enc(key, xor(prev, block));
                out.extend_from_slice(&prev);
            }
            Chaining::CbcDecrypt => {
                out.extend_from_slice(&xor(toy_dec(key, block.try_into().unwrap()), &prev));
                prev = block.try_into().unwrap();
            }
            Chaining::Ctr => {
                // Counted here, not with `ctr_add`, so the model checks it.
                let counter = u128::from_be_bytes(iv)
                    .wrapping_add(i as u128)
                    .to_be_bytes();
                let ks = toy_enc(key, counter);
                out.extend(block.iter().zip(ks).map(|(d, k)| d ^ k));
            }
        }
    }
    out
}

fn lcg(state: &mut u64) -> u64 {
    *state = state
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *state >> 33
}

/// Chunked through `IvChain` (each chunk one request with the IV it derives) equals one request
/// over the whole, for every chaining, random chunk sizes, and counters that cross the 64- and
/// 128-bit boundaries.
#[test]
fn chained_chunks_equal_one_request_over_the_whole() {
    let mut rng = 0x5eed_u64;
    let mut near_64 = [0x42u8; 16];
    near_64[8..].fill(0xff);
    near_64[15] = 0xf0;
    let ivs = [[0x17u8; 16], near_64, [0xff; 16]];
    for chaining in [Chaining::CbcEncrypt, Chaining::CbcDecrypt, Chaining::Ctr] {
        for iv in ivs {
            for case in 0..50 {
                let blocks = 1 + lcg(&mut rng) as usize % 64;
                let tail = if chaining == Chaining::Ctr && case % 2 == 1 {
                    1 + lcg(&mut rng) as usize % 15
                } else {
                    0
                };
                let data: Vec<u8> = (0..blocks * 16 + tail)
                    .map(|_| lcg(&mut rng) as u8)
                    .collect();
                let expected = one_shot(chaining, 9, iv, &data);
                let mut chain = IvChain::new(chaining, &iv).unwrap();
                let mut out = Vec::new();
                let mut rest = &data[..];
                while !rest.is_empty() {
                    let take = ((1 + lcg(&mut rng) as usize % 8) * 16).min(rest.len());
                    let (chunk, after) = rest.split_at(take);
                    let chunk_iv = chain.after_input(chunk).unwrap();
                    let chunk_out = one_shot(chaining, 9, chunk_iv, chunk);
                    chain.after_output(&chunk_out);
                    out.extend_from_slice(&chunk_out);
                    rest = after;
                }
                assert_eq!(out, expected, "{chaining:?} iv {iv:x?} case {case}");
            }
        }
    }
}

#[test]
fn each_chaining_derives_the_documented_iv() {
    let iv = [1u8; 16];
    let input: Vec<u8> = (0..48).collect();
    let mut dec = IvChain::new(Chaining::CbcDecrypt, &iv).unwrap();
    assert_eq!(dec.after_input(&input).unwrap(), iv);
    assert_eq!(dec.next_iv()[..], input[32..], "last input block");
    let mut enc = IvChain::new(Chaining::CbcEncrypt, &iv).unwrap();
    assert_eq!(enc.after_input(&input).unwrap(), iv);
    assert_eq!(enc.next_iv(), iv, "unknown until the output is");
    enc.after_output(&[7u8; 48]);
    assert_eq!(enc.next_iv(), [7u8; 16], "last output block");
    let mut ctr = IvChain::new(Chaining::Ctr, &iv).unwrap();
    ctr.after_input(&input).unwrap();
    assert_eq!(ctr.next_iv(), ctr_add(iv, 3));
    ctr.after_output(&[9u8; 48]);
    assert_eq!(
        ctr.next_iv(),
        ctr_add(iv, 3),
        "outputs do not move a counter"
    );
}

#[test]
fn bad_chunks_and_modes_are_refused() {
    let iv = [0u8; 16];
    let mut ctr = IvChain::new(Chaining::Ctr, &iv).unwrap();
    ctr.after_input(&[0; 20]).unwrap();
    assert_eq!(ctr.next_iv(), ctr_add(iv, 1), "advanced by whole blocks");
    assert_eq!(
        ctr.after_input(&[0; 16]),
        Err(Error::PartialBlockNotLast { chunk: 0, len: 20 })
    );
    let mut cbc = IvChain::new(Chaining::CbcDecrypt, &iv).unwrap();
    assert_eq!(
        cbc.after_input(&[0; 17]),
        Err(Error::InvalidDataLength { got: 17, block: 16 })
    );
    assert_eq!(cbc.after_input(&[]), Err(Error::EmptyRequest));
    assert_eq!(
        IvChain::new(Chaining::Ctr, &iv[..8]).err(),
        Some(Error::InvalidIvLength {
            got: 8,
            expected: 16
        })
    );
    for cipher in [Cipher::AesEcb, Cipher::AesXts] {
        for direction in [Direction::Encrypt, Direction::Decrypt] {
            assert!(matches!(
                Chaining::of(cipher, direction),
                Err(Error::StreamNotSupported { .. })
            ));
        }
    }
}

// --- the stream over a hand-driven ring -------------------------------------------------------

fn iv_of(chain: &Chain) -> [u8; 16] {
    chain.readable()[0][72..88].try_into().unwrap()
}

fn src_of(chain: &Chain) -> Vec<u8> {
    chain.readable()[0][88..].to_vec()
}

/// Answers `chain` with `src ^ tag` and OK.
fn answer(ring: &mut FakeRing, chain: &Chain, tag: u8) {
    let mut out: Vec<u8> = src_of(chain).iter().map(|b| b ^ tag).collect();
    out.push(wire_ok());
    ring.complete(chain.id as u32, chain.write(&out) as u32);
}

fn wire_ok() -> u8 {
    crate::virtio_crypto::wire::STATUS_OK as u8
}

/// CTR and CBC-decrypt streams put every chunk in the ring at once, each with its derived IV;
/// when the device completes them in reverse, the outputs still come back in feed order.
#[test]
fn pipelined_outputs_come_back_in_order_when_the_device_completes_in_reverse() {
    for (cipher, direction) in [
        (Cipher::AesCtr, Direction::Encrypt),
        (Cipher::AesCbc, Direction::Decrypt),
    ] {
        let bell = CountingNotify::new();
        let (dev, mut rings) = crypto_device(1, &bell);
        dev.set_allow_unadvertised(true);
        let iv = [0xfe; 16];
        let mut stream = open_pipelined(&dev, cipher, direction, &iv).unwrap();
        let chunks: Vec<Vec<u8>> = (0..6u8).map(|i| vec![i; 32 + 16 * i as usize]).collect();
        let mut chain = IvChain::new(Chaining::of(cipher, direction).unwrap(), &iv).unwrap();
        let mut taken = 0;
        let mut take = |stream: &mut Stream<'_, FakeHal>, n: usize| {
            for _ in 0..n {
                let out = stream.next_output().unwrap().unwrap();
                let expected: Vec<u8> = chunks[taken]
                    .iter()
                    .map(|b| b ^ (0x80 | taken as u8))
                    .collect();
                assert_eq!(out[..], expected[..], "{cipher:?}: output {taken} in order");
                taken += 1;
            }
        };
        // Two rounds through a window of 4: all four in the ring at once, completed in reverse,
        // half taken, two more fed into the freed window positions, completed in reverse.
        for round in [0..4usize, 4..6] {
            for c in &chunks[round.clone()] {
                stream.feed(c).unwrap();
            }
            let posted = rings[1].pending();
            assert_eq!(
                posted.len(),
                round.len(),
                "{cipher:?}: every chunk in the ring at once"
            );
            for (i, p) in round.clone().zip(&posted) {
                assert_eq!(src_of(p), chunks[i]);
                assert_eq!(
                    iv_of(p),
                    chain.after_input(&chunks[i]).unwrap(),
                    "{cipher:?}"
                );
            }
            for (i, p) in round.clone().zip(&posted).rev() {
                answer(&mut rings[1], p, 0x80 | i as u8);
                assert_eq!(dev.data[0].handle_interrupt(), 1);
            }
            take(&mut stream, 2);
        }
        take(&mut stream, 2);
        assert!(stream.next_output().is_none());
        drop(stream);
        assert_eq!(dev.data[0].slots_in_use(), 0);
    }
}

/// A CBC-encrypt stream posts one chunk at a time; the next enters the ring from the previous
/// chunk's completion handler (no task call in between), with the previous output's last block
/// as its IV.
#[test]
fn cbc_encrypt_posts_the_next_chunk_from_the_completion_handler() {
    let bell = CountingNotify::new();
    let (dev, mut rings) = crypto_device(1, &bell);
    let iv = [3u8; 16];
    let mut stream = open_pipelined(&dev, Cipher::AesCbc, Direction::Encrypt, &iv).unwrap();
    let chunks: Vec<Vec<u8>> = (0..4u8)
        .map(|i| vec![i + 1; 16 * (i as usize + 1)])
        .collect();
    for c in &chunks {
        stream.feed(c).unwrap();
    }
    let mut expected_iv = iv;
    for (i, c) in chunks.iter().enumerate() {
        let mut posted = rings[1].pending();
        assert_eq!(posted.len(), 1, "chunk {i}: exactly one in the ring");
        let p = posted.pop().unwrap();
        assert_eq!(src_of(&p), *c);
        assert_eq!(
            iv_of(&p),
            expected_iv,
            "chunk {i}: IV from the previous output"
        );
        answer(&mut rings[1], &p, 0x40 + i as u8);
        expected_iv = c[c.len() - 16..]
            .iter()
            .map(|b| b ^ (0x40 + i as u8))
            .collect::<Vec<u8>>()
            .try_into()
            .unwrap();
        // The interrupt alone posts the next chunk.
        assert_eq!(dev.data[0].handle_interrupt(), 1);
    }
    assert!(rings[1].pending().is_empty());
    for (i, c) in chunks.iter().enumerate() {
        let out = stream.next_output().unwrap().unwrap();
        assert!(out.iter().zip(c).all(|(o, s)| *o == s ^ (0x40 + i as u8)));
    }
    assert_eq!(stream.next_iv(), expected_iv);
}

/// A chunk the device fails breaks the stream: its own error, then `StreamBroken` for the rest
/// (CBC encryption: chunks built ahead are never posted); feeds are refused; a new stream works.
#[test]
fn a_failed_chunk_breaks_the_stream_and_the_next_stream_works() {
    let bell = CountingNotify::new();
    let (dev, mut rings) = crypto_device(1, &bell);
    let mut stream = open_pipelined(&dev, Cipher::AesCbc, Direction::Encrypt, &[0; 16]).unwrap();
    for _ in 0..3 {
        stream.feed(&[5; 32]).unwrap();
    }
    let p = rings[1].pending().pop().unwrap();
    let mut out = vec![0u8; 33];
    out[32] = crate::virtio_crypto::wire::STATUS_BADMSG as u8;
    rings[1].complete(p.id as u32, p.write(&out) as u32);
    dev.data[0].handle_interrupt();
    assert!(
        rings[1].pending().is_empty(),
        "nothing posted after a failure"
    );
    assert_eq!(stream.next_output().unwrap().err(), Some(Error::BadMessage));
    for _ in 0..2 {
        assert_eq!(
            stream.next_output().unwrap().err(),
            Some(Error::StreamBroken { chunk: 0 })
        );
    }
    assert_eq!(stream.feed(&[1; 16]), Err(Error::StreamBroken { chunk: 0 }));
    drop(stream);
    assert_eq!(dev.data[0].slots_in_use(), 0, "built-ahead chunks released");

    // A bad length fails its stream at feed time.
    let mut stream = open_pipelined(&dev, Cipher::AesCbc, Direction::Decrypt, &[0; 16]).unwrap();
    stream.feed(&[1; 16]).unwrap();
    assert_eq!(
        stream.feed(&[1; 17]),
        Err(Error::InvalidDataLength { got: 17, block: 16 })
    );
    assert_eq!(stream.feed(&[1; 16]), Err(Error::StreamBroken { chunk: 1 }));
    let p = rings[1].pending().pop().unwrap();
    answer(&mut rings[1], &p, 1);
    dev.data[0].handle_interrupt();
    assert!(stream.next_output().unwrap().is_ok(), "chunk 0 was fine");
    drop(stream);

    let mut stream = open_pipelined(&dev, Cipher::AesCbc, Direction::Encrypt, &[0; 16]).unwrap();
    stream.feed(&[2; 16]).unwrap();
    let p = rings[1].pending().pop().unwrap();
    answer(&mut rings[1], &p, 2);
    dev.data[0].handle_interrupt();
    assert_eq!(stream.next_output().unwrap().unwrap()[..], [0; 16]);
    assert!(matches!(
        open_pipelined(&dev, Cipher::AesXts, Direction::Encrypt, &[0; 16]).err(),
        Some(Error::StreamNotSupported { .. })
    ));
}

// --- end to end with the device thread --------------------------------------------------------

/// Both modes, both CBC directions, through `Session::stream_with` and the fake device thread
/// (which completes from its own thread, like an interrupt): every output in order; `Serial`
/// never has more than one chunk in the ring.
#[test]
fn serial_and_pipelined_streams_end_to_end() {
    let (tx, rx) = mpsc::channel();
    let bell = CountingNotify::with_signal(tx);
    let (dev, rings) = crypto_device(1, &bell);
    dev.set_timeout_ns(5_000_000_000);
    let dev = Arc::new(dev);
    let irq_dev = dev.clone();
    let _fake = FakeCryptoDevice::spawn(rings, rx, drain_on_interrupt(irq_dev));
    let data: Vec<u8> = (0..16 * 200).map(|i| (i * 7) as u8).collect();
    for direction in [Direction::Encrypt, Direction::Decrypt] {
        let session = Session::new(&*dev, Cipher::AesCbc, direction, &[4; 16]).unwrap();
        for mode in ChainMode::ALL {
            let mut stream = session.stream_with(&[0; 16], mode, 16).unwrap();
            let mut out = Vec::new();
            stream
                .process(data.chunks(48), |o| out.extend_from_slice(o))
                .unwrap();
            let expected: Vec<u8> = data.iter().map(|b| b ^ XOR).collect();
            assert_eq!(out, expected, "{direction:?} {mode:?}");
            let stats = stream.stats();
            assert_eq!(stats.chunks, data.len().div_ceil(48) as u64);
        }
    }
}

/// A CTR stream whose last chunk is not whole blocks takes it as a single request does: the
/// device gets it padded to whole blocks with its derived counter, the output is cut to the
/// chunk's length.
#[test]
fn a_ctr_stream_takes_a_partial_last_chunk() {
    let bell = CountingNotify::new();
    let (dev, mut rings) = crypto_device(1, &bell);
    dev.set_allow_unadvertised(true);
    let iv = [0x10; 16];
    let mut stream = open_pipelined(&dev, Cipher::AesCtr, Direction::Encrypt, &iv).unwrap();
    stream.feed(&[5; 16]).unwrap();
    stream.feed(&[6; 17]).unwrap();
    let posted = rings[1].pending();
    assert_eq!(posted.len(), 2);
    let mut second = vec![6u8; 17];
    second.resize(32, 0);
    assert_eq!(src_of(&posted[1]), second, "padded to whole blocks");
    assert_eq!(iv_of(&posted[1]), ctr_add(iv, 1));
    for p in &posted {
        answer(&mut rings[1], p, 0x33);
    }
    dev.data[0].handle_interrupt();
    assert_eq!(stream.next_output().unwrap().unwrap()[..], [5 ^ 0x33; 16]);
    assert_eq!(stream.next_output().unwrap().unwrap()[..], [6 ^ 0x33; 17]);
    assert_eq!(
        stream.feed(&[7; 16]),
        Err(Error::PartialBlockNotLast { chunk: 1, len: 17 })
    );
}

/// A chunk that cannot be posted (here: its queue's ring stays full until the queue's timeout)
/// is refused by `feed` itself, as its documentation says, not only later by `next_output`.
#[test]
fn a_chunk_that_cannot_be_posted_is_refused_by_feed() {
    let bell = CountingNotify::new();
    let (dev, _rings) = crypto_device(1, &bell);
    // A queue with a slot per descriptor, so the ring (not the slots) fills up.
    let rig = queue_rig(false, CountingNotify::new());
    rig.queue.set_timeout_ns(20_000_000);
    let held: Vec<_> = (0..crate::virtio_crypto::ring::QUEUE_SIZE / 2)
        .map(|_| {
            let mut b = rig.queue.reserve(8, 8).unwrap();
            b.push(&[0; 8]).unwrap();
            b.submit().unwrap()
        })
        .collect();
    assert_eq!(rig.queue.free_descriptors(), 0);
    let session = CipherSession {
        id: 7,
        generation: dev.generation(),
        cipher: Cipher::AesCbc,
        direction: Direction::Decrypt,
    };
    let mut stream = Stream::open(
        &dev,
        &rig.queue,
        &session,
        &[0; 16],
        ChainMode::Pipelined,
        4,
    )
    .unwrap();
    assert_eq!(stream.feed(&[1; 16]), Err(Error::Timeout));
    assert_eq!(
        stream.next_output().map(|r| r.err()),
        Some(Some(Error::Timeout))
    );
    drop(stream);
    drop(held);
}
