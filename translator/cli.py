"""The `translator` command: thin verbs over the library (train, translate, evaluate,
attention, average, export, serve).

Errors a user can cause print one line on stderr and exit non-zero (2 for bad input, 130 for
an interrupted training run); `--debug` (before or after the verb) shows the traceback
instead, and lets library warnings through, which are otherwise noise on stderr.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup

from translator.errors import TranslatorError


class _Verbs(TyperGroup):
    """The command group, taking `--debug` after the verb too (`translator translate --debug
    ...`): it is moved in front of the verb, where the group's option lives."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        end = args.index("--") if "--" in args else len(args)  # after "--" all is text
        if "--debug" in args[:end]:
            args = ["--debug", *(a for a in args[:end] if a != "--debug"), *args[end:]]
        return super().parse_args(ctx, args)


# rich_markup_mode=None: plain click help, where flags show no type and options their
# metavar (typer's rich panels label every flag <bool>), and which reads well when piped.
class _Argument(TyperArgument):
    """A positional argument shown as click shows one: `SENTENCE`, not typer's `SENTENCE <str>`
    (help) and `{SENTENCE}` (usage)."""

    def display_type_rich(self, ctx: Any) -> str | None:
        return None

    def _usage_display_name(self) -> str:
        name = self.display_name_raw
        return (name if self.required else f"[{name}]") + ("..." if self.nargs != 1 else "")


class _Verb(TyperCommand):
    """A verb whose arguments read as click's (see _Argument)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if type(param) is TyperArgument:
                param.__class__ = _Argument  # adds no state, only changes how it is shown


app = typer.Typer(add_completion=False, no_args_is_help=True, cls=_Verbs, rich_markup_mode=None,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="Train and run encoder-decoder Transformer translation models.")
_state = {"debug": False}

ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", "-c", metavar="PATH", help="YAML config file.")]
SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", metavar="KEY=VALUE",
    help="Override a config key, e.g. training.lr=1e-3 (section.key=value; repeatable).")]
RunOpt = Annotated[Path | None, typer.Option(
    "--run", metavar="DIR",
    help="Run folder (default: from --config, else the newest run under runs/).")]
CkptOpt = Annotated[Path | None, typer.Option(
    "--checkpoint", metavar="FILE",
    help="Checkpoint file (default: the run's best.pt, else latest.pt).")]
DeviceOpt = Annotated[str | None, typer.Option(
    "--device", metavar="DEVICE",
    help="auto, cpu, cuda, cuda:N or mps (default: the config's training.device).")]


def _print_version(value: bool) -> None:
    if value:
        from translator import __version__

        typer.echo(f"translator {__version__}")
        raise typer.Exit()


@app.callback()
def _main(debug: Annotated[bool, typer.Option(
              "--debug", help="Show tracebacks and library warnings (also after the verb).")]
          = False,
          _version: Annotated[bool, typer.Option(
              "--version", callback=_print_version, is_eager=True,
              help="Print the version and exit.")] = False,
          ) -> None:
    _state["debug"] = debug
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)


@contextmanager
def _user_errors() -> Iterator[None]:
    """Turn the project's errors into one line on stderr and an exit code, and keep library
    warnings (torch's about a file it cannot read, deprecations of a dependency) off stderr:
    what they say that matters reaches the user as our own message. `--debug` keeps both."""
    with warnings.catch_warnings():
        if not _state["debug"]:
            warnings.simplefilter("ignore")
        try:
            yield
        except TranslatorError as exc:
            if _state["debug"]:
                raise
            typer.echo(f"{exc}" if exc.calm else f"error: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            if _state["debug"]:
                raise
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None


def _load_translator(run: Path | None, config: Path | None, set_: list[str] | None,
                     checkpoint: Path | None, device: str, dtype: str | None, engine: str,
                     model: Path | None, quantization: str, intra_threads: int = 0,
                     inter_threads: int = 1) -> Any:
    """The native Translator or a CT2Translator, as --engine and --model ask."""
    if model is not None:
        engine = "ctranslate2"
    if engine == "native":
        from translator.decode.translator import Translator

        found, overrides = _find_run(run, config, set_, checkpoint)
        return Translator.from_run(found, checkpoint, device, dtype, overrides)
    if engine != "ctranslate2":
        raise TranslatorError(f"unknown engine '{engine}' (use native or ctranslate2)")
    from translator.decode.ct2 import CT2Translator

    if dtype is not None:
        raise TranslatorError("--dtype is for the native engine; the ctranslate2 engine "
                              "takes --quantization")
    if model is not None:
        if checkpoint is not None:
            raise TranslatorError("--checkpoint does not go with --model (an export holds "
                                  "one checkpoint's weights)")
        return CT2Translator.from_dir(model, device, threads=intra_threads,
                                      inter_threads=inter_threads)
    found, overrides = _find_run(run, config, set_, checkpoint)
    return CT2Translator.from_run(found, quantization, checkpoint, device, overrides,
                                  threads=intra_threads, inter_threads=inter_threads)


def _find_run(run: Path | None, config: Path | None, overrides: list[str] | None,
              checkpoint: Path | None = None) -> tuple[Path, list[str]]:
    """The run folder a model-reading verb uses (--run; the run of --config; the run that
    --checkpoint lies in; else the newest under runs/) and the --set overrides for loading it
    (with --config, those that only located the run are dropped)."""
    from translator.run import find_run

    return find_run(run, config, overrides, checkpoint,
                    announce=lambda found: typer.echo(f"using run {found}", err=True))


@app.command(cls=_Verb, epilog="Example: translator train --config configs/toy.yaml --set "
             "training.epochs=2")
def train(
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", metavar="PATH", help="YAML config file.")] = None,
    run: Annotated[Path | None, typer.Option(
        "--run", metavar="DIR",
        help="Continue this run folder from its own saved config (with --resume).")] = None,
    set_: SetOpt = None,
    resume: Annotated[bool, typer.Option(help="Continue from the run's latest checkpoint.")]
    = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run in the folder.")]
    = False,
    device: DeviceOpt = None,
    quiet: Annotated[bool, typer.Option(
        "--quiet", help="No progress output (bar or progress lines); validation results and "
        "the summary still print.")] = False,
    nproc: Annotated[int, typer.Option(
        "--nproc", min=1, metavar="N",
        help="Processes for data-parallel training (launches torchrun).")] = 1,
    init_from: Annotated[Path | None, typer.Option(
        "--init-from", metavar="RUN",
        help="Fine-tune: start from this run's weights (its best.pt, else latest.pt, or a "
        "checkpoint file) and tokenizers, with a fresh optimizer and schedule.")] = None,
) -> None:
    """Train a model from a YAML config; the run folder gets config, tokenizers, checkpoints
    and TensorBoard events. `--run DIR --resume` continues a run from its own folder;
    `--init-from RUN` fine-tunes another run on this config's data. Progress is a bar on a
    terminal, plain log lines every training.log_every steps in a file or pipe."""
    with _user_errors():
        from translator.run import training_config
        from translator.train.loop import train as run_training

        cfg = training_config(config, run, set_ or [], resume)
        if nproc > 1 and "WORLD_SIZE" not in os.environ:
            raise typer.Exit(_launch_torchrun(nproc))
        result = run_training(cfg, resume=resume, overwrite=overwrite, device=device,
                              quiet=quiet, init_from=init_from)
        v = result.last_valid
        summary = f"done in {result.seconds / 60:.1f} min, {result.state.step} steps"
        if v:
            summary += f"; validation BLEU {v['bleu']:.2f}, chrF {v['chrf']:.2f}"
        typer.echo(f"{summary}; run folder {result.run_dir}", err=True)


def _launch_torchrun(nproc: int) -> int:
    """Re-run this `translator train` command under torchrun with `nproc` processes."""
    import subprocess

    args = sys.argv[1:]
    rest: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            rest.append(arg)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "-m", "translator", *rest]
    typer.echo(f"launching: {' '.join(cmd)}", err=True)
    return subprocess.call(cmd)


@app.command(cls=_Verb, epilog="Example: translator average --run runs/toy --last 3")
def average(
    run: RunOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    last: Annotated[int, typer.Option("--last", min=1, metavar="K", help="Average the newest K "
                                      "periodic checkpoints.")] = 3,
    output: Annotated[Path | None, typer.Option(
        "--output", metavar="FILE",
        help="Where to write (default: <run>/checkpoints/averaged.pt).")] = None,
) -> None:
    """Average the weights of a run's last K checkpoints into one (use it with
    translate/evaluate --checkpoint)."""
    with _user_errors():
        from translator.checkpoint import atomic_save, average_checkpoints
        from translator.files import resolve_target
        from translator.run import RunLayout

        layout = RunLayout(_find_run(run, config, set_)[0])
        if not layout.config.is_file():
            raise TranslatorError(f"{layout.root} is not a run folder (no config.yaml)")
        paths = layout.numbered_checkpoints()[-last:]
        if len(paths) < last:
            raise TranslatorError(f"{layout.checkpoints} holds {len(paths)} periodic "
                                  f"checkpoints, fewer than --last {last} (training.keep_last "
                                  "limits how many are kept)")
        out = output or layout.averaged
        resolve_target(out)  # a folder or a missing parent: refused before any work
        atomic_save(average_checkpoints(paths), out)
        typer.echo(f"averaged {len(paths)} checkpoints ({', '.join(p.name for p in paths)}) "
                   f"into {out}", err=True)


# -- translate, evaluate, attention: decoding options shared by the three ----------------------

BeamOpt = Annotated[int | None, typer.Option(
    "--beam", min=1, metavar="N",
    help="Beam size; 1: greedy (default: the run's decoding.beam_size).")]
AlphaOpt = Annotated[float | None, typer.Option(
    "--length-penalty", "--alpha", min=0.0, metavar="ALPHA",
    help="GNMT length penalty alpha for beam search (default: decoding.length_penalty).")]
MaxLenAOpt = Annotated[float | None, typer.Option(
    "--max-len-a", min=0.0, metavar="A",
    help="Output cap a * source length + b: a (default: decoding.max_len_a).")]
MaxLenBOpt = Annotated[int | None, typer.Option(
    "--max-len-b", min=0, metavar="B",
    help="Output cap a * source length + b: b (default: decoding.max_len_b).")]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, metavar="N",
                                       help="Sentences per batch.")]
TranslateDeviceOpt = Annotated[str, typer.Option(
    "--device", metavar="DEVICE", help="auto, cpu, cuda, cuda:N or mps.")]
EngineOpt = Annotated[str, typer.Option(
    "--engine", metavar="ENGINE", help="native (PyTorch) or ctranslate2 (the run exported on "
    "the fly into <run>/export/, or --model DIR).")]
ModelDirOpt = Annotated[Path | None, typer.Option(
    "--model", metavar="DIR",
    help="A folder written by translator export (implies --engine ctranslate2).")]
QuantOpt = Annotated[str, typer.Option(
    "--quantization", metavar="TYPE", help="ctranslate2 engine: the weights' type when a run "
    "is exported on the fly (int8, int8_float32, int16, float16, bfloat16, float32).")]
IntraThreadsOpt = Annotated[int, typer.Option(
    "--intra-threads", min=0, metavar="N", help="ctranslate2 engine: threads per batch "
    "(CTranslate2's intra_threads; 0: its default).")]
InterThreadsOpt = Annotated[int, typer.Option(
    "--inter-threads", min=1, metavar="N", help="ctranslate2 engine: batches run at once "
    "(CTranslate2's inter_threads).")]
DtypeOpt = Annotated[str | None, typer.Option(
    "--dtype", metavar="DTYPE", help="Weights as fp32, bf16 (faster batched decoding on CPUs "
    "with AMX and on recent GPUs) or fp16 (GPUs) (default: the run's decoding.dtype).")]


def _bad_stdin_line(line: int) -> str:
    return f"stdin is not valid UTF-8 (line {line})"


def _stdin_batches(chunk: int) -> Iterator[list[str]]:
    """The lines of stdin in batches of what has arrived so far (at most `chunk` lines), so
    that a program feeding a pipe line by line gets each translation back at once, while a
    file piped in still fills well-sorted batches. Lines split at \\n only, as split_lines."""
    import select

    try:
        fd = sys.stdin.fileno()
        select.select([fd], [], [], 0)
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
        # No selectable descriptor (an in-memory stream; a pipe on Windows): read it whole.
        from translator.data.text import decode_lines

        lines = decode_lines(sys.stdin.buffer.read(), _bad_stdin_line)
        for start in range(0, len(lines), chunk):
            yield lines[start:start + chunk]
        return
    yield from _descriptor_batches(fd, chunk)


def _descriptor_batches(fd: int, chunk: int) -> Iterator[list[str]]:
    """`_stdin_batches` over a selectable file descriptor: a batch is yielded whenever no more
    input is waiting (or `chunk` lines are), at the end of input, and not before."""
    import select

    pending: list[str] = []
    rest, line_no, eof = b"", 0, False
    while not eof or pending:
        if pending and (eof or len(pending) >= chunk or not select.select([fd], [], [], 0)[0]):
            yield pending[:chunk]
            del pending[:chunk]
            continue
        data = os.read(fd, 1 << 16)
        if data:
            *complete, rest = (rest + data).split(b"\n")
        else:
            eof, complete, rest = True, [rest] if rest else [], b""
        for raw in complete:
            line_no += 1
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise TranslatorError(_bad_stdin_line(line_no)) from exc
            pending.append(text[:-1] if text.endswith("\r") else text)


@contextmanager
def _output(path: Path | None) -> Iterator[Any]:
    """stdout, or `translator.files.atomic_open(path)`: a regular file is written under a
    temporary name and renamed into place at the end, so that a failed run (or `--output`
    naming the input) never leaves half a file; a device, FIFO or symlink is written into."""
    if path is None:
        yield sys.stdout
        return
    from translator.files import atomic_open

    with atomic_open(path, "w") as f:
        yield f


@app.command(cls=_Verb, epilog="Example: translator translate --run runs/toy \"The big dog "
             "sees the small cat.\"  (or: translator translate --run runs/toy -i in.en -o "
             "out.de)")
def translate(
    sentence: Annotated[str | None, typer.Argument(
        metavar="SENTENCE", help="Text to translate; '-' or nothing reads stdin, one text per "
        "line, each translated as soon as it arrives.")] = None,
    input_: Annotated[Path | None, typer.Option(
        "--input", "-i", metavar="FILE", help="Translate this UTF-8 file line by line.")]
    = None,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", metavar="FILE",
        help="Write the translations to this file (default: stdout).")] = None,
    run: RunOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    checkpoint: CkptOpt = None,
    device: TranslateDeviceOpt = "auto",
    dtype: DtypeOpt = None,
    batch_size: BatchOpt = 64,
    beam: BeamOpt = None,
    length_penalty: AlphaOpt = None,
    max_len_a: MaxLenAOpt = None,
    max_len_b: MaxLenBOpt = None,
    n_best: Annotated[int, typer.Option(
        "--n-best", min=1, metavar="N", help="Print the N best translations of each line with "
        "their scores: line number, score and text, tab-separated. The k-th of a line of "
        "several sentences joins each sentence's k-th best; its score is their sum. Needs "
        "--beam N or more (without --beam the beam is widened to N).")] = 1,
    no_split: Annotated[bool, typer.Option(
        "--no-split", help="Translate each line whole, not sentence by sentence.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
    engine: EngineOpt = "native",
    model: ModelDirOpt = None,
    quantization: QuantOpt = "int8",
    intra_threads: IntraThreadsOpt = 0, inter_threads: InterThreadsOpt = 1,
) -> None:
    """Translate a sentence, stdin or a file (line by line, empty lines kept) with a trained
    run. A line holding several sentences is split, translated sentence by sentence and
    joined again."""
    with _user_errors():
        _check_translate_args(output, n_best, beam)
        # A person typing at a terminal gets each translation as soon as the line is entered.
        interactive = (input_ is None and sentence in (None, "-") and sys.stdin.isatty()
                       and output is None)
        # Chunks keep the progress bar moving and the output streaming on long inputs while
        # each chunk is still sorted by length into well-filled batches.
        parts, total = _translate_inputs(sentence, input_, max(16 * batch_size, 256),
                                         interactive)
        translator = _load_translator(run, config, set_, checkpoint, device, dtype, engine,
                                      model, quantization, intra_threads, inter_threads)
        dec = translator.decoding(beam_size=beam, length_penalty=length_penalty,
                                  max_len_a=max_len_a, max_len_b=max_len_b)
        emit = _emitter(translator, batch_size, dec, n_best, beam, split=not no_split)
        if interactive:
            typer.echo("type a sentence and press Enter; Ctrl-D ends", err=True)
            for n, line in enumerate(sys.stdin, start=1):
                emit(sys.stdout, [line.rstrip("\r\n")], n)
            return
        _translate_parts(parts, total, emit, output, quiet=quiet or input_ is None)


def _check_translate_args(output: Path | None, n_best: int, beam: int | None) -> None:
    """What `translate` refuses before any work: an --output that is a folder or lies in a
    missing folder, and an n-best wider than the beam."""
    if output is not None:
        from translator.files import resolve_target

        resolve_target(output)
    if n_best > 1 and beam is not None and beam < n_best:
        # A beam of k holds k hypotheses: widening it silently would change the search.
        raise TranslatorError(f"--n-best {n_best} needs --beam {n_best} or more, got "
                              f"--beam {beam}")


def _translate_inputs(sentence: str | None, input_: Path | None, chunk: int,
                      interactive: bool) -> tuple[Iterator[list[str]], int | None]:
    """What `translate` reads, in chunks of at most `chunk` lines, and how many lines that
    is when known in advance (a file)."""
    if input_ is not None:
        if sentence is not None:
            raise TranslatorError("give either a sentence or --input FILE, not both")
        from translator.data.text import read_lines

        lines = read_lines(input_, "input file")
        return (lines[i:i + chunk] for i in range(0, len(lines), chunk)), len(lines)
    if sentence is None or sentence == "-":
        return (iter([]) if interactive else _stdin_batches(chunk)), None
    if not sentence.strip():
        raise TranslatorError("nothing to translate: the sentence is empty")
    return iter([[sentence]]), None


Emit = Callable[[Any, list[str], int], None]
"""Translate a part of the input and write it out: (stream, lines, number of the first)."""


def _emitter(translator: Any, batch_size: int, dec: Any, n_best: int, beam: int | None,
             split: bool) -> Emit:
    """How `translate` writes the translations of a part of its input: a line each, or with
    `n_best` > 1, `line number, score, text` for each of a line's best translations."""
    settings = {"beam_size": dec.beam_size, "length_penalty": dec.length_penalty,
                "max_len_a": dec.max_len_a, "max_len_b": dec.max_len_b}

    def emit(out: Any, part: list[str], first_line: int) -> None:
        if n_best > 1:
            # beam: the user's, else the run's widened to n_best (translate_nbest).
            nbest = translator.translate_nbest(part, n_best, batch_size,
                                               **{**settings, "beam_size": beam},
                                               split_sentences=split)
            for n, hyps in enumerate(nbest, start=first_line):
                out.writelines(f"{n}\t{s:.4f}\t{text}\n" for text, s in hyps)
        else:
            texts = translator.translate(part, batch_size, split_sentences=split, **settings)
            out.writelines(text + "\n" for text in texts)
        out.flush()

    return emit


def _translate_parts(parts: Iterator[list[str]], total: int | None, emit: Emit,
                     output: Path | None, quiet: bool) -> None:
    """Translate the parts into `output` (stdout when None), with a progress bar unless
    `quiet` (or stderr is no terminal)."""
    from tqdm import tqdm

    # disable=None: tqdm shows the bar only when stderr is a terminal.
    bar = tqdm(total=total, unit="line", disable=True if quiet else None, dynamic_ncols=True,
               file=sys.stderr)
    done = 0
    with _output(output) as out:
        for part in parts:
            emit(out, part, done + 1)
            done += len(part)
            bar.update(len(part))
    bar.close()


@app.command(cls=_Verb, epilog="Example: translator evaluate --run runs/toy --split test --beam 4")
def evaluate(
    run: RunOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    split: Annotated[str | None, typer.Option(
        "--split", metavar="NAME",
        help="train, valid or test (default), or for a text/tsv/hub corpus the name of any "
        "other split, e.g. test_2017_flickr.")] = None,
    src: Annotated[Path | None, typer.Option(
        "--src", metavar="FILE",
        help="Evaluate on this source file instead of a split (with --ref).")] = None,
    ref: Annotated[Path | None, typer.Option(
        "--ref", metavar="FILE", help="Reference translations, line-aligned with --src.")]
    = None,
    checkpoint: CkptOpt = None,
    device: TranslateDeviceOpt = "auto",
    dtype: DtypeOpt = None,
    batch_size: BatchOpt = 64,
    beam: BeamOpt = None,
    length_penalty: AlphaOpt = None,
    max_len_a: MaxLenAOpt = None,
    max_len_b: MaxLenBOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    engine: EngineOpt = "native",
    model: ModelDirOpt = None,
    quantization: QuantOpt = "int8",
) -> None:
    """Translate a split (or a pair of files) and print corpus BLEU and chrF (sacreBLEU, with
    signatures). The report and the translations are also written to <run>/eval/, named by
    split and settings, e.g. test.beam4.lp1.json and test.beam4.lp1.hyp.txt."""
    with _user_errors():
        from translator.evaluate import evaluate_pairs, report_name

        if (src is None) != (ref is None):
            raise TranslatorError("--src and --ref go together")
        if src is not None and split is not None:
            raise TranslatorError("give either --split or --src/--ref, not both")
        if src is None and model is not None:
            raise TranslatorError("--model (an export) holds no corpus: evaluate it with "
                                  "--src/--ref, or use --run with --engine ctranslate2")
        translator = _load_translator(run, config, set_, checkpoint, device, dtype, engine,
                                      model, quantization)
        pairs, name, where = _evaluation_pairs(translator, split, src, ref)
        report, hyps = evaluate_pairs(translator, pairs, batch_size, beam_size=beam,
                                      length_penalty=length_penalty, max_len_a=max_len_a,
                                      max_len_b=max_len_b)
        report.update(where, checkpoint=str(translator.checkpoint),
                      engine=translator.engine_name)
        for key in ("quantization", "source_checkpoint"):
            if getattr(translator, key, None):
                report[key] = getattr(translator, key)
        from translator.run import RunLayout

        out_dir = RunLayout(Path(translator.checkpoint) if model is not None
                            else Path(translator.cfg.run_dir)).eval
        _write_report(out_dir, report_name(name, report), report, hyps)
        typer.echo(json.dumps(report) if as_json else _report_text(report, name))


def _write_report(out_dir: Path, stem: str, report: dict[str, Any], hyps: list[str]) -> None:
    """Write an evaluation's report and translations into `out_dir` (atomically)."""
    from translator.files import atomic_write

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TranslatorError(f"cannot create {out_dir}: {exc.strerror}") from exc
    atomic_write(out_dir / f"{stem}.json", json.dumps(report, indent=2) + "\n")
    atomic_write(out_dir / f"{stem}.hyp.txt", "".join(h + "\n" for h in hyps))


def _evaluation_pairs(translator: Any, split: str | None, src: Path | None,
                      ref: Path | None) -> tuple[list[tuple[str, str]], str, dict[str, str]]:
    """What `evaluate` scores: the pairs, their name in the report's file name, and where
    they came from (for the report)."""
    from translator.evaluate import load_split, read_parallel_files

    if src is not None and ref is not None:
        return read_parallel_files(src, ref), src.name, {"src": str(src), "ref": str(ref)}
    name = split or "test"
    return load_split(translator.cfg.data, name), name, {"split": name}


def _report_text(report: dict[str, Any], name: str) -> str:
    """The lines `evaluate` prints without --json."""
    from translator.evaluate import TOK_LC_LABEL

    search = ("greedy" if report["beam_size"] == 1 else
              f"beam {report['beam_size']}, length penalty {report['length_penalty']}")
    tok_lc = report.get("bleu_tok_lc")
    tok_line = (f"{TOK_LC_LABEL}: {tok_lc:.2f} (sacreBLEU above: {report['bleu']:.2f})"
                if tok_lc is not None else
                "(pip install sacremoses for the papers' tokenized lowercased BLEU)")
    return (f"{report['bleu_detail']}\n{report['bleu_signature']}\n"
            f"chrF2 = {report['chrf']:.2f}\n{report['chrf_signature']}\n"
            f"{tok_line}\nlength ratio (hypotheses / references) "
            f"{report['length_ratio']:.3f}\n"
            f"{report['sentences']} sentences ({name}), {search}, "
            f"{report['sentences_per_second']} sentences/s, "
            f"checkpoint {report['checkpoint']}")


@app.command(cls=_Verb, epilog="Example: translator attention --run runs/toy \"The dog sees "
             "the cat.\" --out att/")
def attention(
    sentence: Annotated[str, typer.Argument(metavar="SENTENCE",
                                            help="The sentence to translate and inspect.")],
    out: Annotated[Path, typer.Option("--out", "-o", metavar="DIR",
                                      help="Folder for the PNG files.")],
    run: RunOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    checkpoint: CkptOpt = None,
    device: TranslateDeviceOpt = "auto",
    beam: BeamOpt = None,
    length_penalty: AlphaOpt = None,
) -> None:
    """Translate a sentence and write its attention maps as PNG heatmaps: encoder
    self-attention, decoder self-attention and cross-attention, one image per layer with a
    panel per head, axes labelled with the source and the generated tokens."""
    with _user_errors():
        from translator.decode.translator import Translator
        from translator.visualize import attention_maps, save_attention_images

        if not sentence.strip():
            raise TranslatorError("nothing to translate: the sentence is empty")
        found, overrides = _find_run(run, config, set_, checkpoint)
        translator = Translator.from_run(found, checkpoint, device, overrides=overrides)
        maps = attention_maps(translator, sentence, beam_size=beam,
                              length_penalty=length_penalty)
        paths = save_attention_images(maps, out)
        typer.echo(maps.translation)
        typer.echo(f"wrote {len(paths)} images to {out}", err=True)


@app.command(cls=_Verb, epilog="Example: translator export --run runs/toy --out toy-ct2 "
             "--quantization int8")
def export(
    out: Annotated[Path, typer.Option("--out", "-o", metavar="PATH",
                                      help="Folder (or .argosmodel file) to write.")],
    run: RunOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    checkpoint: CkptOpt = None,
    to: Annotated[str, typer.Option(
        "--to", metavar="FORMAT", help="ctranslate2 (a CTranslate2 folder), huggingface (a "
        "transformers folder: Pegasus or Marian) or argos (an .argosmodel package for Argos "
        "Translate / LibreTranslate).")] = "ctranslate2",
    quantization: Annotated[str, typer.Option(
        "--quantization", "-q", metavar="TYPE", help="ctranslate2 and argos: int8, "
        "int8_float32, int16, float16, bfloat16 or float32.")] = "int8",
    force: Annotated[bool, typer.Option(
        "--force", help="Replace --out if it holds a previous export (never a run folder, "
        "the working or home folder, or a folder holding them).")] = False,
) -> None:
    """Export a trained run for another inference engine: a CTranslate2 model folder with the
    run's tokenizers and a translator.json, enough to translate without PyTorch; a Hugging
    Face transformers folder; or an Argos Translate package."""
    with _user_errors():
        from translator.export import export_run

        path = export_run(to, _find_run(run, config, set_, checkpoint)[0], out, quantization,
                          checkpoint, force)
        what = {"ctranslate2": f"a CTranslate2 model ({quantization})",
                "huggingface": "a transformers model", "argos": "an Argos Translate package"}
        typer.echo(f"wrote {what[to]} to {path}", err=True)


# shape: a Typer command; its signature lists its options, the body is a few lines.
@app.command(cls=_Verb, epilog="Example: translator serve --run runs/en-de --run runs/de-en "
             "--port 5000")
def serve(
    run: Annotated[list[Path] | None, typer.Option(
        "--run", metavar="DIR", help="A run folder to serve; repeat for several models "
        "(default: from --config, else the newest run under runs/).")] = None,
    models: Annotated[Path | None, typer.Option(
        "--models", metavar="DIR", help="Serve every run folder and CTranslate2 export "
        "directly under DIR.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    checkpoint: CkptOpt = None,
    engine: Annotated[str, typer.Option(
        "--engine", metavar="ENGINE",
        help="native (PyTorch) or ctranslate2 (each run exported on the fly into "
        "<run>/export/); exports are always ctranslate2.")] = "native",
    quantization: QuantOpt = "int8",
    device: TranslateDeviceOpt = "auto",
    dtype: DtypeOpt = None,
    intra_threads: IntraThreadsOpt = 0,
    inter_threads: InterThreadsOpt = 1,
    host: Annotated[str, typer.Option(
        "--host", metavar="ADDRESS", help="Address to listen on; 0.0.0.0 opens it to the network.")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, metavar="PORT",
                                        help="TCP port.")] = 5000,
    max_batch: Annotated[int, typer.Option(
        "--max-batch", min=1, metavar="N",
        help="Most sentences decoded together in one batch.")] = 64,
    batch_wait_ms: Annotated[float, typer.Option(
        "--batch-wait-ms", min=0.0, metavar="MS",
        help="How long a batch waits for more requests, in ms.")]
    = 5.0,
    max_chars: Annotated[int, typer.Option(
        "--max-chars", min=1, metavar="N", help="Most characters in one request.")] = 5000,
    max_lines: Annotated[int, typer.Option(
        "--max-lines", min=1, metavar="N",
        help="Most lines in one request (all its texts together).")]
    = 100,
    max_beam: Annotated[int, typer.Option(
        "--max-beam", min=1, metavar="N",
        help="Largest beam size (and n-best) a request may ask for.")]
    = 16,
    max_work: Annotated[int, typer.Option(
        "--max-work", min=1, metavar="N",
        help="Most sentences x beam size in one request (413 past it).")] = 1024,
    max_queue: Annotated[int, typer.Option(
        "--max-queue", min=0, metavar="N",
        help="Sentences waiting for one model before requests get 429 (0: no bound).")]
    = 2048,
    timeout: Annotated[float, typer.Option(
        "--timeout", min=0.001, metavar="SECONDS",
        help="Seconds a request may wait before it gets 503.")]
    = 30.0,
    api_key: Annotated[str | None, typer.Option(
        "--api-key", envvar="TRANSLATOR_API_KEY", show_envvar=True, metavar="KEY",
        help="Require this key on everything but the page, /health, /languages and "
        "/frontend/settings.")] = None,
    cors_origin: Annotated[list[str] | None, typer.Option(
        "--cors-origin", metavar="ORIGIN", help="Let pages of this origin call the API from "
        "a browser (repeatable; '*' for any). Default: only the server's own page.")] = None,
    max_connections: Annotated[int, typer.Option(
        "--max-connections", min=1, metavar="N",
        help="Open connections (and requests) at once; more get 503.")] = 512,
    read_timeout: Annotated[float, typer.Option(
        "--read-timeout", min=0.1, metavar="SECONDS",
        help="Seconds a request body may take to arrive (408 past it).")] = 10.0,
    root_path: Annotated[str, typer.Option(
        "--root-path", metavar="PATH", help="The URL prefix a reverse proxy serves the app "
        "under, e.g. /translate-api.")] = "",
    access_log: Annotated[bool, typer.Option(
        "--access-log/--no-access-log", help="Log each request.")] = True,
) -> None:
    """Serve one or several models over HTTP: LibreTranslate's API (/translate, /detect,
    /languages, /translate_file), a translation page with attention heatmaps at /, the OpenAPI
    schema at /openapi.json. A pair with no model of its own goes through a pivot language.
    Concurrent requests are decoded together in batches, one queue per model."""
    with _user_errors():
        from translator.serve import (
            EngineOptions,
            ServerOptions,
            check_address,
            check_installed,
            find_models,
            load_models,
            run_server,
        )
        from translator.serve.service import Limits

        check_installed()
        check_address(host, port)
        folders = [*(run or []), *(find_models(models) if models is not None else [])]
        overrides = list(set_ or [])
        if not folders:
            found, overrides = _find_run(None, config, set_, checkpoint)
            folders = [found]
        served = load_models(folders, EngineOptions(engine, quantization, device, dtype,
                                                    intra_threads, inter_threads),
                             checkpoint, overrides)
        limits = Limits(max_chars=max_chars, max_lines=max_lines, max_beam=max_beam,
                        max_work=max_work, timeout=timeout, max_queued=max_queue)
        run_server(served, ServerOptions(
            host=host, port=port, max_batch=max_batch, wait_ms=batch_wait_ms, limits=limits,
            api_key=api_key or None, cors_origins=tuple(cors_origin or ()),
            max_connections=max_connections, read_timeout=read_timeout,
            root_path=root_path.rstrip("/"), access_log=access_log),
            workers=inter_threads if engine == "ctranslate2" else 1)


@app.command(cls=_Verb, epilog="Example: translator info runs/toy --json")
def info(
    run: Annotated[Path, typer.Argument(metavar="RUN", help="The run folder.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Describe a run folder: languages, model size and parameters, tokenizers and their
    vocabularies, steps and epochs trained, the best validation and its checkpoint, the files."""
    with _user_errors():
        from translator.runinfo import format_run_info, run_info

        report = run_info(run)
        typer.echo(json.dumps(report, indent=2) if as_json else format_run_info(report))


def main() -> None:
    """Console-script entry point."""
    app()
