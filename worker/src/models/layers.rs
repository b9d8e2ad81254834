//! Building blocks shared by the torchvision-named models: convolutions without bias, and a
//! BatchNorm that knows its layer group and stays in evaluation mode (running statistics used,
//! not updated) while that group is frozen, as fastai does for a frozen body.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tch::nn::{self, ModuleT};
use tch::Tensor;

/// How many layer groups are frozen now; shared by the model's BatchNorms and [`super::Net`].
pub type FrozenGroups = Arc<AtomicUsize>;

/// BatchNorm2d under torchvision's names (`weight`, `bias`, `running_mean`, `running_var`).
#[derive(Debug)]
pub struct GroupBn {
    bn: nn::BatchNorm,
    group: usize,
    frozen: FrozenGroups,
}

impl ModuleT for GroupBn {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let train = train && self.group >= self.frozen.load(Ordering::Relaxed);
        self.bn.forward_t(xs, train)
    }
}

/// A BatchNorm of `c` channels in layer group `group`.
pub fn bn(p: nn::Path, c: i64, group: usize, frozen: &FrozenGroups) -> GroupBn {
    GroupBn { bn: nn::batch_norm2d(p, c, Default::default()), group, frozen: Arc::clone(frozen) }
}

/// A `k×k` convolution without bias, padding `k/2`, with `groups` channel groups.
pub fn conv(p: nn::Path, cin: i64, cout: i64, k: i64, stride: i64, groups: i64) -> nn::Conv2D {
    let cfg = nn::ConvConfig { stride, padding: k / 2, bias: false, groups, ..Default::default() };
    nn::conv2d(p, cin, cout, k, cfg)
}
