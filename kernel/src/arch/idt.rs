//! The interrupt descriptor table: 256 assembly entry stubs that all reach [`trap_dispatch`]
//! with a [`TrapFrame`]. Exceptions are reported (vector, error code, RIP, CR2) and fail the run;
//! breakpoints resume; vectors 32..=255 go to the interrupt lines of [`super::irq`].

use alloc::string::String;
use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicUsize, Ordering};

use x86_64::VirtAddr;
use x86_64::instructions::tables::lidt;
use x86_64::structures::DescriptorTablePointer;

use super::gdt::{DOUBLE_FAULT_IST, KERNEL_CODE_SELECTOR};

pub const BREAKPOINT: u8 = 3;
pub const DOUBLE_FAULT: u8 = 8;
pub const PAGE_FAULT: u8 = 14;

// Every stub is 16-byte aligned, so stub `v` sits at `trap_stubs + 16 * v`. Vectors whose
// exception pushes no error code push a 0 so that the frame has one shape.
global_asm!(
    r#"
    .section .text
    .balign 16
    .global trap_stubs
trap_stubs:
    .set vector, 0
    .rept 256
    .balign 16
    .if (vector == 8) || (vector >= 10 && vector <= 14) || (vector == 17) || (vector == 21) || (vector == 29) || (vector == 30)
    .else
        push 0
    .endif
        push vector
        jmp trap_common
    .set vector, vector + 1
    .endr

trap_common:
    push r15
    push r14
    push r13
    push r12
    push r11
    push r10
    push r9
    push r8
    push rbp
    push rdi
    push rsi
    push rdx
    push rcx
    push rbx
    push rax
    mov rdi, rsp
    cld
    call {dispatch}
    pop rax
    pop rbx
    pop rcx
    pop rdx
    pop rsi
    pop rdi
    pop rbp
    pop r8
    pop r9
    pop r10
    pop r11
    pop r12
    pop r13
    pop r14
    pop r15
    add rsp, 16
    iretq
"#,
    dispatch = sym trap_dispatch,
);

unsafe extern "C" {
    static trap_stubs: u8;
}

/// Registers saved by `trap_common`, then what the stub and the CPU pushed.
#[repr(C)]
#[derive(Debug)]
pub struct TrapFrame {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    type_attr: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

const INTERRUPT_GATE: u8 = 0x8e; // present, DPL 0, 64-bit interrupt gate (IF cleared on entry)

#[repr(C, align(16))]
struct Idt([Gate; 256]);

static IDT: spin::Once<Idt> = spin::Once::new();

/// Called for every breakpoint (`int3`) before execution resumes; tests count them.
pub static BREAKPOINTS: AtomicUsize = AtomicUsize::new(0);

/// Builds the IDT once and loads it on this CPU.
pub fn load() {
    let idt = IDT.call_once(|| {
        // SAFETY: `trap_stubs` is the start of the stub block defined above; only its address
        // is taken.
        let base = unsafe { &trap_stubs as *const u8 as u64 };
        let mut gates = [Gate {
            offset_low: 0,
            selector: 0,
            ist: 0,
            type_attr: 0,
            offset_mid: 0,
            offset_high: 0,
            reserved: 0,
        }; 256];
        for (vector, gate) in gates.iter_mut().enumerate() {
            let addr = base + 16 * vector as u64;
            *gate = Gate {
                offset_low: addr as u16,
                selector: KERNEL_CODE_SELECTOR,
                ist: if vector == DOUBLE_FAULT as usize {
                    DOUBLE_FAULT_IST + 1
                } else {
                    0
                },
                type_attr: INTERRUPT_GATE,
                offset_mid: (addr >> 16) as u16,
                offset_high: (addr >> 32) as u32,
                reserved: 0,
            };
        }
        Idt(gates)
    });
    let pointer = DescriptorTablePointer {
        limit: (core::mem::size_of::<Idt>() - 1) as u16,
        base: VirtAddr::from_ptr(idt),
    };
    // SAFETY: the IDT is 'static and every gate points at a valid stub.
    unsafe { lidt(&pointer) };
}

/// Explains a fault address in words of an upper layer (the scheduler names the task whose
/// stack guard page it is), for the fatal report of a page or double fault.
pub type FaultExplainer = fn(fault_address: u64) -> Option<String>;
/// Reports a fatal error and stops (the test harness fails the running test and exits QEMU).
pub type FatalReporter = fn(core::fmt::Arguments) -> !;

static FAULT_EXPLAINER: spin::Once<FaultExplainer> = spin::Once::new();
static FATAL_REPORTER: spin::Once<FatalReporter> = spin::Once::new();

/// Installs the fault explainer (once; later calls are ignored and return false).
pub fn set_fault_explainer(explain: FaultExplainer) -> bool {
    let mut installed = false;
    FAULT_EXPLAINER.call_once(|| {
        installed = true;
        explain
    });
    installed
}

/// Installs the fatal-error reporter (once; later calls are ignored and return false). Until one
/// is installed, a fatal error is printed and QEMU exits with the failure status.
pub fn set_fatal_reporter(report: FatalReporter) -> bool {
    let mut installed = false;
    FATAL_REPORTER.call_once(|| {
        installed = true;
        report
    });
    installed
}

/// Reports a fatal error through the installed reporter.
pub fn fatal(args: core::fmt::Arguments) -> ! {
    if let Some(report) = FATAL_REPORTER.get() {
        report(args);
    }
    super::irq_save();
    crate::console::emergency_write_fmt(format_args!("\nfatal: {args}\n"));
    super::qemu::exit(super::qemu::ExitCode::Failure)
}

extern "C" fn trap_dispatch(frame: &mut TrapFrame) {
    let vector = frame.vector as u8;
    if vector >= super::irq::FIRST_VECTOR {
        super::irq::dispatch(vector, frame.rip);
        return;
    }
    if vector == BREAKPOINT {
        BREAKPOINTS.fetch_add(1, Ordering::SeqCst);
        return;
    }
    let cr2: u64;
    // SAFETY: reading CR2 has no side effects.
    unsafe { asm!("mov {}, cr2", out(reg) cr2, options(nomem, nostack, preserves_flags)) };
    if matches!(vector, PAGE_FAULT | DOUBLE_FAULT)
        && let Some(what) = FAULT_EXPLAINER.get().and_then(|explain| explain(cr2))
    {
        fatal(format_args!(
            "{what} at {cr2:#x} (exception {vector}, RIP {:#x})",
            frame.rip
        ));
    }
    fatal(format_args!(
        "exception {} ({}) error code {:#x} at RIP {:#018x}, CR2 {:#018x}, RSP {:#018x}",
        vector,
        exception_name(vector),
        frame.error_code,
        frame.rip,
        cr2,
        frame.rsp
    ));
}

fn exception_name(vector: u8) -> &'static str {
    match vector {
        0 => "divide error",
        1 => "debug",
        2 => "non-maskable interrupt",
        4 => "overflow",
        5 => "bound range exceeded",
        6 => "invalid opcode",
        7 => "device not available",
        8 => "double fault",
        10 => "invalid TSS",
        11 => "segment not present",
        12 => "stack-segment fault",
        13 => "general protection fault",
        14 => "page fault",
        16 => "x87 floating-point",
        17 => "alignment check",
        18 => "machine check",
        19 => "SIMD floating-point",
        _ => "reserved",
    }
}
