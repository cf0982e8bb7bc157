"""`format: "html"`: cut an HTML fragment into the pieces of text to translate and a template
that puts the translations back, leaving every tag, attribute, comment and entity outside
those pieces exactly as they were sent.

The parser is the standard library's `html.parser` (the tokenizer BeautifulSoup uses by
default), driven so that it reports the source text of each tag: the output is the input
with only text nodes replaced, byte for byte elsewhere, where a tree parser (lxml, html5lib)
would re-serialise every tag and change quoting, attribute order or optional end tags.

Not translated: the text of `<code>`, `<pre>`, `<script>`, `<style>`, `<textarea>`, `<kbd>`,
`<samp>`, `<var>`, of any element with `translate="no"` or class `notranslate` (HTML's own
opt-out), and Mastodon's mentions and hashtags (`<a class="mention ...">`), whose text is a
name, not a word. A text node is translated as one text with its inner white space folded to
single spaces (HTML renders it so); its leading and trailing white space is kept.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser

# Elements whose content is never translated.
RAW = frozenset({"code", "pre", "script", "style", "textarea", "kbd", "samp", "var"})
# Elements without an end tag: they never hold text.
VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
                  "param", "source", "track", "wbr"})
_SPACE = re.compile(r"\s+")
_LETTER = re.compile(r"[^\W\d_]")


@dataclass
class HtmlTemplate:
    """`parts` is the document as source strings and, where a translation goes, the index of
    a text in `texts`."""

    parts: list[str | int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)

    def fill(self, translations: list[str]) -> str:
        """The document with text i replaced by translations[i] (escaped as HTML text)."""
        out = []
        for part in self.parts:
            if isinstance(part, int):
                out.append(html.escape(translations[part], quote=False).replace(
                    "\xa0", "&nbsp;"))
            else:
                out.append(part)
        return "".join(out)


def _skips(tag: str, attrs: list[tuple[str, str | None]]) -> bool:
    """Whether an element's content stays as it is."""
    if tag in RAW:
        return True
    values = {name.lower(): (value or "") for name, value in attrs}
    classes = values.get("class", "").split()
    return (values.get("translate", "").strip().lower() == "no" or "notranslate" in classes
            or (tag == "a" and ("mention" in classes or "hashtag" in classes)))


class _Events(HTMLParser):
    """Records each event with the offset where its source starts: the source of event i is
    the input from its offset to the next event's, so nothing is re-serialised."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=False)
        self.line_starts = [0]
        for m in re.finditer("\n", text):
            self.line_starts.append(m.end())
        # (offset, kind, tag or decoded text, attrs)
        self.events: list[tuple[int, str, str, list[tuple[str, str | None]]]] = []

    def _add(self, kind: str, value: str, attrs: list[tuple[str, str | None]] = ()) -> None:
        line, col = self.getpos()
        self.events.append((self.line_starts[line - 1] + col, kind, value, list(attrs)))

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._add("start", tag, attrs)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._add("void", tag)

    def handle_endtag(self, tag: str) -> None:
        self._add("end", tag)

    def handle_data(self, data: str) -> None:
        self._add("text", data)

    def handle_entityref(self, name: str) -> None:
        self._add("text", html.unescape(f"&{name};"))

    def handle_charref(self, name: str) -> None:
        self._add("text", html.unescape(f"&#{name};"))

    def _other(self, data: str) -> None:
        self._add("other", data)

    handle_comment = handle_decl = handle_pi = unknown_decl = _other


def split_html(fragment: str) -> HtmlTemplate:
    """The template of an HTML fragment (or document) and its texts to translate."""
    parser = _Events(fragment)
    parser.feed(fragment)
    parser.close()
    events = parser.events
    template = HtmlTemplate()
    stack: list[tuple[str, bool]] = []  # open elements: (tag, content kept as is)
    run_src: list[str] = []
    run_text: list[str] = []

    def flush() -> None:
        src, text = "".join(run_src), "".join(run_text).strip()
        run_src.clear()
        run_text.clear()
        if not src:
            return
        if any(skip for _, skip in stack) or not _LETTER.search(text):
            template.parts.append(src)  # nothing to translate: the source as it was
            return
        template.parts.extend([src[:len(src) - len(src.lstrip())], len(template.texts),
                               src[len(src.rstrip()):]])
        template.texts.append(_SPACE.sub(" ", text))

    first = events[0][0] if events else len(fragment)
    if first:  # never expected: html.parser reports everything
        template.parts.append(fragment[:first])
    for i, (offset, kind, value, attrs) in enumerate(events):
        src = fragment[offset:events[i + 1][0] if i + 1 < len(events) else len(fragment)]
        if kind == "text":
            run_src.append(src)
            run_text.append(value)
            continue
        flush()
        template.parts.append(src)
        if kind == "start" and value not in VOID:
            stack.append((value, _skips(value, attrs)))
        elif kind == "end":
            # Close up to the matching open element (HTML lets some end tags be left out).
            for j in range(len(stack) - 1, -1, -1):
                if stack[j][0] == value:
                    del stack[j:]
                    break
    flush()
    return template
