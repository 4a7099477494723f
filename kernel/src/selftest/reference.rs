//! RustCrypto's software AES as the reference the device is compared against, and a small
//! deterministic PRNG so every "random" test case can be reproduced.

use alloc::vec::Vec;

use aes::cipher::{
    BlockCipherDecrypt, BlockCipherEncrypt, BlockModeDecrypt, BlockModeEncrypt, KeyInit, KeyIvInit,
    StreamCipher,
};
use aes::{Aes128, Aes192, Aes256};
use vcrypt_drivers::crypto::{Cipher, Direction};

macro_rules! with_aes {
    ($key_len:expr, $aes:ident => $body:expr) => {
        match $key_len {
            16 => {
                type $aes = Aes128;
                $body
            }
            24 => {
                type $aes = Aes192;
                $body
            }
            _ => {
                type $aes = Aes256;
                $body
            }
        }
    };
}

/// `data` encrypted or decrypted in software, as the device should do it. Inputs must be valid
/// (key, IV and length checked by the caller).
pub fn reference(
    cipher: Cipher,
    direction: Direction,
    key: &[u8],
    iv: &[u8],
    data: &[u8],
) -> Vec<u8> {
    let mut buf = data.to_vec();
    let encrypt = direction == Direction::Encrypt;
    match cipher {
        Cipher::AesEcb => with_aes!(key.len(), A => {
            let aes = A::new_from_slice(key).expect("key length");
            for chunk in buf.chunks_exact_mut(16) {
                let block = chunk.try_into().expect("16 bytes");
                if encrypt { aes.encrypt_block(block) } else { aes.decrypt_block(block) }
            }
        }),
        Cipher::AesCbc => with_aes!(key.len(), A => {
            if encrypt {
                let mut mode = cbc::Encryptor::<A>::new_from_slices(key, iv).expect("key/iv length");
                for chunk in buf.chunks_exact_mut(16) {
                    mode.encrypt_block(chunk.try_into().expect("16 bytes"));
                }
            } else {
                let mut mode = cbc::Decryptor::<A>::new_from_slices(key, iv).expect("key/iv length");
                for chunk in buf.chunks_exact_mut(16) {
                    mode.decrypt_block(chunk.try_into().expect("16 bytes"));
                }
            }
        }),
        Cipher::AesCtr => with_aes!(key.len(), A => {
            let mut mode = ctr::Ctr128BE::<A>::new_from_slices(key, iv).expect("key/iv length");
            mode.apply_keystream(&mut buf);
        }),
        Cipher::AesXts => with_aes!(key.len() / 2, A => {
            let (k1, k2) = key.split_at(key.len() / 2);
            let xts = xts_mode::Xts128::new(A::new_from_slice(k1).expect("key"), A::new_from_slice(k2).expect("key"));
            let tweak: [u8; 16] = iv.try_into().expect("16-byte tweak");
            if encrypt { xts.encrypt_sector(&mut buf, tweak.into()) } else { xts.decrypt_sector(&mut buf, tweak.into()) }
        }),
    }
    buf
}

/// xorshift64*: fast, deterministic, good enough to pick test cases.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }

    /// A length in `[min, max]`, log-uniform (as many short as long cases), rounded down to a
    /// multiple of `multiple` but not below `min`.
    pub fn log_uniform_len(&mut self, min: usize, max: usize, multiple: usize) -> usize {
        let (lo, hi) = (min.ilog2(), max.ilog2());
        let exponent = lo + self.below((hi - lo + 1) as u64) as u32;
        let base = 1usize << exponent;
        let len = (base + self.below(base as u64) as usize).clamp(min, max);
        (len / multiple * multiple).max(min)
    }
}
