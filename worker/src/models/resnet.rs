//! ResNet-18/34/50 and ResNeXt-50 (32×4d) with torchvision's parameter names (`conv1`, `bn1`,
//! `layer1.0.conv1`, `layer2.0.downsample.0`, `fc`, …), so torchvision state dicts saved as
//! safetensors load as they are. The stride of a bottleneck sits on its 3×3 convolution
//! (torchvision's "ResNet v1.5"); ResNeXt is the bottleneck with 32 groups of width 4.
//!
//! Split for transfer learning: the body ends with global average pooling and flattening;
//! the head is `fc`. Layer groups: stem, layer1, layer2 (0); layer3, layer4 (1); fc (2).

use tch::nn;

use super::layers::{bn, conv, FrozenGroups};

/// The shape of one ResNet family member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResNetCfg {
    pub blocks: [i64; 4],
    pub bottleneck: bool,
    /// Convolution groups of the 3×3 convolutions (32 for ResNeXt).
    pub groups: i64,
    pub width_per_group: i64,
}

impl ResNetCfg {
    pub const RESNET18: ResNetCfg = ResNetCfg::new([2, 2, 2, 2], false, 1, 64);
    pub const RESNET34: ResNetCfg = ResNetCfg::new([3, 4, 6, 3], false, 1, 64);
    pub const RESNET50: ResNetCfg = ResNetCfg::new([3, 4, 6, 3], true, 1, 64);
    pub const RESNEXT50_32X4D: ResNetCfg = ResNetCfg::new([3, 4, 6, 3], true, 32, 4);

    const fn new(blocks: [i64; 4], bottleneck: bool, groups: i64, width_per_group: i64) -> ResNetCfg {
        ResNetCfg { blocks, bottleneck, groups, width_per_group }
    }

    pub fn of(arch: &str) -> Option<ResNetCfg> {
        Some(match arch {
            "resnet18" => Self::RESNET18,
            "resnet34" => Self::RESNET34,
            "resnet50" => Self::RESNET50,
            "resnext50_32x4d" => Self::RESNEXT50_32X4D,
            _ => return None,
        })
    }

    fn expansion(&self) -> i64 {
        if self.bottleneck {
            4
        } else {
            1
        }
    }
}

fn block(
    p: nn::Path,
    cfg: ResNetCfg,
    cin: i64,
    planes: i64,
    stride: i64,
    g: usize,
    f: &FrozenGroups,
) -> nn::FuncT<'static> {
    let cout = planes * cfg.expansion();
    let down = (stride != 1 || cin != cout).then(|| {
        (conv(&p / "downsample" / "0", cin, cout, 1, stride, 1), bn(&p / "downsample" / "1", cout, g, f))
    });
    if cfg.bottleneck {
        let width = planes * cfg.width_per_group / 64 * cfg.groups;
        let c1 = conv(&p / "conv1", cin, width, 1, 1, 1);
        let b1 = bn(&p / "bn1", width, g, f);
        let c2 = conv(&p / "conv2", width, width, 3, stride, cfg.groups);
        let b2 = bn(&p / "bn2", width, g, f);
        let c3 = conv(&p / "conv3", width, cout, 1, 1, 1);
        let b3 = bn(&p / "bn3", cout, g, f);
        nn::func_t(move |xs, train| {
            let ys = xs.apply(&c1).apply_t(&b1, train).relu();
            let ys = ys.apply(&c2).apply_t(&b2, train).relu().apply(&c3).apply_t(&b3, train);
            let id = match &down {
                Some((c, b)) => xs.apply(c).apply_t(b, train),
                None => xs.shallow_clone(),
            };
            (ys + id).relu()
        })
    } else {
        let c1 = conv(&p / "conv1", cin, cout, 3, stride, 1);
        let b1 = bn(&p / "bn1", cout, g, f);
        let c2 = conv(&p / "conv2", cout, cout, 3, 1, 1);
        let b2 = bn(&p / "bn2", cout, g, f);
        nn::func_t(move |xs, train| {
            let ys = xs.apply(&c1).apply_t(&b1, train).relu().apply(&c2).apply_t(&b2, train);
            let id = match &down {
                Some((c, b)) => xs.apply(c).apply_t(b, train),
                None => xs.shallow_clone(),
            };
            (ys + id).relu()
        })
    }
}

/// Body (image → pooled features) and head (`fc`) of `cfg` under `p`.
pub fn resnet(
    p: &nn::Path,
    cfg: ResNetCfg,
    num_classes: i64,
    f: &FrozenGroups,
) -> (nn::FuncT<'static>, nn::Linear) {
    let conv1 = nn::conv2d(
        p / "conv1",
        3,
        64,
        7,
        nn::ConvConfig { stride: 2, padding: 3, bias: false, ..Default::default() },
    );
    let bn1 = bn(p / "bn1", 64, 0, f);
    let mut layers = vec![];
    let mut cin = 64;
    for (i, (&n, planes)) in cfg.blocks.iter().zip([64, 128, 256, 512]).enumerate() {
        let group = if i < 2 { 0 } else { 1 };
        let lp = p / format!("layer{}", i + 1);
        let mut seq = nn::seq_t();
        for b in 0..n {
            let stride = if b == 0 && i > 0 { 2 } else { 1 };
            seq = seq.add(block(&lp / b.to_string(), cfg, cin, planes, stride, group, f));
            cin = planes * cfg.expansion();
        }
        layers.push(seq);
    }
    let fc = nn::linear(p / "fc", cin, num_classes, Default::default());
    let body = nn::func_t(move |xs, train| {
        let mut ys =
            xs.apply(&conv1).apply_t(&bn1, train).relu().max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        for l in &layers {
            ys = ys.apply_t(l, train);
        }
        ys.adaptive_avg_pool2d([1, 1]).flatten(1, -1)
    });
    (body, fc)
}

/// Layer group of a torchvision ResNet variable.
pub fn group_of(name: &str) -> usize {
    if name.starts_with("fc.") {
        2
    } else if name.starts_with("layer3.") || name.starts_with("layer4.") {
        1
    } else {
        0
    }
}
