//! A small CNN without batch statistics, for data-parallel correctness checks and benchmarks:
//! with no BatchNorm, `n` ranks with batch `B` compute exactly the gradients of one process with
//! batch `n·B`, which is the oracle the distributed tests compare against.
//!
//! ```text
//! conv1  conv3x3(c→w, stride 2) + bias, ReLU    H/2    group 0 (body early)
//! conv2  conv3x3(w→2w, stride 2) + bias, ReLU   H/4    group 1 (body late)
//! head   avg pool, Linear(2w→classes)                  group 2 (head)
//! ```

use tch::nn::{self, Module};

fn conv(p: nn::Path, cin: i64, cout: i64) -> nn::Conv2D {
    nn::conv2d(p, cin, cout, 3, nn::ConvConfig { stride: 2, padding: 1, ..Default::default() })
}

/// Build the network under `p`: its body (image → pooled features) and head (`head.fc`).
pub fn small_cnn(
    p: &nn::Path,
    in_channels: i64,
    width: i64,
    num_classes: i64,
) -> (nn::FuncT<'static>, nn::Linear) {
    let conv1 = conv(p / "conv1", in_channels, width);
    let conv2 = conv(p / "conv2", width, 2 * width);
    let fc = nn::linear(p / "head" / "fc", 2 * width, num_classes, Default::default());
    let body = nn::func_t(move |xs, _train| {
        conv2.forward(&conv1.forward(xs).relu()).relu().adaptive_avg_pool2d([1, 1]).flatten(1, -1)
    });
    (body, fc)
}

/// Layer group of a variable of this model.
pub fn group_of(name: &str) -> usize {
    if name.starts_with("head.") {
        2
    } else if name.starts_with("conv2.") {
        1
    } else {
        0
    }
}
