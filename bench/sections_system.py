"""make bench sections of the system around training: all-reduce against Gloo, checkpoints
against raw object_store gets, the parallel LR sweep against one sequential range test, and the
coordinator's RPC, commit and failover latencies."""

import os
import signal
import subprocess
import tempfile
import time

import harness as h

HERE = os.path.dirname(os.path.abspath(__file__))


def allreduce(r, report):
    """Bus bandwidth of an in-place fp32 sum all-reduce, 2 ranks on loopback, one process per
    rank: Cyclotron's ring against PyTorch's Gloo, alternating."""
    sizes = os.environ.get("BENCH_ALLREDUCE_MB", "1,4,16,64")
    iters = os.environ.get("BENCH_ALLREDUCE_ITERS", "10")
    report("== all-reduce, 2 ranks on loopback, fp32 sum: Cyclotron ring vs PyTorch Gloo (bus bandwidth, GB/s) ==")
    variants = [
        ("ring", lambda: r.pair("allreduce-ring", ["bench-allreduce", "--sizes-mb", sizes, "--iters", iters])),
        ("gloo", lambda: r.run_json("allreduce-gloo", [r.py, os.path.join(HERE, "gloo_allreduce.py"),
                                                       "--world-size", "2", "--sizes-mb", sizes, "--iters", iters])),
    ]
    runs = {"ring": [], "gloo": []}
    for i in range(r.rounds):
        for name, go in h.rotated(variants, i):
            runs[name].append(go())
    rows, out = [], []
    for k, mb in enumerate(int(s) for s in sizes.split(",")):
        col = lambda who, key: [run[k][key] for run in runs[who]]  # noqa: E731
        ring, gloo = col("ring", "busbw_gb_s"), col("gloo", "busbw_gb_s")
        ratios = [a / b for a, b in zip(ring, gloo)]
        # each run's slowest call, as bus bandwidth
        slow = lambda who: [2 * (1 - 1 / run[k]["world_size"]) * mb * (1 << 20) / run[k]["worst_seconds"] / 1e9  # noqa: E731
                            for run in runs[who]]
        rows.append([mb, h.mw(ring, 2), h.mw(gloo, 2), h.mw(ratios, 2), h.mw(slow("ring"), 2), h.mw(slow("gloo"), 2)])
        out.append({"mb": mb, "ring_busbw_gb_s": ring, "gloo_busbw_gb_s": gloo, "ratio": ratios,
                    "ring_slowest_call_busbw": slow("ring"), "gloo_slowest_call_busbw": slow("gloo")})
    report.table(["MB", "ring", "gloo", "ring / gloo", "ring slowest call", "gloo slowest call"], rows)
    report(f"a round's figure is the median of its {iters} calls; 'slowest call' is each round's slowest, as busbw")
    report("target: ring / gloo worst >= 1.2 and median >= 1.5 at every size")
    return {"sizes": out}


def checkpoint(r, report):
    """Training stall per checkpoint and verified restore against raw gets of the same blobs with
    the same concurrency, order alternating (in one process: an in-process S3 server)."""
    rounds = str(r.rounds)
    report("== checkpoints: training stall per checkpoint, verified restore vs raw object_store get (resnet50, 1000 classes) ==")
    res = r.run_json("checkpoint", [r.bin, "bench-checkpoint", "--model", "resnet50", "--batch-size", "16",
                                    "--side", "64", "--threads", str(r.threads), "--checkpoints", rounds,
                                    "--steps-between", "2", "--rounds", rounds])
    report(f"store {res['store']}, checkpoint {res['checkpoint_mb']:.1f} MB (model + optimiser), "
           f"{res['concurrency']} blobs in flight for both restore and raw gets")
    report.table(["measure", "median / worst", "target"], [
        ["step (ms)", h.mw(res["step_ms"], 1, False), ""],
        ["step while uploading (ms)", h.mw(res["step_ms_uploading"], 1, False), ""],
        ["stall per checkpoint (ms)", h.mw(res["stall_ms"], 1, False), ""],
        ["stall / median step", h.mw([s / h.median(res["step_ms"]) for s in res["stall_ms"]], 3, False), "< 0.10"],
        ["verified restore (MB/s)", h.mw(res["restore_mb_s"]), ""],
        ["raw object_store get (MB/s)", h.mw(res["raw_get_mb_s"]), ""],
        ["restore / raw get (paired)", h.mw(res["restore_ratio"], 3), ">= 0.50"],
    ])
    return res


JOB = """name = "sweep-bench"
seed = 3
output = "file://./store"
[data]
source = "fashion_mnist"
batch_size = {batch}
limit_train = {limit}
limit_eval = 500
[model]
arch = "small_resnet"
width = 16
[lr_find]
start = 1e-4
end = 3.0
steps = {ramp_steps}
grid = {grid}
grid_steps = {steps}
[[stage]]
lr = "auto"
epochs = 1
[ensemble]
members = 1
[runtime]
device = "cpu"
"""


def _until(argv, cwd, marker, deadline, stream):
    """Seconds from starting `argv` to the first output line containing `marker` (read from
    stdout or stderr), then the process is stopped with ctrl-c (SIGINT)."""
    t0 = time.monotonic()
    p = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE if stream == "stdout" else subprocess.DEVNULL,
                         stderr=subprocess.PIPE if stream == "stderr" else subprocess.DEVNULL, text=True)
    lines = []
    seen = None
    try:
        for line in (p.stdout if stream == "stdout" else p.stderr):
            lines.append(line)
            if marker in line:
                seen = time.monotonic() - t0
                break
            if time.monotonic() - t0 > deadline:
                break
    finally:
        p.send_signal(signal.SIGINT)  # a local cluster stops every process it started
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    if seen is None:
        raise h.BenchError(f"{argv[1]} never printed {marker!r}:\n" + "".join(lines[-30:]))
    return seen


def sweep(r, report):
    """The coordinator's parallel LR grid (K points of S steps on W local workers) against one
    sequential range test of K*S steps on one process with every core; both timed from process
    start to the line that gives the suggestion."""
    grid = int(os.environ.get("BENCH_SWEEP_GRID", 4))
    steps = int(os.environ.get("BENCH_SWEEP_STEPS", 120))
    workers = os.environ.get("BENCH_SWEEP_WORKERS", "2")
    batch = 64
    ramp = grid * steps
    report(f"== parallel LR sweep: a grid of {grid} LRs x {steps} steps on {workers} local workers vs one "
           f"range test of the same {ramp} steps on one process; both from process start to the suggestion ==")
    text = JOB.format(batch=batch, limit=ramp * batch, ramp_steps=ramp, grid=grid, steps=steps)

    def parallel():
        with tempfile.TemporaryDirectory() as d:
            open(os.path.join(d, "job.toml"), "w").write(text)
            argv = [r.bin, "local", "--workers", workers, "--workers-per-run", "1", "job.toml", "--out", "out"]
            return _until(argv, d, "LR sweep done", 600, "stderr")

    def sequential():
        with tempfile.TemporaryDirectory() as d:
            open(os.path.join(d, "job.toml"), "w").write(text.replace("grid = ", "# grid = "))
            argv = [r.bin, "--quiet", "lr-find", "job.toml", "--out", "out"]
            return _until(argv, d, "suggested learning rates", 600, "stdout")

    got = {"parallel": [], "sequential": []}
    variants = [("parallel", parallel), ("sequential", sequential)]
    for i in range(r.rounds):
        for name, go in h.rotated(variants, i):
            got[name].append(go())
    speedup = [s / p for s, p in zip(got["sequential"], got["parallel"])]
    report.table(["measure", "median / worst"], [
        [f"sequential range test, {ramp} steps, 1 process x {os.cpu_count()} threads (s)", h.mw(got["sequential"], 2, False)],
        [f"parallel grid {grid} x {steps} steps on {workers} workers (s)", h.mw(got["parallel"], 2, False)],
        ["sequential / parallel (paired)", h.mw(speedup, 2)],
    ])
    return {"grid": grid, "steps_per_point": steps, "workers": int(workers), "seconds": got, "speedup": speedup}


def bench_certificates(folder):
    """A CA and a certificate for 127.0.0.1 signed by it (openssl, P-256), for the secured runs."""
    def ssl(*args):
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True, timeout=60)
    ssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "ca.key",
        "-out", "ca.pem", "-days", "2", "-subj", "/CN=cyclotron-bench-ca",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
    ssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "server.key",
        "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    with open(os.path.join(folder, "ext.cnf"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth,clientAuth\n")
    ssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf")
    return [os.path.join(folder, n) for n in ("server.pem", "server.key", "ca.pem")]


def coordinator(r, report):
    """Heartbeat RPC latency of simulated workers, 3-replica raft commits and leader failover,
    each round as an open loopback cluster and as a secured one (cluster and peer tokens on every
    call, TLS on every connection), alternating: what security costs."""
    n = os.environ.get("BENCH_WORKERS", "1000")
    report(f"== coordinator: {n} simulated workers heartbeating at 1 Hz over gRPC, 3-replica raft commits on loopback, leader failover; open vs secured (tokens + TLS) ==")
    base = [r.bin, "bench-coordinator", "--workers", n, "--seconds", os.environ.get("BENCH_HEARTBEAT_S", "10")]
    with tempfile.TemporaryDirectory() as certs:
        cert, key, ca = bench_certificates(certs)
        variants = [
            ("open", base),
            ("secured", base + ["--secure", "--tls-cert", cert, "--tls-key", key, "--tls-ca", ca]),
            # the web view served, a viewer on the cluster page (live stream + a load every 0.5 s)
            ("open+web", base + ["--web"]),
        ]
        got = {name: [] for name, _ in variants}
        for i in range(r.rounds):
            for name, argv in h.rotated(variants, i):
                got[name].append(r.run_json(f"coordinator-{name}", argv))
    rows = []
    for name in ("open", "secured", "open+web"):
        runs = got[name]
        hb = lambda k: [x["heartbeat"][k] for x in runs]  # noqa: E731
        cm = lambda k: [x["commit_3_replicas"][k] for x in runs]  # noqa: E731
        rows += [
            [f"{name}: heartbeat RPC p50", h.mw(hb("p50_ms"), 2, False), ""],
            [f"{name}: heartbeat RPC p99", h.mw(hb("p99_ms"), 2, False), "< 50"],
            [f"{name}: heartbeat errors", h.mw(hb("errors"), 0, False), "0"],
            [f"{name}: 3-replica commit p50", h.mw(cm("p50_ms"), 2, False), ""],
            [f"{name}: 3-replica commit p99", h.mw(cm("p99_ms"), 2, False), "< 20"],
            [f"{name}: leader failover (stop to a new commit)", h.mw([x["failover_ms"] for x in runs], 0, False), "< 3000"],
        ]
        if name == "open+web":
            rows += [
                [f"{name}: cluster page load p50 ({n} worker rows)", h.mw([x["heartbeat"]["web_page"]["p50_ms"] for x in runs], 2, False), ""],
                [f"{name}: cluster page load p99", h.mw([x["heartbeat"]["web_page"]["p99_ms"] for x in runs], 2, False), ""],
            ]
    report.table(["measure (ms)", "median / worst", "target"], rows)
    return {"runs": got["open"], "secured_runs": got["secured"], "web_runs": got["open+web"]}
