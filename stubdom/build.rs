//! Link arguments of the freestanding image: no C runtime, no libc, a
//! static non-PIE executable laid out by `link.ld`. Given to the `stubdom`
//! binary only (`rustc-link-arg-bins`), never to the host test program.

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rerun-if-changed=link.ld");
    for arg in [
        "-nostartfiles",
        "-nostdlib",
        "-static",
        "-Wl,--build-id=none",
        "-Wl,-n",
        "-Wl,--no-dynamic-linker",
        &format!("-Wl,-T{dir}/link.ld"),
    ] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
}
