//! VGG-16, with and without BatchNorm, under torchvision's names: `features.<i>` numbered as
//! torchvision's `nn.Sequential` numbers them (ReLUs and max-pools take indices too), an
//! adaptive average pool to 7×7, and `classifier.{0,3,6}` (dropouts at 2 and 5).
//!
//! Split for transfer learning: the body ends with the 7×7 pool, flattened (25,088 features);
//! the head is the whole classifier. Layer groups: the first three conv blocks (0), the last two
//! (1), the classifier (2). Inputs of at least 32×32 pixels.

use tch::nn;

use super::layers::{bn, FrozenGroups};

/// VGG-16's configuration "D": channels of each 3×3 convolution, 0 for a 2×2 max-pool.
const VGG16: [i64; 18] = [64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0];

/// First `features` index of layer group 1 (after the third max-pool).
const fn boundary(batch_norm: bool) -> usize {
    if batch_norm {
        24
    } else {
        17
    }
}

/// Body (image → flattened 512×7×7 features) and head (classifier) under `p`.
pub fn vgg16(
    p: &nn::Path,
    batch_norm: bool,
    num_classes: i64,
    f: &FrozenGroups,
) -> (nn::SequentialT, nn::SequentialT) {
    let fp = p / "features";
    let mut body = nn::seq_t();
    let (mut index, mut cin) = (0usize, 3i64);
    for &c in &VGG16 {
        if c == 0 {
            body = body.add_fn(|xs| xs.max_pool2d_default(2));
            index += 1;
            continue;
        }
        let group = usize::from(index >= boundary(batch_norm));
        let cfg = nn::ConvConfig { padding: 1, ..Default::default() };
        body = body.add(nn::conv2d(&fp / index.to_string(), cin, c, 3, cfg));
        index += 1;
        if batch_norm {
            body = body.add(bn(&fp / index.to_string(), c, group, f));
            index += 1;
        }
        body = body.add_fn(|xs| xs.relu());
        index += 1;
        cin = c;
    }
    let body = body.add_fn(|xs| xs.adaptive_avg_pool2d([7, 7]).flatten(1, -1));
    let cp = p / "classifier";
    let head = nn::seq_t()
        .add(nn::linear(&cp / "0", 512 * 7 * 7, 4096, Default::default()))
        .add_fn(|xs| xs.relu())
        .add_fn_t(|xs, train| xs.dropout(0.5, train))
        .add(nn::linear(&cp / "3", 4096, 4096, Default::default()))
        .add_fn(|xs| xs.relu())
        .add_fn_t(|xs, train| xs.dropout(0.5, train))
        .add(nn::linear(&cp / "6", 4096, num_classes, Default::default()));
    (body, head)
}

fn group(name: &str, batch_norm: bool) -> usize {
    if name.starts_with("classifier.") {
        return 2;
    }
    let index = name
        .strip_prefix("features.")
        .and_then(|r| r.split('.').next())
        .and_then(|i| i.parse::<usize>().ok());
    match index {
        Some(i) if i >= boundary(batch_norm) => 1,
        _ => 0,
    }
}

/// Layer group of a VGG-16 variable.
pub fn group_of(name: &str) -> usize {
    group(name, false)
}

/// Layer group of a VGG-16-BN variable.
pub fn group_of_bn(name: &str) -> usize {
    group(name, true)
}
