"""Exports of a trained run to where translation models live.

- CTranslate2 (`translator.decode.ct2.export_ctranslate2`): our own fast engine's folder.
- Hugging Face `transformers` (`huggingface.export_huggingface`): a Pegasus (pre-norm) or
  Marian (post-norm) folder that `AutoModelForSeq2SeqLM`, `AutoTokenizer` and
  `pipeline("translation")` load with no custom code.
- Argos Translate / LibreTranslate (`argos.export_argos`): an `.argosmodel` package.

`export_run` picks one by name (the CLI's `export --to`).
"""

from __future__ import annotations

from pathlib import Path

from translator.errors import TranslatorError

TARGETS = ("ctranslate2", "huggingface", "argos")


def export_run(to: str, run_dir: str | Path, out: str | Path, quantization: str = "int8",
               checkpoint: str | Path | None = None, force: bool = False) -> Path:
    """Export a run (default checkpoint: best.pt, else latest.pt) to format `to` (TARGETS)
    at `out`; returns the path written."""
    if to == "ctranslate2":
        from translator.decode.ct2 import export_ctranslate2

        return export_ctranslate2(run_dir, out, quantization, checkpoint, force)
    if to == "huggingface":
        from translator.export.huggingface import export_huggingface

        return export_huggingface(run_dir, out, checkpoint, force)
    if to == "argos":
        from translator.export.argos import export_argos

        return export_argos(run_dir, out, quantization, checkpoint, force)
    raise TranslatorError(f"unknown export target '{to}' (use {', '.join(TARGETS)})")
