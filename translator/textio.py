"""Text in and out of `translator translate`: reading a sentence, a file or stdin in chunks
(stdin streamed, each line translated as soon as it arrives), and writing each chunk's
translations, or its n-best lists, to stdout or a file (atomically, `files.open_output`)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from translator.config import DecodingConfig
from translator.data.text import decode_lines, read_lines
from translator.errors import TranslatorError
from translator.files import open_output, resolve_target


def _bad_stdin_line(line: int) -> str:
    return f"stdin is not valid UTF-8 (line {line})"


def stdin_batches(chunk: int) -> Iterator[list[str]]:
    """The lines of stdin in batches of what has arrived so far (at most `chunk` lines), so
    that a program feeding a pipe line by line gets each translation back at once, while a
    file piped in still fills well-sorted batches. Lines split at \\n only, as split_lines."""
    import select

    try:
        fd = sys.stdin.fileno()
        select.select([fd], [], [], 0)
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
        # No selectable descriptor (an in-memory stream; a pipe on Windows): read it whole.
        lines = decode_lines(sys.stdin.buffer.read(), _bad_stdin_line)
        for start in range(0, len(lines), chunk):
            yield lines[start:start + chunk]
        return
    yield from descriptor_batches(fd, chunk)


def descriptor_batches(fd: int, chunk: int) -> Iterator[list[str]]:
    """`stdin_batches` over a selectable file descriptor: a batch is yielded whenever no more
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


def check_translate_args(output: Path | None, n_best: int, beam: int | None) -> None:
    """What `translate` refuses before any work: an --output that is a folder or lies in a
    missing folder, and an n-best wider than the beam."""
    if output is not None:
        resolve_target(output)
    if n_best > 1 and beam is not None and beam < n_best:
        # A beam of k holds k hypotheses: widening it silently would change the search.
        raise TranslatorError(f"--n-best {n_best} needs --beam {n_best} or more, got "
                              f"--beam {beam}")


def translate_inputs(sentence: str | None, input_: Path | None, chunk: int,
                     interactive: bool) -> tuple[Iterator[list[str]], int | None]:
    """What `translate` reads, in chunks of at most `chunk` lines, and how many lines that
    is when known in advance (a file)."""
    if input_ is not None:
        if sentence is not None:
            raise TranslatorError("give either a sentence or --input FILE, not both")
        lines = read_lines(input_, "input file")
        return (lines[i:i + chunk] for i in range(0, len(lines), chunk)), len(lines)
    if sentence is None or sentence == "-":
        return (iter([]) if interactive else stdin_batches(chunk)), None
    if not sentence.strip():
        raise TranslatorError("nothing to translate: the sentence is empty")
    return iter([[sentence]]), None


Emit = Callable[[Any, list[str], int], None]
"""Translate a part of the input and write it out: (stream, lines, number of the first)."""


def emitter(translator: Any, batch_size: int, dec: DecodingConfig, n_best: int,
            split: bool) -> Emit:
    """How `translate` writes the translations of a part of its input with the decoding
    settings `dec`: a line each, or with `n_best` > 1, `line number, score, text` for each
    of a line's best translations."""

    def emit(out: Any, part: list[str], first_line: int) -> None:
        if n_best > 1:
            nbest = translator.translate_nbest(part, n_best, batch_size, decoding=dec,
                                               split_sentences=split)
            for n, hyps in enumerate(nbest, start=first_line):
                out.writelines(f"{n}\t{s:.4f}\t{text}\n" for text, s in hyps)
        else:
            texts = translator.translate(part, batch_size, decoding=dec, split_sentences=split)
            out.writelines(text + "\n" for text in texts)
        out.flush()

    return emit


def translate_interactive(emit: Emit) -> None:
    """Translate what a person types at a terminal, each line as soon as it is entered."""
    print("type a sentence and press Enter; Ctrl-D ends", file=sys.stderr, flush=True)
    for n, line in enumerate(sys.stdin, start=1):
        emit(sys.stdout, [line.rstrip("\r\n")], n)


def translate_parts(parts: Iterator[list[str]], total: int | None, emit: Emit,
                    output: Path | None, quiet: bool) -> None:
    """Translate the parts into `output` (stdout when None), with a progress bar unless
    `quiet` (or stderr is no terminal)."""
    from tqdm import tqdm

    # disable=None: tqdm shows the bar only when stderr is a terminal.
    bar = tqdm(total=total, unit="line", disable=True if quiet else None, dynamic_ncols=True,
               file=sys.stderr)
    done = 0
    with open_output(output) as out:
        for part in parts:
            emit(out, part, done + 1)
            done += len(part)
            bar.update(len(part))
    bar.close()
