//! Bake the libtorch library folder into the rpath of every binary this crate links (tests
//! included), so nothing needs `LD_LIBRARY_PATH`. torch-sys publishes the folder as
//! `DEP_TCH_LIBTORCH_LIB` through its `links = "tch"` metadata.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Some(lib) = std::env::var_os("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.to_string_lossy());
    }
}
