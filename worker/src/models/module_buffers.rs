//! The buffers of a TorchScript module (BatchNorm running statistics, anything registered with
//! `register_buffer`): tch 0.24 lists a module's parameters only, so `csrc/module_buffers.cpp`
//! (compiled by `build.rs` against the same libtorch) lists them, as tensors sharing the
//! module's storage.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_void, CStr};

use tch::{CModule, Tensor};

extern "C" {
    /// `csrc/module_buffers.cpp`.
    fn cyclotron_module_named_buffers(
        module: *mut c_void,
        data: *mut c_void,
        f: extern "C" fn(*mut c_void, *const c_char, *mut c_void),
    ) -> *mut c_char;
}

extern "C" fn push_buffer(data: *mut c_void, name: *const c_char, tensor: *mut c_void) {
    // SAFETY: `data` is the Vec that `named_buffers` passed, `name` a NUL-terminated string alive
    // for this call, and `tensor` a new torch::Tensor* whose ownership passes to the tch Tensor.
    let out = unsafe { &mut *data.cast::<Vec<(String, Tensor)>>() };
    let name = unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned();
    out.push((name, unsafe { Tensor::from_ptr(tensor.cast()) }));
}

// tch's CModule is one field, the torch::jit::Module* (tch is pinned to =0.24.0)
const _: () = assert!(std::mem::size_of::<CModule>() == std::mem::size_of::<*mut c_void>());

/// Every buffer of `module`, recursively, under its `state_dict` name, sharing its storage.
pub fn named_buffers(module: &CModule) -> Result<Vec<(String, Tensor)>, String> {
    // SAFETY: CModule's only field is the module pointer (asserted above, layout of tch =0.24.0);
    // the module outlives this call and is not moved during it.
    let raw = unsafe { *(module as *const CModule).cast::<*mut c_void>() };
    let mut out: Vec<(String, Tensor)> = vec![];
    let err = unsafe {
        cyclotron_module_named_buffers(raw, (&mut out as *mut Vec<(String, Tensor)>).cast(), push_buffer)
    };
    match crate::precision::take_message(err) {
        Some(message) => Err(format!("listing the module's buffers: {message}")),
        None => Ok(out),
    }
}
