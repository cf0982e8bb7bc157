"""`translator translate`, `evaluate` and `attention` through the CLI and the library, on a
run folder made in a second from a small random model (the mechanics under test: order, empty
lines, files, sentence splitting, odd characters, n-best, errors, reports, images)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tests.helpers import save_config
from translator.checkpoint import FORMAT_VERSION, atomic_save
from translator.cli import app
from translator.config import config_from_dict
from translator.data.text import split_into_sentences, split_lines
from translator.data.tokenizer import EOS_ID, build_tokenizer
from translator.decode.translator import Translator
from translator.modeling import build_model
from translator.run import RunLayout

pytestmark = pytest.mark.usefixtures("single_thread")

EN = ["The dog sees the cat.", "A man reads a book.", "The woman sleeps.", "Dr. Smith is here!"]
DE = ["Der Hund sieht die Katze.", "Ein Mann liest ein Buch.", "Die Frau schläft.",
      "Dr. Smith ist hier!"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder with tokenizers from a few sentences and a random d_model-16 model whose
    [EOS] bias makes outputs a few tokens long."""
    root = tmp_path_factory.mktemp("runs") / "fake"
    cfg = config_from_dict({
        "data": {"source": "builtin", "max_len": 24},
        "model": {"d_model": 16, "layers": 2, "heads": 2, "d_ff": 32, "dropout": 0.0},
        "decoding": {"beam_size": 3},
        "output": {"dir": str(root)},
    }, name="fake")
    layout = RunLayout(root)
    root.mkdir(parents=True)
    save_config(cfg, layout.config)
    src_tok, tgt_tok = build_tokenizer(EN, cfg.tokenizer), build_tokenizer(DE, cfg.tokenizer)
    src_tok.save(layout.tokenizer("en"))
    tgt_tok.save(layout.tokenizer("de"))
    torch.manual_seed(0)
    model = build_model(cfg, src_tok.vocab_size, tgt_tok.vocab_size)
    with torch.no_grad():
        model.projection.proj.bias[EOS_ID] += 2.5
    atomic_save({"format_version": FORMAT_VERSION, "model": model.state_dict(),
                 "config": cfg.to_dict(),
                 "vocab": {"src": src_tok.vocab_size, "tgt": tgt_tok.vocab_size}},
                layout.latest)
    return root


@pytest.fixture(scope="module")
def translator(run_dir: Path) -> Translator:
    return Translator.from_run(run_dir, device="cpu")


def _invoke(*args: str, input: str | bytes | None = None) -> tuple[int, str, str]:
    res = CliRunner().invoke(app, list(args), input=input)
    return res.exit_code, res.stdout, res.stderr


ODD = ["🙂🙂 The dog 🐕 sees the cat.", "\x07\x1b[31mThe cat\x00 sleeps.\x1b[0m",
       "مرحبا بالعالم The man.", "\u202eThe woman reads.\u202c", "zzz qqq xyzzy",
       "\u200b\ufeff\ufffd", "\x07\x1b", "The dog\u2028sees\x0cthe cat.", "\ud800 broken"]


# ---------------------------------------------------------------- library


def test_translate_keeps_order_and_empty_texts(translator: Translator) -> None:
    texts = ["The dog sees the cat.", "", "   ", "A man reads a book.", "The woman sleeps."]
    out = translator.translate(texts, batch_size=2)
    alone = [translator.translate([t])[0] for t in texts]
    assert out == alone
    assert out[1] == "" and out[2] == ""


def test_odd_characters_never_crash(translator: Translator) -> None:
    for beam in (1, 3):
        out = translator.translate(ODD, beam_size=beam, split_sentences=True)
        assert len(out) == len(ODD) and all(isinstance(t, str) for t in out)
        assert "\n" not in "".join(out)
    assert translator.translate(["\x07\x1b"]) == [""]  # only control characters: empty


def test_paragraph_is_split_translated_and_joined(translator: Translator) -> None:
    paragraph = "The dog sees the cat. A man reads a book! The woman sleeps."
    parts = split_into_sentences(paragraph)
    assert parts == ["The dog sees the cat.", "A man reads a book!", "The woman sleeps."]
    joined = " ".join(t for t in translator.translate(parts) if t)
    assert translator.translate([paragraph], split_sentences=True) == [joined]


@pytest.mark.parametrize(("text", "parts"), [
    ("One sentence only", ["One sentence only"]),
    ("Dr. Smith sees J. Doe. He waves.", ["Dr. Smith sees J. Doe.", "He waves."]),
    ('He said "Stop." Then he left.', ['He said "Stop."', "Then he left."]),
    ("Wait... what? Yes!  No.", ["Wait... what?", "Yes!", "No."]),
    ("It costs 3.50 euros. Fine.", ["It costs 3.50 euros.", "Fine."]),
    ("e.g. this one. And that.", ["e.g. this one.", "And that."]),
    ("  ", []),
])
def test_split_into_sentences(text: str, parts: list[str]) -> None:
    assert split_into_sentences(text) == parts


def test_split_lines_only_at_line_feeds() -> None:
    assert split_lines("a\r\nb\n\nc\x0cd\u2028e\x85f\n") == ["a", "b", "", "c\x0cd\u2028e\x85f"]
    assert split_lines("") == []
    assert split_lines("x") == ["x"]


def test_nbest_scores_sorted_and_beam_one_is_greedy(translator: Translator) -> None:
    nbest = translator.translate_nbest(["The dog sees the cat.", ""], n_best=3)
    assert len(nbest[0]) == 3 and nbest[1] == []
    scores = [s for _, s in nbest[0]]
    assert scores == sorted(scores, reverse=True)
    assert translator.translate(["The dog sees the cat."])[0] == nbest[0][0][0]
    greedy = translator.translate(EN, beam_size=1)
    beam1 = [h[0][0] for h in translator.translate_nbest(EN, n_best=1, beam_size=1,
                                                          length_penalty=0.0)]
    assert greedy == beam1


# ---------------------------------------------------------------- translate command


def test_translate_sentence_argument(run_dir: Path, translator: Translator) -> None:
    code, out, _ = _invoke("translate", "The dog sees the cat.", "--run", str(run_dir))
    assert code == 0
    assert out == translator.translate(["The dog sees the cat."])[0] + "\n"
    code, out, _ = _invoke("translate", "The dog sees the cat.", "--run", str(run_dir),
                           "--beam", "1")
    assert code == 0
    assert out == translator.translate(["The dog sees the cat."], beam_size=1)[0] + "\n"


def test_translate_odd_argument(run_dir: Path) -> None:
    # An undecodable byte in a command-line argument arrives as a lone surrogate.
    for text in ("caf\udce9 \u202eThe dog.", "🙂", "\x1b[31m The cat."):
        code, out, err = _invoke("translate", text, "--run", str(run_dir))
        assert code == 0, err
        assert out.count("\n") == 1


def test_translate_stdin_keeps_lines(run_dir: Path, translator: Translator) -> None:
    lines = ["The dog sees the cat.", "", "A man reads a book. The woman sleeps.", ""]
    for arg in ([], ["-"]):
        code, out, _ = _invoke("translate", *arg, "--run", str(run_dir),
                               input="\n".join(lines) + "\n")
        assert code == 0
        assert out.split("\n")[:-1] == translator.translate(lines, split_sentences=True)


def test_translate_file_to_file(run_dir: Path, translator: Translator, tmp_path: Path) -> None:
    lines = [EN[i % len(EN)] if i % 3 else "" for i in range(40)] + ODD[:-1]  # no surrogate
    src = tmp_path / "in.txt"
    src.write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")
    out = tmp_path / "out.txt"
    code, stdout, _ = _invoke("translate", "--input", str(src), "--output", str(out),
                              "--run", str(run_dir), "--batch-size", "4")
    assert code == 0 and stdout == ""
    got = out.read_text(encoding="utf-8").split("\n")
    assert got[-1] == "" and len(got) - 1 == len(lines)
    assert got[:-1] == translator.translate(lines, split_sentences=True)
    assert all(g == "" for g, line in zip(got, lines, strict=False) if not line)
    assert not list(tmp_path.glob(".out.txt.*"))  # the temporary file was renamed


def test_nbest_beam_narrower_than_n_is_an_error(run_dir: Path) -> None:
    code, out, err = _invoke("translate", "The dog sees the cat.", "--run", str(run_dir),
                             "--n-best", "3", "--beam", "2")
    assert code == 2 and out == ""
    assert err.startswith("error: --n-best 3 needs --beam 3") and len(err.splitlines()) == 1
    # Without --beam, the run's beam (3 here) is widened to N.
    code, out, err = _invoke("translate", "The dog sees the cat.", "--run", str(run_dir),
                             "--n-best", "5")
    assert code == 0, err
    assert [line.split("\t")[0] for line in out.splitlines()] == ["1"] * 5


def test_nbest_keeps_sentence_splitting(run_dir: Path, translator: Translator) -> None:
    """A line of several sentences: its k-th alternative joins the k-th hypothesis of each
    sentence, scored by their sum; --no-split takes the line whole."""
    line = "The dog sees the cat. The woman sleeps."
    code, out, err = _invoke("translate", "--run", str(run_dir), "--n-best", "3",
                             input=f"{line}\n\nA man reads a book.\n")
    assert code == 0, err
    rows = [r.split("\t") for r in out.splitlines()]
    assert [r[0] for r in rows] == ["1", "1", "1", "3", "3", "3"]
    first, second = translator.translate_nbest(split_into_sentences(line), 3)
    for k, (_, score, text) in enumerate(rows[:3]):
        assert text == f"{first[k][0]} {second[k][0]}".strip()
        assert float(score) == pytest.approx(first[k][1] + second[k][1], abs=2e-4)
    code, out, _ = _invoke("translate", "--run", str(run_dir), "--n-best", "3", "--no-split",
                           line)
    assert code == 0
    whole = translator.translate_nbest([line], 3)[0]
    assert [r.split("\t")[2] for r in out.splitlines()] == [t for t, _ in whole]


def test_piped_stdin_is_translated_as_lines_arrive(run_dir: Path,
                                                   translator: Translator) -> None:
    """A program that writes a line and waits gets its translation before it closes stdin."""
    import os
    import select
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "translator", "translate", "--run",
                             str(run_dir), "--device", "cpu"], cwd=root, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        got = []
        for text in ("The dog sees the cat.", "The woman sleeps."):
            proc.stdin.write(text.encode() + b"\n")
            proc.stdin.flush()
            ready, _, _ = select.select([proc.stdout], [], [], 120)
            assert ready, "no translation came back while stdin was still open"
            got.append(proc.stdout.readline().decode().rstrip("\n"))
        assert proc.poll() is None  # still running: it answered before end of input
        rest, err = proc.communicate(timeout=60)  # closes stdin: end of input
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert rest == b""
    assert got == translator.translate(["The dog sees the cat.", "The woman sleeps."])


def test_translate_nbest_output(run_dir: Path) -> None:
    code, out, _ = _invoke("translate", "--run", str(run_dir), "--n-best", "3",
                           input="The dog sees the cat.\n\nThe woman sleeps.\n")
    assert code == 0
    rows = [line.split("\t") for line in out.splitlines()]
    assert [r[0] for r in rows] == ["1", "1", "1", "3", "3", "3"]
    scores = [float(r[1]) for r in rows[:3]]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize(("args", "stdin", "message"), [
    (["translate", "   "], None, "empty"),
    (["translate", "--input", "/nonexistent/in.txt"], None, "not found"),
    (["translate", "Hello.", "--input", "x.txt"], None, "not both"),
    (["translate"], b"ok\ncaf\xe9\n", "line 2"),
    (["translate", "Hello.", "--output", "/nonexistent/dir/out.txt"], None, "cannot write"),
    (["evaluate", "--src", "a.txt"], None, "--src and --ref"),
    (["evaluate", "--split", "nonsense"], None, "nonsense"),
    (["attention", " ", "--out", "x"], None, "empty"),
])
def test_user_errors_are_one_line(run_dir: Path, args: list[str], stdin: bytes | None,
                                  message: str) -> None:
    code, out, err = _invoke(*args, "--run", str(run_dir), input=stdin)
    assert code == 2
    assert message in err and "Traceback" not in out + err
    assert len(err.strip().splitlines()) == 1


def test_invalid_utf8_file_names_the_line(run_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "bad.txt"
    src.write_bytes(b"fine\nalso fine\nbad \xff byte\n")
    code, _, err = _invoke("translate", "--input", str(src), "--run", str(run_dir))
    assert code == 2 and "line 3" in err and "UTF-8" in err


def test_bad_beam_is_a_usage_error(run_dir: Path) -> None:
    code, _, _ = _invoke("translate", "Hello.", "--beam", "0", "--run", str(run_dir))
    assert code == 2


# ---------------------------------------------------------------- evaluate command


def test_evaluate_file_pair_json(run_dir: Path, tmp_path: Path) -> None:
    src, ref = tmp_path / "pair.en", tmp_path / "pair.de"
    src.write_text("\n".join(EN) + "\n", encoding="utf-8")
    ref.write_text("\n".join(DE) + "\n", encoding="utf-8")
    code, out, _ = _invoke("evaluate", "--src", str(src), "--ref", str(ref), "--json",
                           "--beam", "2", "--length-penalty", "1.0", "--run", str(run_dir))
    assert code == 0
    report = json.loads(out)
    assert {"bleu", "chrf", "sentences", "bleu_signature", "chrf_signature"} <= set(report)
    assert report["sentences"] == len(EN)
    assert (report["search"], report["beam_size"], report["length_penalty"]) == ("beam", 2, 1.0)
    assert report["src"] == str(src)
    # Reports are named by what was scored and how, so other settings do not overwrite them.
    assert json.loads((run_dir / "eval" / "pair.en.beam2.lp1.json").read_text()) == report
    hyps = (run_dir / "eval" / "pair.en.beam2.lp1.hyp.txt").read_text(
        encoding="utf-8").split("\n")
    assert len(hyps) == len(EN) + 1

    code, out, _ = _invoke("evaluate", "--src", str(src), "--ref", str(ref), "--beam", "1",
                           "--run", str(run_dir))
    assert code == 0
    assert "BLEU" in out and "nrefs:1" in out and "chrF2" in out and "greedy" in out
    assert (run_dir / "eval" / "pair.en.greedy.json").is_file()
    assert json.loads((run_dir / "eval" / "pair.en.beam2.lp1.json").read_text()) == report


@pytest.mark.parametrize(("report", "name"), [
    ({"beam_size": 4, "length_penalty": 0.6}, "test.beam4.lp0.6"),
    ({"beam_size": 1, "length_penalty": 0.0}, "test.greedy"),
    ({"beam_size": 1, "length_penalty": 0.0, "dtype": "bf16"}, "test.bf16.greedy"),
    ({"beam_size": 5, "length_penalty": 1.0, "max_len_a": 2.0, "max_len_b": 5},
     "test.beam5.lp1.len2x+5"),
    ({"beam_size": 4, "length_penalty": 0.6, "checkpoint": "runs/x/checkpoints/averaged.pt"},
     "test.averaged.beam4.lp0.6"),
    ({"beam_size": 4, "length_penalty": 0.6, "checkpoint": "runs/x/checkpoints/best.pt"},
     "test.beam4.lp0.6"),
    ({"beam_size": 1, "length_penalty": 0.0, "engine": "ctranslate2", "quantization": "int8",
      "checkpoint": "runs/x/export/ctranslate2-int8"}, "test.ct2-int8.greedy"),
    # An export keeps the name of the checkpoint it was made from: CTranslate2 evaluations of
    # best.pt and averaged.pt sit side by side (the README's example).
    ({"beam_size": 1, "length_penalty": 0.0, "engine": "ctranslate2", "quantization": "int8",
      "checkpoint": "runs/x/export/ctranslate2-int8", "source_checkpoint": "averaged.pt"},
     "test.averaged.ct2-int8.greedy"),
    ({"beam_size": 1, "length_penalty": 0.0, "engine": "ctranslate2", "quantization": "int8",
      "checkpoint": "runs/x/export/ctranslate2-int8", "source_checkpoint": "best.pt"},
     "test.ct2-int8.greedy"),
])
def test_evaluate_report_names(report: dict, name: str) -> None:
    from translator.evaluate import report_name

    full = {"engine": "native", "dtype": "fp32", "max_len_a": 1.5, "max_len_b": 10, **report}
    assert report_name("test", full) == name


def test_evaluate_mismatched_files(run_dir: Path, tmp_path: Path) -> None:
    src, ref = tmp_path / "a.en", tmp_path / "a.de"
    src.write_text("one\ntwo\n", encoding="utf-8")
    ref.write_text("eins\n", encoding="utf-8")
    code, _, err = _invoke("evaluate", "--src", str(src), "--ref", str(ref), "--run",
                           str(run_dir))
    assert code == 2 and "line-aligned" in err


# ---------------------------------------------------------------- attention command


def test_attention_command_writes_pngs(run_dir: Path, tmp_path: Path,
                                       translator: Translator) -> None:
    out_dir = tmp_path / "att"
    code, out, err = _invoke("attention", "The dog sees the cat.", "--out", str(out_dir),
                             "--run", str(run_dir), "--beam", "1")
    assert code == 0, err
    assert out.strip() == translator.translate(["The dog sees the cat."], beam_size=1)[0]
    names = sorted(p.name for p in out_dir.iterdir())
    assert names == sorted(f"{kind}_layer{i}.png" for kind in
                           ("encoder_self", "decoder_self", "cross") for i in (1, 2))
    import matplotlib.image

    for path in out_dir.iterdir():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = matplotlib.image.imread(path)
        assert image.shape[0] > 200 and image.shape[1] > 400
