//! Per-CPU GDT and TSS. The TSS gives the double-fault handler its own stack (IST), so a kernel
//! stack overflow is reported instead of escalating to a triple fault.

use alloc::boxed::Box;
use alloc::vec;

use x86_64::VirtAddr;
use x86_64::instructions::segmentation::{CS, DS, ES, SS, Segment};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable};
use x86_64::structures::tss::TaskStateSegment;

/// The kernel code selector: the boot GDT and every per-CPU GDT put it at index 1.
pub const KERNEL_CODE_SELECTOR: u16 = 0x08;
/// IST slot (0-based) of the double-fault stack.
pub const DOUBLE_FAULT_IST: u8 = 0;
const IST_STACK_SIZE: usize = 16 * 1024;

/// Builds this CPU's GDT and TSS on the heap and loads them. Called once per CPU.
pub fn load_for_this_cpu() {
    let ist_stack = Box::leak(vec![0u8; IST_STACK_SIZE].into_boxed_slice());
    let ist_top = VirtAddr::from_ptr(ist_stack.as_ptr_range().end).align_down(16u64);
    let mut tss = TaskStateSegment::new();
    tss.interrupt_stack_table[DOUBLE_FAULT_IST as usize] = ist_top;
    let tss: &'static TaskStateSegment = Box::leak(Box::new(tss));

    let gdt: &'static mut GlobalDescriptorTable = Box::leak(Box::new(GlobalDescriptorTable::new()));
    let code = gdt.append(Descriptor::kernel_code_segment());
    let data = gdt.append(Descriptor::kernel_data_segment());
    let tss_selector = gdt.append(Descriptor::tss_segment(tss));
    assert_eq!(code.0, KERNEL_CODE_SELECTOR);
    let gdt: &'static GlobalDescriptorTable = gdt;
    gdt.load();
    // SAFETY: the selectors index the GDT just loaded, whose descriptors are valid kernel
    // segments and a TSS that lives forever.
    unsafe {
        CS::set_reg(code);
        SS::set_reg(data);
        DS::set_reg(data);
        ES::set_reg(data);
        load_tss(tss_selector);
    }
}
