"""Export your own model for Cyclotron: a torchvision ResNet-18 for Fashion-MNIST (1-channel
28×28 images, 10 classes), scripted with torch.jit.script and saved with torch.jit.save.

    python examples/export_model.py resnet18_fmnist.pt [SEED]
    cyclotron train examples/torchscript.toml --out runs/ts

Any module works the same way: its forward takes one tensor of images [B, C, H, W] (normalised by
Cyclotron with the training split's channel statistics) and returns logits [B, classes]; its
parameters are float32. torch.jit.trace(model, example_images) works too for modules without
data-dependent control flow. Cyclotron's snapshots load back: torch.jit.load(this file), then
load_state_dict(safetensors.torch.load_file(".../model.safetensors")), or torch.jit.load the
snapshot's model.pt (which also keeps the BatchNorm running statistics)."""
import sys

import torch
import torchvision
from torch import nn

out = sys.argv[1] if len(sys.argv) > 1 else "resnet18_fmnist.pt"
torch.manual_seed(int(sys.argv[2]) if len(sys.argv) > 2 else 0)  # the initial weights
model = torchvision.models.resnet18(num_classes=10)  # weights="DEFAULT" to start from ImageNet
model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)  # grey images
torch.jit.script(model).save(out)
print(f"wrote {out}: {sum(p.numel() for p in model.parameters()):,} parameters")
