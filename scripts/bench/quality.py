"""Quality suite: train the Multi30k config from scratch for M minutes of wall time on this
machine, then score test_2016_flickr with sacreBLEU (13a, cased, raw references) and chrF,
greedy and beam 4.

`--minutes 12 30 60` trains once and stops to evaluate at each mark: the run is resumed
exactly (same batches, RNG and schedule), so the 12-minute numbers are those of a 12-minute
run. The clock counts the training loop (steps and in-loop validations), not data loading or
the evaluations between marks. At each mark the checkpoint to score is chosen on the
validation split: best.pt (highest validation BLEU during training) or the average of the last
K periodic checkpoints for each K in `--average` (default 3 and 5), whichever scores highest
on validation (greedy); the run keeps as many periodic checkpoints as the largest K needs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench.common import markdown_table

ROOT = Path(__file__).resolve().parents[2]


def add_arguments(group: argparse._ArgumentGroup) -> None:
    """Options of this suite."""
    group.add_argument("--minutes", type=float, nargs="+", default=[12.0],
                       help="Training wall-time marks in minutes (cumulative), e.g. 12 30 60.")
    group.add_argument("--quality-config", type=Path,
                       default=ROOT / "configs" / "multi30k_en_de.yaml")
    group.add_argument("--quality-run", type=Path, default=ROOT / "runs" / "quality",
                       help="Run folder (replaced).")
    group.add_argument("--average", type=int, nargs="*", default=[3, 5],
                       help="Also try the average of the last K checkpoints, for each K given "
                            "(none: best.pt only).")
    group.add_argument("--start-minutes", type=float, default=0.0,
                       help="Continue the existing --quality-run, which has trained this long.")
    group.add_argument("--set", dest="quality_set", action="append", default=[],
                       help="Config override for the quality run (repeatable).")


def _pick_checkpoint(run_dir: Path, ks: list[int], valid: list[tuple[str, str]]):
    """(translator, label, valid BLEU) of the best of best.pt and the last-k averages."""
    from translator.checkpoint import atomic_save, average_checkpoints
    from translator.decode.translator import Translator
    from translator.evaluate import evaluate_pairs
    from translator.run import RunLayout

    layout = RunLayout(run_dir)
    candidates = [("best", layout.best)]
    numbered = layout.numbered_checkpoints()
    for k in sorted(set(ks)):
        if k > 1 and len(numbered) >= k:
            # One file per k: the picked one stays on disk for `translator evaluate`.
            avg = layout.checkpoints / f"averaged_last{k}.pt"
            atomic_save(average_checkpoints(numbered[-k:]), avg)
            candidates.append((f"average of last {k}", avg))
    scored = []
    for label, path in candidates:
        translator = Translator.from_run(run_dir, checkpoint=path, device="cpu")
        report, _ = evaluate_pairs(translator, valid, beam_size=1)
        scored.append((report["bleu"], label, translator))
    bleu, label, translator = max(scored, key=lambda x: x[0])
    return translator, label, bleu


def run(args: argparse.Namespace) -> dict[str, float]:
    """Run the suite; print a table; return the `quality.*` results."""
    from translator.config import load_config
    from translator.data.corpus import load_splits
    from translator.evaluate import evaluate_pairs
    from translator.train.loop import train

    if not args.data_dir:
        raise SystemExit("--suite quality needs --data-dir (the Multi30k folder)")
    marks = [m for m in sorted(args.minutes) if m > args.start_minutes]
    overrides = [f"data.dir={args.data_dir}", "training.epochs=100000",
                 f"output.dir={args.quality_run}",
                 f"training.keep_last={max([3, *args.average])}", *args.quality_set]
    rows, out = [], {}
    done_minutes, total_tokens, total_seconds = args.start_minutes, 0, 0.0
    for i, mark in enumerate(marks):
        cfg = load_config(args.quality_config,
                          [*overrides, f"training.max_minutes={mark - done_minutes}"])
        fresh = i == 0 and not args.start_minutes
        result = train(cfg, resume=not fresh, overwrite=fresh, quiet=True)
        done_minutes = mark
        total_tokens += result.tokens
        total_seconds += result.seconds
        splits = load_splits(cfg.data)
        t = time.perf_counter()
        translator, label, valid_bleu = _pick_checkpoint(args.quality_run, args.average,
                                                         splits["valid"])
        greedy, _ = evaluate_pairs(translator, splits["test"], beam_size=1)
        beam, _ = evaluate_pairs(translator, splits["test"], beam_size=4)
        tps = total_tokens / total_seconds
        rows.append([f"{mark:g}", result.state.step, result.state.epoch, f"{tps:,.0f}", label,
                     valid_bleu, greedy["bleu"], beam["bleu"], beam.get("bleu_tok_lc"),
                     beam["chrf"], beam["length_ratio"], f"{time.perf_counter() - t:.0f}"])
        tag = f"quality.m{mark:g}"
        out.update({f"{tag}.bleu_greedy": greedy["bleu"], f"{tag}.bleu_beam4": beam["bleu"],
                    f"{tag}.chrf": beam["chrf"], f"{tag}.steps": result.state.step})
        if beam.get("bleu_tok_lc") is not None:
            out[f"{tag}.bleu_tok_lc_beam4"] = out["quality.bleu_tok_lc_beam4"] = \
                beam["bleu_tok_lc"]
        out.update({"quality.bleu_greedy": greedy["bleu"], "quality.bleu_beam4": beam["bleu"],
                    "quality.chrf": beam["chrf"], "quality.minutes": mark,
                    "quality.train_tokens_per_s": tps})
        print(f"[quality] {mark:g} min: step {result.state.step}, greedy {greedy['bleu']}, "
              f"beam4 {beam['bleu']}, beam4 tokenized lowercased {beam.get('bleu_tok_lc')} "
              f"({label})", flush=True)
    print(f"\n### quality suite: {args.quality_config.name} {' '.join(args.quality_set)}; "
          f"test_2016_flickr, sacreBLEU {beam['bleu_signature']}\n")
    print(markdown_table(["minutes", "steps", "epochs", "train tok/s", "checkpoint",
                          "valid BLEU (greedy)", "test BLEU greedy", "test BLEU beam 4",
                          "test tok-lc BLEU beam 4 (papers' metric)", "test chrF beam 4",
                          "length ratio beam 4", "eval s"], rows))
    return out
