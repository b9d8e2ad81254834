//! Bake the libtorch library folder into the rpath of every binary this crate links (tests
//! included), so nothing needs `LD_LIBRARY_PATH`, and keep `libtorch_cuda` linked: no symbol of
//! it is referenced directly, so `--as-needed` would drop it and CUDA would look absent on a GPU
//! machine. torch-sys publishes the folder as `DEP_TCH_LIBTORCH_LIB` (`links = "tch"`).
//!
//! Also compiles `csrc/module_buffers.cpp` (a TorchScript module's buffers, which tch does not
//! list) and `csrc/autocast.cpp` (autocast per device type and dtype, which tch does not set)
//! against that libtorch's headers, with torch-sys's flags.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    println!("cargo:rerun-if-changed=csrc/module_buffers.cpp");
    println!("cargo:rerun-if-changed=csrc/autocast.cpp");
    let Some(lib) = std::env::var_os("DEP_TCH_LIBTORCH_LIB") else {
        panic!("torch-sys did not say where libtorch is (DEP_TCH_LIBTORCH_LIB); build with LIBTORCH_USE_PYTORCH=1 and the venv's python on PATH (scripts/env.sh)")
    };
    let lib = std::path::PathBuf::from(lib);
    let include = lib.join("../include");
    if !include.join("torch/script.h").exists() {
        panic!(
            "no libtorch headers at {} (torch/script.h); reinstall the torch wheel with `make setup`",
            include.display()
        );
    }
    // the wheels of torch >= 2.7 use the C++11 ABI, as torch-sys detects for LIBTORCH_USE_PYTORCH
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .file("csrc/module_buffers.cpp")
        .file("csrc/autocast.cpp")
        .compile("cyclotron_csrc");
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
