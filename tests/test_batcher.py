"""The batching queue of `translator serve` on its own, with a fake decode function: no HTTP,
no model."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Hashable

import pytest

from translator.serve.batcher import Batcher, BatcherClosed, QueueFull


class Recorder:
    """A decode function that records its calls and can be held back or made to fail."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls: list[tuple[Hashable, list[str]]] = []
        self.delay = delay
        self.release = threading.Event()
        self.release.set()
        self.started = threading.Event()

    def __call__(self, key: Hashable, items: list[str]) -> list[str]:
        self.calls.append((key, list(items)))
        self.started.set()
        self.release.wait(10)
        time.sleep(self.delay)
        if any(item.startswith("boom") for item in items):
            raise ValueError("decoder failed")
        return [f"{key}:{item.upper()}" for item in items]


def test_concurrent_submits_become_one_batch_call_in_order() -> None:
    decode = Recorder()
    batcher = Batcher(decode, max_batch=64, wait_ms=200)
    try:
        jobs = [[f"r{r}s{s}" for s in range(r % 3 + 1)] for r in range(8)]
        futures = [batcher.submit(job) for job in jobs]
        results = [f.result(5) for f in futures]
    finally:
        batcher.close()
    assert len(decode.calls) == 1, decode.calls
    assert decode.calls[0][1] == [item for job in jobs for item in job]
    for job, result in zip(jobs, results, strict=True):
        assert result == [f"None:{item.upper()}" for item in job]
    assert batcher.batches == 1 and batcher.largest_batch == sum(map(len, jobs))


def test_threads_submitting_at_once_share_batches() -> None:
    decode = Recorder()
    batcher = Batcher(decode, max_batch=64, wait_ms=100)
    results: dict[int, list[str]] = {}
    barrier = threading.Barrier(16)

    def client(n: int) -> None:
        barrier.wait()
        results[n] = batcher.submit([f"c{n}a", f"c{n}b"]).result(5)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    batcher.close()
    assert len(decode.calls) < 16  # batched (all 16 in one call unless a thread was very late)
    assert all(results[n] == [f"None:C{n}A", f"None:C{n}B"] for n in range(16))


def test_sentence_budget_splits_batches_and_keys_never_mix() -> None:
    decode = Recorder()
    decode.release.clear()  # hold the worker so that everything below queues up
    batcher = Batcher(decode, max_batch=4, wait_ms=0)
    try:
        first = batcher.submit(["hold"], key="greedy")
        assert decode.started.wait(5)
        a = batcher.submit(["a1", "a2", "a3"], key="greedy")
        b = batcher.submit(["b1", "b2"], key="greedy")  # 3 + 2 > 4: the next batch
        c = batcher.submit(["c1"], key="beam")
        d = batcher.submit(["d1"], key="greedy")  # still fits beside a
        big = batcher.submit([f"x{i}" for i in range(9)], key="greedy")  # over the budget
        decode.release.set()
        assert first.result(5) == ["greedy:HOLD"]
        assert a.result(5) == ["greedy:A1", "greedy:A2", "greedy:A3"]
        assert b.result(5) == ["greedy:B1", "greedy:B2"]
        assert c.result(5) == ["beam:C1"] and d.result(5) == ["greedy:D1"]
        assert len(big.result(5)) == 9
    finally:
        batcher.close()
    calls = [(key, items) for key, items in decode.calls]
    assert calls[1] == ("greedy", ["a1", "a2", "a3", "d1"])
    assert ("beam", ["c1"]) in calls  # its own call: never beside greedy sentences
    assert all("c1" not in items for key, items in calls if key == "greedy")
    assert ("greedy", ["b1", "b2"]) in calls
    assert all(len(items) <= 4 for _, items in calls)  # the big job went in chunks
    assert [i for _, items in calls for i in items if i.startswith("x")] == \
        [f"x{i}" for i in range(9)]


def test_a_large_job_is_split_and_other_clients_get_batches_in_between() -> None:
    decode = Recorder()
    decode.release.clear()
    batcher = Batcher(decode, max_batch=4, wait_ms=0)
    try:
        first = batcher.submit(["hold"])
        assert decode.started.wait(5)
        big = batcher.submit([f"x{i}" for i in range(10)])
        small = batcher.submit(["s1"])
        later = batcher.submit(["s2"])
        decode.release.set()
        assert big.result(5) == [f"None:X{i}" for i in range(10)]
        assert small.result(5) == ["None:S1"] and later.result(5) == ["None:S2"]
        first.result(5)
    finally:
        batcher.close()
    calls = [items for _, items in decode.calls][1:]
    # The big job's first chunk, then the small ones (which arrived after it) before its
    # second chunk: one client's 10 sentences do not hold the model for 3 batches in a row.
    assert calls == [["x0", "x1", "x2", "x3"], ["s1", "s2"], ["x4", "x5", "x6", "x7"],
                     ["x8", "x9"]]


def test_a_job_withdrawn_between_its_batches_is_not_decoded_further() -> None:
    decode = Recorder()
    batcher = Batcher(decode, max_batch=2, wait_ms=0)
    gate = threading.Event()
    original = decode.__call__

    def slow_first(key: Hashable, items: list[str]) -> list[str]:
        out = original(key, items)
        if items[0] == "x0":
            gate.wait(5)
        return out

    batcher._decode = slow_first
    try:
        job = batcher.submit([f"x{i}" for i in range(6)])
        while not decode.calls:
            time.sleep(0.01)
        assert job.cancel()  # mid-job: its first chunk is being decoded
        gate.set()
        time.sleep(0.3)
        assert batcher.submit(["after"]).result(5) == ["None:AFTER"]
    finally:
        batcher.close()
    decoded = [i for _, items in decode.calls for i in items]
    assert decoded == ["x0", "x1", "after"]


def test_a_full_queue_refuses_with_a_retry_hint() -> None:
    decode = Recorder()
    decode.release.clear()
    batcher = Batcher(decode, max_batch=2, wait_ms=0, max_queued=5)
    try:
        batcher.submit(["hold"])
        assert decode.started.wait(5)
        batcher.submit(["a", "b", "c"])
        with pytest.raises(QueueFull) as refused:
            batcher.submit(["d", "e", "f"])
        assert refused.value.retry_after >= 1
        batcher.submit(["d", "e"])  # still fits: 5
    finally:
        decode.release.set()
        batcher.close()


def test_a_failing_batch_fails_its_requests_only_and_the_worker_survives() -> None:
    decode = Recorder()
    decode.release.clear()
    batcher = Batcher(decode, max_batch=64, wait_ms=0)
    try:
        hold = batcher.submit(["hold"])
        assert decode.started.wait(5)
        bad = batcher.submit(["boom"], key="k")
        also_in_that_batch = batcher.submit(["fine"], key="k")
        other_key = batcher.submit(["other"], key="j")
        decode.release.set()
        assert hold.result(5) == ["None:HOLD"]
        with pytest.raises(ValueError, match="decoder failed"):
            bad.result(5)
        with pytest.raises(ValueError):
            also_in_that_batch.result(5)  # same decode call: it failed too
        assert other_key.result(5) == ["j:OTHER"]
        # The worker is still there.
        assert batcher.submit(["later"]).result(5) == ["None:LATER"]
    finally:
        batcher.close()


def test_a_wrong_number_of_results_is_an_error_not_a_mixup() -> None:
    batcher = Batcher(lambda key, items: items[:-1], wait_ms=0)
    try:
        with pytest.raises(RuntimeError, match="2 results for 3 items"):
            batcher.submit(["a", "b", "c"]).result(5)
        assert batcher.submit([]).result(5) == []  # nothing to do: answered at once
    finally:
        batcher.close()


def test_async_run_times_out_and_the_withdrawn_job_is_skipped() -> None:
    decode = Recorder()
    decode.release.clear()
    batcher = Batcher(decode, wait_ms=0)

    async def scenario() -> None:
        hold = asyncio.ensure_future(batcher.run(["hold"], timeout=10))
        await asyncio.sleep(0.05)
        with pytest.raises(TimeoutError):
            await batcher.run(["late"], timeout=0.05)
        decode.release.set()
        assert await hold == ["None:HOLD"]
        assert await batcher.run(["next"], timeout=5) == ["None:NEXT"]

    try:
        asyncio.run(scenario())
    finally:
        batcher.close()
    assert all("late" not in items for _, items in decode.calls)


def test_close_fails_queued_jobs_and_refuses_new_ones() -> None:
    decode = Recorder()
    decode.release.clear()
    batcher = Batcher(decode, wait_ms=0)
    running = batcher.submit(["hold"])
    assert decode.started.wait(5)
    queued = batcher.submit(["queued"])
    threading.Timer(0.1, decode.release.set).start()
    batcher.close()
    with pytest.raises(BatcherClosed):
        queued.result(5)
    assert running.result(5) == ["None:HOLD"]  # a batch already decoding finishes
    with pytest.raises(BatcherClosed):
        batcher.submit(["after"])


def test_a_lone_request_waits_only_the_gathering_window() -> None:
    batcher = Batcher(lambda key, items: items, wait_ms=5)
    try:
        start = time.monotonic()
        assert batcher.submit(["x"]).result(5) == ["x"]
        # Generous bound: the point is that it is not held until max_batch arrives.
        assert time.monotonic() - start < 2.0
    finally:
        batcher.close()



class FakeStream:
    """A stream whose item "abc" takes len("abc") steps and answers "ABC"; records each
    admission with the step it came before and the rows already running. `gate` holds a
    step back; `pause_at` N stops the stream after step N (setting `paused`) until `resume`
    is set; an item "boom" fails the step it is in."""

    def __init__(self) -> None:
        self.rows: dict[Hashable, list[object]] = {}  # tag -> [item, steps left]
        self.steps = 0
        self.admitted: list[tuple[int, int, list[str]]] = []  # (step, rows before, items)
        self.dropped: list[Hashable] = []
        self.finished: list[tuple[int, str]] = []  # (step, item) of each item that ended
        self.gate = threading.Event()
        self.gate.set()
        self.pause_at: int | None = None
        self.paused, self.resume = threading.Event(), threading.Event()

    def __len__(self) -> int:
        return len(self.rows)

    def admit(self, items: list[str], tags: list[Hashable]) -> list[tuple[Hashable, str]]:
        self.admitted.append((self.steps, len(self.rows), list(items)))
        now = []
        for item, tag in zip(items, tags, strict=True):
            if item:
                self.rows[tag] = [item, len(item)]
            else:
                now.append((tag, ""))
        return now

    def step(self) -> list[tuple[Hashable, str]]:
        self.gate.wait(10)
        if self.steps == self.pause_at:
            self.paused.set()
            self.resume.wait(10)
        self.steps += 1
        if any(item == "boom" for item, _ in self.rows.values()):
            raise ValueError("step failed")
        ended = []
        for tag, row in list(self.rows.items()):
            row[1] = int(row[1]) - 1  # type: ignore[call-overload]
            if row[1] == 0:
                ended.append((tag, str(row[0]).upper()))
                self.finished.append((self.steps, str(row[0])))
                del self.rows[tag]
        return ended

    def drop(self, withdrawn: Callable[[Hashable], bool]) -> list[Hashable]:
        gone = [tag for tag in self.rows if withdrawn(tag)]
        for tag in gone:
            del self.rows[tag]
        self.dropped += gone
        return gone


def _streamed(stream: FakeStream, decode: Recorder | None = None, **kwargs: object,
              ) -> Batcher[str, str]:
    """A batcher whose key "s" is decoded by `stream`, other keys by `decode`."""
    return Batcher(decode or Recorder(), stream=lambda key: stream if key == "s" else None,
                   **kwargs)  # type: ignore[arg-type]


def test_a_stream_takes_jobs_in_at_the_next_step_and_answers_each_when_it_ends() -> None:
    stream = FakeStream()
    stream.pause_at = 3
    batcher = _streamed(stream, max_batch=8, wait_ms=0)
    try:
        long = batcher.submit(["x" * 40], "s")
        assert stream.paused.wait(5)  # the long one is 3 steps in
        short = batcher.submit(["ab", "", "abc"], "s")
        stream.resume.set()
        assert short.result(5) == ["AB", "", "ABC"]
        assert long.result(5) == ["X" * 40]
    finally:
        batcher.close()
    # The short job joined the running stream (one row in it) after the long one's 4th step,
    # and ended 2 and 3 steps later, long before the long one.
    step, rows, items = stream.admitted[1]
    assert items == ["ab", "", "abc"] and rows == 1 and step == 4
    assert stream.finished == [(6, "ab"), (7, "abc"), (40, "x" * 40)]
    assert batcher.items_decoded == 4 and batcher.largest_batch == 3


def test_a_stream_starts_at_once_without_the_gathering_wait() -> None:
    stream = FakeStream()
    batcher = _streamed(stream, wait_ms=3000)  # a batch key would wait 3 s for company
    try:
        start = time.monotonic()
        assert batcher.submit(["a"], "s").result(5) == ["A"]
        assert time.monotonic() - start < 1.5
    finally:
        batcher.close()


def test_a_stream_holds_at_most_max_batch_and_large_jobs_take_turns() -> None:
    stream = FakeStream()
    batcher = _streamed(stream, max_batch=3, wait_ms=0)
    stream.pause_at = 0
    try:
        big = batcher.submit(["aaaa"] * 7, "s")
        assert stream.paused.wait(5)  # its first chunk is in, before the first step
        other = batcher.submit(["b"], "s")
        stream.resume.set()
        assert other.result(5) == ["B"]
        assert big.result(5) == ["AAAA"] * 7
    finally:
        batcher.close()
    assert max(rows + len(items) for _, rows, items in stream.admitted) <= 3
    # The other client's sentence went in before the big job's last chunk.
    order = [items for _, _, items in stream.admitted]
    assert order.index(["b"]) < len(order) - 1


def test_a_withdrawn_job_leaves_the_running_stream() -> None:
    stream = FakeStream()
    stream.pause_at = 2
    batcher = _streamed(stream, wait_ms=0)
    try:
        gone = batcher.submit(["x" * 500, "y" * 500], "s")
        assert stream.paused.wait(5)
        assert gone.cancel()
        stream.resume.set()
        assert batcher.submit(["ok"], "s").result(5) == ["OK"]
    finally:
        batcher.close()
    assert len(stream.dropped) == 2 and stream.steps < 10
    assert batcher.items_decoded == 1


def test_another_key_waits_for_the_stream_to_finish_and_is_not_starved() -> None:
    stream, decode = FakeStream(), Recorder()
    stream.pause_at = 2
    batcher = _streamed(stream, decode, wait_ms=0)
    try:
        first = batcher.submit(["aaaaaaaaaa"], "s")
        assert stream.paused.wait(5)
        beam = batcher.submit(["beam"], "b")
        later = batcher.submit(["c"], "s")
        stream.resume.set()
        assert beam.result(5) == ["b:BEAM"]
        assert first.done()  # the running sentence finished first
        assert not later.done() or stream.admitted[-1][2] == ["c"]
        assert later.result(5) == ["C"]
    finally:
        batcher.close()
    # "c" did not jump over the other key's job into the running stream.
    assert [items for _, _, items in stream.admitted] == [["aaaaaaaaaa"], ["c"]]


def test_a_failing_stream_fails_its_jobs_only_and_the_worker_survives() -> None:
    stream = FakeStream()
    batcher = _streamed(stream, wait_ms=0)
    try:
        bad = batcher.submit(["boom"], "s")
        with pytest.raises(ValueError, match="step failed"):
            bad.result(5)
        assert batcher.submit(["fine"], "s").result(5) == ["FINE"]
    finally:
        batcher.close()


def test_a_stream_is_not_shared_between_workers() -> None:
    with pytest.raises(ValueError, match="one worker"):
        Batcher(Recorder(), workers=2, stream=lambda key: None)
