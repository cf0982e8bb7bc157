"""Training parts that carry to other corpora and machines: a seeded random validation
subset (not the first N lines of a corpus that may be sorted by length), the length ratio
beside BLEU, and collectives on the backend's device."""
from __future__ import annotations

from pathlib import Path

import pytest

from translator.config import DataConfig, config_from_dict
from translator.data.corpus import load_splits
from translator.train.loop import Trainer

pytestmark = pytest.mark.usefixtures("single_thread")


def _sorted_corpus(folder: Path) -> None:
    """The built-in corpus with its validation file sorted by length, as phrasebook and
    Anki-style exports are."""
    splits = load_splits(DataConfig(builtin_size=600))
    folder.mkdir()
    (folder / "train.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in splits["train"]),
                                      encoding="utf-8")
    valid = sorted(splits["train"][:200], key=lambda p: len(p[0]))
    (folder / "valid.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in valid), encoding="utf-8")


def _trainer(tmp_path: Path, name: str) -> Trainer:
    cfg = config_from_dict({
        "data": {"source": "tsv", "dir": str(tmp_path / "data"), "train": "train.tsv",
                 "valid": "valid.tsv", "max_len": 40},
        "model": {"d_model": 16, "layers": 1, "heads": 2, "d_ff": 32},
        "training": {"max_steps": 1, "valid_max_sentences": 20, "examples": 0, "threads": 1},
        "output": {"dir": str(tmp_path / name)},
    })
    return Trainer(cfg, quiet=True)


def test_validation_subset_is_a_seeded_sample_not_the_shortest_lines(tmp_path: Path) -> None:
    _sorted_corpus(tmp_path / "data")
    first, second = _trainer(tmp_path, "a"), _trainer(tmp_path, "b")
    lines = (tmp_path / "data" / "valid.tsv").read_text(encoding="utf-8").splitlines()
    shortest = [tuple(line.split("\t")) for line in lines[:20]]
    assert len(first.valid_pairs) == 20
    assert first.valid_pairs == second.valid_pairs  # the same sentences every time
    assert first.valid_pairs != shortest
    longest_kept = max(len(s) for s, _ in first.valid_pairs)
    assert longest_kept > max(len(s) for s, _ in shortest)


def test_validation_reports_the_length_ratio(tmp_path: Path) -> None:
    _sorted_corpus(tmp_path / "data")
    result = _trainer(tmp_path, "c").validate()
    assert 0.0 <= result["length_ratio"] < 10.0
    assert {"bleu", "chrf", "loss", "length_ratio"} <= set(result)


def test_collectives_use_the_backends_device() -> None:
    """nccl rejects CPU tensors: every collective's tensor is made on the backend's device
    (the stop check all-reduced a CPU tensor, which fails at the first stop on GPUs)."""
    import torch

    from translator.train.distributed import Dist

    assert Dist(0, 2, 1, "nccl").collective_device == torch.device("cuda", 1)
    assert Dist(0, 2, 0, "gloo").collective_device == torch.device("cpu")
    assert Dist(0, 2, 0, "gloo").tensor([1.0]).device.type == "cpu"
    assert Dist().any(True) and not Dist().any(False)  # world 1: no collective at all
