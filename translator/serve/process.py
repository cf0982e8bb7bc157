"""A native model's greedy stream in a process of its own (`ProcessStream`).

Why: Python runs one thread's bytecode at a time, and PyTorch hands that lock (the GIL) back
and forth at every operation, about 80 per decoding step. With two models decoding on two
threads of one process, beside the event loop, each step keeps waiting for the lock: on the
2-core VM two models' streams on two threads of one process decoded 1.3x as fast as one after
the other, and in two processes 1.9x (docs/benchmarks.md, "Continuous batching"). So the
server runs each native model's greedy stream in a child process, which loads the model
itself. The two talk through a pipe without waiting for each other: the server sends the
sentences that join and the ones withdrawn; the child, while it has sentences, decodes step
after step, takes in what arrived before each step, and sends after each the translations of
those that ended. The batching, queue order and withdrawal stay in the server's batcher.

The cost is memory: the child holds a second copy of the model and of PyTorch (the server's
own copy still runs beam search and attention maps). `translator serve --no-decode-processes`
keeps everything in one process.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import traceback
from collections.abc import Callable, Hashable
from typing import Any

from translator.errors import TranslatorError

log = logging.getLogger("translator")

# Seconds a child may take to import torch and load its model.
_START_TIMEOUT = 300.0


class ProcessStream:
    """The `translator.serve.batcher.Stream` of a native model's greedy translations,
    decoded in a child process: `load()` (picklable) gives the child its Translator; `decoding`
    its length caps; `threads` its torch threads. Answers are `[(text, 0.0)]` per sentence,
    as the server's batches give them."""

    def __init__(self, load: Callable[[], Any], decoding: Any, threads: int,
                 name: str) -> None:
        self._spec = (load, decoding, threads)
        self.name = name
        self._tags: dict[int, Hashable] = {}  # in the child's stream, by the id sent there
        self._admits: list[tuple[int, str]] = []  # to send with the next step
        self._ids = 0
        self._proc: multiprocessing.process.BaseProcess | None = None
        self._conn: multiprocessing.connection.Connection | None = None
        self.start()

    def start(self) -> None:
        """Start the child (it loads the model in the background; `wait_ready` waits)."""
        ctx = multiprocessing.get_context("spawn")  # fork would copy torch's thread pools
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_child, args=(child, *self._spec), daemon=True,
                                 name=f"decode-{self.name}")
        self._proc.start()
        child.close()
        self._ready = False

    def wait_ready(self) -> None:
        """Block until the child has loaded its model; a child that failed is an error."""
        if self._ready:
            return
        assert self._conn is not None
        if not self._conn.poll(_START_TIMEOUT):
            self.close()
            raise TranslatorError(f"the decoding process of {self.name} did not start in "
                                  f"{_START_TIMEOUT:g} s")
        try:
            kind, detail = self._conn.recv()
        except EOFError:
            kind, detail = "error", "it exited"
        if kind != "ready":
            self.close()
            raise TranslatorError(f"the decoding process of {self.name} failed: {detail}")
        self._ready = True

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
        out = set(gone)
        sent = [i for i in gone if i not in {j for j, _ in self._admits}]
        self._admits = [(i, s) for i, s in self._admits if i not in out]
        if sent and self._conn is not None:
            try:
                self._conn.send(([], sent))
            except OSError:  # the child is gone; the next step says so
                pass
        return [self._tags.pop(i) for i in gone]

    def step(self) -> list[tuple[Hashable, Any]]:
        """Send the items that joined since the last call, then wait for the child's next
        step (and take any later ones already there); the answers of the items that ended.
        A child that died loses what it held: RuntimeError, and a new child starts."""
        if self._proc is None or not self._proc.is_alive():
            self._lost("it had stopped")  # raises when it held sentences of ours
        self.wait_ready()
        assert self._conn is not None
        if not self._tags:  # nothing of ours in the child: no step to wait for
            return []
        ended: list[tuple[int, str]] = []
        try:
            if self._admits:
                self._conn.send((self._admits, []))
                self._admits = []
            while True:
                kind, detail = self._conn.recv()
                if kind == "error":  # the child has cleared its stream
                    self._tags.clear()
                    raise RuntimeError(f"decoding in the process of {self.name} failed: "
                                       f"{detail}")
                ended += detail
                if not self._conn.poll(0):
                    break
        except (EOFError, OSError) as exc:
            self._lost(f"it stopped ({exc.__class__.__name__})")
        # An item withdrawn here may still end there: it is no longer ours to answer.
        return [(self._tags.pop(i), [(text, 0.0)]) for i, text in ended if i in self._tags]

    def _lost(self, why: str) -> None:
        """The child died: start a new one; the items it held are lost (RuntimeError), those
        not sent yet go to the new one."""
        log.error("the decoding process of %s: %s; starting a new one", self.name, why)
        self.close()
        self.start()
        waiting = {i for i, _ in self._admits}
        lost = [i for i in self._tags if i not in waiting]
        if not lost:
            return
        for i in lost:
            del self._tags[i]
        raise RuntimeError(f"the decoding process of {self.name} stopped ({why}); the "
                           f"{len(lost)} sentences it held are lost and a new one is starting")

    def close(self, timeout: float = 5.0) -> None:
        """Stop the child."""
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


def _child(conn: multiprocessing.connection.Connection, load: Callable[[], Any],
           decoding: Any, threads: int) -> None:
    """The child: load the model, then answer one step per message until told to stop (None)
    or the server goes away (the pipe closes)."""
    try:
        import torch

        if threads > 0:
            torch.set_num_threads(threads)
        stream = load().stream(decoding)
    except BaseException as exc:  # told to the server, which refuses to start
        conn.send(("error", f"{exc.__class__.__name__}: {exc}"))
        return
    conn.send(("ready", None))
    ended: list[tuple[Any, str]] = []

    def take(message: Any) -> bool:
        """Apply one message of the server; False when it says stop."""
        if message is None:
            return False
        admits, drops = message
        if drops:
            stream.drop(set(drops).__contains__)
        if admits:
            ended.extend(stream.admit([s for _, s in admits], [i for i, _ in admits]))
        return True

    try:
        while True:
            # Idle, wait for sentences; decoding, take in whatever came, without waiting.
            if not len(stream) and not take(conn.recv()):
                return
            while conn.poll(0):
                if not take(conn.recv()):
                    return
            try:
                ended.extend(stream.step())
            except Exception as exc:
                stream.drop(lambda tag: True)
                ended.clear()
                conn.send(("error", "".join(traceback.format_exception_only(exc)).strip()))
                continue
            conn.send(("ok", list(ended)))
            ended.clear()
    except (EOFError, OSError, KeyboardInterrupt):  # the server stopped, or Ctrl-C
        return
