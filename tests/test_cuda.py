"""The CUDA paths, on a real GPU (marked `cuda`: collected everywhere, skipped without a GPU;
`scripts/device_check.sh` runs them on a lent GPU machine)."""

from __future__ import annotations

from pathlib import Path

import pytest
import sacrebleu
import torch

from tests.helpers import uncached_step
from translator.checkpoint import load_checkpoint
from translator.config import Config, config_from_dict
from translator.decode.search import greedy_decode, pack_sources
from translator.decode.translator import Translator
from translator.evaluate import load_split
from translator.model.transformer import build_transformer
from translator.run import RunLayout
from translator.train.loop import Trainer, train

pytestmark = pytest.mark.cuda


def _config(run_dir: Path, size: int = 400, d_model: int = 32, **training: object) -> Config:
    raw = {
        "data": {"source": "builtin", "builtin_size": size, "max_len": 40},
        "tokenizer": {"min_frequency": 1},
        "model": {"d_model": d_model, "layers": 2, "heads": 4, "d_ff": 4 * d_model,
                  "dropout": 0.1},
        "training": {"epochs": 5, "max_tokens": 1500, "lr": 0.003, "warmup_steps": 10,
                     "log_every": 5, "valid_max_sentences": 50, "examples": 0,
                     "device": "cuda", **training},
        "output": {"dir": str(run_dir)},
    }
    return config_from_dict(raw, name=run_dir.name)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_training_lowers_the_loss(tmp_path: Path, precision: str) -> None:
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    trainer = Trainer(_config(tmp_path / precision, precision=precision, max_steps=40,
                              epochs=100),
                      quiet=True)
    before = trainer.validate()["loss"]
    result = trainer.run()
    after = trainer.validate()["loss"]
    assert result.state.step == 40
    assert after < 0.85 * before, (before, after)
    weights = load_checkpoint(RunLayout(tmp_path / precision).latest)["model"]
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_fp16_resume_equals_uninterrupted(tmp_path: Path) -> None:
    """fp16 with a gradient scaler: the scaler's state is in the checkpoint, so N steps +
    resume + N steps gives the same weights as 2N steps (dropout on, CUDA RNG restored)."""
    kw = {"precision": "fp16", "epochs": 5}
    train(_config(tmp_path / "a", max_steps=12, **kw), quiet=True)
    train(_config(tmp_path / "b", max_steps=6, **kw), quiet=True)
    assert load_checkpoint(RunLayout(tmp_path / "b").latest)["scaler"]
    train(_config(tmp_path / "b", max_steps=12, **kw), resume=True, quiet=True)
    a = load_checkpoint(RunLayout(tmp_path / "a").latest)["model"]
    b = load_checkpoint(RunLayout(tmp_path / "b").latest)["model"]
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_cached_greedy_equals_uncached_on_cuda() -> None:
    torch.manual_seed(0)
    model = build_transformer(50, 50, 64, 64, d_model=64, N=2, h=4, d_ff=128).cuda().eval()
    src = pack_sources([[5, 6, 7, 8], [9, 10], [11, 12, 13, 14, 15, 16]], torch.device("cuda"))
    cached = greedy_decode(model, src)
    plain = greedy_decode(model, src, make_step=uncached_step)
    assert cached == plain


def test_checkpoints_move_between_gpu_and_cpu(tmp_path: Path) -> None:
    train(_config(tmp_path / "gpu", max_steps=5), quiet=True)
    on_cpu = Translator.from_run(tmp_path / "gpu", device="cpu")
    assert next(on_cpu.model.parameters()).device.type == "cpu"
    on_gpu = Translator.from_run(tmp_path / "gpu", device="cuda:0")
    assert next(on_gpu.model.parameters()).device == torch.device("cuda", 0)
    sentences = ["The big dog sees the small cat."]
    assert on_cpu.translate(sentences, beam_size=1) == on_gpu.translate(sentences, beam_size=1)
    cfg = _config(tmp_path / "cpu", max_steps=5)
    cfg.training.device = "cpu"
    train(cfg, quiet=True)
    assert Translator.from_run(tmp_path / "cpu", device="cuda").translate(sentences)


def test_bf16_decoding_is_within_one_bleu_of_fp32(tmp_path: Path) -> None:
    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    train(_config(tmp_path / "toy", size=6000, d_model=128, epochs=6, precision="bf16"),
          quiet=True)
    scores = {}
    for dtype in ("fp32", "bf16"):
        translator = Translator.from_run(tmp_path / "toy", device="cuda", dtype=dtype)
        pairs = load_split(translator.cfg.data, "test")
        hyps = translator.translate([s for s, _ in pairs], 128, beam_size=4)
        scores[dtype] = sacrebleu.corpus_bleu(hyps, [[t for _, t in pairs]]).score
    assert scores["fp32"] > 15, scores  # a model that translates, so the gap means something
    assert abs(scores["bf16"] - scores["fp32"]) <= 1.0, scores


def test_a_greedy_stream_on_the_gpu_gives_what_greedy_decoding_gives() -> None:
    """Continuous batching (translator.decode.continuous) on the GPU: sentences joining a
    running batch get the tokens greedy decoding gives each alone there."""
    from translator.decode.continuous import GreedyStream

    torch.manual_seed(0)
    cuda = torch.device("cuda")
    model = build_transformer(40, 40, 32, 32, d_model=32, N=2, h=4, d_ff=64,
                              dropout=0.0).to(cuda).eval()
    gen = torch.Generator().manual_seed(1)
    sources = [torch.randint(4, 40, (int(n),), generator=gen).tolist()
               for n in torch.randint(1, 12, (10,), generator=gen)]
    stream: GreedyStream[int] = GreedyStream(model, cuda)
    got: dict[int, list[int]] = {}
    for i, ids in enumerate(sources):
        stream.admit([ids], [i])
        got.update(stream.step())
    while len(stream):
        got.update(stream.step())
    alone = [greedy_decode(model, pack_sources([ids], cuda))[0] for ids in sources]
    assert [got[i] for i in range(len(sources))] == alone
