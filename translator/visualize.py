"""Attention heatmaps: encoder self-attention, decoder self-attention and cross-attention of one
translated sentence, one figure per layer and kind with a panel per head.

The weights come from one teacher-forced pass over the source and the generated output with
`need_weights=True` (the model returns them; it keeps no state). With the causal rule that
pass computes, row by row, exactly the attention the cached step-by-step search used (a test
checks this), and it gives whole matrices at once.

Rows of the decoder maps are labelled with the token generated at that position (what the
model was producing when it looked there); columns with the source tokens (encoder and
cross-attention) or with the decoder's input tokens, [SOS] first (decoder self-attention).
Matplotlib is used through its Agg canvas only (no pyplot, no display, no global state).
"""

from __future__ import annotations

import dataclasses
import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from translator.config import DecodingConfig
from translator.data.tokenizer import EOS_ID, PAD_ID, SOS_ID, TextTokenizer
from translator.decode.search import nbest_ids, output_caps, translate_ids
from translator.errors import TranslatorError
from translator.files import atomic_write
from translator.model.transformer import Transformer, padding_mask

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.figure import Figure

    from translator.decode.translator import Translator

KINDS = ("encoder_self", "decoder_self", "cross")
_TITLES = {"encoder_self": "encoder self-attention", "decoder_self": "decoder self-attention",
           "cross": "cross-attention"}


@dataclass
class AttentionMaps:
    """Attention probabilities of one sentence and the tokens that label their axes."""

    src_tokens: list[str]
    """Encoder input, [SOS] and [EOS] included: columns of encoder and cross maps."""
    tgt_in_tokens: list[str]
    """Decoder input, [SOS] first: columns of the decoder self-attention maps."""
    tgt_out_tokens: list[str]
    """Tokens generated at each decoder position ([EOS] last if it was generated): rows of
    the decoder maps."""
    weights: dict[str, list[Tensor]]
    """Kind -> per layer [H, rows, columns]: encoder_self [H, S, S], decoder_self [H, T, T],
    cross [H, T, S]."""
    translation: str
    """The detokenized translation."""

    def labels(self, kind: str) -> tuple[list[str], list[str]]:
        """(row labels, column labels) of a kind's maps."""
        if kind == "encoder_self":
            return self.src_tokens, self.src_tokens
        if kind == "decoder_self":
            return self.tgt_out_tokens, self.tgt_in_tokens
        return self.tgt_out_tokens, self.src_tokens


@torch.no_grad()
def collect_attention(model: Transformer, src: Tensor, tgt_in: Tensor) -> dict[str, list[Tensor]]:
    """Attention weights of a teacher-forced pass: `src` [1, S] encoder input, `tgt_in` [1, T]
    decoder input. Returns kind -> per layer [H, Lq, Lk] (on the CPU, float32)."""
    was_training = model.training
    model.eval()
    try:
        src_mask = padding_mask(src, PAD_ID)
        memory, enc = model.encode(src, src_mask, need_weights=True)
        _, dec = model.decode(memory, src_mask, tgt_in, need_weights=True)
    finally:
        model.train(was_training)

    def maps(layers: list[dict[str, Tensor]], key: str) -> list[Tensor]:
        return [w[key][0].float().cpu() for w in layers]

    return {"encoder_self": maps(enc, "self"), "decoder_self": maps(dec, "self"),
            "cross": maps(dec, "cross")}


def attention_for_ids(model: Transformer, src_ids: list[int], src_tok: TextTokenizer,
                      tgt_tok: TextTokenizer, device: torch.device | str = "cpu",
                      decoding: DecodingConfig | None = None, **overrides: float | int
                      ) -> AttentionMaps:
    """Translate one sentence given as source ids (no specials) with the searches the engines
    use (greedy at beam size 1, else beam search) and collect the attention of that
    translation. Settings: `decoding` (default: greedy; length penalty 0.6 for a beam), with
    `overrides` (`beam_size`, `length_penalty`, `max_len_a`, `max_len_b`) applied."""
    dec = dataclasses.replace(decoding or DecodingConfig(beam_size=1, length_penalty=0.6),
                              **overrides)
    device = torch.device(device)
    was_training = model.training  # the searches switch to eval mode; training wants it back
    try:
        if dec.beam_size > 1:
            best = nbest_ids(model, [src_ids], device, dec)[0][0]
            out, ended = best.tokens, best.length > len(best.tokens)
        else:
            out = translate_ids(model, [src_ids], device, dec)[0]
            ended = len(out) < output_caps([len(src_ids)], dec.max_len_a, dec.max_len_b)[0]
    finally:
        model.train(was_training)
    src = torch.tensor([[SOS_ID, *src_ids, EOS_ID]], dtype=torch.long, device=device)
    # Position t of the decoder input produces output token t; a translation cut at its
    # length cap produced no [EOS], so its last token is not fed back in.
    produced = out + [EOS_ID] if ended else out
    tgt_in = torch.tensor([[SOS_ID, *produced[:-1]]], dtype=torch.long, device=device)
    weights = collect_attention(model, src, tgt_in)
    return AttentionMaps(
        src_tokens=src_tok.tokens(src[0].tolist()),
        tgt_in_tokens=tgt_tok.tokens(tgt_in[0].tolist()),
        tgt_out_tokens=tgt_tok.tokens(produced),
        weights=weights,
        translation=tgt_tok.decode(out),
    )


def attention_maps(translator: Translator, sentence: str,
                   decoding: DecodingConfig | None = None, **overrides: float | int | None,
                   ) -> AttentionMaps:
    """Translate `sentence` with a loaded run's native model (`decoding`, else the run's
    settings with `overrides` applied) and collect the attention of that translation."""
    dec = decoding if decoding is not None else translator.decoding(**overrides)
    ids = translator.encode([sentence])[0]
    if not ids:
        raise TranslatorError("nothing to translate: the sentence is empty")
    return attention_for_ids(translator.model, ids, translator.src_tok, translator.tgt_tok,
                             translator.device, dec)


def plot_heads(weights: Tensor, rows: list[str], cols: list[str], title: str) -> Figure:
    """One figure, a heatmap panel per head: `weights` [H, len(rows), len(cols)], each row a
    probability distribution (0 white .. 1 dark); rows and columns labelled with tokens."""
    panels = [(weights[h], rows, cols, f"head {h + 1}") for h in range(weights.size(0))]
    return plot_panels(panels, title, ncols=min(len(panels), 4))


def plot_panels(panels: list[tuple[Tensor, list[str], list[str], str]], title: str,
                ncols: int) -> Figure:
    """A figure of heatmaps, one per (weights [rows, cols], row labels, column labels, panel
    title), `ncols` to a row, with one shared 0..1 colour scale."""
    from matplotlib.figure import Figure

    nrows = math.ceil(len(panels) / ncols)
    longest_rows = max(len(p[1]) for p in panels)
    longest_cols = max(len(p[2]) for p in panels)
    # About a quarter inch a token so labels stay readable; small maps keep a minimum size.
    panel_w = max(2.6, 0.24 * longest_cols + 1.0)
    panel_h = max(2.4, 0.24 * longest_rows + 1.0)
    fig = Figure(figsize=(ncols * panel_w + 0.8, nrows * panel_h + 0.7), dpi=100,
                 layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    fontsize = 8 if max(longest_rows, longest_cols) <= 30 else 6
    image = None
    for i, ax in enumerate(axes.flat):
        if i >= len(panels):
            ax.set_axis_off()
            continue
        weights, rows, cols, name = panels[i]
        image = ax.imshow(weights.numpy(), cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto",
                          interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.set_xticks(range(len(cols)), cols, rotation=90, fontsize=fontsize)
        ax.set_yticks(range(len(rows)), rows, fontsize=fontsize)
        ax.tick_params(length=0)
    fig.suptitle(title, fontsize=10)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.6, label="attention probability")
    return fig


def figures(maps: AttentionMaps, kinds: tuple[str, ...] = KINDS,
            layers: list[int] | None = None) -> dict[str, Figure]:
    """Figures by name (`<kind>_layer<N>`, N from 1) for the chosen kinds and layers (0-based
    indices, negative counting from the last; default all)."""
    out = {}
    for kind in kinds:
        per_layer = maps.weights[kind]
        chosen = range(len(per_layer)) if layers is None else sorted(
            {i % len(per_layer) for i in layers})
        rows, cols = maps.labels(kind)
        for i in chosen:
            title = (f"{_TITLES[kind]}, layer {i + 1} of {len(per_layer)}\n"
                     f"translation: {_shorten(maps.translation)}")
            out[f"{kind}_layer{i + 1}"] = plot_heads(per_layer[i], rows, cols, title)
    return out


def save_attention_images(maps: AttentionMaps, out_dir: str | Path) -> list[Path]:
    """Write one PNG per kind and layer into `out_dir` (created); returns the paths."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TranslatorError(f"cannot create {out}: {exc.strerror}") from exc
    paths = []
    for name, fig in figures(maps).items():
        path = out / f"{name}.png"
        image = io.BytesIO()
        with _quiet_glyphs():
            fig.savefig(image, format="png")
        atomic_write(path, image.getvalue())
        paths.append(path)
    return paths


def figure_to_array(fig: Figure) -> np.ndarray:
    """Render a figure to an RGB array [height, width, 3] (uint8)."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    with _quiet_glyphs():
        canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def log_attention(writer: Any, model: Transformer, src_ids: list[int], src_tok: TextTokenizer,
                  tgt_tok: TextTokenizer, step: int, device: torch.device | str = "cpu") -> None:
    """Log one image to TensorBoard (`attention/last_layer` at `step`): the greedy translation
    of one sentence, the last layer's encoder self-, decoder self- and cross-attention averaged
    over heads. One small figure, because it runs at every validation."""
    maps = attention_for_ids(model, list(src_ids), src_tok, tgt_tok, device)
    panels = []
    for kind in KINDS:
        rows, cols = maps.labels(kind)
        panels.append((maps.weights[kind][-1].mean(dim=0), rows, cols, _TITLES[kind]))
    title = (f"last layer, mean over heads; translation: {_shorten(maps.translation)}")
    fig = plot_panels(panels, title, ncols=3)
    writer.add_image("attention/last_layer", figure_to_array(fig), step, dataformats="HWC")


def _shorten(text: str, limit: int = 90) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


class _quiet_glyphs(warnings.catch_warnings):
    """Silence matplotlib's "Glyph ... missing from font" warnings: a token in a script the
    font lacks (emoji, say) draws as a box, which is fine for a heatmap label."""

    def __enter__(self) -> None:
        super().__enter__()
        warnings.filterwarnings("ignore", message=r".*[Gg]lyph .* missing from")
