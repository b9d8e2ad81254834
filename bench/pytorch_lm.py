#!/usr/bin/env python3
"""PyTorch eager peer of `cyclotron bench-lm`: the same AWD-LSTM-style language model (embedding,
stacked single-layer LSTMs emb->hidden->...->emb, decoder tied to the embedding, embedding /
input / between-layer / output dropout), the same batch, bptt, vocabulary, AdamW with gradient
clipping, hidden state carried and detached between windows, the same threads. Prints one JSON
line: tokens per second over the timed steps (after warm-up) and the median step time.

Usage: pytorch_lm.py --vocab 8000 --emb 200 --hidden 400 --layers 2 --batch 32 --bptt 70
                     --threads 2 --steps 30 --warmup 5 [--device cpu] [--malloc-tuning] [--json OUT]
--malloc-tuning applies the glibc settings Cyclotron applies at start (worker/src/allocator.rs).
"""
import argparse
import ctypes
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class SeqDropout(nn.Module):
    def __init__(self, p):
        super().__init__()
        self.p = p

    def forward(self, x):  # [T, B, D], one mask per sequence
        if not self.training or self.p == 0:
            return x
        mask = x.new_empty(1, x.size(1), x.size(2)).bernoulli_(1 - self.p) / (1 - self.p)
        return x * mask


class LanguageModel(nn.Module):
    def __init__(self, vocab, emb, hidden, layers, pe=0.05, pi=0.2, ph=0.15, po=0.25):
        super().__init__()
        self.embedding = nn.Embedding(vocab, emb)
        nn.init.normal_(self.embedding.weight, 0, 0.3)  # as worker/src/models/lstm.rs EMBEDDING_STD
        self.rnns = nn.ModuleList(
            nn.LSTM(emb if i == 0 else hidden, emb if i == layers - 1 else hidden) for i in range(layers))
        self.pe = pe
        self.inp, self.hid, self.out = SeqDropout(pi), SeqDropout(ph), SeqDropout(po)
        self.bias = nn.Parameter(torch.zeros(vocab))

    def forward(self, tokens, state):
        w = self.embedding.weight
        if self.training and self.pe > 0:
            w = w * (w.new_empty(w.size(0), 1).bernoulli_(1 - self.pe) / (1 - self.pe))
        x = self.inp(F.embedding(tokens, w))
        new = []
        for i, (rnn, s) in enumerate(zip(self.rnns, state)):
            x, s = rnn(x, s)
            new.append(s)
            if i + 1 < len(self.rnns):
                x = self.hid(x)
        x = self.out(x)
        return x @ self.embedding.weight.t() + self.bias, new


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--emb", type=int, default=200)
    ap.add_argument("--hidden", type=int, default=400)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--bptt", type=int, default=70)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", help="also write the result here")
    ap.add_argument("--malloc-tuning", action="store_true", help="apply Cyclotron's mallopt settings first")
    a = ap.parse_args()
    # glibc mallopt (malloc.h): M_MMAP_MAX = -4, M_TRIM_THRESHOLD = -1, as worker/src/allocator.rs
    if a.malloc_tuning:
        libc = ctypes.CDLL("libc.so.6")
        if not (libc.mallopt(-4, 0) == 1 and libc.mallopt(-1, 1 << 30) == 1):
            raise SystemExit("--malloc-tuning: glibc refused the mallopt settings")
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dev = torch.device(a.device)
    model = LanguageModel(a.vocab, a.emb, a.hidden, a.layers).to(dev)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01, betas=(0.9, 0.99), eps=1e-8)
    stream = torch.randint(a.vocab, (a.bptt * (a.steps + a.warmup) + 1, a.batch), device=dev)
    state = [(torch.zeros(1, a.batch, r.hidden_size, device=dev), torch.zeros(1, a.batch, r.hidden_size, device=dev))
             for r in model.rnns]
    times = []
    for i in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        x = stream[i * a.bptt:(i + 1) * a.bptt]
        y = stream[i * a.bptt + 1:(i + 1) * a.bptt + 1]
        logits, state = model(x, state)
        state = [(h.detach(), c.detach()) for h, c in state]
        loss = F.cross_entropy(logits.view(-1, a.vocab), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        opt.step()
        loss.item()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i >= a.warmup:
            times.append(time.perf_counter() - t0)
    times.sort()
    result = {
        "impl": "pytorch", "device": a.device, "threads": a.threads, "batch": a.batch, "bptt": a.bptt,
        "vocab": a.vocab, "emb": a.emb, "hidden": a.hidden, "layers": a.layers, "steps": a.steps,
        "tokens_per_s": a.steps * a.bptt * a.batch / sum(times), "step_ms_median": 1000 * times[len(times) // 2],
    }
    print(json.dumps(result))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
