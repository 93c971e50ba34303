//! How the rvmm binary is linked. Every VM is its own process, and the
//! pages of this binary that a VM maps are memory it costs, so the release
//! link packs what a VM runs together (src/link/hot-text.txt, made by
//! src/link/profile-hot-text.sh) and the kernel's 64 KiB fault-around maps
//! little else: an idle VM maps about 0.55 MiB of text instead of 1.6.
//! src/link/sections.ld moves the few small sections that every start
//! touches out of cold neighbourhoods.

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let order = "src/link/hot-text.txt";
    let sections = "src/link/sections.ld";
    println!("cargo:rerun-if-changed={order}");
    println!("cargo:rerun-if-changed={sections}");
    // In every profile, so the tests run the layout the release has.
    println!("cargo:rustc-link-arg-bins=-Wl,-T,{dir}/{sections}");
    // Compact relative relocations (DT_RELR, glibc 2.36 and LLD): the
    // start-up self-relocation of the static PIE reads 1 KiB, not 70.
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    if std::env::var("PROFILE").as_deref() == Ok("release") {
        println!("cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={dir}/{order}");
        // A function the list names but the build no longer has (renamed,
        // inlined) only loses its place; the link must not fail for it.
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}
