//! virtio-crypto wire format: constants and byte-exact request builders.
//!
//! Sources: virtio spec §5.9 ("Crypto Device"), Linux `include/uapi/linux/virtio_crypto.h` and
//! QEMU's copy in `include/standard-headers/linux/`. Where they disagree the QEMU header wins,
//! because QEMU is the device we drive (see `AKCIPHER_*`).
//!
//! Invariants:
//! - `VIRTIO_CRYPTO_F_REVISION_1` is never negotiated, so every control request is the legacy
//!   [`CTRL_REQ_LEN`] = 72 bytes (16-byte header + 56-byte union) and every data request header
//!   is [`DATA_HDR_LEN`] = 72 bytes (24-byte header + 48-byte union). QEMU reads exactly these
//!   sizes whatever the features.
//! - Every request header is a `#[repr(C)]` [`zerocopy`] struct of little-endian fields whose
//!   size is checked at compile time; every padding byte is an explicit zeroed field, so no stale
//!   memory reaches the device.
//! - Data request descriptor order: device-readable `header(72), iv, src`, then
//!   device-writable `dst, status(1)`. The device writes the status into the last byte of the
//!   last writable buffer and requires `src_len == dst_len` for ciphers.

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Service numbers: bit positions in `crypto_services` and the high byte of every opcode.
pub const SERVICE_CIPHER: u32 = 0;
pub const SERVICE_HASH: u32 = 1;
pub const SERVICE_MAC: u32 = 2;
pub const SERVICE_AEAD: u32 = 3;
pub const SERVICE_AKCIPHER: u32 = 4;

/// `VIRTIO_CRYPTO_OPCODE(service, op)`.
pub const fn opcode(service: u32, op: u32) -> u32 {
    (service << 8) | op
}

// Control queue opcodes.
pub const CIPHER_CREATE_SESSION: u32 = opcode(SERVICE_CIPHER, 0x02);
pub const CIPHER_DESTROY_SESSION: u32 = opcode(SERVICE_CIPHER, 0x03);
pub const HASH_CREATE_SESSION: u32 = opcode(SERVICE_HASH, 0x02);
pub const HASH_DESTROY_SESSION: u32 = opcode(SERVICE_HASH, 0x03);
pub const MAC_CREATE_SESSION: u32 = opcode(SERVICE_MAC, 0x02);
pub const MAC_DESTROY_SESSION: u32 = opcode(SERVICE_MAC, 0x03);
pub const AEAD_CREATE_SESSION: u32 = opcode(SERVICE_AEAD, 0x02);
pub const AEAD_DESTROY_SESSION: u32 = opcode(SERVICE_AEAD, 0x03);
/// Note: akcipher uses 0x04/0x05, not 0x02/0x03 like the other services.
pub const AKCIPHER_CREATE_SESSION: u32 = opcode(SERVICE_AKCIPHER, 0x04);
pub const AKCIPHER_DESTROY_SESSION: u32 = opcode(SERVICE_AKCIPHER, 0x05);

// Data queue opcodes.
pub const CIPHER_ENCRYPT: u32 = opcode(SERVICE_CIPHER, 0x00);
pub const CIPHER_DECRYPT: u32 = opcode(SERVICE_CIPHER, 0x01);
pub const HASH: u32 = opcode(SERVICE_HASH, 0x00);
pub const MAC: u32 = opcode(SERVICE_MAC, 0x00);
pub const AEAD_ENCRYPT: u32 = opcode(SERVICE_AEAD, 0x00);
pub const AEAD_DECRYPT: u32 = opcode(SERVICE_AEAD, 0x01);
pub const AKCIPHER_ENCRYPT: u32 = opcode(SERVICE_AKCIPHER, 0x00);
pub const AKCIPHER_DECRYPT: u32 = opcode(SERVICE_AKCIPHER, 0x01);
pub const AKCIPHER_SIGN: u32 = opcode(SERVICE_AKCIPHER, 0x02);
pub const AKCIPHER_VERIFY: u32 = opcode(SERVICE_AKCIPHER, 0x03);

/// Session direction (`cipher_session_para.op`).
pub const OP_ENCRYPT: u32 = 1;
pub const OP_DECRYPT: u32 = 2;

/// Symmetric operation type (`op_type` in the create-session and data bodies).
pub const SYM_OP_NONE: u32 = 0;
pub const SYM_OP_CIPHER: u32 = 1;
pub const SYM_OP_ALGORITHM_CHAINING: u32 = 2;

/// Completion status codes (le32 in the session input, u8 in every `inhdr`).
pub const STATUS_OK: u32 = 0;
pub const STATUS_ERR: u32 = 1;
pub const STATUS_BADMSG: u32 = 2;
pub const STATUS_NOTSUPP: u32 = 3;
pub const STATUS_INVSESS: u32 = 4;
pub const STATUS_NOSPC: u32 = 5;
pub const STATUS_KEY_REJECTED: u32 = 6;

/// `VIRTIO_CRYPTO_S_HW_READY`, the only defined bit of the config `status` field.
pub const S_HW_READY: u32 = 1 << 0;

/// Control request header (`virtio_crypto_ctrl_header`).
pub const CTRL_HDR_LEN: usize = 16;
/// Whole legacy control request: header + 56-byte union.
pub const CTRL_REQ_LEN: usize = 72;
/// Data request header (`virtio_crypto_op_header`).
pub const OP_HDR_LEN: usize = 24;
/// Whole legacy data request header: op header + 48-byte union.
pub const DATA_HDR_LEN: usize = 72;
/// Device-writable reply to a create-session request (`virtio_crypto_session_input`).
pub const SESSION_INPUT_LEN: usize = 16;
/// Device-writable status byte of destroy-session and data requests (`virtio_crypto_inhdr`).
pub const INHDR_LEN: usize = 1;

// Algorithm ids, named as in the C headers. Id N is also bit N of the family's mask in the
// device configuration (64 bits wide for cipher and MAC, 32 for the others).

pub const NO_CIPHER: u32 = 0;
pub const CIPHER_ARC4: u32 = 1;
pub const CIPHER_AES_ECB: u32 = 2;
pub const CIPHER_AES_CBC: u32 = 3;
pub const CIPHER_AES_CTR: u32 = 4;
pub const CIPHER_DES_ECB: u32 = 5;
pub const CIPHER_DES_CBC: u32 = 6;
pub const CIPHER_3DES_ECB: u32 = 7;
pub const CIPHER_3DES_CBC: u32 = 8;
pub const CIPHER_3DES_CTR: u32 = 9;
pub const CIPHER_KASUMI_F8: u32 = 10;
pub const CIPHER_SNOW3G_UEA2: u32 = 11;
pub const CIPHER_AES_F8: u32 = 12;
pub const CIPHER_AES_XTS: u32 = 13;
pub const CIPHER_ZUC_EEA3: u32 = 14;

pub const NO_HASH: u32 = 0;
pub const HASH_MD5: u32 = 1;
pub const HASH_SHA1: u32 = 2;
pub const HASH_SHA_224: u32 = 3;
pub const HASH_SHA_256: u32 = 4;
pub const HASH_SHA_384: u32 = 5;
pub const HASH_SHA_512: u32 = 6;
pub const HASH_SHA3_224: u32 = 7;
pub const HASH_SHA3_256: u32 = 8;
pub const HASH_SHA3_384: u32 = 9;
pub const HASH_SHA3_512: u32 = 10;
pub const HASH_SHA3_SHAKE128: u32 = 11;
pub const HASH_SHA3_SHAKE256: u32 = 12;

pub const NO_MAC: u32 = 0;
pub const MAC_HMAC_MD5: u32 = 1;
pub const MAC_HMAC_SHA1: u32 = 2;
pub const MAC_HMAC_SHA_224: u32 = 3;
pub const MAC_HMAC_SHA_256: u32 = 4;
pub const MAC_HMAC_SHA_384: u32 = 5;
pub const MAC_HMAC_SHA_512: u32 = 6;
pub const MAC_CMAC_3DES: u32 = 25;
pub const MAC_CMAC_AES: u32 = 26;
pub const MAC_KASUMI_F9: u32 = 27;
pub const MAC_SNOW3G_UIA2: u32 = 28;
pub const MAC_GMAC_AES: u32 = 41;
pub const MAC_GMAC_TWOFISH: u32 = 42;
pub const MAC_CBCMAC_AES: u32 = 49;
pub const MAC_CBCMAC_KASUMI_F9: u32 = 50;
pub const MAC_XCBC_AES: u32 = 53;
/// In the virtio spec only; the Linux and QEMU headers stop at 53.
pub const MAC_ZUC_EIA3: u32 = 54;

pub const NO_AEAD: u32 = 0;
pub const AEAD_GCM: u32 = 1;
pub const AEAD_CCM: u32 = 2;
pub const AEAD_CHACHA20_POLY1305: u32 = 3;

// The Linux/QEMU headers define DSA = 2 and ECDSA = 3; the virtio spec text defines ECDSA = 2
// and no DSA. We follow the headers (QEMU is the device); QEMU's builtin backend advertises
// only RSA, where all sources agree.
pub const NO_AKCIPHER: u32 = 0;
pub const AKCIPHER_RSA: u32 = 1;
pub const AKCIPHER_DSA: u32 = 2;
pub const AKCIPHER_ECDSA: u32 = 3;

/// Display name of a cipher id (`None` for `NO_CIPHER` and undefined ids).
pub const fn cipher_name(id: u32) -> Option<&'static str> {
    Some(match id {
        CIPHER_ARC4 => "arc4",
        CIPHER_AES_ECB => "aes-ecb",
        CIPHER_AES_CBC => "aes-cbc",
        CIPHER_AES_CTR => "aes-ctr",
        CIPHER_DES_ECB => "des-ecb",
        CIPHER_DES_CBC => "des-cbc",
        CIPHER_3DES_ECB => "3des-ecb",
        CIPHER_3DES_CBC => "3des-cbc",
        CIPHER_3DES_CTR => "3des-ctr",
        CIPHER_KASUMI_F8 => "kasumi-f8",
        CIPHER_SNOW3G_UEA2 => "snow3g-uea2",
        CIPHER_AES_F8 => "aes-f8",
        CIPHER_AES_XTS => "aes-xts",
        CIPHER_ZUC_EEA3 => "zuc-eea3",
        _ => return None,
    })
}

/// Display name of a hash id (`None` for `NO_HASH` and undefined ids).
pub const fn hash_name(id: u32) -> Option<&'static str> {
    Some(match id {
        HASH_MD5 => "md5",
        HASH_SHA1 => "sha1",
        HASH_SHA_224 => "sha224",
        HASH_SHA_256 => "sha256",
        HASH_SHA_384 => "sha384",
        HASH_SHA_512 => "sha512",
        HASH_SHA3_224 => "sha3-224",
        HASH_SHA3_256 => "sha3-256",
        HASH_SHA3_384 => "sha3-384",
        HASH_SHA3_512 => "sha3-512",
        HASH_SHA3_SHAKE128 => "shake128",
        HASH_SHA3_SHAKE256 => "shake256",
        _ => return None,
    })
}

/// Display name of a MAC id (`None` for `NO_MAC` and undefined ids).
pub const fn mac_name(id: u32) -> Option<&'static str> {
    Some(match id {
        MAC_HMAC_MD5 => "hmac-md5",
        MAC_HMAC_SHA1 => "hmac-sha1",
        MAC_HMAC_SHA_224 => "hmac-sha224",
        MAC_HMAC_SHA_256 => "hmac-sha256",
        MAC_HMAC_SHA_384 => "hmac-sha384",
        MAC_HMAC_SHA_512 => "hmac-sha512",
        MAC_CMAC_3DES => "cmac-3des",
        MAC_CMAC_AES => "cmac-aes",
        MAC_KASUMI_F9 => "kasumi-f9",
        MAC_SNOW3G_UIA2 => "snow3g-uia2",
        MAC_GMAC_AES => "gmac-aes",
        MAC_GMAC_TWOFISH => "gmac-twofish",
        MAC_CBCMAC_AES => "cbcmac-aes",
        MAC_CBCMAC_KASUMI_F9 => "cbcmac-kasumi-f9",
        MAC_XCBC_AES => "xcbc-aes",
        MAC_ZUC_EIA3 => "zuc-eia3",
        _ => return None,
    })
}

/// Display name of an AEAD id (`None` for `NO_AEAD` and undefined ids).
pub const fn aead_name(id: u32) -> Option<&'static str> {
    Some(match id {
        AEAD_GCM => "gcm",
        AEAD_CCM => "ccm",
        AEAD_CHACHA20_POLY1305 => "chacha20-poly1305",
        _ => return None,
    })
}

/// Display name of an akcipher id (`None` for `NO_AKCIPHER` and undefined ids).
pub const fn akcipher_name(id: u32) -> Option<&'static str> {
    Some(match id {
        AKCIPHER_RSA => "rsa",
        AKCIPHER_DSA => "dsa",
        AKCIPHER_ECDSA => "ecdsa",
        _ => return None,
    })
}

/// Control request header (`virtio_crypto_ctrl_header`): `opcode`, `algo` (the Linux driver
/// duplicates the body's algorithm here; QEMU reads it from the body), `flag` = 0 and
/// `queue_id` = 0 (reserved; QEMU's builtin backend has one data queue and ignores it).
#[derive(IntoBytes, FromBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct CtrlHeader {
    pub opcode: U32,
    pub algo: U32,
    pub flag: U32,
    pub queue_id: U32,
}

/// `virtio_crypto_cipher_session_para`.
#[derive(IntoBytes, FromBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct CipherSessionPara {
    /// A cipher id (`CIPHER_*`).
    pub algo: U32,
    /// Length in bytes of the key buffer that follows the request.
    pub key_len: U32,
    /// [`OP_ENCRYPT`] or [`OP_DECRYPT`].
    pub op: U32,
    pub padding: U32,
}

/// `VIRTIO_CRYPTO_CIPHER_CREATE_SESSION` for a plain cipher (`op_type = SYM_OP_CIPHER`): the
/// legacy 72-byte request. The key follows in the device-readable part; the reply is a
/// [`SessionInput`].
#[derive(IntoBytes, FromBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct CipherCreateSession {
    pub header: CtrlHeader,
    pub para: CipherSessionPara,
    /// The rest of `virtio_crypto_cipher_session_para`'s 48-byte slot in the sym union.
    pub padding: [u8; 32],
    pub op_type: U32,
    pub padding2: U32,
}

impl CipherCreateSession {
    pub fn new(algo: u32, key_len: u32, op: u32) -> Self {
        CipherCreateSession {
            header: CtrlHeader {
                opcode: CIPHER_CREATE_SESSION.into(),
                algo: algo.into(),
                ..CtrlHeader::default()
            },
            para: CipherSessionPara {
                algo: algo.into(),
                key_len: key_len.into(),
                op: op.into(),
                padding: U32::ZERO,
            },
            padding: [0; 32],
            op_type: SYM_OP_CIPHER.into(),
            padding2: U32::ZERO,
        }
    }
}

/// A destroy-session request: header (algo 0) | `session_id` | zero padding. The reply is one
/// [`INHDR_LEN`] status byte.
#[derive(IntoBytes, FromBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct DestroySession {
    pub header: CtrlHeader,
    pub session_id: U64,
    pub padding: [u8; 48],
}

impl DestroySession {
    /// `opcode` is one of the `*_DESTROY_SESSION` opcodes, matching the session's service.
    pub fn new(opcode: u32, session_id: u64) -> Self {
        DestroySession {
            header: CtrlHeader {
                opcode: opcode.into(),
                ..CtrlHeader::default()
            },
            session_id: session_id.into(),
            padding: [0; 48],
        }
    }

    /// Destroys a cipher session.
    pub fn cipher(session_id: u64) -> Self {
        Self::new(CIPHER_DESTROY_SESSION, session_id)
    }
}

/// Data request header (`virtio_crypto_op_header`). `flag` is ignored without REVISION_1.
#[derive(IntoBytes, FromBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct OpHeader {
    pub opcode: U32,
    pub algo: U32,
    pub session_id: U64,
    pub flag: U32,
    pub padding: U32,
}

/// The 72-byte header of a session-mode cipher data request (`op_type = SYM_OP_CIPHER`).
#[derive(IntoBytes, FromBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct CipherDataHeader {
    pub header: OpHeader,
    pub iv_len: U32,
    pub src_len: U32,
    /// Must equal `src_len`: QEMU flags the device broken (needs reset) otherwise.
    pub dst_len: U32,
    /// The rest of `virtio_crypto_cipher_para`'s 40-byte slot in the sym union.
    pub padding: [u8; 28],
    pub op_type: U32,
    pub padding2: U32,
}

impl CipherDataHeader {
    /// `opcode` is [`CIPHER_ENCRYPT`] or [`CIPHER_DECRYPT`] (QEMU takes the direction from the
    /// session); `algo` a cipher id.
    pub fn new(opcode: u32, algo: u32, session_id: u64, iv_len: u32, len: u32) -> Self {
        CipherDataHeader {
            header: OpHeader {
                opcode: opcode.into(),
                algo: algo.into(),
                session_id: session_id.into(),
                ..OpHeader::default()
            },
            iv_len: iv_len.into(),
            src_len: len.into(),
            dst_len: len.into(),
            padding: [0; 28],
            op_type: SYM_OP_CIPHER.into(),
            padding2: U32::ZERO,
        }
    }
}

/// `virtio_crypto_rsa_session_para.padding_algo`.
pub const RSA_RAW_PADDING: u32 = 0;
pub const RSA_PKCS1_PADDING: u32 = 1;

/// `virtio_crypto_rsa_session_para.hash_algo`: its own numbering, not the `HASH_*` ids.
pub const RSA_NO_HASH: u32 = 0;
pub const RSA_MD2: u32 = 1;
pub const RSA_MD3: u32 = 2;
pub const RSA_MD4: u32 = 3;
pub const RSA_MD5: u32 = 4;
pub const RSA_SHA1: u32 = 5;
pub const RSA_SHA256: u32 = 6;
pub const RSA_SHA384: u32 = 7;
pub const RSA_SHA512: u32 = 8;
pub const RSA_SHA224: u32 = 9;

/// `virtio_crypto_akcipher_session_para.keytype`.
pub const AKCIPHER_KEY_TYPE_PUBLIC: u32 = 1;
pub const AKCIPHER_KEY_TYPE_PRIVATE: u32 = 2;

/// `VIRTIO_CRYPTO_AKCIPHER_CREATE_SESSION` for RSA (`virtio_crypto_akcipher_session_para` with
/// the RSA member of its union, then the request's own padding): the legacy 72-byte request.
/// The key (PKCS#1 DER, `keylen` bytes) follows in the device-readable part; the reply is a
/// [`SessionInput`].
#[derive(IntoBytes, FromBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct AkcipherCreateSession {
    pub header: CtrlHeader,
    /// An akcipher id ([`AKCIPHER_RSA`]).
    pub algo: U32,
    /// [`AKCIPHER_KEY_TYPE_PUBLIC`] or [`AKCIPHER_KEY_TYPE_PRIVATE`].
    pub keytype: U32,
    /// Length in bytes of the key that follows the request.
    pub keylen: U32,
    /// `virtio_crypto_rsa_session_para.padding_algo` (`RSA_*_PADDING`).
    pub padding_algo: U32,
    /// `virtio_crypto_rsa_session_para.hash_algo` (`RSA_SHA*`).
    pub hash_algo: U32,
    /// `virtio_crypto_akcipher_create_session_req.padding` (the union's 56 bytes less 20).
    pub padding: [u8; 36],
}

impl AkcipherCreateSession {
    pub fn rsa(keytype: u32, keylen: u32, padding_algo: u32, hash_algo: u32) -> Self {
        AkcipherCreateSession {
            header: CtrlHeader {
                opcode: AKCIPHER_CREATE_SESSION.into(),
                algo: AKCIPHER_RSA.into(),
                ..CtrlHeader::default()
            },
            algo: AKCIPHER_RSA.into(),
            keytype: keytype.into(),
            keylen: keylen.into(),
            padding_algo: padding_algo.into(),
            hash_algo: hash_algo.into(),
            padding: [0; 36],
        }
    }
}

/// The 72-byte header of an akcipher data request (`virtio_crypto_akcipher_data_req`).
/// Device-readable: `header | src (src_data_len)`, and for VERIFY also `dst (dst_data_len)`
/// (the digest); device-writable: `dst (dst_data_len)` except for VERIFY, then the status byte.
/// The device reports the output length as used length - 1.
#[derive(IntoBytes, FromBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct AkcipherDataHeader {
    pub header: OpHeader,
    pub src_data_len: U32,
    pub dst_data_len: U32,
    pub padding: [u8; 40],
}

impl AkcipherDataHeader {
    /// `opcode` is one of `AKCIPHER_{ENCRYPT,DECRYPT,SIGN,VERIFY}`.
    pub fn new(opcode: u32, session_id: u64, src_len: u32, dst_len: u32) -> Self {
        AkcipherDataHeader {
            header: OpHeader {
                opcode: opcode.into(),
                algo: AKCIPHER_RSA.into(),
                session_id: session_id.into(),
                ..OpHeader::default()
            },
            src_data_len: src_len.into(),
            dst_data_len: dst_len.into(),
            padding: [0; 40],
        }
    }
}

/// The device's reply to a create-session request (`virtio_crypto_session_input`).
/// `session_id` is meaningful only when `status` is [`STATUS_OK`].
#[derive(IntoBytes, FromBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct SessionInput {
    pub session_id: U64,
    pub status: U32,
    pub padding: U32,
}

impl SessionInput {
    /// Returns `(session_id, status)`.
    pub fn parse(b: &[u8; SESSION_INPUT_LEN]) -> (u64, u32) {
        let input = SessionInput::read_from_bytes(b).unwrap_or_default();
        (input.session_id.get(), input.status.get())
    }
}

// The sizes QEMU reads, checked when compiling.
const _: () = {
    use core::mem::size_of;
    assert!(size_of::<CtrlHeader>() == CTRL_HDR_LEN);
    assert!(size_of::<CipherCreateSession>() == CTRL_REQ_LEN);
    assert!(size_of::<DestroySession>() == CTRL_REQ_LEN);
    assert!(size_of::<OpHeader>() == OP_HDR_LEN);
    assert!(size_of::<CipherDataHeader>() == DATA_HDR_LEN);
    assert!(size_of::<SessionInput>() == SESSION_INPUT_LEN);
    assert!(size_of::<AkcipherCreateSession>() == CTRL_REQ_LEN);
    assert!(size_of::<AkcipherDataHeader>() == DATA_HDR_LEN);
    assert!(core::mem::offset_of!(CipherCreateSession, op_type) == CTRL_HDR_LEN + 48);
    assert!(core::mem::offset_of!(CipherDataHeader, op_type) == OP_HDR_LEN + 40);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_sizes_are_the_legacy_layout() {
        use core::mem::size_of;
        assert_eq!(size_of::<CipherCreateSession>(), 72);
        assert_eq!(size_of::<DestroySession>(), 72);
        assert_eq!(size_of::<CipherDataHeader>(), 72);
        assert_eq!(size_of::<SessionInput>(), 16);
        assert_eq!(
            core::mem::align_of::<CipherDataHeader>(),
            1,
            "unaligned: any offset in a slot"
        );
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    /// Asserts every byte outside the `(offset, len)` fields is zero.
    fn assert_zero_outside(b: &[u8], fields: &[(usize, usize)]) {
        for (i, &byte) in b.iter().enumerate() {
            let in_field = fields.iter().any(|&(o, l)| (o..o + l).contains(&i));
            if !in_field {
                assert_eq!(byte, 0, "padding byte {i} is {byte:#x}");
            }
        }
    }

    #[test]
    fn numbers_match_the_headers() {
        assert_eq!(CIPHER_CREATE_SESSION, 0x02);
        assert_eq!(CIPHER_DESTROY_SESSION, 0x03);
        assert_eq!(HASH_CREATE_SESSION, 0x102);
        assert_eq!(MAC_DESTROY_SESSION, 0x203);
        assert_eq!(AEAD_CREATE_SESSION, 0x302);
        assert_eq!(AKCIPHER_CREATE_SESSION, 0x404);
        assert_eq!(AKCIPHER_DESTROY_SESSION, 0x405);
        assert_eq!((CIPHER_ENCRYPT, CIPHER_DECRYPT), (0x000, 0x001));
        assert_eq!(
            (HASH, MAC, AEAD_ENCRYPT, AEAD_DECRYPT),
            (0x100, 0x200, 0x300, 0x301)
        );
        assert_eq!(AKCIPHER_VERIFY, 0x403);
        assert_eq!((CIPHER_AES_ECB, CIPHER_AES_CBC, CIPHER_AES_CTR), (2, 3, 4));
        assert_eq!(
            (CIPHER_3DES_CBC, CIPHER_AES_XTS, CIPHER_ZUC_EEA3),
            (8, 13, 14)
        );
        assert_eq!((HASH_SHA1, HASH_SHA_256, HASH_SHA3_SHAKE256), (2, 4, 12));
        assert_eq!(
            (MAC_HMAC_SHA_256, MAC_CMAC_AES, MAC_GMAC_AES, MAC_XCBC_AES),
            (4, 26, 41, 53)
        );
        assert_eq!((AEAD_GCM, AEAD_CHACHA20_POLY1305, AKCIPHER_RSA), (1, 3, 1));
        assert_eq!(
            (STATUS_INVSESS, STATUS_NOSPC, STATUS_KEY_REJECTED),
            (4, 5, 6)
        );
        assert_eq!(CTRL_HDR_LEN + 56, CTRL_REQ_LEN);
        assert_eq!(OP_HDR_LEN + 48, DATA_HDR_LEN);
    }

    #[test]
    fn create_session_offsets() {
        let req = CipherCreateSession::new(CIPHER_AES_CBC, 32, OP_DECRYPT);
        let b = req.as_bytes();
        assert_eq!(b.len(), 72);
        assert_eq!(u32_at(b, 0), CIPHER_CREATE_SESSION);
        assert_eq!(u32_at(b, 4), CIPHER_AES_CBC);
        assert_eq!(u32_at(b, 8), 0, "flag");
        assert_eq!(u32_at(b, 12), 0, "queue_id");
        assert_eq!(u32_at(b, 16), CIPHER_AES_CBC);
        assert_eq!(u32_at(b, 20), 32);
        assert_eq!(u32_at(b, 24), OP_DECRYPT);
        assert_eq!(u32_at(b, 64), SYM_OP_CIPHER);
    }

    #[test]
    fn create_session_padding_is_zero() {
        let req = CipherCreateSession::new(u32::MAX, u32::MAX, u32::MAX);
        let b = req.as_bytes();
        let fields = [(0, 4), (4, 4), (16, 4), (20, 4), (24, 4), (64, 4)];
        assert_zero_outside(b, &fields);
        for (o, _) in &fields[1..5] {
            assert_eq!(u32_at(b, *o), u32::MAX, "field at {o}");
        }
        assert_eq!(u32_at(b, 64), 1);
    }

    #[test]
    fn destroy_session_layout() {
        let req = DestroySession::cipher(0x0102_0304_0506_0708);
        let b = req.as_bytes();
        assert_eq!(u32_at(b, 0), CIPHER_DESTROY_SESSION);
        assert_eq!(u64_at(b, 16), 0x0102_0304_0506_0708);
        assert_eq!(b[16], 0x08, "little endian");
        let req = DestroySession::new(u32::MAX, u64::MAX);
        let b = req.as_bytes();
        assert_zero_outside(b, &[(0, 4), (16, 8)]);
        assert_eq!(u64_at(b, 16), u64::MAX);
    }

    #[test]
    fn data_header_offsets() {
        let h = CipherDataHeader::new(
            CIPHER_DECRYPT,
            CIPHER_AES_CTR,
            0xdead_beef_0000_0007,
            16,
            4096,
        );
        let b = h.as_bytes();
        assert_eq!(b.len(), 72);
        assert_eq!(u32_at(b, 0), CIPHER_DECRYPT);
        assert_eq!(u32_at(b, 4), CIPHER_AES_CTR);
        assert_eq!(u64_at(b, 8), 0xdead_beef_0000_0007);
        assert_eq!(u32_at(b, 16), 0, "flag");
        assert_eq!(u32_at(b, 24), 16);
        assert_eq!(u32_at(b, 28), 4096);
        assert_eq!(u32_at(b, 32), 4096);
        assert_eq!(u32_at(b, 64), SYM_OP_CIPHER);
    }

    #[test]
    fn data_header_padding_is_zero() {
        let h = CipherDataHeader::new(u32::MAX, u32::MAX, u64::MAX, u32::MAX, u32::MAX);
        let b = h.as_bytes();
        assert_zero_outside(
            b,
            &[(0, 4), (4, 4), (8, 8), (24, 4), (28, 4), (32, 4), (64, 4)],
        );
        assert_eq!(u64_at(b, 8), u64::MAX);
        assert_eq!(
            (u32_at(b, 24), u32_at(b, 28), u32_at(b, 32)),
            (u32::MAX, u32::MAX, u32::MAX)
        );
    }

    #[test]
    fn session_input_parse() {
        let mut b = [0xffu8; SESSION_INPUT_LEN];
        b[..8].copy_from_slice(&42u64.to_le_bytes());
        b[8..12].copy_from_slice(&STATUS_NOTSUPP.to_le_bytes());
        assert_eq!(
            SessionInput::parse(&b),
            (42, STATUS_NOTSUPP),
            "padding bytes are ignored"
        );
        let b = [1, 0, 0, 0, 0, 0, 0, 0x80, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(SessionInput::parse(&b), (0x8000_0000_0000_0001, STATUS_OK));
    }
}
