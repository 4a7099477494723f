//! Device completion status codes and their mapping onto [`Error`].
//!
//! Invariant: a status the driver does not know is never success; it becomes
//! [`Error::MalformedCompletion`]. Create-session replies carry the status as a le32, destroy
//! and data replies as a single byte; both widen losslessly to [`DeviceStatus`].

use core::fmt;

use super::wire::{
    STATUS_BADMSG, STATUS_ERR, STATUS_INVSESS, STATUS_KEY_REJECTED, STATUS_NOSPC, STATUS_NOTSUPP,
    STATUS_OK,
};
use crate::error::Error;

/// A status code as the device reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceStatus {
    Ok,
    Err,
    BadMsg,
    NotSupp,
    InvSess,
    NoSpc,
    KeyRejected,
    /// Any value the spec revision we implement does not define.
    Unknown(u32),
}

impl DeviceStatus {
    pub const fn from_u32(v: u32) -> Self {
        match v {
            STATUS_OK => Self::Ok,
            STATUS_ERR => Self::Err,
            STATUS_BADMSG => Self::BadMsg,
            STATUS_NOTSUPP => Self::NotSupp,
            STATUS_INVSESS => Self::InvSess,
            STATUS_NOSPC => Self::NoSpc,
            STATUS_KEY_REJECTED => Self::KeyRejected,
            other => Self::Unknown(other),
        }
    }

    /// The numeric code.
    pub const fn code(self) -> u32 {
        match self {
            Self::Ok => STATUS_OK,
            Self::Err => STATUS_ERR,
            Self::BadMsg => STATUS_BADMSG,
            Self::NotSupp => STATUS_NOTSUPP,
            Self::InvSess => STATUS_INVSESS,
            Self::NoSpc => STATUS_NOSPC,
            Self::KeyRejected => STATUS_KEY_REJECTED,
            Self::Unknown(v) => v,
        }
    }
}

impl From<u32> for DeviceStatus {
    fn from(v: u32) -> Self {
        Self::from_u32(v)
    }
}

impl From<u8> for DeviceStatus {
    fn from(v: u8) -> Self {
        Self::from_u32(v as u32)
    }
}

impl fmt::Display for DeviceStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ok => f.write_str("OK"),
            Self::Err => f.write_str("ERR"),
            Self::BadMsg => f.write_str("BADMSG"),
            Self::NotSupp => f.write_str("NOTSUPP"),
            Self::InvSess => f.write_str("INVSESS"),
            Self::NoSpc => f.write_str("NOSPC"),
            Self::KeyRejected => f.write_str("KEY_REJECTED"),
            Self::Unknown(v) => write!(f, "unknown({v})"),
        }
    }
}

/// Which request a status answers; only `ERR` depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    CreateSession,
    DestroySession,
    Data,
}

/// Maps a completion status to the driver's result.
///
/// - `OK` → `Ok(())`.
/// - `INVSESS` → [`Error::UnknownSession`].
/// - `NOTSUPP` → [`Error::NotSupported`]: the device refuses the algorithm or operation.
/// - `KEY_REJECTED`, `BADMSG`, `NOSPC` → [`Error::KeyRejected`], [`Error::BadMessage`],
///   [`Error::NoSpace`]: distinct outcomes the caller may act on.
/// - `ERR` on `DestroySession` → [`Error::UnknownSession`]: QEMU turns every close-session
///   failure into `ERR`, and the only one its builtin backend has is an unknown id (the spec
///   allows only OK or ERR for destroy). On other kinds → [`Error::DeviceError`]; note QEMU 7.2
///   also answers `ERR`, not `NOTSUPP`/`NOSPC`, when create-session fails for a bad key length,
///   an unsupported cipher or a full session table.
/// - anything else → [`Error::MalformedCompletion`], so an undefined code never reads as success.
pub fn status_to_result(status: impl Into<DeviceStatus>, ctx: RequestKind) -> Result<(), Error> {
    match status.into() {
        DeviceStatus::Ok => Ok(()),
        DeviceStatus::InvSess => Err(Error::UnknownSession),
        DeviceStatus::NotSupp => Err(Error::NotSupported {
            what: "algorithm (device answered NOTSUPP)",
        }),
        DeviceStatus::KeyRejected => Err(Error::KeyRejected),
        DeviceStatus::BadMsg => Err(Error::BadMessage),
        DeviceStatus::NoSpc => Err(Error::NoSpace),
        DeviceStatus::Err => match ctx {
            RequestKind::DestroySession => Err(Error::UnknownSession),
            RequestKind::CreateSession | RequestKind::Data => Err(Error::DeviceError),
        },
        DeviceStatus::Unknown(_) => Err(Error::MalformedCompletion {
            what: "unknown status code",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::format;

    const KINDS: [RequestKind; 3] = [
        RequestKind::CreateSession,
        RequestKind::DestroySession,
        RequestKind::Data,
    ];

    #[test]
    fn parse_round_trips() {
        for v in 0..=255u32 {
            let s = DeviceStatus::from_u32(v);
            assert_eq!(s.code(), v);
            assert_eq!(DeviceStatus::from(v as u8), s);
            assert_eq!(matches!(s, DeviceStatus::Unknown(_)), v > 6, "code {v}");
        }
        assert_eq!(
            DeviceStatus::from(u32::MAX),
            DeviceStatus::Unknown(u32::MAX)
        );
        assert_eq!(format!("{}", DeviceStatus::from(6u8)), "KEY_REJECTED");
        assert_eq!(format!("{}", DeviceStatus::from(9u8)), "unknown(9)");
    }

    #[test]
    fn every_code_for_every_kind() {
        let unsupported = Err(Error::NotSupported {
            what: "algorithm (device answered NOTSUPP)",
        });
        let unknown = Err(Error::MalformedCompletion {
            what: "unknown status code",
        });
        for ctx in KINDS {
            let err = if ctx == RequestKind::DestroySession {
                Error::UnknownSession
            } else {
                Error::DeviceError
            };
            let expected: [(u32, Result<(), Error>); 9] = [
                (0, Ok(())),
                (1, Err(err)),
                (2, Err(Error::BadMessage)),
                (3, unsupported),
                (4, Err(Error::UnknownSession)),
                (5, Err(Error::NoSpace)),
                (6, Err(Error::KeyRejected)),
                (7, unknown),
                (255, unknown),
            ];
            for (code, want) in expected {
                assert_eq!(status_to_result(code, ctx), want, "code {code} for {ctx:?}");
                if let Ok(byte) = u8::try_from(code) {
                    assert_eq!(status_to_result(byte, ctx), want, "byte {code} for {ctx:?}");
                }
            }
            assert_eq!(
                status_to_result(0x100u32, ctx),
                unknown,
                "must not truncate to OK"
            );
        }
    }
}
