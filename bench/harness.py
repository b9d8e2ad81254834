"""What every `make bench` section shares: running a command with a deadline, alternating the
variants of a comparison round by round, and reporting each figure as the median and the worst of
its rounds (a ratio's median and worst are taken over the rounds' paired ratios, so a slow round
of one side is not hidden by a fast round of the other).
"""

import json
import os
import platform
import socket
import statistics
import subprocess
import time


class BenchError(RuntimeError):
    pass


def median(xs):
    return statistics.median(xs)


def worst(xs, higher_is_better=True):
    return min(xs) if higher_is_better else max(xs)


def spread(xs, higher_is_better=True):
    """(median, worst) of `xs`."""
    return median(xs), worst(xs, higher_is_better)


def rotated(variants, round_index):
    """The variants in the order of round `round_index`: each round starts one further along, so
    every variant runs first, second, ... equally often (no side keeps the warm or the cold slot)."""
    k = round_index % len(variants)
    return variants[k:] + variants[:k]


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def load_average():
    return os.getloadavg()


class Runner:
    """Runs the benchmark commands: Cyclotron from one binary for the whole run, the peers with the
    venv's Python. Raw per-run JSON goes to `raw` (one file per run)."""

    def __init__(self, binary, python, raw, threads, rounds, log):
        self.bin, self.py, self.raw, self.threads, self.rounds = binary, python, raw, threads, rounds
        self.log = log
        self.count = 0
        os.makedirs(raw, exist_ok=True)

    def json_path(self, tag):
        self.count += 1
        return os.path.join(self.raw, f"{self.count:04d}-{tag}.json")

    def run(self, argv, env=None, timeout=900, cwd=None):
        """Run `argv` to completion (killed past `timeout`); its stdout. Raises with the output's
        tail when it fails."""
        full_env = dict(os.environ)
        for k, v in (env or {}).items():
            if v is None:
                full_env.pop(k, None)
            else:
                full_env[k] = v
        started = time.monotonic()
        try:
            p = subprocess.run(argv, env=full_env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise BenchError(f"{argv[:3]} did not finish within {timeout} s") from e
        self.log.write(f"# {time.monotonic() - started:7.2f} s  {' '.join(argv)}  env={env or {}}\n")
        if p.returncode != 0:
            tail = (p.stdout + p.stderr)[-3000:]
            raise BenchError(f"{' '.join(argv)} failed with exit code {p.returncode}:\n{tail}")
        return p.stdout

    def run_json(self, tag, argv, env=None, timeout=900):
        """Run `argv` with `--json PATH` appended; the JSON it wrote."""
        path = self.json_path(tag)
        self.run(argv + ["--json", path], env=env, timeout=timeout)
        with open(path) as f:
            return json.load(f)

    def pair(self, tag, args, timeout=600):
        """A Cyclotron data-parallel benchmark as two processes on loopback (rank 1 in the
        background); the JSON rank 0 wrote."""
        peers = ",".join(f"127.0.0.1:{p}" for p in free_ports(2))
        path = self.json_path(tag)
        group = ["--world-size", "2", "--peers", peers]
        r1 = subprocess.Popen([self.bin] + args + group + ["--rank", "1"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
        try:
            self.run([self.bin] + args + group + ["--rank", "0", "--json", path], timeout=timeout)
            _, err = r1.communicate(timeout=60)
            if r1.returncode != 0:
                raise BenchError(f"rank 1 of {args[0]} failed:\n{err[-3000:]}")
        finally:
            if r1.poll() is None:
                r1.kill()
                r1.wait()
        with open(path) as f:
            return json.load(f)


def header(binary, python):
    """The machine and build a run was measured on."""
    def sh(cmd):
        try:
            return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return "?"
    cpu = sh("lscpu | sed -n 's/^Model name: *//p' | head -1") or platform.processor()
    flags = sh("grep -m1 -o -w -e avx512f -e avx2 /proc/cpuinfo | sort -u | tr '\\n' ' '")
    mem = sh("free -g | awk '/Mem:/ {print $2}'")
    torch = sh(f"{python} -c 'import torch; print(torch.__version__, torch.backends.cpu.get_cpu_capability())'")
    commit = sh("git rev-parse --short HEAD") + ("" if not sh("git status --porcelain --untracked-files=no") else " (with uncommitted changes)")
    load = load_average()
    busiest = sh("ps -eo pcpu,comm --sort=-pcpu | sed -n '2,6p' | tr -s ' ' | tr '\\n' ';'")
    return {
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": cpu,
        "cpu_flags": flags,
        "cores": os.cpu_count(),
        "memory_gib": mem,
        "kernel": platform.release(),
        "torch": torch,
        "commit": commit,
        "binary": binary,
        "load_average_at_start": [round(x, 2) for x in load],
        "busiest_processes_at_start": busiest,
    }


class Report:
    """Prints lines and keeps them for the run's text report."""

    def __init__(self):
        self.lines = []

    def __call__(self, line=""):
        print(line, flush=True)
        self.lines.append(line)

    def table(self, head, rows):
        widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(head)]
        self(" ".join(str(h).rjust(w) for h, w in zip(head, widths)))
        for r in rows:
            self(" ".join(str(c).rjust(w) for c, w in zip(r, widths)))


def fmt(x, digits=1):
    return f"{x:.{digits}f}"


def mw(xs, digits=1, higher_is_better=True):
    """'median / worst' of `xs`."""
    m, w = spread(xs, higher_is_better)
    return f"{m:.{digits}f} / {w:.{digits}f}"
