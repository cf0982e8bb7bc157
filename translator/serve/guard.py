"""The pure-ASGI layer in front of the FastAPI app, where a request is judged before its
body is parsed or any work is done:

- CORS: preflights answered, `Access-Control-Allow-*` on every answer (errors included, so a
  browser can read them) for the allowed origins; a write (POST) from another origin that is
  not allowed is refused 403, since a browser sends a form POST without asking first;
- the API key: on every path but the open ones, checked from the `Authorization: Bearer` or
  `X-API-Key` header before the body is read; a key in the body (LibreTranslate's `api_key`
  field) is checked right after the (bounded) body is read, before anything parses it;
- the body: a size cap (413) and a read timeout (408), so a slow or huge upload ties up
  nothing for long;
- form bodies (`application/x-www-form-urlencoded`, as libretranslatepy and curl send) are
  handed to the app as the equivalent JSON.

Paths are judged relative to the app's `root_path`, so a server mounted under a prefix
protects the same endpoints.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import urllib.parse
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Paths open without the key (LibreTranslate also answers /languages and the settings
# without one); a download's name is an unguessable token. Everything else needs the key.
OPEN_PATHS = frozenset({"/", "/health", "/languages", "/frontend/settings", "/openapi.json"})
OPEN_PREFIXES = ("/static/", "/download_file/")
# Where a form body stands for a JSON one.
FORM_PATHS = frozenset({"/translate", "/detect", "/attention"})
ALLOW_HEADERS = "Authorization, Content-Type"
KEY_PENDING = "translator.key_pending"  # scope flag: the key is in a multipart form


def app_path(scope: Scope) -> str:
    """The request's path inside the app (without a `root_path` prefix)."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    if root and (path == root or path.startswith(root + "/")):
        path = path[len(root):] or "/"
    return path


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


class Guard:
    """See the module's docstring. `cors_origins`: origins allowed to call from a browser
    ("*": any); the server's own origin always is."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, api_key: str | None,
                 cors_origins: tuple[str, ...] = (), read_timeout: float = 10.0) -> None:
        self.app, self.max_body, self.api_key = app, max_body_bytes, api_key
        self.any_origin = "*" in cors_origins
        self.origins = frozenset(o.rstrip("/") for o in cors_origins if o != "*")
        self.read_timeout = read_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        method, path = scope.get("method", "GET"), app_path(scope)
        origin = headers.get("origin")
        cors = self._cors(origin, headers, scope)
        if origin and cors is None and method not in ("GET", "HEAD"):
            await send_error(send, 403, f"origin {origin[:100]} may not call this server "
                             "(translator serve --cors-origin ORIGIN allows it)")
            return
        if method == "OPTIONS" and origin and "access-control-request-method" in headers:
            await self._preflight(send, cors or [])
            return
        if cors:
            send = _adding_headers(send, cors)
        await self._guarded(scope, receive, send, headers, path)

    async def _guarded(self, scope: Scope, receive: Receive, send: Send,
                       headers: dict[str, str], path: str) -> None:
        protected = bool(self.api_key) and not is_open(path)
        header_key = _header_key(headers)
        if protected and header_key is not None:  # judged before a byte of the body is read
            refusal = self._judge(header_key)
            if refusal is not None:
                await send_error(send, *refusal)
                return
        if not await self._length_ok(headers.get("content-length"), receive, send):
            return
        try:
            body = await asyncio.wait_for(self._read_body(receive, send), self.read_timeout)
        except asyncio.TimeoutError:
            await send_error(send, 408, f"the request body took longer than "
                             f"{self.read_timeout:g} s to arrive")
            return
        if body is None:
            return
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        if protected and header_key is None:
            scope, refusal = self._judge_body(scope, body, ctype)
            if refusal is not None:
                await send_error(send, *refusal)
                return
        if ctype == "application/x-www-form-urlencoded" and path in FORM_PATHS:
            scope, body = _as_json(scope, body)
        await self.app(scope, _replay(body, receive), send)

    # -- CORS -----------------------------------------------------------------------------

    def _cors(self, origin: str | None, headers: dict[str, str], scope: Scope,
              ) -> list[tuple[bytes, bytes]] | None:
        """The CORS headers for an allowed origin; None for one that is not allowed (or no
        Origin at all). The server's own origin needs none."""
        if origin is None:
            return None
        own = f"{scope.get('scheme', 'http')}://{headers.get('host', '')}"
        if origin == own:
            return []
        if not self.any_origin and origin.rstrip("/") not in self.origins:
            return None
        allow = b"*" if self.any_origin else origin.encode("latin-1")
        out = [(b"access-control-allow-origin", allow),
               (b"access-control-expose-headers", b"Retry-After")]
        if not self.any_origin:
            out.append((b"vary", b"Origin"))
        return out

    async def _preflight(self, send: Send, cors: list[tuple[bytes, bytes]]) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": [
            *cors, (b"access-control-allow-methods", b"GET, POST"),
            (b"access-control-allow-headers", ALLOW_HEADERS.encode()),
            (b"access-control-max-age", b"86400"), (b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    # -- the key --------------------------------------------------------------------------

    def _judge_body(self, scope: Scope, body: bytes, ctype: str,
                    ) -> tuple[Scope, tuple[int, str] | None]:
        """The key in the body: judged now, or (multipart) left to the endpoint, which reads
        it from the parsed form."""
        if ctype == "multipart/form-data":
            return {**scope, KEY_PENDING: True}, None
        return scope, self._judge(_body_key(body, ctype))

    def _judge(self, given: str | None) -> tuple[int, str] | None:
        assert self.api_key is not None
        return judge_key(self.api_key, given)

    # -- the body -------------------------------------------------------------------------

    async def _length_ok(self, length: str | None, receive: Receive, send: Send) -> bool:
        """False, after answering 400 or 413, for a bad or too large Content-Length."""
        if length is None:
            return True
        if not length.isdigit():
            await send_error(send, 400, "invalid Content-Length header")
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
                    await send_error(send, 413, self._too_big())
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
        await send_error(send, 413, self._too_big())


def judge_key(api_key: str, given: object) -> tuple[int, str] | None:
    """None when `given` is the key, else (status, message)."""
    if not isinstance(given, str) or not given:
        return 401, ("an API key is required: send api_key in the body, or an "
                     "Authorization: Bearer or X-API-Key header")
    # Constant-time comparison of bytes: timing tells nothing about how much matched.
    if not hmac.compare_digest(given.encode("utf-8", "surrogatepass"),
                               api_key.encode("utf-8", "surrogatepass")):
        return 403, "invalid API key"
    return None


def _header_key(headers: dict[str, str]) -> str | None:
    given = headers.get("x-api-key")
    auth = headers.get("authorization", "")
    if given is None and auth[:7].lower() == "bearer ":
        given = auth[7:].strip()
    return given


def _body_key(body: bytes, ctype: str) -> str | None:
    """LibreTranslate's `api_key` field of a JSON or form body."""
    if ctype == "application/x-www-form-urlencoded":
        values = urllib.parse.parse_qs(body.decode("utf-8", "replace")).get("api_key")
        return values[-1] if values else None
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # not JSON, or nested too deep to parse
        return None
    key = data.get("api_key") if isinstance(data, dict) else None
    return key if isinstance(key, str) else None


def _as_json(scope: Scope, body: bytes) -> tuple[Scope, bytes]:
    """A form request as the JSON request it stands for (LibreTranslate takes both)."""
    body = form_to_json(body)
    return {**scope, "headers": [
        (k, v) for k, v in scope.get("headers", [])
        if k.lower() not in (b"content-type", b"content-length")] + [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode())]}, body


def _replay(body: bytes, receive: Receive) -> Receive:
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: wait for the disconnect

    return replay


def _adding_headers(send: Send, extra: list[tuple[bytes, bytes]]) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return wrapped


_INT_FIELDS = frozenset({"beam", "n_best", "alternatives"})
_SMALL_INT = re.compile(r"-?[0-9]{1,9}")


def form_to_json(body: bytes) -> bytes:
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


async def send_error(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
