"""Atomic file writes: a crash, Ctrl-C or full disk never leaves a half-written file where a good one was.

Every file is written under a temporary name beside it (`.NAME.PID.tmp`) and renamed into place only once
complete; `atomic_files` does that for a set of files that belong together (a model and its parity report).
A failed write is one line naming the file and the reason (`WriteError`), and leaves no temporary file;
those of a run that was killed (kill -9) are removed by the next write into their folder.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import signal
import threading
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator

from .errors import FerError

log = logging.getLogger(__name__)

# Write failures that name no file: write() or close() of the file being written raises them.
NAMELESS_WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
TEMP_NAME = re.compile(r"\..+\.(\d+)\.tmp")  # `temp_path`'s pattern; the number is the writer's PID


class WriteError(FerError, OSError):
    """A file or folder could not be written. A FerError, so a CLI prints it as one line; still an OSError,
    so code that can do without the file (the decoded-image cache) goes on as before."""


def write_error(what: str, error: OSError) -> WriteError:
    """'cannot write PATH: <the system's reason>; <what to do>' from an OSError."""
    reason = os.strerror(error.errno) if error.errno else str(error)
    full = error.errno in (errno.ENOSPC, errno.EDQUOT)
    advice = "free some space or choose another path" if full else "choose another path"
    converted = WriteError(f"cannot write {what}: {reason}; {advice}")
    converted.errno = error.errno
    return converted


def ensure_folder(folder: str | Path) -> Path:
    """Create `folder` (and its parents) for output; a file in the way is a one-line error, not a traceback."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise WriteError(f"cannot write into {folder}: it or a folder above it is a file; choose another path") from None
    except OSError as error:
        raise write_error(f"into {folder}", error) from None
    return folder


def check_output_folder(folder: str | Path) -> Path:
    """Before long work, fail if `folder` could not be written later: a file in its place or above it, a folder
    this user may not write to, or one that cannot be made (under /proc, /sys)."""
    folder = Path(folder)
    chain = (folder, *folder.parents)
    existing = next(path for path in chain if path.exists())  # '.' or '/' always does
    if not existing.is_dir():
        raise FerError(f"cannot write into {folder}: {existing} is a file; choose another path")
    if not os.access(existing, os.W_OK):
        raise FerError(f"cannot write into {folder}: {existing} is not writable; choose another path")
    probe_folders(chain[:chain.index(existing)])
    return folder


def probe_folders(missing: tuple[Path, ...]) -> None:
    """Make the `missing` folders (deepest first in the tuple) and remove them again: only trying tells whether
    a place such as /proc takes a new folder, and a failed command should not leave empty folders."""
    made = []
    try:
        for folder in reversed(missing):
            folder.mkdir()
            made.append(folder)
    except OSError as error:
        raise write_error(f"into {missing[0]}", error) from None
    finally:
        for folder in reversed(made):
            with suppress(OSError):
                folder.rmdir()


def check_output_file(path: str | Path) -> Path:
    """Before long work, fail if the file `path` could not be written later (see `check_output_folder`)."""
    path = Path(path)
    if path.is_dir():
        raise FerError(f"cannot write {path}: it is a folder; give a file name")
    check_output_folder(path.parent)
    return path


@contextmanager
def atomic_files() -> Iterator[Callable[[str | Path], ContextManager[Path]]]:
    """Write a set of files that belong together: `stage(path)` yields a temporary path beside `path`. Only when
    the whole block succeeds is every staged file renamed into place; otherwise no new file and no temporary
    file remains, and the old files are untouched. (The renames run one by one; in one folder only a failing
    disk makes one of them fail.)"""
    staged: list[tuple[Path, Path]] = []

    @contextmanager
    def stage(path: str | Path) -> Iterator[Path]:
        path = Path(path)
        temp = temp_path(path)
        try:
            yield temp
            os.chmod(temp, 0o666 & ~_umask())  # some writers (safetensors) create files private to the owner
        except BaseException as error:
            temp.unlink(missing_ok=True)
            if isinstance(error, OSError) and is_write_failure(error, temp):
                raise write_error(str(path), error) from None
            raise
        staged.append((temp, path))

    with sigterm_raises():
        try:
            yield stage
            for temp, path in staged:
                try:
                    os.replace(temp, path)
                except OSError as error:
                    raise write_error(str(path), error) from None
        finally:
            for temp, _ in staged:
                temp.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` (its folder is created); it replaces `path` only if the block succeeds."""
    with atomic_files() as stage, stage(path) as temp:
        yield temp


def temp_path(path: Path) -> Path:
    """The temporary name `path` is written under, once its folder exists and stale temporary files are gone."""
    if path.is_dir():
        raise FerError(f"cannot write {path}: it is a folder; give a file name")
    remove_stale_temps(ensure_folder(path.parent))
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def is_write_failure(error: OSError, temp: Path) -> bool:
    """Whether an OSError raised while writing `temp` is about `temp`, not about a file read meanwhile
    (or another file's write, already reported)."""
    if isinstance(error, WriteError):
        return False
    names = {os.fsdecode(name) for name in (error.filename, error.filename2)
             if isinstance(name, (str, bytes, os.PathLike))}
    return str(temp) in names if names else error.errno in NAMELESS_WRITE_ERRORS


def remove_stale_temps(folder: Path) -> list[Path]:
    """Remove the temporary files in `folder` whose writer is gone (killed with -9, or the power failed)."""
    removed = []
    for temp in folder.glob(".*.tmp"):
        if left_by_dead_process(temp):
            with suppress(OSError):
                temp.unlink()
                removed.append(temp)
    if removed:
        log.warning("removed %s, left by a run that was killed while writing", ", ".join(map(str, removed)))
    return removed


def left_by_dead_process(temp: Path) -> bool:
    """Whether `temp` is one of ours (`.NAME.PID.tmp`) and no process has its PID any more."""
    match = TEMP_NAME.fullmatch(temp.name)
    if not match or os.name != "posix" or not temp.is_file():  # on Windows, os.kill(pid, 0) ends the process
        return False
    try:
        os.kill(int(match[1]), 0)
    except ProcessLookupError:
        return True
    except (OSError, OverflowError):  # alive but another user's (EPERM), or no PID at all
        pass
    return False


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """While temporary files exist, SIGTERM (`kill`, a stopped container) exits through SystemExit, so that
    `finally` removes them; only in the main thread, and only where nothing else handles SIGTERM."""
    main_thread = threading.current_thread() is threading.main_thread()
    if not main_thread or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def terminate(signum, frame):
        raise SystemExit(128 + signum)  # the exit status a shell reports for a killed process

    signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def json_text(data: Any) -> str:
    """The project's JSON files: indented, one trailing newline, anything unknown as its str()."""
    return json.dumps(data, indent=2, default=str) + "\n"


def write_json(path: str | Path, data: Any) -> None:
    with atomic_path(path) as temp:
        temp.write_text(json_text(data))
