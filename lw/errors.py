"""Errors that are the user's to fix, and how `lw` ends a run (docs/engineering.md, "Exit statuses").

A user's mistake (a bad setting, a bad or missing file, a missing key, an unreachable server, a
failed download) raises one of the classes below with a message that says what is wrong and what to
change; `lw` prints it as one line, `lw: error: ...`, and exits with status 2. Anything else is a
bug and keeps its traceback. The other commands (`lw-compare`) end the same way through
`one_line_errors`.
"""

from __future__ import annotations

import errno
import os
import sys
import traceback
from contextlib import contextmanager
from typing import Iterator, NoReturn

# Exit statuses of `lw`.
EXIT_DONE = 0  # every item of the run is done
EXIT_BUG = 1  # an unexpected error (a traceback): please report it
EXIT_USER = 2  # a user's mistake or an environment to fix: one line says what to change
EXIT_INCOMPLETE = 3  # the run ended with items still failed; finished work is kept, a rerun does the rest


class UserMistake(Exception):
    """Base of the errors the user fixes; never raised itself."""


class UserError(UserMistake, ValueError):
    """A bad setting, file, key or value; the message names where it is and what to change."""


class MissingFile(UserMistake, FileNotFoundError):
    """A file named by a setting does not exist."""

    def __init__(self, message: str):
        super().__init__(message)

    def __str__(self) -> str:
        return self.args[0]


class Incomplete(Exception):
    """The run finished what it could, but items failed for good (after their retries). Its
    metrics, with the failure counts, are written; a rerun of the same command does only the rest."""

    def __init__(self, message: str, metrics: dict | None = None):
        super().__init__(message)
        self.metrics = metrics or {}


SHOWN_FAILURES = 5  # failed items logged one by one; the rest are counted


def one_line(text: str) -> str:
    """A message on one line: its lines joined by "; ", blank ones dropped."""
    return "; ".join(part.strip() for part in str(text).splitlines() if part.strip())


DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def fail(message: str, prog: str = "lw", status: int = EXIT_USER) -> NoReturn:
    """End the program with one line on stderr, `PROG: error: MESSAGE`."""
    print(f"{prog}: error: {one_line(message)}", file=sys.stderr)
    sys.exit(status)


def end_program(err: Exception, prog: str, full_error: bool = False) -> NoReturn:
    """Exit with the status that says what happened: 2 and one line for a user's mistake (a full
    disk among them), 1 and the traceback for a bug; with `full_error`, every error raised again."""
    if isinstance(err, OSError) and err.errno in DISK_FULL and not full_error:
        fail(f"cannot write {err.filename or 'a file'}: {err.strerror}; free disk space (or raise the quota) and "
             f"rerun the same command: every record written before is kept, and a torn last line is dropped", prog)
    if isinstance(err, UserMistake) and not full_error:
        fail(str(err), prog)
    if full_error:
        raise err
    traceback.print_exception(err)
    sys.exit(EXIT_BUG)


@contextmanager
def one_line_errors(prog: str) -> Iterator[None]:
    """A command's body whose errors end it as `lw`'s do (end_program); HYDRA_FULL_ERROR=1, the
    switch `lw` reads, shows every traceback here too."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 (sorted by end_program: one line for the user's, a traceback for bugs)
        end_program(err, prog, full_error=os.environ.get("HYDRA_FULL_ERROR") == "1")
