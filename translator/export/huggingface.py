"""Export a run as a Hugging Face `transformers` folder: Pegasus or Marian, no custom code.

Our Transformer is, weight for weight, a stock `transformers` class:
- pre-norm (final LayerNorm per stack), one joint vocabulary with shared embeddings:
  `PegasusForConditionalGeneration`;
- post-norm: `MarianMTModel`.
Both scale embeddings by sqrt(d_model), add sinusoidal positions from 0, use ReLU and biased
projections, and add `final_logits_bias` (our output bias) to the logits. Two differences:
- their sinusoid table is laid out [all sin | all cos] where ours interleaves sin and cos. A
  fixed permutation of the model-width axis, applied to every weight that reads or writes the
  residual stream (embeddings, LayerNorms, attention and FFN inputs and outputs, the output
  projection), gives exactly the same function in their layout;
- their LayerNorm eps is 1e-5 where ours is 1e-6 (not configurable there). We export the
  weights as they are: the difference is eps / variance of the normalised vector, about 1e-5
  relative at worst, so a greedy output changes only where two tokens are all but tied
  (docs/benchmarks.md counts them). Training new runs with 1e-5 instead would change every
  future run's numerics and give old configs, which record no eps, two meanings.

Word-level tokenizers are refused: their spacing is restored by rules (`detokenize`: quote
pairing, joiners) that a `tokenizer.json` decoder cannot express, so the folder would
translate with wrong spacing. Subword kinds (sentencepiece, bpe, unigram) export as they are.
Separate vocabularies are refused too: a fast tokenizer holds one vocabulary, so the
pipeline would decode target ids through the source vocabulary.

Needs the `[hf]` extra (transformers, safetensors).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from translator.data.tokenizer import EOS_ID, PAD_ID, SOS_ID, SPECIAL_TOKENS, TextTokenizer
from translator.decode.translator import Translator
from translator.errors import TranslatorError
from translator.files import EXPORT_MARKER, atomic_write, check_replaceable, replace_dir
from translator.languages import language_name

INSTALL_HINT = ("Hugging Face export needs transformers: pip install 'translator[hf]' "
                "(or transformers safetensors)")


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as exc:
        raise TranslatorError(INSTALL_HINT) from exc
    return transformers


def export_huggingface(run_dir: str | Path, out_dir: str | Path,
                       checkpoint: str | Path | None = None, force: bool = False) -> Path:
    """Write a run (default checkpoint: best.pt, else latest.pt) as a transformers folder."""
    out = Path(out_dir)
    check_replaceable(out, force, (Path(run_dir),))
    _transformers()
    translator = Translator.from_run(run_dir, checkpoint, device="cpu", dtype="fp32")
    return save_huggingface(translator, out, force=force, run_dir=Path(run_dir))


def architecture(translator: Translator) -> str:
    """`pegasus` or `marian` for a loaded run, or a one-line TranslatorError saying why it
    cannot be exported and which config choice makes it exportable."""
    cfg, model = translator.cfg, translator.model
    if translator.src_tok.kind == "word" or translator.tgt_tok.kind == "word":
        raise TranslatorError(
            "a word-level tokenizer cannot be exported to transformers (its spacing rules "
            "have no tokenizer.json equivalent): train with tokenizer.kind: sentencepiece "
            "(or bpe / unigram)")
    joint = (translator.src_tok.fingerprint == translator.tgt_tok.fingerprint
             and torch.equal(model.src_embed.embedding.weight, model.tgt_embed.embedding.weight))
    if cfg.model.norm == "pre" and not joint:
        raise TranslatorError(
            "a pre-norm run with separate vocabularies fits no transformers class: train with "
            "tokenizer.shared: true (exports as Pegasus) or model.norm: post (Marian)")
    if not joint:
        raise TranslatorError(
            "separate vocabularies cannot be exported to transformers (a fast tokenizer holds "
            "one vocabulary, so outputs would decode through the source one): train with "
            "tokenizer.shared: true")
    return "pegasus" if cfg.model.norm == "pre" else "marian"


def width_permutation(d_model: int) -> torch.Tensor:
    """Index p with theirs[..., j] = ours[..., p[j]]: our interleaved sin/cos dimensions
    (0, 2, 4, ... sin; 1, 3, 5, ... cos) in their [sin | cos] order."""
    return torch.cat([torch.arange(0, d_model, 2), torch.arange(1, d_model, 2)])


def hf_state_dict(translator: Translator, arch: str, positions: int) -> dict[str, torch.Tensor]:
    """Our weights under transformers' names, permuted into their width layout."""
    model = translator.model
    w = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    d = translator.cfg.model.d_model
    p = width_permutation(d)
    out: dict[str, torch.Tensor] = {}

    def reads(name: str, target: str, rows: slice = slice(None)) -> None:
        """A Linear whose input is the residual stream (its columns permute)."""
        out[f"{target}.weight"] = w[f"{name}.weight"][rows][:, p].contiguous()
        out[f"{target}.bias"] = w[f"{name}.bias"][rows].clone()

    def writes(name: str, target: str) -> None:
        """A Linear whose output is added to the residual stream (its rows permute)."""
        out[f"{target}.weight"] = w[f"{name}.weight"][p].contiguous()
        out[f"{target}.bias"] = w[f"{name}.bias"][p].contiguous()

    def norm(name: str, target: str) -> None:
        out[f"{target}.weight"] = w[f"{name}.weight"][p].contiguous()
        out[f"{target}.bias"] = w[f"{name}.bias"][p].contiguous()

    q, k, v = slice(0, d), slice(d, 2 * d), slice(2 * d, 3 * d)
    embed = w["src_embed.embedding.weight"][:, p].contiguous()
    out["model.shared.weight"] = embed
    out["model.encoder.embed_tokens.weight"] = embed
    out["model.decoder.embed_tokens.weight"] = embed
    if arch == "pegasus":
        # Pegasus loads its position tables; ours (fp32) keeps the function exactly ours.
        table = model.src_pos.table(positions)[:positions].float().cpu()[:, p].contiguous()
        out["model.encoder.embed_positions.weight"] = table
        out["model.decoder.embed_positions.weight"] = table.clone()
        norm("encoder.norm", "model.encoder.layer_norm")
        norm("decoder.norm", "model.decoder.layer_norm")
    for side in ("encoder", "decoder"):
        for i in range(len(getattr(model, side).blocks)):
            ours, theirs = f"{side}.blocks.{i}", f"model.{side}.layers.{i}"
            for part, rows in (("q", q), ("k", k), ("v", v)):
                reads(f"{ours}.self_attn.qkv_proj", f"{theirs}.self_attn.{part}_proj", rows)
            writes(f"{ours}.self_attn.out_proj", f"{theirs}.self_attn.out_proj")
            norm(f"{ours}.res.0.norm", f"{theirs}.self_attn_layer_norm")
            ff = 1
            if side == "decoder":
                reads(f"{ours}.cross_attn.q_proj", f"{theirs}.encoder_attn.q_proj")
                reads(f"{ours}.cross_attn.kv_proj", f"{theirs}.encoder_attn.k_proj", q)
                reads(f"{ours}.cross_attn.kv_proj", f"{theirs}.encoder_attn.v_proj", k)
                writes(f"{ours}.cross_attn.out_proj", f"{theirs}.encoder_attn.out_proj")
                norm(f"{ours}.res.1.norm", f"{theirs}.encoder_attn_layer_norm")
                ff = 2
            reads(f"{ours}.ff.linear1", f"{theirs}.fc1")
            writes(f"{ours}.ff.linear2", f"{theirs}.fc2")
            norm(f"{ours}.res.{ff}.norm", f"{theirs}.final_layer_norm")
    out["lm_head.weight"] = w["projection.proj.weight"][:, p].contiguous()
    out["final_logits_bias"] = w["projection.proj.bias"].view(1, -1).clone()
    return out


def hf_config(translator: Translator, arch: str, positions: int) -> Any:
    """The PegasusConfig or MarianConfig of a loaded run."""
    tf = _transformers()
    cfg, model = translator.cfg, translator.model
    m = cfg.model
    tied = model.projection.proj.weight is model.tgt_embed.embedding.weight
    common = dict(
        vocab_size=translator.src_tok.vocab_size, d_model=m.d_model,
        encoder_layers=len(model.encoder.blocks), decoder_layers=len(model.decoder.blocks),
        encoder_attention_heads=m.heads, decoder_attention_heads=m.heads,
        encoder_ffn_dim=m.d_ff, decoder_ffn_dim=m.d_ff, activation_function="relu",
        dropout=m.dropout, attention_dropout=m.attention_dropout,
        activation_dropout=m.attention_dropout, max_position_embeddings=positions,
        scale_embedding=True, pad_token_id=PAD_ID, eos_token_id=EOS_ID, bos_token_id=SOS_ID,
        decoder_start_token_id=SOS_ID, forced_eos_token_id=None, tie_word_embeddings=tied,
        is_encoder_decoder=True)
    if arch == "pegasus":
        config = tf.PegasusConfig(**common)
    else:
        config = tf.MarianConfig(**common, decoder_vocab_size=translator.tgt_tok.vocab_size,
                                 share_encoder_decoder_embeddings=True)
    config.architectures = ["PegasusForConditionalGeneration" if arch == "pegasus"
                            else "MarianMTModel"]
    return config


def hf_tokenizer(tok: TextTokenizer, max_len: int) -> Any:
    """A fast tokenizer of `tok` that wraps every source as training did: [SOS] ... [EOS]."""
    tf = _transformers()
    from tokenizers import Tokenizer, processors

    inner = Tokenizer.from_str(tok.tok.to_str())
    sos, eos = SPECIAL_TOKENS[SOS_ID], SPECIAL_TOKENS[EOS_ID]
    inner.post_processor = processors.TemplateProcessing(
        single=f"{sos} $A {eos}", pair=f"{sos} $A {eos} $B {eos}",
        special_tokens=[(sos, SOS_ID), (eos, EOS_ID)])
    return tf.PreTrainedTokenizerFast(
        tokenizer_object=inner, unk_token=SPECIAL_TOKENS[0], pad_token=SPECIAL_TOKENS[PAD_ID],
        bos_token=sos, eos_token=eos, model_max_length=max_len,
        # Our decoder restores spacing itself; transformers' clean-up would undo it.
        clean_up_tokenization_spaces=False)


def save_huggingface(translator: Translator, out_dir: str | Path, force: bool = False,
                     run_dir: Path | None = None) -> Path:
    """Write a loaded (fp32) run as a transformers folder: config.json, model.safetensors,
    generation_config.json, the fast tokenizer and a README.md model card."""
    tf = _transformers()
    out = Path(out_dir)
    check_replaceable(out, force, (run_dir,) if run_dir else ())
    arch = architecture(translator)
    cfg = translator.cfg
    dec = cfg.decoding
    positions = max(1024, math.ceil(dec.max_len_a * cfg.data.max_len + dec.max_len_b) + 2)
    config = hf_config(translator, arch, positions)
    cls = (tf.PegasusForConditionalGeneration if arch == "pegasus" else tf.MarianMTModel)
    model = cls(config).eval()
    missing, unexpected = model.load_state_dict(hf_state_dict(translator, arch, positions),
                                                strict=False)
    # Marian recomputes its position tables; nothing else may be left out.
    missing = [k for k in missing if not k.endswith("embed_positions.weight")]
    if missing or unexpected:
        raise TranslatorError(f"internal: weights do not map onto {cls.__name__}: "
                              f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.generation_config = tf.GenerationConfig(
        decoder_start_token_id=SOS_ID, bos_token_id=SOS_ID, eos_token_id=EOS_ID,
        pad_token_id=PAD_ID, forced_eos_token_id=None, num_beams=dec.beam_size,
        # transformers divides a beam's log-probability by length ** alpha (as CTranslate2);
        # ours is GNMT's ((5 + length) / 6) ** alpha: the same alpha is the nearest match.
        length_penalty=dec.length_penalty if dec.beam_size > 1 else 1.0,
        max_length=math.floor(dec.max_len_a * cfg.data.max_len + dec.max_len_b) + 1)
    ckpt = Path(translator.checkpoint) if translator.checkpoint else None
    # translator.json marks the folder as ours (a later --force may replace it); transformers
    # ignores it.
    marker = {"format": "huggingface", "architecture": arch, "src_lang": cfg.data.src_lang,
              "tgt_lang": cfg.data.tgt_lang, "checkpoint": ckpt.name if ckpt else None}

    def build(tmp: Path) -> None:
        model.save_pretrained(tmp)
        hf_tokenizer(translator.src_tok, cfg.data.max_len).save_pretrained(tmp)
        _portable_tokenizer_config(tmp / "tokenizer_config.json")
        atomic_write(tmp / "README.md", model_card(translator, arch, run_dir))
        atomic_write(tmp / EXPORT_MARKER, json.dumps(marker, indent=2) + "\n")

    return replace_dir(out, build)


def _portable_tokenizer_config(path: Path) -> None:
    """Name the tokenizer class that transformers 4 and 5 both know (5 writes its own new
    name, `TokenizersBackend`, which 4 cannot load)."""
    data = json.loads(path.read_text())
    data["tokenizer_class"] = "PreTrainedTokenizerFast"
    data.pop("backend", None)
    # Without it transformers 4's fast tokenizer also returns token_type_ids, which
    # `model.generate(**tok(...))` refuses (seen with 4.57.6).
    data["model_input_names"] = ["input_ids", "attention_mask"]
    atomic_write(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _evaluations(run_dir: Path | None) -> list[dict[str, Any]]:
    """The run's evaluation reports (<run>/eval/*.json), test splits first."""
    if run_dir is None:
        return []
    from translator.run import RunLayout

    reports = []
    for path in sorted(RunLayout(run_dir).eval.glob("*.json")):
        try:
            report = json.loads(path.read_text())
        except ValueError:
            continue
        if isinstance(report, dict) and "bleu_signature" in report:
            reports.append(report)
    return sorted(reports, key=lambda r: r.get("split") != "test")


# shape: most of its lines are the card's Markdown template, read best in one piece.
def model_card(translator: Translator, arch: str, run_dir: Path | None) -> str:
    """The README.md of the export: pair, corpus, training, scores with signatures, usage."""
    cfg = translator.cfg
    src, tgt = cfg.data.src_lang, cfg.data.tgt_lang
    corpus = cfg.data.name or cfg.data.dir or cfg.data.source
    steps = "unknown"
    if run_dir is not None:
        from translator.runinfo import run_info

        try:
            trained = run_info(run_dir).get("trained") or {}
            steps = f"{trained.get('step')} steps, {trained.get('epoch')} epochs"
        except TranslatorError:
            pass
    scores = "".join(
        f"| {r.get('split') or r.get('src')} | {r['bleu']:.2f} | {r['chrf']:.2f} | "
        f"beam {r.get('beam_size')} | `{r['bleu_signature']}` / `{r['chrf_signature']}` |\n"
        for r in _evaluations(run_dir)[:4])
    if scores:
        scores = ("| data | BLEU | chrF2 | search | signatures |\n| --- | --- | --- | --- | --- |\n"
                  + scores)
    else:
        scores = "Not evaluated yet: `translator evaluate --run RUN --split test`.\n"
    cls = "PegasusForConditionalGeneration" if arch == "pegasus" else "MarianMTModel"
    m = cfg.model
    return f"""---
language:
- {src}
- {tgt}
tags:
- translation
pipeline_tag: translation
library_name: transformers
license: # fill in: the licence you publish this model under (mind the corpus' terms)
---

# {language_name(src)} → {language_name(tgt)} ({cls})

A Transformer trained with [translator](https://github.com/) and exported with
`translator export --to huggingface`.

- Languages: {src} → {tgt}
- Training corpus: {corpus}
- Training: {steps}; checkpoint {Path(translator.checkpoint or '').name}
- Model: {m.d_model} wide, {len(translator.model.encoder.blocks)}+\
{len(translator.model.decoder.blocks)} layers, {m.heads} heads, FFN {m.d_ff}, {m.norm}-norm;
  tokenizer {translator.src_tok.kind}, {translator.src_tok.vocab_size} tokens (joint)

## Scores (sacreBLEU)

{scores}
## Use

```python
from transformers import pipeline

translate = pipeline("translation", model="PATH_OR_HUB_ID")
print(translate("...")[0]["translation_text"])
```

The tokenizer wraps every source in `[SOS] ... [EOS]`, as in training; generation starts from
`[SOS]` (id {SOS_ID}). Beam size and length penalty in `generation_config.json` are the run's;
transformers divides by length ** alpha where translator used GNMT's ((5 + length) / 6) ** alpha.

## Share it on the Hub

```python
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

AutoModelForSeq2SeqLM.from_pretrained("THIS_FOLDER").push_to_hub("you/{src}-{tgt}")
AutoTokenizer.from_pretrained("THIS_FOLDER").push_to_hub("you/{src}-{tgt}")
```
"""
