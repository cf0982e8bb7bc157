"""Serve suite: load on `translator serve` with two models of opposite directions, from 1, 8,
32 and 128 concurrent connections.

A server subprocess is started on 127.0.0.1 with two runs (`--serve-run`, and
`--serve-run-reverse` for the other direction; without them, small toy runs are first trained
on the built-in corpus into a temp folder, a minute or two each). The load comes from `wrk`
(compiled, so the load generator is not the bottleneck; Debian: apt-get install wrk) with a
Lua script that POSTs single test sentences, alternating both directions, for
`--serve-seconds` per level; without wrk the suite says how to install it and falls back to
Python client threads (which, at 128, measure themselves as much as the server). Reported per
level: requests/s, per-pair sentences/s (from the server's per-model /health counters),
p50/p95/p99 latency, failed requests (socket errors, timeouts, non-2xx other than 429), 429s,
5xx, and the mean batch (for greedy streams: the sentences decoding together at a step). Then
Python clients keep sending until 10,000 requests in all, and the server's peak RSS (VmHWM from
/proc/<pid>/status, summed with its decoding processes) is read after 1,000 and after 10,000
requests: it should stay flat, not grow with requests served.

Keys: `serve.rps_c1`, `serve.rps_c8`, `serve.rps_c32`, `serve.rps_c128`, `serve.p99_ms_c32`,
`serve.p99_ms_c128`, `serve.failed` (all levels and the RSS phase), `serve.failed_c128`,
`serve.batching_gain` (requests/s at 32 clients over 1), `serve.rss_mb` (after 10,000
requests) and `serve.rss_mb_1k` (after 1,000).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
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
LEVELS = (1, 8, 32, 128)
WRK_HINT = ("wrk is not installed (Debian/Ubuntu: sudo apt-get install wrk); falling back to "
            "Python client threads, which at 128 connections load this machine themselves")
RSS_MARKS = (1_000, 10_000)  # and --serve-total, when another


def add_arguments(group: argparse._ArgumentGroup) -> None:
    """Options of the serve suite."""
    group.add_argument("--serve-run", type=Path, default=None,
                       help="Run folder to serve (default: train a small toy run first).")
    group.add_argument("--serve-run-reverse", type=Path, default=None,
                       help="A second run, the opposite direction (default: train a small toy "
                       "one first); requests alternate between the two.")
    group.add_argument("--serve-tool", choices=("wrk", "python"), default="wrk",
                       help="Load generator (default wrk; python without it).")
    group.add_argument("--serve-levels", default=",".join(map(str, LEVELS)),
                       help="Concurrent connections per level (default 1,8,32,128).")
    group.add_argument("--serve-total", type=int, default=10_000,
                       help="Requests in all before the last RSS reading (default 10,000).")
    group.add_argument("--serve-intra-threads", type=int, default=1,
                       help="The server's --intra-threads (ctranslate2 engine).")
    group.add_argument("--serve-inter-threads", type=int, default=0,
                       help="The server's --inter-threads (ctranslate2 engine; 0: one per core).")
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
    group.add_argument("--serve-decode-processes", type=int, default=None,
                       help="The server's --decode-processes (native engine; default: its "
                       "own, one per core and at most one per model).")


def _toy_run(folder: Path, quick: bool, reverse: bool = False) -> Path:
    """Train a small model on the built-in corpus (a minute or two on 2 cores); `reverse`:
    German to English, from the corpus written out as text files."""
    from translator.config import config_from_dict
    from translator.data.builtin_corpus import builtin_splits
    from translator.train.loop import train

    size = 2000 if quick else 6000
    run_dir = folder / ("serve-toy-de-en" if reverse else "serve-toy")
    data: dict[str, object] = {"source": "builtin", "builtin_size": size}
    if reverse:
        text_dir = folder / "toy-data"
        text_dir.mkdir(exist_ok=True)
        for split, pairs in builtin_splits(size, valid_size=200, test_size=200).items():
            for k, lang in enumerate(("en", "de")):
                (text_dir / f"{split}.{lang}").write_text(
                    "".join(p[k] + "\n" for p in pairs), "utf-8")
        data = {"source": "text", "dir": str(text_dir), "src_lang": "de", "tgt_lang": "en",
                "valid": "valid", "test": "test"}
    cfg = config_from_dict({
        "data": {**data, "max_len": 48},
        "tokenizer": {"min_frequency": 1},
        "model": {"d_model": 64, "layers": 2, "heads": 4, "d_ff": 256, "dropout": 0.0,
                  "norm": "pre"},
        "training": {"epochs": 2 if quick else 4, "max_tokens": 2000, "lr": 0.003,
                     "warmup_steps": 50, "valid_max_sentences": 50, "examples": 0,
                     "log_every": 50},
        "output": {"dir": str(run_dir)},
    }, name=run_dir.name)
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
    """(VmHWM, VmRSS) in MiB of a process and its children (the native engine's decoding
    processes): their peaks and current resident memory, summed."""
    hwm = rss = 0.0
    for one in _tree(pid):
        values = {}
        try:
            with open(f"/proc/{one}/status") as f:
                for line in f:
                    key, _, rest = line.partition(":")
                    if key in ("VmHWM", "VmRSS"):
                        values[key] = int(rest.split()[0]) / 1024  # kB
        except OSError:  # gone meanwhile
            continue
        hwm += values.get("VmHWM", float("nan"))
        rss += values.get("VmRSS", float("nan"))
    return hwm, rss


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants (from /proc/<pid>/task/*/children)."""
    found, todo = [], [pid]
    while todo:
        one = todo.pop()
        found.append(one)
        for task in Path(f"/proc/{one}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return found


@dataclass
class Load:
    """Shared between the client threads: request counter, RSS readings at the marks."""

    pid: int
    mark: int = 10_000
    total: int = 0
    failed: int = 0
    rss: dict[int, tuple[float, float]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, ok: bool) -> None:
        with self.lock:
            self.total += 1
            self.failed += 0 if ok else 1
            if self.total in RSS_MARKS or self.total == self.mark:
                self.rss[self.total] = _memory_mb(self.pid)


def _drive(url: str, bodies: list[dict[str, object]], clients: int, seconds: float,
           load: Load, until_total: int | None = None) -> tuple[list[float], int, float]:
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
            body = bodies[next(cursor) % len(bodies)]
            t0 = time.perf_counter()
            try:
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


# Lua for wrk: POST the bodies in turn (each thread from its own offset), count statuses per
# thread, and print one JSON line at the end (latencies in microseconds).
WRK_LUA = """
local bodies = {%s}
local headers = {["Content-Type"] = "application/json"}
local i = 0
counts = {}
local threads = {}
function setup(thread)
  thread:set("offset", #threads * 7919)
  table.insert(threads, thread)
end
function init(args) i = offset or 0 end
function request()
  i = i + 1
  return wrk.format("POST", "/translate", headers, bodies[(i %% #bodies) + 1])
end
function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
end
function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("counts")) do total[k] = (total[k] or 0) + v end
  end
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests": %%d, "duration_us": %%d, "p50": %%d, '
    .. '"p95": %%d, "p99": %%d, "socket_errors": %%d, "timeouts": %%d, "statuses": {',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(95),
    latency:percentile(99), e.connect + e.read + e.write, e.timeout))
  local first = true
  for k, v in pairs(total) do
    io.write(string.format('%%s"%%d": %%d', first and "" or ", ", k, v))
    first = false
  end
  io.write("}}\\n")
end
"""


def _wrk(url: str, bodies: list[dict[str, object]], clients: int, seconds: float,
         folder: Path) -> dict[str, float]:
    """One level under wrk: requests, seconds, p50/p95/p99 (ms), failed, 429s, 5xx."""
    script = folder / "load.lua"
    script.write_text(WRK_LUA % ", ".join(f"[==[{json.dumps(b)}]==]" for b in bodies))
    threads = max(1, min(clients, 2))
    out = subprocess.run(["wrk", "-t", str(threads), "-c", str(clients), "-d",
                          f"{max(1.0, seconds):g}s", "--timeout", "30s", "-s", str(script),
                          url], capture_output=True, text=True, check=True).stdout
    line = next((x for x in out.splitlines() if x.startswith("WRKJSON ")), None)
    if line is None:
        raise SystemExit("wrk printed no summary:\n" + out)
    data = json.loads(line[len("WRKJSON "):])
    statuses = {int(k): v for k, v in data["statuses"].items()}
    n429 = statuses.get(429, 0)
    n5xx = sum(v for k, v in statuses.items() if k >= 500)
    bad = sum(v for k, v in statuses.items() if k != 200 and k != 429)
    return {"requests": data["requests"], "seconds": data["duration_us"] / 1e6,
            "ok": statuses.get(200, 0), "p50": data["p50"] / 1000, "p95": data["p95"] / 1000,
            "p99": data["p99"] / 1000, "failed": bad + data["socket_errors"] + data["timeouts"],
            "429": n429, "5xx": n5xx}


def _python_level(url: str, bodies: list[dict[str, object]], clients: int, seconds: float,
                  load: Load) -> dict[str, float]:
    lat, failed, secs = _drive(url, bodies, clients, seconds, load)
    p50, p95, p99 = (_percentile(lat, q) * 1000 for q in (50, 95, 99))
    return {"requests": len(lat) + failed, "seconds": secs, "ok": len(lat), "p50": p50,
            "p95": p95, "p99": p99, "failed": failed, "429": float("nan"),
            "5xx": float("nan")}


def _start_server(args: argparse.Namespace, runs: list[Path], folder: Path,
                  ) -> tuple[subprocess.Popen[bytes], str, dict[str, object]]:
    import httpx

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), os.environ.get("PYTHONPATH", "")])}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    log_path = folder / "server.log"
    command = [sys.executable, "-m", "translator", "serve", "--port", str(port), "--engine",
               args.serve_engine, "--no-access-log", "--max-batch", str(args.serve_max_batch),
               "--batch-wait-ms", str(args.serve_batch_wait_ms), "--timeout", "60",
               "--intra-threads", str(args.serve_intra_threads),
               "--inter-threads", str(args.serve_inter_threads)]
    if args.serve_decode_processes is not None:
        command += ["--decode-processes", str(args.serve_decode_processes)]
    for run_dir in runs:
        command += ["--run", str(run_dir)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None:
            raise SystemExit("the server exited:\n" + log_path.read_text())
        try:
            return proc, url, httpx.get(f"{url}/health", timeout=2).json()
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                proc.kill()
                raise SystemExit("the server did not start:\n" + log_path.read_text()) from None
            time.sleep(0.3)


def _total(health: dict[str, object], key: str) -> int:
    """A per-model /health counter summed over the models (0 when absent)."""
    return sum(int(m.get(key, 0)) for m in health["models"])  # type: ignore[union-attr]


def _per_pair(before: dict[str, object], after: dict[str, object], secs: float) -> str:
    """Sentences/s of each model between two /health answers."""
    done = {f"{m['source']}->{m['target']}": m["sentences_translated"]
            for m in after["models"]}  # type: ignore[index, union-attr]
    for m in before["models"]:  # type: ignore[union-attr]
        done[f"{m['source']}->{m['target']}"] -= m["sentences_translated"]
    return ", ".join(f"{pair} {n / secs:.1f}" for pair, n in sorted(done.items()))


def run(args: argparse.Namespace) -> dict[str, float]:
    """Start a server with both runs, load it at each level, print a table, return
    `serve.*`."""
    import httpx

    tool = args.serve_tool
    if tool == "wrk" and shutil.which("wrk") is None:
        print(f"({WRK_HINT})\n")
        tool = "python"
    levels = [int(x) for x in str(args.serve_levels).split(",") if x.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        forward = args.serve_run or _toy_run(Path(tmp), args.quick)
        reverse = args.serve_run_reverse or _toy_run(Path(tmp), args.quick, reverse=True)
        pairs = [(forward, _test_sentences(forward)), (reverse, _test_sentences(reverse))]
        bodies = []
        for a, b in itertools.zip_longest(*(sentences for _, sentences in pairs)):
            for (run_dir, _), text in zip(pairs, (a, b), strict=True):
                if text is None:
                    continue
                body: dict[str, object] = {"q": text, **_pair_of(run_dir)}
                if args.serve_beam is not None:
                    body["beam"] = args.serve_beam
                bodies.append(body)
        proc, url, health = _start_server(args, [forward, reverse], Path(tmp))
        try:
            load = Load(proc.pid, mark=args.serve_total)
            _drive(url, bodies, 4, 0.0, Load(proc.pid), until_total=40)  # warm-up
            rows, results = [], {}
            for clients in levels:
                before = httpx.get(f"{url}/health").json()
                level = (_wrk(url, bodies, clients, args.serve_seconds, Path(tmp))
                         if tool == "wrk" else
                         _python_level(url, bodies, clients, args.serve_seconds, load))
                after = httpx.get(f"{url}/health").json()
                secs = level["seconds"]
                batches = after["batches"] - before["batches"]
                decoded = after["sentences_translated"] - before["sentences_translated"]
                steps = _total(after, "steps") - _total(before, "steps")
                if steps:  # greedy streams: the sentences decoding together at a step
                    batches = steps
                    decoded = _total(after, "step_sentences") - _total(before, "step_sentences")
                rps = level["ok"] / secs
                rows.append([clients, level["requests"], rps, _per_pair(before, after, secs),
                             level["p50"], level["p95"], level["p99"], level["failed"],
                             level["429"], level["5xx"],
                             decoded / batches if batches else float("nan")])
                results[f"serve.rps_c{clients}"] = round(rps, 2)
                load.failed += int(level["failed"]) if tool == "wrk" else 0
                if clients in (32, 128):
                    results[f"serve.p99_ms_c{clients}"] = round(level["p99"], 2)
                if clients == 128:
                    results["serve.failed_c128"] = float(level["failed"])
            counted = load.total
            if counted < args.serve_total:
                _drive(url, bodies, 32, 0.0, load, until_total=args.serve_total)
            final_health = httpx.get(f"{url}/health").json()
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
    marks = sorted(load.rss)
    hwm_1k, rss_1k = load.rss.get(1_000, (float("nan"),) * 2)
    hwm_end, rss_end = load.rss.get(args.serve_total, (float("nan"),) * 2)
    results["serve.failed"] = float(load.failed)
    c1, c32 = results.get("serve.rps_c1"), results.get("serve.rps_c32")
    results["serve.batching_gain"] = round(c32 / c1, 2) if c1 and c32 else float("nan")
    results["serve.rss_mb_1k"] = round(hwm_1k, 1)
    results["serve.rss_mb"] = round(hwm_end, 1)
    beam = "the runs' beam" if args.serve_beam is None else f"beam {args.serve_beam}"
    engines = ", ".join(sorted({f"{m['engine']} on {m['device']}" for m in health["models"]}))
    print(f"## serve: {engines}; runs {forward} and {reverse} (requests alternate), {beam}; "
          f"load from {tool}, {args.serve_seconds:g} s per level; server --max-batch "
          f"{args.serve_max_batch} --batch-wait-ms {args.serve_batch_wait_ms:g} "
          f"--intra-threads {args.serve_intra_threads} --inter-threads "
          f"{args.serve_inter_threads}\n")
    print(markdown_table(["connections", "requests", "requests/s", "sentences/s per pair",
                          "p50 ms", "p95 ms", "p99 ms", "failed", "429", "5xx",
                          "mean batch"], rows) + "\n")
    print(f"batching gain (requests/s at 32 / at 1): {results['serve.batching_gain']}; "
          f"failed requests in all: {load.failed}; largest batch "
          f"{final_health['largest_batch']}; RSS readings at {marks}\n")
    print(markdown_table(["server memory", "after 1,000 requests",
                          f"after {args.serve_total:,} requests"], [
        ["peak RSS (VmHWM), MiB", hwm_1k, hwm_end], ["RSS (VmRSS), MiB", rss_1k, rss_end]])
        + "\n")
    return results


def _pair_of(run_dir: Path) -> dict[str, str]:
    from translator.config import load_config

    cfg = load_config(run_dir / "config.yaml")
    return {"source": cfg.data.src_lang, "target": cfg.data.tgt_lang}
