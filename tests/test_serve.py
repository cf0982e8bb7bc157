"""`translator serve`: the HTTP API against a real server process, its limits and errors, the
API key, batching across clients, timeouts, a fuzzed request body, and the page in a real
headless browser."""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from translator.cli import app as cli_app  # noqa: E402
from translator.decode.translator import Translator  # noqa: E402
from translator.serve import INSTALL_HINT  # noqa: E402
from translator.serve.app import STATIC, create_app  # noqa: E402
from translator.serve.service import Limits, TranslationService  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
KEY = "s3cret-key"
SENTENCES = ["The dog sees the cat.", "A man reads a book.", "The small woman sleeps.",
             "The children play in the garden.", "The big dog runs.", "A cat drinks water."]


# -- fixtures: one tiny run, one real server ---------------------------------------------------

@pytest.fixture(scope="module")
def run(serve_run: Path) -> Path:
    return serve_run


@pytest.fixture(scope="module")
def native(run: Path) -> Translator:
    return Translator.from_run(run, device="cpu")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen[bytes] | None, log: Path | None,
                  seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}:\n"
                                 + (log.read_text() if log else ""))
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise AssertionError("server did not become healthy:\n" + (log.read_text() if log else ""))


@contextlib.contextmanager
def server_process(run: Path, tmp: Path, *args: str, env: dict[str, str] | None = None,
                   ) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`python -m translator serve --run RUN` on a free port of 127.0.0.1, until the block
    ends (then SIGTERM, which must stop it cleanly)."""
    port = _free_port()
    log = tmp / f"server-{port}.log"
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1", **(env or {})}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "translator", "serve", "--run", str(run), "--port",
             str(port), "--device", "cpu", "--no-access-log", *args],
            stdout=out, stderr=subprocess.STDOUT, env=full_env, cwd=tmp)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc, log)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(scope="module")
def server(run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real server, with an API key from the environment and a generous gathering window
    so that concurrent test clients reliably share batches."""
    with server_process(run, tmp_path_factory.mktemp("srv"), "--batch-wait-ms", "50",
                        env={"TRANSLATOR_API_KEY": KEY}) as (url, proc):
        yield url
        assert proc.poll() is None, "the server died during the tests"


def post(url: str, path: str, body: Any, key: str | None = KEY, **kw: Any) -> httpx.Response:
    headers = {"X-API-Key": key} if key else {}
    return httpx.post(f"{url}{path}", json=body, headers=headers, timeout=60, **kw)


# -- the API -----------------------------------------------------------------------------------

def test_health_languages_page_and_docs(server: str) -> None:
    health = httpx.get(f"{server}/health").json()  # no key needed
    assert health["model_loaded"] is True and health["engine"] == "native"
    assert health["device"] == "cpu" and health["api_key_required"] is True
    assert health["source"] == "en" and health["target"] == "de"
    assert httpx.get(f"{server}/languages").json() == [
        {"code": "de", "name": "German", "targets": []},
        {"code": "en", "name": "English", "targets": ["de"]}]
    assert "run" not in health and "checkpoint" not in health  # a key: no paths shown
    assert all("run" not in m for m in health["models"])
    page = httpx.get(f"{server}/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'id="source"' in page.text and "static/app.js" in page.text
    for name in ("app.js", "style.css"):
        assert httpx.get(f"{server}/static/{name}").status_code == 200
    # No /docs: FastAPI's Swagger UI comes from a CDN; the schema is served by the app.
    assert httpx.get(f"{server}/docs", headers={"X-API-Key": KEY}).status_code == 404
    schema = httpx.get(f"{server}/openapi.json").json()
    assert {"/translate", "/languages", "/health", "/attention", "/detect",
            "/translate_file"} <= set(schema["paths"])


def test_page_loads_nothing_from_outside() -> None:
    for path in STATIC.iterdir():
        text = path.read_text(encoding="utf-8")
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, path


def test_translate_matches_the_translator_with_sentence_splitting(
        server: str, native: Translator) -> None:
    paragraph = "The dog sees the cat. A man reads a book."
    r = post(server, "/translate", {"q": paragraph, "source": "en", "target": "de",
                                    "format": "text"})
    assert r.status_code == 200, r.text
    expected = native.translate([paragraph], split_sentences=True)[0]
    assert r.json() == {"translatedText": expected}
    assert expected.count(".") >= 2  # two sentences, translated one by one
    # Line breaks are kept, blank lines too; a list gives a list in order.
    texts = ["The dog sees the cat.\n\nA man reads a book. The big dog runs.", "   ",
             "A cat drinks water."]
    r = post(server, "/translate", {"q": texts, "source": "en", "target": "de"})
    assert r.status_code == 200, r.text
    got = r.json()["translatedText"]
    lines = texts[0].split("\n")
    assert got[0] == "\n".join(native.translate(lines, split_sentences=True))
    assert got[1] == "" and got[2] == native.translate([texts[2]])[0]


def test_beam_alternatives_and_auto_source(server: str, native: Translator) -> None:
    s = SENTENCES[0]
    greedy = post(server, "/translate", {"q": s, "beam": 1}).json()
    assert greedy == {"translatedText": native.translate([s], beam_size=1)[0]}
    r = post(server, "/translate", {"q": s, "alternatives": 2, "source": "auto",
                                    "target": "de"}).json()
    best = native.translate_nbest([s], 3)[0]
    assert r["translatedText"] == best[0][0]
    assert r["alternatives"] == [text for text, _ in best[1:]]
    assert r["detectedLanguage"] == {"confidence": 100.0, "language": "en"}
    r = post(server, "/translate", {"q": [s, SENTENCES[1]], "n_best": 2, "beam": 4}).json()
    assert isinstance(r["translatedText"], list) and len(r["alternatives"]) == 2
    assert all(isinstance(a, list) and len(a) == 1 for a in r["alternatives"])


def test_attention_gives_tokens_and_a_row_per_generated_token(
        server: str, native: Translator) -> None:
    r = post(server, "/attention", {"q": "The dog sees the cat. A man reads a book."})
    assert r.status_code == 200, r.text
    data = r.json()
    assert len(data["sentences"]) == 2
    assert data["translatedText"] == native.translate(
        ["The dog sees the cat. A man reads a book."], split_sentences=True)[0]
    for s in data["sentences"]:
        assert s["source_tokens"][0] == "[SOS]" and s["source_tokens"][-1] == "[EOS]"
        assert len(s["attention"]) == len(s["target_tokens"]) > 1
        for row in s["attention"]:
            assert len(row) == len(s["source_tokens"])
            assert abs(sum(row) - 1.0) < 0.01  # a probability distribution over the source


def test_concurrent_clients_get_their_own_lines_and_share_batches(
        server: str, native: Translator) -> None:
    before = httpx.get(f"{server}/health").json()
    texts = [f"{SENTENCES[i % len(SENTENCES)]} {SENTENCES[(i * 5 + 1) % len(SENTENCES)]}"
             for i in range(24)]
    results: dict[int, str] = {}
    barrier = threading.Barrier(len(texts))

    def client(i: int) -> None:
        barrier.wait()
        results[i] = post(server, "/translate", {"q": texts[i]}).json()["translatedText"]

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    expected = native.translate(texts, split_sentences=True)
    assert [results[i] for i in range(len(texts))] == expected
    after = httpx.get(f"{server}/health").json()
    assert after["sentences_translated"] - before["sentences_translated"] == 2 * len(texts)
    # 48 sentences from 24 clients in fewer batches than clients.
    assert after["batches"] - before["batches"] < len(texts)
    assert after["largest_batch"] > 2


BAD_BODIES = {
    "not an object": [1, 2],
    "missing q": {"source": "en", "target": "de"},
    "q a number": {"q": 5},
    "q a list of numbers": {"q": [1, 2]},
    "q null": {"q": None},
    "beam a string": {"q": "Hi.", "beam": "3"},
    "beam a float": {"q": "Hi.", "beam": 2.0},
    "beam zero": {"q": "Hi.", "beam": 0},
    "beam over the limit": {"q": "Hi.", "beam": 17},
    "n_best zero": {"q": "Hi.", "n_best": 0},
    "n_best over the limit": {"q": "Hi.", "n_best": 99},
    "alternatives negative": {"q": "Hi.", "alternatives": -1},
    "format pdf": {"q": "Hi.", "format": "pdf"},
    "unknown target": {"q": "Hi.", "source": "en", "target": "fr"},
    "unknown source": {"q": "Hi.", "source": "de", "target": "de"},
    "source a number": {"q": "Hi.", "source": 3},
    "empty text": {"q": ""},
    "blank text": {"q": " \n\t "},
    "empty list": {"q": []},
    "too many characters": {"q": "a" * 5001},
    "too many characters in a list": {"q": ["a" * 3000, "b" * 3000]},
    "too many lines": {"q": "\n".join(["The dog runs."] * 101)},
    "too many lines in a list": {"q": ["The dog runs."] * 101},
}


@pytest.mark.parametrize("case", list(BAD_BODIES))
def test_bad_input_is_400_with_an_error_message(server: str, case: str) -> None:
    r = post(server, "/translate", BAD_BODIES[case])
    assert r.status_code == 400, (case, r.status_code, r.text)
    error = r.json()["error"]
    assert isinstance(error, str) and error and "\n" not in error


def test_error_messages_say_what_is_wrong(server: str) -> None:
    def error(body: Any, path: str = "/translate") -> str:
        return post(server, path, body).json()["error"]

    assert error({"q": "Hi.", "target": "fr"}) == (
        "unsupported language pair en->fr: from en this server translates into de")
    assert error({"source": "en"}) == "missing field 'q'"
    assert error({"q": 5}) == "q must be a string or a list of strings"
    assert "5001 characters" in error({"q": "a" * 5001})
    assert "101 lines" in error({"q": ["x"] * 101})
    assert error({"q": ""}).startswith("nothing to translate")
    assert error({"q": ["a", "b"]}, "/attention").startswith("q:")


def test_invalid_json_and_other_content(server: str) -> None:
    headers = {"X-API-Key": KEY}
    for body, ctype in ((b'{"q": "Hi.",', "application/json"), (b"\xff\xfe", "application/json"),
                        (b'{"q": "Hi."}', "text/plain"), (b"", None),
                        (b"[" * 5000 + b"]" * 5000, "application/json")):
        h = {**headers, **({"Content-Type": ctype} if ctype else {})}
        r = httpx.post(f"{server}/translate", content=body, headers=h)
        assert r.status_code == 400, (body[:20], r.text)
        assert r.json()["error"]
    assert "invalid JSON" in httpx.post(f"{server}/translate", content=b"{", headers={
        **headers, "Content-Type": "application/json"}).json()["error"]


def test_json_without_content_type_and_html_form_bodies(server: str, native: Translator) -> None:
    expected = native.translate([SENTENCES[0]])[0]
    r = httpx.post(f"{server}/translate", content=json.dumps({"q": SENTENCES[0]}).encode(),
                   headers={"X-API-Key": KEY})
    assert r.status_code == 200 and r.json() == {"translatedText": expected}
    # LibreTranslate's form bodies (the key as a form field too); a repeated q is a list.
    r = httpx.post(f"{server}/translate", data={"q": SENTENCES[0], "source": "en",
                                                "target": "de", "api_key": KEY})
    assert r.status_code == 200 and r.json() == {"translatedText": expected}
    r = httpx.post(f"{server}/translate", data={"q": SENTENCES[:2], "beam": "1",
                                                "api_key": KEY})
    assert r.json() == {"translatedText": native.translate(SENTENCES[:2], beam_size=1)}
    r = httpx.post(f"{server}/translate", data={"q": "Hi.", "beam": "x", "api_key": KEY})
    assert r.status_code == 400 and r.json()["error"].startswith("beam:")


def test_unknown_paths_and_methods_answer_json(server: str) -> None:
    r = httpx.get(f"{server}/nope", headers={"X-API-Key": KEY})
    assert r.status_code == 404 and r.json()["error"]
    assert httpx.get(f"{server}/nope").status_code == 401  # closed unless listed as open
    r = httpx.get(f"{server}/translate", headers={"X-API-Key": KEY})
    assert r.status_code == 405 and r.json()["error"]


def test_body_over_one_megabyte_is_413(server: str) -> None:
    big = json.dumps({"q": "a" * (1 << 20)}).encode()
    r = httpx.post(f"{server}/translate", content=big,
                   headers={"Content-Type": "application/json", "X-API-Key": KEY})
    assert r.status_code == 413 and "limit" in r.json()["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer encoding
        yield b'{"q": "'
        for _ in range(20):
            yield b"a" * 65536
        yield b'"}'

    r = httpx.post(f"{server}/translate", content=chunks(),
                   headers={"Content-Type": "application/json", "X-API-Key": KEY})
    assert r.status_code == 413 and r.json()["error"]
    assert httpx.get(f"{server}/health").status_code == 200  # and it goes on serving


def test_api_key(server: str) -> None:
    body = {"q": SENTENCES[0]}
    for path in ("/translate", "/attention"):
        r = post(server, path, body, key=None)
        assert r.status_code == 401 and "API key" in r.json()["error"], r.text
        r = post(server, path, body, key="wrong")
        assert r.status_code == 403 and r.json() == {"error": "invalid API key"}
    # Three ways to send it: LibreTranslate's api_key field, Bearer, X-API-Key.
    assert post(server, "/translate", {**body, "api_key": KEY}, key=None).status_code == 200
    assert post(server, "/translate", {**body, "api_key": "nope"}, key=None).status_code == 403
    r = httpx.post(f"{server}/translate", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200
    assert post(server, "/translate", body).status_code == 200
    # Without the key, a bad body is still 401: nothing is revealed before the key is right.
    r = httpx.post(f"{server}/translate", content=b"{", headers={"Content-Type": "text/plain"})
    assert r.status_code == 401
    for open_path in ("/health", "/", "/languages"):
        assert httpx.get(f"{server}{open_path}").status_code == 200


# -- in-process: timeouts, health during a batch, fuzzing -------------------------------------

class SlowTranslator:
    """The real translator, but a batch holding a sentence with "slow" takes `delay` seconds
    (the sentence still translates)."""

    def __init__(self, inner: Translator, delay: float) -> None:
        self.inner, self.delay = inner, delay
        self.decoding_started = threading.Event()

    def __getattr__(self, name: str) -> Any:  # cfg, device, model, ...: the real one's
        return getattr(self.inner, name)

    def translate(self, sentences: list[str], *args: Any, **kw: Any) -> list[str]:
        if any("slow" in s for s in sentences):
            self.decoding_started.set()
            time.sleep(self.delay)
        return self.inner.translate(sentences, *args, **kw)

    def translate_nbest(self, *args: Any, **kw: Any) -> list[list[tuple[str, float]]]:
        return self.inner.translate_nbest(*args, **kw)


@contextlib.contextmanager
def serve_in_thread(service: TranslationService, **kw: Any) -> Iterator[str]:
    """The app under a real uvicorn on a free port, in a thread of this process."""
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(service, **kw), host="127.0.0.1",
                                        port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, None, None, 30)
        yield url
    finally:
        srv.should_exit = True
        thread.join(10)


def test_health_answers_while_a_batch_runs_and_a_slow_request_gets_503(
        native: Translator) -> None:
    slow = SlowTranslator(native, delay=2.0)
    service = TranslationService(slow, wait_ms=1, limits=Limits(timeout=0.5))
    with serve_in_thread(service) as url:
        answer: dict[str, httpx.Response] = {}
        waiting = threading.Thread(target=lambda: answer.update(
            r=httpx.post(f"{url}/translate", json={"q": "The slow dog runs."}, timeout=30)))
        start = time.monotonic()
        waiting.start()
        assert slow.decoding_started.wait(10)
        t0 = time.monotonic()
        health = httpx.get(f"{url}/health", timeout=5)
        assert health.status_code == 200 and health.json()["decoding"] is True
        assert time.monotonic() - t0 < 1.0  # not stuck behind the 2-second batch
        waiting.join(30)
        assert answer["r"].status_code == 503 and "try again" in answer["r"].json()["error"]
        assert time.monotonic() - start < 1.9  # answered at the timeout, not after the batch
        # The server keeps serving: once the slow batch is done, requests succeed again.
        deadline = time.monotonic() + 10
        while httpx.get(f"{url}/health").json()["decoding"] and time.monotonic() < deadline:
            time.sleep(0.05)
        r = httpx.post(f"{url}/translate", json={"q": SENTENCES[0]}, timeout=30)
        assert r.status_code == 200 and r.json()["translatedText"] == native.translate(
            [SENTENCES[0]])[0]


def test_a_queued_request_that_times_out_is_never_decoded(native: Translator) -> None:
    slow = SlowTranslator(native, delay=1.5)
    service = TranslationService(slow, wait_ms=1, limits=Limits(timeout=0.4))
    with serve_in_thread(service) as url:
        first = threading.Thread(target=lambda: httpx.post(
            f"{url}/translate", json={"q": "The slow cat."}, timeout=30))
        first.start()
        assert slow.decoding_started.wait(10)
        before = service.batcher.items_decoded
        r = httpx.post(f"{url}/translate", json={"q": "A queued dog."}, timeout=30)
        assert r.status_code == 503
        first.join(30)  # its answer is a 503 too, but its batch runs on for the 1.5 s
        deadline = time.monotonic() + 10
        while service.batcher.items_decoded == before and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # time for the worker to take the queued job, if it were to
        # Only the slow batch's sentence was decoded; the withdrawn one was skipped.
        assert service.batcher.items_decoded == before + 1


# Hypothesis: JSON values of every shape, keyed mostly by the fields the API knows.
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)
FIELD_VALUES = {
    "q": st.text(max_size=80) | st.lists(st.text(max_size=40), max_size=4) | JSON,
    "source": st.sampled_from(["en", "de", "auto", "fr", ""]) | JSON,
    "target": st.sampled_from(["de", "en", "xx"]) | JSON,
    "format": st.sampled_from(["text", "html"]) | JSON,
    "beam": st.integers(-2, 20) | JSON,
    "n_best": st.integers(-1, 5) | JSON,
    "alternatives": st.integers(-1, 4) | JSON,
    "api_key": JSON,
}
BODIES = st.one_of(
    st.fixed_dictionaries({}, optional=FIELD_VALUES).map(json.dumps),
    JSON.map(json.dumps),
    st.text(max_size=60),
).map(lambda s: s.encode("utf-8", "surrogatepass")) | st.binary(max_size=60)


@pytest.fixture(scope="module")
def fuzz_client(native: Translator) -> Iterator[TestClient]:
    service = TranslationService(native, limits=Limits(max_chars=200, max_lines=4, max_beam=4))
    with TestClient(create_app(service)) as client:
        yield client


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(body=BODIES, path=st.sampled_from(["/translate", "/attention", "/detect"]),
       ctype=st.sampled_from(["application/json", "text/plain", None,
                              "application/x-www-form-urlencoded"]))
def test_fuzzed_bodies_never_give_a_5xx(fuzz_client: TestClient, body: bytes, path: str,
                                        ctype: str | None) -> None:
    headers = {"Content-Type": ctype} if ctype else {}
    r = fuzz_client.post(path, content=body, headers=headers)
    assert r.status_code < 500, (body, r.status_code, r.text)
    data = r.json()
    if r.status_code == 200 and path == "/detect":
        assert isinstance(data, list) and data
    elif r.status_code == 200:
        assert "translatedText" in data
        if path == "/translate" and ctype != "application/x-www-form-urlencoded":
            q = json.loads(body)["q"]
            assert isinstance(data["translatedText"], type(q))
            if isinstance(q, list):
                assert len(data["translatedText"]) == len(q)
    else:
        assert 400 <= r.status_code < 500 and isinstance(data["error"], str) and data["error"]


# -- other engines, the CLI ---------------------------------------------------------------------

def test_ctranslate2_engine_translates_and_draws_attention_with_the_native_model(
        run: Path, native: Translator) -> None:
    pytest.importorskip("ctranslate2")
    from translator.decode.ct2 import CT2Translator

    ct2 = CT2Translator.from_run(run, "float32", device="cpu")
    service = TranslationService(ct2, attention_translator=lambda: native, run_dir=str(run))
    with TestClient(create_app(service)) as client:
        assert client.get("/health").json()["engine"] == "ctranslate2"
        paragraph = "The dog sees the cat. A man reads a book."
        r = client.post("/translate", json={"q": paragraph, "beam": 1})
        assert r.json() == {"translatedText": ct2.translate([paragraph], beam_size=1,
                                                            split_sentences=True)[0]}
        r = client.post("/attention", json={"q": SENTENCES[0], "beam": 1})
        assert r.status_code == 200 and r.json()["sentences"][0]["attention"]


def test_cli_without_fastapi_says_how_to_install(
        run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_fastapi(name: str, *args: object, **kwargs: object) -> object:
        if name.split(".")[0] in ("fastapi", "uvicorn"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_fastapi)
    result = CliRunner().invoke(cli_app, ["serve", "--run", str(run)])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {INSTALL_HINT}"


def test_cli_refuses_a_missing_run_or_a_busy_port_in_one_line(tmp_path: Path) -> None:
    port = _free_port()
    result = CliRunner().invoke(cli_app, ["serve", "--run", str(tmp_path / "nope"),
                                          "--port", str(port)])
    assert result.exit_code == 2 and "run folder not found" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        result = CliRunner().invoke(cli_app, ["serve", "--run", str(tmp_path / "nope"),
                                              "--port", str(port)])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port}")


# -- the page in a real browser ---------------------------------------------------------------

def _chrome() -> Any:
    """A headless Chromium through chromedriver, or a skip saying what is missing."""
    try:
        from selenium import webdriver
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install selenium)")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("chromium and chromedriver are needed (apt-get install chromium "
                    "chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1000", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    try:
        return webdriver.Chrome(service=Service(driver), options=options)
    except WebDriverException as exc:
        pytest.skip(f"chromium would not start here: {exc.msg}")


def test_page_translates_and_draws_the_heatmap_in_a_browser(
        server: str, native: Translator, tmp_path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser = _chrome()
    try:
        browser.get(f"{server}/")
        wait = WebDriverWait(browser, 30)
        wait.until(lambda b: b.find_element(By.ID, "pair").text == "English → German")
        key = browser.find_element(By.ID, "apikey")
        assert key.is_displayed()  # this server wants a key: the page asks for it
        key.send_keys(KEY)
        text = "The dog sees the cat. A man reads a book."
        browser.find_element(By.ID, "source").send_keys(text)
        browser.find_element(By.ID, "translate").click()
        expected = native.translate([text], split_sentences=True)[0]
        wait.until(lambda b: b.find_element(By.ID, "translation").text == expected)
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR,
                                                 "canvas.heatmap[data-drawn='true']")) == 2)
        canvas = browser.find_elements(By.CSS_SELECTOR, "canvas.heatmap")[0]
        # Inside the grid of cells: how many pixels are painted (not the white background),
        # how many are a clear blue (strong attention), and how many colours there are.
        painted, blue, colours = browser.execute_script("""
            const c = arguments[0], g = c.dataset, r = window.devicePixelRatio || 1;
            const [left, top, cell] = [+g.left * r, +g.top * r, +g.cell * r];
            const d = c.getContext('2d').getImageData(left, top, +g.cols * cell,
                                                      +g.rows * cell).data;
            let painted = 0, blue = 0;
            const colours = new Set();
            for (let i = 0; i < d.length; i += 4) {
              if (d[i] < 250) painted++;
              if (d[i + 2] - d[i] > 20) blue++;  // attention over about 0.13
              colours.add(d[i] * 65536 + d[i + 1] * 256 + d[i + 2]);
            }
            return [painted, blue, colours.size];""", canvas)
        rows, cols, cell = (int(canvas.get_attribute(f"data-{k}"))
                            for k in ("rows", "cols", "cell"))
        assert rows > 1 and cols > 2
        assert painted >= 0.9 * rows * cols * (cell - 1) ** 2, (painted, rows, cols, cell)
        assert blue > cell * cell and colours > 3, (blue, colours)
        # Hovering a generated token tints the source tokens by its attention.
        block = browser.find_elements(By.CSS_SELECTOR, ".sentence")[0]
        target = block.find_elements(By.CSS_SELECTOR, ".tok.target")[1]
        ActionChains(browser).move_to_element(target).perform()
        wait.until(lambda b: "active" in target.get_attribute("class"))
        weights = [float(el.get_attribute("data-weight") or 0)
                   for el in block.find_elements(By.CSS_SELECTOR, ".tok.source")]
        assert abs(sum(weights) - 1.0) < 0.02 and max(weights) > 0
        # Translate-as-you-type: a new sentence, no click.
        source = browser.find_element(By.ID, "source")
        source.clear()
        source.send_keys(SENTENCES[1])
        expected = native.translate([SENTENCES[1]])[0]
        wait.until(lambda b: b.find_element(By.ID, "translation").text == expected)
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR,
                                                 "canvas.heatmap[data-drawn='true']")) == 1)
        targets = browser.find_elements(By.CSS_SELECTOR, ".tok.target")
        target = targets[min(2, len(targets) - 1)]  # however short the tiny model's output
        ActionChains(browser).move_to_element(target).perform()
        wait.until(lambda b: "active" in target.get_attribute("class"))
        shot = tmp_path / "serve-page.png"
        assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        if os.environ.get("SERVE_SCREENSHOT"):
            shutil.copyfile(shot, os.environ["SERVE_SCREENSHOT"])
        assert browser.find_element(By.ID, "status").text == ""
    finally:
        browser.quit()
