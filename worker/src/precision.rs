//! Mixed precision (`[runtime] precision`): the learner's forward pass and loss run under
//! libtorch's autocast, as inside `torch.autocast(device, dtype=torch.bfloat16)`. Convolutions,
//! linear layers and matrix products compute in bfloat16 from bfloat16 copies of the fp32 weights
//! (cast once per forward and cached until the scope ends); losses, softmax and normalisation
//! statistics stay in fp32, as autocast's op lists say. Backward runs outside the scope and brings
//! every gradient back to its fp32 parameter, so the optimiser, gradient averaging, clipping and
//! checkpoints are unchanged.
//!
//! tch 0.24 switches CUDA's autocast only; `csrc/autocast.cpp` (compiled by `build.rs`) sets it
//! per device type with its dtype, and the scope's end drops the cast-weight cache, as
//! `torch.autocast.__exit__` does (the weights change at the next optimiser step).
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, CStr};

use cyclotron_core::spec::Precision;
use tch::Device;

use crate::error::{Error, Result};

extern "C" {
    /// `csrc/autocast.cpp`.
    fn cyclotron_autocast_enter(
        device_type: c_int,
        dtype: c_int,
        was_enabled: *mut c_int,
        was_dtype: *mut c_int,
    ) -> *mut c_char;
    fn cyclotron_autocast_exit(device_type: c_int, was_enabled: c_int, was_dtype: c_int) -> *mut c_char;
}

/// c10::ScalarType::BFloat16 (c10/core/ScalarType.h; tch's own number for it is private).
const BFLOAT16: c_int = 15;

/// c10::DeviceType of `device`.
fn device_type(device: Device) -> c_int {
    match device {
        Device::Cpu => 0,
        Device::Cuda(_) => 1,
        Device::Mps => 13,
        Device::Vulkan => 10,
    }
}

/// A libtorch message returned by a `csrc/` shim function (a malloc'd string, or null), freed.
pub(crate) fn take_message(err: *mut c_char) -> Option<String> {
    if err.is_null() {
        return None;
    }
    // SAFETY: a non-null return is a NUL-terminated string malloc'd by the shim, ours to free.
    let message = unsafe { CStr::from_ptr(err) }.to_string_lossy().into_owned();
    unsafe { libc::free(err.cast()) };
    Some(message)
}

/// An autocast scope in this thread: entered by [`Autocast::enter`], left when dropped.
#[derive(Debug)]
pub struct Autocast {
    device_type: c_int,
    was_enabled: c_int,
    was_dtype: c_int,
}

impl Autocast {
    /// Autocast for `device` at `precision` until the guard drops; `None` for fp32.
    pub fn enter(precision: Precision, device: Device) -> Result<Option<Autocast>> {
        let dtype = match resolve(precision, device).0 {
            Precision::Fp32 | Precision::Auto => return Ok(None),
            Precision::Bf16 => BFLOAT16,
            Precision::Fp16 => {
                return Err(Error::Invalid {
                    what: "runtime.precision".into(),
                    message: "\"fp16\" needs dynamic loss scaling, which is not built; use \"bf16\"".into(),
                })
            }
        };
        let device_type = device_type(device);
        let (mut was_enabled, mut was_dtype) = (0, 0);
        // SAFETY: plain values in, two out-pointers to live locals.
        let err = unsafe { cyclotron_autocast_enter(device_type, dtype, &mut was_enabled, &mut was_dtype) };
        match take_message(err) {
            None => Ok(Some(Autocast { device_type, was_enabled, was_dtype })),
            Some(message) => Err(Error::Invalid {
                what: "runtime.precision".into(),
                message: format!("libtorch refused autocast on {device:?}: {message}"),
            }),
        }
    }

    /// `f` under autocast at `precision` on `device`.
    pub fn run<T>(precision: Precision, device: Device, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let _scope = Autocast::enter(precision, device)?;
        f()
    }
}

impl Drop for Autocast {
    fn drop(&mut self) {
        // SAFETY: plain values; the shim restores what `enter` read.
        let err = unsafe { cyclotron_autocast_exit(self.device_type, self.was_enabled, self.was_dtype) };
        if let Some(message) = take_message(err) {
            tracing::error!("leaving autocast: {message}");
        }
    }
}

/// Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX, per /proc/cpuinfo's flags);
/// without either libtorch converts to fp32 and back, and a bf16 step can be slower than fp32's.
/// `None` where the flags cannot be read. Read once per process: [`Autocast::enter`] resolves
/// `auto` with it at every forward pass of a caller that did not resolve it first.
pub fn cpu_has_native_bf16() -> Option<bool> {
    static NATIVE: std::sync::OnceLock<Option<bool>> = std::sync::OnceLock::new();
    *NATIVE.get_or_init(|| {
        let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
        let flags = info.lines().find(|l| l.starts_with("flags"))?;
        Some(flags.split_whitespace().any(|f| f == "avx512_bf16" || f == "amx_bf16"))
    })
}

/// What `precision` computes in on `device`: `auto` becomes `bf16` on a GPU or a CPU with native
/// bfloat16 and `fp32` elsewhere (or where the CPU's flags cannot be read), with the reason;
/// the others stay as they are.
pub fn resolve(precision: Precision, device: Device) -> (Precision, &'static str) {
    match (precision, device) {
        (Precision::Auto, Device::Cpu) => match cpu_has_native_bf16() {
            Some(true) => (Precision::Bf16, "this CPU has AMX or AVX-512 BF16"),
            Some(false) => (Precision::Fp32, "this CPU has neither AMX nor AVX-512 BF16"),
            None => (Precision::Fp32, "this CPU's flags cannot be read"),
        },
        (Precision::Auto, _) => (Precision::Bf16, "a GPU"),
        (p, _) => (p, "as the spec says"),
    }
}

/// A warning for `precision` on `device` when it is likely to be slower than fp32.
pub fn slow_precision_warning(precision: Precision, device: Device) -> Option<String> {
    (precision == Precision::Bf16 && device == Device::Cpu && cpu_has_native_bf16() == Some(false)).then(
        || {
            "runtime.precision = \"bf16\" on a CPU without AVX-512 BF16 or AMX: libtorch emulates bfloat16 \
         and training may be slower than in fp32; set precision = \"fp32\" on this machine"
                .to_string()
        },
    )
}

#[cfg(test)]
mod tests;
