//! Passes the linker script only when building the bootable kernel (target_os = "none").
fn main() {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("none") {
        let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
        println!("cargo:rustc-link-arg-bins=-T{dir}/../linker.ld");
        println!("cargo:rerun-if-changed={dir}/../linker.ld");
    }
}
