//! Application processor (AP) start-up. The boot CPU copies a real-mode trampoline to
//! [`TRAMPOLINE_PADDR`] and starts the processors the MADT lists one at a time with
//! INIT-SIPI-SIPI. Each AP goes 16-bit -> 32-bit -> long mode on the boot page tables
//! (`boot_pml4`) and its own heap stack, then [`ap_main`] sets up its per-CPU data, GDT+TSS, IDT,
//! local APIC and timer, checks in, and calls the caller's entry with interrupts still disabled.

use alloc::boxed::Box;
use alloc::vec;
use core::arch::global_asm;
use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering, fence};

use super::acpi::{self, ApicIds};
use super::percpu::{self, MAX_CPUS};
use super::pvh::{BootInfo, MEMMAP_RAM};
use super::{apic, gdt, idt, tsc};
use crate::println;

/// Where the trampoline runs: page 8, below 1 MiB (never handed out by `mm::frames`), so the
/// start-up IPI's vector is 0x08 and the AP starts at 0800:0000.
pub const TRAMPOLINE_PADDR: u64 = 0x8000;
const AP_STACK_SIZE: usize = 64 * 1024;
/// Time an AP gets from the first start-up IPI to checking in.
const START_TIMEOUT_MS: u64 = 1000;

// Copied to TRAMPOLINE_PADDR before use, so every address in it is computed relative to that
// copy (`label - ap_trampoline_start + 0x8000`). The slots at its end are filled in per AP.
global_asm!(
    r#"
    .pushsection .rodata.ap_trampoline, "a"
    .balign 16
    .global ap_trampoline_start
ap_trampoline_start:
    .code16
    cli
    cld
    xorw %ax, %ax
    movw %ax, %ds
    movb $1, ap_tramp_alive - ap_trampoline_start + 0x8000
    lgdtl ap_tramp_gdtr - ap_trampoline_start + 0x8000
    movl %cr0, %eax
    orl $1, %eax                            /* PE */
    movl %eax, %cr0
    ljmpl $0x08, $(ap_tramp_32 - ap_trampoline_start + 0x8000)

    .code32
ap_tramp_32:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movl %cr4, %eax
    orl $(1 << 5), %eax                     /* PAE */
    movl %eax, %cr4
    movl ap_tramp_cr3 - ap_trampoline_start + 0x8000, %eax
    movl %eax, %cr3
    movl $0xc0000080, %ecx                  /* EFER.LME */
    rdmsr
    orl $(1 << 8), %eax
    wrmsr
    movl %cr0, %eax
    andl $0x9fffffff, %eax                  /* caches on: clear CD and NW */
    orl $0x80010001, %eax                   /* PG | WP | PE */
    movl %eax, %cr0
    ljmpl $0x18, $(ap_tramp_64 - ap_trampoline_start + 0x8000)

    .code64
ap_tramp_64:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorl %eax, %eax
    movw %ax, %fs
    movw %ax, %gs
    movq ap_tramp_stack - ap_trampoline_start + 0x8000, %rsp
    movq ap_tramp_arg - ap_trampoline_start + 0x8000, %rdi
    movq ap_tramp_entry - ap_trampoline_start + 0x8000, %rax
    xorl %ebp, %ebp
    callq *%rax
1:
    cli
    hlt
    jmp 1b

    .balign 8
ap_tramp_gdt:
    .quad 0
    .quad 0x00cf9a000000ffff                /* 0x08: 32-bit code */
    .quad 0x00cf92000000ffff                /* 0x10: data */
    .quad 0x00af9a000000ffff                /* 0x18: 64-bit code */
ap_tramp_gdt_end:
ap_tramp_gdtr:
    .word ap_tramp_gdt_end - ap_tramp_gdt - 1
    .long ap_tramp_gdt - ap_trampoline_start + 0x8000
    .balign 8
    .global ap_tramp_cr3, ap_tramp_stack, ap_tramp_entry, ap_tramp_arg, ap_tramp_alive
ap_tramp_cr3:   .quad 0     /* boot_pml4 (below 4 GiB) */
ap_tramp_stack: .quad 0     /* stack top */
ap_tramp_entry: .quad 0     /* extern "C" fn(usize) -> ! */
ap_tramp_arg:   .quad 0     /* its argument: the CPU index */
ap_tramp_alive: .quad 0     /* set to 1 by the AP's first instructions */
    .global ap_trampoline_end
ap_trampoline_end:
    .popsection
"#,
    options(att_syntax)
);

unsafe extern "C" {
    static ap_trampoline_start: u8;
    static ap_trampoline_end: u8;
    static ap_tramp_cr3: u8;
    static ap_tramp_stack: u8;
    static ap_tramp_entry: u8;
    static ap_tramp_arg: u8;
    static ap_tramp_alive: u8;
    static boot_pml4: u8;
}

/// The entry every AP calls once it is up (a `fn(usize) -> !` address).
static AP_ENTRY: AtomicUsize = AtomicUsize::new(0);

/// Hand-shake for the AP being started: the boot CPU stores its index, the AP swaps it for
/// `CHECKED_IN`; on a timeout the boot CPU swaps it for `GAVE_UP`, and a late AP that then finds
/// its index gone halts instead of running.
static STARTING: AtomicUsize = AtomicUsize::new(GAVE_UP);
const CHECKED_IN: usize = usize::MAX;
const GAVE_UP: usize = usize::MAX - 1;

/// What each CPU recorded about itself when it came up: its index as read through GS, and its
/// APIC id as read from its own local APIC.
struct CheckIn {
    index: AtomicUsize,
    apic_id: AtomicU32,
}

static CHECKINS: [CheckIn; MAX_CPUS] = [const {
    CheckIn {
        index: AtomicUsize::new(usize::MAX),
        apic_id: AtomicU32::new(0),
    }
}; MAX_CPUS];

static MADT_IDS: spin::Once<ApicIds> = spin::Once::new();

/// Local APIC ids of the enabled processors in the MADT (empty if it could not be read).
pub fn madt_apic_ids() -> &'static [u32] {
    MADT_IDS.get().map_or(&[], |ids| ids.as_slice())
}

/// What CPU `cpu` recorded when it came up: (its `cpu_index()` through GS, its APIC id).
pub fn checkin(cpu: usize) -> Option<(usize, u32)> {
    let c = CHECKINS.get(cpu)?;
    let index = c.index.load(Ordering::Acquire);
    (index != usize::MAX).then(|| (index, c.apic_id.load(Ordering::Acquire)))
}

fn record_checkin(cpu: usize) {
    let c = &CHECKINS[cpu];
    c.apic_id.store(apic::id(), Ordering::Release);
    c.index.store(percpu::cpu_index(), Ordering::Release);
}

/// Starts every enabled processor the MADT lists (up to `MAX_CPUS` in all), one at a time; each
/// calls `entry(cpu_index)` with interrupts disabled once it is set up. Returns the CPUs online.
/// Never fails: a missing MADT or an AP that does not answer is logged and skipped.
pub fn start_aps(boot: &BootInfo, entry: fn(usize) -> !) -> usize {
    record_checkin(0);
    let ids = match acpi::local_apic_ids(boot.rsdp_paddr) {
        Ok(ids) => MADT_IDS.call_once(|| ids),
        Err(e) => {
            println!("error: acpi: no usable MADT ({e}); running on the boot CPU only");
            return percpu::cpu_count();
        }
    };
    let own_id = percpu::apic_id_of(0);
    log::info!(
        "acpi: {} enabled processors in the MADT, APIC ids {:?}",
        ids.len(),
        ids
    );
    if !ids.contains(&own_id) {
        log::warn!("smp: the boot CPU's APIC id {own_id} is not in the MADT");
    }
    if ids.iter().all(|&id| id == own_id) {
        return percpu::cpu_count();
    }
    if let Err(e) = install_trampoline(boot) {
        println!("error: smp: {e}; running on the boot CPU only");
        return percpu::cpu_count();
    }
    AP_ENTRY.store(entry as usize, Ordering::Release);

    for &apic_id in ids.iter().filter(|&&id| id != own_id) {
        let cpu = percpu::cpu_count();
        if cpu == MAX_CPUS {
            log::warn!("smp: more than {MAX_CPUS} processors; the rest stay halted");
            break;
        }
        if apic_id > 0xff {
            log::warn!("smp: APIC id {apic_id} needs x2APIC mode, which is not used; left halted");
            continue;
        }
        if start_one(cpu, apic_id) {
            percpu::mark_online();
            log::debug!("smp: CPU {cpu} is up (APIC id {apic_id})");
        } else {
            println!(
                "error: smp: the CPU with APIC id {apic_id} did not start within {START_TIMEOUT_MS} ms; it stays halted"
            );
        }
    }
    percpu::cpu_count()
}

/// Address of a trampoline symbol in the copy at TRAMPOLINE_PADDR.
fn in_copy(symbol: &u8) -> *mut u64 {
    // SAFETY: only the address of the linker symbol is taken.
    let start = unsafe { &ap_trampoline_start as *const u8 as u64 };
    (TRAMPOLINE_PADDR + (symbol as *const u8 as u64 - start)) as *mut u64
}

/// Checks that the trampoline page is plain RAM and copies the trampoline there.
fn install_trampoline(boot: &BootInfo) -> Result<(), &'static str> {
    // SAFETY: linker symbols; only their addresses are taken.
    let (start, end, pml4) = unsafe {
        (
            &ap_trampoline_start as *const u8,
            &ap_trampoline_end as *const u8,
            &boot_pml4 as *const u8 as u64,
        )
    };
    let len = end as usize - start as usize;
    assert!(
        len <= 4096,
        "the AP trampoline is {len} bytes, more than a page"
    );
    let page_end = TRAMPOLINE_PADDR + 4096;
    let in_ram = boot
        .memmap
        .iter()
        .any(|r| r.kind == MEMMAP_RAM && r.addr <= TRAMPOLINE_PADDR && r.addr + r.size >= page_end);
    if !in_ram {
        return Err("the memory map does not list the trampoline page 0x8000 as RAM");
    }
    if pml4 >= 1 << 32 {
        return Err("boot_pml4 is above 4 GiB, out of reach of 32-bit code");
    }
    // SAFETY: the page at TRAMPOLINE_PADDR is RAM (checked above) below 1 MiB, which the frame
    // allocator never hands out, and identity-mapped; the trampoline fits in it.
    unsafe {
        core::ptr::copy_nonoverlapping(start, TRAMPOLINE_PADDR as *mut u8, len);
        in_copy(&ap_tramp_cr3).write_volatile(pml4);
    }
    Ok(())
}

/// Starts the AP `apic_id` as CPU `cpu` and waits for it to check in. Returns whether it did.
fn start_one(cpu: usize, apic_id: u32) -> bool {
    let stack = Box::leak(vec![0u8; AP_STACK_SIZE].into_boxed_slice());
    let stack_top = (stack.as_ptr_range().end as u64) & !0xf;
    // SAFETY: the trampoline copy is installed; its slots are 8-aligned u64s in it, and no AP
    // runs it now (the previous one checked in, and its own slots were read before that, or it
    // was sent INIT).
    let alive = unsafe {
        in_copy(&ap_tramp_stack).write_volatile(stack_top);
        in_copy(&ap_tramp_entry).write_volatile(ap_main as *const () as u64);
        in_copy(&ap_tramp_arg).write_volatile(cpu as u64);
        let alive = in_copy(&ap_tramp_alive);
        alive.write_volatile(0);
        alive
    };
    STARTING.store(cpu, Ordering::Release);
    fence(Ordering::SeqCst);

    apic::send_init(apic_id);
    tsc::spin_ns(10_000_000);
    apic::send_startup(apic_id, (TRAMPOLINE_PADDR >> 12) as u8);
    let is_alive = || {
        // SAFETY: the slot is in the installed copy; the AP writes it, so read it volatile.
        unsafe { alive.read_volatile() != 0 }
    };
    let deadline = tsc::rdtsc() + tsc::ns_to_ticks(200_000);
    while !is_alive() && tsc::rdtsc() < deadline {
        core::hint::spin_loop();
    }
    if !is_alive() {
        apic::send_startup(apic_id, (TRAMPOLINE_PADDR >> 12) as u8);
    }

    let deadline = tsc::rdtsc() + tsc::ns_to_ticks(START_TIMEOUT_MS * 1_000_000);
    while tsc::rdtsc() < deadline {
        if STARTING.load(Ordering::Acquire) == CHECKED_IN {
            return true;
        }
        core::hint::spin_loop();
    }
    if STARTING
        .compare_exchange(cpu, GAVE_UP, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        return true; // it checked in just now
    }
    apic::send_init(apic_id); // back to waiting for a start-up IPI, for good
    false
}

/// The first Rust code an AP runs, on its own stack, interrupts disabled.
extern "C" fn ap_main(cpu: usize) -> ! {
    percpu::init_this_cpu(cpu);
    gdt::load_for_this_cpu();
    idt::load();
    apic::init_this_cpu();
    percpu::set_apic_id(apic::id());
    apic::start_timer();
    record_checkin(cpu);
    if STARTING
        .compare_exchange(cpu, CHECKED_IN, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        super::halt_forever(); // the boot CPU gave up on us
    }
    let entry = AP_ENTRY.load(Ordering::Acquire);
    // SAFETY: `start_aps` stored a `fn(usize) -> !` there before starting any AP.
    let entry: fn(usize) -> ! = unsafe { core::mem::transmute(entry) };
    entry(cpu)
}
