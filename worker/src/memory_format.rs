//! Memory format (`[runtime] memory_format`): a model's 4-D weights laid out channels-last (NHWC
//! in memory, NCHW in shape), as PyTorch's `model.to(memory_format=torch.channels_last)`. A
//! convolution whose weight is channels-last runs oneDNN's NHWC kernels on the CPU and hands its
//! output on channels-last, so batch norm, ReLU and the residual adds that follow keep the layout;
//! backward gives each weight a gradient of its own layout. Shapes, values and names do not
//! change: only strides do, so checkpoints (written contiguous), gradient averaging (which copies
//! by logical index) and every comparison of predictions are unaffected.
//!
//! The optimiser's flat buffers keep such a weight's slot in NHWC order ([`crate::optim`]), so the
//! weight stays a view into its buffer.
//!
//! Not the default, and refused for models with narrow convolutions: libtorch 2.11's oneDNN
//! corrupts the heap (`double free or corruption`) or hangs (both threads spinning in
//! `jit_avx2_1x1_convolution_bwd_weights_t`) when it trains NHWC small_resnets of width 4 or 6 on
//! an AVX2 CPU — PyTorch's own `model.to(memory_format=torch.channels_last)` the same — while
//! widths 8 to 24 trained cleanly in the same probe
//! (`bench/results/memory-format-cpu-2core-2026-12-04.md`).

use tch::Tensor;

use crate::error::{Error, Result};
use crate::models::Model;

/// Fewest channels a convolution may have in NHWC (see the module doc).
pub const MIN_CHANNELS: i64 = 8;

/// Lay every 4-D floating-point variable of `model` out channels-last; returns how many moved.
/// Call before an optimiser is made over the model (its buffers take the layout they find).
/// Refuses a model with a convolution of fewer than [`MIN_CHANNELS`] output channels, or a 1×1
/// convolution of fewer input channels, and changes nothing then.
pub fn to_channels_last(model: &dyn Model) -> Result<usize> {
    let mut vars: Vec<_> = model.vs().variables().into_iter().filter(|(_, t)| t.dim() == 4).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, t) in &vars {
        let s = t.size();
        let (out_c, in_c, one_by_one) = (s[0], s[1], s[2] * s[3] == 1);
        if out_c < MIN_CHANNELS || (one_by_one && in_c < MIN_CHANNELS) {
            return Err(Error::Invalid {
                what: "runtime.memory_format".into(),
                message: format!(
                    "\"channels_last\" needs convolutions of at least {MIN_CHANNELS} channels, and {name} is {s:?} \
                     (libtorch's oneDNN corrupts memory on narrower ones); widen the model or use \"contiguous\""
                ),
            });
        }
    }
    let _guard = tch::no_grad_guard();
    let mut moved = 0;
    for (_, mut t) in vars {
        if t.is_floating_point() && !is_channels_last(&t) {
            t.set_data(&channels_last(&t));
            moved += 1;
        }
    }
    Ok(moved)
}

/// A channels-last copy of the 4-D tensor `t` (same shape and values).
pub fn channels_last(t: &Tensor) -> Tensor {
    t.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

/// Whether the 4-D tensor `t` is dense in NHWC order (dimensions of size 1 may have any stride).
pub fn is_channels_last(t: &Tensor) -> bool {
    if t.dim() != 4 {
        return false;
    }
    let (size, stride) = (t.size(), t.stride());
    let (c, h, w) = (size[1], size[2], size[3]);
    let nhwc = [h * w * c, 1, w * c, c];
    size.iter().zip(&stride).zip(nhwc).all(|((&n, &s), want)| n == 1 || s == want)
}

/// Whether `t` is stored channels-last and not also plain contiguous: the tensors whose elements
/// lie in memory in an order other than their logical (row-major) one.
pub fn is_nhwc_only(t: &Tensor) -> bool {
    is_channels_last(t) && !t.is_contiguous()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn a_channels_last_copy_keeps_shape_and_values_and_changes_strides() {
        let t = Tensor::arange(2 * 3 * 4 * 5, (Kind::Float, Device::Cpu)).view([2, 3, 4, 5]);
        let cl = channels_last(&t);
        assert_eq!(cl.size(), t.size());
        assert_eq!(cl.stride(), vec![60, 1, 15, 3]);
        assert!(is_channels_last(&cl) && is_nhwc_only(&cl));
        assert!(!is_channels_last(&t) && !is_nhwc_only(&t));
        assert!(cl.equal(&t));
        // a 1×1 kernel is the same in memory either way: channels-last, and contiguous too
        let k = channels_last(&Tensor::ones([8, 4, 1, 1], (Kind::Float, Device::Cpu)));
        assert!(is_channels_last(&k) && k.is_contiguous() && !is_nhwc_only(&k));
    }

    #[test]
    fn narrow_convolutions_are_refused_and_left_alone() {
        let net = |width| crate::models::build("small_resnet", width, 1, 10, Device::Cpu).unwrap();
        let narrow = net(4);
        let err = to_channels_last(&narrow).unwrap_err().to_string();
        assert!(err.contains("runtime.memory_format") && err.contains("at least 8 channels"), "{err}");
        assert!(narrow.vs().variables().values().all(|t| !is_nhwc_only(t)), "nothing moved");
        let wide = net(8);
        let moved = to_channels_last(&wide).unwrap();
        let nhwc = wide.vs().variables().values().filter(|t| is_nhwc_only(t)).count();
        // the 3×3 convolutions after the stem (a 1-channel stem and the 1×1 shortcuts are the same
        // in memory either way)
        assert!(moved >= 4 && nhwc >= 4, "the 3×3 convolutions move: {moved} moved, {nhwc} NHWC");
    }
}
