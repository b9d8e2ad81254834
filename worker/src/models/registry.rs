//! The one table of model architectures: a name and the function that builds it. A new
//! architecture is its own file plus one line here (and its name in core's `KNOWN_ARCHS`, which
//! the coordinator validates specs against; a test keeps the two lists equal).

use tch::nn;

use super::layers::FrozenGroups;
use super::resnet::ResNetCfg;
use super::{resnet, small_cnn, small_resnet, vgg, BoxedModule, GroupFn};

/// What a builder is asked for.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub in_channels: i64,
    /// Base width of the models that have one (`small_resnet`, `small_cnn`).
    pub width: i64,
    /// Residual blocks per stage (`small_resnet`; 1 elsewhere, where validation keeps it).
    pub blocks: i64,
    pub num_classes: i64,
}

/// A built model: body (image → features), head (features → logits), the input channels it
/// takes and the layer group of each variable name.
pub struct Built {
    pub body: BoxedModule,
    pub head: BoxedModule,
    pub in_channels: i64,
    pub group_of: GroupFn,
}

type Builder = fn(&nn::Path, Shape, &FrozenGroups) -> Built;

fn torchvision_resnet(cfg: ResNetCfg, root: &nn::Path, s: Shape, f: &FrozenGroups) -> Built {
    let (body, head) = resnet::resnet(root, cfg, s.num_classes, f);
    Built { body: Box::new(body), head: Box::new(head), in_channels: 3, group_of: resnet::group_of }
}

fn vgg16(bn: bool, root: &nn::Path, s: Shape, f: &FrozenGroups) -> Built {
    let (body, head) = vgg::vgg16(root, bn, s.num_classes, f);
    let group_of = if bn { vgg::group_of_bn } else { vgg::group_of };
    Built { body: Box::new(body), head: Box::new(head), in_channels: 3, group_of }
}

/// Every architecture a worker can build, by name.
pub const ARCHS: &[(&str, Builder)] = &[
    ("small_resnet", |root, s, f| {
        let (body, head) =
            small_resnet::small_resnet(root, s.in_channels, (s.width, s.blocks), s.num_classes, f);
        Built {
            body: Box::new(body),
            head: Box::new(head),
            in_channels: s.in_channels,
            group_of: small_resnet::group_of,
        }
    }),
    ("small_cnn", |root, s, _| {
        let (body, head) = small_cnn::small_cnn(root, s.in_channels, s.width, s.num_classes);
        Built {
            body: Box::new(body),
            head: Box::new(head),
            in_channels: s.in_channels,
            group_of: small_cnn::group_of,
        }
    }),
    ("resnet18", |root, s, f| torchvision_resnet(ResNetCfg::RESNET18, root, s, f)),
    ("resnet34", |root, s, f| torchvision_resnet(ResNetCfg::RESNET34, root, s, f)),
    ("resnet50", |root, s, f| torchvision_resnet(ResNetCfg::RESNET50, root, s, f)),
    ("resnext50_32x4d", |root, s, f| torchvision_resnet(ResNetCfg::RESNEXT50_32X4D, root, s, f)),
    ("vgg16", |root, s, f| vgg16(false, root, s, f)),
    ("vgg16_bn", |root, s, f| vgg16(true, root, s, f)),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_builds_exactly_the_architectures_specs_may_name() {
        let mut ours: Vec<&str> = ARCHS.iter().map(|(n, _)| *n).collect();
        let mut known: Vec<&str> = cyclotron_core::spec::KNOWN_ARCHS.to_vec();
        ours.sort_unstable();
        known.sort_unstable();
        assert_eq!(ours, known);
    }
}
