"""`translator serve` with two models of opposite directions (en->de, de->en) against the
real clients: libretranslatepy, Mastodon- and Weblate-shaped requests (HTML, q lists,
source auto), a browser page that picks the reverse pair, CORS from a foreign origin, file
translation; then pivoting, the work budget, the full queue, withdrawn work, the key under a
root_path, the read timeout, and HTML round trips fuzzed with hypothesis."""

from __future__ import annotations

import asyncio
import copy
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
libretranslatepy = pytest.importorskip("libretranslatepy")
pytest.importorskip("py3langid")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from lxml import html as lxml_html  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from tests.test_serve import (  # noqa: E402
    SlowTranslator,
    _chrome,
    _free_port,
    _wait_healthy,
    serve_in_thread,
    server_process,
)
from translator.decode.translator import Translator  # noqa: E402
from translator.serve.app import create_app  # noqa: E402
from translator.serve.html import split_html  # noqa: E402
from translator.serve.service import Limits, TranslationService  # noqa: E402

KEY = "two-model-key"
FRIEND = "http://friend.example"
EN = ["The dog sees the cat.", "A man reads a book."]
DE = ["Der Hund sieht die Katze.", "Ein Mann liest ein Buch."]
TOOT = ('<p>Hello <span class="h-card"><a href="https://social.example/@bob" '
        'class="u-url mention">@<span>bob</span></a></span>! The dog sees the cat.</p>'
        '<p>A man reads a book. <a href="https://social.example/tags/books" '
        'class="mention hashtag" rel="tag">#<span>books</span></a><br>The big dog runs '
        '&amp; the cat sleeps.</p>')


@pytest.fixture(scope="module")
def en_de(serve_run: Path) -> Translator:
    return Translator.from_run(serve_run, device="cpu")


@pytest.fixture(scope="module")
def de_en(serve_run_reverse: Path) -> Translator:
    return Translator.from_run(serve_run_reverse, device="cpu")


@pytest.fixture(scope="module")
def server(serve_run: Path, serve_run_reverse: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real server process with both models, a key, and one foreign origin allowed."""
    with server_process(serve_run, tmp_path_factory.mktemp("two"), "--run",
                        str(serve_run_reverse), "--cors-origin", FRIEND, "--batch-wait-ms",
                        "20", env={"TRANSLATOR_API_KEY": KEY}) as (url, proc):
        yield url
        assert proc.poll() is None, "the server died during the tests"


def tags(fragment: str) -> list[tuple[str, list[tuple[str, str]]]]:
    """Every element of an HTML fragment, in document order, with its attributes."""
    root = lxml_html.fragment_fromstring(fragment, create_parent="div")
    return [(el.tag, sorted(el.attrib.items())) for el in root.iter() if el is not root]


# -- real clients ------------------------------------------------------------------------------

def test_libretranslatepy_translates_both_ways_detects_and_lists(
        server: str, en_de: Translator, de_en: Translator) -> None:
    lt = libretranslatepy.LibreTranslateAPI(server, api_key=KEY)
    languages = {entry["code"]: entry for entry in lt.languages()}
    assert languages["en"]["targets"] == ["de"] and languages["de"]["targets"] == ["en"]
    assert lt.translate(EN[0], "en", "de") == en_de.translate([EN[0]])[0]
    assert lt.translate(DE[0], "de", "en") == de_en.translate([DE[0]])[0]
    assert lt.detect(DE[1])[0]["language"] == "de"
    assert lt.detect(EN[1])[0]["language"] == "en"
    assert all(0 <= c["confidence"] <= 100 for c in lt.detect(EN[1]))
    # Only languages the server translates from: French text is still "de" or "en".
    assert {c["language"] for c in lt.detect("Bonjour, comment allez-vous aujourd'hui ?")} \
        <= {"de", "en"}
    with pytest.raises(Exception, match="403"):
        libretranslatepy.LibreTranslateAPI(server, api_key="wrong").translate(EN[0], "en", "de")


def test_mastodon_toots_come_back_as_html_with_the_same_tags(
        server: str, en_de: Translator, de_en: Translator) -> None:
    german = "<p>Der Hund sieht die Katze. <br>Ein Mann liest ein Buch.</p>"
    body = {"q": [TOOT, german], "source": "auto", "target": "de", "format": "html",
            "api_key": KEY}
    r = httpx.post(f"{server}/translate", json=body, timeout=60)
    assert r.status_code == 200, r.text
    data = r.json()
    assert [d["language"] for d in data["detectedLanguage"]] == ["en", "de"]
    out = data["translatedText"]
    assert tags(out[0]) == tags(TOOT)  # valid HTML, same tags and attributes, same order
    assert out[1] == german  # already German: returned as it was
    # Text nodes were translated with the model; mentions and hashtags kept.
    assert en_de.translate(["The big dog runs & the cat sleeps."], split_sentences=True)[0]\
        .replace("&", "&amp;") in out[0]
    assert "@<span>bob</span>" in out[0] and "#<span>books</span>" in out[0]
    # The other direction, and a string q: detectedLanguage is an object.
    r = httpx.post(f"{server}/translate", json={**body, "q": german, "target": "en"})
    assert r.json()["detectedLanguage"]["language"] == "de"
    assert tags(r.json()["translatedText"]) == tags(german)
    expected = de_en.translate(["Der Hund sieht die Katze."])[0]
    assert expected in r.json()["translatedText"]
    # Mastodon maps 403 to its quota error: a wrong key is 403.
    assert httpx.post(f"{server}/translate", json={**body, "api_key": "no"}).status_code == 403


def test_weblate_lists_codes_and_posts_q_lists(server: str, en_de: Translator) -> None:
    codes = [entry["code"] for entry in httpx.get(f"{server}/languages").json()]
    assert sorted(codes) == ["de", "en"]
    r = httpx.post(f"{server}/translate", json={"q": EN, "source": "en", "target": "de",
                                                "api_key": KEY}, timeout=60)
    assert r.json() == {"translatedText": en_de.translate(EN)}
    r = httpx.post(f"{server}/translate", json={"q": ["<b>A man</b> reads a book."],
                                                "source": "en", "target": "de",
                                                "format": "html", "api_key": KEY})
    assert r.json()["translatedText"][0].startswith("<b>")


def test_cors_preflight_and_answers_for_an_allowed_origin_only(server: str) -> None:
    ask = {"Access-Control-Request-Method": "POST",
           "Access-Control-Request-Headers": "authorization, content-type"}
    r = httpx.options(f"{server}/translate", headers={"Origin": FRIEND, **ask})
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == FRIEND
    assert r.headers["access-control-allow-headers"] == "Authorization, Content-Type"
    assert "POST" in r.headers["access-control-allow-methods"]
    r = httpx.post(f"{server}/translate", json={"q": EN[0], "target": "de", "source": "en"},
                   headers={"Origin": FRIEND, "Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == FRIEND
    # An error is readable by the allowed page too.
    r = httpx.post(f"{server}/translate", json={"q": EN[0]}, headers={"Origin": FRIEND})
    assert r.status_code == 401 and r.headers["access-control-allow-origin"] == FRIEND
    # Another origin: no preflight, no answer, and its form POST does no work.
    r = httpx.options(f"{server}/translate", headers={"Origin": "http://evil.example", **ask})
    assert r.status_code == 403 and "access-control-allow-origin" not in r.headers
    r = httpx.post(f"{server}/translate", data={"q": EN[0], "api_key": KEY},
                   headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and "origin" in r.json()["error"]


def test_translate_file_round_trip_txt_and_html(server: str, en_de: Translator) -> None:
    text = "The dog sees the cat. A man reads a book.\n\nThe big dog runs.\n"
    r = httpx.post(f"{server}/translate_file", files={"file": ("notes.txt", text.encode())},
                   data={"source": "en", "target": "de", "api_key": KEY}, timeout=60)
    assert r.status_code == 200, r.text
    url = r.json()["translatedFileUrl"]
    assert url.startswith(server) and url.endswith(".notes.txt")
    got = httpx.get(url)  # the token is the permission: no key needed
    assert got.status_code == 200 and "notes.txt" in got.headers["content-disposition"]
    lines = text.split("\n")
    assert got.text == "\n".join(en_de.translate(lines, split_sentences=True))
    page = "<!doctype html><html><body><h1>A man reads a book.</h1><pre>The dog</pre></body></html>"
    r = httpx.post(f"{server}/translate_file", files={"file": ("page.html", page.encode())},
                   data={"source": "en", "target": "de"}, headers={"X-API-Key": KEY})
    got = httpx.get(r.json()["translatedFileUrl"]).text
    assert got.startswith("<!doctype html><html><body><h1>") and "<pre>The dog</pre>" in got
    assert en_de.translate(["A man reads a book."])[0] in got
    # Refusals: no key, an unknown type, a bogus download.
    r = httpx.post(f"{server}/translate_file", files={"file": ("a.txt", b"Hi.")},
                   data={"source": "en", "target": "de"})
    assert r.status_code == 401
    r = httpx.post(f"{server}/translate_file", files={"file": ("a.pdf", b"%PDF")},
                   data={"source": "en", "target": "de", "api_key": KEY})
    assert r.status_code == 400 and ".txt" in r.json()["error"]
    assert httpx.get(f"{server}/download_file/nope.txt").status_code == 404
    assert httpx.get(f"{server}/download_file/..%2F..%2Fetc%2Fpasswd").status_code == 404


def test_frontend_settings_and_health_in_their_shapes(server: str) -> None:
    settings_ = httpx.get(f"{server}/frontend/settings").json()
    assert settings_["keyRequired"] is True and ".txt" in settings_["supportedFilesFormat"]
    assert settings_["language"]["source"]["code"] in ("de", "en")
    health = httpx.get(f"{server}/health").json()
    assert sorted((m["source"], m["target"]) for m in health["models"]) == [
        ("de", "en"), ("en", "de")]
    assert "run" not in json.dumps(health)  # the key hides paths


def test_page_picks_the_reverse_pair_in_a_browser(server: str, de_en: Translator) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    browser = _chrome()
    try:
        browser.get(f"{server}/")
        wait = WebDriverWait(browser, 30)
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#source-lang option")) == 3)
        browser.find_element(By.ID, "apikey").send_keys(KEY)
        Select(browser.find_element(By.ID, "source-lang")).select_by_value("de")
        wait.until(lambda b: b.find_element(By.ID, "pair").text == "German → English")
        browser.find_element(By.ID, "source").send_keys(DE[0])
        browser.find_element(By.ID, "translate").click()
        expected = de_en.translate([DE[0]])[0]
        wait.until(lambda b: b.find_element(By.ID, "translation").text == expected)
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR,
                                             "canvas.heatmap[data-drawn='true']"))
        # "Detect language" finds German by itself.
        Select(browser.find_element(By.ID, "source-lang")).select_by_value("auto")
        Select(browser.find_element(By.ID, "target-lang")).select_by_value("en")
        browser.find_element(By.ID, "translate").click()
        wait.until(lambda b: "German" in b.find_element(By.ID, "via").text)
        assert browser.find_element(By.ID, "translation").text == expected
    finally:
        browser.quit()


# -- in-process: pivots, limits, withdrawn work ------------------------------------------------

def _relabelled(tr: Translator, src: str, tgt: str) -> Translator:
    """The same model under another language pair (to have a third pair for pivoting)."""
    other = copy.copy(tr)
    other.cfg = copy.deepcopy(tr.cfg)
    other.cfg.data.src_lang, other.cfg.data.tgt_lang = src, tgt
    return other


def test_a_pair_without_a_model_goes_through_a_pivot(en_de: Translator,
                                                     de_en: Translator) -> None:
    de_fr = _relabelled(de_en, "de", "fr")  # stands in for a German-French model
    service = TranslationService([en_de, de_en, de_fr])
    with TestClient(create_app(service)) as client:
        languages = {e["code"]: e for e in client.get("/languages").json()}
        assert languages["en"]["targets"] == ["de", "fr"]
        assert languages["en"]["via"] == {"fr": "de"}
        assert "via" not in languages["de"]
        r = client.post("/translate", json={"q": EN[0], "source": "en", "target": "fr"})
        assert r.status_code == 200, r.text
        middle = en_de.translate([EN[0]], split_sentences=True)[0]
        assert r.json() == {"translatedText": de_fr.translate([middle],
                                                               split_sentences=True)[0],
                            "via": "de"}
        r = client.post("/translate", json={"q": EN[0], "source": "fr", "target": "en"})
        assert r.status_code == 400
        assert r.json()["error"] == ("unsupported source language fr: this server translates "
                                     "from de, en")


def test_sentences_times_beam_over_the_budget_is_413(en_de: Translator) -> None:
    service = TranslationService(en_de, limits=Limits(max_work=1024))
    with TestClient(create_app(service)) as client:
        r = client.post("/translate", json={"q": "Ab. " * 1250, "beam": 1})
        assert r.status_code == 413
        assert "1250 sentences x beam 1" in r.json()["error"]
        r = client.post("/translate", json={"q": "Ab. " * 300, "beam": 4})
        assert r.status_code == 413 and "beam 4" in r.json()["error"]
        assert client.post("/translate", json={"q": "Ab. " * 200, "beam": 4}).status_code == 200
    assert service.batcher.items_decoded == 200  # the refused ones cost no decoding


def test_a_full_queue_is_429_with_retry_after(en_de: Translator) -> None:
    slow = SlowTranslator(en_de, delay=1.5)
    service = TranslationService(slow, wait_ms=1, limits=Limits(max_queued=3))
    with serve_in_thread(service) as url:
        hold = threading.Thread(target=lambda: httpx.post(
            f"{url}/translate", json={"q": "The slow dog."}, timeout=30))
        hold.start()
        assert slow.decoding_started.wait(10)
        queued = threading.Thread(target=lambda: httpx.post(
            f"{url}/translate", json={"q": "A dog. A cat. A man."}, timeout=30))
        queued.start()
        deadline = time.monotonic() + 5
        while service.batcher.queued < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        r = httpx.post(f"{url}/translate", json={"q": "One more."}, timeout=30)
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert "busy" in r.json()["error"]
        hold.join(30)
        queued.join(30)


def test_a_client_that_disconnects_has_its_queued_work_withdrawn(en_de: Translator) -> None:
    slow = SlowTranslator(en_de, delay=1.5)
    service = TranslationService(slow, wait_ms=1)
    with serve_in_thread(service) as url:
        hold = threading.Thread(target=lambda: httpx.post(
            f"{url}/translate", json={"q": "The slow dog."}, timeout=30))
        hold.start()
        assert slow.decoding_started.wait(10)
        before = service.batcher.items_decoded
        with pytest.raises(httpx.TimeoutException):  # the client gives up and hangs up
            httpx.post(f"{url}/translate", json={"q": "A dog. A cat. A man."}, timeout=0.3)
        hold.join(30)
        time.sleep(0.5)  # time for the worker to take the queued job, if it were to
        assert service.batcher.items_decoded == before + 1  # only the slow sentence
        assert service.batcher.queued == 0


def _raw_request(url: str, head: str, body: bytes = b"", wait: float = 5.0) -> str:
    """Send a hand-made request (headers, then maybe part of a body) and read the answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait) as sock:
        sock.sendall(head.encode() + b"\r\n\r\n" + body)
        return sock.recv(65536).decode("latin-1")


def test_the_key_is_judged_before_the_body_also_under_a_root_path(
        en_de: Translator) -> None:
    service = TranslationService(en_de)
    app = create_app(service, api_key=KEY, read_timeout=0.5)
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, root_path="/api",
                                        log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        # uvicorn's root_path: a proxy took the prefix off, the app sees /api/... paths.
        _wait_healthy(url, None, None, 30)
        for path in ("/translate", "/api/translate", "/api/api/translate"):
            # A wrong key in a header: 403 at once, though the promised body never comes.
            answer = _raw_request(url, f"POST {path} HTTP/1.1\r\nHost: x\r\nX-API-Key: no\r\n"
                                  "Content-Type: application/json\r\nContent-Length: 100000")
            assert answer.startswith("HTTP/1.1 403"), (path, answer)
            r = httpx.post(f"{url}{path}", json={"q": EN[0]})
            assert r.status_code == 401, path
        r = httpx.post(f"{url}/translate", json={"q": EN[0], "api_key": KEY})
        assert r.status_code == 200 and r.json()["translatedText"] == en_de.translate(
            [EN[0]])[0]
        # A body that does not arrive is 408 after the read timeout.
        start = time.monotonic()
        answer = _raw_request(url, f"POST /translate HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}"
                              "\r\nContent-Type: application/json\r\nContent-Length: 50",
                              b'{"q": ')
        assert answer.startswith("HTTP/1.1 408") and time.monotonic() - start < 4
        assert "run" not in httpx.get(f"{url}/health").json()
    finally:
        srv.should_exit = True
        thread.join(10)


def test_a_timeout_is_503_even_where_asyncio_timeouterror_is_not_builtin(
        en_de: Translator, monkeypatch: pytest.MonkeyPatch) -> None:
    # Python 3.10's asyncio.TimeoutError is its own class: the service must catch that one.
    class OldTimeout(Exception):
        pass

    monkeypatch.setattr(asyncio, "TimeoutError", OldTimeout)

    async def never(*_: Any, **__: Any) -> None:
        raise OldTimeout

    service = TranslationService(en_de)
    monkeypatch.setattr(service.batcher, "run", never)
    with TestClient(create_app(service)) as client:
        r = client.post("/translate", json={"q": EN[0]})
    assert r.status_code == 503 and "try again" in r.json()["error"]


# -- HTML round trips ----------------------------------------------------------------------------

WORDS = st.sampled_from(["The dog", "runs", "a cat", "&amp;", "&nbsp;", "&#169;", " ", "\n",
                         "A man reads.", "x < y", "é"])
ATTRS = st.sampled_from(['', ' class="a"', " href='https://x.example/?a=1&amp;b=2'",
                         ' translate="no"', " data-x=1", ' class="mention"'])


@st.composite
def fragments(draw: st.DrawFn, depth: int = 0) -> str:
    parts = []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["text", "el", "br", "raw", "comment"]
                                    if depth < 3 else ["text", "br"]))
        if kind == "text":
            parts.append(draw(WORDS))
        elif kind == "br":
            parts.append("<br>")
        elif kind == "comment":
            parts.append("<!-- keep me -->")
        elif kind == "raw":
            tag = draw(st.sampled_from(["code", "pre", "script", "style"]))
            parts.append(f"<{tag}>The dog &lt; runs</{tag}>")
        else:
            tag = draw(st.sampled_from(["p", "a", "b", "span", "em", "li"]))
            parts.append(f"<{tag}{draw(ATTRS)}>{draw(fragments(depth + 1))}</{tag}>")
    return "".join(parts)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fragment=fragments())
def test_html_round_trips_keep_every_tag_and_the_untranslated_parts(fragment: str) -> None:
    template = split_html(fragment)
    assert template.fill(template.texts).replace("&nbsp;", "\xa0") is not None
    translated = template.fill([f"[{t.upper()}]" for t in template.texts])
    if fragment.strip():
        assert tags(translated) == tags(fragment)  # same elements, attributes, order
    for raw in ("<!-- keep me -->", "The dog &lt; runs"):
        assert translated.count(raw) == fragment.count(raw)
    if not template.texts:
        assert translated == fragment  # nothing to translate: byte for byte the same
    for text in template.texts:
        assert "<" not in text.replace("x < y", "") and text == text.strip()


def test_html_text_nodes_and_what_is_never_translated() -> None:
    template = split_html(TOOT)
    assert template.texts == ["Hello", "! The dog sees the cat.", "A man reads a book.",
                              "The big dog runs & the cat sleeps."]
    out = template.fill(["Hallo", "! Der Hund.", "Ein Mann.", "Der Hund & die Katze."])
    assert out.startswith('<p>Hallo <span class="h-card"><a href="https://social.example/@bob"')
    assert "Der Hund &amp; die Katze.</p>" in out
    kept = split_html('<p translate="no">Keep</p><code>x.y()</code><p class="notranslate">'
                      'Name</p> <script>alert("Hi there")</script>Go.')
    assert kept.texts == ["Go."]
