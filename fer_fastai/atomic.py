"""Atomic file writes: a crash or Ctrl-C never leaves a half-written file where a good one was."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .errors import FerError


def ensure_folder(folder: str | Path) -> Path:
    """Create `folder` (and its parents) for output; a file in the way is a one-line error, not a traceback."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise FerError(f"cannot write into {folder}: it or a folder above it is a file; choose another path") from None
    except PermissionError:
        raise FerError(f"cannot write into {folder}: permission denied; choose another path") from None
    return folder


def check_output_folder(folder: str | Path) -> Path:
    """Before long work, fail if `folder` could not be created later (a file is in its place or above it)."""
    folder = Path(folder)
    existing = next(path for path in (folder, *folder.parents) if path.exists())  # '.' or '/' always does
    if not existing.is_dir():
        raise FerError(f"cannot write into {folder}: {existing} is a file; choose another path")
    return folder


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` (its folder is created); it replaces `path` only if the block succeeds."""
    path = Path(path)
    if path.is_dir():
        raise FerError(f"cannot write {path}: it is a folder; give a file name")
    ensure_folder(path.parent)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield temp
        os.chmod(temp, 0o666 & ~_umask())  # some writers (safetensors) create files private to the owner
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | Path, data: Any) -> None:
    with atomic_path(path) as temp:
        temp.write_text(json.dumps(data, indent=2, default=str) + "\n")
