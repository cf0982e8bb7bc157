"""The `translator` command: thin verbs over the library (train, translate, evaluate).

Errors a user can cause print one line on stderr and exit non-zero (2 for bad input, 130 for
an interrupted training run); `--debug` shows the traceback instead.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from translator.errors import TranslatorError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Train and run encoder-decoder Transformer translation models.")
_state = {"debug": False}

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file.")]
SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", help="Override a config key: section.key=value (repeatable).")]
RunOpt = Annotated[Path | None, typer.Option(
    "--run", help="Run folder (default: from --config, else the newest run under runs/).")]
CkptOpt = Annotated[Path | None, typer.Option(
    "--checkpoint", help="Checkpoint file (default: the run's best.pt, else latest.pt).")]
DeviceOpt = Annotated[str | None, typer.Option(
    "--device", help="auto, cpu, cuda, cuda:N or mps (default: the config's training.device).")]


@app.callback()
def _main(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
          ) -> None:
    _state["debug"] = debug
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)


@contextmanager
def _user_errors() -> Iterator[None]:
    """Turn the project's errors into one line on stderr and an exit code."""
    try:
        yield
    except TranslatorError as exc:
        if _state["debug"]:
            raise
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        if _state["debug"]:
            raise
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None


def _find_run(run: Path | None, config: Path | None, overrides: list[str] | None) -> Path:
    from translator.config import load_config
    from translator.inference import latest_run

    if run is not None:
        return run
    if config is not None:
        return load_config(config, overrides or []).run_dir
    found = latest_run()
    if found is None:
        raise TranslatorError("no trained run found under runs/; train one first "
                              "(translator train --config configs/toy.yaml) or pass --run DIR")
    typer.echo(f"using run {found}", err=True)
    return found


@app.command()
def train(
    config: Annotated[Path, typer.Option("--config", "-c", help="YAML config file.")],
    set_: SetOpt = None,
    resume: Annotated[bool, typer.Option(help="Continue from the run's latest checkpoint.")]
    = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run in the folder.")]
    = False,
    device: DeviceOpt = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar or examples.")] = False,
) -> None:
    """Train a model from a YAML config; the run folder gets config, tokenizers, checkpoints
    and TensorBoard events."""
    with _user_errors():
        from translator.config import load_config
        from translator.train import train as run_training

        cfg = load_config(config, set_ or [])
        result = run_training(cfg, resume=resume, overwrite=overwrite, device=device,
                              quiet=quiet)
        v = result.last_valid
        summary = f"done in {result.seconds / 60:.1f} min, {result.state.step} steps"
        if v:
            summary += f"; validation BLEU {v['bleu']:.2f}, chrF {v['chrf']:.2f}"
        typer.echo(f"{summary}; run folder {result.run_dir}", err=True)


@app.command()
def translate(
    sentence: Annotated[str | None, typer.Argument(
        help="Text to translate; '-' or nothing reads stdin, one sentence per line.")] = None,
    run: RunOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    checkpoint: CkptOpt = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")]
    = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 64,
) -> None:
    """Translate a sentence (or stdin, a line at a time) with a trained run."""
    with _user_errors():
        from translator.inference import Translator

        if sentence is None or sentence == "-":
            try:
                lines = sys.stdin.buffer.read().decode("utf-8").splitlines()
            except UnicodeDecodeError as exc:
                raise TranslatorError(f"stdin is not valid UTF-8 (byte {exc.start})") from None
        else:
            if not sentence.strip():
                raise TranslatorError("nothing to translate: the sentence is empty")
            lines = [sentence]
        translator = Translator.from_run(_find_run(run, config, set_), checkpoint, device)
        for line in translator.translate(lines, batch_size=batch_size):
            typer.echo(line)


@app.command()
def evaluate(
    run: RunOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    split: Annotated[str, typer.Option(help="train, valid or test.")] = "test",
    checkpoint: CkptOpt = None,
    device: Annotated[str, typer.Option("--device")] = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 64,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Translate a split and print corpus BLEU and chrF (sacreBLEU, with signatures)."""
    with _user_errors():
        from translator.corpus import load_splits
        from translator.evaluate import evaluate_pairs
        from translator.inference import Translator

        if split not in ("train", "valid", "test"):
            raise TranslatorError(f"--split must be train, valid or test, got '{split}'")
        translator = Translator.from_run(_find_run(run, config, set_), checkpoint, device)
        pairs = load_splits(translator.cfg.data)[split]
        if not pairs:
            raise TranslatorError(f"the '{split}' split of this run's corpus is empty")
        report, hyps = evaluate_pairs(translator, pairs, batch_size)
        report.update(split=split, checkpoint=str(translator.checkpoint))
        out_dir = Path(translator.cfg.run_dir) / "eval"
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"{split}.json").write_text(json.dumps(report, indent=2) + "\n")
        (out_dir / f"{split}.hyp.txt").write_text("".join(h + "\n" for h in hyps),
                                                  encoding="utf-8")
        if as_json:
            typer.echo(json.dumps(report))
        else:
            typer.echo(f"{report['bleu_detail']}\n{report['bleu_signature']}\n"
                       f"chrF2 = {report['chrf']:.2f}\n{report['chrf_signature']}\n"
                       f"{report['sentences']} sentences, {split} split, "
                       f"checkpoint {report['checkpoint']}")


def main() -> None:
    """Console-script entry point."""
    app()
