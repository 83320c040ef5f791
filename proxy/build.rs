//! Link options for the proxy binary.
//!
//! `-z pack-relative-relocs` stores the binary's relative relocations as
//! DT_RELR (a bitmap, 7.5 KiB here) instead of `.rela.dyn` entries (24 bytes
//! each, 579 KiB here). The dynamic loader reads every relocation when the
//! proxy starts, and the pages it read stay mapped: they counted in every
//! sidecar's resident set (the bench's `memory` scenario: idle RSS 8.9 MB
//! before, 8.3 MB after). Those pages are clean and file-backed, so sidecars
//! on one node share them; the relocated data (`.data.rel.ro`) is written as
//! before, and the private memory is unchanged.
//!
//! Linkers: rust-lld (rustc's default on x86_64 Linux since 1.90) and GNU
//! ld 2.38 or later support the option. At run time it needs glibc 2.36 or
//! later: the binary names the version `GLIBC_ABI_DT_RELR`, so an older
//! loader refuses to start it with an error that says so rather than
//! misrelocating. The images take glibc from the Debian release that builds
//! them (`scripts/images.sh`), bookworm's is 2.36.
fn main() {
    println!("cargo:rustc-link-arg-bin=strait-proxy=-Wl,-z,pack-relative-relocs");
}
