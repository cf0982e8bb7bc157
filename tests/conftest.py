"""Shared fixtures: single-threaded torch for tiny models, and one memorised tiny model."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

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
