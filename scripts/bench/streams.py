"""Greedy streams (`translator.decode.continuous`) measured alone, behind docs/benchmarks.md,
"Continuous batching":

    python scripts/bench/streams.py width RUN SOURCES      # CPU ms per sentence at 14/32/64 rows
    python scripts/bench/streams.py gil RUN_A SOURCES_A RUN_B SOURCES_B   # alone/threads/processes

`width`: one torch thread, 640 sentences of SOURCES (one per line) joining a stream kept at 14,
32 and 64 rows (0 to 4 joining per step), against length-unsorted batches of that many
decoded whole. `gil`: two models' streams of 400 sentences each (14 rows), one after the
other, on two threads of one process, and in two processes: the wall time until both are
done. Run it alone on the machine.
"""

from __future__ import annotations

import multiprocessing as mp
import random
import sys
import threading
import time
from typing import Any


def _prepare(run: str, sources: str) -> tuple[Any, list[list[int]]]:
    import torch

    from translator.decode.translator import Translator

    torch.set_num_threads(1)
    tr = Translator.from_run(run, device="cpu")
    with open(sources, encoding="utf-8") as f:
        ids = [x for x in tr.encode([line.strip() for line in f]) if x]
    return tr, ids


def _stream(tr: Any, ids: list[list[int]], n: int, width: int) -> None:
    """Decode `n` sentences in a stream kept at `width` rows."""
    import torch

    from translator.decode.continuous import GreedyStream

    random.seed(1)
    stream: GreedyStream[int] = GreedyStream(tr.model, torch.device("cpu"))
    nxt = 0
    while nxt < n or len(stream):
        if len(stream) < width and nxt < n:
            room = width - len(stream)
            k = room if nxt == 0 else min(room, random.choice([0, 1, 2, 3, 4]))
            take = list(range(nxt, min(n, nxt + k)))
            stream.admit([ids[i % len(ids)] for i in take], take)
            nxt += len(take)
        stream.step()


def _timed(fn: Any, *args: Any) -> tuple[float, float]:
    """(this thread's CPU seconds, wall seconds) of `fn(*args)`."""
    cpu, wall = time.thread_time(), time.perf_counter()
    fn(*args)
    return time.thread_time() - cpu, time.perf_counter() - wall


def width(run: str, sources: str) -> None:
    import torch

    from translator.decode.search import greedy_decode, pack_sources

    tr, ids = _prepare(run, sources)
    _stream(tr, ids, 64, 16)  # warm-up
    n = 640
    for w in (14, 32, 64):
        cpu, _ = _timed(_stream, tr, ids, n, w)
        batches = [ids[i:i + w] for i in range(0, n, w)]
        whole, _ = _timed(lambda bs: [greedy_decode(tr.model, pack_sources(b, torch.device("cpu")))
                                      for b in bs], batches)
        print(f"{w} rows: stream {1000 * cpu / n:.2f}, batches decoded whole "
              f"{1000 * whole / n:.2f} ms of CPU per sentence")


def _child(run: str, sources: str, barrier: Any, out: Any) -> None:
    tr, ids = _prepare(run, sources)
    _stream(tr, ids, 30, 14)
    barrier.wait()
    out.put(_timed(_stream, tr, ids, 400, 14)[1])


def gil(run_a: str, src_a: str, run_b: str, src_b: str) -> None:
    models = [_prepare(run_a, src_a), _prepare(run_b, src_b)]
    for tr, ids in models:
        _stream(tr, ids, 30, 14)
    alone = [_timed(_stream, tr, ids, 400, 14)[1] for tr, ids in models]
    print(f"one after the other: {sum(alone):.2f} s")
    walls: dict[int, float] = {}
    start = threading.Barrier(2)

    def run(k: int) -> None:
        start.wait()
        walls[k] = _timed(_stream, *models[k], 400, 14)[1]

    threads = [threading.Thread(target=run, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"two threads of one process: {max(walls.values()):.2f} s")
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_child, args=(r, s, barrier, out))
             for r, s in ((run_a, src_a), (run_b, src_b))]
    for p in procs:
        p.start()
    done = max(out.get(), out.get())
    for p in procs:
        p.join()
    print(f"two processes: {done:.2f} s")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "width":
        width(*sys.argv[2:])
    elif len(sys.argv) == 6 and sys.argv[1] == "gil":
        gil(*sys.argv[2:])
    else:
        raise SystemExit(__doc__)
