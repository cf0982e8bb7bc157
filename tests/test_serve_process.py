"""Greedy requests of native models decoded in processes of their own
(`translator.serve.process`): the same translations, a child that dies is replaced, a child
that cannot load stops the start, and no child outlives the server."""

from __future__ import annotations

import functools
import os
import signal
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from tests.test_serve import server_process  # noqa: E402
from translator.decode.translator import Translator  # noqa: E402
from translator.errors import TranslatorError  # noqa: E402
from translator.serve.process import ProcessStream  # noqa: E402

EN = ["The dog sees the cat.", "A man reads a book.", "", "Two children play in the park.",
      "The woman drinks coffee."]
DE = ["Der Hund sieht die Katze.", "Ein Mann liest ein Buch.", "Die Frau trinkt Kaffee."]


def _children(pid: int) -> list[int]:
    """The decoding processes of a server (not multiprocessing's resource tracker)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        for child in (task / "children").read_text().split():
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            if b"spawn_main" in cmdline:
                found.append(int(child))
    return found


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def _wait(condition: object, seconds: float = 20) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


def test_a_process_stream_translates_as_translate_does_and_survives_its_child(
        serve_run: Path) -> None:
    native = Translator.from_run(serve_run, device="cpu")
    load = functools.partial(Translator.from_run, serve_run, None, "cpu")
    stream = ProcessStream(load, native.decoding(beam_size=1), 1, "en->de")
    try:
        stream.wait_ready()
        got: dict[int, object] = dict(stream.admit(EN[:2], [0, 1]))
        got.update(stream.step())
        got.update(stream.admit(EN[2:], [2, 3, 4]))  # joining while the first two run
        while len(stream):
            got.update(stream.step())
        expected = native.translate(EN, beam_size=1)
        assert [got[i] for i in range(len(EN))] == [[(t, 0.0)] for t in expected]
        # The child dies (OOM killer, a crash) while it decodes a sentence of ours: that
        # sentence fails, and a new child takes the next ones.
        stream.admit(["Two big dogs run through the tall green grass of the park."], ["lost"])
        assert stream.step() == []  # decoding it now
        assert stream._proc is not None
        os.kill(stream._proc.pid, signal.SIGKILL)
        with pytest.raises(RuntimeError, match="1 sentences it held are lost"):
            while True:
                stream.step()
        assert len(stream) == 0
        stream.admit([EN[0]], ["again"])
        after = {}
        while len(stream):
            after.update(stream.step())
        assert after == {"again": [(expected[0], 0.0)]}
        # Dead while idle: nothing is lost, the sentence waiting goes to the new child.
        assert stream._proc is not None
        os.kill(stream._proc.pid, signal.SIGKILL)
        stream._proc.join(10)
        stream.admit([EN[1]], ["idle"])
        after = {}
        while len(stream):
            after.update(stream.step())
        assert after == {"idle": [(expected[1], 0.0)]}
    finally:
        stream.close()


def test_a_child_that_cannot_load_its_model_is_one_clear_error(tmp_path: Path) -> None:
    load = functools.partial(Translator.from_run, tmp_path / "no-such-run", None, "cpu")
    stream = ProcessStream(load, None, 1, "xx->yy")
    try:
        with pytest.raises(TranslatorError, match="decoding process of xx->yy failed: .*"
                                                  "no-such-run"):
            stream.wait_ready()
    finally:
        stream.close()


def test_the_server_decodes_greedy_requests_in_one_child_per_model(
        serve_run: Path, serve_run_reverse: Path, tmp_path: Path) -> None:
    en_de = Translator.from_run(serve_run, device="cpu")
    de_en = Translator.from_run(serve_run_reverse, device="cpu")
    with server_process(serve_run, tmp_path, "--run", str(serve_run_reverse)) as (url, proc):
        children = _children(proc.pid)
        assert len(children) == 2, children  # one decoding process per native model
        answers: dict[tuple[str, int], str] = {}

        def client(pair: str, i: int, text: str) -> None:
            src, tgt = pair.split("-")
            r = httpx.post(f"{url}/translate", json={"q": text, "source": src, "target": tgt,
                                                     "beam": 1}, timeout=60)
            assert r.status_code == 200, r.text
            answers[pair, i] = r.json()["translatedText"]

        english = [t for t in EN if t]  # an empty q is a 400
        threads = [threading.Thread(target=client, args=("en-de", i, t))
                   for i, t in enumerate(english)]
        threads += [threading.Thread(target=client, args=("de-en", i, t))
                    for i, t in enumerate(DE)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert [answers["en-de", i] for i in range(len(english))] == en_de.translate(
            english, beam_size=1, split_sentences=True)
        assert [answers["de-en", i] for i in range(len(DE))] == de_en.translate(
            DE, beam_size=1, split_sentences=True)
        health = httpx.get(f"{url}/health").json()
        assert all(m["steps"] > 0 for m in health["models"])  # decoded as streams
        # A child killed from outside is replaced; the server goes on.
        os.kill(children[0], signal.SIGKILL)
        codes = [httpx.post(f"{url}/translate", json={"q": EN[0], "source": "en",
                                                      "target": "de", "beam": 1},
                            timeout=60).status_code for _ in range(2)]
        assert codes[-1] == 200 and set(codes) <= {200, 500}
        assert len(_children(proc.pid)) == 2
        survivors = _children(proc.pid)
    # Stopped with SIGTERM: no decoding process outlives the server.
    assert _wait(lambda: not any(_alive(c) for c in survivors)), survivors


def test_no_child_outlives_a_killed_server(serve_run: Path, tmp_path: Path) -> None:
    with server_process(serve_run, tmp_path) as (_url, proc):
        children = _children(proc.pid)
        assert children
        proc.kill()  # SIGKILL: no chance to stop them; they see their pipe close
        proc.wait(10)
        assert _wait(lambda: not any(_alive(c) for c in children)), children
