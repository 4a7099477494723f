//! The driver's run-time switches on the command line, parsed once into one value: the device
//! switches (set on every device), how CPUs share the devices (`queues=`), and whether
//! VIRTIO_RING_F_EVENT_IDX is offered (`event_idx=`, which must be known before the devices are
//! brought up). The first value of each is the default and the design.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::cmdline::{Cmdline, CmdlineError};
use crate::service::QueueMode;
use crate::stream::ChainMode;
use crate::virtio_crypto::device::{CtrlMode, DeviceSwitches};
use crate::virtio_crypto::queue::KickMode;

/// Every driver switch, as the command line set it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Switches {
    pub device: DeviceSwitches,
    /// `queues=percpu|shared`.
    pub queues: QueueMode,
    /// `event_idx=on|off`.
    pub event_idx: bool,
}

impl Default for Switches {
    fn default() -> Self {
        Switches {
            device: DeviceSwitches::default(),
            queues: QueueMode::PerCpu,
            event_idx: true,
        }
    }
}

const CTRL: &[(&str, CtrlMode)] = &[("sleep", CtrlMode::Sleep), ("poll", CtrlMode::Poll)];
const KICK: &[(&str, KickMode)] = &[
    ("unlocked", KickMode::Unlocked),
    ("locked", KickMode::Locked),
];
const CHAIN: &[(&str, ChainMode)] = &[
    ("pipelined", ChainMode::Pipelined),
    ("serial", ChainMode::Serial),
];
const UNADVERTISED: &[(&str, bool)] = &[("refuse", false), ("try", true)];
const QUEUES: &[(&str, QueueMode)] =
    &[("percpu", QueueMode::PerCpu), ("shared", QueueMode::Shared)];
const ON_OFF: &[(&str, bool)] = &[("on", true), ("off", false)];

impl Switches {
    /// Reads every driver switch from `cmdline`; one with a value it does not take is an error
    /// naming the values it takes.
    pub fn from_cmdline(cmdline: &Cmdline) -> Result<Self, CmdlineError> {
        Ok(Switches {
            device: DeviceSwitches {
                ctrl: choose(cmdline, "ctrl", CTRL)?,
                kick: choose(cmdline, "kick", KICK)?,
                chain: choose(cmdline, "chain", CHAIN)?,
                unadvertised: choose(cmdline, "unadvertised", UNADVERTISED)?,
                reap: choose(cmdline, "reap", ON_OFF)?,
            },
            queues: choose(cmdline, "queues", QUEUES)?,
            event_idx: choose(cmdline, "event_idx", ON_OFF)?,
        })
    }

    /// Every switch as `key=value`, spelled as the command line takes it.
    pub fn words(&self) -> Vec<String> {
        let d = &self.device;
        [
            ("ctrl", name(CTRL, d.ctrl)),
            ("kick", name(KICK, d.kick)),
            ("chain", name(CHAIN, d.chain)),
            ("unadvertised", name(UNADVERTISED, d.unadvertised)),
            ("reap", name(ON_OFF, d.reap)),
            ("queues", name(QUEUES, self.queues)),
            ("event_idx", name(ON_OFF, self.event_idx)),
        ]
        .into_iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect()
    }

    /// Whether any switch differs from its default (the design).
    pub fn changed(&self) -> bool {
        *self != Switches::default()
    }
}

/// The value of switch `key` among `choices` (the first when the switch is absent).
fn choose<T: Copy>(
    cmdline: &Cmdline,
    key: &'static str,
    choices: &[(&'static str, T)],
) -> Result<T, CmdlineError> {
    let Some(value) = cmdline.switch(key) else {
        return Ok(choices[0].1);
    };
    choices
        .iter()
        .find(|(name, _)| *name == value)
        .map(|(_, choice)| *choice)
        .ok_or_else(|| CmdlineError::BadValue {
            key,
            value: String::from(value),
            choices: choices.iter().map(|(name, _)| *name).collect(),
        })
}

fn name<T: Copy + PartialEq>(choices: &[(&'static str, T)], value: T) -> &'static str {
    choices
        .iter()
        .find(|(_, choice)| *choice == value)
        .map_or("?", |(name, _)| name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

    fn parse(line: &str) -> Result<Switches, CmdlineError> {
        Switches::from_cmdline(&Cmdline::parse(line.as_bytes()).unwrap())
    }

    #[test]
    fn no_switch_is_the_default_and_nothing_changed() {
        let switches = parse("bench data").unwrap();
        assert_eq!(switches, Switches::default());
        assert!(!switches.changed());
        assert_eq!(switches.device.ctrl, CtrlMode::Sleep);
        assert!(switches.device.reap && switches.event_idx);
    }

    #[test]
    fn every_switch_is_read_once_into_one_value() {
        let switches = parse(
            "ctrl=poll kick=locked chain=serial unadvertised=try reap=off queues=shared event_idx=off",
        )
        .unwrap();
        assert_eq!(
            switches,
            Switches {
                device: DeviceSwitches {
                    ctrl: CtrlMode::Poll,
                    kick: KickMode::Locked,
                    chain: ChainMode::Serial,
                    unadvertised: true,
                    reap: false,
                },
                queues: QueueMode::Shared,
                event_idx: false,
            }
        );
        assert!(switches.changed());
        assert_eq!(
            switches.words(),
            vec![
                "ctrl=poll",
                "kick=locked",
                "chain=serial",
                "unadvertised=try",
                "reap=off",
                "queues=shared",
                "event_idx=off"
            ]
        );
        // Each word parses back to the same value.
        assert_eq!(parse(&switches.words().join(" ")).unwrap(), switches);
    }

    #[test]
    fn a_value_a_switch_does_not_take_names_the_ones_it_does() {
        let error = parse("event_idx=maybe").unwrap_err();
        assert_eq!(
            error.to_string(),
            "event_idx=maybe: expected event_idx=on or event_idx=off"
        );
        let error = parse("reap=sometimes").unwrap_err();
        assert_eq!(
            error.to_string(),
            "reap=sometimes: expected reap=on or reap=off"
        );
    }
}
