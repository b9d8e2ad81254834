"""Time to accuracy (issue 16): when Cyclotron's job and the PyTorch peer first reached each target
test accuracy, from their own records, side by side.

    python bench/time_to_accuracy.py RUN/results.json PEER.json [--targets 92.5,93,93.5]

RUN/results.json is a Cyclotron job's results (`cyclotron train` / `cyclotron local`): after each
snapshot it records the ensemble the job would have delivered had it stopped there and the job's
seconds at that point (`so_far`: the range test, every epoch's validation, snapshot scoring and the
ensemble included). PEER.json is `bench/pytorch_fashion_recipe.py --json`: its model at each cycle
end and its seconds of training alone (its evaluations excluded). Both are read at cycle ends only.
Cyclotron is counted plain and with TTA; the peer plain and with flip TTA, so that the ensemble is
the only difference in the "with TTA" rows.
"""

import argparse
import json


def first_at(points, target):
    """The first (seconds, accuracy, label) whose accuracy reaches `target`, or None."""
    return next((p for p in points if p[1] >= target), None)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("peer")
    ap.add_argument("--targets", default="92.5,93,93.5")
    a = ap.parse_args()
    run = json.load(open(a.results))
    peer = json.load(open(a.peer))
    ours, ours_tta = [], []
    for s in run["snapshots"]:
        f = s.get("so_far")
        if not f:
            raise SystemExit(f"{a.results}: snapshot {s['index']} has no so_far record (results from before it existed)")
        e = f["ensemble"]
        label = f"epoch {s['epoch']}, members {e['members']}"
        ours.append((f["seconds"], 100 * e["accuracy"], label))
        if e.get("tta"):
            ours_tta.append((f["seconds"], 100 * e["tta"]["accuracy"], label))
    theirs = [(c["train_seconds"], 100 * c["test_accuracy"], f"epoch {c['epoch']}") for c in peer["cycles"]]
    theirs_tta = [(c["train_seconds"], 100 * c["test_accuracy_tta"], f"epoch {c['epoch']}") for c in peer["cycles"]]

    cell = lambda p: "not reached" if p is None else f"{p[0]:.1f} s ({p[2]}: {p[1]:.2f} %)"
    print("| target | Cyclotron (ensemble so far) | PyTorch (its model) | PyTorch / Cyclotron |")
    print("|---|---|---|---|")
    for t in [float(x) for x in a.targets.split(",")]:
        for name, mine, peers in (("plain", ours, theirs), ("with TTA", ours_tta, theirs_tta)):
            if not mine:
                continue
            m, p = first_at(mine, t), first_at(peers, t)
            ratio = f"{p[0] / m[0]:.2f}" if m and p else "—"
            print(f"| {t:.1f} % {name} | {cell(m)} | {cell(p)} | {ratio} |")


if __name__ == "__main__":
    main()
