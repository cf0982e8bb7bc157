"""The README stays accurate: its commands match CI, its config reference matches config.py."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _quickstart_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = re.search(r"^## Quickstart$", text, re.M)
    assert start, "README has no Quickstart section"
    return re.findall(r"^```bash\n(.*?)\n```", text[start.end():], re.M | re.S)


def test_ci_runs_the_readme_test_command() -> None:
    blocks = _quickstart_blocks()
    assert len(blocks) >= 2
    assert "\n" not in blocks[0] and "\n" not in blocks[1], "each must be one command line"
    assert "configs/toy.yaml" in blocks[0] and "translator translate" in blocks[0]
    assert "pytest" in blocks[1]
    ci_lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert blocks[1] in ci_lines


def test_config_reference_is_current() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "config_reference.py")],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out in (ROOT / "docs" / "config.md").read_text(encoding="utf-8")


DOCS = sorted((ROOT / "docs").glob("*.md"))


def test_readme_is_short_and_links_only_to_what_exists() -> None:
    """The README is the first thing users read: under 250 lines, and every relative link in
    it and in docs/ points at a file of the repository."""
    readme = ROOT / "README.md"
    assert len(readme.read_text(encoding="utf-8").splitlines()) < 250
    for page in (readme, *DOCS):
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"


def _cli_doc_sections() -> dict[str, list[str]]:
    """The options each `## translator VERB` section of docs/*.md lists in its tables."""
    text = "\n".join(page.read_text(encoding="utf-8") for page in DOCS)
    sections: dict[str, list[str]] = {}
    for part in re.split(r"^## ", text, flags=re.M)[1:]:
        verb = re.match(r"`translator (\w+)", part)
        if verb:
            rows = [line.split("|")[1] for line in part.splitlines() if line.startswith("| `-")]
            sections.setdefault(verb[1], []).extend(re.findall(r"(--[\w-]+)", " ".join(rows)))
    return sections


def test_every_option_docs_cli_lists_exists() -> None:
    """docs/ name no option that the verb's --help does not know."""
    from typer.testing import CliRunner

    from translator.cli import app

    sections = _cli_doc_sections()
    assert {"train", "translate", "evaluate", "export"} <= set(sections)
    for verb, options in sections.items():
        help_text = CliRunner().invoke(app, [verb, "--help"], terminal_width=200).stdout
        missing = [o for o in options if o not in help_text]
        assert not missing, f"docs/ list {missing} for `translator {verb}`"
