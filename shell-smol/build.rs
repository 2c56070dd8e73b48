//! Link settings for the daemon binary that keep its resident memory small.
use std::env;
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=OUTPOST_DEFAULT_LAYOUT");
    let target = env::var("TARGET").unwrap_or_default();
    // Only where Rust links with lld by default (x86_64 Linux since Rust 1.90): both flags
    // below are lld's (`-z pack-relative-relocs` is GNU ld 2.38+ too, but needs glibc 2.36+).
    if target != "x86_64-unknown-linux-gnu" || env::var_os("OUTPOST_DEFAULT_LAYOUT").is_some() {
        return;
    }
    // Relative relocations as a compact bitmap (DT_RELR) instead of 24 bytes each: the
    // loader reads ~10 KiB instead of ~580 KiB of `.rela.dyn` at every start.
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    // Start-up, idle and delivery code first and together (see scripts/orderfile.sh):
    // the kernel maps 64 KiB around each code page fault, so scattered start-up code
    // leaves most of .text resident.
    let order =
        Path::new(&env::var("CARGO_MANIFEST_DIR").unwrap_or_default()).join("link/outpost.order");
    println!("cargo:rerun-if-changed={}", order.display());
    if order.is_file() {
        println!(
            "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
            order.display()
        );
        // Names absent from this build (another compiler or dependency version) are
        // skipped; the layout then falls back towards the default one.
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}
