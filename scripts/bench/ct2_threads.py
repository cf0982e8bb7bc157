"""CTranslate2's thread settings, measured: sentences/s of one exported model at batch 64 and at
batch 1 for each (intra_threads, inter_threads) setting, each in a fresh process, with or
without torch loaded (and its thread pool warmed) in the same process, and with OpenMP told
to spin or to sleep while it waits.

    python scripts/bench/ct2_threads.py EXPORT_DIR SOURCES.txt [--sentences 1000]

EXPORT_DIR is a folder written by `translator export` (or a run's export/ctranslate2-int8);
SOURCES.txt holds one source sentence per line. Why this exists: on a 2-core VM the engine was
slower with intra_threads=2 than with 1 (issue 32); the table says which setting is fast and
why (see docs/benchmarks.md, "CTranslate2 threads").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

CHILD = r"""
import json, os, sys, time
cfg = json.loads(sys.argv[1])
if cfg["torch"]:
    import torch
    torch.set_num_threads(os.cpu_count())
    a = torch.randn(256, 256)
    for _ in range(50):
        a @ a  # the pool now exists (and spins after each region, as in a serving process)
import ctranslate2, tokenizers
folder = cfg["dir"]
meta = json.load(open(os.path.join(folder, "translator.json")))
tok = tokenizers.Tokenizer.from_file(os.path.join(folder, f"tokenizer_{meta['src_lang']}.json"))
lines = [l.rstrip("\n") for l in open(cfg["sources"], encoding="utf-8")][: cfg["n"]]
batch = [["[SOS]", *e.tokens, "[EOS]"] for e in tok.encode_batch(lines, add_special_tokens=False)]
engine = ctranslate2.Translator(folder, device="cpu", intra_threads=cfg["intra"],
                                inter_threads=cfg["inter"])
kw = dict(beam_size=1, max_decoding_length=int(1.5 * 100 + 10), return_scores=False)
engine.translate_batch(batch[:64], max_batch_size=64, **kw)  # warm-up
out = {}
t = time.perf_counter()
engine.translate_batch(batch, max_batch_size=64, batch_type="examples", **kw)
out["batched"] = len(batch) / (time.perf_counter() - t)
few = batch[: cfg["n1"]]
t = time.perf_counter()
if cfg["inter"] > 1:  # concurrent single sentences, as a server's parallel requests
    futures = [engine.translate_batch([s], asynchronous=True, **kw)[0] for s in few]
    [f.result() for f in futures]
else:
    for s in few:
        engine.translate_batch([s], **kw)
out["batch1"] = len(few) / (time.perf_counter() - t)
print(json.dumps(out))
"""


def measure(folder: Path, sources: Path, intra: int, inter: int, torch_loaded: bool,
            policy: str | None, n: int, n1: int) -> dict[str, float]:
    """One setting, in a fresh process."""
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    cfg = {"dir": str(folder), "sources": str(sources), "intra": intra, "inter": inter,
           "torch": torch_loaded, "n": n, "n1": n1}
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cfg)], capture_output=True,
                          text=True, env=env, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export_dir", type=Path)
    parser.add_argument("sources", type=Path)
    parser.add_argument("--sentences", type=int, default=1000)
    parser.add_argument("--batch1-sentences", type=int, default=200)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    settings = [(1, 1, False, None), (2, 1, False, None), (0, 1, False, None),
                (2, 1, False, "PASSIVE"), (1, 1, True, None), (2, 1, True, None),
                (2, 1, True, "PASSIVE"), (1, 2, False, None), (1, 2, True, None)]
    rows = []
    print(f"{'intra':>5} {'inter':>5} {'torch':>5} {'OMP wait':>8} {'batch 64':>9} "
          f"{'batch 1':>8}  (sentences/s)")
    for intra, inter, torch_loaded, policy in settings:
        start = time.perf_counter()
        r = measure(args.export_dir, args.sources, intra, inter, torch_loaded, policy,
                    args.sentences, args.batch1_sentences)
        rows.append({"intra": intra, "inter": inter, "torch": torch_loaded,
                     "omp_wait_policy": policy or "default", **r})
        print(f"{intra:>5} {inter:>5} {'yes' if torch_loaded else 'no':>5} "
              f"{policy or 'default':>8} {r['batched']:>9.1f} {r['batch1']:>8.1f}"
              f"  ({time.perf_counter() - start:.0f} s)", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
