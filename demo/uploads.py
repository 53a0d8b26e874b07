"""Uploads in, files out: what every tab of the demo does with the files it receives and hands back.

Shared by `demo/app.py` and `demo/video_tab.py`, so that each names uploads, words failures and writes its
results the same way.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from PIL import Image

from fer_fastai.errors import FerError

log = logging.getLogger("fer_fastai.demo")


def failure_message(error: Exception, path: str, name: str) -> str:
    """A FerError's own line (naming the file as the user knows it); anything else is a bug, so it is
    logged with its traceback and the page says where to look, instead of going blank."""
    if isinstance(error, FerError):
        return str(error).replace(path, name) if path else str(error)
    log.error("unexpected error on %s", name, exc_info=error)
    return f"something went wrong on the server while reading {name}; its log has the details"


def upload_path(payload: dict[str, Any] | str) -> tuple[str, str]:
    """The server-side path of an upload (already checked by Gradio to be in its upload cache) and
    the name the user knows it by."""
    if isinstance(payload, str):
        return payload, Path(payload).name
    path = payload.get("path") or ""
    return path, payload.get("orig_name") or Path(path).name


class OutputFiles:
    """Files the handlers hand to Gradio: one new file per answer, in a folder removed when the server exits,
    and files older than `max_age_s` removed as new ones are made, so a long-running server stays small.

    Why not return PIL images: Gradio writes those to a cache path named by the image's hash, in place, so
    two requests answered with the same picture at once rewrite the file while it is being sent (a
    truncated response, h11's "Too little data for declared Content-Length"). A file path is copied into
    that cache by an atomic rename instead."""

    def __init__(self, max_age_s: float = 3600.0):
        self._folder = tempfile.TemporaryDirectory(prefix="fer-demo-")
        self.max_age_s = max_age_s

    def new(self, prefix: str, suffix: str) -> Path:
        folder = Path(self._folder.name)
        cutoff = time.time() - self.max_age_s
        for old in folder.iterdir():
            if old.stat().st_mtime < cutoff:
                old.unlink(missing_ok=True)
        handle, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
        os.close(handle)
        return Path(name)

    def image(self, image: Image.Image, prefix: str = "fer-faces-") -> str:
        path = self.new(prefix, ".jpg")
        image.save(path, format="JPEG", quality=90)
        return str(path)
