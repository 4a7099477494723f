//! Serial console on COM1 and the `log` back end (levels chosen on the command line with
//! `log=error|warn|info|debug|trace`).

use core::fmt::{self, Write};

use uart_16550::backend::PioBackend;
use uart_16550::{Config, Uart16550};
use vcrypt_drivers::sync::IrqSpinLock;

const COM1: u16 = 0x3f8;

static SERIAL: IrqSpinLock<Option<Uart16550<PioBackend>>> = IrqSpinLock::new("serial", None);

struct SerialWriter<'a>(&'a mut Uart16550<PioBackend>);

impl Write for SerialWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.send_bytes_exact(s.as_bytes());
        Ok(())
    }
}

/// Initialises COM1. Before this, output is dropped.
pub fn init() {
    // SAFETY: COM1's eight ports belong to the console and nothing else touches them.
    let Ok(mut uart) = (unsafe { Uart16550::new_port(COM1) }) else {
        return;
    };
    if uart.init(Config::default()).is_ok() {
        *SERIAL.lock() = Some(uart);
    }
    log::set_logger(&LOGGER).ok();
    log::set_max_level(log::LevelFilter::Info);
}

/// Writes formatted text to the console (one lock hold, so lines from several CPUs do not mix).
pub fn write_fmt(args: fmt::Arguments) {
    if let Some(uart) = SERIAL.lock().as_mut() {
        SerialWriter(uart).write_fmt(args).ok();
    }
}

/// Writes without taking the console lock: for the panic and fault paths, which may have
/// interrupted a holder of that lock.
pub fn emergency_write_fmt(args: fmt::Arguments) {
    struct Raw;
    impl Write for Raw {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            for byte in s.bytes() {
                while crate::arch::port::inb(COM1 + 5) & 0x20 == 0 {
                    core::hint::spin_loop();
                }
                crate::arch::port::outb(COM1, byte);
            }
            Ok(())
        }
    }
    Raw.write_fmt(args).ok();
}

#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::console::write_fmt(format_args!($($arg)*)) };
}

#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => { $crate::console::write_fmt(format_args!("{}\n", format_args!($($arg)*))) };
}

/// Sets the log level from a command-line word (`error`, `warn`, `info`, `debug`, `trace`).
pub fn set_level(word: &str) -> Result<(), ()> {
    let level = match word {
        "off" => log::LevelFilter::Off,
        "error" => log::LevelFilter::Error,
        "warn" => log::LevelFilter::Warn,
        "info" => log::LevelFilter::Info,
        "debug" => log::LevelFilter::Debug,
        "trace" => log::LevelFilter::Trace,
        _ => return Err(()),
    };
    log::set_max_level(level);
    Ok(())
}

struct Logger;
static LOGGER: Logger = Logger;

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            let level = match record.level() {
                log::Level::Error => "error",
                log::Level::Warn => "warn",
                log::Level::Info => "info",
                log::Level::Debug => "debug",
                log::Level::Trace => "trace",
            };
            write_fmt(format_args!("[{level:5}] {}\n", record.args()));
        }
    }

    fn flush(&self) {}
}
