//! RSA keys as the akcipher service takes them: PKCS#1 DER (`RSAPublicKey`, `RSAPrivateKey`),
//! 1024 to 4096 bits, and the hash a signature names. Only a key's public part is kept (for
//! the checks on the device's answers); a private key parsed in software is zeroized on drop.

use alloc::vec;
use alloc::vec::Vec;

use rsa::pkcs1::der::Decode;
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, Pkcs1v15Sign, RsaPublicKey};

use crate::error::Error;
use crate::virtio_crypto::wire;

/// Smallest and largest modulus the driver takes, in bits.
pub const RSA_MIN_BITS: usize = 1024;
pub const RSA_MAX_BITS: usize = 4096;
/// PKCS#1 v1.5 encryption padding: at least 11 bytes of the modulus length.
pub const PKCS1_OVERHEAD: usize = 11;

/// The hash a PKCS#1 v1.5 signature names (its DigestInfo).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RsaHash {
    Sha1,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

impl RsaHash {
    pub const ALL: [RsaHash; 5] = [
        RsaHash::Sha1,
        RsaHash::Sha224,
        RsaHash::Sha256,
        RsaHash::Sha384,
        RsaHash::Sha512,
    ];

    pub fn digest_len(self) -> usize {
        match self {
            RsaHash::Sha1 => 20,
            RsaHash::Sha224 => 28,
            RsaHash::Sha256 => 32,
            RsaHash::Sha384 => 48,
            RsaHash::Sha512 => 64,
        }
    }

    /// The id in `virtio_crypto_rsa_session_para.hash_algo`.
    pub fn wire(self) -> u32 {
        match self {
            RsaHash::Sha1 => wire::RSA_SHA1,
            RsaHash::Sha224 => wire::RSA_SHA224,
            RsaHash::Sha256 => wire::RSA_SHA256,
            RsaHash::Sha384 => wire::RSA_SHA384,
            RsaHash::Sha512 => wire::RSA_SHA512,
        }
    }

    /// The kernel crypto API name of RSA with this hash (`pkcs1pad(rsa,sha256)`).
    pub fn kcapi_name(self) -> &'static str {
        match self {
            RsaHash::Sha1 => "pkcs1pad(rsa,sha1)",
            RsaHash::Sha224 => "pkcs1pad(rsa,sha224)",
            RsaHash::Sha256 => "pkcs1pad(rsa,sha256)",
            RsaHash::Sha384 => "pkcs1pad(rsa,sha384)",
            RsaHash::Sha512 => "pkcs1pad(rsa,sha512)",
        }
    }

    pub fn from_kcapi_name(name: &str) -> Option<RsaHash> {
        RsaHash::ALL.into_iter().find(|h| h.kcapi_name() == name)
    }

    /// QEMU 7.2's builtin backend maps only MD5, SHA-1, SHA-256 and SHA-512 to its RSA
    /// implementation (`cryptodev_builtin_get_rsa_hash_algo`); a session with SHA-224 or SHA-384
    /// fails with ERR ("Unsupported rsa hash algo").
    pub fn device_implements(self) -> bool {
        !matches!(self, RsaHash::Sha224 | RsaHash::Sha384)
    }

    /// The digest of `message` (for callers that have the message rather than its digest).
    pub fn digest(self, message: &[u8]) -> Vec<u8> {
        use sha2::Digest;
        match self {
            RsaHash::Sha1 => sha1::Sha1::digest(message).to_vec(),
            RsaHash::Sha224 => sha2::Sha224::digest(message).to_vec(),
            RsaHash::Sha256 => sha2::Sha256::digest(message).to_vec(),
            RsaHash::Sha384 => sha2::Sha384::digest(message).to_vec(),
            RsaHash::Sha512 => sha2::Sha512::digest(message).to_vec(),
        }
    }

    pub(super) fn scheme(self) -> Pkcs1v15Sign {
        match self {
            RsaHash::Sha1 => Pkcs1v15Sign::new::<sha1::Sha1>(),
            RsaHash::Sha224 => Pkcs1v15Sign::new::<sha2::Sha224>(),
            RsaHash::Sha256 => Pkcs1v15Sign::new::<sha2::Sha256>(),
            RsaHash::Sha384 => Pkcs1v15Sign::new::<sha2::Sha384>(),
            RsaHash::Sha512 => Pkcs1v15Sign::new::<sha2::Sha512>(),
        }
    }
}

/// Which half of the key pair a session holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RsaKeyKind {
    Public,
    Private,
}

impl RsaKeyKind {
    pub(super) fn wire(self) -> u32 {
        match self {
            RsaKeyKind::Public => wire::AKCIPHER_KEY_TYPE_PUBLIC,
            RsaKeyKind::Private => wire::AKCIPHER_KEY_TYPE_PRIVATE,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            RsaKeyKind::Public => "public",
            RsaKeyKind::Private => "private",
        }
    }
}

/// What the driver keeps of a session's key: its kind and public part (for the checks).
#[derive(Clone, Debug)]
pub struct RsaKeyInfo {
    kind: RsaKeyKind,
    public: RsaPublicKey,
    bits: usize,
}

impl RsaKeyInfo {
    /// Parses a PKCS#1 DER key of `kind` and checks it is an RSA key the driver takes. A private
    /// key is checked for consistency (n = pq, e and d inverse), then only its public part kept.
    pub fn parse(kind: RsaKeyKind, der: &[u8]) -> Result<RsaKeyInfo, Error> {
        if der.is_empty() {
            return Err(Error::InvalidKey { what: "empty DER" });
        }
        let public = match kind {
            RsaKeyKind::Public => parse_public(der)?,
            RsaKeyKind::Private => parse_private(der)?,
        };
        let bits = public.n().bits();
        Ok(RsaKeyInfo { kind, public, bits })
    }

    pub fn kind(&self) -> RsaKeyKind {
        self.kind
    }

    pub fn bits(&self) -> usize {
        self.bits
    }

    /// The modulus length in bytes (the length of every signature and ciphertext).
    pub fn modulus_len(&self) -> usize {
        self.public.size()
    }

    pub fn public_key(&self) -> &RsaPublicKey {
        &self.public
    }

    /// Whether `value` (big-endian) is below the modulus.
    pub fn below_modulus(&self, value: &[u8]) -> bool {
        BigUint::from_bytes_be(value) < *self.public.n()
    }

    /// Software PKCS#1 v1.5 verification of `signature` over `digest`.
    pub fn verifies(&self, hash: RsaHash, digest: &[u8], signature: &[u8]) -> bool {
        self.public.verify(hash.scheme(), digest, signature).is_ok()
    }
}

fn check_bits(bits: usize) -> Result<(), Error> {
    if (RSA_MIN_BITS..=RSA_MAX_BITS).contains(&bits) {
        Ok(())
    } else {
        Err(Error::InvalidModulusSize { bits })
    }
}

fn uint(value: rsa::pkcs1::UintRef<'_>) -> BigUint {
    BigUint::from_bytes_be(value.as_bytes())
}

/// Decodes `der` as the PKCS#1 structure of `kind` (`T`), naming a key of the other kind as
/// such.
fn decode<'a, T: Decode<'a>>(kind: RsaKeyKind, der: &'a [u8]) -> Result<T, Error> {
    T::from_der(der).map_err(|_| {
        let other_kind = match kind {
            RsaKeyKind::Public => rsa::pkcs1::RsaPrivateKey::from_der(der).is_ok(),
            RsaKeyKind::Private => rsa::pkcs1::RsaPublicKey::from_der(der).is_ok(),
        };
        let what = match (kind, other_kind) {
            (RsaKeyKind::Public, true) => {
                "a PKCS#1 RSAPrivateKey where an RSAPublicKey was expected"
            }
            (RsaKeyKind::Public, false) => "not a DER PKCS#1 RSAPublicKey",
            (RsaKeyKind::Private, true) => {
                "a PKCS#1 RSAPublicKey where an RSAPrivateKey was expected"
            }
            (RsaKeyKind::Private, false) => "not a DER PKCS#1 RSAPrivateKey",
        };
        Error::InvalidKey { what }
    })
}

fn parse_public(der: &[u8]) -> Result<RsaPublicKey, Error> {
    let key: rsa::pkcs1::RsaPublicKey = decode(RsaKeyKind::Public, der)?;
    let n = uint(key.modulus);
    check_bits(n.bits())?;
    RsaPublicKey::new(n, uint(key.public_exponent)).map_err(|_| Error::InvalidKey {
        what: "public exponent out of range",
    })
}

fn parse_private(der: &[u8]) -> Result<RsaPublicKey, Error> {
    let key: rsa::pkcs1::RsaPrivateKey = decode(RsaKeyKind::Private, der)?;
    if key.other_prime_infos.is_some() {
        return Err(Error::InvalidKey {
            what: "multi-prime RSA keys are not supported",
        });
    }
    let n = uint(key.modulus);
    check_bits(n.bits())?;
    let e = uint(key.public_exponent);
    // Zeroized when dropped (`RsaPrivateKey: ZeroizeOnDrop`).
    let private = rsa::RsaPrivateKey::from_components(
        n,
        e,
        uint(key.private_exponent),
        vec![uint(key.prime1), uint(key.prime2)],
    )
    .map_err(|_| Error::InvalidKey {
        what: "the private key's numbers do not make an RSA key",
    })?;
    private.validate().map_err(|_| Error::InvalidKey {
        what: "the private key's numbers do not make an RSA key",
    })?;
    Ok(private.to_public_key())
}
