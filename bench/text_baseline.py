#!/usr/bin/env python3
"""Bag-of-words baseline for the sentiment examples: a logistic regression on TF-IDF unigrams and
bigrams of the Rotten Tomatoes snippets, fitted on train.csv, its regularisation C chosen on
valid.csv, scored once on test.csv — the same seeded split the Cyclotron classifiers use
(scripts/fetch_data.py). Prints one JSON line.

Usage: text_baseline.py [DATA_DIR]   (default $CYCLOTRON_DATA/rt or ~/.cache/cyclotron/data/rt)
"""
import csv
import json
import os
import sys

from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

LABELS = ["rotten", "fresh"]


def read(path):
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["label"] in LABELS]
    return [r["text"] for r in rows], [LABELS.index(r["label"]) for r in rows]


def main():
    data = os.environ.get("CYCLOTRON_DATA", os.path.expanduser("~/.cache/cyclotron/data"))
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(data, "rt")
    (xt, yt), (xv, yv), (xs, ys) = (read(os.path.join(root, f"{s}.csv")) for s in ("train", "valid", "test"))
    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    ft = vec.fit_transform(xt)
    fv, fs = vec.transform(xv), vec.transform(xs)
    best = None
    for c in (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0):
        m = LogisticRegression(C=c, max_iter=2000).fit(ft, yt)
        acc = m.score(fv, yv)
        if best is None or acc > best[0]:
            best = (acc, c, m)
    valid_acc, c, model = best
    print(json.dumps({
        "model": "tfidf 1-2 gram logistic regression",
        "C": c,
        "features": ft.shape[1],
        "train": len(yt),
        "valid_accuracy": round(valid_acc, 4),
        "test": len(ys),
        "test_accuracy": round(model.score(fs, ys), 4),
    }))


if __name__ == "__main__":
    main()
