"""Shared fixtures: single-threaded torch for tiny models, and one memorised tiny model."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import TINY_RUN, raw_config
from translator.data.dataset import Batch, collate
from translator.data.tokenizer import PAD_ID
from translator.model.transformer import Transformer, build_transformer


@pytest.fixture
def single_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread, and do not stall when other processes load the
    CPU (OpenMP spin-waiting makes a 2-thread step ~100x slower on a busy 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# Fixed pairs of ids (specials excluded) of different lengths, memorised by `overfit`.
OVERFIT_VOCAB = 16
OVERFIT_SRC = [[4, 5, 6], [7, 8], [9, 10, 11, 12, 5], [6, 7], [13, 4, 9, 8], [10, 12]]
OVERFIT_TGT = [[5, 6, 7, 8], [9, 10], [11, 12, 13], [4, 14, 15, 6, 7, 9], [8], [15, 14, 13]]


@dataclass
class Overfit:
    model: Transformer
    batch: Batch
    loss: float
    steps: int
    src: list[list[int]]
    tgt: list[list[int]]


@pytest.fixture(scope="session")
def overfit() -> Overfit:
    """A d_model-32, 2-layer model trained with Adam (no label smoothing, dropout 0) on the
    fixed pairs above until the cross-entropy is below 0.01 or 400 steps have run."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = build_transformer(OVERFIT_VOCAB, OVERFIT_VOCAB, 16, 16, d_model=32, N=2, h=4,
                                      dropout=0.0, d_ff=64)
            batch = collate([(torch.tensor(s), torch.tensor(t))
                             for s, t in zip(OVERFIT_SRC, OVERFIT_TGT, strict=True)])
            opt = torch.optim.Adam(model.parameters(), lr=3e-3)
            model.train()
            steps = 0
            while steps < 400:
                steps += 1
                logits = model(batch.src, batch.tgt_in, batch.src_mask)
                loss = F.cross_entropy(logits.reshape(-1, OVERFIT_VOCAB),
                                       batch.tgt_out.reshape(-1), ignore_index=PAD_ID)
                opt.zero_grad()
                loss.backward()
                opt.step()
                if loss.item() < 0.01:
                    break
        model.eval()
        with torch.no_grad():
            logits = model(batch.src, batch.tgt_in, batch.src_mask)
            final = F.cross_entropy(logits.reshape(-1, OVERFIT_VOCAB), batch.tgt_out.reshape(-1),
                                    ignore_index=PAD_ID).item()
    finally:
        torch.set_num_threads(threads)
    return Overfit(model, batch, final, steps, OVERFIT_SRC, OVERFIT_TGT)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One really trained tiny run (tests.helpers.TINY_RUN: one short epoch on the built-in
    corpus), shared by every test that only reads, translates or evaluates from a run folder.
    Tests that change the folder work on a copy (shutil.copytree)."""
    from translator.config import config_from_dict
    from translator.train.loop import train

    run_dir = tmp_path_factory.mktemp("trained") / "tiny"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(config_from_dict(raw_config(TINY_RUN, run_dir), name="tiny"), quiet=True)
    finally:
        torch.set_num_threads(threads)
    return run_dir


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `cuda` need a GPU: collected everywhere, skipped where there is none."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none here)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def _train_serve_model(run_dir: Path, data: dict[str, Any]) -> Path:
    """A tiny pre-norm model on the built-in corpus (about 10-25 s): enough to produce real,
    varied words (and "." at sentence ends) with beam search."""
    from translator.config import config_from_dict
    from translator.train.loop import train

    cfg = config_from_dict({
        "data": {"max_len": 40, **data},
        "tokenizer": {"min_frequency": 1},
        "model": {"d_model": 64, "layers": 2, "heads": 4, "d_ff": 128, "dropout": 0.0,
                  "norm": "pre"},
        "training": {"epochs": 4, "max_tokens": 1500, "lr": 0.005, "warmup_steps": 10,
                     "log_every": 10, "valid_max_sentences": 20, "examples": 0, "threads": 1},
        "output": {"dir": str(run_dir)},
    }, name=run_dir.name)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(cfg, quiet=True)
    finally:
        torch.set_num_threads(threads)
    return run_dir


@pytest.fixture(scope="session")
def serve_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An en->de model for the server's tests (the built-in corpus, 2,000 pairs)."""
    return _train_serve_model(tmp_path_factory.mktemp("serve") / "en-de",
                              {"source": "builtin", "builtin_size": 2000})


@pytest.fixture(scope="session")
def serve_run_reverse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A de->en model: the same built-in corpus the other way round, as line-aligned text
    files (the built-in source is English to German only)."""
    from translator.data.builtin_corpus import builtin_splits

    data = tmp_path_factory.mktemp("serve-data")
    for split, pairs in builtin_splits(2000, valid_size=200, test_size=200).items():
        (data / f"{split}.en").write_text("".join(en + "\n" for en, _ in pairs), "utf-8")
        (data / f"{split}.de").write_text("".join(de + "\n" for _, de in pairs), "utf-8")
    return _train_serve_model(tmp_path_factory.mktemp("serve") / "de-en", {
        "source": "text", "dir": str(data), "src_lang": "de", "tgt_lang": "en",
        "valid": "valid", "test": "test"})
