"""PyTorch Gloo peer of `cyclotron bench-allreduce`: bus bandwidth of an in-place fp32 sum
all-reduce on loopback, one process per rank, same sizes and iteration counts.

    python bench/gloo_allreduce.py --world-size 2 --sizes-mb 1,4,16,64 --iters 10 --json OUT.json

busbw = algbw * 2(n-1)/n with algbw = bytes / median seconds (NCCL-tests' definition).
Writes a list of {"mb", "world_size", "iters", "seconds" (median), "worst_seconds", "algbw_gb_s",
"busbw_gb_s"} to --json.
"""

import argparse
import json
import os
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank, args, port, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=args.world_size)
    n = args.world_size
    rows = []
    for mb in args.sizes_mb:
        length = (mb << 20) // 4
        buf = torch.arange(length, dtype=torch.float32) % 7
        for _ in range(3):
            dist.all_reduce(buf)
        times = []
        for _ in range(max(args.iters, 1)):
            dist.barrier()
            t0 = time.perf_counter()
            dist.all_reduce(buf)
            times.append(time.perf_counter() - t0)
        seconds = statistics.median(times)
        algbw = length * 4 / seconds / 1e9
        rows.append({"mb": mb, "world_size": n, "iters": args.iters, "seconds": seconds,
                     "worst_seconds": max(times),
                     "algbw_gb_s": algbw, "busbw_gb_s": algbw * 2 * (n - 1) / n})
    if rank == 0:
        with open(out, "w") as f:
            json.dump(rows, f, indent=2)
        for r in rows:
            print(f"gloo {r['mb']} MB x{n}: busbw {r['busbw_gb_s']:.2f} GB/s ({1e3 * r['seconds']:.2f} ms)")
    dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world-size", type=int, default=2)
    ap.add_argument("--sizes-mb", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 16, 64])
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--json", default=os.devnull)
    args = ap.parse_args()
    mp.spawn(worker, args=(args, free_port(), args.json), nprocs=args.world_size, join=True)


if __name__ == "__main__":
    main()
