"""A/B of ring builds against Gloo: the all-reduce section of `make bench` with more than one
Cyclotron binary, every variant in the same rounds (order rotating each round), so a change to
the ring is judged against the build before it and the peer under the same load.

    python bench/allreduce_ab.py --bin old=PATH --bin new=PATH [--rounds 5] [--sizes-mb 1,4,16,64]
                                 [--iters 10] [--out DIR]

Prints, per size, each variant's bus bandwidth (GB/s) as median / worst over the rounds (a
round's figure is the median of its calls), each round's slowest call as busbw, and each ring's
ratio to Gloo paired per round. Writes the rows to OUT/allreduce-ab.json.
"""

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", action="append", required=True, help="NAME=PATH of a cyclotron binary")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--sizes-mb", default="1,4,16,64")
    ap.add_argument("--iters", default="10")
    ap.add_argument("--out", default=tempfile.mkdtemp(prefix="allreduce-ab-"))
    a = ap.parse_args()
    bins = [b.split("=", 1) for b in a.bin]
    if any(len(b) != 2 for b in bins):
        raise SystemExit("--bin takes NAME=PATH")
    os.makedirs(a.out, exist_ok=True)
    report = h.Report()
    with open(os.path.join(a.out, "raw-commands.log"), "w") as log:
        runners = {name: h.Runner(path, a.python, os.path.join(a.out, "raw"), 1, a.rounds, log)
                   for name, path in bins}
        gloo_runner = next(iter(runners.values()))
        args = ["bench-allreduce", "--sizes-mb", a.sizes_mb, "--iters", a.iters]
        variants = [(name, (lambda r=r, name=name: r.pair(f"allreduce-{name}", args)))
                    for name, r in runners.items()]
        variants.append(("gloo", lambda: gloo_runner.run_json("allreduce-gloo", [
            a.python, os.path.join(HERE, "gloo_allreduce.py"), "--world-size", "2",
            "--sizes-mb", a.sizes_mb, "--iters", a.iters])))
        runs = {name: [] for name, _ in variants}
        loads = []
        for i in range(a.rounds):
            loads.append(round(h.load_average()[0], 2))
            for name, go in h.rotated(variants, i):
                runs[name].append(go())
    report(f"all-reduce A/B, 2 ranks on loopback, fp32 sum, {a.rounds} rounds x {a.iters} calls; "
           f"1-min load average at each round's start: {loads}")
    names = [name for name, _ in variants]
    rows, out = [], []
    for k, mb in enumerate(int(s) for s in a.sizes_mb.split(",")):
        bw = {n: [run[k]["busbw_gb_s"] for run in runs[n]] for n in names}
        slow = {n: [2 * (1 - 1 / run[k]["world_size"]) * mb * (1 << 20) / run[k]["worst_seconds"] / 1e9
                    for run in runs[n]] for n in names}
        ratio = {n: [x / g for x, g in zip(bw[n], bw["gloo"])] for n in names if n != "gloo"}
        rows.append([mb] + [h.mw(bw[n], 2) for n in names] + [h.mw(ratio[n], 2) for n in ratio]
                    + [h.mw(slow[n], 2) for n in names])
        out.append({"mb": mb, "busbw_gb_s": bw, "slowest_call_busbw": slow, "ratio_to_gloo": ratio})
    report.table(["MB"] + names + [f"{n} / gloo" for n in names if n != "gloo"]
                 + [f"{n} slowest call" for n in names], rows)
    with open(os.path.join(a.out, "allreduce-ab.json"), "w") as f:
        json.dump({"loads": loads, "sizes": out}, f, indent=2)


if __name__ == "__main__":
    main()
