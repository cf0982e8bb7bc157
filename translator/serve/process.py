"""Native models' greedy streams in decoding processes (`DecodePool`).

Why: Python runs one thread's bytecode at a time, and PyTorch hands that lock (the GIL) back
and forth at every operation, about 80 per decoding step. With two models decoding on two
threads of one process, beside the event loop, each step keeps waiting for the lock: on the
2-core VM two models' streams on two threads of one process decoded 1.3x as fast as one after
the other, and in two processes 1.9x (docs/benchmarks.md, "Continuous batching"). So the
server decodes its native models' greedy streams in child processes, each of which loads its
models itself and steps their streams in turn on its one thread: one process per core at
most, so ten models on two cores make two processes of five models, not ten copies of
PyTorch.

The server and a child talk through a pipe without waiting for each other: the server sends
the sentences that join and the ones withdrawn (`ProcessStream`, one per model, what the
model's batcher runs); the child, while it has sentences, decodes step after step, takes in
what arrived before each step, and sends the translations of those that ended (a step where
none did sends nothing, so the server's threads sleep through it). A reader thread per child
hands each model's messages to its stream; a new request wakes the stream's batcher
(`ProcessStream.wake`) so that it joins at the child's next step. The batching, queue order
and withdrawal stay in the server's batchers.

The cost is memory: a child holds its own copy of its models and of PyTorch (the server's
copies still run beam search and attention maps). `translator serve --decode-processes 0`
keeps everything in one process.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import queue
import threading
import traceback
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from translator.errors import TranslatorError

log = logging.getLogger("translator")

# Seconds a child may take to import torch and load its models.
_START_TIMEOUT = 300.0


@dataclass(frozen=True)
class ModelSpec:
    """How a child gets a model: its name (e.g. "en->de"), `load()` (picklable) giving its
    Translator, and the decoding settings of its stream (their length caps)."""

    name: str
    load: Callable[[], Any]
    decoding: Any


class DecodePool:
    """`processes` children (at most one per model) decoding the models of `specs`, dealt
    out in turn; `stream(name)` is the batcher's stream of one model. Children load in the
    background: `wait_ready` waits for all of them."""

    def __init__(self, specs: Sequence[ModelSpec], processes: int, threads: int) -> None:
        if processes < 1 or not specs:
            raise ValueError("a pool needs a process and a model")
        n = min(processes, len(specs))
        self._children = [_Child(list(specs[i::n]), threads) for i in range(n)]
        self._streams = {spec.name: ProcessStream(child, spec.name)
                         for child in self._children for spec in child.specs}

    def stream(self, name: str) -> ProcessStream:
        return self._streams[name]

    @property
    def processes(self) -> int:
        return len(self._children)

    def wait_ready(self) -> None:
        """Block until every child has loaded its models; one that failed is an error."""
        for child in self._children:
            child.wait_ready()

    def close(self) -> None:
        """Stop the children (for good: one that dies now is not replaced)."""
        for child in self._children:
            child.closed = True
            child.close()


class _Child:
    """One decoding process: its pipe, the thread that reads it, a queue of messages per model
    it hosts. A new process after a crash is a new `generation`: messages of an older one are
    stale."""

    def __init__(self, specs: list[ModelSpec], threads: int) -> None:
        self.specs, self.threads = specs, threads
        self.names = ", ".join(spec.name for spec in specs)
        self.inbox: dict[str, queue.SimpleQueue[tuple[int, str, Any]]] = {
            spec.name: queue.SimpleQueue() for spec in specs}
        self.generation = 0
        self.closed = False  # the pool is closed: no restarts
        self._send_lock = threading.Lock()
        self._restart_lock = threading.Lock()
        self._proc: multiprocessing.process.BaseProcess | None = None
        self._conn: multiprocessing.connection.Connection | None = None
        self.start()

    def start(self) -> None:
        ctx = multiprocessing.get_context("spawn")  # fork would copy torch's thread pools
        self._conn, theirs = ctx.Pipe()
        self._proc = ctx.Process(target=_child, args=(theirs, self.specs, self.threads),
                                 daemon=True, name=f"decode {self.names}")
        self._proc.start()
        theirs.close()
        self._ready = threading.Event()
        self._failure: str | None = None
        threading.Thread(target=self._read, args=(self._conn, self.generation), daemon=True,
                         name=f"decode-reader {self.names}").start()

    def _read(self, conn: multiprocessing.connection.Connection, generation: int) -> None:
        """Hand each message to its model's inbox; at the end of the pipe, tell them all."""
        try:
            kind, detail = conn.recv()
            if kind != "ready":
                self._failure = detail
                return
            self._ready.set()
            while True:
                name, kind, detail = conn.recv()
                self.inbox[name].put((generation, kind, detail))
        except (EOFError, OSError):
            if not self._ready.is_set():
                self._failure = "it exited"
        finally:
            self._ready.set()
            for box in self.inbox.values():
                box.put((generation, "dead", None))

    def wait_ready(self) -> None:
        if not self._ready.wait(_START_TIMEOUT):
            self.close()
            raise TranslatorError(f"the decoding process of {self.names} did not start in "
                                  f"{_START_TIMEOUT:g} s")
        if self._failure is not None:
            failure = self._failure
            self.close()
            raise TranslatorError(f"the decoding process of {self.names} failed: {failure}")

    def alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    def send(self, message: Any) -> None:
        """Send a message (from any batcher thread); OSError when the child is gone."""
        with self._send_lock:
            if self._conn is None:
                raise OSError("no decoding process")
            self._conn.send(message)

    def restart(self, generation: int, why: str) -> None:
        """Replace the child of `generation`, once, whichever of its streams noticed first."""
        with self._restart_lock:
            if generation != self.generation or self.closed:
                return
            log.error("the decoding process of %s: %s; starting a new one", self.names, why)
            self.close()
            self.generation += 1
            self.start()

    def close(self, timeout: float = 5.0) -> None:
        with self._send_lock:
            if self._conn is not None:
                try:
                    self._conn.send(None)
                except (OSError, ValueError):
                    pass
                self._conn.close()
                self._conn = None
        if self._proc is not None:
            self._proc.join(timeout)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(timeout)
            self._proc = None


class ProcessStream:
    """The `translator.serve.batcher.Stream` of one model's greedy translations, decoded in a
    child of a `DecodePool`. Answers are `[(text, 0.0)]` per sentence, as the server's
    batches give them."""

    def __init__(self, child: _Child, name: str) -> None:
        self.child, self.name = child, name
        self._inbox = child.inbox[name]
        self._tags: dict[int, Hashable] = {}  # sent to the child (or about to be), by id
        self._admits: list[tuple[int, str]] = []  # to send with the next step
        self._ids = 0
        self._generation = child.generation  # the child that holds what was sent

    def __len__(self) -> int:
        return len(self._tags)

    def admit(self, items: list[str], tags: list[Hashable]) -> list[tuple[Hashable, Any]]:
        """Queue `items` for the next step (sentences with nothing to translate come back
        from it too)."""
        for item, tag in zip(items, tags, strict=True):
            self._ids += 1
            self._tags[self._ids] = tag
            self._admits.append((self._ids, item))
        return []

    def drop(self, withdrawn: Callable[[Hashable], bool]) -> list[Hashable]:
        """Forget the items whose tag `withdrawn` accepts, and tell the child to stop them."""
        gone = [i for i, tag in self._tags.items() if withdrawn(tag)]
        if not gone:
            return []
        waiting, out = {i for i, _ in self._admits}, set(gone)
        self._admits = [(i, s) for i, s in self._admits if i not in out]
        sent = [i for i in gone if i not in waiting]
        if sent:
            try:
                self.child.send((self.name, [], sent))
            except OSError:  # the child is gone; the next step says so
                pass
        return [self._tags.pop(i) for i in gone]

    def wake(self) -> None:
        """Make a `step` that waits return now (with what ended so far, maybe nothing): new
        items are waiting, or one was withdrawn. Any thread may call it."""
        self._inbox.put((-1, "wake", None))

    def step(self) -> list[tuple[Hashable, Any]]:
        """Send the items that joined since the last call, then wait until some of this
        model's items end in the child, or `wake` is called; the answers of the items that
        ended. A child that died loses what it held: RuntimeError, and a new child
        starts (its other models' sentences fail too)."""
        if not self._tags:  # nothing of ours in the child: no step to wait for
            return []
        if self._generation != self.child.generation or not self.child.alive():
            self._lost(self._generation, "it had stopped")
        if self._admits:
            message = (self.name, self._admits, [])
            try:
                self.child.send(message)
            except OSError:  # it died since: what it held is lost, what waited goes anew
                self._lost(self._generation, "its pipe is closed")
                self.child.send(message)
            self._admits = []
        ended: list[tuple[int, str]] = []
        ours = False  # a message for us came (messages of an older child are stale)
        message = self._inbox.get()
        while True:
            generation, kind, detail = message
            if kind == "wake":
                ours = True
            elif generation == self._generation:
                if kind == "dead":
                    self._lost(generation, "it stopped")
                if kind == "error":  # the child has cleared this model's stream
                    self._tags.clear()
                    raise RuntimeError(f"decoding {self.name} in its process failed: {detail}")
                ended += detail
                ours = True
            try:
                message = self._inbox.get_nowait()
            except queue.Empty:
                if ours:
                    break
                message = self._inbox.get()
        # An item withdrawn here may still end there: it is no longer ours to answer.
        return [(self._tags.pop(i), [(text, 0.0)]) for i, text in ended if i in self._tags]

    def _lost(self, generation: int, why: str) -> None:
        """The child of `generation` died: have it replaced (once, by whichever stream saw it
        first), forget the sentences it held (RuntimeError, when there were some), and send
        the ones still waiting to the new child."""
        self.child.restart(generation, why)
        waiting = {i for i, _ in self._admits}
        lost = [i for i in self._tags if i not in waiting]
        for i in lost:
            del self._tags[i]
        self._generation = self.child.generation
        if lost:
            raise RuntimeError(f"the decoding process of {self.child.names} stopped ({why}); "
                               f"the {len(lost)} sentences of {self.name} it held are lost and "
                               "a new one is starting")


def _child(conn: multiprocessing.connection.Connection, specs: list[ModelSpec],
           threads: int) -> None:
    """A decoding process: load the models, then step their streams in turn while they hold
    sentences, until told to stop (None) or the server goes away (the pipe closes)."""
    try:
        streams = _load(specs, threads)
    except BaseException as exc:  # told to the server, which refuses to start
        conn.send(("error", str(exc) if isinstance(exc, RuntimeError) else
                   f"{exc.__class__.__name__}: {exc}"))
        return
    conn.send(("ready", None))
    try:
        _decode(conn, streams)
    except (EOFError, OSError, KeyboardInterrupt):  # the server stopped, or Ctrl-C
        return


def _load(specs: list[ModelSpec], threads: int) -> dict[str, Any]:
    """Each model's stream; a model that fails to load is a RuntimeError naming it."""
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    streams = {}
    for spec in specs:
        try:
            streams[spec.name] = spec.load().stream(spec.decoding)
        except BaseException as exc:
            raise RuntimeError(f"{spec.name}: {exc}") from exc
    return streams


def _decode(conn: multiprocessing.connection.Connection, streams: dict[str, Any]) -> None:
    """The child's loop: idle, wait for sentences; decoding, take in whatever came without
    waiting, step every busy stream, and send what ended."""
    ended: dict[str, list[tuple[Any, str]]] = {name: [] for name in streams}

    def take(message: Any) -> bool:
        """Apply one message of the server; False when it says stop."""
        if message is None:
            return False
        name, admits, drops = message
        if drops:
            streams[name].drop(set(drops).__contains__)
        if admits:
            ended[name].extend(streams[name].admit([s for _, s in admits],
                                                   [i for i, _ in admits]))
        return True

    def busy(name: str) -> bool:
        return bool(len(streams[name]) or ended[name])

    while True:
        if not any(busy(name) for name in streams) and not take(conn.recv()):
            return
        while conn.poll(0):
            if not take(conn.recv()):
                return
        for name, stream in streams.items():
            if not busy(name):
                continue
            try:
                ended[name].extend(stream.step())
            except Exception as exc:
                stream.drop(lambda tag: True)
                ended[name].clear()
                conn.send((name, "error", "".join(traceback.format_exception_only(exc)).strip()))
                continue
            if ended[name]:  # nothing ended: nothing to say (the server sleeps on)
                conn.send((name, "ok", ended[name]))
                ended[name] = []
