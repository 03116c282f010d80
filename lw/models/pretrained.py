"""A from_pretrained's failure as one line naming what to change: a local directory's missing file,
what transformers could not do with a complete checkpoint, or for a hub id where its cache is."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, TypeVar

from transformers import __version__ as transformers_version

from lw.errors import UserError

T = TypeVar("T")

# What a checkpoint directory holds: (what, file patterns any of which is it).
CHECKPOINT_FILES = {"config.json": ["config.json"], "weights": ["*.safetensors", "*.bin"],
                    "tokenizer": ["tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json"]}


def load_pretrained(load: Callable[[], T], path: str, setting: str = "model.path", remote_code: bool = False) -> T:
    """`load()`, a from_pretrained of `path` (a local checkpoint or a hub id), with a failure as one
    line: a local directory's missing file, what transformers could not do with a complete checkpoint,
    or for a hub id where the hub cache is and the local alternative. `remote_code`: the load runs the
    checkpoint's own code (trust_remote_code), whose failures of any kind are the checkpoint's."""
    from huggingface_hub import constants

    try:
        return load()
    except Exception as err:  # noqa: BLE001 (not found, offline, gated, a malformed id, an unloadable checkpoint)
        if not isinstance(err, (OSError, ValueError)) and not remote_code:
            raise
        reason = first_line(err) if isinstance(err, (OSError, ValueError)) else f"{type(err).__name__}: {first_line(err)}"
        if remote_code and not isinstance(err, OSError):
            raise UserError(f"{setting}={path}: its remote code (model.trust_remote_code=true) failed under "
                            f"transformers {transformers_version}: {reason}; it was written for another "
                            f"transformers (remote-code GLM-4 loads natively without it: docs/models.md)") from None
        local = Path(path).expanduser()
        if local.exists() or path.startswith((".", "/", "~")) or path.count("/") > 1:
            raise UserError(f"{setting}={path}: {_local_failure(local, reason)}") from None
        raise UserError(f"{setting}={path}: could not load it from the Hugging Face hub "
                        f"({reason}); the hub cache is {constants.HF_HUB_CACHE}: offline, fill "
                        f"it on a machine online (`hf download {path}`) or set {setting} to a local "
                        f"checkpoint directory") from None


def first_line(err: BaseException, limit: int = 300) -> str:
    """The error's first line, shortened at a word boundary (never mid-word) when longer than `limit`."""
    lines = str(err).strip().splitlines()
    line = lines[0] if lines else type(err).__name__
    if len(line) <= limit:
        return line
    return line[:limit].rsplit(" ", 1)[0] + " ..."


def _local_failure(local: Path, reason: str) -> str:
    """Why a local directory did not load: a file it lacks, else what transformers said."""
    if not local.is_dir():
        return "no such directory; set it to a checkpoint directory (config.json, weights, tokenizer) or a hub id"
    missing = [what for what, patterns in CHECKPOINT_FILES.items()
               if not any(next(local.glob(p), None) for p in patterns)]
    if missing:
        return (f"not a complete checkpoint: no {' and no '.join(missing)} in it ({reason}); set it to a "
                f"checkpoint directory (config.json, weights, tokenizer) or a hub id")
    config = local / "config.json"
    remote = "auto_map" in config.read_text() if config.is_file() else False
    return (f"transformers {transformers_version} cannot load this checkpoint: {reason}"
            + (f"; it is remote code (config.json's auto_map): model.trust_remote_code=true runs it where it was "
               f"written for transformers {transformers_version}; remote-code GLM-4 loads natively without it "
               f"(docs/models.md)" if remote else ""))
