//! The device configuration space (`struct virtio_crypto_config`) and its capability masks.
//!
//! Layout, all little endian (offsets in bytes): status@0, max_dataqueues@4,
//! crypto_services@8, cipher_algo_l@12, cipher_algo_h@16, hash_algo@20, mac_algo_l@24,
//! mac_algo_h@28, aead_algo@32, max_cipher_key_len@36, max_auth_key_len@40,
//! akcipher_algo@44 (called `reserve` in headers before akcipher existed), max_size@48 (le64).
//! Total [`CONFIG_LEN`] = 56.
//!
//! Invariants:
//! - Bit N of a mask means the algorithm (or service) whose id is N. The cipher and MAC masks
//!   are 64 bits wide: `l | (h << 32)`.
//! - An algorithm counts as advertised only if its service bit is set too: the spec tells the
//!   driver to read the algorithm masks "based on crypto_services".
//! - Mask decoding never allocates: names are `&'static str`, unknown bits are named `bitN`
//!   from a static table.

use core::fmt;

use super::wire::{
    self, SERVICE_AEAD, SERVICE_AKCIPHER, SERVICE_CIPHER, SERVICE_HASH, SERVICE_MAC,
};

/// Size of the device configuration structure.
pub const CONFIG_LEN: usize = 56;

/// A snapshot of the device configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CryptoConfig {
    pub status: u32,
    pub max_dataqueues: u32,
    pub crypto_services: u32,
    pub cipher_algo_l: u32,
    pub cipher_algo_h: u32,
    pub hash_algo: u32,
    pub mac_algo_l: u32,
    pub mac_algo_h: u32,
    pub aead_algo: u32,
    pub max_cipher_key_len: u32,
    pub max_auth_key_len: u32,
    pub akcipher_algo: u32,
    /// Largest total of a request's variable-length parts (iv + src + dst for a cipher).
    pub max_size: u64,
}

impl CryptoConfig {
    /// Parses the first [`CONFIG_LEN`] bytes of `b`; `None` if `b` is shorter.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        let b: &[u8; CONFIG_LEN] = b.get(..CONFIG_LEN)?.try_into().ok()?;
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let mut max_size = [0u8; 8];
        max_size.copy_from_slice(&b[48..56]);
        Some(Self {
            status: u32_at(0),
            max_dataqueues: u32_at(4),
            crypto_services: u32_at(8),
            cipher_algo_l: u32_at(12),
            cipher_algo_h: u32_at(16),
            hash_algo: u32_at(20),
            mac_algo_l: u32_at(24),
            mac_algo_h: u32_at(28),
            aead_algo: u32_at(32),
            max_cipher_key_len: u32_at(36),
            max_auth_key_len: u32_at(40),
            akcipher_algo: u32_at(44),
            max_size: u64::from_le_bytes(max_size),
        })
    }

    /// `VIRTIO_CRYPTO_S_HW_READY` is set.
    pub const fn hw_ready(&self) -> bool {
        self.status & wire::S_HW_READY != 0
    }

    /// The 64-bit cipher mask.
    pub const fn cipher_mask(&self) -> u64 {
        self.cipher_algo_l as u64 | (self.cipher_algo_h as u64) << 32
    }

    /// The 64-bit MAC mask.
    pub const fn mac_mask(&self) -> u64 {
        self.mac_algo_l as u64 | (self.mac_algo_h as u64) << 32
    }

    pub const fn advertises_service(&self, service: u32) -> bool {
        bit(self.crypto_services as u64, service)
    }

    pub const fn advertises_cipher(&self, algo: u32) -> bool {
        self.advertises_service(SERVICE_CIPHER) && bit(self.cipher_mask(), algo)
    }

    pub const fn advertises_hash(&self, algo: u32) -> bool {
        self.advertises_service(SERVICE_HASH) && bit(self.hash_algo as u64, algo)
    }

    pub const fn advertises_mac(&self, algo: u32) -> bool {
        self.advertises_service(SERVICE_MAC) && bit(self.mac_mask(), algo)
    }

    pub const fn advertises_aead(&self, algo: u32) -> bool {
        self.advertises_service(SERVICE_AEAD) && bit(self.aead_algo as u64, algo)
    }

    pub const fn advertises_akcipher(&self, algo: u32) -> bool {
        self.advertises_service(SERVICE_AKCIPHER) && bit(self.akcipher_algo as u64, algo)
    }

    /// Names of the advertised services (printable with `{}`).
    pub const fn services(&self) -> MaskNames {
        service_names(self.crypto_services)
    }

    /// Names in the cipher mask, whatever `crypto_services` says (shows what the device sets).
    pub const fn ciphers(&self) -> MaskNames {
        cipher_names(self.cipher_mask())
    }

    pub const fn hashes(&self) -> MaskNames {
        hash_names(self.hash_algo)
    }

    pub const fn macs(&self) -> MaskNames {
        mac_names(self.mac_mask())
    }

    pub const fn aeads(&self) -> MaskNames {
        aead_names(self.aead_algo)
    }

    pub const fn akciphers(&self) -> MaskNames {
        akcipher_names(self.akcipher_algo)
    }
}

/// Bit `n` of `mask`, false for `n >= 64`.
const fn bit(mask: u64, n: u32) -> bool {
    n < 64 && mask & (1 << n) != 0
}

/// What a mask's bits name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Service,
    Cipher,
    Hash,
    Mac,
    Aead,
    Akcipher,
}

impl Family {
    /// The name of id `n` in this family, `None` if undefined.
    pub const fn name(self, n: u32) -> Option<&'static str> {
        match self {
            Family::Service => match n {
                SERVICE_CIPHER => Some("cipher"),
                SERVICE_HASH => Some("hash"),
                SERVICE_MAC => Some("mac"),
                SERVICE_AEAD => Some("aead"),
                SERVICE_AKCIPHER => Some("akcipher"),
                _ => None,
            },
            Family::Cipher => wire::cipher_name(n),
            Family::Hash => wire::hash_name(n),
            Family::Mac => wire::mac_name(n),
            Family::Aead => wire::aead_name(n),
            Family::Akcipher => wire::akcipher_name(n),
        }
    }
}

pub const fn service_names(mask: u32) -> MaskNames {
    MaskNames {
        family: Family::Service,
        rest: mask as u64,
    }
}

pub const fn cipher_names(mask: u64) -> MaskNames {
    MaskNames {
        family: Family::Cipher,
        rest: mask,
    }
}

pub const fn hash_names(mask: u32) -> MaskNames {
    MaskNames {
        family: Family::Hash,
        rest: mask as u64,
    }
}

pub const fn mac_names(mask: u64) -> MaskNames {
    MaskNames {
        family: Family::Mac,
        rest: mask,
    }
}

pub const fn aead_names(mask: u32) -> MaskNames {
    MaskNames {
        family: Family::Aead,
        rest: mask as u64,
    }
}

pub const fn akcipher_names(mask: u32) -> MaskNames {
    MaskNames {
        family: Family::Akcipher,
        rest: mask as u64,
    }
}

/// The names of the set bits of a mask, lowest bit first; undefined bits are named `bitN`.
///
/// Also `Display`: the names comma-separated (`aes-cbc,aes-ctr`), or `-` for an empty mask.
#[derive(Debug, Clone)]
pub struct MaskNames {
    family: Family,
    rest: u64,
}

impl Iterator for MaskNames {
    type Item = &'static str;

    fn next(&mut self) -> Option<&'static str> {
        if self.rest == 0 {
            return None;
        }
        let n = self.rest.trailing_zeros();
        self.rest &= self.rest - 1;
        Some(self.family.name(n).unwrap_or(BIT_NAMES[n as usize]))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.rest.count_ones() as usize;
        (n, Some(n))
    }
}

impl ExactSizeIterator for MaskNames {}

impl fmt::Display for MaskNames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.rest == 0 {
            return f.write_str("-");
        }
        for (i, name) in self.clone().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(name)?;
        }
        Ok(())
    }
}

/// Names for bits no family defines.
#[rustfmt::skip]
static BIT_NAMES: [&str; 64] = [
    "bit0", "bit1", "bit2", "bit3", "bit4", "bit5", "bit6", "bit7",
    "bit8", "bit9", "bit10", "bit11", "bit12", "bit13", "bit14", "bit15",
    "bit16", "bit17", "bit18", "bit19", "bit20", "bit21", "bit22", "bit23",
    "bit24", "bit25", "bit26", "bit27", "bit28", "bit29", "bit30", "bit31",
    "bit32", "bit33", "bit34", "bit35", "bit36", "bit37", "bit38", "bit39",
    "bit40", "bit41", "bit42", "bit43", "bit44", "bit45", "bit46", "bit47",
    "bit48", "bit49", "bit50", "bit51", "bit52", "bit53", "bit54", "bit55",
    "bit56", "bit57", "bit58", "bit59", "bit60", "bit61", "bit62", "bit63",
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio_crypto::wire::*;
    use std::{format, vec::Vec};

    /// Config as QEMU 7.2's builtin backend fills it, with distinct values elsewhere so a
    /// shifted offset shows.
    fn sample() -> [u8; CONFIG_LEN] {
        let words: [u32; 12] = [
            1,                                 // status: HW_READY
            1,                                 // max_dataqueues
            1 << 0 | 1 << 1 | 1 << 2 | 1 << 4, // cipher, hash, mac, akcipher
            1 << CIPHER_AES_CBC,               // cipher_algo_l
            1 << (37 - 32),                    // cipher_algo_h: bit 37
            1 << HASH_SHA1,                    // hash_algo
            1 << MAC_HMAC_SHA_256,             // mac_algo_l
            1 << (MAC_GMAC_AES - 32),          // mac_algo_h
            0,                                 // aead_algo
            64,                                // max_cipher_key_len
            512,                               // max_auth_key_len
            1 << AKCIPHER_RSA,                 // akcipher_algo
        ];
        let mut b = [0u8; CONFIG_LEN];
        for (i, w) in words.iter().enumerate() {
            b[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
        }
        b[48..56].copy_from_slice(&0x0123_4567_89ab_cdefu64.to_le_bytes());
        b
    }

    #[test]
    fn parses_every_field_at_its_offset() {
        let c = CryptoConfig::from_bytes(&sample()).unwrap();
        assert!(c.hw_ready());
        assert_eq!(c.max_dataqueues, 1);
        assert_eq!(c.crypto_services, 0b1_0111);
        assert_eq!(c.cipher_algo_l, 1 << 3);
        assert_eq!(c.cipher_algo_h, 1 << 5);
        assert_eq!(c.hash_algo, 1 << 2);
        assert_eq!(c.mac_algo_l, 1 << 4);
        assert_eq!(c.mac_algo_h, 1 << 9);
        assert_eq!(c.aead_algo, 0);
        assert_eq!(c.max_cipher_key_len, 64);
        assert_eq!(c.max_auth_key_len, 512);
        assert_eq!(c.akcipher_algo, 1 << 1);
        assert_eq!(c.max_size, 0x0123_4567_89ab_cdef);
        assert_eq!(c.cipher_mask(), 1 << 3 | 1 << 37);
        assert_eq!(c.mac_mask(), 1 << 4 | 1 << 41);
    }

    #[test]
    fn length_is_checked() {
        let b = sample();
        assert_eq!(CryptoConfig::from_bytes(&b[..CONFIG_LEN - 1]), None);
        let mut long = [0xffu8; CONFIG_LEN + 8];
        long[..CONFIG_LEN].copy_from_slice(&b);
        assert_eq!(
            CryptoConfig::from_bytes(&long),
            CryptoConfig::from_bytes(&b)
        );
        assert!(!CryptoConfig::default().hw_ready());
    }

    #[test]
    fn advertises_needs_service_and_algorithm() {
        let mut c = CryptoConfig::from_bytes(&sample()).unwrap();
        assert!(c.advertises_cipher(CIPHER_AES_CBC));
        assert!(!c.advertises_cipher(CIPHER_AES_ECB));
        assert!(c.advertises_cipher(37));
        assert!(!c.advertises_cipher(64) && !c.advertises_cipher(u32::MAX));
        assert!(c.advertises_hash(HASH_SHA1) && !c.advertises_hash(HASH_SHA_256));
        assert!(c.advertises_mac(MAC_HMAC_SHA_256) && c.advertises_mac(MAC_GMAC_AES));
        assert!(!c.advertises_aead(AEAD_GCM));
        assert!(c.advertises_akcipher(AKCIPHER_RSA));
        c.crypto_services &= !(1 << SERVICE_CIPHER);
        assert!(
            !c.advertises_cipher(CIPHER_AES_CBC),
            "mask without its service bit"
        );
    }

    #[test]
    fn mask_names() {
        assert_eq!(cipher_names(1 << 3).collect::<Vec<_>>(), ["aes-cbc"]);
        assert_eq!(cipher_names(1 << 37).collect::<Vec<_>>(), ["bit37"]);
        assert_eq!(
            cipher_names(1 << 0 | 1 << 63).collect::<Vec<_>>(),
            ["bit0", "bit63"]
        );
        assert_eq!(cipher_names(0).count(), 0);
        assert_eq!(cipher_names(0b1_1100).len(), 3);
        assert_eq!(
            cipher_names(1 << 2 | 1 << 3 | 1 << 4 | 1 << 8 | 1 << 13).collect::<Vec<_>>(),
            ["aes-ecb", "aes-cbc", "aes-ctr", "3des-cbc", "aes-xts"]
        );
        assert_eq!(
            hash_names(1 << 4 | 1 << 13).collect::<Vec<_>>(),
            ["sha256", "bit13"]
        );
        assert_eq!(
            mac_names(1 << 4 | 1 << 41).collect::<Vec<_>>(),
            ["hmac-sha256", "gmac-aes"]
        );
        assert_eq!(
            aead_names(0b1110).collect::<Vec<_>>(),
            ["gcm", "ccm", "chacha20-poly1305"]
        );
        assert_eq!(akcipher_names(0b10).collect::<Vec<_>>(), ["rsa"]);
        assert_eq!(
            service_names(0b11_1111).collect::<Vec<_>>(),
            ["cipher", "hash", "mac", "aead", "akcipher", "bit5"]
        );
    }

    #[test]
    fn mask_display() {
        assert_eq!(
            format!("{}", cipher_names(1 << 3 | 1 << 2)),
            "aes-ecb,aes-cbc"
        );
        assert_eq!(format!("{}", cipher_names(0)), "-");
        assert_eq!(format!("{}", cipher_names(1 << 37)), "bit37");
        let c = CryptoConfig::from_bytes(&sample()).unwrap();
        let line = format!(
            "services={} cipher={} hash={} mac={} aead={} akcipher={}",
            c.services(),
            c.ciphers(),
            c.hashes(),
            c.macs(),
            c.aeads(),
            c.akciphers()
        );
        assert_eq!(
            line,
            "services=cipher,hash,mac,akcipher cipher=aes-cbc,bit37 hash=sha1 \
             mac=hmac-sha256,gmac-aes aead=- akcipher=rsa"
        );
    }
}
