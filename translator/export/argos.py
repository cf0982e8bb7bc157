"""Export a run as an Argos Translate package (`.argosmodel`), which LibreTranslate installs.

The format, as `argostranslate.package` reads it: a zip archive of one folder holding
`metadata.json` (package_version, argos_version, from/to code and name), `model/` (a
CTranslate2 model), `sentencepiece.model` (Argos tokenizes the source and detokenizes the
output with it) and an optional `README.md`. Argos passes the pieces to CTranslate2 as they
are, without BOS/EOS, so the CTranslate2 model is configured to add our [SOS] and [EOS]
around every source itself (`add_source_bos` / `add_source_eos`), as our training did.

Only a shared sentencepiece tokenizer fits: Argos has one SentencePiece model for both
sides, and our other kinds split punctuation off words, which a SentencePiece model cannot
reproduce.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from translator.decode.translator import Translator
from translator.errors import TranslatorError
from translator.files import atomic_write_with, protected_reason
from translator.languages import language_name

PACKAGE_VERSION = "1.0"
ARGOS_VERSION = "1.9"


def check_exportable(translator: Translator) -> None:
    """A one-line TranslatorError naming the config change when Argos cannot take the run."""
    kinds = {translator.src_tok.kind, translator.tgt_tok.kind}
    if kinds != {"sentencepiece"}:
        raise TranslatorError(
            f"Argos Translate tokenizes with SentencePiece only, and this run's tokenizer is "
            f"{'/'.join(sorted(kinds))}: train with tokenizer.kind: sentencepiece")
    if (translator.src_tok.spm_model != translator.tgt_tok.spm_model):
        raise TranslatorError("an Argos package holds one SentencePiece model for both "
                              "languages: train with tokenizer.shared: true")


def check_package_target(out: Path, force: bool, run_dirs: tuple[Path, ...] = ()) -> None:
    """Refuse an .argosmodel target that is a folder, lies in a protected place, or exists
    (without --force: an existing package is replaced only when asked)."""
    if out.is_dir():
        raise TranslatorError(f"{out} is a folder; an Argos package is one .argosmodel file")
    reason = protected_reason(out, run_dirs)
    if reason:
        raise TranslatorError(f"refusing to export to {out}: {reason}")
    if out.exists() and not force:
        raise TranslatorError(f"{out} exists (add --force to replace it)")


def export_argos(run_dir: str | Path, out_file: str | Path, quantization: str = "int8",
                 checkpoint: str | Path | None = None, force: bool = False) -> Path:
    """Write a run (default checkpoint: best.pt, else latest.pt) as an .argosmodel file."""
    from translator.decode.ct2 import _ct2

    out = Path(out_file)
    if out.suffix != ".argosmodel":
        raise TranslatorError(f"an Argos package is a .argosmodel file, not {out.name}")
    check_package_target(out, force, (Path(run_dir),))
    _ct2()
    translator = Translator.from_run(run_dir, checkpoint, device="cpu", dtype="fp32")
    return save_argos(translator, out, quantization, force, (Path(run_dir),))


def package_name(translator: Translator) -> str:
    """The package's folder name inside the archive, e.g. translate-en_de-1_0."""
    cfg = translator.cfg.data
    return f"translate-{cfg.src_lang}_{cfg.tgt_lang}-{PACKAGE_VERSION.replace('.', '_')}"


def save_argos(translator: Translator, out_file: str | Path, quantization: str = "int8",
               force: bool = False, run_dirs: tuple[Path, ...] = ()) -> Path:
    """Write a loaded (fp32) run as an .argosmodel package."""
    import tempfile

    from translator.decode.ct2 import QUANTIZATIONS, build_spec

    if quantization not in QUANTIZATIONS:
        raise TranslatorError(f"unknown quantization '{quantization}' "
                              f"(choose from {', '.join(QUANTIZATIONS)})")
    out = Path(out_file)
    check_package_target(out, force, run_dirs)
    check_exportable(translator)
    cfg = translator.cfg
    src, tgt = cfg.data.src_lang, cfg.data.tgt_lang
    spec = build_spec(translator)
    spec.config.add_source_bos = True
    spec.config.add_source_eos = True
    spec.validate()
    spec.optimize(quantization=quantization)
    name = package_name(translator)
    metadata = {
        "package_version": PACKAGE_VERSION, "argos_version": ARGOS_VERSION,
        "from_code": src, "from_name": language_name(src),
        "to_code": tgt, "to_name": language_name(tgt),
        "type": "translate", "links": [],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as work:
        model_dir = Path(work) / "model"
        model_dir.mkdir()
        spec.save(str(model_dir))

        def write_zip(tmp: str) -> None:
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
                zf.writestr(f"{name}/metadata.json", json.dumps(metadata, indent=2) + "\n")
                zf.writestr(f"{name}/sentencepiece.model", translator.src_tok.spm_model or b"")
                zf.writestr(f"{name}/README.md", _readme(translator, quantization))
                for path in sorted(model_dir.rglob("*")):
                    if path.is_file():
                        zf.write(path, f"{name}/model/{path.relative_to(model_dir).as_posix()}")

        atomic_write_with(out, write_zip)
    return out


def _readme(translator: Translator, quantization: str) -> str:
    cfg = translator.cfg
    src, tgt = cfg.data.src_lang, cfg.data.tgt_lang
    ckpt = Path(translator.checkpoint).name if translator.checkpoint else "?"
    return f"""# {language_name(src)} → {language_name(tgt)}

A Transformer trained with translator ({cfg.data.name or cfg.data.dir or cfg.data.source}),
exported with `translator export --to argos` from checkpoint {ckpt}: a CTranslate2 model
({quantization}) that adds [SOS]/[EOS] around each source itself, and the run's
SentencePiece model ({translator.src_tok.vocab_size} pieces, shared by both languages).

Install: `argospm install` does not take local files; use
`python -c "import argostranslate.package as p; p.install_from_path('FILE.argosmodel')"`,
then restart LibreTranslate (`--load-only {src},{tgt}`).
"""
