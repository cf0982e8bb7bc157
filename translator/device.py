"""Where a model runs and in which number format: the device choice and the decoding dtypes."""

from __future__ import annotations

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
