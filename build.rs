//! Lays out the release binary's start-up code together.
//!
//! The kernel maps a program's code in 64 kB blocks around each page it first runs, so the
//! code that start-up runs (config, TLS roots, the interception CA, the listeners: about
//! 1.4 MB of functions) stays resident for the life of the process, and in the default
//! layout it is spread over most of the 8.5 MB text segment. `src/startup.order` names
//! those functions (sorted by name: together is what counts, not their order); the linker
//! (rust-lld, Rust's default on x86-64 Linux) puts them first. An idle bearerd then holds a fraction of its
//! code resident. `bash benches/startup_order.sh` rewrites the list from a start-up traced
//! by callgrind; a function missing from it (renamed, new) is only laid out as before.
//!
//! Only for release builds on x86_64-unknown-linux-gnu, whose default linker reads the list;
//! other targets (the musl image's GNU ld among them) link as before.
//!
//! A release build on Linux is also stripped here, by the linker (`--strip-all`), rather than
//! by the profile's `strip`: cargo hashes that setting into every symbol name, so a build
//! keeping its symbols for `benches/startup_order.sh` (`BEARERD_KEEP_SYMBOLS=1`) would name
//! the functions differently from the build users run, and the list would match nothing.

use std::env;
use std::path::Path;

fn main() {
    let order = Path::new(&env::var("CARGO_MANIFEST_DIR").expect("cargo sets it")).join("src/startup.order");
    println!("cargo::rerun-if-changed={}", order.display());
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=BEARERD_KEEP_SYMBOLS");
    let target = (
        env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default(),
        env::var("CARGO_CFG_TARGET_OS").unwrap_or_default(),
        env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default(),
    );
    let release = env::var("PROFILE").is_ok_and(|profile| profile == "release");
    if release && target == ("x86_64".into(), "linux".into(), "gnu".into()) {
        println!(
            "cargo::rustc-link-arg-bin=bearerd=-Wl,--symbol-ordering-file={},--no-warn-symbol-ordering",
            order.display()
        );
    }
    if release && target.1 == "linux" && env::var_os("BEARERD_KEEP_SYMBOLS").is_none() {
        println!("cargo::rustc-link-arg-bin=bearerd=-Wl,--strip-all");
    }
}
