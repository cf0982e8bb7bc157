"""Data suite: how fast the corpus is tokenized, how much padding batches carry, how well each
tokenizer kind restores text, and the peak memory of a 1M-pair corpus on the real data path.

Keys: data.pairs_per_s (tokenizing train through the cached `datasets.map`, both sides, from
a cold cache), data.padding_fraction_bucketed (the token-budget sampler), data.padding_fraction_
fixed (every sentence padded to the corpus maximum, as the tutorials do), data.round_trip_<kind>
and data.unk_rate_<kind> (validation lines with decode(encode(x)) == x, and [UNK] tokens),
and, per size of `--data-scale` (default 1m; --quick 100k), a fresh child process that
prepares that many built-in pairs from text files the way training does (read and clean,
tokenizer on a bounded sample, tokenize with datasets.map, one epoch of batches collated):
data.peak_rss_mb_<k> (its VmHWM), data.peak_rss_anon_mb_<k>, data.worker_peak_rss_mb_<k>,
data.prepare_minutes_<k>, data.seconds_<k>, data.tokenize_pairs_per_s_<k> and the stage
times data.read_s_<k>, data.tokenizer_train_s_<k>, data.tokenize_s_<k>, data.batching_s_<k>,
with <k> = 1m, 3m, 10m, 100k, ...

The corpus is Multi30k from --data-dir (train/val .en/.de) or, without it, the built-in one.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
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
                       help="Pairs of the large-corpus run when --data-scale is not given "
                            "(default 1,000,000; --quick: 100,000; negative: skip it).")
    group.add_argument("--data-scale", type=parse_scale, default=None,
                       help="Sizes of the large-corpus rows, e.g. 1m,3m,10m: one fresh "
                            "process each (keys data.peak_rss_mb_10m, "
                            "data.tokenize_pairs_per_s_10m, data.prepare_minutes_10m, ...).")
    group.add_argument("--data-train-sample", type=int, default=2_000_000,
                       help="tokenizer.train_sample of the large-corpus rows (default 2M).")
    group.add_argument("--data-num-proc", type=int, default=0,
                       help="data.num_proc of the large-corpus rows (0: automatic).")
    group.add_argument("--data-corpus", default=None,
                       help="Folder for the generated train.en/train.de of the large rows, "
                            "kept and reused by later runs (default: generated afresh in "
                            "--data-tmp and deleted).")
    group.add_argument("--data-tmp", default=None,
                       help="Folder for the large corpora and their caches (about 6 GB at "
                            "10M pairs; default: the system's temporary folder).")
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
    from translator.data.corpus import iter_texts, to_pairs
    from translator.data.tokenizer import build_tokenizers, round_trip_stats

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

    from translator.data.corpus import iter_texts
    from translator.data.dataset import BilingualDataset, BucketBatchSampler, padding_fraction
    from translator.data.tokenizer import build_tokenizers

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


def parse_scale(text: str) -> list[int]:
    """'1m,3m,10m' -> [1000000, 3000000, 10000000] (k and m suffixes, plain counts too)."""
    sizes = []
    for part in filter(None, (p.strip().lower() for p in text.split(","))):
        factor = {"k": 1_000, "m": 1_000_000}.get(part[-1], 1)
        digits = part[:-1] if factor > 1 else part
        try:
            value = float(digits) * factor
        except ValueError:
            raise argparse.ArgumentTypeError(f"--data-scale: '{part}' is not a size such as "
                                             "1m, 300k or 250000") from None
        if value < 1 or value != int(value):
            raise argparse.ArgumentTypeError(f"--data-scale: '{part}' must be a positive "
                                             "whole number of pairs")
        sizes.append(int(value))
    if not sizes:
        raise argparse.ArgumentTypeError("--data-scale: give at least one size")
    return sizes


def scale_key(n: int) -> str:
    """The key suffix of a size: 1m, 3m, 10m, 100k, or the count itself."""
    if n % 1_000_000 == 0:
        return f"{n // 1_000_000}m"
    if n % 1000 == 0:
        return f"{n // 1000}k"
    return str(n)


def _write_stream_half(folder: str, n: int, half: int) -> None:
    """Rows k = half, half + 2, ... < n of the benchmark corpus (row k from built-in stream
    k % 8), written to part<half>.en/.de as they are generated."""
    from translator.data.builtin_corpus import iter_pairs

    streams = [iter_pairs(1234, variant) for variant in range(half, 8, 2)]
    with open(Path(folder) / f"part{half}.en", "w", encoding="utf-8") as en, \
            open(Path(folder) / f"part{half}.de", "w", encoding="utf-8") as de:
        for j in range(len(range(half, n, 2))):
            s, t = next(streams[j % len(streams)])
            en.write(s + "\n")
            de.write(t + "\n")


def _write_large_corpus(folder: Path, n: int) -> None:
    """`n` built-in pairs as train.en/train.de, row k from independent generator stream k % 8
    (duplicates allowed, as in a web-crawled corpus). The even and odd rows are generated by
    two processes (the generator is pure Python: a core each) and interleaved."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.starmap(_write_stream_half, [(str(folder), n, 0), (str(folder), n, 1)])
    for lang in ("en", "de"):
        with open(folder / f"part0.{lang}", encoding="utf-8") as even, \
                open(folder / f"part1.{lang}", encoding="utf-8") as odd, \
                open(folder / f"train.{lang}", "w", encoding="utf-8") as out:
            for a in even:
                out.write(a)
                b = odd.readline()
                if b:
                    out.write(b)
        for half in (0, 1):
            (folder / f"part{half}.{lang}").unlink()


def _lines(path: Path) -> int:
    """Lines in a file (0 if it does not exist)."""
    if not path.is_file():
        return 0
    with open(path, "rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 24), b""))


def _copy_prefix(src: Path, dst: Path, n: int) -> None:
    """The first `n` lines of the corpus in `src` as the corpus in `dst`."""
    for lang in ("en", "de"):
        with open(src / f"train.{lang}", encoding="utf-8") as f, \
                open(dst / f"train.{lang}", "w", encoding="utf-8") as out:
            for _, line in zip(range(n), f, strict=False):
                out.write(line)


def _memory() -> dict[str, float]:
    """This process' VmRSS, RssAnon, RssFile and VmHWM (peak) in MiB, from /proc."""
    out = {}
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                    out[key] = int(value.split()[0]) / 1024
    except OSError:  # not Linux: the getrusage peak only
        out["VmHWM"] = peak_rss_mb()
    return out


def _large_child(folder: str, max_tokens: int, vocab: int, train_sample: int,
                 num_proc: int) -> None:
    """In a fresh process: the real data path over the large corpus, stage by stage (read
    into Arrow and clean, train the tokenizer on a sample, tokenize with datasets.map, one
    epoch of batches collated); prints one JSON line with the times and memory."""
    import logging
    import resource

    import torch

    from translator.data.corpus import iter_texts, load_corpus, tokenizer_sample
    from translator.data.dataset import BilingualDataset, BucketBatchSampler, collate, map_processes
    from translator.data.tokenizer import build_tokenizers

    logging.basicConfig(level=logging.INFO, format="  [child] %(message)s", stream=sys.stderr)
    torch.set_num_threads(1)
    times, memory = {}, {}
    cfg = DataConfig(source="text", dir=folder, train="train", max_len=128,
                     cache_dir=str(Path(folder) / "cache"), num_proc=num_proc)

    current = {"stage": "read"}
    peak: dict[str, Any] = {"VmRSS": 0.0}

    def watch() -> None:
        # Where the peak happens and what it is made of (VmHWM alone says neither).
        while True:
            m = _memory()
            if m.get("VmRSS", 0.0) > peak["VmRSS"]:
                peak.update(m, stage=current["stage"])
            time.sleep(0.1)

    threading.Thread(target=watch, daemon=True).start()

    def stage(name: str, begin: float) -> None:
        times[name] = time.perf_counter() - begin
        memory[name] = _memory()
        current["stage"] = {"read": "tokenizer", "tokenizer": "tokenize"}.get(name, "epoch")

    begin = time.perf_counter()
    corpus = load_corpus(cfg)
    train = corpus["train"]
    stage("read", begin)
    begin = time.perf_counter()
    sample = tokenizer_sample(train, train_sample, cfg.split_seed)
    src_tok, tgt_tok = build_tokenizers(iter_texts(sample, "src"), iter_texts(sample, "tgt"),
                                        TokenizerConfig(kind="bpe", vocab_size=vocab,
                                                        shared=True))
    del sample
    stage("tokenizer", begin)
    begin = time.perf_counter()
    n_train = len(train)
    data = BilingualDataset.from_dataset(train, src_tok, tgt_tok, cfg.max_len, "train",
                                         cfg.max_ratio, num_proc)
    del corpus, train  # as in training: the text is not needed once tokenized
    stage("tokenize", begin)
    begin = time.perf_counter()
    sampler = BucketBatchSampler(data, max_tokens=max_tokens, seed=0)
    n_batches = 0
    for idx in sampler:
        collate([data[i] for i in idx])
        n_batches += 1
    stage("epoch", begin)
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"pairs": len(data), "train_pairs": n_train, "batches": n_batches,
                      "sample_pairs": min(n_train, train_sample or n_train),
                      "processes": map_processes(n_train, num_proc),
                      "peak_rss_mb": _memory()["VmHWM"], "worker_peak_rss_mb": workers,
                      "memory": memory, "peak": peak, **times}))


def _large_run(folder: Path, max_tokens: int, vocab: int, train_sample: int,
               num_proc: int) -> dict[str, Any]:
    """One size's child process over the corpus in `folder` (its cache goes there too)."""
    proc = subprocess.run([sys.executable, __file__, "--child", str(folder), str(max_tokens),
                           str(vocab), str(train_sample), str(num_proc)],
                          stdout=subprocess.PIPE, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"large-corpus child failed (exit {proc.returncode}); its log is "
                           "above")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _scale_rows(args: argparse.Namespace, sizes: list[int]) -> dict[str, float]:
    """The large-corpus rows: per size, a fresh child process runs the whole preparation;
    returns data.peak_rss_mb_<k>, data.tokenize_pairs_per_s_<k>, data.prepare_minutes_<k>
    and the stage times."""
    results: dict[str, float] = {}
    rows, stages = [], []
    with tempfile.TemporaryDirectory(prefix="bench-data-", dir=args.data_tmp) as tmp:
        full = Path(args.data_corpus) if args.data_corpus else Path(tmp) / "full"
        full.mkdir(parents=True, exist_ok=True)
        if _lines(full / "train.en") >= max(sizes) and _lines(full / "train.de") >= max(sizes):
            print(f"\n(reusing the corpus in {full})", file=sys.stderr)
        else:
            start = time.perf_counter()
            _write_large_corpus(full, max(sizes))
            generate = time.perf_counter() - start
            print(f"\n(generated {max(sizes):,} pairs in {generate:.0f} s, 2 processes; not "
                  "part of the preparation times)", file=sys.stderr)
        for n in sorted(sizes):
            folder = Path(tmp) / scale_key(n)
            folder.mkdir()
            _copy_prefix(full, folder, n)
            print(f"preparing {n:,} pairs ...", file=sys.stderr)
            big = _large_run(folder, args.data_max_tokens, args.data_vocab,
                             args.data_train_sample, args.data_num_proc)
            shutil.rmtree(folder)  # its caches: several GB at 10M pairs
            key = scale_key(n)
            prepare = big["read"] + big["tokenizer"] + big["tokenize"] + big["epoch"]
            results.update({
                f"data.peak_rss_mb_{key}": big["peak_rss_mb"],
                f"data.worker_peak_rss_mb_{key}": big["worker_peak_rss_mb"],
                f"data.seconds_{key}": prepare,
                f"data.prepare_minutes_{key}": prepare / 60,
                f"data.read_s_{key}": big["read"],
                f"data.tokenizer_train_s_{key}": big["tokenizer"],
                f"data.tokenize_s_{key}": big["tokenize"],
                f"data.tokenize_pairs_per_s_{key}": big["train_pairs"] / big["tokenize"],
                f"data.batching_s_{key}": big["epoch"],
                f"data.batching_pairs_per_s_{key}": big["pairs"] / big["epoch"],
            })
            rows.append([f"{n:,}", f"{big['train_pairs']:,}", big["read"], big["tokenizer"],
                         f"{big['sample_pairs']:,}", big["tokenize"],
                         f"{big['train_pairs'] / big['tokenize']:,.0f} ({big['processes']})",
                         big["epoch"], f"{big['batches']:,}", prepare / 60,
                         big["peak_rss_mb"], big["worker_peak_rss_mb"]])
            results[f"data.peak_rss_anon_mb_{key}"] = big["peak"].get("RssAnon", 0.0)
            print(f"  peak VmRSS {big['peak']['VmRSS']:,.0f} MiB during {big['peak']['stage']}"
                  f" (anonymous {big['peak'].get('RssAnon', 0):,.0f}, file-backed "
                  f"{big['peak'].get('RssFile', 0):,.0f})", file=sys.stderr)
            stages.append([f"{n:,}"] + [
                f"{big['memory'][s].get('RssAnon', 0):,.0f} / "
                f"{big['memory'][s].get('RssFile', 0):,.0f}"
                for s in ("read", "tokenizer", "tokenize", "epoch")])
    print("\n### Preparation at scale: built-in pairs as text files, one fresh process each\n")
    print(markdown_table(
        ["pairs", "train after cleaning", "read + clean s", "tokenizer train s",
         "tokenizer sample", "tokenize s", "tokenize pairs/s (processes)", "epoch of batches s",
         "batches", "prepare minutes", "peak RSS MiB", "map worker peak RSS MiB"], rows))
    print("\nRSS after each stage, anonymous / file-backed (mapped Arrow) MiB:\n")
    print(markdown_table(["pairs", "read", "tokenizer", "tokenize", "epoch"], stages))
    return results


def run(args: argparse.Namespace) -> dict[str, float]:
    """Run the suite, print its tables, return its keys."""
    from translator.data.corpus import load_corpus

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
    sizes = args.data_scale or [args.data_pairs or (100_000 if args.quick else 1_000_000)]
    sizes = [n for n in sizes if n > 0]
    if sizes:
        results.update(_scale_rows(args, sizes))
    return results


if __name__ == "__main__" and len(sys.argv) == 7 and sys.argv[1] == "--child":
    _large_child(sys.argv[2], *map(int, sys.argv[3:]))
elif __name__ == "__main__":
    sys.exit("run this suite through scripts/benchmark.py --suite data")
