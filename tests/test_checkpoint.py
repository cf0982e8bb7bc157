"""Checkpoints: atomic writes, safe loads (no code runs), clear errors, links, pruning."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any, BinaryIO

import pytest
import torch

from translator.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    atomic_link,
    atomic_save,
    load_checkpoint,
    prune_checkpoints,
)
from translator.errors import TranslatorError
from translator.run import RunLayout


def _ckpt(seed: int = 0) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "format_version": FORMAT_VERSION,
        "model": {"w": torch.randn(3, 4, generator=gen), "b": torch.zeros(4)},
        "optimizer": {"state": {0: {"step": torch.tensor(5.0)}}, "param_groups": [{"lr": 0.1}]},
        "step": 12 + seed,
        "epoch": 2,
        "config": {"model": {"d_model": 64, "norm": "pre"}, "output": {"dir": None}},
        "rng": torch.get_rng_state(),
        "history": [1.5, 0.75],
    }


def _assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for k in ("w", "b"):
        assert torch.equal(a["model"][k], b["model"][k])
    assert torch.equal(a["rng"], b["rng"])
    for k in ("step", "epoch", "config", "history", "format_version"):
        assert a[k] == b[k]


class _Evil:
    """Unpickling this calls open(marker, 'w'): it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (self.marker, "w"))


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints" / "epoch001_step00000012.pt"  # folder created on demand
    ckpt = _ckpt()
    atomic_save(ckpt, path)
    assert path.is_file()
    _assert_same(load_checkpoint(path), ckpt)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp file left


def test_save_replaces_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "latest.pt"
    atomic_save(_ckpt(0), path)
    atomic_save(_ckpt(1), path)
    assert load_checkpoint(path)["step"] == 13


def test_load_is_weights_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.pt"
    atomic_save(_ckpt(), path)
    seen: dict[str, Any] = {}
    real_load = torch.load

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.update(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    load_checkpoint(path)
    assert seen.get("weights_only") is True


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.pt"
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        load_checkpoint(path)
    assert issubclass(CheckpointError, TranslatorError)


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.1])
def test_truncated_file_names_the_file(tmp_path: Path, keep: float) -> None:
    path = tmp_path / "best.pt"
    atomic_save(_ckpt(), path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        load_checkpoint(path)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04garbage"])
def test_garbage_file_names_the_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "junk.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        load_checkpoint(path)


def test_payload_is_live(tmp_path: Path) -> None:
    """The crafted object really creates its marker when unpickled without protection, so the
    refusal tests below test something."""
    marker = tmp_path / "marker_live"
    pickle.loads(pickle.dumps(_Evil(marker))).close()
    assert marker.exists()


def test_crafted_torch_checkpoint_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    torch.save({"format_version": FORMAT_VERSION, "model": {"w": _Evil(marker)}}, path)
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        load_checkpoint(path)
    assert not marker.exists()


def test_crafted_plain_pickle_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"format_version": 1, "model": _Evil(marker)}, protocol=2))
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        load_checkpoint(path)
    assert not marker.exists()


def test_future_format_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.pt"
    ckpt = _ckpt()
    ckpt["format_version"] = FORMAT_VERSION + 1
    atomic_save(ckpt, path)
    with pytest.raises(CheckpointError, match="format"):
        load_checkpoint(path)


@pytest.mark.parametrize("version", [None, "1"])
def test_missing_or_odd_format_version_is_refused(tmp_path: Path, version: Any) -> None:
    path = tmp_path / "odd.pt"
    ckpt = _ckpt()
    if version is None:
        del ckpt["format_version"]
    else:
        ckpt["format_version"] = version
    atomic_save(ckpt, path)
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        load_checkpoint(path)


@pytest.mark.parametrize("obj", [[1, 2, 3], {"weights": torch.zeros(2)}])
def test_not_a_translator_checkpoint(tmp_path: Path, obj: Any) -> None:
    path = tmp_path / "other.pt"
    torch.save(obj, path)
    with pytest.raises(CheckpointError, match="not a translator checkpoint"):
        load_checkpoint(path)


def test_failed_save_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "latest.pt"
    old = _ckpt(0)
    atomic_save(old, path)
    before = path.read_bytes()

    def broken_save(obj: Any, f: BinaryIO, *args: Any, **kwargs: Any) -> None:
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="No space left"):
        atomic_save(_ckpt(1), path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    _assert_same(load_checkpoint(path), old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.pt"]


def test_interrupted_save_leaves_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(obj: Any, f: BinaryIO, *args: Any, **kwargs: Any) -> None:
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_save(_ckpt(), tmp_path / "x.pt")
    assert list(tmp_path.iterdir()) == []


def test_atomic_link_points_to_the_same_content(tmp_path: Path) -> None:
    layout = RunLayout(tmp_path)
    first = layout.numbered(1, 100)
    second = layout.numbered(2, 200)
    atomic_save(_ckpt(0), first)
    atomic_save(_ckpt(1), second)
    atomic_link(first, layout.latest)
    assert layout.latest.read_bytes() == first.read_bytes()
    assert load_checkpoint(layout.latest)["step"] == 12
    atomic_link(second, layout.latest)  # replaces an existing link
    assert load_checkpoint(layout.latest)["step"] == 13
    assert os.path.samefile(layout.latest, second)
    leftovers = [p.name for p in layout.checkpoints.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []
    # the link keeps the data alive when the numbered file is pruned
    second.unlink()
    assert load_checkpoint(layout.latest)["step"] == 13


def test_atomic_link_falls_back_to_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "epoch001_step00000001.pt"
    dst = tmp_path / "best.pt"
    atomic_save(_ckpt(0), src)
    dst.write_bytes(b"old")

    def no_links(*args: Any, **kwargs: Any) -> None:
        raise OSError("hard links not supported")

    monkeypatch.setattr(os, "link", no_links)
    atomic_link(src, dst)
    assert dst.read_bytes() == src.read_bytes()
    assert not os.path.samefile(src, dst)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([src.name, dst.name])


def test_run_layout_paths(tmp_path: Path) -> None:
    layout = RunLayout(tmp_path / "run")
    assert layout.config == tmp_path / "run" / "config.yaml"
    assert layout.tokenizer("de") == tmp_path / "run" / "tokenizer_de.json"
    assert layout.latest == tmp_path / "run" / "checkpoints" / "latest.pt"
    assert layout.best.name == "best.pt"
    assert layout.numbered(3, 1500).name == "epoch003_step00001500.pt"
    assert layout.default_checkpoint() == layout.latest
    atomic_save(_ckpt(), layout.best)
    assert layout.default_checkpoint() == layout.best


def test_prune_keeps_the_newest(tmp_path: Path) -> None:
    layout = RunLayout(tmp_path)
    # step 900 of epoch 9 sorts before step 10000 of epoch 10 by name and by age
    names = [(1, 10), (2, 20), (9, 900), (10, 10000), (10, 10500)]
    for epoch, step in names:
        atomic_save(_ckpt(), layout.numbered(epoch, step))
    atomic_link(layout.numbered(1, 10), layout.best)
    atomic_link(layout.numbered(10, 10500), layout.latest)
    prune_checkpoints(layout.numbered_checkpoints(), keep_last=2)
    assert layout.numbered_checkpoints() == [layout.numbered(10, 10000),
                                             layout.numbered(10, 10500)]
    assert layout.best.is_file() and layout.latest.is_file()
    assert load_checkpoint(layout.best)["step"] == 12  # its data survives the pruning
    prune_checkpoints(layout.numbered_checkpoints(), keep_last=5)
    assert len(layout.numbered_checkpoints()) == 2


def test_prune_zero_keeps_everything(tmp_path: Path) -> None:
    layout = RunLayout(tmp_path)
    for step in (1, 2, 3):
        atomic_save(_ckpt(), layout.numbered(1, step))
    prune_checkpoints(layout.numbered_checkpoints(), keep_last=0)
    assert len(layout.numbered_checkpoints()) == 3
    prune_checkpoints(layout.numbered_checkpoints(), keep_last=1)
    assert layout.numbered_checkpoints() == [layout.numbered(1, 3)]
