"""Choosing and loading an engine for a trained run or an export: the native Translator or a
CT2Translator, as `--engine` / `--model` ask (`load_engine`). The run is found by
`translator.run.find_run`; which config is in force is `translator.run.inference_config`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from translator.errors import TranslatorError

ENGINES = ("native", "ctranslate2")


@dataclass
class EngineOptions:
    """How to load a model: the engine for run folders (an export is always CTranslate2),
    device, weights' types, and CTranslate2's threads (intra: per batch, 0 its default, 1 by
    default for the reason `translator.decode.ct2.INTRA_THREADS` gives; inter: batches at
    once, 0 one per core)."""

    engine: str = "native"
    quantization: str = "int8"
    device: str = "auto"
    dtype: str | None = None
    intra_threads: int = 1
    inter_threads: int = 0


def load_engine(options: EngineOptions, run: Path | None = None, config: Path | None = None,
                overrides: Sequence[str] | None = None, checkpoint: Path | None = None,
                model: Path | None = None,
                announce: Callable[[Path], None] | None = None) -> Any:
    """The native Translator or a CT2Translator: an export folder `model` (implies the
    ctranslate2 engine), else the run found from `run` / `config` / `checkpoint` (the newest
    under runs/ when none is given, passed to `announce`)."""
    from translator.run import find_run

    engine = "ctranslate2" if model is not None else options.engine
    if engine == "native":
        from translator.decode.translator import Translator

        found, kept = find_run(run, config, overrides, checkpoint, announce)
        return Translator.from_run(found, checkpoint, options.device, options.dtype, kept)
    if engine not in ENGINES:
        raise TranslatorError(f"unknown engine '{engine}' (use native or ctranslate2)")
    from translator.decode.ct2 import CT2Translator

    if options.dtype is not None:
        raise TranslatorError("--dtype is for the native engine; the ctranslate2 engine "
                              "takes --quantization")
    threads = {"threads": options.intra_threads, "inter_threads": options.inter_threads}
    if model is not None:
        if checkpoint is not None:
            raise TranslatorError("--checkpoint does not go with --model (an export holds "
                                  "one checkpoint's weights)")
        return CT2Translator.from_dir(model, options.device, **threads)
    found, kept = find_run(run, config, overrides, checkpoint, announce)
    return CT2Translator.from_run(found, options.quantization, checkpoint, options.device,
                                  kept, **threads)
