//! TEMPORARY single-CPU stand-in; replaced by the SMP branch (GS-base per-CPU data).
pub const MAX_CPUS: usize = 8;
pub fn cpu_index() -> usize {
    0
}
pub fn cpu_count() -> usize {
    1
}
pub fn apic_id_of(_cpu: usize) -> u32 {
    super::apic::id()
}
