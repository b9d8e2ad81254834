//! Models, each split into three layer groups for discriminative learning rates and freezing:
//! body early (0), body late (1), head (2). A group is a set of VarStore variable names, chosen by
//! name prefix, so the split also works for weights loaded from elsewhere.

mod layers;
pub mod pretrained;
pub mod resnet;
mod small_cnn;
mod small_resnet;
pub mod vgg;

use std::sync::atomic::Ordering;

use tch::{nn, Device, Tensor};

use layers::FrozenGroups;

use crate::error::{Error, Result};

pub use small_resnet::small_resnet;

/// Number of layer groups every model has.
pub const GROUPS: usize = cyclotron_core::spec::LAYER_GROUPS;
pub const GROUP_NAMES: [&str; GROUPS] = ["body_early", "body_late", "head"];

type BoxedModule = Box<dyn nn::ModuleT + Send>;
/// Maps a variable name to its layer group.
type GroupFn = fn(&str) -> usize;

/// A model: its variables, its forward pass, and the layer group of each variable.
pub struct Net {
    pub vs: nn::VarStore,
    /// The body (image → features) when `head` is set, else the whole model.
    module: BoxedModule,
    /// The head (features → logits), for precompute; see [`Net::forward_body`].
    head: Option<BoxedModule>,
    /// Frozen layer groups, shared with the BatchNorms (which stay in eval mode when frozen).
    frozen: FrozenGroups,
    /// Input channels the model was built for; grey images are repeated to 3 channels when needed.
    pub in_channels: i64,
    group_of: GroupFn,
    pub arch: String,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net").field("arch", &self.arch).field("in_channels", &self.in_channels).finish()
    }
}

impl Net {
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let ys = self.body_t(xs, train);
        match &self.head {
            Some(h) => h.forward_t(&ys, train),
            None => ys,
        }
    }

    fn body_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let c = xs.size()[1];
        if c == 1 && self.in_channels == 3 {
            return self.module.forward_t(&xs.expand([-1, 3, -1, -1], false), train);
        }
        self.module.forward_t(xs, train)
    }

    /// Whether the model has a body/head split (every built-in model does).
    pub fn has_split(&self) -> bool {
        self.head.is_some()
    }

    /// Features of the body, [N, D]; with the body frozen this is what precompute caches.
    /// Panics on a model without a split ([`Net::has_split`]).
    pub fn forward_body(&self, xs: &Tensor, train: bool) -> Tensor {
        assert!(self.has_split(), "{} has no body/head split", self.arch);
        self.body_t(xs, train)
    }

    /// Logits of the head on body features.
    pub fn forward_head(&self, features: &Tensor, train: bool) -> Tensor {
        let head = self.head.as_ref().unwrap_or_else(|| panic!("{} has no body/head split", self.arch));
        head.forward_t(features, train)
    }

    /// Layer group of a variable, by name.
    pub fn group_of(&self, name: &str) -> usize {
        (self.group_of)(name)
    }

    /// Variables sorted by name with their group: a stable order for optimisers and checkpoints.
    pub fn named_groups(&self) -> Vec<(String, usize, Tensor)> {
        let mut vars: Vec<_> = self.vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars.into_iter().map(|(name, t)| (name.clone(), (self.group_of)(&name), t)).collect()
    }

    /// Trainable parameters (buffers such as BatchNorm running statistics left out), sorted by name.
    pub fn parameters(&self) -> Vec<(String, usize, Tensor)> {
        self.named_groups().into_iter().filter(|(n, _, _)| !is_buffer(n)).collect()
    }

    /// Make groups `< frozen` untrainable and the rest trainable.
    /// BatchNorms of frozen groups stay in evaluation mode (running statistics kept).
    pub fn freeze_to(&self, frozen: usize) {
        self.frozen.store(frozen, Ordering::Relaxed);
        for (_, g, t) in self.parameters() {
            let _ = t.set_requires_grad(g >= frozen);
        }
    }

    pub fn num_parameters(&self) -> i64 {
        self.vs.trainable_variables().iter().map(|t| t.numel() as i64).sum()
    }
}

/// Build `arch` for `in_channels`-channel images and `num_classes` classes on `device`.
pub fn build(arch: &str, width: i64, in_channels: i64, num_classes: i64, device: Device) -> Result<Net> {
    let vs = nn::VarStore::new(device);
    let root = vs.root();
    let frozen = FrozenGroups::default();
    let f = &frozen;
    let (module, head, in_ch, group_of): (BoxedModule, BoxedModule, i64, GroupFn) = match arch {
        "small_resnet" => {
            let (body, head) = small_resnet(&root, in_channels, width, num_classes, f);
            (Box::new(body), Box::new(head), in_channels, small_resnet::group_of)
        }
        "small_cnn" => {
            let (body, head) = small_cnn::small_cnn(&root, in_channels, width, num_classes);
            (Box::new(body), Box::new(head), in_channels, small_cnn::group_of)
        }
        "vgg16" | "vgg16_bn" => {
            let bn = arch == "vgg16_bn";
            let (body, head) = vgg::vgg16(&root, bn, num_classes, f);
            (Box::new(body), Box::new(head), 3, if bn { vgg::group_of_bn } else { vgg::group_of })
        }
        other => match resnet::ResNetCfg::of(other) {
            Some(cfg) => {
                let (body, head) = resnet::resnet(&root, cfg, num_classes, f);
                (Box::new(body), Box::new(head), 3, resnet::group_of)
            }
            None => return Err(Error::UnknownModel { arch: other.to_string() }),
        },
    };
    if in_channels != in_ch && in_channels != 1 {
        return Err(Error::Shape {
            message: format!("{arch} takes {in_ch}-channel images, the data has {in_channels} channels"),
        });
    }
    Ok(Net { vs, module, head: Some(head), frozen, in_channels: in_ch, group_of, arch: arch.to_string() })
}

/// Variables that are state, not parameters: never trained, never given gradients.
pub fn is_buffer(name: &str) -> bool {
    name.ends_with("running_mean") || name.ends_with("running_var") || name.ends_with("num_batches_tracked")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_model_has_three_nonempty_groups_and_the_right_output() {
        for (arch, ch, hw) in
            [("small_resnet", 1, 28), ("small_cnn", 1, 28), ("resnet18", 3, 32), ("resnet34", 1, 32)]
        {
            let net = build(arch, 8, ch, 7, Device::Cpu).unwrap();
            let mut counts = [0usize; GROUPS];
            for (_, g, _) in net.named_groups() {
                counts[g] += 1;
            }
            assert!(counts.iter().all(|&c| c > 0), "{arch}: groups {counts:?}");
            let x = Tensor::randn([2, ch, hw, hw], (tch::Kind::Float, Device::Cpu));
            assert_eq!(net.forward_t(&x, false).size(), vec![2, 7], "{arch}");
        }
    }

    #[test]
    fn torchvision_names_are_kept() {
        let net = build("resnet18", 1, 3, 10, Device::Cpu).unwrap();
        let names: Vec<String> = net.named_groups().into_iter().map(|(n, _, _)| n).collect();
        for want in
            ["conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer4.1.bn2.bias", "fc.weight"]
        {
            assert!(names.iter().any(|n| n == want), "missing {want}");
        }
        assert_eq!(net.group_of("layer2.0.conv1.weight"), 0);
        assert_eq!(net.group_of("layer3.0.conv1.weight"), 1);
        assert_eq!(net.group_of("fc.bias"), 2);
    }

    #[test]
    fn freezing_stops_gradients_of_frozen_groups() {
        let net = build("small_resnet", 4, 1, 10, Device::Cpu).unwrap();
        net.freeze_to(2);
        net.freeze_to(0); // unfreezing must leave BatchNorm buffers alone
        net.freeze_to(2);
        let x = Tensor::randn([2, 1, 28, 28], (tch::Kind::Float, Device::Cpu));
        net.forward_t(&x, true).sum(tch::Kind::Float).backward();
        for (name, g, t) in net.parameters() {
            assert_eq!(t.grad().defined(), g == 2, "{name} (group {g})");
        }
    }

    #[test]
    fn unknown_arch_is_an_error() {
        let e = build("vgg99", 8, 3, 10, Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("vgg99"), "{e}");
    }
}
