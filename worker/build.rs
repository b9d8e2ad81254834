//! Bake the libtorch library folder into the rpath of every binary this crate links (tests
//! included), so nothing needs `LD_LIBRARY_PATH`, and keep `libtorch_cuda` linked: no symbol of
//! it is referenced directly, so `--as-needed` would drop it and CUDA would look absent on a GPU
//! machine. torch-sys publishes the folder as `DEP_TCH_LIBTORCH_LIB` (`links = "tch"`).
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Some(lib) = std::env::var_os("DEP_TCH_LIBTORCH_LIB") else { return };
    let lib = std::path::PathBuf::from(lib);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    // the wheel's NCCL (site-packages/nvidia/nccl/lib), dlopened by cudarc for the `nccl` feature
    let nccl = lib.join("../../nvidia/nccl/lib");
    if nccl.exists() {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", nccl.display());
    }
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}
