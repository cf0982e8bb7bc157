"""What a run folder holds, for `translator info`: languages, model, tokenizers, how far it
trained, its best validation and its files. Reads only the run folder (no corpus, no model
built)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from translator.checkpoint import CheckpointError, load_checkpoint
from translator.config import Config
from translator.data.tokenizer import TextTokenizer
from translator.run import RunLayout


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"  # unreachable; keeps type checkers calm


def _same_file(path: Path, layout: RunLayout) -> str:
    """latest.pt and best.pt are hard links to numbered checkpoints: the name they share."""
    ino = path.stat().st_ino
    for other in layout.numbered_checkpoints():
        if other.stat().st_ino == ino:
            return f"{path.name} = {other.name}"
    return path.name


def _checkpoint_summary(path: Path, layout: RunLayout) -> dict[str, Any] | None:
    """Step, epoch, parameters and validation history of a checkpoint; None if absent."""
    if not path.is_file():
        return None
    ckpt = load_checkpoint(path, map_location="cpu")
    weights = ckpt.get("model", {})
    # Tied embeddings are one tensor under two names; count it once.
    seen: set[int] = set()
    params = 0
    for tensor in weights.values():
        if tensor.untyped_storage().data_ptr() not in seen:
            seen.add(tensor.untyped_storage().data_ptr())
            params += tensor.numel()
    history = list(ckpt.get("history", []))
    return {"file": _same_file(path, layout), "step": ckpt.get("step"),
            "epoch": ckpt.get("epoch"), "parameters": params,
            "best_score": ckpt.get("best_score"), "best_metric": ckpt.get("best_metric"),
            "last_validation": history[-1] if history else None,
            "validations": len(history)}


def run_info(run_dir: str | Path) -> dict[str, Any]:
    """A JSON-ready description of a run folder (raises TranslatorError if it is not one)."""
    layout = RunLayout(Path(run_dir))
    cfg = layout.load_config()
    tokenizers = _tokenizers(layout, cfg)
    latest, best = _checkpoints(layout)
    m = cfg.model
    return {
        "run": str(layout.root),
        "name": cfg.name,
        "languages": {"src": cfg.data.src_lang, "tgt": cfg.data.tgt_lang},
        "data": {"source": cfg.data.source, "name": cfg.data.name, "dir": cfg.data.dir,
                 "present": cfg.data.dir is None or Path(cfg.data.dir).is_dir()},
        "model": {"d_model": m.d_model, "encoder_layers": m.layers,
                  "decoder_layers": m.decoder_layers or m.layers, "heads": m.heads,
                  "d_ff": m.d_ff, "norm": m.norm, "tie_embeddings": m.tie_embeddings,
                  "parameters": (latest or best or {}).get("parameters")},
        "tokenizers": tokenizers,
        **_training(latest, best),
        "files": [{"path": str(path.relative_to(layout.root)), "bytes": path.stat().st_size}
                  for path in sorted(p for p in layout.root.rglob("*") if p.is_file())],
    }


def _tokenizers(layout: RunLayout, cfg: Config) -> dict[str, dict[str, Any]]:
    """The run's tokenizer files by side (src, tgt), those that exist."""
    tokenizers = {}
    for side, lang in (("src", cfg.data.src_lang), ("tgt", cfg.data.tgt_lang)):
        path = layout.tokenizer(lang)
        if path.is_file():
            tok = TextTokenizer.load(path)
            tokenizers[side] = {"lang": lang, "file": path.name, "kind": tok.kind,
                                "vocab_size": tok.vocab_size}
    return tokenizers


def _checkpoints(layout: RunLayout) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The summaries of latest.pt and best.pt (None for one that does not exist)."""
    try:
        latest = _checkpoint_summary(layout.latest, layout)
        # best.pt is usually the same file as latest.pt (hard links): read it once.
        same = (latest is not None and layout.best.is_file()
                and layout.best.stat().st_ino == layout.latest.stat().st_ino)
        best = ({**latest, "file": _same_file(layout.best, layout)} if same
                else _checkpoint_summary(layout.best, layout))
    except CheckpointError as exc:
        raise CheckpointError(f"{layout.root}: {exc}") from exc
    return latest, best


def _training(latest: dict[str, Any] | None,
              best: dict[str, Any] | None) -> dict[str, dict[str, Any] | None]:
    """The report's trained, best and latest entries (None where there is no checkpoint)."""
    return {
        "trained": {"steps": latest["step"], "epochs_done": latest["epoch"],
                    "validations": latest["validations"]} if latest else None,
        "best": {"checkpoint": best["file"], "step": best["step"],
                 "metric": best["best_metric"], "score": best["best_score"],
                 "validation": best["last_validation"]} if best else None,
        "latest": {"checkpoint": latest["file"], "validation": latest["last_validation"]}
        if latest else None,
    }


def format_run_info(info: dict[str, Any]) -> str:
    """The report `translator info` prints: a few aligned lines, then the files."""
    m, lang = info["model"], info["languages"]
    params = f"{m['parameters'] / 1e6:.2f}M parameters" if m["parameters"] else "not trained"
    lines = [
        f"run          {info['run']}",
        f"languages    {lang['src']} -> {lang['tgt']}",
        f"model        d_model {m['d_model']}, {m['encoder_layers']}+{m['decoder_layers']} "
        f"layers, {m['heads']} heads, d_ff {m['d_ff']}, {m['norm']}-norm; {params}",
    ]
    for side, tok in info["tokenizers"].items():
        lines.append(f"tokenizer    {side} {tok['lang']}: {tok['kind']}, {tok['vocab_size']} "
                     f"tokens ({tok['file']})")
    data = info["data"]
    where = data["dir"] or data["name"] or "built-in corpus"
    lines.append(f"data         {data['source']}: {where}"
                 + ("" if data["present"] else " (not found here; translate still works)"))
    trained = info["trained"]
    lines.append("trained      " + (f"{trained['steps']} steps, {trained['epochs_done']} "
                                    f"epochs done, {trained['validations']} validations"
                                    if trained else "no checkpoint yet"))
    best = info["best"]
    if best:
        v = best["validation"] or {}
        scores = ", ".join(f"{k} {v[k]:.2f}" for k in ("bleu", "chrf", "loss") if k in v)
        lines.append(f"best         {best['checkpoint']} (step {best['step']}; "
                     f"{best['metric']} {best['score']:.2f})" if best["score"] is not None
                     else f"best         {best['checkpoint']} (step {best['step']})")
        if scores:
            lines.append(f"             last validation of best: {scores}")
    lines.append(f"files        {len(info['files'])}:")
    lines += [f"  {f['path']:<44} {_size(f['bytes']):>9}" for f in info["files"]]
    return "\n".join(lines)
