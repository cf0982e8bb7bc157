"""The run folder's split record (splits.json): what the corpus gave when training started
(seed, carved ratios, split sizes, content hashes, what each filter dropped, each corpus'
share), written once per training start and compared on resume, so that a resumed run goes on
over the same split.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from translator.data.corpus import Corpus, CorpusMix
from translator.data.sources import DataError
from translator.errors import first_line


def check_split_record(path: str | Path, corpus: Corpus, resume: bool, moved: bool = False,
                       mix: CorpusMix | None = None, write: bool = True) -> None:
    """Write the corpus' split record (`Corpus.record(mix)`) to `path`; when resuming, first
    check that it matches the one the run started with, so training goes on over the same
    split. Training checks it (`write=False`) as soon as the corpus is read, so that other
    data is refused before any tokenizing, and writes it once when the token-level filter
    counts and the train dataset's `mix` are known. Only the train filter counts present on
    both sides are compared (a record from before the filters existed has none). Content
    hashes are compared when both records have them; a `moved` corpus (data.dir changed)
    must have them to resume."""
    from translator.files import atomic_write

    path = Path(path)
    record = corpus.record(mix)
    if resume and path.is_file():
        _check_against(path, record, moved)
    if write:
        atomic_write(path, json.dumps(record, indent=2) + "\n")


def _check_against(path: Path, record: dict[str, Any], moved: bool) -> None:
    """Refuse, in one line, a `record` that differs from the one saved at `path`."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {first_line(exc, 300)}") from exc
    if moved and not saved.get("hashes"):
        raise DataError(f"--resume: data.dir changed, and {path} predates content "
                        "hashes, so the new files cannot be shown to hold the same data; "
                        "resume from the original data.dir")
    for key, (old, new) in _compared(saved, record).items():
        if old == new:
            continue
        if key == "content":
            differ = [k for k in new if old.get(k) != new[k]]
            raise DataError(f"--resume: the {', '.join(differ)} split's pairs differ "
                            f"from those {path} recorded (same sizes, other "
                            "content); resume with the same data or start a new run")
        raise DataError(f"--resume: the corpus now gives {key} "
                        f"{new} but {path} recorded {old}; resume "
                        "with the same data or start a new run")


def _compared(saved: dict[str, Any], record: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """What a resume compares, saved value against new: the seed, the sizes, each corpus'
    train size (the shares follow from them and the config), the train filter counts both
    records have, and the content hashes when the saved record has them."""
    saved_filters = saved.get("train_filters") or {}

    def corpus_sizes(r: dict[str, Any]) -> dict[str, Any]:
        return {k: v.get("size") for k, v in (r.get("corpora") or {}).items()}

    compared = {"split_seed": (saved.get("split_seed"), record["split_seed"]),
                "sizes": (saved.get("sizes"), record["sizes"]),
                "corpora": (corpus_sizes(saved), corpus_sizes(record)),
                "train_filters": ({k: saved_filters[k] for k in record["train_filters"]
                                   if k in saved_filters},
                                  {k: v for k, v in record["train_filters"].items()
                                   if k in saved_filters})}
    if saved.get("hashes"):
        compared["content"] = (saved["hashes"], record["hashes"])
    return compared
