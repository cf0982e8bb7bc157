"""Do the exports translate as we do? Quality/equality figures, not timings.

    python scripts/export_equivalence.py --run RUN [--split test] [--sentences 500]

On the first N sentences of a split of a run with a shared sentencepiece tokenizer:
1. Hugging Face: `translator export --to huggingface`, then `model.generate` (greedy, batched
   with padding) against our native greedy search in fp32: how many outputs are
   token-identical (and text-identical).
2. Argos: `translator export --to argos` (int8), installed with
   `argostranslate.package.install_from_path` into a fresh package folder and translated with
   `argostranslate.translate` (its own settings: beam 4, length penalty 0.2), against our int8
   CTranslate2 engine with the run's decoding settings: sacreBLEU of each; and greedy against
   greedy, how many are identical. Argos' sentence splitter downloads a model on first use
   (no network here), so it is replaced by one that keeps each line whole (each test line is
   one sentence).
Prints a Markdown table and, with --json, writes the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ARGOS = """
import json, sys
import argostranslate.package as package
import argostranslate.sbd as sbd
import argostranslate.translate as translate

package.install_from_path(sys.argv[1])
(pkg,) = package.get_installed_packages()
langs = {lang.code: lang for lang in translate.get_installed_languages()}
translation = langs[pkg.from_code].get_translation(langs[pkg.to_code])


class OneSentence(sbd.ISentenceBoundaryDetectionModel):
    def split_sentences(self, text):
        return [text]


translation.underlying.sentencizer = OneSentence()
lines = json.loads(open(sys.argv[2], encoding="utf-8").read())
print(json.dumps([translation.translate(line) for line in lines]))
"""


def argos_translate(package: Path, lines: list[str], home: Path, beam_size: int) -> list[str]:
    """Install `package` into a fresh Argos home and translate `lines` (child process:
    argostranslate reads its settings at import)."""
    env = {**os.environ, "ARGOS_PACKAGES_DIR": str(home / "packages"),
           "XDG_DATA_HOME": str(home / "data"), "XDG_CONFIG_HOME": str(home / "config"),
           "XDG_CACHE_HOME": str(home / "cache"), "ARGOS_BEAM_SIZE": str(beam_size)}
    src = home / "lines.json"
    home.mkdir(parents=True, exist_ok=True)
    src.write_text(json.dumps(lines), encoding="utf-8")
    out = subprocess.run([sys.executable, "-c", ARGOS, str(package), str(src)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def hf_greedy(folder: Path, translator: object, lines: list[str],
              batch_size: int) -> list[list[int]]:
    """Greedy ids from transformers' generate, each cut at our output cap for its source."""
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from translator.data.tokenizer import EOS_ID
    from translator.decode.search import output_caps

    model = AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    dec = translator.decoding(beam_size=1)
    src_ids = translator.encode(lines)
    caps = output_caps([len(s) for s in src_ids], dec.max_len_a, dec.max_len_b)
    outs: list[list[int]] = []
    for start in range(0, len(lines), batch_size):
        part = lines[start:start + batch_size]
        enc = tok(part, return_tensors="pt", padding=True)
        with torch.no_grad():
            gen = model.generate(**enc, num_beams=1, do_sample=False,
                                 max_new_tokens=max(caps[start:start + batch_size]))
        for i, row in enumerate(gen.tolist()):
            ids = row[1:]
            ids = ids[:ids.index(EOS_ID)] if EOS_ID in ids else ids
            outs.append(ids[:caps[start + i]])
    return outs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--sentences", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--work", type=Path, help="Folder for the exports (default: temp).")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    import sacrebleu
    import torch

    from translator.decode.ct2 import CT2Translator
    from translator.decode.translator import Translator
    from translator.evaluate import load_split
    from translator.export import export_run

    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    work = args.work or Path(tempfile.mkdtemp(prefix="export-eq-"))
    native = Translator.from_run(args.run, device="cpu", dtype="fp32")
    pairs = load_split(native.cfg.data, args.split)[:args.sentences]
    lines, refs = [s for s, _ in pairs], [t for _, t in pairs]

    ours = [list(hyps[0][0]) for hyps in native.search(
        native.encode(lines), native.decoding(beam_size=1), None, args.batch_size)]
    from translator.data.tokenizer import EOS_ID

    ours = [ids[:ids.index(EOS_ID)] if EOS_ID in ids else ids for ids in ours]
    hf_dir = export_run("huggingface", args.run, work / "hf", force=True)
    theirs = hf_greedy(hf_dir, native, lines, args.batch_size)
    same_ids = [i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a == b]
    differ = [i for i in range(len(lines)) if i not in set(same_ids)]
    same_text = sum(native.tgt_tok.decode(a) == native.tgt_tok.decode(b)
                    for a, b in zip(ours, theirs, strict=True))

    pkg = export_run("argos", args.run, work / "model.argosmodel", "int8", force=True)
    ct2 = CT2Translator.from_run(args.run, "int8")
    ct2_beam = ct2.translate(lines, args.batch_size)
    ct2_greedy = ct2.translate(lines, args.batch_size, beam_size=1)
    # Argos' own settings (beam 4, length penalty 0.2, CTranslate2's 256-token cap) on ours:
    # what separates the package from our engine when the settings are the same.
    ct2_as_argos = ct2.translate(lines, args.batch_size, beam_size=4, length_penalty=0.2,
                                 max_len_a=0, max_len_b=255)
    argos_beam = argos_translate(pkg, lines, work / "argos-beam", 4)
    argos_greedy = argos_translate(pkg, lines, work / "argos-greedy", 1)

    def bleu(hyps: list[str]) -> float:
        return round(sacrebleu.corpus_bleu(hyps, [refs]).score, 2)

    dec = ct2.decoding()
    results = {
        "sentences": len(lines),
        "hf_greedy_token_identical": len(same_ids),
        "hf_greedy_text_identical": same_text,
        "ours_ct2_int8_bleu": bleu(ct2_beam),
        "argos_int8_bleu": bleu(argos_beam),
        "argos_minus_ours_bleu": round(bleu(argos_beam) - bleu(ct2_beam), 2),
        "ours_ct2_int8_argos_settings_bleu": bleu(ct2_as_argos),
        "argos_identical_to_ours_argos_settings": sum(
            a == b for a, b in zip(argos_beam, ct2_as_argos, strict=True)),
        "ours_ct2_int8_greedy_bleu": bleu(ct2_greedy),
        "argos_int8_greedy_bleu": bleu(argos_greedy),
        "argos_greedy_identical": sum(a == b for a, b in zip(argos_greedy, ct2_greedy,
                                                              strict=True)),
    }
    rows = [
        ("HF generate vs native greedy (fp32), token-identical",
         f"{len(same_ids)} / {len(lines)}"),
        ("... text-identical", f"{same_text} / {len(lines)}"),
        (f"ours int8 CTranslate2, beam {dec.beam_size}, lp {dec.length_penalty}: BLEU",
         results["ours_ct2_int8_bleu"]),
        ("Argos int8 (beam 4, lp 0.2): BLEU", results["argos_int8_bleu"]),
        ("ours int8 with Argos' settings (beam 4, lp 0.2, cap 256): BLEU",
         results["ours_ct2_int8_argos_settings_bleu"]),
        ("Argos == ours with Argos' settings",
         f"{results['argos_identical_to_ours_argos_settings']} / {len(lines)}"),
        ("ours int8 greedy: BLEU", results["ours_ct2_int8_greedy_bleu"]),
        ("Argos int8 greedy: BLEU", results["argos_int8_greedy_bleu"]),
        ("Argos greedy == ours int8 greedy", f"{results['argos_greedy_identical']} / "
                                              f"{len(lines)}"),
    ]
    print("| figure | value |\n| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {value} |")
    for i in differ[:5]:
        print(f"\nHF differs on line {i + 1}: {lines[i]!r}\n  ours: "
              f"{native.tgt_tok.decode(ours[i])!r}\n  HF:   {native.tgt_tok.decode(theirs[i])!r}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
