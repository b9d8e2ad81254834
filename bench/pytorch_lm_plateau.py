#!/usr/bin/env python3
"""How long PyTorch's copy of Cyclotron's language model (bench/pytorch_lm.py) sits on the unigram
plateau of examples/text_lm.toml's text, by embedding init, learning rate, dropout and optimiser.
A diagnostic for worker/src/models/lstm.rs's embedding initialisation (issue 12), not part of
`make bench`. Prints the training loss every 50 steps and the validation perplexity per epoch.

    pip install --target /tmp/pylib tokenizers     # the venv has no tokenizers package
    PYTHONPATH=/tmp/pylib python bench/pytorch_lm_plateau.py \
        --tokenizer runs/text-lm/<run>/snapshots/cycle-0/tokenizer.json --steps 150 --emb-std 0.3

--emb-std 0 gives AWD-LSTM's uniform ±0.1 (Cyclotron's init before 2026-12-03; pytorch_lm.py now
starts at N(0, 0.3²) like Cyclotron). The documents, split and batching
follow the task (every non-empty line of every .txt under --data, 10 % of them held out, <bos>
before each, batch 32, bptt 70), though the split's shuffle is Python's, not Cyclotron's.
"""
import argparse
import glob
import math
import os
import random
import time

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from pytorch_lm import LanguageModel

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--tokenizer", required=True, help="a tokenizer.json of a text_lm run's snapshot")
ap.add_argument("--data", default=os.path.expanduser("~/.cache/cyclotron/data/rt"))
ap.add_argument("--lr", type=float, default=3e-3)
ap.add_argument("--epochs", type=int, default=1)
ap.add_argument("--steps", type=int, default=10**9, help="stop each epoch after this many steps")
ap.add_argument("--no-dropout", action="store_true")
ap.add_argument("--clip", type=float, default=0.25)
ap.add_argument("--opt", choices=["adamw", "sgd"], default="adamw")
ap.add_argument("--emb-std", type=float, default=0.0, help="N(0, std²) embedding init; 0: uniform ±0.1")
a = ap.parse_args()
torch.manual_seed(1)
torch.set_num_threads(2)
tok = Tokenizer.from_file(a.tokenizer)
bos = tok.token_to_id("<bos>")
docs = []
for f in sorted(glob.glob(os.path.join(a.data, "**", "*.txt"), recursive=True)):
    docs += [line.strip() for line in open(f) if line.strip()]
random.seed(1)
random.shuffle(docs)
nv = len(docs) // 10


def stream(ds):
    s = []
    for enc in tok.encode_batch(ds, add_special_tokens=False):
        s.append(bos)
        s += enc.ids
    return torch.tensor(s)


def batchify(t, b):
    r = len(t) // b
    return t[: r * b].view(b, r).t().contiguous()


B, T = 32, 70
tr, va = batchify(stream(docs[nv:]), B), batchify(stream(docs[:nv]), B)
V = tok.get_vocab_size()
m = LanguageModel(V, 128, 256, 2, *((0, 0, 0, 0) if a.no_dropout else (0.05, 0.2, 0.15, 0.25)))
if a.emb_std > 0:
    torch.nn.init.normal_(m.embedding.weight, 0, a.emb_std)
else:
    torch.nn.init.uniform_(m.embedding.weight, -0.1, 0.1)
if a.opt == "adamw":
    opt = torch.optim.AdamW(m.parameters(), lr=a.lr, weight_decay=0.01)
else:
    opt = torch.optim.SGD(m.parameters(), lr=a.lr)


def evaluate():
    m.eval()
    total, n, st = 0.0, 0, [None, None]
    with torch.no_grad():
        for i in range(0, va.size(0) - 1, T):
            n_rows = min(T, va.size(0) - 1 - i)
            x, y = va[i : i + n_rows], va[i + 1 : i + 1 + n_rows]
            out, st = m(x, st)
            total += F.cross_entropy(out.view(-1, V), y.reshape(-1), reduction="sum").item()
            n += y.numel()
    m.train()
    return math.exp(total / n)


print(f"tokens: train {tr.numel()}, valid {va.numel()}; vocab {V}", flush=True)
t0 = time.time()
for epoch in range(a.epochs):
    st, step = [None, None], 0
    for i in range(0, tr.size(0) - 1, T):
        if step >= a.steps:
            break
        n_rows = min(T, tr.size(0) - 1 - i)
        x, y = tr[i : i + n_rows], tr[i + 1 : i + 1 + n_rows]
        st = [None if s is None else (s[0].detach(), s[1].detach()) for s in st]
        out, st = m(x, st)
        loss = F.cross_entropy(out.view(-1, V), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        if a.clip > 0:
            torch.nn.utils.clip_grad_norm_(m.parameters(), a.clip)
        opt.step()
        step += 1
        if step % 50 == 0:
            print(f"step {step} loss {loss.item():.3f} ({time.time() - t0:.0f} s)", flush=True)
    print(f"epoch {epoch + 1}: validation perplexity {evaluate():.1f}", flush=True)
