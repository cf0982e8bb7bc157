"""Data suite: how fast the corpus is tokenized, how much padding batches carry, how well each
tokenizer kind restores text, and the peak memory of a 1M-pair corpus on the real data path.

Keys: data.pairs_per_s (tokenizing train through the cached `datasets.map`, both sides, from
a cold cache), data.padding_fraction_bucketed (the token-budget sampler), data.padding_fraction_
fixed (every sentence padded to the corpus maximum, as the tutorials do), data.round_trip_<kind>
and data.unk_rate_<kind> (validation lines with decode(encode(x)) == x, and [UNK] tokens),
data.peak_rss_mb_1m (a child process that tokenizes the large corpus, iterates one epoch of
batches and collates them) and data.seconds_1m.

The corpus is Multi30k from --data-dir (train/val .en/.de) or, without it, the built-in one.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
for _path in (ROOT, ROOT / "scripts"):  # also when run directly as the child process
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from bench.common import markdown_table, peak_rss_mb  # noqa: E402
from translator.config import DataConfig, TokenizerConfig  # noqa: E402


def add_arguments(group: argparse._ArgumentGroup) -> None:
    """Options of the data suite."""
    group.add_argument("--data-pairs", type=int, default=0,
                       help="Pairs of the large-corpus memory run (default 1,000,000; "
                            "--quick: 100,000; negative: skip it).")
    group.add_argument("--data-max-tokens", type=int, default=4096,
                       help="Token budget of the bucketed batches (default 4096).")
    group.add_argument("--data-vocab", type=int, default=8000,
                       help="Vocabulary of the BPE/Unigram tokenizers (default 8000).")


def _corpus_config(args: argparse.Namespace, cache: Path) -> tuple[DataConfig, str]:
    if args.data_dir is not None:
        return DataConfig(source="text", dir=str(args.data_dir), train="train", valid="val",
                          max_len=128, cache_dir=str(cache)), f"Multi30k ({args.data_dir})"
    return DataConfig(source="builtin", max_len=128), "built-in corpus (no --data-dir)"


def _tokenizer_rows(corpus: Any, vocab: int) -> tuple[list[list[object]], dict[str, float]]:
    """Round trip and [UNK] rates on validation, per tokenizer kind (shared vocabulary for the
    subword kinds, per-language word tokenizers with min_frequency 2 as configs/toy.yaml)."""
    from translator.corpus import iter_texts, to_pairs
    from translator.tokenizer import build_tokenizers, round_trip_stats

    valid = to_pairs(corpus["valid"])
    rows, out = [], {}
    for kind in ("word", "bpe", "unigram"):
        cfg = (TokenizerConfig(kind="word", min_frequency=2) if kind == "word"
               else TokenizerConfig(kind=kind, vocab_size=vocab, shared=True))
        start = time.perf_counter()
        src_tok, tgt_tok = build_tokenizers(iter_texts(corpus["train"], "src"),
                                            iter_texts(corpus["train"], "tgt"), cfg)
        seconds = time.perf_counter() - start
        stats = [round_trip_stats(src_tok, [s for s, _ in valid]),
                 round_trip_stats(tgt_tok, [t for _, t in valid])]
        lines = sum(s["lines"] for s in stats)
        exact = sum(s["round_trip"] * s["lines"] for s in stats) / lines
        tokens = [s["tokens_per_line"] * s["lines"] for s in stats]
        unk = sum(s["unk_rate"] * t for s, t in zip(stats, tokens, strict=True)) / sum(tokens)
        with_unk = sum(s["lines_with_unk"] * s["lines"] for s in stats) / lines
        out[f"data.round_trip_{kind}"] = exact
        out[f"data.unk_rate_{kind}"] = unk
        rows.append([kind, f"{src_tok.vocab_size}/{tgt_tok.vocab_size}", seconds,
                     f"{stats[0]['round_trip']:.2%}", f"{stats[1]['round_trip']:.2%}",
                     f"{min(s['round_trip_without_unk'] for s in stats):.2%}",
                     f"{with_unk:.2%}", f"{unk:.3%}", f"{sum(tokens) / lines:.1f}"])
    return rows, out


def _padding(corpus: Any, max_len: int, max_tokens: int, vocab: int) -> dict[str, float]:
    """Tokenization throughput (cold cache) and padding of bucketed vs fixed batches."""
    import numpy as np

    from translator.corpus import iter_texts
    from translator.dataset import BilingualDataset, BucketBatchSampler, padding_fraction
    from translator.tokenizer import build_tokenizers

    train = corpus["train"]
    src_tok, tgt_tok = build_tokenizers(iter_texts(train, "src"), iter_texts(train, "tgt"),
                                        TokenizerConfig(kind="bpe", vocab_size=vocab,
                                                        shared=True))
    start = time.perf_counter()
    data = BilingualDataset.from_dataset(train, src_tok, tgt_tok, max_len, "train")
    seconds = time.perf_counter() - start
    batches = BucketBatchSampler(data, max_tokens=max_tokens, seed=0).batches()
    src, tgt = np.asarray(data.src_lens) + 2, np.asarray(data.tgt_lens) + 1
    fixed = 1.0 - (src.sum() + tgt.sum()) / (len(src) * (src.max() + tgt.max()))
    return {"data.pairs_per_s": len(train) / seconds,
            "data.padding_fraction_bucketed": padding_fraction(data, batches),
            "data.padding_fraction_fixed": float(fixed), "data.batches": float(len(batches)),
            "data.train_pairs": float(len(train))}


def _write_large_corpus(folder: Path, n: int) -> None:
    """`n` built-in pairs as train.en/train.de, from several independent generator streams
    (duplicates allowed), written as they are generated."""
    from translator.builtin_corpus import iter_pairs

    streams = [iter_pairs(1234, variant) for variant in range(8)]
    with open(folder / "train.en", "w", encoding="utf-8") as en, \
            open(folder / "train.de", "w", encoding="utf-8") as de:
        for k in range(n):
            s, t = next(streams[k % len(streams)])
            en.write(s + "\n")
            de.write(t + "\n")


def _large_child(folder: str, max_tokens: int, vocab: int) -> None:
    """In a fresh process: the real data path over the large corpus; prints one JSON line."""
    import torch

    from translator.corpus import iter_texts, load_corpus
    from translator.dataset import BilingualDataset, BucketBatchSampler, collate
    from translator.tokenizer import build_tokenizers

    torch.set_num_threads(1)
    times = {}
    start = time.perf_counter()
    cfg = DataConfig(source="text", dir=folder, train="train", max_len=128,
                     cache_dir=str(Path(folder) / "cache"))
    train = load_corpus(cfg)["train"]
    times["read"] = time.perf_counter() - start
    src_tok, tgt_tok = build_tokenizers(iter_texts(train, "src"), iter_texts(train, "tgt"),
                                        TokenizerConfig(kind="bpe", vocab_size=vocab,
                                                        shared=True))
    times["tokenizer"] = time.perf_counter() - start - sum(times.values())
    data = BilingualDataset.from_dataset(train, src_tok, tgt_tok, cfg.max_len, "train")
    times["tokenize"] = time.perf_counter() - start - sum(times.values())
    sampler = BucketBatchSampler(data, max_tokens=max_tokens, seed=0)
    n_batches = 0
    for idx in sampler:
        collate([data[i] for i in idx])
        n_batches += 1
    times["epoch"] = time.perf_counter() - start - sum(times.values())
    print(json.dumps({"pairs": len(data), "batches": n_batches, "peak_rss_mb": peak_rss_mb(),
                      "seconds": time.perf_counter() - start, **times}))


def _large_run(n: int, max_tokens: int, vocab: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        start = time.perf_counter()
        _write_large_corpus(Path(tmp), n)
        generate = time.perf_counter() - start
        proc = subprocess.run([sys.executable, __file__, "--child", tmp, str(max_tokens),
                               str(vocab)], capture_output=True, text=True, check=False)
        if proc.returncode:
            raise RuntimeError(f"large-corpus child failed:\n{proc.stderr[-3000:]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        result["generate"] = generate
        return result


def run(args: argparse.Namespace) -> dict[str, float]:
    """Run the suite, print its tables, return its keys."""
    from translator.corpus import load_corpus

    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-data-cache-") as tmp:
        cfg, name = _corpus_config(args, Path(tmp))
        corpus = load_corpus(cfg)
        rows, stats = _tokenizer_rows(corpus, args.data_vocab)
        results.update(stats)
        print(f"\n### Tokenizers on {name}: validation round trip and [UNK] rate\n")
        print(markdown_table(["kind", "vocab src/tgt", "train s", "round trip src",
                              "round trip tgt", "same, lines without [UNK] (worse side)",
                              "lines with [UNK]", "[UNK] tokens", "tokens/line"], rows))
        results.update(_padding(corpus, cfg.max_len, args.data_max_tokens, args.data_vocab))
    print(f"\n### Batches on {name} train (BPE {args.data_vocab}, shared)\n")
    print(markdown_table(["metric", "value"], [
        ["pairs tokenized per second (cold cache)", results["data.pairs_per_s"]],
        [f"padding, bucketed (max_tokens {args.data_max_tokens})",
         f"{results['data.padding_fraction_bucketed']:.2%}"],
        ["padding, fixed to the corpus maximum",
         f"{results['data.padding_fraction_fixed']:.2%}"],
        ["batches per epoch", int(results["data.batches"])],
    ]))
    n = args.data_pairs or (100_000 if args.quick else 1_000_000)
    if n > 0:
        big = _large_run(n, args.data_max_tokens, args.data_vocab)
        key = "1m" if n == 1_000_000 else f"{n // 1000}k"
        results[f"data.peak_rss_mb_{key}"] = big["peak_rss_mb"]
        results[f"data.seconds_{key}"] = big["seconds"]
        print(f"\n### {n:,} built-in pairs: tokenize + one epoch of batches, one process\n")
        print(markdown_table(["stage", "seconds"], [
            ["generate the files (not in the child)", big["generate"]],
            ["read into Arrow", big["read"]], ["train BPE tokenizer", big["tokenizer"]],
            ["tokenize (datasets.map)", big["tokenize"]],
            [f"one epoch: {big['batches']:,} batches sampled and collated", big["epoch"]],
            ["peak RSS (MiB)", big["peak_rss_mb"]]]))
    return results


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "--child":
    _large_child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
elif __name__ == "__main__":
    sys.exit("run this suite through scripts/benchmark.py --suite data")
