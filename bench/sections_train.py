"""make bench sections that train: the single-process step against PyTorch eager (with and
without the allocator tuning on each side), the metrics overhead, head training with precompute,
and data-parallel training against PyTorch DDP."""

import json
import os

import harness as h

HERE = os.path.dirname(os.path.abspath(__file__))
STEP_CONFIGS = [("small_resnet", 32, 128), ("small_resnet", 16, 256), ("resnet18", 0, 64)]
UNTUNED = {"CYCLOTRON_MALLOC_TUNING": "0"}


def step_commands(r, model, width, batch):
    """The command lines of `cyclotron bench-step` and its PyTorch peer for one configuration."""
    common = ["--model", model, "--width", str(width), "--batch-size", str(batch),
              "--threads", str(r.threads), "--steps", os.environ.get("BENCH_STEPS", "40")]
    return [r.bin, "bench-step"] + common, [r.py, os.path.join(HERE, "pytorch_step.py")] + common


def paired_ratios(got, **pairs):
    """{name: [a / b of each round]} for every name=(a, b) of `pairs`, over `got`'s variants."""
    return {name: [x / y for x, y in zip(got[a], got[b])] for name, (a, b) in pairs.items()}


def samples_per_s(r, variants, tag):
    """{variant: [samples/s of each round]}: every (name, argv, env) variant once a round, the
    order rotated from round to round."""
    got = {name: [] for name, _, _ in variants}
    for i in range(r.rounds):
        for name, argv, env in h.rotated(variants, i):
            got[name].append(r.run_json(f"{tag}-{name}", argv, env=env)["samples_per_s"])
    return got


def step(r, report):
    """Samples/s of the training step, seven variants per round: Cyclotron (allocator tuning on,
    its default, and off), PyTorch eager with glibc's defaults, with the same mallopt settings as
    Cyclotron, and with those plus its fused SGD (PyTorch at its fastest on this CPU); and both
    sides tuned with channels-last weights (`[runtime] memory_format = "channels_last"`, what it
    buys each)."""
    report("== single-process training step: Cyclotron vs PyTorch eager (same model, batch, threads, libtorch, SGD) ==")
    report("samples/s, median / worst of the rounds; ratios are paired per round")
    out = {"configs": []}
    for model, width, batch in STEP_CONFIGS:
        ours, theirs = step_commands(r, model, width, batch)
        variants = [
            ("cyclotron", ours, None),
            ("cyclotron_untuned", ours, UNTUNED),
            ("pytorch", theirs, None),
            ("pytorch_tuned", theirs + ["--malloc-tuning"], None),
            ("pytorch_tuned_fused", theirs + ["--malloc-tuning", "--fused"], None),
            ("cyclotron_channels_last", ours + ["--memory-format", "channels_last"], None),
            ("pytorch_tuned_channels_last", theirs + ["--malloc-tuning", "--channels-last"], None),
        ]
        got = samples_per_s(r, variants, f"step-{model}-{batch}")
        ratios = paired_ratios(got, same_settings=("cyclotron", "pytorch_tuned"), as_before=("cyclotron", "pytorch"),
                               both_untuned=("cyclotron_untuned", "pytorch"), vs_fused=("cyclotron", "pytorch_tuned_fused"),
                               both_channels_last=("cyclotron_channels_last", "pytorch_tuned_channels_last"),
                               cyclotron_channels_last_gain=("cyclotron_channels_last", "cyclotron"),
                               pytorch_channels_last_gain=("pytorch_tuned_channels_last", "pytorch_tuned"))
        report()
        report(f"{model} batch {batch}" + (f" width {width}" if model == "small_resnet" else "") + f", {r.threads} threads")
        h_rows = [[name, h.mw(v)] for name, v in got.items()]
        r_rows = [
            ["ratio, both tuned (same allocator settings)", h.mw(ratios["same_settings"], 3)],
            ["ratio, Cyclotron tuned vs PyTorch defaults (the old table)", h.mw(ratios["as_before"], 3)],
            ["ratio, both on glibc defaults", h.mw(ratios["both_untuned"], 3)],
            ["ratio vs PyTorch tuned + fused SGD", h.mw(ratios["vs_fused"], 3)],
            ["ratio, both tuned, channels-last weights", h.mw(ratios["both_channels_last"], 3)],
            ["channels-last / contiguous, Cyclotron", h.mw(ratios["cyclotron_channels_last_gain"], 3)],
            ["channels-last / contiguous, PyTorch", h.mw(ratios["pytorch_channels_last_gain"], 3)],
        ]
        report.table(["variant", "samples/s"], h_rows + r_rows)
        out["configs"].append({"model": model, "width": width, "batch": batch, "threads": r.threads,
                               "samples_per_s": got, "ratios": ratios})
    report("target: ratio >= 1.0 (small ResNets >= 1.2) with both sides on the same settings")
    return out


BF16_CONFIGS = [("small_resnet", 24, 128), ("resnet18", 0, 64)]


def step_bf16(r, report):
    """Samples/s of the training step under bf16 autocast (`[runtime] precision = "bf16"`) against
    PyTorch's torch.autocast, both with the same allocator settings, and each against its own
    fp32 step in the same round (what mixed precision buys on this CPU)."""
    report("== bf16 autocast training step: Cyclotron vs PyTorch eager (same model, batch, threads, allocator) ==")
    report("samples/s, median / worst of the rounds; ratios are paired per round")
    out = {"configs": []}
    for model, width, batch in BF16_CONFIGS:
        ours, theirs = step_commands(r, model, width, batch)
        theirs = theirs + ["--malloc-tuning"]
        variants = [
            ("cyclotron_bf16", ours + ["--precision", "bf16"], None),
            ("cyclotron_fp32", ours, None),
            ("pytorch_bf16", theirs + ["--precision", "bf16"], None),
            ("pytorch_fp32", theirs, None),
        ]
        got = samples_per_s(r, variants, f"bf16-{model}-{batch}")
        ratios = paired_ratios(got, cyclotron_vs_pytorch_bf16=("cyclotron_bf16", "pytorch_bf16"),
                               cyclotron_bf16_vs_fp32=("cyclotron_bf16", "cyclotron_fp32"),
                               pytorch_bf16_vs_fp32=("pytorch_bf16", "pytorch_fp32"))
        report()
        report(f"{model} batch {batch}" + (f" width {width}" if model == "small_resnet" else "") + f", {r.threads} threads")
        report.table(["variant", "samples/s"], [[name, h.mw(v)] for name, v in got.items()] + [
            ["ratio, Cyclotron bf16 / PyTorch bf16", h.mw(ratios["cyclotron_vs_pytorch_bf16"], 3)],
            ["ratio, Cyclotron bf16 / its fp32", h.mw(ratios["cyclotron_bf16_vs_fp32"], 3)],
            ["ratio, PyTorch bf16 / its fp32", h.mw(ratios["pytorch_bf16_vs_fp32"], 3)],
        ])
        out["configs"].append({"model": model, "width": width, "batch": batch, "threads": r.threads,
                               "samples_per_s": got, "ratios": ratios})
    report("target: Cyclotron bf16 / PyTorch bf16 >= 1.0")
    return out


def metrics(r, report):
    """The learner's step with vs without what observes it in a worker's training child
    (Prometheus metrics, and the event stream to the agent with its step summaries for the
    coordinator's live view and straggler rule); each process alternates 6 pairs of epochs itself
    and reports their median, and the processes are the rounds."""
    report("== observer overhead: the learner's training step with vs without Prometheus metrics + the event stream's step summaries ==")
    runs = []
    for i in range(r.rounds):
        runs.append(r.run_json("metrics", [r.bin, "bench-metrics", "--model", "small_resnet", "--width", "16",
                                           "--batch-size", "64", "--threads", str(r.threads),
                                           "--steps", os.environ.get("BENCH_METRICS_STEPS", "30"),
                                           "--rounds", os.environ.get("BENCH_METRICS_ROUNDS", "6")]))
    col = lambda k, s=1: [x[k] * s for x in runs]  # noqa: E731
    report.table(["measure", "median / worst", "target"], [
        ["step without observers (ms)", h.mw(col("step_ms_off"), 2, False), ""],
        ["step with metrics + step summaries (ms)", h.mw(col("step_ms_on"), 2, False), ""],
        ["with / without - 1 (%)", h.mw(col("overhead", 100), 2, False), "< 1%"],
        ["recording alone (us per step)", h.mw(col("record_us_per_step"), 3, False), ""],
        ["recording alone / step (%)", h.mw(col("record_fraction_of_step", 100), 4, False), "< 1%"],
    ])
    return {"runs": runs}


def head(r, report):
    """Head training with a frozen body, full forward pass vs precomputed features."""
    report("== head training with a frozen body: full forward pass vs precompute (resnet34, 64x64 inputs) ==")
    runs = [r.run_json("head", [r.bin, "bench-head", "--model", "resnet34", "--size", "64", "--batch-size", "64",
                                "--threads", str(r.threads), "--steps", os.environ.get("BENCH_HEAD_STEPS", "10")])
            for _ in range(r.rounds)]
    col = lambda k: [x[k] for x in runs]  # noqa: E731
    report.table(["samples/s", "median / worst"], [
        ["full forward pass", h.mw(col("full_samples_per_s"))],
        ["precomputed features", h.mw(col("cached_samples_per_s"))],
        ["filling the cache", h.mw(col("precompute_samples_per_s"))],
    ])
    return {"runs": runs}


def ddp(r, report):
    """Data-parallel small_resnet, one process per rank, 1 thread each: Cyclotron's ring against
    PyTorch DDP on Gloo, both with the same allocator settings; 1 and 2 processes of each."""
    batch = os.environ.get("BENCH_DDP_BATCH", "64")
    args = ["--model", "small_resnet", "--width", "16", "--batch-size", batch, "--threads", "1",
            "--steps", os.environ.get("BENCH_DDP_STEPS", "30")]
    report(f"== data-parallel training, small_resnet w16, batch {batch}/rank, 1 thread/rank: "
           "Cyclotron vs PyTorch DDP (Gloo), both with the same allocator settings ==")
    torch = [r.py, os.path.join(HERE, "pytorch_ddp.py"), "--malloc-tuning"] + args
    variants = [
        ("cyclotron_1", lambda: r.run_json("ddp-c1", [r.bin, "bench-ddp"] + args)),
        ("cyclotron_2", lambda: r.pair("ddp-c2", ["bench-ddp"] + args)),
        ("pytorch_1", lambda: r.run_json("ddp-p1", torch + ["--world-size", "1"])),
        ("pytorch_2", lambda: r.run_json("ddp-p2", torch + ["--world-size", "2"])),
    ]
    got = {name: [] for name, _ in variants}
    for i in range(r.rounds):
        for name, go in h.rotated(variants, i):
            got[name].append(go()["samples_per_s"])
    pair = lambda a, b: [x / y for x, y in zip(got[a], got[b])]  # noqa: E731
    derived = {
        "ratio_1": pair("cyclotron_1", "pytorch_1"),
        "ratio_2": pair("cyclotron_2", "pytorch_2"),
        "cyclotron_scaling": pair("cyclotron_2", "cyclotron_1"),
        "pytorch_scaling": pair("pytorch_2", "pytorch_1"),
    }
    report.table(["measure", "median / worst"], [
        ["cyclotron 1 process (samples/s)", h.mw(got["cyclotron_1"])],
        ["cyclotron 2 processes (samples/s)", h.mw(got["cyclotron_2"])],
        ["pytorch ddp 1 process (samples/s)", h.mw(got["pytorch_1"])],
        ["pytorch ddp 2 processes (samples/s)", h.mw(got["pytorch_2"])],
        ["2 processes: cyclotron / ddp", h.mw(derived["ratio_2"], 2)],
        ["1 process: cyclotron / pytorch", h.mw(derived["ratio_1"], 2)],
        ["scaling 2 vs 1: cyclotron", h.mw(derived["cyclotron_scaling"], 2)],
        ["scaling 2 vs 1: pytorch ddp", h.mw(derived["pytorch_scaling"], 2)],
    ])
    report("target: cyclotron 2 processes >= 1.8x one and >= 1.3x DDP")
    return {"samples_per_s": got, **derived}


LM_CONFIG = {"vocab": 4000, "emb": 128, "hidden": 256, "layers": 2, "batch": 32, "bptt": 70}


def lm(r, report):
    """Tokens/s of the LSTM language model's training step (truncated BPTT, AdamW, clipping):
    Cyclotron (examples/text_lm.toml's model) vs PyTorch eager with the same model, batch, bptt,
    threads and allocator settings, alternating."""
    steps = os.environ.get("BENCH_LM_STEPS", "12")
    c = LM_CONFIG
    report("== language model training step: Cyclotron vs PyTorch eager (same AWD-LSTM-style model, batch, bptt, threads, AdamW + clip) ==")
    common = ["--vocab", str(c["vocab"]), "--emb", str(c["emb"]), "--hidden", str(c["hidden"]),
              "--layers", str(c["layers"]), "--batch", str(c["batch"]), "--bptt", str(c["bptt"]),
              "--threads", str(r.threads), "--steps", steps, "--warmup", "3"]
    variants = [
        ("cyclotron", [r.bin, "bench-lm"] + common),
        ("pytorch_tuned", [r.py, os.path.join(HERE, "pytorch_lm.py"), "--malloc-tuning"] + common),
        ("pytorch", [r.py, os.path.join(HERE, "pytorch_lm.py")] + common),
    ]
    got = {name: [] for name, _ in variants}
    for i in range(r.rounds):
        for name, argv in h.rotated(variants, i):
            got[name].append(r.run_json(f"lm-{name}", argv)["tokens_per_s"])
    ratios = {
        "same_settings": [a / b for a, b in zip(got["cyclotron"], got["pytorch_tuned"])],
        "vs_defaults": [a / b for a, b in zip(got["cyclotron"], got["pytorch"])],
    }
    report(f"emb {c['emb']} hidden {c['hidden']} layers {c['layers']} vocab {c['vocab']} batch {c['batch']} "
           f"bptt {c['bptt']}, {r.threads} threads; tokens/s, median / worst")
    report.table(["variant", "tokens/s"], [[n, h.mw(v, 0)] for n, v in got.items()] + [
        ["ratio, both tuned (same allocator settings)", h.mw(ratios["same_settings"], 3)],
        ["ratio vs PyTorch defaults", h.mw(ratios["vs_defaults"], 3)],
    ])
    report("target: ratio >= 1.0")
    return dict(LM_CONFIG, threads=r.threads, tokens_per_s=got, ratios=ratios)


def tabular(r, report):
    """Rows/s of tabular training (entity embeddings, examples/tabular_sales.toml: its data, model,
    batch and AdamW): whole epochs of Cyclotron's learner vs PyTorch eager training the same model on
    as many rows (bench/pytorch_tabular.py), same threads, both with and without the allocator
    settings, alternating. Cyclotron's result JSON of the round is the peer's model description."""
    job = os.environ.get("BENCH_TABULAR_JOB", os.path.join(os.path.dirname(HERE), "examples", "tabular_sales.toml"))
    epochs = os.environ.get("BENCH_TABULAR_EPOCHS", "5")
    common = ["--threads", str(r.threads), "--epochs", epochs, "--warmup", "1"]
    report("== tabular training: Cyclotron vs PyTorch eager (same entity-embedding model, rows, batch, threads, AdamW) ==")
    config_path = r.json_path("tabular-config")
    r.run([r.bin, "bench-tabular", job, "--epochs", "1", "--warmup", "0", "--threads", str(r.threads),
           "--json", config_path])
    with open(config_path) as f:
        config = json.load(f)
    peer = [r.py, os.path.join(HERE, "pytorch_tabular.py"), "--config", config_path] + common
    variants = [
        ("cyclotron", [r.bin, "bench-tabular", job] + common, None),
        ("pytorch_tuned", peer + ["--malloc-tuning"], None),
        ("pytorch", peer, None),
    ]
    got = {name: [] for name, _, _ in variants}
    for i in range(r.rounds):
        for name, argv, env in h.rotated(variants, i):
            got[name].append(r.run_json(f"tabular-{name}", argv, env=env)["rows_per_s_median"])
    ratios = {
        "same_settings": [a / b for a, b in zip(got["cyclotron"], got["pytorch_tuned"])],
        "vs_defaults": [a / b for a, b in zip(got["cyclotron"], got["pytorch"])],
    }
    m = config["model"]
    report(f"{config['rows']} rows/epoch, batch {config['batch_size']}, embeddings {m['embeddings']}, "
           f"{m['n_cont']} continuous, layers {m['layers']}, {r.threads} threads; rows/s (median epoch of "
           f"{epochs}), median / worst of the rounds")
    report.table(["variant", "rows/s"], [[n, h.mw(v, 0)] for n, v in got.items()] + [
        ["ratio, both tuned (same allocator settings)", h.mw(ratios["same_settings"], 3)],
        ["ratio vs PyTorch defaults", h.mw(ratios["vs_defaults"], 3)],
    ])
    report("target: ratio >= 1.0 (issue 13)")
    return {"job": job, "config": config, "threads": r.threads, "rows_per_s": got, "ratios": ratios}


def torchscript(r, report):
    """Steps/s of a user's TorchScript module against Cyclotron's own model of the same
    architecture: torchvision's ResNet-18 scripted (`torch.jit.script`) and trained by `cyclotron
    bench-step --model torchscript`, vs the built-in `resnet18`, same batch, synthetic
    [B, 3, 32, 32] images, threads and SGD, alternating rounds (issue 13: ratio >= 0.9)."""
    steps = os.environ.get("BENCH_STEPS", "40")
    batch = int(os.environ.get("BENCH_TORCHSCRIPT_BATCH", "64"))
    module = os.path.join(r.raw, "torchvision_resnet18.pt")
    r.run([r.py, "-c", "import sys, torch, torchvision; torch.manual_seed(0); "
           "torch.jit.script(torchvision.models.resnet18(num_classes=10)).save(sys.argv[1])", module])
    report("== a user's TorchScript module: torchvision resnet18 scripted vs Cyclotron's resnet18 (same batch, threads, SGD) ==")
    common = ["--batch-size", str(batch), "--threads", str(r.threads), "--steps", steps]
    variants = [
        ("builtin_resnet18", [r.bin, "bench-step", "--model", "resnet18"] + common, None),
        ("torchscript_resnet18", [r.bin, "bench-step", "--model", "torchscript", "--torchscript", module] + common, None),
    ]
    got = {name: [] for name, _, _ in variants}
    for i in range(r.rounds):
        for name, argv, env in h.rotated(variants, i):
            got[name].append(r.run_json(f"torchscript-{name}", argv, env=env)["samples_per_s"])
    ratio = [a / b for a, b in zip(got["torchscript_resnet18"], got["builtin_resnet18"])]
    report(f"batch {batch}, {r.threads} threads, {steps} steps; samples/s, median / worst of the rounds; ratio paired per round")
    report.table(["variant", "samples/s"], [[n, h.mw(v)] for n, v in got.items()] + [
        ["ratio TorchScript / built-in", h.mw(ratio, 3)],
    ])
    report("target: ratio >= 0.9 (issue 13)")
    return {"batch": batch, "threads": r.threads, "samples_per_s": got, "ratio": ratio}
