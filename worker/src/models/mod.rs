//! Models, each split into three layer groups for discriminative learning rates and freezing:
//! body early (0), body late (1), head (2). A group is a set of VarStore variable names, chosen by
//! name prefix, so the split also works for weights loaded from elsewhere.

mod layers;
pub mod lstm;
pub mod module_buffers;
pub mod pretrained;
mod registry;
pub mod resnet;
mod small_cnn;
mod small_resnet;
pub mod tabular;
pub mod torchscript;
pub mod vgg;

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use tch::{nn, Device, Tensor};

use layers::FrozenGroups;

use crate::error::{Error, Result};

pub use registry::{Built, ARCHS};
pub use small_resnet::small_resnet;

/// Number of layer groups every model has.
pub const GROUPS: usize = cyclotron_core::spec::LAYER_GROUPS;
pub const GROUP_NAMES: [&str; GROUPS] = ["body_early", "body_late", "head"];

type BoxedModule = Box<dyn nn::ModuleT + Send>;
/// Maps a variable name to its layer group.
pub type GroupFn = fn(&str) -> usize;

/// What the learner sees of any model, whatever its forward pass: its variables and the layer
/// group of each (for the optimiser, discriminative learning rates, freezing, checkpoints and
/// gradient averaging). Tasks own the forward pass.
pub trait Model {
    /// Every variable, buffers included.
    fn vs(&self) -> &nn::VarStore;

    /// Layer group of a variable, by name.
    fn group_of(&self, name: &str) -> usize;

    /// Make groups `< frozen` untrainable and the rest trainable.
    fn freeze_to(&self, frozen: usize);

    /// Variables sorted by name with their group: a stable order for optimisers and checkpoints.
    fn named_groups(&self) -> Vec<(String, usize, Tensor)> {
        let mut vars: Vec<_> = self.vs().variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars.into_iter().map(|(name, t)| (name.clone(), self.group_of(&name), t)).collect()
    }

    /// Whether variable `name` is a parameter (not a buffer such as a BatchNorm running statistic).
    fn is_parameter(&self, name: &str) -> bool {
        !is_buffer(name)
    }

    /// Trainable parameters (buffers such as BatchNorm running statistics left out), sorted by name.
    fn parameters(&self) -> Vec<(String, usize, Tensor)> {
        self.named_groups().into_iter().filter(|(n, _, _)| self.is_parameter(n)).collect()
    }

    /// Number of trainable values.
    fn num_parameters(&self) -> i64 {
        self.vs().trainable_variables().iter().map(|t| t.numel() as i64).sum()
    }
}

/// Sets `requires_grad` of `model`'s parameters: groups `< frozen` off, the rest on.
pub fn set_trainable(model: &dyn Model, frozen: usize) {
    for (_, g, t) in model.parameters() {
        let _ = t.set_requires_grad(g >= frozen);
    }
}

/// What computes an image model's logits.
enum Forward {
    /// A built-in architecture: the body (image → features) and the head (features → logits),
    /// apart for precompute; see [`Net::forward_body`].
    Native { body: BoxedModule, head: BoxedModule },
    /// A user's TorchScript module (image → logits), one piece.
    Script(torchscript::ScriptModule),
}

/// The layer group of each variable: a built-in architecture's rule, or a TorchScript module's
/// table (resolved when it was loaded).
enum Groups {
    Rule(GroupFn),
    Table(HashMap<String, usize>),
}

/// An image model: its variables, its forward pass, and the layer group of each variable.
pub struct Net {
    pub vs: nn::VarStore,
    forward: Forward,
    /// Frozen layer groups, shared with the BatchNorms (which stay in eval mode when frozen).
    frozen: FrozenGroups,
    /// Input channels the model was built for; grey images are repeated to 3 channels when needed.
    pub in_channels: i64,
    groups: Groups,
    pub arch: String,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net").field("arch", &self.arch).field("in_channels", &self.in_channels).finish()
    }
}

impl Net {
    /// Logits [N, classes] of images [N, C, H, W]; a TorchScript module's failure (or output of
    /// another shape) is an error naming what was expected.
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        match &self.forward {
            Forward::Native { head, .. } => Ok(head.forward_t(&self.forward_body(xs, train)?, train)),
            Forward::Script(module) => module.forward(xs, train),
        }
    }

    /// Features of the body, [N, D]; with the body frozen this is what precompute caches.
    pub fn forward_body(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let Forward::Native { body, .. } = &self.forward else { return Err(no_body_and_head()) };
        let c = xs.size()[1];
        if c == 1 && self.in_channels == 3 {
            return Ok(body.forward_t(&xs.expand([-1, 3, -1, -1], false), train));
        }
        Ok(body.forward_t(xs, train))
    }

    /// Logits of the head on body features.
    pub fn forward_head(&self, features: &Tensor, train: bool) -> Result<Tensor> {
        let Forward::Native { head, .. } = &self.forward else { return Err(no_body_and_head()) };
        Ok(head.forward_t(features, train))
    }

    /// The TorchScript module as it is now (buffers included), in `torch.jit.save`'s format;
    /// `None` for a built-in architecture.
    pub fn script_bytes(&self) -> Result<Option<Vec<u8>>> {
        match &self.forward {
            Forward::Native { .. } => Ok(None),
            Forward::Script(module) => module.to_bytes().map(Some),
        }
    }
}

fn no_body_and_head() -> Error {
    Error::Invalid {
        what: "precompute".into(),
        message: "not with model.torchscript (the module is one piece, not a body and a head)".into(),
    }
}

impl Model for Net {
    fn vs(&self) -> &nn::VarStore {
        &self.vs
    }

    fn group_of(&self, name: &str) -> usize {
        match &self.groups {
            Groups::Rule(f) => f(name),
            Groups::Table(t) => t.get(name).copied().unwrap_or(GROUPS - 1),
        }
    }

    /// A TorchScript module's parameters are those it lists (its buffers may have any name).
    fn is_parameter(&self, name: &str) -> bool {
        match &self.groups {
            Groups::Rule(_) => !is_buffer(name),
            Groups::Table(t) => t.contains_key(name),
        }
    }

    /// BatchNorms of frozen groups stay in evaluation mode (running statistics kept).
    fn freeze_to(&self, frozen: usize) {
        self.frozen.store(frozen, Ordering::Relaxed);
        set_trainable(self, frozen);
    }
}

/// Build `arch` (looked up in [`ARCHS`]) for `in_channels`-channel images and `num_classes`
/// classes on `device`.
pub fn build(arch: &str, width: i64, in_channels: i64, num_classes: i64, device: Device) -> Result<Net> {
    build_with_blocks(arch, (width, 1), in_channels, num_classes, device)
}

/// Build the model a job spec's `[model]` names (arch, width, blocks) for `in_channels`-channel
/// images and `num_classes` classes on `device`.
pub fn build_for(
    model: &cyclotron_core::spec::ModelSpec,
    in_channels: i64,
    num_classes: i64,
    device: Device,
) -> Result<Net> {
    let shape = registry::Shape { in_channels, width: model.width, blocks: model.blocks, num_classes };
    build_shaped(&model.arch, shape, device)
}

/// [`build`] with `blocks` residual blocks per stage (`small_resnet`'s `[model] blocks`).
pub fn build_with_blocks(
    arch: &str,
    (width, blocks): (i64, i64),
    in_channels: i64,
    num_classes: i64,
    device: Device,
) -> Result<Net> {
    build_shaped(arch, registry::Shape { in_channels, width, blocks, num_classes }, device)
}

fn build_shaped(arch: &str, shape: registry::Shape, device: Device) -> Result<Net> {
    let Some((_, builder)) = ARCHS.iter().find(|(name, _)| *name == arch) else {
        return Err(Error::UnknownModel { arch: arch.to_string() });
    };
    let vs = nn::VarStore::new(device);
    let frozen = FrozenGroups::default();
    let in_channels = shape.in_channels;
    let Built { body, head, in_channels: in_ch, group_of } = builder(&vs.root(), shape, &frozen);
    if in_channels != in_ch && in_channels != 1 {
        return Err(Error::Shape {
            message: format!("{arch} takes {in_ch}-channel images, the data has {in_channels} channels"),
        });
    }
    Ok(Net {
        vs,
        forward: Forward::Native { body, head },
        frozen,
        in_channels: in_ch,
        groups: Groups::Rule(group_of),
        arch: arch.to_string(),
    })
}

/// The user's TorchScript module in `bytes` (`what` names them in errors), for images of shape
/// `input` ([C, H, W]) and `num_classes` classes on `device`, layer groups by `groups` (see
/// [`torchscript`]); checked on two blank images before it is returned.
pub fn build_torchscript(
    bytes: &[u8],
    what: &str,
    groups: Option<&[Vec<String>]>,
    input: [i64; 3],
    num_classes: i64,
    device: Device,
) -> Result<Net> {
    let vs = nn::VarStore::new(device);
    let (module, table) = torchscript::load(bytes, what, groups, num_classes, &vs)?;
    torchscript::probe(&module, input, device)?;
    Ok(Net {
        vs,
        forward: Forward::Script(module),
        frozen: FrozenGroups::default(),
        in_channels: input[0],
        groups: Groups::Table(table),
        arch: cyclotron_core::spec::TORCHSCRIPT_ARCH.into(),
    })
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
            assert_eq!(net.forward_t(&x, false).unwrap().size(), vec![2, 7], "{arch}");
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
        net.forward_t(&x, true).unwrap().sum(tch::Kind::Float).backward();
        for (name, g, t) in net.parameters() {
            assert_eq!(t.grad().defined(), g == 2, "{name} (group {g})");
        }
    }

    #[test]
    fn more_blocks_add_identity_blocks_to_each_stage_of_small_resnet() {
        let spec = |blocks| cyclotron_core::spec::ModelSpec {
            arch: "small_resnet".into(),
            width: 4,
            blocks,
            pretrained: None,
            lstm: None,
            encoder: None,
            tabular: None,
            torchscript: None,
            torchscript_groups: None,
        };
        let count = |net: &Net| net.parameters().iter().map(|(_, _, t)| t.numel()).sum::<usize>();
        let (one, three) = (
            build_for(&spec(1), 1, 10, Device::Cpu).unwrap(),
            build_for(&spec(3), 1, 10, Device::Cpu).unwrap(),
        );
        // the default is the five-convolution net `build` makes
        assert_eq!(count(&one), count(&build("small_resnet", 4, 1, 10, Device::Cpu).unwrap()));
        // each identity block: two 3x3 convolutions (no bias) and two BatchNorms (weight, bias)
        let identity = |c: usize| 2 * c * c * 9 + 2 * 2 * c;
        assert_eq!(count(&three) - count(&one), 2 * identity(8) + 2 * identity(16));
        let names: Vec<String> = three.named_groups().into_iter().map(|(n, _, _)| n).collect();
        for want in [
            "block1_1.conv1.weight",
            "block1_2.bn2.running_var",
            "block2_2.conv2.weight",
            "block2.shortcut.conv.weight",
        ] {
            assert!(names.iter().any(|n| n == want), "missing {want}");
        }
        assert!(
            !names.iter().any(|n| n.starts_with("block1_1.shortcut")),
            "an identity block has no shortcut conv"
        );
        assert_eq!(three.group_of("block1_2.conv1.weight"), 0);
        assert_eq!(three.group_of("block2_1.conv1.weight"), 1);
        let x = Tensor::randn([2, 1, 28, 28], (tch::Kind::Float, Device::Cpu));
        assert_eq!(three.forward_t(&x, true).unwrap().size(), vec![2, 10]);
    }

    #[test]
    fn unknown_arch_is_an_error() {
        let e = build("vgg99", 8, 3, 10, Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("vgg99"), "{e}");
    }
}
