"""The HTTP face of the server (FastAPI): LibreTranslate-compatible /translate and
/languages, /health, /attention for the page, the page itself at /, OpenAPI docs at /docs.

Every error is a JSON body `{"error": "..."}` with a 4xx status for what a client did wrong
(400 bad input, 401/403 API key, 404, 405, 413 body too big) and 503 when a request waited
longer than the timeout; FastAPI's own 422 validation answer is replaced by 400.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from translator.serve.service import RequestError, TranslationService

log = logging.getLogger("translator")
STATIC = Path(__file__).resolve().parent / "static"
MAX_BODY_BYTES = 1 << 20
# Paths that need the API key when one is set; the page, /health, /languages and the docs
# stay open (LibreTranslate also answers /languages without a key).
PROTECTED = frozenset({"/translate", "/attention"})

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class TranslateRequest(BaseModel):
    """LibreTranslate's request, plus `beam` and `n_best`. Types are strict: `"3"` is not a
    beam size. Unknown fields are ignored, as LibreTranslate does."""

    model_config = ConfigDict(strict=True, extra="ignore")

    q: str | list[str] = Field(description="A text, or a list of texts (translated each on "
                               "its own). Line breaks are kept; a line holding several "
                               "sentences is translated sentence by sentence.")
    source: str | None = Field(None, description="Source language code, or 'auto' (default: "
                               "the served run's source language).")
    target: str | None = Field(None, description="Target language code (default: the run's "
                               "target language).")
    format: Literal["text"] = Field("text", description="Only 'text' is supported.")
    api_key: str | None = Field(None, description="The server's API key, if it has one (or "
                                "send an Authorization: Bearer or X-API-Key header).")
    alternatives: int | None = Field(None, ge=0, description="LibreTranslate: this many "
                                     "further translations of each text, in `alternatives`.")
    beam: int | None = Field(None, ge=1, description="Beam size; 1: greedy (default: the "
                             "run's decoding.beam_size).")
    n_best: int | None = Field(None, ge=1, description="The N best translations: "
                               "translatedText is the best, `alternatives` the N-1 others.")


class TranslateResponse(BaseModel):
    translatedText: str | list[str]
    alternatives: list[str] | list[list[str]] | None = None
    detectedLanguage: dict[str, Any] | None = None


class AttentionRequest(BaseModel):
    """One text for the page's heatmap."""

    model_config = ConfigDict(strict=True, extra="ignore")

    q: str
    source: str | None = None
    target: str | None = None
    api_key: str | None = None
    beam: int | None = Field(None, ge=1)


class SentenceAttention(BaseModel):
    source: str
    translation: str
    source_tokens: list[str] = Field(description="Encoder input, [SOS] and [EOS] included: "
                                     "the columns.")
    target_tokens: list[str] = Field(description="The generated tokens ([EOS] last if it was "
                                     "generated): the rows.")
    attention: list[list[float]] = Field(description="Cross-attention of the last decoder "
                                         "layer averaged over heads, [target][source]; each "
                                         "row sums to 1.")


class AttentionResponse(BaseModel):
    translatedText: str
    sentences: list[SentenceAttention]


class ErrorResponse(BaseModel):
    error: str


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": what} for code, what in (
        (400, "Bad input: invalid JSON, a missing or wrong-typed field, an unsupported "
              "language pair, empty text, a text over the limits."),
        (401, "An API key is required."), (403, "Wrong API key."),
        (413, "Body over 1 MB."), (503, "Timed out waiting for the model."))}


def create_app(service: TranslationService, *, api_key: str | None = None,
               max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """The FastAPI application serving `service`. The service's batcher is closed when the
    application shuts down."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        service.close()

    # strict_content_type=False: a JSON body sent without a Content-Type is read as JSON.
    app = FastAPI(title="translator", lifespan=lifespan, strict_content_type=False,
                  default_response_class=SafeJSONResponse,
                  description=f"Machine translation {service.src_lang}->{service.tgt_lang} "
                  "with a model trained by translator. /translate follows LibreTranslate's "
                  "API.")
    app.add_middleware(_Guard, max_body_bytes=max_body_bytes, api_key=api_key or None)
    _add_error_handlers(app)
    _add_routes(app, service, api_key)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Every failure answers `{"error": one line}` with its status."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(400, _validation_message(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), exc.headers)

    @app.exception_handler(RequestError)
    async def _refused(_: Request, exc: RequestError) -> JSONResponse:
        return _error(exc.status, str(exc))

    @app.exception_handler(Exception)
    async def _crash(_: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error")
        return _error(500, f"internal error: {type(exc).__name__}")


def _add_routes(app: FastAPI, service: TranslationService, api_key: str | None) -> None:
    """The API's endpoints and the page."""

    @app.post("/translate", response_model=TranslateResponse, response_model_exclude_none=True,
              responses=ERRORS)
    async def translate(body: TranslateRequest) -> dict[str, Any]:
        """Translate a text or a list of texts (LibreTranslate's shapes)."""
        service.check_pair(body.source, body.target)
        n_best = max(body.n_best or 1, (body.alternatives or 0) + 1)
        texts = [body.q] if isinstance(body.q, str) else body.q
        variants = await service.translate(texts, body.beam, n_best)
        best = [v[0] for v in variants]
        out: dict[str, Any] = {"translatedText": best[0] if isinstance(body.q, str) else best}
        if n_best > 1:
            others = [v[1:] for v in variants]
            out["alternatives"] = others[0] if isinstance(body.q, str) else others
        if body.source == "auto":
            out["detectedLanguage"] = {"confidence": 100.0, "language": service.src_lang}
        return out

    @app.post("/attention", response_model=AttentionResponse, responses=ERRORS)
    async def attention(body: AttentionRequest) -> dict[str, Any]:
        """Translate one text and return, per sentence, its tokens and the cross-attention
        of the last decoder layer averaged over heads (what the page draws)."""
        service.check_pair(body.source, body.target)
        return await service.attention(body.q, body.beam)

    @app.get("/languages")
    async def languages() -> list[dict[str, Any]]:
        """The served language pair, in LibreTranslate's shape."""
        return service.languages()

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Whether the model is loaded, the engine and device, and the queue's state."""
        return {**service.health(), "api_key_required": bool(api_key)}

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


class SafeJSONResponse(JSONResponse):
    """JSON as UTF-8, or all-ASCII with \\u escapes when a string holds a lone surrogate
    (which a client can send as "\\ud800" and which an error message or the attention
    answer may echo): UTF-8 cannot encode it, and that must not become a 500."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return json.dumps(content, ensure_ascii=True, allow_nan=False,
                              separators=(",", ":")).encode("ascii")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return SafeJSONResponse({"error": message}, status_code=status, headers=headers)


def _validation_message(errors: list[dict[str, Any]]) -> str:
    """One readable line from pydantic's error list."""
    if not errors:
        return "invalid request"
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ())]
    if first.get("type") == "json_invalid":
        return f"invalid JSON: {first.get('ctx', {}).get('error', first.get('msg'))}"
    if len(loc) <= 1:  # the body as a whole: missing, or not an object
        return ("the body must be a JSON object such as {\"q\": \"Hello.\"} "
                "(sent as Content-Type: application/json)")
    field = loc[1]
    if first.get("type") == "missing":
        return f"missing field '{field}'"
    if field == "q" and len(loc) > 2:  # a union: pydantic reports each alternative
        return "q must be a string or a list of strings"
    if field == "format":
        return "format must be 'text' (the only format supported)"
    return f"{field}: {first.get('msg', 'invalid')}"


class _Guard:
    """Pure ASGI middleware in front of the app: refuses a body over `max_body_bytes` (413)
    before the app parses it, then checks the API key on PROTECTED paths (401 missing, 403
    wrong), so that a caller without the key learns nothing else about the request."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], *,
                 max_body_bytes: int, api_key: str | None) -> None:
        self.app, self.max_body, self.api_key = app, max_body_bytes, api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        if not await self._length_ok(headers.get("content-length"), receive, send):
            return
        body = await self._read_body(receive, send)
        if body is None:
            return
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "application/x-www-form-urlencoded" and scope.get("path") in PROTECTED:
            # LibreTranslate also takes HTML-form bodies (curl -d q=...&target=de): the
            # app sees them as the equivalent JSON.
            body = _form_to_json(body)
            scope = {**scope, "headers": [
                (k, v) for k, v in scope.get("headers", [])
                if k.lower() not in (b"content-type", b"content-length")] + [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode())]}
        if self.api_key and scope.get("path") in PROTECTED:
            refusal = self._check_key(headers, body)
            if refusal is not None:
                await _send_error(send, *refusal)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect

        await self.app(scope, replay, send)

    async def _length_ok(self, length: str | None, receive: Receive, send: Send) -> bool:
        """False, after answering 400 or 413, for a bad or too large Content-Length."""
        if length is None:
            return True
        if not length.isdigit():
            await _send_error(send, 400, "invalid Content-Length header")
            return False
        if int(length) > self.max_body:
            await self._refuse_too_big(receive, send, 0)
            return False
        return True

    async def _read_body(self, receive: Receive, send: Send) -> bytes | None:
        """The whole body, read here (bounded) to be replayed to the app: a chunked upload
        without a Content-Length is cut off as soon as it passes the limit. None when the
        client left or the body was refused (413)."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                if message.get("more_body", False):
                    await self._refuse_too_big(receive, send, size)
                else:
                    await _send_error(send, 413, self._too_big())
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _too_big(self) -> str:
        return f"the request body is over the limit of {self.max_body:,} bytes"

    async def _refuse_too_big(self, receive: Receive, send: Send, read: int) -> None:
        """Answer 413 after reading (and dropping) the rest of a moderately large body: a
        client still sending when the server answers and closes would see a reset
        connection instead of the answer. A huge body is cut off at 8x the limit."""
        while read <= 8 * self.max_body:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            read += len(message.get("body", b""))
            if not message.get("more_body", False):
                break
        await _send_error(send, 413, self._too_big())

    def _check_key(self, headers: dict[str, str], body: bytes) -> tuple[int, str] | None:
        """None when the request carries the right key, else (status, message)."""
        given = headers.get("x-api-key")
        auth = headers.get("authorization", "")
        if given is None and auth[:7].lower() == "bearer ":
            given = auth[7:].strip()
        if given is None:
            try:
                data = json.loads(body)
            except (ValueError, RecursionError):  # not JSON, or nested too deep to parse
                data = None
            if isinstance(data, dict) and isinstance(data.get("api_key"), str):
                given = data["api_key"]
        if not given:
            return 401, ("an API key is required: send api_key in the JSON body, or an "
                         "Authorization: Bearer or X-API-Key header")
        assert self.api_key is not None
        # Constant-time comparison of bytes: timing tells nothing about how much matched.
        if not hmac.compare_digest(given.encode("utf-8", "surrogatepass"),
                                   self.api_key.encode("utf-8", "surrogatepass")):
            return 403, "invalid API key"
        return None


_INT_FIELDS = frozenset({"beam", "n_best", "alternatives"})
_SMALL_INT = re.compile(r"-?[0-9]{1,9}")


def _form_to_json(body: bytes) -> bytes:
    """An urlencoded form as the JSON body it stands for: a repeated `q` becomes a list,
    the integer fields integers (when they look like one)."""
    fields = urllib.parse.parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    data: dict[str, Any] = {}
    for name, values in fields.items():
        if name == "q":
            data[name] = values[0] if len(values) == 1 else values
        elif name in _INT_FIELDS and _SMALL_INT.fullmatch(values[-1]):
            data[name] = int(values[-1])
        else:
            data[name] = values[-1]
    return json.dumps(data).encode()


async def _send_error(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
