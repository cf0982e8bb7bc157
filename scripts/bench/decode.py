"""Decode suite: sentences per second of four ways to translate the same sentences with one
model, on identical weights:

- `tutorial`: one sentence at a time, the decoder re-run over the whole prefix at every step
  (what the classic tutorials do; `greedy_decode` with this file's `uncached_step`, batch 1);
- `cached_b1`: one sentence at a time with the key/value cache;
- `cached_batched`: cached greedy over length-sorted batches (`--decode-batch-size`);
- `beam<K>`: batched beam search with the cache (`--decode-beam`, GNMT length penalty 0.6).

The cached rows use the searches' step, `translator.model.fast_step.FastStep`. With
`--decode-fast-step`, each is followed by a `..._plain` row that runs the textbook modules
instead (`translator.decode.search.module_step`): the A/B of FastStep's gain
(`decode.<row>_fast_gain`), in one process, on the same sentences.

With `ctranslate2` installed, four more rows decode the same sentences with the same model
exported to CTranslate2 (float32 batched greedy; int8 batched greedy, batch 1 and beam; same
thread count), with `..._vs_native` ratios against our batched greedy.

All four native rows use the same weights in the same number format (`--decode-dtype`,
default fp32).

The sentences are Multi30k's test_2016_flickr with `--data-dir`, else the built-in corpus's test
split. The model is a trained run's with `--decode-run` (the realistic case: outputs stop at
[EOS]); without one, an untrained model of the Multi30k size (d_model 256, 3+3 layers), whose
outputs all run to their length cap. With a run and references, BLEU of greedy and beam output
is reported too, and every row checks it produced the same greedy tokens as the tutorial way.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.common import markdown_table
from translator.config import DECODING_DTYPES, DecodingConfig


def add_arguments(group: argparse._ArgumentGroup) -> None:
    """Options of the decode suite."""
    group.add_argument("--decode-run", type=Path, default=None,
                       help="Run folder whose best checkpoint is timed (default: an untrained "
                       "d_model-256, 3+3-layer model).")
    group.add_argument("--decode-sentences", type=int, default=1000,
                       help="Sentences to translate (default 1000; --quick: 200).")
    group.add_argument("--decode-batch-size", type=int, default=64,
                       help="Sentences per batch of the batched rows.")
    group.add_argument("--decode-beam", type=int, default=4, help="Beam size of the beam row.")
    group.add_argument("--decode-device", default="cpu",
                       help="cpu or cuda: where all rows decode (CTranslate2's too).")
    group.add_argument("--decode-dtype", choices=DECODING_DTYPES, default="fp32",
                       help="Number format of the model's weights, for all four rows "
                       "(default fp32).")
    group.add_argument("--decode-ct2-intra-threads", type=int, default=None,
                       help="CTranslate2's intra_threads for the ct2 rows (threads per batch; "
                       "0: CTranslate2's default; default: the engine's, 1).")
    group.add_argument("--decode-ct2-inter-threads", type=int, default=0,
                       help="CTranslate2's inter_threads for the ct2 rows (default 0: one per "
                       "core, the engine's default).")
    group.add_argument("--decode-fast-step", action="store_true",
                       help="Also time every cached row with the textbook step instead of "
                       "model.fast_step.FastStep (rows ..._plain): the A/B of the fast step.")


def uncached_step(model: Any) -> Any:
    """The tutorial way as a search step: re-run the decoder over the whole prefix at every
    step, no cache (the prefix rides in the cache's first layer so that the search keeps it
    in step with its rows). The package has only the cached path; this is the baseline."""
    def step(memory: Any, src_mask: Any, tokens: Any, cache: list, t: int) -> Any:
        new = tokens.view(-1, 1)
        prefix = new if t == 0 else torch.cat([cache[0]["uncached_prefix"], new], dim=1)
        cache[0]["uncached_prefix"] = prefix
        return model.project(model.decode(memory, src_mask, prefix)[:, -1])
    return step


def _sentences(data_dir: Path | None) -> tuple[list[str], list[str], str]:
    """Source and reference sentences, and where they come from."""
    if data_dir is not None:
        from translator.data.text import split_lines

        src = split_lines((data_dir / "test_2016_flickr.en").read_text(encoding="utf-8"))
        ref = split_lines((data_dir / "test_2016_flickr.de").read_text(encoding="utf-8"))
        return src, ref, f"Multi30k test_2016_flickr ({data_dir})"
    from translator.config import DataConfig
    from translator.data.corpus import load_splits

    pairs = load_splits(DataConfig())["test"]
    return [s for s, _ in pairs], [t for _, t in pairs], "built-in corpus, test split"


def _model(args: argparse.Namespace, sources: list[str]) -> tuple[object, bool, str]:
    """(translator, trained?, description); the model is on the CPU in eval mode."""
    from translator.decode.translator import Translator

    if args.decode_run is not None:
        tr = Translator.from_run(args.decode_run, device=args.decode_device,
                                 dtype=args.decode_dtype)
        m = tr.cfg.model
        desc = (f"run {args.decode_run} ({tr.checkpoint.name}): d_model {m.d_model}, "
                f"{m.layers}+{m.decoder_layers or m.layers} layers, vocab "
                f"{tr.src_tok.vocab_size}/{tr.tgt_tok.vocab_size}, {args.decode_dtype}")
        return tr, True, desc
    import copy

    from translator.config import Config, TokenizerConfig
    from translator.data.tokenizer import build_tokenizer
    from translator.device import DTYPES
    from translator.model.transformer import build_transformer

    src_tok = build_tokenizer(sources, TokenizerConfig())
    # The target side gets the Multi30k run's 8000 tokens (filler tokens after the words), so
    # that the output projection costs what it costs in the trained model.
    tgt_tok = copy.deepcopy(src_tok)
    tgt_tok.tok.add_tokens([f"<t{i}>" for i in range(8000 - src_tok.vocab_size)])
    torch.manual_seed(0)
    model = build_transformer(src_tok.vocab_size, tgt_tok.vocab_size, 128, 128, d_model=256,
                              N=3, h=4, d_ff=1024, tie_embeddings=True).eval()
    cfg = Config()
    cfg.data.max_len = 128
    cfg.model.d_model, cfg.model.layers, cfg.model.heads, cfg.model.d_ff = 256, 3, 4, 1024
    tr = Translator(cfg, src_tok, tgt_tok, model.to(DTYPES[args.decode_dtype]),
                    torch.device(args.decode_device))
    desc = (f"untrained d_model 256, 3+3 layers, vocab {src_tok.vocab_size}/"
            f"{tgt_tok.vocab_size}, {args.decode_dtype} (outputs run to their length cap; pass "
            "--decode-run for a trained model)")
    return tr, False, desc


def _timed(fn: Callable[[], list[list[int]]]) -> tuple[list[list[int]], float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def run(args: argparse.Namespace) -> dict[str, float]:
    """Time the four decoders on the same sentences; print a table; return `decode.*`."""
    from translator.decode.search import (
        cached_step,
        greedy_decode,
        module_step,
        pack_sources,
        translate_ids,
    )

    n = 200 if args.quick and args.decode_sentences == 1000 else args.decode_sentences
    sources, refs, where = _sentences(args.data_dir)
    sources, refs = sources[:n], refs[:n]
    translator, trained, desc = _model(args, sources)
    model = translator.model
    ids = [x or [0] for x in translator.encode(sources)]  # an empty line decodes as [UNK]
    device = torch.device(args.decode_device)
    K, bs = args.decode_beam, args.decode_batch_size

    def one_by_one(make_step: Any) -> list[list[int]]:
        return [greedy_decode(model, pack_sources([x], device), make_step=make_step)[0]
                for x in ids]

    for x in ids[:50]:  # warm-up: allocator, kernels, positional table
        greedy_decode(model, pack_sources([x], device))
        if args.decode_fast_step:
            greedy_decode(model, pack_sources([x], device), make_step=module_step)
    greedy, beam = DecodingConfig(beam_size=1), DecodingConfig(beam_size=K, length_penalty=0.6)
    kinds = {
        "cached_b1": ("batch 1, KV cache", one_by_one),
        "cached_batched": (f"batch {bs}, KV cache", lambda step: translate_ids(
            model, ids, device, greedy, batch_size=bs, make_step=step)),
        f"beam{K}": (f"beam {K}, batch {bs}, KV cache", lambda step: translate_ids(
            model, ids, device, beam, batch_size=bs, make_step=step)),
    }
    rows = {"tutorial": ("batch 1, recompute prefix", lambda: one_by_one(uncached_step))}
    for name, (how, fn) in kinds.items():  # with --decode-fast-step, A then B per kind
        rows[name] = (how, lambda fn=fn: fn(cached_step))  # the package's: FastStep
        if args.decode_fast_step:
            rows[f"{name}_plain"] = (f"{how}, textbook step", lambda fn=fn: fn(module_step))
    outputs, seconds = {}, {}
    for name, (_, fn) in rows.items():
        outputs[name], seconds[name] = _timed(fn)
    results: dict[str, float] = {}
    table = []
    base = len(ids) / seconds["tutorial"]
    for name, (how, _) in rows.items():
        sps = len(ids) / seconds[name]
        results[f"decode.{name}_sps"] = round(sps, 2)
        if name != "tutorial":
            results[f"decode.{name}_speedup"] = round(sps / base, 2)
        mean_len = sum(len(o) for o in outputs[name]) / len(ids)
        same = sum(a == b for a, b in zip(outputs[name], outputs["tutorial"], strict=True))
        row = [name, how, sps, sps / base, seconds[name], mean_len, f"{same}/{len(ids)}"]
        if trained:
            import sacrebleu

            hyps = [translator.tgt_tok.decode(o) for o in outputs[name]]
            bleu = sacrebleu.corpus_bleu(hyps, [refs]).score
            results[f"decode.{name}_bleu"] = round(bleu, 2)
            row.append(bleu)
        table.append(row)
    header = ["decoder", "how", "sentences/s", "x tutorial", "seconds", "mean output tokens",
              "same tokens as tutorial"] + (["BLEU"] if trained else [])
    print(f"## decode: {len(ids)} sentences from {where}\n\nmodel: {desc}; "
          f"{torch.get_num_threads()} torch threads\n")
    print(markdown_table(header, table) + "\n")
    results["decode.sentences"] = float(len(ids))
    if args.decode_fast_step:  # FastStep's gain per kind: sentences/s with it / without
        for name in kinds:
            results[f"decode.{name}_fast_gain"] = round(
                results[f"decode.{name}_sps"] / results[f"decode.{name}_plain_sps"], 3)
    results.update(_ct2_rows(args, translator, trained, ids, refs, results))
    return results


def _ct2_rows(args: argparse.Namespace, translator: object, trained: bool,
              ids: list[list[int]], refs: list[str], native: dict[str, float]
              ) -> dict[str, float]:
    """The CTranslate2 rows: the same model exported to float32 and int8 in a scratch
    folder (a run from its fp32 checkpoint; the untrained model as built)."""
    import tempfile

    try:
        from translator.decode.ct2 import CT2Translator, export_ctranslate2, save_ctranslate2
    except ImportError:
        print("(no CTranslate2 rows: ctranslate2 is not installed)\n")
        return {}
    import sacrebleu

    K, bs = args.decode_beam, args.decode_batch_size
    from translator.decode.ct2 import INTRA_THREADS, resolve_threads

    threads, inter = resolve_threads(
        INTRA_THREADS if args.decode_ct2_intra_threads is None else args.decode_ct2_intra_threads,
        args.decode_ct2_inter_threads)
    base = native["decode.cached_batched_sps"]
    results: dict[str, float] = {}
    table = []

    def export(q: str, out: Path) -> Path:
        if args.decode_run is not None:
            return export_ctranslate2(args.decode_run, out, q)
        return save_ctranslate2(translator, out, q)

    with tempfile.TemporaryDirectory() as tmp:
        engines = {q: CT2Translator.from_dir(export(q, Path(tmp) / q), args.decode_device,
                                             threads=threads, inter_threads=inter)
                   for q in ("float32", "int8")}
        greedy = translator.decoding(beam_size=1)
        beam = translator.decoding(beam_size=K, length_penalty=0.6)
        rows = {
            "ct2_fp32_batched": ("float32", greedy, bs),
            "ct2_int8_batched": ("int8", greedy, bs),
            "ct2_int8_b1": ("int8", greedy, 1),
            f"ct2_int8_beam{K}": ("int8", beam, bs),
        }
        for x in ids[:50]:  # warm-up
            engines["int8"].search([x], greedy, None, 1)
        for name, (q, dec, batch) in rows.items():
            outs, secs = _timed(lambda q=q, dec=dec, batch=batch:
                                [h[0][0] for h in engines[q].search(ids, dec, None, batch)])
            sps = len(ids) / secs
            results[f"decode.{name}_sps"] = round(sps, 2)
            results[f"decode.{name}_vs_native"] = round(sps / base, 2)
            mean_len = sum(len(o) for o in outs) / len(ids)
            row = [name, f"{q}, batch {batch}, beam {dec.beam_size}", sps, sps / base, secs,
                   mean_len]
            if trained:
                hyps = [translator.tgt_tok.decode(o) for o in outs]
                row.append(sacrebleu.corpus_bleu(hyps, [refs]).score)
            table.append(row)
    if trained:
        results["decode.ct2_int8_bleu"] = round(table[1][6], 2)
    results["decode.ct2_int8_b1_vs_cached_b1"] = round(
        results["decode.ct2_int8_b1_sps"] / native["decode.cached_b1_sps"], 2)
    results["decode.ct2_intra_threads"] = float(threads)
    results["decode.ct2_inter_threads"] = float(inter)
    print(f"CTranslate2, intra_threads {threads} (0: its default), inter_threads {inter} "
          f"(torch: {torch.get_num_threads()} threads in this process), against our cached "
          "batched greedy "
          f"({base:.1f} sentences/s); the classic tutorial code measured 10.4 sentences/s "
          "on this machine, for scale:\n")
    print(markdown_table(["decoder", "how", "sentences/s", "x ours batched", "seconds",
                          "mean output tokens"] + (["BLEU"] if trained else []), table) + "\n")
    return results
