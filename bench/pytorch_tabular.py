#!/usr/bin/env python3
"""PyTorch eager peer of `cyclotron bench-tabular`: the same entity-embedding model (one embedding
per categorical column initialised N(0, 0.01), embedding dropout, batch-normed continuous columns,
linear -> ReLU -> BatchNorm -> dropout layers, a linear head, a scaled sigmoid for y_range), the same
rows per epoch, batch size, optimiser and learning rate, the same threads; MSE of the log target
(or cross-entropy for a classifier). The optimiser runs with foreach=True, PyTorch's faster
multi-tensor step (about 1.3x the default on this model's 2-core CPU runs). Rows are shuffled every epoch and each batch is gathered from
the table's tensors inside the timed loop, as a PyTorch user would write it; each step reads the
loss (loss.item()), as Cyclotron's learner does. The table is random with the same shapes (the
speed of these layers does not depend on the values).

Usage: pytorch_tabular.py --config CYCLOTRON_RESULT.json [--threads 2] [--epochs 5] [--warmup 1]
                          [--malloc-tuning] [--json OUT]
CYCLOTRON_RESULT.json is what `cyclotron bench-tabular --json` wrote (its `model`, `rows`, `batch_size`).
"""
import argparse
import ctypes
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4


def tune_malloc():
    libc = ctypes.CDLL("libc.so.6")
    return libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1


class TabularModel(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.one_hot = m["one_hot"]
        self.levels = [r for r, _ in m["embeddings"]]
        self.embeds = nn.ModuleList() if self.one_hot else nn.ModuleList(
            nn.Embedding(r, w) for r, w in m["embeddings"])
        for e in self.embeds:
            nn.init.normal_(e.weight, 0.0, 0.01)
        self.emb_drop = nn.Dropout(m["emb_dropout"])
        self.bn_cont = nn.BatchNorm1d(m["n_cont"]) if m["n_cont"] > 0 else None
        width = sum(r if self.one_hot else w for r, w in m["embeddings"]) + m["n_cont"]
        layers = []
        for w, p in m["layers"]:
            layers += [nn.Linear(width, w), nn.ReLU(), nn.BatchNorm1d(w), nn.Dropout(p)]
            width = w
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(width, m["outputs"])
        self.outputs = m["outputs"]
        self.y_range = m["y_range"]

    def forward(self, cats, conts):
        parts = []
        if len(self.embeds):
            parts.append(self.emb_drop(torch.cat([e(cats[:, i]) for i, e in enumerate(self.embeds)], 1)))
        if self.one_hot and self.levels:
            parts.append(torch.cat([F.one_hot(cats[:, i], r).float() for i, r in enumerate(self.levels)], 1))
        if self.bn_cont is not None:
            parts.append(self.bn_cont(conts))
        out = self.head(self.layers(torch.cat(parts, 1)))
        if self.outputs != 1:
            return out
        out = out.squeeze(1)
        if self.y_range is not None:
            lo, hi = self.y_range
            out = torch.sigmoid(out) * (hi - lo) + lo
        return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="the JSON `cyclotron bench-tabular --json` wrote")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=5, help="timed epochs")
    ap.add_argument("--warmup", type=int, default=1, help="untimed epochs first")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--malloc-tuning", action="store_true", help="apply Cyclotron's mallopt settings first")
    ap.add_argument("--json", help="write the result here")
    args = ap.parse_args()
    if args.malloc_tuning and not tune_malloc():
        raise SystemExit("--malloc-tuning: glibc refused the mallopt settings")
    if args.epochs < 1 or args.threads < 1 or args.warmup < 0:
        raise SystemExit("--epochs and --threads must be >= 1, --warmup >= 0")
    with open(args.config) as f:
        c = json.load(f)
    m, rows, batch = c["model"], c["rows"], c["batch_size"]
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    net = TabularModel(m)
    net.train()
    o = m["optimizer"]
    if o["kind"] == "adamw":
        opt = torch.optim.AdamW(net.parameters(), lr=o["lr"], betas=tuple(o["betas"]), eps=o["eps"],
                                weight_decay=o["weight_decay"], foreach=True)
    elif o["kind"] == "sgd":
        opt = torch.optim.SGD(net.parameters(), lr=o["lr"], momentum=o["momentum"],
                              weight_decay=o["weight_decay"], foreach=True)
    else:
        raise SystemExit(f"optimizer {o['kind']!r}: this peer knows adamw and sgd")
    cats = torch.stack([torch.randint(1, max(r, 2), (rows,)) for r, _ in m["embeddings"]], 1) \
        if m["embeddings"] else torch.zeros(rows, 0, dtype=torch.long)
    conts = torch.randn(rows, m["n_cont"])
    if m["outputs"] == 1:
        y = torch.exp(torch.randn(rows) + 5.0)
        target = y.log() if m["log_target"] else y
    else:
        target = torch.randint(0, m["outputs"], (rows,))

    rates = []
    for epoch in range(args.warmup + args.epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(rows)
        n = 0
        for k in range(rows // batch):
            idx = perm[k * batch:(k + 1) * batch]
            out = net(cats[idx], conts[idx])
            loss = F.mse_loss(out, target[idx]) if m["outputs"] == 1 else F.cross_entropy(out, target[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss.item()
            n += batch
        if epoch >= args.warmup:
            rates.append(n / (time.perf_counter() - t0))
    result = {"impl": "pytorch", "torch": torch.__version__, "threads": args.threads, "rows": rows,
              "batch_size": batch, "epochs": args.epochs, "malloc_tuning": args.malloc_tuning,
              "rows_per_s_median": statistics.median(rates), "rows_per_s_worst": min(rates),
              "epoch_rows_per_s": rates}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    print(f"pytorch tabular {rows} rows batch {batch} threads {args.threads}: "
          f"{result['rows_per_s_median']:.0f} rows/s median, {result['rows_per_s_worst']:.0f} worst "
          f"(torch {torch.__version__})")


if __name__ == "__main__":
    main()
