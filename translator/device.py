"""Where a model runs and in which number format: the device choice and the decoding dtypes."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from translator.config import DECODING_DTYPES
from translator.errors import TranslatorError


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA, then Apple MPS, then CPU; anything else must be usable here."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise TranslatorError(f"unknown device '{name}' (use auto, cpu, cuda, cuda:N or mps)")\
            from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TranslatorError(f"device '{name}' requested but CUDA is not available here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise TranslatorError(f"device '{name}' requested but MPS is not available here")
    return device


# The torch type of each `decoding.dtype` name, from config's one table of them.
DTYPES: dict[str, torch.dtype] = {name: getattr(torch, attr)
                                  for name, attr in DECODING_DTYPES.items()}


@functools.cache
def cpu_bf16_is_native(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool | None:
    """Whether this CPU computes bf16 matmuls in hardware (AMX or AVX512-BF16, read from the
    Linux CPU flags); None where that cannot be read. Without them torch emulates bf16, and
    its matmuls ran about 100x slower than fp32 (0.85 against 96 GFLOP/s on an AVX2 EPYC)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return None
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), None)
    return None if flags is None else bool({"amx_bf16", "avx512_bf16"} & set(flags))
