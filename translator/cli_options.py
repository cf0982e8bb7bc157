"""The parts of the `translator` command that every verb shares: how help is shown (click's
plain style, `--debug` accepted after the verb) and the option groups, each defined once and
reused by the verbs that take it: where the model comes from (`--run`, `--config`, `--set`,
`--checkpoint`), which engine runs it (`--engine`, `--model`, `--quantization`, `--device`,
`--dtype`, threads) and how it decodes (`--beam`, `--length-penalty`, `--max-len-a/b`,
`--batch-size`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup


class Verbs(TyperGroup):
    """The command group, taking `--debug` after the verb too (`translator translate --debug
    ...`): it is moved in front of the verb, where the group's option lives."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        end = args.index("--") if "--" in args else len(args)  # after "--" all is text
        if "--debug" in args[:end]:
            args = ["--debug", *(a for a in args[:end] if a != "--debug"), *args[end:]]
        return super().parse_args(ctx, args)


# The app is made with rich_markup_mode=None: plain click help, where flags show no type and
# options their metavar (typer's rich panels label every flag <bool>), which reads well piped.
class Argument(TyperArgument):
    """A positional argument shown as click shows one: `SENTENCE`, not typer's `SENTENCE <str>`
    (help) and `{SENTENCE}` (usage)."""

    def display_type_rich(self, ctx: Any) -> str | None:
        return None

    def _usage_display_name(self) -> str:
        name = self.display_name_raw
        return (name if self.required else f"[{name}]") + ("..." if self.nargs != 1 else "")


class Verb(TyperCommand):
    """A verb whose arguments read as click's (see Argument)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if type(param) is TyperArgument:
                param.__class__ = Argument  # adds no state, only changes how it is shown


def opt(flags: str, metavar: str | None, help: str, **kwargs: Any) -> Any:
    """A typer option: its flags (space-separated), metavar and help text."""
    return typer.Option(*flags.split(), metavar=metavar, help=help, **kwargs)


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


# -- the engine and decoding options of translate, evaluate, attention (and serve) ----------

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
    "(CTranslate2's intra_threads; 0: its default; 1, the default, was fastest measured).")]
InterThreadsOpt = Annotated[int, typer.Option(
    "--inter-threads", min=0, metavar="N", help="ctranslate2 engine: batches run at once "
    "(CTranslate2's inter_threads; 0, the default: one per core).")]
DtypeOpt = Annotated[str | None, typer.Option(
    "--dtype", metavar="DTYPE", help="Weights as fp32, bf16 (faster batched decoding on CPUs "
    "with AMX and on recent GPUs) or fp16 (GPUs) (default: the run's decoding.dtype).")]


JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
