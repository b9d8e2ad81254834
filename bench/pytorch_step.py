"""PyTorch eager peer of `cyclotron bench-step`: time training steps of the same model.

    python bench/pytorch_step.py --model small_resnet --width 32 --batch-size 128 \
        --threads 2 --steps 50 --warmup 5 --json OUT.json

Trains with SGD(lr=0.01, momentum=0.9, weight_decay=5e-4) and cross-entropy on one fixed random
batch with random labels for 10 classes: [B,1,28,28] for small_resnet, [B,3,32,32] for resnet18.
--malloc-tuning applies the glibc settings Cyclotron applies at start (worker/src/allocator.rs);
--fused uses torch's fused SGD kernel (one pass over each tensor) instead of the default for-loop;
--precision bf16 runs the forward pass and loss under torch.autocast (Cyclotron's `[runtime] precision`).
Writes {"samples_per_s", "step_ms_median", "torch", "threads", ...} to --json and prints one line.
Module names match Cyclotron's variable names (worker/src/models/small_resnet.rs; resnet18 uses
torchvision's layout, as tch::vision::resnet does), so checkpoints could be exchanged.
"""

import argparse
import ctypes
import json
import statistics
import time
from collections import OrderedDict

import torch
from torch import nn
import torch.nn.functional as F


def conv(cin, cout, k, stride=1):
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False)


def conv_bn(cin, cout, k, stride=1):
    return nn.Sequential(OrderedDict(conv=conv(cin, cout, k, stride), bn=nn.BatchNorm2d(cout)))


class BasicBlock(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)). small_resnet: the shortcut is always
    a 1x1 conv + BN (`shortcut.{conv,bn}`); torchvision: `downsample.{0,1}` when the shape changes."""

    def __init__(self, cin, cout, stride, torchvision_names=False):
        super().__init__()
        self.conv1 = conv(cin, cout, 3, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = conv(cout, cout, 3)
        self.bn2 = nn.BatchNorm2d(cout)
        self.torchvision_names = torchvision_names
        if not torchvision_names:
            self.shortcut = conv_bn(cin, cout, 1, stride)
        elif stride != 1 or cin != cout:
            self.downsample = nn.Sequential(conv(cin, cout, 1, stride), nn.BatchNorm2d(cout))
        else:
            self.downsample = nn.Identity()

    def forward(self, x):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        skip = self.downsample(x) if self.torchvision_names else self.shortcut(x)
        return F.relu(y + skip)


class SmallResNet(nn.Module):
    """Cyclotron's small_resnet: a stem, two stages (a downsampling block, then `blocks` - 1
    identity blocks named `block1_1`, `block1_2`, ...), pooling and a linear head."""

    def __init__(self, width, in_channels=1, num_classes=10, blocks=1):
        super().__init__()
        w = width
        self.blocks = blocks
        self.stem = conv_bn(in_channels, w, 3)
        self.block1 = BasicBlock(w, 2 * w, 2)
        for k in range(1, blocks):
            self.add_module(f"block1_{k}", BasicBlock(2 * w, 2 * w, 1, True))
        self.block2 = BasicBlock(2 * w, 4 * w, 2)
        for k in range(1, blocks):
            self.add_module(f"block2_{k}", BasicBlock(4 * w, 4 * w, 1, True))
        self.head = nn.Sequential(OrderedDict(fc=nn.Linear(4 * w, num_classes)))

    def forward(self, x):
        x = F.relu(self.stem(x))
        for stage in ("block1", "block2"):
            x = getattr(self, stage)(x)
            for k in range(1, self.blocks):
                x = getattr(self, f"{stage}_{k}")(x)
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class ResNet18(nn.Module):
    """The standard ResNet-18 (7x7/2 stem, 3x3/2 max pool, 4 stages of 2 blocks), torchvision names."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        for i, (cout, stride) in enumerate([(64, 1), (128, 2), (256, 2), (512, 2)], start=1):
            blocks = [BasicBlock(cin, cout, stride, True), BasicBlock(cout, cout, 1, True)]
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
            cin = cout
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, stride=2, padding=1)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# glibc mallopt parameters (malloc.h), as worker/src/allocator.rs sets them
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4


def tune_malloc():
    """Cyclotron's allocator tuning: large blocks stay on the heap (no mmap), trim only above
    1 GiB. Returns whether glibc accepted both settings."""
    libc = ctypes.CDLL("libc.so.6")
    return libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1


def build(model, width, blocks=1):
    """(module, input shape without the batch dimension)"""
    if model == "small_resnet":
        if width <= 0 or blocks < 1:
            raise SystemExit(f"small_resnet needs --width > 0 and --blocks >= 1, got {width}, {blocks}")
        return SmallResNet(width, blocks=blocks), (1, 28, 28)
    if model == "resnet18":  # --width is ignored: the width of ResNet-18 is fixed
        return ResNet18(), (3, 32, 32)
    raise SystemExit(f"unknown --model {model!r}: small_resnet or resnet18")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="small_resnet", choices=["small_resnet", "resnet18"])
    ap.add_argument("--width", type=int, default=32, help="small_resnet base width")
    ap.add_argument("--blocks", type=int, default=1, help="small_resnet residual blocks per stage")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    ap.add_argument("--steps", type=int, default=50, help="timed steps")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="on cuda each step reads the loss (loss.item()), as Cyclotron's learner does")
    ap.add_argument("--channels-last", action="store_true",
                    help="model.to(memory_format=torch.channels_last): 4-D weights NHWC, as Cyclotron's "
                         "[runtime] memory_format = \"channels_last\"")
    ap.add_argument("--json", help="write the result here")
    ap.add_argument("--malloc-tuning", action="store_true", help="apply Cyclotron's mallopt settings first")
    ap.add_argument("--fused", action="store_true", help="SGD(fused=True)")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                    help="bf16: torch.autocast around the forward pass and loss, as Cyclotron's [runtime] precision")
    args = ap.parse_args()
    if args.malloc_tuning and not tune_malloc():
        raise SystemExit("--malloc-tuning: glibc refused the mallopt settings")
    if args.steps < 1 or args.batch_size < 1 or args.threads < 1 or args.warmup < 0:
        raise SystemExit("--steps, --batch-size and --threads must be >= 1, --warmup >= 0")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    dev = torch.device(args.device)
    net, shape = build(args.model, args.width, args.blocks)
    net = net.to(dev)
    if args.channels_last:
        net = net.to(memory_format=torch.channels_last)
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4,
                          fused=True if args.fused else None)
    x = torch.randn(args.batch_size, *shape, device=dev)
    y = torch.randint(0, 10, (args.batch_size,), device=dev)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            loss.item()
        return loss

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t0)
    if not torch.isfinite(loss):
        raise SystemExit(f"the loss is not finite after {args.warmup + args.steps} steps: {loss.item()}")

    result = {"model": args.model, "width": args.width if args.model == "small_resnet" else None,
              "batch_size": args.batch_size, "steps": args.steps,
              "samples_per_s": args.steps * args.batch_size / sum(times),
              "step_ms_median": 1000 * statistics.median(times),
              "torch": torch.__version__, "threads": args.threads, "device": args.device,
              "malloc_tuning": args.malloc_tuning, "fused": args.fused,
              "precision": args.precision, "channels_last": args.channels_last}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    layout = "channels-last" if args.channels_last else "contiguous"
    print(f"pytorch {args.model} batch {args.batch_size} threads {args.threads} {args.precision} {layout}: "
          f"{result['samples_per_s']:.1f} samples/s, median step {result['step_ms_median']:.2f} ms "
          f"(torch {torch.__version__})")


if __name__ == "__main__":
    main()
