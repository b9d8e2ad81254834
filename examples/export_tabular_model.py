"""Export your own tabular model for Cyclotron: entity embeddings + an MLP for
examples/tabular_torchscript.toml (txhousing: city, month and the two missing-value flags;
year, listings, inventory), scripted with torch.jit.script and saved with torch.jit.save.

    python examples/export_tabular_model.py txhousing_mlp.pt [--card RUN/snapshots/cycle-0/tabular.json]
    cyclotron train examples/tabular_torchscript.toml --out runs/tab-ts

forward(cats, conts): cats [B, n_cat] int64 level indices (0 = a level unseen in training),
conts [B, n_cont] float32 (normalised), columns in the order of a snapshot's tabular.json; it
returns [B] or [B, 1] for a regression (of ln(target) with log_target), logits [B, classes] for a
classifier. --card reads the columns and their levels from a run's tabular.json; without it, the
txhousing example's. Level 0 is never trained: keep its embedding small (fastai's N(0, 0.01))."""
import argparse
import json

import torch
from torch import nn

ap = argparse.ArgumentParser()
ap.add_argument("out")
ap.add_argument("--card", help="a snapshot's tabular.json (columns and levels)")
args = ap.parse_args()
levels, n_cont = [47, 13, 3, 3], 3  # city, month, listings_na, inventory_na (+1 each: level 0)
if args.card:
    card = json.load(open(args.card))
    levels = [len(c["levels"]) + 1 for c in card["categorical"]]
    n_cont = len(card["continuous"])


class TabularMLP(nn.Module):
    def __init__(self, levels, n_cont):
        super().__init__()
        self.embeds = nn.ModuleList([nn.Embedding(n, min(50, (n + 1) // 2)) for n in levels])
        for e in self.embeds:
            nn.init.normal_(e.weight, 0.0, 0.01)
        width = sum(e.embedding_dim for e in self.embeds) + n_cont
        self.layers = nn.Sequential(nn.Linear(width, 200), nn.ReLU(), nn.Dropout(0.1),
                                    nn.Linear(200, 100), nn.ReLU(), nn.Dropout(0.2))
        self.head = nn.Linear(100, 1)

    def forward(self, cats: torch.Tensor, conts: torch.Tensor) -> torch.Tensor:
        parts = [conts]
        for i, e in enumerate(self.embeds):
            parts.append(e(cats[:, i]))
        return self.head(self.layers(torch.cat(parts, 1)))


torch.manual_seed(0)
model = TabularMLP(levels, n_cont)
torch.jit.script(model).save(args.out)
print(f"wrote {args.out}: levels {levels}, {n_cont} continuous, "
      f"{sum(p.numel() for p in model.parameters()):,} parameters")
