//! vcrypt: a unikernel whose heart is a virtio-crypto driver. Boot order: PVH entry
//! (`arch::boot`) -> console -> IDT -> memory -> CPU tables, APIC and time -> PCI -> virtio-crypto
//! probe -> the command from the kernel command line (self-tests by default).
#![no_std]
#![no_main]

extern crate alloc;

mod arch;
mod bench;
mod cmdline;
mod console;
mod kcapi;
mod kcapi_rsa;
mod mm;
mod pci;
mod profile;
mod sched;
mod selftest;
mod sync;
mod virtio;

use arch::qemu::{self, ExitCode};
use cmdline::Cmdline;
use vcrypt_drivers::switches::Switches;

#[unsafe(no_mangle)]
extern "C" fn kernel_main(start_info_paddr: u64) -> ! {
    // First, so that per-CPU data (the timer's tick counter, locks) works from here on.
    arch::percpu::init_this_cpu(0);
    console::init();
    // The harness names the running test in every fatal report (faults, panics).
    arch::idt::set_fatal_reporter(selftest::fatal);
    arch::idt::load();
    let boot = match arch::pvh::read(start_info_paddr) {
        Ok(boot) => boot,
        Err(e) => selftest::fatal(format_args!("{e}")),
    };
    let (ram, heap) = match mm::init(&boot.memmap) {
        Ok(sizes) => sizes,
        Err(e) => {
            println!("error: {e}");
            qemu::exit(ExitCode::Failure);
        }
    };
    sync::init();
    let (line, source) = match cmdline::fetch(&boot.cmdline) {
        Ok(fetched) => fetched,
        Err(e) => {
            println!("error: {e}");
            qemu::exit(ExitCode::Failure);
        }
    };
    let cmdline = match Cmdline::parse(&line) {
        Ok(cmdline) => cmdline,
        Err(e) => {
            println!("error: command line: {e}");
            qemu::exit(ExitCode::Failure);
        }
    };
    // The driver's switches, read once (a bad value stops the boot before any device is up).
    let switches = match Switches::from_cmdline(&cmdline) {
        Ok(switches) => switches,
        Err(e) => {
            println!("error: {e}");
            qemu::exit(ExitCode::Failure);
        }
    };
    if let Some(level) = cmdline.switch("log")
        && console::set_level(level).is_err()
    {
        println!("error: log={level} is not a level (error, warn, info, debug, trace, off)");
        qemu::exit(ExitCode::Failure);
    }
    println!(
        "vcrypt {}: {} MiB usable RAM, heap {} MiB, command line ({} bytes, {source}): {}",
        env!("CARGO_PKG_VERSION"),
        ram >> 20,
        heap >> 20,
        line.len(),
        cmdline::shown_words(&cmdline),
    );
    let (tsc_hz, _) = arch::init_boot_cpu();
    sched::init_this_cpu("main");
    println!(
        "tsc: {}.{:03} MHz",
        tsc_hz / 1_000_000,
        tsc_hz / 1_000 % 1_000
    );
    arch::enable_irqs();
    // Each AP becomes its CPU's idle task and runs whatever is spawned there.
    let cpus = arch::smp::start_aps(&boot, |_cpu| sched::become_idle());
    println!("cpus online: {cpus}");
    // The I/O APIC is only needed for devices without MSI-X (legacy INTx).
    match arch::acpi::io_apic(boot.rsdp_paddr) {
        Ok(info) => {
            if let Err(e) = arch::ioapic::init(info) {
                log::warn!("ioapic: {e}");
            }
        }
        Err(e) => log::warn!("acpi: {e}; devices without MSI-X will be polled"),
    }

    let devices = pci::enumerate();
    log::info!("pci: {} functions", devices.len());
    for d in &devices {
        log::debug!(
            "pci {}: {:04x}:{:04x} class {:02x}:{:02x} header type {}",
            d.address,
            d.vendor_id,
            d.device_id,
            d.class,
            d.subclass,
            d.header_type
        );
    }
    // DMA confinement: with an IOMMU (ACPI DMAR), the virtio-crypto functions get one domain
    // and reach only what the driver maps for them (before any queue memory is allocated).
    let sources: alloc::vec::Vec<u16> = devices
        .iter()
        .filter(|d| virtio::crypto::probe::is_virtio_crypto(d))
        .map(|d| d.address.source_id())
        .collect();
    let ram_end = boot
        .memmap
        .iter()
        .filter(|r| r.kind == arch::pvh::MEMMAP_RAM)
        .map(|r| r.addr + r.size)
        .max()
        .unwrap_or(0);
    if !sources.is_empty() {
        match mm::iommu::init(boot.rsdp_paddr, &sources, ram_end) {
            Ok(_) => println!("iommu: {}", mm::iommu::describe()),
            Err(mm::iommu::IommuError::Dmar(e)) => log::info!("iommu: {e}"),
            Err(e) => println!("iommu: {e}; devices reach all memory"),
        }
    }
    let crypto = virtio::crypto::probe_all(
        &devices,
        virtio::crypto::probe::driver_features(switches.event_idx),
    );
    if crypto > 0 && virtio::crypto::init_all() == 0 {
        println!("error: no virtio-crypto device could be brought up");
        qemu::exit(ExitCode::Failure);
    }
    virtio::crypto::apply_switches(&switches);
    match cmdline.switch("profile") {
        None | Some("off") => {}
        Some("on") => profile::start(),
        Some(other) => {
            println!("error: profile={other}: expected profile=on or profile=off");
            qemu::exit(ExitCode::Failure);
        }
    }
    // dur= is for bench, but a bad value is refused whatever the command, not ignored.
    if let Err(e) = bench::point_ns(&cmdline) {
        println!("error: {e}");
        qemu::exit(ExitCode::Failure);
    }
    if crypto == 0 {
        println!(
            "error: no virtio-crypto device found (QEMU needs -device virtio-crypto-pci; run-qemu.sh adds VCRYPT_DEVICES of them)"
        );
        qemu::exit(ExitCode::Failure);
    }

    match cmdline.command() {
        "test" => selftest::run(&cmdline.args()),
        "kcapi" => kcapi::main(&cmdline.args()),
        "bench" => bench::main(&cmdline.args(), &cmdline),
        other => {
            println!(
                "error: unknown command {} (commands: test [filter...], bench [ctrl] [kick] [limit] [data] [scale] [chain] [rsa] [dur=ms], kcapi -e|-d ..., kcapi -x 4 ...)",
                cmdline::shown(other)
            );
            qemu::exit(ExitCode::Failure)
        }
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    match info.location() {
        Some(l) => selftest::fatal(format_args!(
            "panic at {}:{}:{}: {}",
            l.file(),
            l.line(),
            l.column(),
            info.message()
        )),
        None => selftest::fatal(format_args!("panic: {}", info.message())),
    }
}
