"""Print the config reference (every key, type, default, meaning) as Markdown tables.

The source of truth is `translator/config.py`: each dataclass field and the string literal
under it. The README's "Config reference" section is this script's output:

    python scripts/config_reference.py
"""

from __future__ import annotations

import ast
from pathlib import Path

SECTION_CLASSES = {
    "DataConfig": "data",
    "CorpusConfig": "data.corpora[]",
    "TokenizerConfig": "tokenizer",
    "ModelConfig": "model",
    "TrainingConfig": "training",
    "OutputConfig": "output",
    "DecodingConfig": "decoding",
}


def reference(source: str) -> str:
    """Markdown tables, one per config section, read from config.py's source text."""
    tree = ast.parse(source)
    out: list[str] = []
    for node in tree.body:
        if not (isinstance(node, ast.ClassDef) and node.name in SECTION_CLASSES):
            continue
        section = SECTION_CLASSES[node.name]
        doc = ast.get_docstring(node) or ""
        out += [f"### `{section}`", "", doc, "", "| key | type | default | meaning |",
                "| --- | --- | --- | --- |"]
        body = node.body
        for i, stmt in enumerate(body):
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                continue
            meaning = ""
            nxt = body[i + 1] if i + 1 < len(body) else None
            if (isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                    and isinstance(nxt.value.value, str)):
                meaning = " ".join(nxt.value.value.split())
            type_text = ast.unparse(stmt.annotation).replace("|", "or")
            default = ast.unparse(stmt.value) if stmt.value is not None else ""
            out.append(f"| `{stmt.target.id}` | `{type_text}` | `{default}` | {meaning} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    root = Path(__file__).resolve().parent.parent
    print(reference((root / "translator" / "config.py").read_text(encoding="utf-8")))
