"""Pinned benchmark files fetched once into the cache, checked against their SHA-256: the one
downloader every benchmark uses (LongBench-Write's and WritingBench's files alike)."""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.request
from pathlib import Path

from filelock import FileLock

from lw.errors import UserError

log = logging.getLogger(__name__)

MIRROR_ENV = "LW_BENCHMARK_URL"  # a folder URL holding the official files, instead of GitHub


def download(url: str, dest: Path, sha256: str | None = None, timeout: float = 60, instead: str = "") -> Path:
    """Fetch `url` into `dest` once; a partial or corrupt download never lands at `dest`.

    A failed download is a UserError naming the URL, the cache path and `instead`, the local alternative.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest) + ".lock"):
        if dest.exists():
            return dest
        log.info("downloading %s -> %s", url, dest)
        tmp = dest.with_name(f"{dest.name}.{os.getpid()}.tmp")
        try:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    data = response.read()
            except (OSError, ValueError) as err:  # URLError, HTTPError, timeouts, a malformed mirror URL
                reason = getattr(err, "reason", None) or err
                raise UserError(f"could not download {url} ({reason}) into {dest}: copy the file there (an offline "
                                f"machine can share a cache filled online){', ' + instead if instead else ''}") from None
            digest = hashlib.sha256(data).hexdigest()
            if sha256 is not None and digest != sha256:
                raise UserError(f"{url}: SHA-256 {digest} differs from the expected {sha256}; "
                                f"the file changed upstream: {instead or 'use a local copy'}")
            tmp.write_bytes(data)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
    return dest
