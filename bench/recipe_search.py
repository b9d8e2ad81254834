"""Search the demo's recipe fast (issue 16): the `make demo` recipe in PyTorch with the data, the
augmentation, the snapshot ensemble and TTA all on one device, so that many candidate recipes can
be scored side by side (on a GPU: a minute each, several at once) before one is trained on the
2-core machine by Cyclotron itself.

    python bench/recipe_search.py --device cuda --cycles 1,2,4,8,16 --erase 0.5 --json OUT.json

The model, optimiser, SGDR schedule, flips, split and TTA follow `bench/pytorch_fashion_recipe.py`
(Cyclotron's semantics); this script adds the candidate changes:
  --cycles      SGDR cycle lengths in epochs, a snapshot at every cycle end (1,2,4,8,16 = cycle_len 1,
                cycle_mult 2, 5 cycles)
  --blocks      residual blocks per stage of small_resnet (Cyclotron's `[model] blocks`)
  --erase P     random erasing (Zhong et al. 2017, fastai's RandomErasing): with probability P one
                rectangle of 2-40 % of the image, aspect 0.3-3.3, filled with N(0, 1) noise
  --mixup A     mixup with Beta(A, A) (0: off)
  --crop-pad N  shift by up to N pixels (pad with black, random crop)
The ensemble is Cyclotron's greedy selection (`worker/src/ensemble.rs`): up to 4 snapshots, each
added while it lowers the averaged validation log-loss most; scored on
the 10,000 test images, plain and with flip TTA. Accuracy only: the seconds are not comparable
with the CPU runs.
"""

import argparse
import json
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from pytorch_fashion_recipe import idx, sgdr_lr
from pytorch_step import SmallResNet


def random_erase(xb, p, gen):
    """One rectangle per chosen image, area 2-40 %, aspect 0.3-3.3, filled with N(0, 1)."""
    n, _, h, w = xb.shape
    dev = xb.device
    u = torch.rand(n, 4, device=dev, generator=gen)
    area = (0.02 + 0.38 * u[:, 0]) * h * w
    aspect = torch.exp(math.log(0.3) + (math.log(3.3) - math.log(0.3)) * u[:, 1])
    eh = torch.sqrt(area * aspect).clamp(1, h).floor()
    ew = torch.sqrt(area / aspect).clamp(1, w).floor()
    y0 = ((h - eh + 1) * u[:, 2]).floor()
    x0 = ((w - ew + 1) * u[:, 3]).floor()
    ys = torch.arange(h, device=dev)[None, :, None]
    xs = torch.arange(w, device=dev)[None, None, :]
    inside = (ys >= y0[:, None, None]) & (ys < (y0 + eh)[:, None, None]) & (xs >= x0[:, None, None]) & (xs < (x0 + ew)[:, None, None])
    chosen = torch.rand(n, device=dev, generator=gen) < p
    mask = (inside & chosen[:, None, None])[:, None]
    noise = torch.randn(xb.shape, device=dev, generator=gen)
    return torch.where(mask, noise, xb)


def shift(xb, pad, fill, gen):
    """crop_pad: pad every side with `fill`, crop back at a random offset (one offset per batch row
    via a gather on a padded copy)."""
    n, c, h, w = xb.shape
    padded = F.pad(xb, (pad, pad, pad, pad), value=fill)
    dy = torch.randint(0, 2 * pad + 1, (n,), device=xb.device, generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), device=xb.device, generator=gen)
    rows = (dy[:, None] + torch.arange(h, device=xb.device)[None, :])[:, None, :, None].expand(n, c, h, w + 2 * pad)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w, device=xb.device)[None, :])[:, None, None, :].expand(n, c, h, w)
    return out.gather(3, cols)


def probs(model, x, tta, batch=2000):
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb = x[i : i + batch]
            p = F.softmax(model(xb).float(), 1)
            if tta:
                p = 0.5 * (p + F.softmax(model(torch.flip(xb, dims=[3])).float(), 1))
            out.append(p)
    model.train()
    return torch.cat(out)


def acc(p, y):
    return (p.argmax(1) == y).float().mean().item()


def greedy(valid_probs, y_valid, max_members=4):
    """Cyclotron's greedy selection: from nothing, add the snapshot that lowers the averaged
    validation log-loss most; stop when none does or `max_members` are in."""
    loss = lambda m: F.nll_loss(torch.log(sum(valid_probs[i] for i in m) / len(m) + 1e-12), y_valid).item()
    chosen, best = [], float("inf")
    while len(chosen) < max_members:
        trials = [(loss(chosen + [i]), i) for i in range(len(valid_probs)) if i not in chosen]
        if not trials or min(trials)[0] >= best - 1e-9:
            break
        best, pick = min(trials)
        chosen.append(pick)
    return sorted(chosen)


def ens_scores(snaps, members, y_valid, y_test):
    """The ensemble of `members`: test accuracy plain and with TTA, and the TTA decision made on
    the validation split (TTA kept when it lowers the ensemble's validation log-loss)."""
    avg = lambda key: sum(snaps[i][key] for i in members) / len(members)
    nll = lambda p: F.nll_loss(torch.log(p + 1e-12), y_valid).item()
    use_tta = nll(avg("valid_tta")) < nll(avg("valid"))
    plain, tta = acc(avg("test"), y_test), acc(avg("test_tta"), y_test)
    return dict(test=plain, test_tta=tta, tta_on_valid=use_tta, delivered=tta if use_tta else plain)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    ap.add_argument("--width", type=int, default=24)
    ap.add_argument("--blocks", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.1346)
    ap.add_argument("--wd", type=float, default=5e-4)
    ap.add_argument("--cycles", default="1,2,4,8,16")
    ap.add_argument("--erase", type=float, default=0.0)
    ap.add_argument("--mixup", type=float, default=0.0)
    ap.add_argument("--crop-pad", type=int, default=0)
    ap.add_argument("--label-smoothing", type=float, default=0.0)
    ap.add_argument("--valid-pct", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--name", default="")
    ap.add_argument("--json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    dev = torch.device(a.device)
    gen = torch.Generator(device=dev)
    gen.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)

    xs = idx("train-images-idx3-ubyte.gz").astype(np.float32) / 255.0
    ys = idx("train-labels-idx1-ubyte.gz").astype(np.int64)
    order = rng.permutation(len(xs))
    n_valid = int(len(xs) * a.valid_pct)
    tr, va = order[n_valid:], order[:n_valid]
    mean, std = xs[tr].mean(), xs[tr].std()
    norm = lambda v: torch.from_numpy((v - mean) / std).unsqueeze(1).to(dev)
    x_train, y_train = norm(xs[tr]), torch.from_numpy(ys[tr]).to(dev)
    x_valid, y_valid = norm(xs[va]), torch.from_numpy(ys[va]).to(dev)
    x_test = norm(idx("t10k-images-idx3-ubyte.gz").astype(np.float32) / 255.0)
    y_test = torch.from_numpy(idx("t10k-labels-idx1-ubyte.gz").astype(np.int64)).to(dev)
    fill = float((0.0 - mean) / std)

    model = SmallResNet(a.width, blocks=a.blocks).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=0.9, weight_decay=a.wd)
    lens = [int(c) for c in a.cycles.split(",")]
    ends = list(np.cumsum(lens))
    spe = len(x_train) // a.batch_size
    step, t_start, snaps = 0, time.perf_counter(), []
    for epoch in range(ends[-1]):
        perm = torch.randperm(len(x_train), device=dev, generator=gen)
        for b in range(spe):
            ids = perm[b * a.batch_size : (b + 1) * a.batch_size]
            xb, yb = x_train[ids], y_train[ids]
            flip = torch.rand(len(ids), device=dev, generator=gen) < 0.5
            xb = torch.where(flip[:, None, None, None], torch.flip(xb, dims=[3]), xb)
            if a.crop_pad:
                xb = shift(xb, a.crop_pad, fill, gen)
            if a.erase:
                xb = random_erase(xb, a.erase, gen)
            lam, perm2 = 1.0, None
            if a.mixup:
                lam = float(rng.beta(a.mixup, a.mixup))
                perm2 = torch.randperm(len(ids), device=dev, generator=gen)
                xb = lam * xb + (1 - lam) * xb[perm2]
            for g in opt.param_groups:
                g["lr"] = sgdr_lr(step, a.lr, spe, ends)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=a.precision == "bf16"):
                out = model(xb)
                loss = F.cross_entropy(out, yb, label_smoothing=a.label_smoothing)
                if perm2 is not None:
                    loss = lam * loss + (1 - lam) * F.cross_entropy(out, yb[perm2], label_smoothing=a.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        if epoch + 1 in ends:
            s = dict(epoch=epoch + 1)
            s["valid"] = probs(model, x_valid, False)
            s["test"], s["test_tta"] = probs(model, x_test, False), probs(model, x_test, True)
            s["valid_tta"] = probs(model, x_valid, True)
            snaps.append(s)
            # what the product delivers at this cycle end: the ensemble of the snapshots so far
            # (greedy on validation), with TTA when it lowers the ensemble's validation log-loss
            so_far = greedy([q["valid"] for q in snaps], y_valid)
            s["so_far"] = dict(members=so_far, **ens_scores(snaps, so_far, y_valid, y_test))
            s["seconds"] = round(time.perf_counter() - t_start, 1)
            print(f"{a.name} epoch {epoch + 1}: test {acc(s['test'], y_test):.2%} (TTA {acc(s['test_tta'], y_test):.2%}); "
                  f"ensemble so far {s['so_far']}; {s['seconds']} s", flush=True)
    chosen = greedy([s["valid"] for s in snaps], y_valid)
    ens = lambda key: acc(sum(snaps[i][key] for i in chosen) / len(chosen), y_test)
    best = max(range(len(snaps)), key=lambda i: acc(snaps[i]["valid"], y_valid))
    out = dict(
        name=a.name, args=vars(a), seconds=round(time.perf_counter() - t_start, 1),
        snapshots=[dict(epoch=int(s["epoch"]), test=acc(s["test"], y_test), test_tta=acc(s["test_tta"], y_test)) for s in snaps],
        members=chosen, ensemble=ens("test"), ensemble_tta=ens("test_tta"),
        delivered=ens_scores(snaps, chosen, y_valid, y_test)["delivered"],
        so_far=[dict(epoch=int(s["epoch"]), seconds=s["seconds"], **s["so_far"]) for s in snaps],
        best_single=acc(snaps[best]["test"], y_test), best_single_tta=acc(snaps[best]["test_tta"], y_test),
    )
    print(json.dumps(out), flush=True)
    if a.json:
        with open(a.json, "a") as f:
            f.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
