"""Continuous batching (`translator.decode.continuous`): sentences that join a running greedy
batch at any step, and leave it when they end, get what greedy decoding gives each alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.test_decoding import V, _random_model
from translator.data.tokenizer import EOS_ID, PAD_ID, SOS_ID
from translator.decode.continuous import GreedyStream
from translator.decode.search import greedy_decode, pack_sources
from translator.model.fast_step import FastStep

CPU = torch.device("cpu")


def _sources(n: int, seed: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 8, (n,), generator=gen).tolist()
    return [torch.randint(4, V, (k,), generator=gen).tolist() for k in lengths]


def _alone(model: torch.nn.Module, ids: list[int], a: float, b: int) -> list[int]:
    return greedy_decode(model, pack_sources([ids], CPU), max_len_a=a, max_len_b=b)[0]


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_sentences_joining_at_any_step_decode_as_they_would_alone(norm: str) -> None:
    model = _random_model(norm, seed=11)
    sources = _sources(14, seed=11)
    # Caps small enough that some outputs end at their cap, not at [EOS].
    a, b = 1.0, 2
    stream: GreedyStream[int] = GreedyStream(model, CPU, max_len_a=a, max_len_b=b)
    # Which sources join before which step: alone, in groups, while others run, and after
    # the stream has run empty.
    plan = {0: [0], 1: [1, 2], 2: [3], 4: [4, 5, 6], 5: [7], 30: [8, 9], 31: [10],
            33: [11, 12, 13]}
    got: dict[int, list[int]] = {}
    joined_while_running = 0
    for step in range(60):
        for i in plan.get(step, []):
            joined_while_running += len(stream) > 0
            stream.admit([sources[i]], [i])
        got.update(stream.step())
    assert len(stream) == 0
    assert joined_while_running >= 5  # the point: most joined a batch already running
    assert got == {i: _alone(model, ids, a, b) for i, ids in enumerate(sources)}


def test_the_cache_holds_only_the_columns_running_sentences_use() -> None:
    model = _random_model("pre", seed=3)
    with torch.no_grad():
        model.projection.proj.bias[EOS_ID] = -1e3  # nothing ends before its cap
    stream: GreedyStream[str] = GreedyStream(model, CPU, max_len_a=3.0, max_len_b=10)
    stream.admit([[4, 5, 6, 7, 8, 9]], ["long"])
    for _ in range(5):
        stream.step()
    stream.admit([[4]], ["short"])
    stream.step()
    width = stream.cache[0]["self_k"].size(2)
    assert width == 6 == max(stream.positions)  # the long one's 6 positions
    stream.drop(lambda tag: tag == "long")
    assert stream.tags == ["short"]
    # Only the short sentence's one column is left, unmasked.
    assert stream.cache[0]["self_k"].size(2) == 1 and bool(stream.self_keep.all())
    assert stream.cache[0]["cross_k"].size(2) == 3  # [SOS] 4 [EOS]: the long source's gone


def test_a_withdrawn_sentence_leaves_and_the_others_are_unchanged() -> None:
    model = _random_model("post", seed=5)
    sources = _sources(6, seed=5)
    stream: GreedyStream[int] = GreedyStream(model, CPU, max_len_a=2.0, max_len_b=4)
    stream.admit(sources[:3], [0, 1, 2])
    got = dict(stream.step())
    assert stream.drop(lambda tag: tag == 1) == ([1] if 1 not in got else [])
    stream.admit(sources[3:], [3, 4, 5])
    while len(stream):
        got.update(stream.step())
    assert 1 not in got or len(got[1]) <= 1
    for i in (0, 2, 3, 4, 5):
        assert got[i] == _alone(model, sources[i], 2.0, 4)


def test_an_empty_source_is_refused() -> None:
    stream: GreedyStream[int] = GreedyStream(_random_model(), CPU)
    with pytest.raises(ValueError, match="empty"):
        stream.admit([[4, 5], []], [0, 1])


def test_outputs_stop_at_eos_and_the_cap() -> None:
    """A sentence that ends leaves at once: its output holds no [EOS], [SOS] or padding."""
    model = _random_model("pre", seed=8)
    stream: GreedyStream[int] = GreedyStream(model, CPU, max_len_a=0.5, max_len_b=1)
    sources = _sources(8, seed=8)
    stream.admit(sources, list(range(8)))
    got = {}
    while len(stream):
        got.update(stream.step())
    caps = [int(0.5 * (len(s) + 2) + 1) for s in sources]
    for i, out in got.items():
        assert len(out) <= caps[i]
        assert not {EOS_ID, SOS_ID, PAD_ID} & set(out)


def test_the_fast_step_is_made_once_per_model_and_again_after_training() -> None:
    """`FastStep.of` keeps the step (with its transposed weights) while the parameters are
    unchanged; an in-place change (an optimiser step) gives a new one with the new weights."""
    model = _random_model("pre", seed=2)
    step = FastStep.of(model)
    assert FastStep.of(model) is step
    src = pack_sources([[4, 5, 6]], CPU)
    before = greedy_decode(model, src)
    with torch.no_grad():
        model.projection.proj.bias[7] += 1e3  # token 7 now wins every step
    fresh = FastStep.of(model)
    assert fresh is not step
    assert set(greedy_decode(model, src)[0]) == {7} != set(before[0])


def test_a_trained_model_streams_what_translate_gives(trained_run: Path) -> None:
    from translator.decode.translator import Translator

    tr = Translator.from_run(trained_run, device="cpu")
    sentences = ["A man rides a bike.", "", "Two dogs play in the snow.", "   ",
                 "A woman is reading a book in the park.", "Kids."]
    stream = tr.stream(tr.decoding(beam_size=1))
    got = dict(stream.admit(sentences[:3], [0, 1, 2]))
    got.update(stream.step())
    got.update(stream.admit(sentences[3:], [3, 4, 5]))
    while len(stream):
        got.update(stream.step())
    assert [got[i] for i in range(len(sentences))] == tr.translate(sentences, beam_size=1)


def test_rows_are_reused_and_the_cache_stays_short_under_endless_load() -> None:
    """A sentence that ends frees its row for the next one (no copy of the batch), and with
    sentences joining at every step the cache never grows past the longest sentence."""
    model = _random_model("pre", seed=9)
    a, b = 1.0, 3
    sources = _sources(200, seed=9)
    stream: GreedyStream[int] = GreedyStream(model, CPU, max_len_a=a, max_len_b=b)
    got: dict[int, list[int]] = {}
    widths, rows, nxt = [], [], 0
    while nxt < len(sources) or len(stream):
        while len(stream) < 6 and nxt < len(sources):
            stream.admit([sources[nxt]], [nxt])
            nxt += 1
        got.update(stream.step())
        if "self_k" in stream.cache[0]:
            widths.append(stream.cache[0]["self_k"].size(2))
        rows.append(len(stream.tags))
    longest = max(int(a * (len(s) + 2) + b) for s in sources)
    assert max(widths) <= longest + 1
    assert max(rows) <= 8  # 6 running, and free rows reused rather than added
    assert got == {i: _alone(model, ids, a, b) for i, ids in enumerate(sources)}
