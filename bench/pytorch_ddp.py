"""PyTorch DDP (Gloo) peer of `cyclotron bench-ddp`: data-parallel training throughput of the same
model, batch per rank, threads per rank and optimiser, one process per rank on loopback.

    python bench/pytorch_ddp.py --world-size 2 --model small_resnet --width 16 --batch-size 64 \
        --threads 1 --steps 30 --warmup 3 --json OUT.json

DDP runs with bucket_cap_mb=25 (as Cyclotron's buckets) and broadcast_buffers=False: Cyclotron
keeps BatchNorm statistics per replica, so both do the same work. The model is the twin in
bench/pytorch_step.py. samples/s counts every rank's samples. Writes {"samples_per_s", ...}.
--malloc-tuning gives every rank the glibc settings Cyclotron applies to itself.
"""

import argparse
import json
import os
import socket
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pytorch_step import build, tune_malloc  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank, args, port):
    if args.malloc_tuning and not tune_malloc():
        raise SystemExit("--malloc-tuning: glibc refused the mallopt settings")
    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=args.world_size)
    torch.manual_seed(rank)
    net, shape = build(args.model, args.width)
    net.train()
    model = DDP(net, bucket_cap_mb=25, broadcast_buffers=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(args.batch_size, *shape)
    y = torch.randint(0, 10, (args.batch_size,))

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    for _ in range(args.warmup):
        step()
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    total = time.perf_counter() - t0
    if rank == 0:
        result = {"model": args.model, "world_size": args.world_size, "batch_per_rank": args.batch_size,
                  "threads": args.threads, "steps": args.steps,
                  "samples_per_s": args.steps * args.world_size * args.batch_size / total,
                  "torch": torch.__version__, "malloc_tuning": args.malloc_tuning}
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"pytorch ddp {args.model} x{args.world_size} batch {args.batch_size}/rank: "
              f"{result['samples_per_s']:.1f} samples/s")
    dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world-size", type=int, default=2)
    ap.add_argument("--model", default="small_resnet", choices=["small_resnet", "resnet18"])
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--json", default=os.devnull)
    ap.add_argument("--malloc-tuning", action="store_true", help="Cyclotron's mallopt settings in every rank")
    args = ap.parse_args()
    mp.spawn(worker, args=(args, free_port()), nprocs=args.world_size, join=True)


if __name__ == "__main__":
    main()
