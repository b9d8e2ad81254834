//! Models, each split into three layer groups for discriminative learning rates and freezing:
//! body early (0), body late (1), head (2). A group is a set of VarStore variable names, chosen by
//! name prefix, so the split also works for weights loaded from elsewhere.

mod small_resnet;

use tch::{nn, Device, Tensor};

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
    module: BoxedModule,
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
        let c = xs.size()[1];
        if c == 1 && self.in_channels == 3 {
            return self.module.forward_t(&xs.expand([-1, 3, -1, -1], false), train);
        }
        self.module.forward_t(xs, train)
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
    pub fn freeze_to(&self, frozen: usize) {
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
    let (module, in_ch, group_of): (BoxedModule, i64, GroupFn) = match arch {
        "small_resnet" => (
            Box::new(small_resnet(&root, in_channels, width, num_classes)),
            in_channels,
            small_resnet::group_of,
        ),
        "resnet18" => {
            (Box::new(tch::vision::resnet::resnet18(&root, num_classes)), 3, torchvision_resnet_group)
        }
        "resnet34" => {
            (Box::new(tch::vision::resnet::resnet34(&root, num_classes)), 3, torchvision_resnet_group)
        }
        other => return Err(Error::UnknownModel { arch: other.to_string() }),
    };
    if in_channels != in_ch && in_channels != 1 {
        return Err(Error::Shape {
            message: format!("{arch} takes {in_ch}-channel images, the data has {in_channels} channels"),
        });
    }
    Ok(Net { vs, module, in_channels: in_ch, group_of, arch: arch.to_string() })
}

/// Variables that are state, not parameters: never trained, never given gradients.
pub fn is_buffer(name: &str) -> bool {
    name.ends_with("running_mean") || name.ends_with("running_var") || name.ends_with("num_batches_tracked")
}

/// torchvision ResNet names: stem and layer1–2 are early, layer3–4 late, fc the head.
fn torchvision_resnet_group(name: &str) -> usize {
    if name.starts_with("fc.") {
        2
    } else if name.starts_with("layer3.") || name.starts_with("layer4.") {
        1
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_model_has_three_nonempty_groups_and_the_right_output() {
        for (arch, ch, hw) in [("small_resnet", 1, 28), ("resnet18", 3, 32), ("resnet34", 1, 32)] {
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
