"""One exception type for every problem a user can fix, and the CLI glue that prints it as one line."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator


class FerError(Exception):
    """A user-facing problem: the message says what was wrong and what to do about it."""


def require(checks: list[tuple[bool, str]]) -> None:
    """Raise the message of the first failed (condition, message) pair, so option checks read as a table."""
    for ok, message in checks:
        if not ok:
            raise FerError(message)


@contextmanager
def cli_errors() -> Iterator[None]:
    """Turn a FerError (or Ctrl-C) into one line on stderr and a non-zero exit, never a traceback."""
    try:
        yield
    except FerError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
