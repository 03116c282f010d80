"""JSON-lines files: reading them with every line named, writing them, and the append-only files
that long jobs (generation, judging, preference pairs, AgentWrite) resume from.

A killed job leaves at most one torn last line. Reading drops it and cuts it off the file, so the
next append starts on a fresh line instead of gluing a new record onto the fragment.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

from lw.errors import UserError

log = logging.getLogger(__name__)


def read_resumable(path: Path, key: str = "id") -> dict[str, dict]:
    """Complete records of `path` by `key` (the last one wins); a torn tail is removed from the file."""
    done: dict[str, dict] = {}
    path = Path(path)
    if not path.exists():
        return done
    with open(path, "rb") as f:
        data = f.read()
    end = len(data)
    if data and not data.endswith(b"\n"):
        end = data.rfind(b"\n") + 1  # the last record was being written when the job stopped
        log.warning("%s: dropping a torn last line (%d bytes) left by an interrupted run", path, len(data) - end)
        with open(path, "r+b") as f:
            f.truncate(end)
    for number, line in enumerate(data[:end].splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}:{number}: not valid JSON ({err.msg}); "
                             f"fix or delete the line to resume") from None
        if not isinstance(row, dict) or key not in row:
            raise UserError(f"{path}:{number}: a record without the field {key!r}")
        done[str(row[key])] = row
    return done


class Appender:
    """Writes one JSON record per line and flushes it to disk at once."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")

    def write(self, row: dict) -> None:
        try:
            self._file.write(json.dumps(row, ensure_ascii=False) + "\n")
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as err:  # a full disk: say which file (the OS error does not)
            raise OSError(err.errno, err.strerror, str(self.path)) from None

    def close(self) -> None:
        try:
            self._file.close()
        except OSError:  # only after a failed write (every write is flushed): that error is the one to report
            pass

    def __enter__(self) -> "Appender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_lines(path: Path) -> Iterator[tuple[str, Any]]:
    """("FILE:LINE", the parsed value) for each non-blank line; a line that is not JSON comes as its
    json.JSONDecodeError, for the caller to raise or count."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue  # blank lines (a trailing newline) are not records
            try:
                yield f"{path}:{number}", json.loads(line)
            except json.JSONDecodeError as err:
                yield f"{path}:{number}", err


def read_json_objects(path: Path) -> Iterator[tuple[str, dict]]:
    """("FILE:LINE", object) for each non-blank line; a line that is not a JSON object fails, named."""
    for where, row in read_lines(path):
        if isinstance(row, json.JSONDecodeError):
            raise UserError(f"{where}: not valid JSON ({row.msg})")
        if not isinstance(row, dict):
            raise UserError(f"{where}: expected a JSON object, got {type(row).__name__}")
        yield where, row


def write_jsonl(rows: Iterable[dict], path: Path) -> int:
    """Write `rows` as a new file, one JSON object per line; the number of rows written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n
