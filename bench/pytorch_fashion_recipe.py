"""PyTorch eager peer of `make demo` for time to accuracy (issue 16): the same model, data, recipe.

    python bench/pytorch_fashion_recipe.py --width 24 --batch-size 128 --lr 0.135 \
        --cycles 4 --cycle-len 1 --cycle-mult 2 --threads 2 --malloc-tuning --json OUT.json

small_resnet (bench/pytorch_step.py's twin of Cyclotron's), SGD momentum 0.9, weight decay 5e-4,
SGDR as Cyclotron's (`core/src/schedule/sgdr.rs`: lr/100 for the first 1/20 of each cycle, else cosine
from lr to 0 over the cycle, per step), horizontal flips half the time, inputs normalised with the training set's
mean and std, 10% of the training images held out as validation (seeded), batch `--batch-size` in
one process with `--threads` threads. After every cycle: test accuracy of that cycle's weights,
with and without flip TTA (original and flipped views averaged). Training seconds exclude the
evaluations, as Cyclotron's epoch seconds exclude its snapshot scoring.
Writes {"cycles": [{"epoch", "train_seconds", "test_accuracy", "test_accuracy_tta"}], ...}.

`--swa-last K` also measures ensembles whose members differ in other ways than the snapshots
(issue 16: "cycle design, ensemble.runs, or checkpoint-averaging variants like SWA — measure
which"): the weights at the ends of the last K epochs are kept; after training, the SWA model (their
average, batch-norm statistics recomputed over the training images) and every kept model predict
the validation and test images with flip TTA; greedy selection on validation log-loss (start from
the best, add the member that lowers it most while one does; unlike Cyclotron's `greedy`, a member
may be added again, Caruana's weighting, and there is no cap on members) picks ensembles from
(a) the cycle snapshots, (b) those and the epoch-end models, (c) those and the SWA model. Written
as {"variants": {...}} with each one's validation loss and test accuracy.
"""

import argparse
import copy
import gzip
import json
import math
import pathlib
import time

import numpy as np
import torch
import torch.nn.functional as F

from pytorch_step import SmallResNet, tune_malloc

DATA = pathlib.Path("/usr/share/datasets/fashion-mnist")


def idx(name):
    raw = gzip.open(DATA / name).read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def cycle_ends(cycles, cycle_len, cycle_mult):
    """The epochs at which SGDR's cycles end: cycle i lasts cycle_len * cycle_mult**i epochs."""
    ends, e = [], 0
    for i in range(cycles):
        e += cycle_len * cycle_mult**i
        ends.append(e)
    return ends


def sgdr_lr(step, lr, spe, ends):
    """Cyclotron's SGDR with warm-up at step `step` (lr_min 0): lr/100 for the first 1/20 of each
    cycle, else cosine from lr to 0 over the cycle."""
    start = 0
    for end in ends:
        if step < end * spe:
            break
        start = end
    cycle_steps = (end - start) * spe
    t = step - start * spe
    if 20 * t < cycle_steps:
        return lr / 100.0
    return 0.5 * lr * (1.0 + math.cos(math.pi * t / cycle_steps))


def crop_pad(xb, pad, fill, rng):
    """Cyclotron's `crop_pad:<pad>`: pad every side with `fill` (black, normalised), then crop back
    at an offset uniform in [-pad, pad] on each axis, per image."""
    n, _, h, w = xb.shape
    padded = F.pad(xb, (pad, pad, pad, pad), value=fill)
    dy, dx = rng.integers(0, 2 * pad + 1, n), rng.integers(0, 2 * pad + 1, n)
    out = torch.empty_like(xb)
    for oy in range(2 * pad + 1):
        for ox in range(2 * pad + 1):
            sel = torch.from_numpy(np.nonzero((dy == oy) & (dx == ox))[0])
            if len(sel):
                out[sel] = padded[sel, :, oy : oy + h, ox : ox + w]
    return out


def accuracy(model, x, y, tta, batch=1000):
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb = x[i : i + batch]
            p = F.softmax(model(xb), 1)
            if tta:
                p = 0.5 * (p + F.softmax(model(torch.flip(xb, dims=[3])), 1))
            correct += (p.argmax(1) == y[i : i + batch]).sum().item()
    model.train()
    return correct / len(x)


def probs(model, x, batch=1000):
    """Softmax of `model` on `x` and on its mirror image (eval mode): (plain, flip TTA)."""
    model.eval()
    plain, tta = [], []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb = x[i : i + batch]
            p = F.softmax(model(xb), 1)
            plain.append(p)
            tta.append(0.5 * (p + F.softmax(model(torch.flip(xb, dims=[3])), 1)))
    model.train()
    return torch.cat(plain), torch.cat(tta)


def nll(p, y):
    return F.nll_loss(torch.log(p.clamp_min(1e-12)), y).item()


def greedy(valid, y_valid, names):
    """Greedy selection on validation log-loss: the best member, then, while the average's loss
    falls, the member that lowers it most (repeats allowed, so members get weights; Cyclotron's
    `greedy` takes each snapshot at most once, up to `ensemble.members`)."""
    chosen = [min(names, key=lambda n: nll(valid[n], y_valid))]
    best = nll(valid[chosen[0]], y_valid)
    while True:
        trials = [(nll(sum(valid[m] for m in chosen + [n]) / (len(chosen) + 1), y_valid), n) for n in names]
        loss, n = min(trials)
        if loss >= best - 1e-6:
            return chosen, best
        chosen.append(n)
        best = loss


def update_bn(model, x, batch=256):
    """Batch-norm running statistics recomputed as the plain average over `x` (torch.optim.swa_utils.update_bn)."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        for i in range(0, len(x), batch):
            model(x[i : i + batch])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=int, default=24)
    ap.add_argument("--blocks", type=int, default=1, help="Cyclotron's [model] blocks (residual blocks per stage)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, required=True)
    ap.add_argument("--cycles", type=int, default=4)
    ap.add_argument("--cycle-len", type=int, default=2)
    ap.add_argument("--cycle-mult", type=int, default=1)
    ap.add_argument("--label-smoothing", type=float, default=0.0, help="Cyclotron's [loss] label_smoothing")
    ap.add_argument("--crop-pad", type=int, default=0, help="Cyclotron's crop_pad:<n> after the flip (0: none)")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                    help="bf16: torch.autocast around the training forward pass and loss (Cyclotron's [runtime] precision); evaluations stay fp32")
    ap.add_argument("--channels-last", action="store_true",
                    help="model.to(memory_format=torch.channels_last), as Cyclotron's [runtime] memory_format = \"channels_last\"")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--swa-last", type=int, default=0,
                    help="keep the weights of the last K epoch ends; measure SWA and other ensembles (see above)")
    ap.add_argument("--train-limit", type=int, default=0, help="train on the first N training images only (a quick check of this script)")
    ap.add_argument("--json")
    ap.add_argument("--malloc-tuning", action="store_true", help="apply Cyclotron's mallopt settings first")
    a = ap.parse_args()
    if a.malloc_tuning and not tune_malloc():
        raise SystemExit("--malloc-tuning: glibc refused the mallopt settings")
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)

    xs = idx("train-images-idx3-ubyte.gz").astype(np.float32) / 255.0
    ys = idx("train-labels-idx1-ubyte.gz").astype(np.int64)
    order = rng.permutation(len(xs))
    n_valid = len(xs) // 10
    train = order[n_valid:]
    mean, std = xs[train].mean(), xs[train].std()
    norm = lambda v: torch.from_numpy((v - mean) / std).unsqueeze(1)
    if a.train_limit:
        train = train[: a.train_limit]
    x_train, y_train = norm(xs[train]), torch.from_numpy(ys[train])
    x_valid, y_valid = norm(xs[order[:n_valid]]), torch.from_numpy(ys[order[:n_valid]])
    x_test = norm(idx("t10k-images-idx3-ubyte.gz").astype(np.float32) / 255.0)
    y_test = torch.from_numpy(idx("t10k-labels-idx1-ubyte.gz").astype(np.int64))

    model = SmallResNet(a.width, blocks=a.blocks)
    if a.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=0.9, weight_decay=5e-4)
    spe = len(x_train) // a.batch_size
    step, train_s, cycles = 0, 0.0, []
    kept = {}  # name -> state_dict copy (cycle snapshots and the last K epoch ends)
    ends = cycle_ends(a.cycles, a.cycle_len, a.cycle_mult)
    fill = float((0.0 - mean) / std)
    for epoch in range(ends[-1]):
        t0 = time.perf_counter()
        perm = torch.from_numpy(rng.permutation(len(x_train)))
        for b in range(spe):
            ids = perm[b * a.batch_size : (b + 1) * a.batch_size]
            xb, yb = x_train[ids], y_train[ids]
            flip = torch.from_numpy(rng.random(len(ids)) < 0.5)
            xb = torch.where(flip[:, None, None, None], torch.flip(xb, dims=[3]), xb)
            if a.crop_pad:
                xb = crop_pad(xb, a.crop_pad, fill, rng)
            for g in opt.param_groups:
                g["lr"] = sgdr_lr(step, a.lr, spe, ends)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.precision == "bf16"):
                loss = F.cross_entropy(model(xb), yb, label_smoothing=a.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        train_s += time.perf_counter() - t0
        if a.swa_last and epoch + 1 > ends[-1] - a.swa_last:
            kept[f"epoch{epoch + 1}"] = copy.deepcopy(model.state_dict())
        if a.swa_last and epoch + 1 in ends:
            kept[f"snapshot{len(cycles)}"] = copy.deepcopy(model.state_dict())
        if epoch + 1 in ends:
            acc, acc_tta = accuracy(model, x_test, y_test, False), accuracy(model, x_test, y_test, True)
            cycles.append(dict(epoch=epoch + 1, train_seconds=train_s, test_accuracy=acc, test_accuracy_tta=acc_tta))
            print(f"epoch {epoch + 1}: {train_s:.0f} s of training, test {acc:.2%} (flip TTA {acc_tta:.2%})", flush=True)
    variants = measure_variants(a, model, kept, (x_train, x_valid, y_valid, x_test, y_test)) if a.swa_last else None
    out = dict(variants=variants, torch=torch.__version__, malloc_tuning=a.malloc_tuning, threads=a.threads, width=a.width, blocks=a.blocks, batch_size=a.batch_size, lr=a.lr, cycle_ends=ends, crop_pad=a.crop_pad, label_smoothing=a.label_smoothing, precision=a.precision, cycles=cycles)
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps(out, indent=1))


def measure_variants(a, model, kept, data):
    """The ensembles of `--swa-last` (see the module doc)."""
    x_train, x_valid, y_valid, x_test, y_test = data
    valid, test = {}, {}
    epoch_ends = [n for n in kept if n.startswith("epoch")]
    avg = {k: sum(kept[n][k].double() for n in epoch_ends) / len(epoch_ends) for k in kept[epoch_ends[0]]}
    kept["swa"] = {k: v.to(kept[epoch_ends[0]][k].dtype) for k, v in avg.items()}
    for name, state in kept.items():
        model.load_state_dict(state)
        if name == "swa":
            update_bn(model, x_train)
        (_, valid[name]), (_, test[name]) = probs(model, x_valid), probs(model, x_test)
    acc = lambda p: (p.argmax(1) == y_test).float().mean().item()  # noqa: E731
    snaps = [n for n in kept if n.startswith("snapshot")]
    out = {"members": {n: dict(valid_loss=nll(valid[n], y_valid), test_accuracy_tta=acc(test[n])) for n in kept}}
    for label, pool in [("snapshots", snaps), ("snapshots+epoch_ends", snaps + epoch_ends),
                        ("snapshots+swa", snaps + ["swa"]), ("all", snaps + epoch_ends + ["swa"])]:
        chosen, loss = greedy(valid, y_valid, pool)
        p = sum(test[n] for n in chosen) / len(chosen)
        out[label] = dict(members=chosen, valid_loss=loss, test_accuracy_tta=acc(p))
        print(f"greedy over {label}: {chosen} valid loss {loss:.4f}, test with TTA {acc(p):.2%}", flush=True)
    for n in kept:
        print(f"{n}: valid loss {out['members'][n]['valid_loss']:.4f}, test with TTA {out['members'][n]['test_accuracy_tta']:.2%}")
    return out


if __name__ == "__main__":
    main()
