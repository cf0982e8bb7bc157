"""Attention maps: the teacher-forced pass shows exactly the attention the cached search used,
the axes carry the right tokens, figures and PNGs come out, and training logs an image."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

from translator.data.tokenizer import EOS_ID, PAD_ID, SOS_ID, TextTokenizer, build_tokenizer
from translator.decode.search import greedy_decode
from translator.model.transformer import padding_mask
from translator.visualize import (
    KINDS,
    attention_for_ids,
    collect_attention,
    figure_to_array,
    figures,
    log_attention,
    save_attention_images,
)

if TYPE_CHECKING:
    from tests.conftest import Overfit

pytestmark = pytest.mark.usefixtures("single_thread")


def _tokenizer(vocab: int) -> TextTokenizer:
    """A word tokenizer whose ids 4.. are the words w4, w5, ... (ids 0-3 are the specials)."""
    from translator.config import TokenizerConfig

    # Word w<i> is seen vocab - i times: the more frequent, the smaller its id.
    texts = [" ".join([f"w{i}"] * (vocab - i)) for i in range(4, vocab)]
    tok = build_tokenizer(texts, TokenizerConfig())
    assert tok.tokens(range(4, vocab)) == [f"w{i}" for i in range(4, vocab)]
    return tok


@torch.no_grad()
def test_teacher_forced_maps_equal_the_cached_steps(overfit: Overfit) -> None:
    """Row t of the decoder maps from one teacher-forced pass equals the weights the cached
    search computed at step t, for every layer and head."""
    model = overfit.model
    src = overfit.batch.src[2:3]
    src = src[:, (src[0] != PAD_ID)]
    out = greedy_decode(model, src)[0]
    tgt_in = torch.tensor([[SOS_ID, *out]])  # the last step predicted [EOS]
    forced = collect_attention(model, src, tgt_in)
    mask = padding_mask(src, PAD_ID)
    memory = model.encode(src, mask)
    cache = model.new_cache()
    for t in range(tgt_in.size(1)):
        h, weights = model.decode(memory, mask, tgt_in[:, t:t + 1], cache, offset=t,
                                  need_weights=True)
        for kind, key in (("decoder_self", "self"), ("cross", "cross")):
            for layer, w in enumerate(weights):
                step = w[key][0, :, 0]  # [H, Lk]
                assert torch.allclose(step, forced[kind][layer][:, t, :step.size(-1)],
                                      atol=1e-6)
    assert int(model.project(h[:, -1]).argmax()) == EOS_ID


def test_maps_shapes_labels_and_rows(overfit: Overfit) -> None:
    tok = _tokenizer(16)
    src_ids = overfit.src[4]
    maps = attention_for_ids(overfit.model, src_ids, tok, tok)
    S, T = len(src_ids) + 2, len(overfit.tgt[4]) + 1
    assert maps.src_tokens == ["[SOS]", *[f"w{i}" for i in src_ids], "[EOS]"]
    assert maps.tgt_out_tokens == [*[f"w{i}" for i in overfit.tgt[4]], "[EOS]"]
    assert maps.tgt_in_tokens == ["[SOS]", *[f"w{i}" for i in overfit.tgt[4]]]
    assert maps.translation == " ".join(f"w{i}" for i in overfit.tgt[4])
    shapes = {"encoder_self": (4, S, S), "decoder_self": (4, T, T), "cross": (4, T, S)}
    for kind in KINDS:
        assert len(maps.weights[kind]) == 2
        for w in maps.weights[kind]:
            assert tuple(w.shape) == shapes[kind]
            assert torch.allclose(w.sum(-1), torch.ones(w.shape[:-1]), atol=1e-5)
    for w in maps.weights["decoder_self"]:  # nothing attends to the future
        assert float(w.triu(diagonal=1).abs().max()) == 0.0


def test_output_cut_at_the_cap_has_no_eos_row(overfit: Overfit) -> None:
    tok = _tokenizer(16)
    maps = attention_for_ids(overfit.model, overfit.src[3], tok, tok, max_len_a=0.0,
                             max_len_b=2, beam_size=2)
    assert maps.tgt_out_tokens == [f"w{i}" for i in overfit.tgt[3][:2]]
    assert maps.tgt_in_tokens == ["[SOS]", f"w{overfit.tgt[3][0]}"]
    assert tuple(maps.weights["cross"][0].shape) == (4, 2, len(overfit.src[3]) + 2)


def test_figures_and_pngs(overfit: Overfit, tmp_path: Path) -> None:
    tok = _tokenizer(16)
    maps = attention_for_ids(overfit.model, overfit.src[0], tok, tok)
    figs = figures(maps, kinds=("cross",), layers=[-1])
    assert list(figs) == ["cross_layer2"]
    fig = figs["cross_layer2"]
    panels = [ax for ax in fig.axes if ax.get_title().startswith("head")]
    assert len(panels) == 4
    assert [t.get_text() for t in panels[0].get_xticklabels()] == maps.src_tokens
    assert [t.get_text() for t in panels[0].get_yticklabels()] == maps.tgt_out_tokens
    image = figure_to_array(fig)
    assert image.ndim == 3 and image.shape[2] == 3 and image.dtype.name == "uint8"
    assert image.min() < 100  # something dark was drawn
    paths = save_attention_images(maps, tmp_path / "maps")
    assert len(paths) == 6 and all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)


def test_log_attention_writes_a_tensorboard_image(overfit: Overfit, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    tok = _tokenizer(16)
    writer = SummaryWriter(str(tmp_path))
    overfit.model.train()  # as during training: it must come back in the same mode
    try:
        log_attention(writer, overfit.model, overfit.src[1], tok, tok, step=7)
        assert overfit.model.training
    finally:
        overfit.model.eval()
    writer.close()
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    assert acc.Tags()["images"] == ["attention/last_layer"]
    (event,) = acc.Images("attention/last_layer")
    assert event.step == 7 and event.width > 300 and event.height > 150


def test_training_logs_attention_images(trained_run: Path) -> None:
    """The session's tiny run (conftest) logged one attention image at each validation."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from translator.run import RunLayout

    acc = EventAccumulator(str(RunLayout(trained_run).tensorboard))
    acc.Reload()
    assert "attention/last_layer" in acc.Tags()["images"]
    steps = [e.step for e in acc.Images("attention/last_layer")]
    assert steps and steps == [e.step for e in acc.Scalars("valid/loss")]
