"""Language identification for `source: "auto"` and POST /detect, with py3langid (a
maintained fork of langid.py: its model ships inside the package, a few MB, numpy only; no
download at run time). Candidates are restricted to the languages the server translates
from, as LibreTranslate does: naming a language nobody can translate would not help.

lingua-language-detector was the other choice: more accurate on very short texts, but a
~96 MB wheel of compiled models for 75 languages; py3langid is ~5 MB and loads in half a
second, which suits a server that only has to choose among the few languages it serves.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from translator.errors import TranslatorError

INSTALL_HINT = "language detection needs py3langid: pip install 'translator[serve]'"


class LanguageDetector:
    """Ranks `languages` (codes) for a text. Loaded on first use; thread-safe."""

    def __init__(self, languages: Sequence[str]) -> None:
        self.languages = sorted(set(languages))
        self._identifier: Any = None
        self._known: list[str] = []
        self._lock = threading.Lock()

    def _load(self) -> Any:
        with self._lock:
            if self._identifier is None:
                try:
                    from py3langid import langid
                except ImportError as exc:
                    raise TranslatorError(INSTALL_HINT) from exc
                identifier = langid.LanguageIdentifier.from_modelpath(
                    langid.MODEL_DIR / langid.MODEL_FILE, norm_probs=True)
                self._known = [c for c in self.languages if c in identifier.nb_classes]
                if len(self._known) > 1:
                    identifier.set_languages(self._known)
                self._identifier = identifier
        return self._identifier

    def rank(self, text: str, top: int = 3) -> list[dict[str, Any]]:
        """LibreTranslate's answer for one text: up to `top` of {"confidence" (0-100),
        "language"}, most likely first. A server with one source language answers it with
        confidence 100; text the model knows nothing about gets the first language with 0."""
        if len(self.languages) == 1:
            return [{"confidence": 100.0, "language": self.languages[0]}]
        identifier = self._load()
        if len(self._known) < 2:  # the model knows at most one of our languages
            known = self._known or self.languages
            return [{"confidence": 100.0 if self._known else 0.0, "language": known[0]}]
        if not any(c.isalpha() for c in text):
            return [{"confidence": 0.0, "language": self._known[0]}]
        ranked = identifier.rank(text)[:top]
        return [{"confidence": round(float(p) * 100, 1), "language": code}
                for code, p in ranked]

    def best(self, text: str) -> dict[str, Any]:
        """The most likely language of `text` ({"confidence", "language"})."""
        return self.rank(text, 1)[0]
