//! A small ResNet for 28×28 and 32×32 images: a 3×3 stem and two residual stages that halve the
//! resolution and double the width, then global average pooling and a linear head. With one block
//! per stage (`blocks = 1`, the default) it has five 3×3 convolutions; at width 32 it trains an
//! epoch of Fashion-MNIST in well under a minute on 2 cores. `blocks = n` adds n − 1
//! identity-shortcut blocks to each stage, at that stage's resolution and width.
//!
//! ```text
//! stem      conv3x3(c→w) BN ReLU                   H×W      group 0 (body early)
//! block1    BasicBlock(w→2w, stride 2)             H/2      group 0
//! block1_k  BasicBlock(2w→2w), k = 1 … blocks−1    H/2      group 0
//! block2    BasicBlock(2w→4w, stride 2)            H/4      group 1 (body late)
//! block2_k  BasicBlock(4w→4w), k = 1 … blocks−1    H/4      group 1
//! head      avg pool, Linear(4w→classes)                    group 2 (head)
//! ```
//! Names match the PyTorch twin in `bench/pytorch_step.py` (`stem.conv`, `block1.conv1`,
//! `block1_1.conv1`, …).

use tch::nn::{self, ModuleT};

use super::layers::{bn, FrozenGroups};

fn conv(p: nn::Path, cin: i64, cout: i64, k: i64, stride: i64) -> nn::Conv2D {
    nn::conv2d(p, cin, cout, k, nn::ConvConfig { stride, padding: k / 2, bias: false, ..Default::default() })
}

/// A downsampling block (`stride` 2, a 1×1 convolution on the shortcut) or, with `stride` 1 and
/// `cin == cout`, an identity-shortcut block.
fn basic_block(
    p: nn::Path,
    cin: i64,
    cout: i64,
    stride: i64,
    group: usize,
    f: &FrozenGroups,
) -> impl ModuleT {
    let conv1 = conv(&p / "conv1", cin, cout, 3, stride);
    let bn1 = bn(&p / "bn1", cout, group, f);
    let conv2 = conv(&p / "conv2", cout, cout, 3, 1);
    let bn2 = bn(&p / "bn2", cout, group, f);
    let shortcut = (stride != 1 || cin != cout).then(|| {
        (conv(&p / "shortcut" / "conv", cin, cout, 1, stride), bn(&p / "shortcut" / "bn", cout, group, f))
    });
    nn::func_t(move |xs, train| {
        let ys = xs.apply(&conv1).apply_t(&bn1, train).relu().apply(&conv2).apply_t(&bn2, train);
        match &shortcut {
            Some((sc_conv, sc_bn)) => (ys + xs.apply(sc_conv).apply_t(sc_bn, train)).relu(),
            None => (ys + xs).relu(),
        }
    })
}

/// A stage: the downsampling block `name` (`cin → cout`) then `blocks − 1` identity blocks
/// `name_1`, `name_2`, ….
fn stage(
    p: &nn::Path,
    name: &str,
    (cin, cout): (i64, i64),
    blocks: i64,
    group: usize,
    f: &FrozenGroups,
) -> nn::SequentialT {
    let mut seq = nn::seq_t().add(basic_block(p / name, cin, cout, 2, group, f));
    for k in 1..blocks {
        seq = seq.add(basic_block(p / format!("{name}_{k}"), cout, cout, 1, group, f));
    }
    seq
}

/// Build the network under `p`: its body (image → pooled features) and head (`head.fc`).
pub fn small_resnet(
    p: &nn::Path,
    in_channels: i64,
    (width, blocks): (i64, i64),
    num_classes: i64,
    f: &FrozenGroups,
) -> (nn::FuncT<'static>, nn::Linear) {
    let stem_conv = conv(p / "stem" / "conv", in_channels, width, 3, 1);
    let stem_bn = bn(p / "stem" / "bn", width, 0, f);
    let block1 = stage(p, "block1", (width, 2 * width), blocks, 0, f);
    let block2 = stage(p, "block2", (2 * width, 4 * width), blocks, 1, f);
    let fc = nn::linear(p / "head" / "fc", 4 * width, num_classes, Default::default());
    let body = nn::func_t(move |xs, train| {
        xs.apply(&stem_conv)
            .apply_t(&stem_bn, train)
            .relu()
            .apply_t(&block1, train)
            .apply_t(&block2, train)
            .adaptive_avg_pool2d([1, 1])
            .flatten(1, -1)
    });
    (body, fc)
}

/// Layer group of a variable of this model.
pub fn group_of(name: &str) -> usize {
    if name.starts_with("head.") {
        2
    } else if name.starts_with("block2.") || name.starts_with("block2_") {
        1
    } else {
        0
    }
}
