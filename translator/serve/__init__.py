"""`translator serve`: an HTTP translation server over one trained run.

- `batcher`: the queue that batches sentences of concurrent requests (no HTTP, no model);
- `service`: limits, sentence splitting, rejoining, attention maps (no HTTP);
- `app`: the FastAPI application (LibreTranslate-compatible API, the page in `static/`).

FastAPI and uvicorn are an optional extra (`pip install 'translator[serve]'`); this module
imports neither, so that the CLI can say how to install them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from translator.errors import TranslatorError

if TYPE_CHECKING:
    from translator.decode.translator import Translator
    from translator.serve.service import Limits

log = logging.getLogger("translator")
INSTALL_HINT = ("the server needs FastAPI and uvicorn: pip install 'translator[serve]' "
                "(or fastapi uvicorn)")


def check_installed() -> None:
    """Raise TranslatorError(INSTALL_HINT) unless fastapi and uvicorn can be imported."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise TranslatorError(INSTALL_HINT) from exc


def check_address(host: str, port: int) -> None:
    """Raise TranslatorError unless `host:port` can be listened on now, so that a busy port
    is one line before the model is loaded, not a uvicorn error after."""
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise TranslatorError(f"cannot listen on {host}: {exc}") from exc
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            sock.bind(address)
        except OSError as exc:
            raise TranslatorError(f"cannot listen on {host}:{port}: "
                                  f"{exc.strerror or exc}") from exc


def run_server(translator: Translator, *, run_dir: str | Path | None = None,
               checkpoint: str | Path | None = None, host: str = "127.0.0.1",
               port: int = 5000, max_batch: int = 64, wait_ms: float = 5.0,
               limits: Limits | None = None, api_key: str | None = None,
               access_log: bool = True) -> None:
    """Serve a loaded translator over HTTP until interrupted (Ctrl-C or SIGTERM).

    With an engine other than native, /attention loads the run's native model (of
    `checkpoint`, default best.pt) on first use; `run_dir` is needed for that."""
    check_installed()
    import uvicorn

    from translator.decode.translator import Translator
    from translator.serve.app import create_app
    from translator.serve.service import TranslationService

    loader = None
    if getattr(translator, "model", None) is None and run_dir is not None:
        def loader() -> Translator:
            return Translator.from_run(run_dir, checkpoint, device="cpu")
    service = TranslationService(translator, max_batch=max_batch, wait_ms=wait_ms,
                                 limits=limits, attention_translator=loader,
                                 run_dir=str(run_dir) if run_dir is not None else None)
    app = create_app(service, api_key=api_key)
    shown = f"[{host}]" if ":" in host else host
    log.info("serving %s (%s engine, %s, %s->%s) on http://%s:%d%s",
             run_dir or translator.checkpoint, translator.engine_name, translator.device,
             service.src_lang, service.tgt_lang, shown, port,
             "; API key required" if api_key else "")
    try:
        uvicorn.run(app, host=host, port=port, access_log=access_log, log_level="info",
                    timeout_graceful_shutdown=5)
    finally:
        service.close()
