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
from translator.serve.process import DecodePool, ModelSpec  # noqa: E402

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


def _drain(stream: object, got: dict[object, object]) -> None:
    while len(stream):  # type: ignore[arg-type]
        got.update(stream.step())  # type: ignore[attr-defined]


def test_two_models_in_one_process_translate_as_translate_does_and_survive_their_child(
        serve_run: Path, serve_run_reverse: Path) -> None:
    en_de = Translator.from_run(serve_run, device="cpu")
    de_en = Translator.from_run(serve_run_reverse, device="cpu")
    pool = DecodePool([
        ModelSpec("en->de", functools.partial(Translator.from_run, serve_run, None, "cpu"),
                  en_de.decoding(beam_size=1)),
        ModelSpec("de->en", functools.partial(Translator.from_run, serve_run_reverse, None,
                                              "cpu"), de_en.decoding(beam_size=1))],
        processes=1, threads=1)
    try:
        pool.wait_ready()
        assert pool.processes == 1
        ende, deen = pool.stream("en->de"), pool.stream("de->en")
        assert ende.child is deen.child  # one process holds both models
        got: dict[object, object] = dict(ende.admit(EN[:2], [0, 1]))
        got.update(ende.step())
        got.update(ende.admit(EN[2:], [2, 3, 4]))  # joining while the first two run
        back: dict[object, object] = dict(deen.admit(DE, [0, 1, 2]))
        _drain(ende, got)
        _drain(deen, back)
        expected = en_de.translate(EN, beam_size=1)
        assert [got[i] for i in range(len(EN))] == [[(t, 0.0)] for t in expected]
        assert [back[i] for i in range(len(DE))] == [
            [(t, 0.0)] for t in de_en.translate(DE, beam_size=1)]
        # The child dies (the OOM killer, a crash) holding a sentence of each model: both
        # fail, and one new child takes the next ones. (Stopped first, so that it cannot
        # finish them before it is killed.)
        old = ende.child._proc.pid  # type: ignore[union-attr]
        os.kill(old, signal.SIGSTOP)
        ende.admit(["Two big dogs run through the tall green grass of the park."], ["lost"])
        deen.admit(["Zwei große Hunde rennen durch das hohe grüne Gras des Parks."], ["gone"])
        errors: dict[str, str] = {}

        def wait_for_it(stream: object, name: str) -> None:
            try:
                while True:
                    stream.step()  # type: ignore[attr-defined]
            except RuntimeError as exc:
                errors[name] = str(exc)

        waiting = [threading.Thread(target=wait_for_it, args=(st, st.name))
                   for st in (ende, deen)]
        for t in waiting:
            t.start()
        # Both sent their sentence and wait for the stopped child.
        assert _wait(lambda: not ende._admits and not deen._admits)
        os.kill(old, signal.SIGKILL)
        for t in waiting:
            t.join(30)
        assert set(errors) == {"en->de", "de->en"}, errors
        assert all("the 1 sentences of" in e and "are lost" in e for e in errors.values())
        assert len(ende) == len(deen) == 0
        new = ende.child._proc.pid  # type: ignore[union-attr]
        assert new != old and ende.child.generation == 1
        again: dict[object, object] = dict(ende.admit([EN[0]], ["again"]))
        _drain(ende, again)
        assert again == {"again": [(expected[0], 0.0)]}
        # Dead while idle: nothing is lost, the next sentence goes to a new child.
        os.kill(new, signal.SIGKILL)
        ende.child._proc.join(10)  # type: ignore[union-attr]
        idle: dict[object, object] = dict(ende.admit([EN[1]], ["idle"]))
        _drain(ende, idle)
        assert idle == {"idle": [(expected[1], 0.0)]}
    finally:
        pool.close()


def test_a_child_that_cannot_load_its_model_is_one_clear_error(tmp_path: Path) -> None:
    load = functools.partial(Translator.from_run, tmp_path / "no-such-run", None, "cpu")
    pool = DecodePool([ModelSpec("xx->yy", load, None)], processes=2, threads=1)
    try:
        assert pool.processes == 1  # never more processes than models
        with pytest.raises(TranslatorError, match="decoding process of xx->yy failed: "
                                                  "xx->yy: .*no-such-run"):
            pool.wait_ready()
    finally:
        pool.close()


def test_the_server_decodes_greedy_requests_in_one_child_per_model(
        serve_run: Path, serve_run_reverse: Path, tmp_path: Path) -> None:
    en_de = Translator.from_run(serve_run, device="cpu")
    de_en = Translator.from_run(serve_run_reverse, device="cpu")
    with server_process(serve_run, tmp_path, "--run", str(serve_run_reverse),
                        "--decode-processes", "2") as (url, proc):
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
