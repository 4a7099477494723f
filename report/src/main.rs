mod figures;
mod host_cpu;
mod render;
mod rows;
#[cfg(test)]
mod samples;
fn main() {}
