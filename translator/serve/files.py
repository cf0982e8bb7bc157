"""POST /translate_file's results: translated files kept in a temporary folder of the
server's own for GET /download_file/<name>, with a cap on their total size and an expiry.

A name is a random token (unguessable, so a download needs no API key, as in LibreTranslate)
and the sanitised original file name. The folder is made at start-up with `mkdtemp` and
removed at shutdown: it is the server's own, nobody else's files are ever deleted.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from pathlib import Path

from translator.errors import TranslatorError

# What /translate_file takes: plain text and HTML (.docx/.odt would need their own parsers).
FORMATS = {".txt": "text", ".html": "html", ".htm": "html"}
_NAME = re.compile(r"[A-Za-z0-9_-]{22}\.[A-Za-z0-9._-]{1,120}")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(filename: str) -> str:
    """A file name reduced to letters, digits, '.', '_' and '-' (no folders, no dot files)."""
    base = filename.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = _UNSAFE.sub("_", base).strip("._")[-120:]
    return cleaned or "file"


class FileStore:
    """Translated files for download: at most `max_bytes` in all (the oldest go first), each
    for `ttl` seconds."""

    def __init__(self, max_bytes: int = 100 << 20, ttl: float = 3600.0) -> None:
        self.max_bytes, self.ttl = max_bytes, ttl
        self.dir = Path(tempfile.mkdtemp(prefix="translator-files-"))
        self._lock = threading.Lock()

    def put(self, data: bytes, filename: str) -> str:
        """Keep `data` under a new name (returned); TranslatorError if it alone is over the
        cap."""
        if len(data) > self.max_bytes:
            raise TranslatorError(f"the translated file has {len(data):,} bytes, more than "
                                  f"the {self.max_bytes:,} the server keeps")
        name = f"{secrets.token_urlsafe(16)}.{safe_name(filename)}"
        with self._lock:
            self._sweep(len(data))
            tmp = self.dir / f".{name}.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, self.dir / name)  # a download never sees half a file
        return name

    def get(self, name: str) -> Path | None:
        """The file of `name`, or None when the name is not one of ours or has expired."""
        if not _NAME.fullmatch(name):
            return None
        path = self.dir / name
        with self._lock:
            try:
                if time.time() - path.stat().st_mtime > self.ttl:
                    path.unlink()
                    return None
            except FileNotFoundError:
                return None
        return path

    def _sweep(self, incoming: int) -> None:
        """Delete expired files, then the oldest until `incoming` more bytes fit the cap."""
        files = []
        for path in self.dir.iterdir():
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            if time.time() - st.st_mtime > self.ttl:
                path.unlink(missing_ok=True)
            else:
                files.append((st.st_mtime, st.st_size, path))
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total + incoming <= self.max_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size

    def close(self) -> None:
        """Remove the folder (made by this store)."""
        shutil.rmtree(self.dir, ignore_errors=True)
