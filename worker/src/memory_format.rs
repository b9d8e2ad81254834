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

use cyclotron_core::spec::{MemoryFormat, TORCHSCRIPT_ARCH};
use tch::{Device, Tensor};

use crate::models::Model;

/// Whether `format` means channels-last for a model of `arch` on `device`, and why (for the log).
pub fn resolve(format: MemoryFormat, arch: &str, device: Device) -> (bool, &'static str) {
    match format {
        MemoryFormat::ChannelsLast => (true, "as the spec says"),
        MemoryFormat::Contiguous => (false, "as the spec says"),
        MemoryFormat::Auto if arch == TORCHSCRIPT_ARCH => {
            (false, "a TorchScript model's code may view activations, which needs the default layout")
        }
        MemoryFormat::Auto if device == Device::Cpu => {
            (true, "oneDNN's NHWC convolutions are the faster ones on a CPU")
        }
        MemoryFormat::Auto => (false, "channels-last is not measured on this device yet"),
    }
}

/// Lay every 4-D floating-point variable of `model` out channels-last; returns how many moved.
/// Call before an optimiser is made over the model (its buffers take the layout they find).
pub fn to_channels_last(model: &dyn Model) -> usize {
    let _guard = tch::no_grad_guard();
    let mut moved = 0;
    for (_, mut t) in model.vs().variables() {
        if t.dim() == 4 && t.is_floating_point() && !is_channels_last(&t) {
            t.set_data(&channels_last(&t));
            moved += 1;
        }
    }
    moved
}

/// A channels-last copy of the 4-D tensor `t` (same shape and values).
pub fn channels_last(t: &Tensor) -> Tensor {
    t.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

/// Whether the 4-D tensor `t` is dense in NHWC order (dimensions of size 1 may have any stride).
pub fn is_channels_last(t: &Tensor) -> bool {
    t.dim() == 4 && strides_match(&t.size(), &t.stride(), &nhwc_strides(&t.size()))
}

/// Whether `t` is stored channels-last and not also plain contiguous: the tensors whose elements
/// lie in memory in an order other than their logical (row-major) one.
pub fn is_nhwc_only(t: &Tensor) -> bool {
    is_channels_last(t) && !t.is_contiguous()
}

/// The strides of a dense NHWC tensor of NCHW `shape`.
pub fn nhwc_strides(shape: &[i64]) -> Vec<i64> {
    let (c, h, w) = (shape[1], shape[2], shape[3]);
    vec![h * w * c, 1, w * c, c]
}

fn strides_match(shape: &[i64], strides: &[i64], want: &[i64]) -> bool {
    shape.iter().zip(strides).zip(want).all(|((&n, &s), &w)| n == 1 || s == w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

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
    fn auto_is_channels_last_on_a_cpu_for_built_in_models_only() {
        assert!(resolve(MemoryFormat::Auto, "small_resnet", Device::Cpu).0);
        assert!(!resolve(MemoryFormat::Auto, TORCHSCRIPT_ARCH, Device::Cpu).0);
        assert!(!resolve(MemoryFormat::Auto, "small_resnet", Device::Cuda(0)).0);
        assert!(resolve(MemoryFormat::ChannelsLast, TORCHSCRIPT_ARCH, Device::Cuda(0)).0);
        assert!(!resolve(MemoryFormat::Contiguous, "small_resnet", Device::Cpu).0);
    }
}
