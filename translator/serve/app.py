"""The HTTP face of the server (FastAPI): LibreTranslate's API as its real clients use it
(/translate, /detect, /languages, /translate_file, /download_file, /frontend/settings),
/health, /attention for the page, and the page itself at /. The OpenAPI schema is at
/openapi.json; there is no /docs, whose Swagger UI FastAPI loads from a CDN.

Every error is a JSON body `{"error": "..."}` with a 4xx status for what a client did wrong
(400 bad input, 401/403 API key or origin, 404, 405, 408 slow body, 413 body or work too
big, 429 queue full, with Retry-After) and 503 when a request waited longer than the
timeout; FastAPI's own 422 validation answer is replaced by 400. The checks that come
before the body is parsed (key, size, CORS) live in `guard`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from translator.errors import TranslatorError
from translator.languages import language_name
from translator.serve.files import FORMATS, FileStore, safe_name
from translator.serve.guard import KEY_PENDING, Guard, judge_key
from translator.serve.service import RequestError, TranslationService

log = logging.getLogger("translator")
STATIC = Path(__file__).resolve().parent / "static"
MAX_BODY_BYTES = 1 << 20
T = TypeVar("T")


class TranslateRequest(BaseModel):
    """LibreTranslate's request, plus `beam` and `n_best`. Types are strict: `"3"` is not a
    beam size. Unknown fields are ignored, as LibreTranslate does."""

    model_config = ConfigDict(strict=True, extra="ignore")

    q: str | list[str] = Field(description="A text, or a list of texts (translated each on "
                               "its own). Line breaks are kept; a line holding several "
                               "sentences is translated sentence by sentence.")
    source: str | None = Field(None, description="Source language code, or 'auto' (each "
                               "text's language is detected). Default: the only source "
                               "language, when the server has one.")
    target: str | None = Field(None, description="Target language code (default: the only "
                               "one the source reaches, when there is one).")
    format: Literal["text", "html"] = Field("text", description="'text', or 'html': the text "
                                            "nodes are translated, tags kept as they are.")
    api_key: str | None = Field(None, description="The server's API key, if it has one (or "
                                "send an Authorization: Bearer or X-API-Key header).")
    alternatives: int | None = Field(None, ge=0, description="LibreTranslate: this many "
                                     "further translations of each text, in `alternatives`.")
    beam: int | None = Field(None, ge=1, description="Beam size; 1: greedy (default: the "
                             "model's decoding.beam_size).")
    n_best: int | None = Field(None, ge=1, description="The N best translations: "
                               "translatedText is the best, `alternatives` the N-1 others.")


class Detected(BaseModel):
    confidence: float
    language: str


class TranslateResponse(BaseModel):
    translatedText: str | list[str]
    alternatives: list[str] | list[list[str]] | None = None
    detectedLanguage: Detected | list[Detected] | None = Field(
        None, description="With source 'auto': an object for a text, a list for a list.")
    via: str | None = Field(None, description="The pivot language, when no model translates "
                            "the pair directly.")


class DetectRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    q: str | list[str]
    api_key: str | None = None


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
        (401, "An API key is required."), (403, "Wrong API key, or a foreign origin."),
        (408, "The body was too slow to arrive."),
        (413, "Body over the size limit, or sentences x beam over the work limit."),
        (429, "The queue is full: retry after Retry-After seconds."),
        (503, "Timed out waiting for the model."))}


def create_app(service: TranslationService, *, api_key: str | None = None,
               max_body_bytes: int = MAX_BODY_BYTES, cors_origins: tuple[str, ...] = (),
               read_timeout: float = 10.0, files: FileStore | None = None,
               root_path: str = "") -> FastAPI:
    """The FastAPI application serving `service`. The service's batchers (and the file
    store) are closed when the application shuts down."""
    store = files or FileStore()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        service.close()
        store.close()

    pairs = ", ".join(m.name for m in service.models.values())
    # strict_content_type=False: a JSON body sent without a Content-Type is read as JSON.
    app = FastAPI(title="translator", lifespan=lifespan, strict_content_type=False,
                  default_response_class=SafeJSONResponse, docs_url=None, redoc_url=None,
                  root_path=root_path,
                  description=f"Machine translation ({pairs}) with models trained by "
                  "translator. /translate, /detect, /languages and /translate_file follow "
                  "LibreTranslate's API.")
    guard = {"max_body_bytes": max_body_bytes, "api_key": api_key or None,
             "cors_origins": tuple(cors_origins), "read_timeout": read_timeout}
    app.add_middleware(Guard, **guard)
    _add_error_handlers(app)
    _add_routes(app, service, api_key)
    _add_file_routes(app, service, store, api_key)
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
        return _error(exc.status, str(exc), exc.headers)

    @app.exception_handler(ClientGone)
    async def _gone(_: Request, exc: ClientGone) -> JSONResponse:
        return _error(499, "the client closed the connection")  # nobody reads it

    @app.exception_handler(Exception)
    async def _crash(_: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error")
        return _error(500, f"internal error: {type(exc).__name__}")


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


async def while_connected(request: Request, work: Awaitable[T]) -> T:
    """Await `work` unless the client disconnects first: then the work is cancelled, which
    withdraws its sentences from the queue (and its later batches)."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(watch())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
    if not task.done() or task.cancelled():
        raise ClientGone
    return task.result()


def _add_routes(app: FastAPI, service: TranslationService, api_key: str | None) -> None:
    """The API's endpoints and the page."""

    @app.post("/translate", response_model=TranslateResponse, response_model_exclude_none=True,
              responses=ERRORS)
    async def translate(body: TranslateRequest, request: Request) -> dict[str, Any]:
        """Translate a text or a list of texts (LibreTranslate's shapes)."""
        n_best = max(body.n_best or 1, (body.alternatives or 0) + 1)
        texts = [body.q] if isinstance(body.q, str) else body.q
        result = await while_connected(request, service.translate(
            texts, body.source, body.target, body.beam, n_best, body.format))
        single = isinstance(body.q, str)
        best = [v[0] for v in result.variants]
        out: dict[str, Any] = {"translatedText": best[0] if single else best}
        if n_best > 1:
            others = [v[1:] for v in result.variants]
            out["alternatives"] = others[0] if single else others
        if result.detected is not None:
            out["detectedLanguage"] = result.detected[0] if single else result.detected
        if result.via:
            out["via"] = result.via
        return out

    @app.post("/detect", response_model=list[Detected] | list[list[Detected]],
              responses=ERRORS)
    async def detect(body: DetectRequest) -> list[Any]:
        """The likely languages of a text (a list of candidates, best first), among those
        this server translates from; for a list of texts, a list of such lists."""
        ranked = await service.detect([body.q] if isinstance(body.q, str) else body.q)
        return ranked[0] if isinstance(body.q, str) else ranked

    @app.post("/attention", response_model=AttentionResponse, responses=ERRORS)
    async def attention(body: AttentionRequest, request: Request) -> dict[str, Any]:
        """Translate one text and return, per sentence, its tokens and the cross-attention
        of the last decoder layer averaged over heads (what the page draws)."""
        return await while_connected(request, service.attention(
            body.q, body.source, body.target, body.beam))

    @app.get("/languages")
    async def languages() -> list[dict[str, Any]]:
        """Every source language with the targets it reaches (LibreTranslate's shape);
        `via` maps a target reached through a pivot language to that pivot."""
        return service.languages()

    _add_info_routes(app, service, api_key)


def _add_info_routes(app: FastAPI, service: TranslationService, api_key: str | None) -> None:
    """What a client reads before translating: settings and health."""

    @app.get("/frontend/settings")
    async def frontend_settings() -> dict[str, Any]:
        """LibreTranslate's settings for its page."""
        source = service.src_lang
        target = service.targets(source)[0]
        return {
            "charLimit": service.limits.max_chars, "frontendTimeout": 500,
            "apiKeys": bool(api_key), "keyRequired": bool(api_key), "suggestions": False,
            "filesTranslation": True, "supportedFilesFormat": sorted(FORMATS),
            "language": {"source": {"code": source, "name": language_name(source)},
                         "target": {"code": target, "name": language_name(target)}}}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Whether the models are loaded, their engines and devices, and the queues' state
        (no file paths when the server has an API key)."""
        return {**service.health(hide_paths=bool(api_key)),
                "api_key_required": bool(api_key)}

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


def _add_file_routes(app: FastAPI, service: TranslationService, store: FileStore,
                     api_key: str | None) -> None:
    @app.post("/translate_file", responses=ERRORS)
    async def translate_file(request: Request) -> dict[str, str]:
        """Translate an uploaded .txt or .html file (multipart: file, source, target,
        api_key); the answer's translatedFileUrl downloads the result."""
        form = await _form(request)
        if api_key and request.scope.get(KEY_PENDING):
            refusal = judge_key(api_key, form.get("api_key"))
            if refusal is not None:
                raise RequestError(refusal[1], refusal[0])
        upload = form.get("file")
        if upload is None or isinstance(upload, str) or not upload.filename:
            raise RequestError("missing file: send it as the multipart field 'file'")
        name = safe_name(upload.filename)
        fmt = FORMATS.get(Path(name).suffix.lower())
        if fmt is None:
            raise RequestError(f"unsupported file type: send one of "
                               f"{', '.join(sorted(FORMATS))}")
        try:
            text = (await upload.read()).decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError("the file is not valid UTF-8") from None
        source, target = (_field(form, "source"), _field(form, "target"))
        result = await while_connected(request, service.translate(
            [text], source, target, fmt=fmt, file=True))
        out = result.variants[0][0]
        if fmt == "text" and text.endswith("\n") and not out.endswith("\n"):
            out += "\n"  # a file's last line end (splitting into lines drops it)
        data = out.encode("utf-8")
        try:
            stored = await asyncio.to_thread(store.put, data, name)
        except TranslatorError as exc:
            raise RequestError(str(exc), 413) from None
        return {"translatedFileUrl": f"{request.base_url}download_file/{stored}"}

    @app.get("/download_file/{name}", include_in_schema=True)
    async def download_file(name: str) -> FileResponse:
        """A file translated by /translate_file, for an hour after (or until the server's
        file space is needed for newer ones)."""
        path = store.get(name)
        if path is None:
            raise RequestError("no such file (translated files are kept for a limited time)",
                               404)
        return FileResponse(path, filename=name.split(".", 1)[1])


async def _form(request: Request) -> Any:
    try:
        return await request.form(max_files=1, max_fields=16)
    except AssertionError as exc:  # python-multipart is missing
        raise RequestError(f"file uploads need python-multipart ({exc})", 501) from None
    except (ValueError, KeyError) as exc:
        raise RequestError(f"invalid multipart body: {exc}") from None
    except StarletteHTTPException as exc:
        raise RequestError(str(exc.detail), 400) from None


def _field(form: Any, name: str) -> str | None:
    value = form.get(name)
    return value if isinstance(value, str) else None


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
        return "format must be 'text' or 'html'"
    return f"{field}: {first.get('msg', 'invalid')}"
