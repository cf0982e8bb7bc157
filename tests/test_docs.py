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


def test_readme_config_reference_is_current() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "config_reference.py")],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out in (ROOT / "README.md").read_text(encoding="utf-8")
