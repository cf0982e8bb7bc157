"""Training-speed suite: our model against two baselines, same machine, same data, one process.

- peak: this machine's fp32 matmul rate (2048x2048, median of repeats); on CUDA also bf16.
- ours: `translator` at the Multi30k config's model size, token-budget batches, one optimizer
  step per batch exactly as `translator train` does it (`Transformer.forward` with targets).
- tutorial: the classic tutorial way: every sentence padded to the corpus maximum length,
  batches of a fixed number of sentences, attention written out with explicit softmax and
  materialised mask tensors, a hand-written LayerNorm, log-softmax projection.
- stock: `torch.nn.Transformer` with the same embeddings, projection, batches and optimizer.
- loop: the real training loop (`translator.train.loop.train`, prefetching input pipeline) for
  as many steps, on the same config: `train.data_wait_fraction`, the share of its step time
  spent blocked waiting for the next batch (target: at most 0.02).

Throughput is non-pad source + target tokens per second over a steady window after warm-up.
MFU = model FLOPs per second / peak, counting useful (non-pad) work only:

    matmul FLOPs  = 6 * (src_tokens * P_src + tgt_tokens * P_tgt)
        P_src = n_enc * (4 d^2 + 2 d d_ff) + n_dec * 2 d^2     (encoder; cross-attn K/V)
        P_tgt = n_dec * (6 d^2 + 2 d d_ff) + d * V_tgt          (decoder; projection)
    attention FLOPs = 12 d * (n_enc * sum s^2 + n_dec * (sum t^2 / 2 + sum s t))

(6 = 2 FLOPs per multiply-add x 3 for forward + backward; s, t: real lengths per sentence;
causal self-attention counts half its square.)
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.common import markdown_table, peak_rss_mb

ROOT = Path(__file__).resolve().parents[2]


def add_arguments(group: argparse._ArgumentGroup) -> None:
    """Options of this suite."""
    group.add_argument("--train-config", type=Path,
                       default=ROOT / "configs" / "multi30k_en_de.yaml",
                       help="Config whose model size and tokenizer the train suite uses.")
    group.add_argument("--train-steps", type=int, default=0,
                       help="Timed steps per model (default 30, --quick 8).")
    group.add_argument("--tutorial-batch", type=int, default=0,
                       help="Sentences per tutorial batch (default: the mean of ours).")
    group.add_argument("--compile", action="store_true", help="Also time ours with torch.compile.")
    group.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                       help="Autocast dtype for all three models.")
    group.add_argument("--train-device", default="cpu",
                       help="cpu or cuda (then MFU is against the GPU's measured matmul peak "
                       "in the same precision).")
    group.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE",
                       help="Override a key of --train-config, e.g. model.d_model=512 "
                       "(repeatable).")
    group.add_argument("--train-rounds", type=int, default=0,
                       help="Rounds of ours and stock alternating on the same batches; the "
                       "ratio is the median over rounds (default 3, --quick 1).")
    group.add_argument("--no-tutorial", action="store_true",
                       help="Skip the tutorial baseline (slow at large sizes).")



def measure_peak_gflops(dtype: torch.dtype = torch.float32, n: int = 2048, reps: int = 10,
                        device: str = "cpu") -> float:
    """Median rate of n x n matmuls, in GFLOP/s."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(reps):
        if device != "cpu":
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if device != "cpu":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e9


@dataclass
class Dims:
    d_model: int
    n_enc: int
    n_dec: int
    heads: int
    d_ff: int
    src_vocab: int
    tgt_vocab: int


def batch_flops(dims: Dims, src_lens: list[int], tgt_lens: list[int]) -> float:
    """Useful model FLOPs of one training step (formula in the module docstring)."""
    d, ff = dims.d_model, dims.d_ff
    p_src = dims.n_enc * (4 * d * d + 2 * d * ff) + dims.n_dec * 2 * d * d
    p_tgt = dims.n_dec * (6 * d * d + 2 * d * ff) + d * dims.tgt_vocab
    matmul = 6 * (sum(src_lens) * p_src + sum(tgt_lens) * p_tgt)
    attn = 12 * d * (dims.n_enc * sum(s * s for s in src_lens) + dims.n_dec * (
        sum(t * t for t in tgt_lens) / 2 + sum(s * t for s, t in zip(src_lens, tgt_lens,
                                                                     strict=True))))
    return matmul + attn


# --- the tutorial baseline --------------------------------------------------------------------


class TutorialLayerNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.alpha, self.bias, self.eps = nn.Parameter(torch.ones(d)), nn.Parameter(
            torch.zeros(d)), eps

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(dim=-1, keepdim=True)
        std = x.std(dim=-1, keepdim=True)
        return self.alpha * (x - mean) / (std + self.eps) + self.bias


class TutorialAttention(nn.Module):
    def __init__(self, d: int, h: int, dropout: float) -> None:
        super().__init__()
        self.h, self.d_k = h, d // h
        self.w_q, self.w_k, self.w_v, self.w_o = (nn.Linear(d, d, bias=False) for _ in range(4))
        self.dropout = nn.Dropout(dropout)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        b = q.size(0)
        q = self.w_q(q).view(b, -1, self.h, self.d_k).transpose(1, 2)
        k = self.w_k(k).view(b, -1, self.h, self.d_k).transpose(1, 2)
        v = self.w_v(v).view(b, -1, self.h, self.d_k).transpose(1, 2)
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.d_k)
        scores = scores.masked_fill(mask == 0, -1e9)
        x = self.dropout(scores.softmax(dim=-1)) @ v
        return self.w_o(x.transpose(1, 2).contiguous().view(b, -1, self.h * self.d_k))


class TutorialBlock(nn.Module):
    def __init__(self, d: int, h: int, ff: int, dropout: float, cross: bool) -> None:
        super().__init__()
        self.self_attn = TutorialAttention(d, h, dropout)
        self.cross_attn = TutorialAttention(d, h, dropout) if cross else None
        self.ff = nn.Sequential(nn.Linear(d, ff), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ff, d))
        self.norms = nn.ModuleList(TutorialLayerNorm(d) for _ in range(3 if cross else 2))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor, memory: Tensor | None = None,
                src_mask: Tensor | None = None) -> Tensor:
        y = self.norms[0](x)
        x = x + self.dropout(self.self_attn(y, y, y, mask))
        if self.cross_attn is not None:
            y = self.norms[1](x)
            x = x + self.dropout(self.cross_attn(y, memory, memory, src_mask))
        return x + self.dropout(self.ff(self.norms[-1](x)))


class _Baseline(nn.Module):
    """Our embeddings and positional encodings plus a vocabulary projection: the parts both
    baselines share with our model, so that only the Transformer in between differs."""

    def __init__(self, dims: Dims, max_len: int, dropout: float) -> None:
        super().__init__()
        from translator.model.transformer import InputEmbedding, PositionalEncoding

        d = dims.d_model
        self.src_embed, self.tgt_embed = (InputEmbedding(dims.src_vocab, d),
                                          InputEmbedding(dims.tgt_vocab, d))
        self.src_pos, self.tgt_pos = (PositionalEncoding(d, max_len, dropout),
                                      PositionalEncoding(d, max_len, dropout))
        self.proj = nn.Linear(d, dims.tgt_vocab)


class TutorialTransformer(_Baseline):
    """The tutorial model: same sizes as ours, written the tutorial way."""

    def __init__(self, dims: Dims, max_len: int, dropout: float) -> None:
        super().__init__(dims, max_len, dropout)
        d = dims.d_model
        self.enc = nn.ModuleList(TutorialBlock(d, dims.heads, dims.d_ff, dropout, False)
                                 for _ in range(dims.n_enc))
        self.dec = nn.ModuleList(TutorialBlock(d, dims.heads, dims.d_ff, dropout, True)
                                 for _ in range(dims.n_dec))
        self.enc_norm, self.dec_norm = TutorialLayerNorm(d), TutorialLayerNorm(d)

    def forward(self, src: Tensor, tgt: Tensor, src_mask: Tensor, tgt_mask: Tensor) -> Tensor:
        x = self.src_pos(self.src_embed(src))
        for block in self.enc:
            x = block(x, src_mask)
        memory = self.enc_norm(x)
        y = self.tgt_pos(self.tgt_embed(tgt))
        for block in self.dec:
            y = block(y, tgt_mask, memory, src_mask)
        return torch.log_softmax(self.proj(self.dec_norm(y)), dim=-1)


# --- the stock baseline -----------------------------------------------------------------------


class StockTransformer(_Baseline):
    """`torch.nn.Transformer` between our embeddings and a vocabulary projection."""

    def __init__(self, dims: Dims, max_len: int, dropout: float) -> None:
        super().__init__(dims, max_len, dropout)
        self.transformer = nn.Transformer(dims.d_model, dims.heads, dims.n_enc, dims.n_dec,
                                          dims.d_ff, dropout, batch_first=True,
                                          norm_first=True)

    def forward(self, src: Tensor, tgt: Tensor, pad_id: int) -> Tensor:
        causal = nn.Transformer.generate_square_subsequent_mask(tgt.size(1), device=tgt.device)
        h = self.transformer(
            self.src_pos(self.src_embed(src)), self.tgt_pos(self.tgt_embed(tgt)),
            tgt_mask=causal, src_key_padding_mask=src == pad_id,
            tgt_key_padding_mask=tgt == pad_id, memory_key_padding_mask=src == pad_id,
            tgt_is_causal=True)
        return self.proj(h)


# --- the measurement --------------------------------------------------------------------------


def _load_data(args: argparse.Namespace):
    """Train pairs tokenized with the config's tokenizer; dims from its model section."""
    from translator.config import load_config
    from translator.data.corpus import load_splits
    from translator.data.dataset import BilingualDataset
    from translator.data.tokenizer import build_tokenizer

    overrides = []
    if args.data_dir:
        overrides.append(f"data.dir={args.data_dir}")
    if args.train_config.is_file() and args.data_dir:
        cfg = load_config(args.train_config, [*overrides, *args.train_set])
    else:  # no corpus given: the built-in one, at the Multi30k model size
        cfg = load_config(ROOT / "configs" / "toy.yaml", [
            "model.d_model=256", "model.layers=3", "model.heads=4", "model.d_ff=512",
            *args.train_set])
    pairs = load_splits(cfg.data)["train"]
    src_tok = build_tokenizer((s for s, _ in pairs), cfg.tokenizer)
    tgt_tok = build_tokenizer((t for _, t in pairs), cfg.tokenizer)
    data = BilingualDataset.from_pairs(pairs, src_tok, tgt_tok, cfg.data.max_len, "train")
    return cfg, data


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_steps(step, batches, warmup: int, steps: int,
                device: torch.device = torch.device("cpu")) -> tuple[float, int]:
    """Seconds for `steps` calls of step(batch) after `warmup` calls; batches cycle. On a GPU
    the clock stops only when the queued work has finished."""
    for i in range(warmup):
        step(batches[i % len(batches)])
    _sync(device)
    t = time.perf_counter()
    for i in range(warmup, warmup + steps):
        step(batches[i % len(batches)])
    _sync(device)
    return time.perf_counter() - t, warmup


def measure_data_wait(cfg, steps: int, device: torch.device, precision: str) -> float:
    """Share of step time the real training loop (`translator.train.loop.train`, with its
    prefetching input pipeline) spends blocked waiting for the next batch, over `steps`
    optimizer steps of `cfg`'s model and data in a throwaway run folder."""
    import copy
    import tempfile

    from translator.train.loop import train

    cfg = copy.deepcopy(cfg)
    tc = cfg.training
    tc.max_steps, tc.epochs, tc.precision = steps, max(tc.epochs, 1000), precision
    # One validation (at the stop), not one per epoch: a small corpus has short epochs.
    tc.valid_every, tc.valid_max_sentences, tc.examples = 10**9, 16, 0
    tc.log_every, tc.save_every = 10**9, 0
    with tempfile.TemporaryDirectory(prefix="bench-train-") as folder:
        cfg.output.dir = folder
        result = train(cfg, overwrite=True, device=str(device), quiet=True)
    return result.data_wait_fraction


def run(args: argparse.Namespace) -> dict[str, float]:
    """Run the suite; print a table; return the `train.*` results."""
    from translator.data.dataset import BucketBatchSampler, collate
    from translator.data.tokenizer import PAD_ID
    from translator.model.transformer import build_transformer

    torch.manual_seed(0)
    random.seed(0)
    steps = args.train_steps or (8 if args.quick else 30)
    warmup = 3 if args.quick else 5
    rounds = args.train_rounds or (1 if args.quick else 3)
    device = torch.device(args.train_device)
    low = torch.bfloat16 if args.precision == "bf16" else torch.float32
    # MFU against the peak of the number format the products run in.
    peak = measure_peak_gflops(low if device.type == "cuda" else torch.float32,
                               device=str(device))
    cfg, data = _load_data(args)
    m, tc = cfg.model, cfg.training
    dims = Dims(m.d_model, m.layers, m.decoder_layers or m.layers, m.heads, m.d_ff,
                0, 0)
    max_src = max(data.src_lens) + 2
    max_tgt = max(data.tgt_lens) + 1
    dims.src_vocab = int(data.src_flat.max()) + 1
    dims.tgt_vocab = int(data.tgt_flat.max()) + 1
    n_batches = warmup + steps
    sampler = BucketBatchSampler(data, tc.max_tokens or 4096, tc.batch_size, seed=0)
    bucketed = sampler.batches()[:n_batches]
    batches = [collate([data[i] for i in b]).to(device) for b in bucketed]
    lens = [([data.src_lens[i] + 2 for i in b], [data.tgt_lens[i] + 1 for i in b])
            for b in bucketed]
    amp = torch.autocast(device.type, dtype=low, enabled=args.precision == "bf16")

    def optimizer(model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9)

    def measure(name: str, model: nn.Module, step_fn, step_batches, step_lens) -> dict:
        opt = optimizer(model)
        model.train()

        def step(i_batch):
            batch, _ = i_batch
            with amp:
                loss = step_fn(model, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()

        pairs = list(zip(step_batches, step_lens, strict=True))
        seconds, skip = _time_steps(step, pairs, warmup, steps, device)
        timed = [pairs[i % len(pairs)] for i in range(skip, skip + steps)]
        tokens = sum(sum(s) + sum(t) for _, (s, t) in timed)
        flops = sum(batch_flops(dims, s, t) for _, (s, t) in timed)
        return {"name": name, "tps": tokens / seconds, "mfu": flops / seconds / 1e9 / peak,
                "step_s": seconds / steps}

    ls = tc.label_smoothing
    ours = build_transformer(dims.src_vocab, dims.tgt_vocab, max_src, max_tgt, m.d_model,
                             m.layers, m.heads, m.dropout, m.d_ff,
                             decoder_layers=m.decoder_layers or None, norm=m.norm,
                             tie_embeddings=m.tie_embeddings,
                             attention_dropout=m.attention_dropout).to(device)

    def ours_step(model, b):
        return model(b.src, b.tgt_in, b.src_mask, b.tgt_out, PAD_ID, ls)

    stock = StockTransformer(dims, max(max_src, max_tgt), m.dropout).to(device)

    def stock_step(model, b):
        logits = model(b.src, b.tgt_in, PAD_ID)
        return F.cross_entropy(logits.flatten(0, 1), b.tgt_out.flatten(), ignore_index=PAD_ID,
                               label_smoothing=ls)

    # Ours and stock alternate in rounds on the same batches: a noisy machine (a neighbour,
    # a frequency change) then hits both alike, and the median ratio over rounds is the result.
    ours_runs, stock_runs = [], []
    for _ in range(rounds):
        ours_runs.append(measure("ours", ours, ours_step, batches, lens))
        stock_runs.append(measure("stock", stock, stock_step, batches, lens))
    ratios = [o["tps"] / st["tps"] for o, st in zip(ours_runs, stock_runs, strict=True)]

    def median_run(runs: list[dict]) -> dict:
        return sorted(runs, key=lambda r: r["tps"])[len(runs) // 2]

    results = [median_run(ours_runs)]
    del stock
    if args.compile:
        compiled = torch.compile(ours, dynamic=True)
        results.append(measure("ours+compile", compiled, ours_step, batches, lens))
    del ours

    # Tutorial: same sentences, fixed-size batches in random order, padded to the corpus max.
    per_batch = args.tutorial_batch or max(1, round(sum(len(b) for b in bucketed) /
                                                   len(bucketed)))
    if not args.no_tutorial:
        order = list(range(len(data)))
        random.Random(0).shuffle(order)
        t_batches, t_lens = [], []
        for k in range(n_batches):
            idx = order[k * per_batch:(k + 1) * per_batch]
            items = [data[i] for i in idx]
            b = collate(items)
            src = F.pad(b.src, (0, max_src - b.src.size(1)), value=PAD_ID)
            tgt_in = F.pad(b.tgt_in, (0, max_tgt - b.tgt_in.size(1)), value=PAD_ID)
            tgt_out = F.pad(b.tgt_out, (0, max_tgt - b.tgt_out.size(1)), value=PAD_ID)
            t_batches.append((src.to(device), tgt_in.to(device), tgt_out.to(device)))
            t_lens.append(([data.src_lens[i] + 2 for i in idx],
                           [data.tgt_lens[i] + 1 for i in idx]))
        tutorial = TutorialTransformer(dims, max(max_src, max_tgt), m.dropout).to(device)

        def tutorial_step(model, b):
            src, tgt_in, tgt_out = b
            src_mask = (src != PAD_ID).unsqueeze(1).unsqueeze(1).int()  # [B, 1, 1, S]
            causal = torch.triu(torch.ones(1, tgt_in.size(1), tgt_in.size(1),
                                           device=src.device), diagonal=1) == 0
            tgt_mask = (tgt_in != PAD_ID).unsqueeze(1).unsqueeze(1).int() & causal.int()
            out = model(src, tgt_in, src_mask, tgt_mask)
            return F.cross_entropy(out.view(-1, out.size(-1)), tgt_out.view(-1),
                                   ignore_index=PAD_ID, label_smoothing=ls)

        results.append(measure("tutorial", tutorial, tutorial_step, t_batches, t_lens))
        del tutorial
    results.append(median_run(stock_runs))
    by = {r["name"]: r for r in results}
    rss = peak_rss_mb()
    rows = [[r["name"], r["tps"], r["mfu"], r["step_s"] * 1000] for r in results]
    print(f"\n### train suite: d_model {m.d_model}, {dims.n_enc}+{dims.n_dec} layers, "
          f"{m.heads} heads, d_ff {m.d_ff}, vocab {dims.src_vocab}/{dims.tgt_vocab}, "
          f"max_tokens {tc.max_tokens}, tutorial batch {per_batch} x {max_src}/{max_tgt}, "
          f"{torch.get_num_threads()} threads, {args.precision}, {steps} timed steps\n")
    kind = ("bf16" if low == torch.bfloat16 else "fp32") if device.type == "cuda" else "fp32"
    print(f"device {device}; peak {kind} matmul: {peak:.1f} GFLOP/s; peak RSS {rss:.0f} MiB\n")
    print(markdown_table(["model", "non-pad tokens/s", "MFU", "ms/step"], rows))
    ratio = statistics.median(ratios)
    print(f"\nours / stock over {rounds} alternating rounds: median {ratio:.3f}x (each round: "
          f"{', '.join(f'{r:.3f}' for r in ratios)}; spread {min(ratios):.3f}-"
          f"{max(ratios):.3f})")
    wait = measure_data_wait(cfg, warmup + steps, device, args.precision)
    print(f"training loop (translator.train.loop, {warmup + steps} steps): waiting for data "
          f"{100 * wait:.2f}% of step time")
    out = {
        "train.peak_gflops": peak,
        "train.ours_tps": by["ours"]["tps"],
        "train.stock_tps": by["stock"]["tps"],
        "train.ours_mfu": by["ours"]["mfu"],
        "train.ratio_vs_stock": ratio,
        "train.ratio_vs_stock_min": min(ratios),
        "train.ratio_vs_stock_max": max(ratios),
        "train.rounds": float(rounds),
        "train.peak_rss_mb": rss,
        "train.data_wait_fraction": wait,
    }
    if "tutorial" in by:
        out["train.tutorial_tps"] = by["tutorial"]["tps"]
        out["train.ratio_vs_tutorial"] = by["ours"]["tps"] / by["tutorial"]["tps"]
    if "ours+compile" in by:
        out["train.ours_compiled_tps"] = by["ours+compile"]["tps"]
    return out
