//! virtio-crypto driver tests against the real device: known answers, differential tests against
//! RustCrypto, every bad input, session exhaustion, concurrency and volume.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use vcrypt_drivers::crypto::{Cipher, Direction, Session};
use vcrypt_drivers::error::Error;

use super::TestResult;
use crate::ensure;
use crate::virtio::crypto::{Device, devices};

pub fn hex(text: &str) -> Vec<u8> {
    let text: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    (0..text.len() / 2).map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap_or(0)).collect()
}

/// Every device, each with AES-ECB/CTR/XTS allowed for the duration of `f`.
fn with_unadvertised<T>(device: &Device, f: impl FnOnce() -> T) -> T {
    device.set_allow_unadvertised(true);
    let result = f();
    device.set_allow_unadvertised(false);
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
                let (key, iv, plain, expected) = (hex(kat.key), hex(kat.iv), hex(kat.plain), hex(kat.cipher_text));
                let enc = Session::new(device, kat.cipher, Direction::Encrypt, &key)
                    .map_err(|e| format!("{}: {}: create encrypt session: {e}", device.name, kat.name))?;
                let mut out = vec![0u8; plain.len()];
                enc.encrypt(&iv, &plain, &mut out).map_err(|e| format!("{}: encrypt: {e}", kat.name))?;
                ensure!(out == expected, "{}: {}: encrypt gave {:02x?}", device.name, kat.name, out);
                let dec = Session::new(device, kat.cipher, Direction::Decrypt, &key)
                    .map_err(|e| format!("{}: create decrypt session: {e}", kat.name))?;
                let mut data = expected.clone();
                dec.decrypt_in_place(&iv, &mut data).map_err(|e| format!("{}: decrypt: {e}", kat.name))?;
                ensure!(data == plain, "{}: {}: decrypt in place gave {:02x?}", device.name, kat.name, data);
            }
            Ok(())
        })?;
    }
    Ok(())
}
