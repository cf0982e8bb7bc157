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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from translator.cli_options import (
    AlphaOpt,
    BatchOpt,
    BeamOpt,
    CkptOpt,
    ConfigOpt,
    DeviceOpt,
    DtypeOpt,
    EngineOpt,
    InterThreadsOpt,
    IntraThreadsOpt,
    JsonOpt,
    MaxLenAOpt,
    MaxLenBOpt,
    ModelDirOpt,
    QuantOpt,
    RunOpt,
    SetOpt,
    TranslateDeviceOpt,
    Verb,
    Verbs,
    opt,
)
from translator.errors import TranslatorError

app = typer.Typer(add_completion=False, no_args_is_help=True, cls=Verbs, rich_markup_mode=None,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="Train and run encoder-decoder Transformer translation models.")
_state = {"debug": False}


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


def _announce(found: Path) -> None:
    """Say which run a verb picked when none was named (the newest under runs/)."""
    typer.echo(f"using run {found}", err=True)


def _find_run(run: Path | None, config: Path | None, overrides: list[str] | None,
              checkpoint: Path | None = None) -> tuple[Path, list[str]]:
    """`translator.run.find_run`, announcing a run it picked by itself."""
    from translator.run import find_run

    return find_run(run, config, overrides, checkpoint, _announce)


def _engine(run: Path | None, config: Path | None, set_: list[str] | None,
            checkpoint: Path | None, model: Path | None, engine: str, quantization: str,
            device: str, dtype: str | None, intra_threads: int = 1,
            inter_threads: int = 0) -> Any:
    """The engine a decoding verb asked for (`translator.decode.loading.load_engine`)."""
    from translator.decode.loading import EngineOptions, load_engine

    options = EngineOptions(engine, quantization, device, dtype, intra_threads, inter_threads)
    return load_engine(options, run, config, set_, checkpoint, model, _announce)


@app.command(cls=Verb, epilog="Example: translator train --config configs/toy.yaml --set "
             "training.epochs=2")
def train(
    config: ConfigOpt = None,
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
        from translator.train.distributed import launch_torchrun
        from translator.train.loop import train as run_training

        cfg = training_config(config, run, set_ or [], resume)
        if nproc > 1 and "WORLD_SIZE" not in os.environ:
            raise typer.Exit(launch_torchrun(nproc, sys.argv[1:]))
        result = run_training(cfg, resume=resume, overwrite=overwrite, device=device,
                              quiet=quiet, init_from=init_from)
        v = result.last_valid
        summary = f"done in {result.seconds / 60:.1f} min, {result.state.step} steps"
        if v:
            summary += f"; validation BLEU {v['bleu']:.2f}, chrF {v['chrf']:.2f}"
        typer.echo(f"{summary}; run folder {result.run_dir}", err=True)


@app.command(cls=Verb, epilog="Example: translator average --run runs/toy --last 3")
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
        from translator.run import average_run

        out, paths = average_run(_find_run(run, config, set_)[0], last, output)
        typer.echo(f"averaged {len(paths)} checkpoints ({', '.join(p.name for p in paths)}) "
                   f"into {out}", err=True)


@app.command(cls=Verb, epilog="Example: translator translate --run runs/toy \"The big dog "
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
    intra_threads: IntraThreadsOpt = 1, inter_threads: InterThreadsOpt = 0,
) -> None:
    """Translate a sentence, stdin or a file (line by line, empty lines kept) with a trained
    run. A line holding several sentences is split, translated sentence by sentence and
    joined again."""
    with _user_errors():
        from translator import textio

        textio.check_translate_args(output, n_best, beam)
        # A person typing at a terminal gets each translation as soon as the line is entered.
        interactive = (input_ is None and sentence in (None, "-") and sys.stdin.isatty()
                       and output is None)
        # Chunks keep the progress bar moving and the output streaming on long inputs while
        # each chunk is still sorted by length into well-filled batches.
        parts, total = textio.translate_inputs(sentence, input_, max(16 * batch_size, 256),
                                               interactive)
        translator = _engine(run, config, set_, checkpoint, model, engine, quantization,
                             device, dtype, intra_threads, inter_threads)
        dec = translator.decoding(n_best, beam_size=beam, length_penalty=length_penalty,
                                  max_len_a=max_len_a, max_len_b=max_len_b)
        emit = textio.emitter(translator, batch_size, dec, n_best, split=not no_split)
        if interactive:
            textio.translate_interactive(emit)
            return
        textio.translate_parts(parts, total, emit, output, quiet=quiet or input_ is None)


@app.command(cls=Verb, epilog="Example: translator evaluate --run runs/toy --split test --beam 4")
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
    as_json: JsonOpt = False,
    engine: EngineOpt = "native",
    model: ModelDirOpt = None,
    quantization: QuantOpt = "int8",
) -> None:
    """Translate a split (or a pair of files) and print corpus BLEU and chrF (sacreBLEU, with
    signatures). The report and the translations are also written to <run>/eval/, named by
    split and settings, e.g. test.beam4.lp1.json and test.beam4.lp1.hyp.txt."""
    with _user_errors():
        from translator.evaluate import check_sources, evaluate_engine, report_text

        check_sources(split, src, ref, export=model is not None)
        translator = _engine(run, config, set_, checkpoint, model, engine, quantization,
                             device, dtype)
        dec = translator.decoding(beam_size=beam, length_penalty=length_penalty,
                                  max_len_a=max_len_a, max_len_b=max_len_b)
        report, name = evaluate_engine(translator, split, src, ref, batch_size, model, dec)
        typer.echo(json.dumps(report) if as_json else report_text(report, name))


@app.command(cls=Verb, epilog="Example: translator attention --run runs/toy \"The dog sees "
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
        from translator.visualize import attention_maps, save_attention_images

        if not sentence.strip():
            raise TranslatorError("nothing to translate: the sentence is empty")
        translator = _engine(run, config, set_, checkpoint, None, "native", "int8", device,
                             None)
        maps = attention_maps(translator, sentence,
                              translator.decoding(beam_size=beam, length_penalty=length_penalty))
        paths = save_attention_images(maps, out)
        typer.echo(maps.translation)
        typer.echo(f"wrote {len(paths)} images to {out}", err=True)


@app.command(cls=Verb, epilog="Example: translator export --run runs/toy --out toy-ct2 "
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
@app.command(cls=Verb, epilog="Example: translator serve --run runs/en-de --run runs/de-en "
             "--port 5000")
def serve(
    run: Annotated[list[Path] | None, opt("--run", "DIR", "A run folder to serve; repeat for "
        "several models (default: from --config, else the newest run under runs/).")] = None,
    models: Annotated[Path | None, opt("--models", "DIR", "Serve every run folder and "
        "CTranslate2 export directly under DIR.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    checkpoint: CkptOpt = None,
    engine: Annotated[str, opt("--engine", "ENGINE", "native (PyTorch) or ctranslate2 (each "
        "run exported on the fly into <run>/export/); exports are always ctranslate2.")]
    = "native",
    quantization: QuantOpt = "int8",
    device: TranslateDeviceOpt = "auto",
    dtype: DtypeOpt = None,
    intra_threads: Annotated[int, typer.Option("--intra-threads", min=0, metavar="N", help=(
        "Threads per batch, both engines (0: the library's default; 1 measured fastest)."))] = 1,
    inter_threads: InterThreadsOpt = 0,
    host: Annotated[str, opt("--host", "ADDRESS", "Address to listen on; 0.0.0.0 opens it to "
        "the network.")] = "127.0.0.1",
    port: Annotated[int, opt("--port", "PORT", "TCP port.", min=1, max=65535)] = 5000,
    max_batch: Annotated[int, opt("--max-batch", "N", "Most sentences decoded together in one "
        "batch.", min=1)] = 64,
    batch_wait_ms: Annotated[float, opt("--batch-wait-ms", "MS", "How long a batch waits for "
        "more requests, in ms.", min=0.0)] = 5.0,
    max_chars: Annotated[int, opt("--max-chars", "N", "Most characters in one request.",
        min=1)] = 5000,
    max_lines: Annotated[int, opt("--max-lines", "N", "Most lines in one request (all its "
        "texts together).", min=1)] = 100,
    max_beam: Annotated[int, opt("--max-beam", "N", "Largest beam size (and n-best) a request "
        "may ask for.", min=1)] = 16,
    max_work: Annotated[int, opt("--max-work", "N", "Most sentences x beam size in one "
        "request (413 past it).", min=1)] = 1024,
    max_queue: Annotated[int, opt("--max-queue", "N", "Sentences waiting for one model before "
        "requests get 429 (0: no bound).", min=0)] = 2048,
    timeout: Annotated[float, opt("--timeout", "SECONDS", "Seconds a request may wait before "
        "it gets 503.", min=0.001)] = 30.0,
    api_key: Annotated[str | None, opt("--api-key", "KEY", "Require this key on everything "
        "but the page, /health, /languages and /frontend/settings.",
        envvar="TRANSLATOR_API_KEY", show_envvar=True)] = None,
    cors_origin: Annotated[list[str] | None, opt("--cors-origin", "ORIGIN", "Let pages of "
        "this origin call the API from a browser (repeatable; '*' for any). Default: only the "
        "server's own page.")] = None,
    max_connections: Annotated[int, opt("--max-connections", "N", "Open connections (and "
        "requests) at once; more get 503.", min=1)] = 512,
    read_timeout: Annotated[float, opt("--read-timeout", "SECONDS", "Seconds a request body "
        "may take to arrive (408 past it).", min=0.1)] = 10.0,
    root_path: Annotated[str, opt("--root-path", "PATH", "The URL prefix a reverse proxy "
        "serves the app under, e.g. /translate-api.")] = "",
    access_log: Annotated[bool, opt("--access-log/--no-access-log", None,
        "Log each request.")] = True,
    decode_processes: Annotated[int | None, opt("--decode-processes", "N", "Processes that "
        "decode native models' greedy requests (default: one per CPU core, at most one per "
        "model; each loads its models again; 0: none).", min=0)] = None,
) -> None:
    """Serve one or several models over HTTP: LibreTranslate's API (/translate, /detect,
    /languages, /translate_file), a translation page with attention heatmaps at /, the OpenAPI
    schema at /openapi.json. A pair with no model of its own goes through a pivot language.
    Concurrent requests are decoded together in batches, one queue per model."""
    with _user_errors():
        from translator.decode.loading import EngineOptions
        from translator.serve import ServerOptions, serve_runs
        from translator.serve.service import Limits

        limits = Limits(max_chars=max_chars, max_lines=max_lines, max_beam=max_beam,
                        max_work=max_work, timeout=timeout, max_queued=max_queue)
        serve_runs(run or [], models, config, set_ or [], checkpoint,
                   EngineOptions(engine, quantization, device, dtype, intra_threads,
                                 inter_threads),
                   ServerOptions(host=host, port=port, max_batch=max_batch,
                                 wait_ms=batch_wait_ms, limits=limits,
                                 api_key=api_key or None,
                                 cors_origins=tuple(cors_origin or ()),
                                 max_connections=max_connections, read_timeout=read_timeout,
                                 root_path=root_path.rstrip("/"), access_log=access_log,
                                 decode_processes=decode_processes),
                   _announce)


@app.command(cls=Verb, epilog="Example: translator info runs/toy --json")
def info(
    run: Annotated[Path, typer.Argument(metavar="RUN", help="The run folder.")],
    as_json: JsonOpt = False,
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
