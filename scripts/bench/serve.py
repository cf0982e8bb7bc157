"""Serve suite: load on `translator serve` from 1, 8 and 32 concurrent clients.

A server subprocess is started on 127.0.0.1 with a run (`--serve-run`; without one, a small
toy run is first trained on the built-in corpus into a temp folder, a minute or two). Each
client is a thread with its own keep-alive HTTP connection that sends single sentences from
the run's test split, one request after another, for `--serve-seconds` per concurrency level.
Reported per level: requests/s, sentences/s, p50/p95/p99 latency, failed requests and the
mean batch the server decoded (from its /health counters). Then clients keep sending until
10,000 requests in all, and the server's peak RSS (VmHWM from /proc/<pid>/status) is read
after 1,000 and after 10,000 requests: it should stay flat, not grow with requests served.

Keys: `serve.rps_c1`, `serve.rps_c8`, `serve.rps_c32`, `serve.p99_ms_c32`, `serve.failed`,
`serve.batching_gain` (requests/s at 32 clients over 1), `serve.rss_mb` (after 10,000 requests)
and `serve.rss_mb_1k` (after 1,000).
"""

from __future__ import annotations

import argparse
import itertools
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import markdown_table

ROOT = Path(__file__).resolve().parents[2]
LEVELS = (1, 8, 32)
RSS_MARKS = (1_000, 10_000)


def add_arguments(group: argparse._ArgumentGroup) -> None:
    """Options of the serve suite."""
    group.add_argument("--serve-run", type=Path, default=None,
                       help="Run folder to serve (default: train a small toy run first).")
    group.add_argument("--serve-seconds", type=float, default=20.0,
                       help="Seconds of load per concurrency level (default 20).")
    group.add_argument("--serve-engine", choices=("native", "ctranslate2"), default="native")
    group.add_argument("--serve-beam", type=int, default=None,
                       help="Beam size each request asks for (default: none, so the run's "
                       "decoding.beam_size).")
    group.add_argument("--serve-max-batch", type=int, default=64,
                       help="The server's --max-batch.")
    group.add_argument("--serve-batch-wait-ms", type=float, default=5.0,
                       help="The server's --batch-wait-ms.")


def _toy_run(folder: Path, quick: bool) -> Path:
    """Train a small model on the built-in corpus (a minute or two on 2 cores)."""
    from translator.config import config_from_dict
    from translator.train.loop import train

    run_dir = folder / "serve-toy"
    cfg = config_from_dict({
        "data": {"source": "builtin", "builtin_size": 2000 if quick else 6000, "max_len": 48},
        "tokenizer": {"min_frequency": 1},
        "model": {"d_model": 64, "layers": 2, "heads": 4, "d_ff": 256, "dropout": 0.0,
                  "norm": "pre"},
        "training": {"epochs": 2 if quick else 4, "max_tokens": 2000, "lr": 0.003,
                     "warmup_steps": 50, "valid_max_sentences": 50, "examples": 0,
                     "log_every": 50},
        "output": {"dir": str(run_dir)},
    }, name="serve-toy")
    print(f"(no --serve-run: training a toy run into {run_dir})", file=sys.stderr)
    train(cfg, quiet=True)
    return run_dir


def _test_sentences(run_dir: Path) -> list[str]:
    from translator.config import load_config
    from translator.evaluate import load_split

    cfg = load_config(run_dir / "config.yaml")
    sources = [s for s, _ in load_split(cfg.data, "test") if s.strip()]
    if not sources:
        raise SystemExit(f"{run_dir}: the test split is empty")
    return sources


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _memory_mb(pid: int) -> tuple[float, float]:
    """(VmHWM, VmRSS) of a process in MiB: its peak and current resident memory."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                values[key] = int(rest.split()[0]) / 1024  # kB
    return values.get("VmHWM", float("nan")), values.get("VmRSS", float("nan"))


@dataclass
class Load:
    """Shared between the client threads: request counter, RSS readings at the marks."""

    pid: int
    total: int = 0
    failed: int = 0
    rss: dict[int, tuple[float, float]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, ok: bool) -> None:
        with self.lock:
            self.total += 1
            self.failed += 0 if ok else 1
            if self.total in RSS_MARKS:
                self.rss[self.total] = _memory_mb(self.pid)


def _drive(url: str, sentences: list[str], clients: int, seconds: float, load: Load,
           until_total: int | None = None, beam: int | None = None,
           ) -> tuple[list[float], int, float]:
    """`clients` threads sending one sentence per request for `seconds` (or until the
    shared total reaches `until_total`). Returns successful latencies (s), failures, time."""
    import httpx

    cursor = itertools.count()
    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()
    # Clients (and their connection pools) are made before the clock starts, and all threads
    # start together: making 32 httpx clients takes a while on a small machine.
    https = [httpx.Client(timeout=60) for _ in range(clients)]
    ready = threading.Barrier(clients + 1)
    clock: dict[str, float] = {}

    def client(http: httpx.Client) -> None:
        ready.wait()
        stop_at = clock["start"] + seconds
        while True:
            if until_total is None and time.perf_counter() >= stop_at:
                return
            if until_total is not None and load.total >= until_total:
                return
            text = sentences[next(cursor) % len(sentences)]
            t0 = time.perf_counter()
            try:
                body: dict[str, object] = {"q": text} if beam is None else {"q": text, "beam": beam}
                ok = http.post(f"{url}/translate", json=body).status_code == 200
            except httpx.HTTPError:
                ok = False
            took = time.perf_counter() - t0
            with lock:
                if ok:
                    latencies.append(took)
                else:
                    failures[0] += 1
            load.count(ok)

    threads = [threading.Thread(target=client, args=(http,)) for http in https]
    for t in threads:
        t.start()
    clock["start"] = start = time.perf_counter()
    ready.wait()
    for t in threads:
        t.join()
    for http in https:
        http.close()
    return latencies, failures[0], time.perf_counter() - start


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def run(args: argparse.Namespace) -> dict[str, float]:
    """Start a server, load it at 1, 8 and 32 clients, print a table, return `serve.*`."""
    import httpx

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.serve_run or _toy_run(Path(tmp), args.quick)
        sentences = _test_sentences(run_dir)
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(ROOT), os.environ.get("PYTHONPATH", "")])}
        if args.threads:
            env["OMP_NUM_THREADS"] = str(args.threads)
        log_path = Path(tmp) / "server.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "translator", "serve", "--run", str(run_dir), "--port",
                 str(port), "--engine", args.serve_engine, "--no-access-log",
                 "--max-batch", str(args.serve_max_batch),
                 "--batch-wait-ms", str(args.serve_batch_wait_ms), "--timeout", "60"],
                stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + 300
            while True:
                if proc.poll() is not None:
                    raise SystemExit("the server exited:\n" + log_path.read_text())
                try:
                    health = httpx.get(f"{url}/health", timeout=2).json()
                    break
                except httpx.HTTPError:
                    if time.monotonic() > deadline:
                        raise SystemExit("the server did not start:\n" + log_path.read_text())\
                            from None
                    time.sleep(0.3)
            load = Load(proc.pid)
            warm = Load(proc.pid)  # warm-up requests count towards nothing
            _drive(url, sentences, 4, 0.0, warm, until_total=40, beam=args.serve_beam)
            rows, results = [], {}
            for clients in LEVELS:
                before = httpx.get(f"{url}/health").json()
                lat, failed, secs = _drive(url, sentences, clients, args.serve_seconds, load,
                                             beam=args.serve_beam)
                after = httpx.get(f"{url}/health").json()
                batches = after["batches"] - before["batches"]
                decoded = after["sentences_translated"] - before["sentences_translated"]
                rps = len(lat) / secs
                p50, p95, p99 = (_percentile(lat, q) * 1000 for q in (50, 95, 99))
                # Sentences as the server counted them (a test line may hold two).
                rows.append([clients, len(lat) + failed, rps, decoded / secs, p50, p95,
                             p99, failed, decoded / batches if batches else float("nan")])
                results[f"serve.rps_c{clients}"] = round(rps, 2)
                if clients == 32:
                    results["serve.p99_ms_c32"] = round(p99, 2)
            if load.total < RSS_MARKS[-1]:
                _drive(url, sentences, 32, 0.0, load, until_total=RSS_MARKS[-1],
                       beam=args.serve_beam)
            final_health = httpx.get(f"{url}/health").json()
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
    hwm_1k, rss_1k = load.rss.get(1_000, (float("nan"),) * 2)
    hwm_10k, rss_10k = load.rss.get(10_000, (float("nan"),) * 2)
    results["serve.failed"] = float(load.failed)
    results["serve.batching_gain"] = round(results["serve.rps_c32"] / results["serve.rps_c1"],
                                           2) if results["serve.rps_c1"] else float("nan")
    results["serve.rss_mb_1k"] = round(hwm_1k, 1)
    results["serve.rss_mb"] = round(hwm_10k, 1)
    beam = "the run's beam" if args.serve_beam is None else f"beam {args.serve_beam}"
    print(f"## serve: {health['engine']} engine on {health['device']}, run {run_dir}, {beam}; "
          f"{len(sentences)} test sentences, one per request, {args.serve_seconds:g} s per "
          f"level; server --max-batch {args.serve_max_batch} --batch-wait-ms "
          f"{args.serve_batch_wait_ms:g}\n")
    print(markdown_table(["clients", "requests", "requests/s", "sentences/s", "p50 ms",
                          "p95 ms", "p99 ms", "failed", "mean batch"], rows) + "\n")
    print(f"batching gain (requests/s at 32 clients / at 1): {results['serve.batching_gain']}"
          f"; failed requests in all: {load.failed} of {load.total}; largest batch "
          f"{final_health['largest_batch']}\n")
    print(markdown_table(["server memory", "after 1,000 requests", "after 10,000 requests"], [
        ["peak RSS (VmHWM), MiB", hwm_1k, hwm_10k], ["RSS (VmRSS), MiB", rss_1k, rss_10k]])
        + "\n")
    return results
