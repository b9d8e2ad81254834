"""Baselines for examples/tabular_sales.toml on the same split (txhousing; train 2000-2012,
validation 2013, test from 2014-01; rows without sales dropped): RMSPE on the test months of
  - each city's median training sales (2000-2012, and 2000-2013),
  - last year's sales of the same city and month (the city's training median when absent),
  - scikit-learn's HistGradientBoostingRegressor on log(sales) from the same features (city as
    categorical, month, year, listings, inventory; fitted on 2000-2013, early-stopped on a
    random share of it the size of 2013) when scikit-learn is installed (the venv of `make setup` has it).

    python3 bench/tabular_baselines.py [PATH]
"""

import csv
import math
import os
import statistics
import sys

PATH = sys.argv[1] if len(sys.argv) > 1 else os.path.expanduser("~/.cache/cyclotron/data/tabular/txhousing.csv")


def num(v):
    return None if v in ("", "NA") else float(v)


def rmspe(ys, ps):
    pairs = [(y, p) for y, p in zip(ys, ps) if y != 0]
    return math.sqrt(sum(((y - p) / y) ** 2 for y, p in pairs) / len(pairs))


rows = [r for r in csv.DictReader(open(PATH)) if num(r["sales"]) is not None]
for r in rows:
    r["t"] = float(r["date"])
train = [r for r in rows if r["t"] < 2013]
valid = [r for r in rows if 2013 <= r["t"] < 2014]
test = [r for r in rows if r["t"] >= 2014]
ys = [float(r["sales"]) for r in test]
print(f"rows {len(rows)}: train {len(train)}, valid {len(valid)}, test {len(test)}")


def city_medians(rs):
    by = {}
    for r in rs:
        by.setdefault(r["city"], []).append(float(r["sales"]))
    return {c: statistics.median(v) for c, v in by.items()}


overall = statistics.median(float(r["sales"]) for r in train)
for name, rs in [("2000-2012", train), ("2000-2013", train + valid)]:
    med = city_medians(rs)
    print(f"city median of {name}:        RMSPE {rmspe(ys, [med.get(r['city'], overall) for r in test]):.4f}")

med = city_medians(train + valid)
seen = {(r["city"], int(r["year"]), int(r["month"])): float(r["sales"]) for r in rows}
ps, hits = [], 0
for r in test:
    p = seen.get((r["city"], int(r["year"]) - 1, int(r["month"])))
    hits += p is not None
    ps.append(p if p is not None else med.get(r["city"], overall))
print(f"last year's same month:       RMSPE {rmspe(ys, ps):.4f} ({hits}/{len(test)} rows had one)")

try:
    import numpy as np
    from sklearn.ensemble import HistGradientBoostingRegressor
except ImportError:
    print("scikit-learn not installed: no gradient boosting")
    sys.exit(0)
cities = sorted({r["city"] for r in train})


def features(rs):
    nan = float("nan")
    return np.array(
        [
            [
                cities.index(r["city"]) if r["city"] in cities else nan,
                float(r["month"]),
                float(r["year"]),
                num(r["listings"]) if num(r["listings"]) is not None else nan,
                num(r["inventory"]) if num(r["inventory"]) is not None else nan,
            ]
            for r in rs
        ]
    )


X, y = features(train + valid), np.log([float(r["sales"]) for r in train + valid])
model = HistGradientBoostingRegressor(
    categorical_features=[0], max_iter=2000, learning_rate=0.05, early_stopping=True,
    validation_fraction=len(valid) / (len(train) + len(valid)), random_state=0,
)
# early stopping on a random 2013-sized share of 2000-2013 (scikit-learn cannot take our 2013 split)
model.fit(X, y)
p = np.exp(model.predict(features(test)))
print(f"HistGradientBoostingRegressor: RMSPE {rmspe(ys, p):.4f} ({model.n_iter_} iterations)")
