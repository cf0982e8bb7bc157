"""`translator serve`: an HTTP translation server over one or several trained models.

- `batcher`: the queue that batches sentences of concurrent requests (no HTTP, no model);
- `service`: routing between models (and pivots), limits, sentence splitting, rejoining,
  detection, attention maps (no HTTP); `html`, `detect`, `files`: its helpers;
- `guard`: what is judged before a body is parsed (API key, size, CORS);
- `app`: the FastAPI application (LibreTranslate-compatible API, the page in `static/`).

FastAPI and uvicorn are an optional extra (`pip install 'translator[serve]'`); this module
imports neither, so that the CLI can say how to install them.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from translator.decode.loading import EngineOptions
from translator.errors import TranslatorError

if TYPE_CHECKING:
    from translator.decode.engine import Engine
    from translator.decode.translator import Translator
    from translator.serve.service import Limits, ServedModel

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


def find_models(models_dir: Path) -> list[Path]:
    """The model folders directly under `models_dir`: run folders (with a config.yaml) and
    CTranslate2 exports (with a translator.json), in name order."""
    from translator.decode.ct2 import META
    from translator.run import RunLayout

    if not models_dir.is_dir():
        raise TranslatorError(f"models folder not found: {models_dir}")
    found = sorted(p for p in models_dir.iterdir() if p.is_dir() and (
        RunLayout(p).config.is_file() or (p / META).is_file()))
    if not found:
        raise TranslatorError(f"no run folder (config.yaml) or CTranslate2 export "
                              f"(translator.json) under {models_dir}")
    return found


def load_models(folders: Sequence[Path], options: EngineOptions,
                checkpoint: Path | None = None, overrides: Sequence[str] = (),
                ) -> list[ServedModel]:
    """Load every folder (a run or an export) as a ServedModel, at start-up: a folder that
    does not load is an error now, not for the first user of its pair. A native model also
    says how a decoding process loads it (`translator.serve.process`)."""
    from translator.decode.ct2 import META, CT2Translator
    from translator.decode.translator import Translator
    from translator.run import RunLayout
    from translator.serve.service import ServedModel

    if checkpoint is not None and len(folders) > 1:
        raise TranslatorError("--checkpoint names one run's checkpoint; it does not go with "
                              "several models")
    if options.engine not in ("native", "ctranslate2"):
        raise TranslatorError(f"unknown engine '{options.engine}' (use native or ctranslate2)")
    served = []
    for folder in folders:
        if (folder / META).is_file() and not RunLayout(folder).config.is_file():
            tr: Engine = CT2Translator.from_dir(
                folder, options.device, threads=options.intra_threads,
                inter_threads=options.inter_threads)
            served.append(ServedModel(tr, str(folder)))
            continue
        if not RunLayout(folder).config.is_file():
            raise TranslatorError(f"run folder not found: {folder}")
        if options.engine == "native":
            tr = Translator.from_run(folder, checkpoint, options.device, options.dtype,
                                     overrides)
            child = functools.partial(Translator.from_run, folder, checkpoint,
                                      options.device, options.dtype, tuple(overrides))
            served.append(ServedModel(tr, str(folder), decode_process=child))
            continue
        if options.dtype is not None:
            raise TranslatorError("--dtype is for the native engine; the ctranslate2 engine "
                                  "takes --quantization")
        tr = CT2Translator.from_run(folder, options.quantization, checkpoint, options.device,
                                    overrides, threads=options.intra_threads,
                                    inter_threads=options.inter_threads)
        served.append(ServedModel(tr, str(folder), _native_loader(folder, checkpoint)))
    return served


def _native_loader(run_dir: Path, checkpoint: Path | None) -> Callable[[], Translator]:
    """/attention with another engine loads the run's native model on first use."""
    def load() -> Translator:
        from translator.decode.translator import Translator

        return Translator.from_run(run_dir, checkpoint, device="cpu")
    return load


@dataclass
class ServerOptions:
    """The HTTP side: address, batching, limits, key, CORS, connection bounds."""

    host: str = "127.0.0.1"
    port: int = 5000
    max_batch: int = 64
    wait_ms: float = 5.0
    limits: Limits | None = None
    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    max_connections: int = 512
    read_timeout: float = 10.0
    keep_alive: float = 5.0
    root_path: str = ""
    access_log: bool = True
    decode_processes: int | None = None
    """Processes that decode native models' greedy requests (None: one per CPU core, at most
    one per model; 0: none, they decode in the server's process)."""


def run_server(models: Engine | Sequence[ServedModel], options: ServerOptions | None = None,
               *, run_dir: str | Path | None = None, workers: int = 1) -> None:
    """Serve loaded models over HTTP until interrupted (Ctrl-C or SIGTERM). One Translator
    may be given alone (with its `run_dir`, from which /attention loads a native model when
    the engine is another)."""
    check_installed()
    import uvicorn

    from translator.serve.app import create_app
    from translator.serve.service import ServedModel, TranslationService

    opts = options or ServerOptions()
    if not isinstance(models, Sequence):
        from translator.decode.translator import Translator

        loader = None
        if not isinstance(models, Translator) and run_dir is not None:
            loader = _native_loader(Path(run_dir), None)
        models = [ServedModel(models, str(run_dir) if run_dir else None, loader)]
    service = TranslationService(list(models), max_batch=opts.max_batch, wait_ms=opts.wait_ms,
                                 limits=opts.limits, workers=workers,
                                 hide_paths=bool(opts.api_key),
                                 decode_processes=_decode_processes(opts))
    app = create_app(service, api_key=opts.api_key, cors_origins=opts.cors_origins,
                     read_timeout=opts.read_timeout, root_path=opts.root_path)
    shown = f"[{opts.host}]" if ":" in opts.host else opts.host
    for m in service.models.values():
        log.info("model %s: %s (%s engine, %s)", m.name, m.run_dir or m.translator.checkpoint,
                 m.translator.engine_name, m.translator.device)
    for source, targets in sorted(service.via.items()):
        for target, pivot in sorted(targets.items()):
            log.info("pair %s->%s goes through %s", source, target, pivot)
    log.info("serving on http://%s:%d%s%s; cross-origin calls from %s", shown, opts.port,
             opts.root_path, "; API key required" if opts.api_key else "",
             ", ".join(opts.cors_origins) or "no other origin (--cors-origin)")
    try:
        uvicorn.run(app, host=opts.host, port=opts.port, access_log=opts.access_log,
                    log_level="info", timeout_graceful_shutdown=5,
                    limit_concurrency=opts.max_connections,
                    timeout_keep_alive=int(max(1, opts.keep_alive)))
    finally:
        service.close()


def _decode_processes(opts: ServerOptions) -> int:
    """`--decode-processes`, or one per CPU core this process may run on."""
    if opts.decode_processes is not None:
        return opts.decode_processes
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def serve_runs(runs: Sequence[Path], models_dir: Path | None, config: Path | None,
               overrides: Sequence[str], checkpoint: Path | None, engine: EngineOptions,
               options: ServerOptions, announce: Callable[[Path], None] | None = None) -> None:
    """`translator serve`: load the run folders `runs` and every model under `models_dir`
    (none given: the run of `config`, else the newest under runs/, passed to `announce`) and
    serve them until interrupted."""
    from translator.run import find_run

    check_installed()
    check_address(options.host, options.port)
    if engine.intra_threads > 0:
        import torch

        # Native models too decode each batch on `intra_threads` threads. One by default,
        # measured on a 2-core VM (two Multi30k models, greedy, wrk): 37.7 / 183.6 requests
        # per second at 1 / 32 connections with 1 torch thread, 30.0 / 122.8 with 2, whose
        # OpenMP threads stall whenever the event loop or the other model's worker holds a
        # core (as CTranslate2's intra_threads do: translator.decode.ct2.INTRA_THREADS).
        torch.set_num_threads(engine.intra_threads)
    folders = [*runs, *(find_models(models_dir) if models_dir is not None else [])]
    overrides = list(overrides)
    if not folders:
        found, overrides = find_run(None, config, overrides, checkpoint, announce)
        folders = [found]
    served = load_models(folders, engine, checkpoint, overrides)
    # A CTranslate2 model runs inter_threads batches at once: as many batcher workers.
    workers = max((m.translator.inter_threads for m in served), default=1)
    run_server(served, options, workers=workers)
