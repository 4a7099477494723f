//! PVH entry: QEMU enters `pvh_start32` in 32-bit protected mode with paging off and `ebx`
//! pointing at the `hvm_start_info`. This code zeroes .bss, identity-maps the first 4 GiB with
//! 2 MiB pages, enters long mode and calls `kernel_main(start_info_paddr)` on the boot stack.

use core::arch::global_asm;

unsafe extern "C" {
    static boot_stack_bottom: u8;
    static boot_stack_top: u8;
}

/// The boot stack's size, and how many bytes at its bottom were never written since boot (its
/// .bss was zeroed then; a frame that wrote only zeros there is not seen, so this is an upper
/// bound). CPU 0 runs the kernel's main flow, the self-tests and the benchmarks on it.
pub fn boot_stack_headroom() -> (usize, usize) {
    // Only the addresses of the symbols (defined in .bss.boot below) are taken.
    let (bottom, top) = (
        core::ptr::addr_of!(boot_stack_bottom),
        core::ptr::addr_of!(boot_stack_top),
    );
    let size = top as usize - bottom as usize;
    let untouched = (0..size)
        // SAFETY: inside the boot stack (below the live frames, which are at its top end);
        // reading a byte races with nothing, as only CPU 0 uses the stack.
        .take_while(|&i| unsafe { core::ptr::read_volatile(bottom.add(i)) } == 0)
        .count();
    (size, untouched)
}

/// Bytes of identity mapping set up before Rust runs: everything below 4 GiB (RAM, the PCI hole,
/// the local APIC). Higher MMIO is mapped on demand by `mm::paging`.
pub const BOOT_IDENTITY_MAP_END: u64 = 4 << 30;

global_asm!(
    r#"
    .section .note.xen, "a", @note
    .balign 4
    .long 4                 /* name size: "Xen\0" */
    .long 8                 /* descriptor size */
    .long 18                /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .balign 4
    .quad pvh_start32
    .balign 4

    .section .bss.boot, "aw", @nobits
    .balign 4096
    .global boot_pml4
boot_pml4:  .skip 4096
boot_pdpt:  .skip 4096
boot_pd:    .skip 4 * 4096
    /* The boot stack grows down towards boot_pd: an overflow would rewrite the mapping of the
       top of the 4th GiB (the local APIC) without a fault. Device bring-up takes about 64 KiB
       of it (VirtQueue::new alone has a 16 KiB frame); `boot_stack_headroom` says what is left
       and a self-test keeps a quarter of it free. */
    .balign 16
    .global boot_stack_bottom
boot_stack_bottom:
    .skip 128 * 1024
    .global boot_stack_top
boot_stack_top:

    .section .rodata.boot, "a"
    .balign 16
boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff    /* 0x08: 64-bit kernel code */
    .quad 0x00cf92000000ffff    /* 0x10: kernel data */
boot_gdt_end:
boot_gdt_ptr:
    .word boot_gdt_end - boot_gdt - 1
    .quad boot_gdt

    .section .text.boot, "ax"
    .code32
    .global pvh_start32
pvh_start32:
    cli
    cld
    mov esi, ebx                        /* keep start_info across the set-up */

    mov edi, offset __bss_start         /* zero .bss (page tables and stack included) */
    mov ecx, offset __bss_end
    sub ecx, edi
    xor eax, eax
    rep stosb

    mov eax, offset boot_pdpt           /* PML4[0] -> PDPT */
    or eax, 3
    mov [boot_pml4], eax

    mov edi, offset boot_pdpt           /* PDPT[0..4] -> PD[0..4] */
    mov eax, offset boot_pd
    or eax, 3
    mov ecx, 4
1:
    mov [edi], eax
    add eax, 4096
    add edi, 8
    dec ecx
    jnz 1b

    mov edi, offset boot_pd             /* 2048 x 2 MiB pages: 0 .. 4 GiB, identity */
    mov eax, 0x83                       /* present | writable | page size */
    mov ecx, 2048
2:
    mov [edi], eax
    mov dword ptr [edi + 4], 0
    add eax, 0x200000
    add edi, 8
    dec ecx
    jnz 2b

    mov eax, offset boot_pml4
    mov cr3, eax
    mov eax, cr4
    or eax, 1 << 5                      /* PAE */
    mov cr4, eax
    mov ecx, 0xc0000080                 /* EFER.LME */
    rdmsr
    or eax, 1 << 8
    wrmsr
    mov eax, cr0
    or eax, (1 << 31) | (1 << 16) | 1   /* PG | WP | PE */
    mov cr0, eax

    lgdt [boot_gdt_ptr]
    mov eax, offset pvh_start64         /* far return into the 64-bit code segment */
    push 0x08
    push eax
    retf

    .code64
pvh_start64:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor eax, eax
    mov fs, ax
    mov gs, ax
    mov rsp, offset boot_stack_top
    mov edi, esi                        /* kernel_main(start_info_paddr) */
    xor ebp, ebp
    call kernel_main
3:
    cli
    hlt
    jmp 3b
"#
);
