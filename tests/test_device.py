"""Device and number-format choices: which CPUs compute bf16 natively, and the warning when a
run asks for bf16 on one that does not."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from translator.device import cpu_bf16_is_native
from translator.train import setup


def _cpuinfo(tmp_path: Path, flags: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: {flags}\n\n"
                    f"processor\t: 1\nflags\t\t: {flags}\n")
    return path


@pytest.mark.parametrize(("flags", "native"), [
    ("fpu sse avx avx2 fma", False),                  # an AVX2 EPYC: bf16 is emulated
    ("avx2 avx512f avx512_bf16", True),               # Cooper Lake, Zen 4
    ("avx2 avx512f amx_tile amx_bf16 amx_int8", True),  # Sapphire Rapids
])
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path: Path, flags: str,
                                                native: bool) -> None:
    assert cpu_bf16_is_native.__wrapped__(_cpuinfo(tmp_path, flags)) is native


def test_unreadable_cpu_flags_are_unknown(tmp_path: Path) -> None:
    assert cpu_bf16_is_native.__wrapped__(tmp_path / "missing") is None
    (tmp_path / "noflags").write_text("processor\t: 0\n")
    assert cpu_bf16_is_native.__wrapped__(tmp_path / "noflags") is None


@pytest.mark.parametrize(("native", "warned"), [(False, True), (True, False), (None, False)])
def test_bf16_training_on_an_emulating_cpu_warns(monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture,
                                                 native: bool | None, warned: bool) -> None:
    monkeypatch.setattr(setup, "cpu_bf16_is_native", lambda: native)
    with caplog.at_level(logging.WARNING, logger="translator"):
        precision = setup.make_precision("bf16", torch.device("cpu"))
    assert precision.name == "bf16"
    assert ("emulates bf16" in caplog.text) is warned
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="translator"):
        setup.make_precision("fp32", torch.device("cpu"))
    assert "bf16" not in caplog.text
