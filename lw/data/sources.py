"""Messages-format samples from local files, the Hugging Face hub, or mixes of them.

Every row is checked and normalised to `{"messages": [{"role": "user"|"assistant", "content": ...}]}`
before anything else sees it. A bad row is a clear error naming where it is (file and line, or
dataset and row) and the field at fault, or, with `data.on_bad_sample=drop`, a drop counted by
reason. Rows may use `messages` (role/content) or ShareGPT `conversations` (from/value).
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from lw import jsonl
from lw.errors import MissingFile, UserError

# Invisible characters that real SFT answers carry (copy-paste, web text); they split words for
# the word counter and cost tokens, so answers lose them before counting and tokenizing.
ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff"))

ROLES = ("user", "assistant")
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "user": "user", "assistant": "assistant"}

# Reasons a row is bad; each is a key of the statistics as `dropped_<reason>`.
BAD_SAMPLE_REASONS = ("malformed_json", "missing_messages", "unknown_role", "empty_content",
                      "no_assistant_turn", "bad_turn_order", "missing_field")


class BadSample(UserError):
    """A row that is not a usable conversation; the message names where and which field."""

    def __init__(self, reason: str, where: str, field: str, problem: str):
        assert reason in BAD_SAMPLE_REASONS, reason
        self.reason = reason
        super().__init__(f"{where}: field {field!r}: {problem} [{reason}]")


def remove_zero_width(text: str) -> str:
    return text.translate(ZERO_WIDTH)


# ---------------------------------------------------------------------------------------------
# Readers: (where, row) pairs; a row that cannot even be parsed comes as a BadSample instance.

def read_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    for where, row in jsonl.read_lines(path):
        if isinstance(row, json.JSONDecodeError):
            row = BadSample("malformed_json", where, "<line>", f"not valid JSON ({row})")
        yield where, row


def read_parquet(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    row = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        for record in batch.to_pylist():
            yield f"{path} row {row}", record
            row += 1


def read_hub(hub_id: str, split: str) -> Iterator[tuple[str, Any]]:
    from datasets import load_dataset
    from huggingface_hub import constants

    try:
        dataset = load_dataset(hub_id, split=split)
    except (OSError, ValueError) as err:  # not found, offline, no such split
        raise UserError(f"{hub_id} (split {split}): could not load it from the Hugging Face hub "
                        f"({str(err).splitlines()[0][:200]}); offline, fill the datasets cache ({constants.HF_HOME}) "
                        f"on a machine online, or set data.path=FILE (.jsonl/.parquet) to a local copy") from None
    for row, record in enumerate(dataset):
        yield f"{hub_id} (split {split}) row {row}", record


def read_source(spec, label: str) -> Iterator[tuple[str, Any]]:
    """Rows of one source: `spec.path` (a local file) if set, else `spec.hub_id`."""
    if spec.path:
        path = Path(spec.path).expanduser()
        if not path.is_file():
            raise MissingFile(f"{label}.path: no such file: {path}")
        if path.suffix == ".jsonl":
            return read_jsonl(path)
        if path.suffix == ".parquet":
            return read_parquet(path)
        raise UserError(f"{label}.path: {path} is neither .jsonl nor .parquet")
    if spec.hub_id:
        return read_hub(spec.hub_id, spec.split)
    raise UserError(f"{label}: set path (a local .jsonl/.parquet file) or hub_id (a dataset on the hub)")


# ---------------------------------------------------------------------------------------------
# Checking and normalising one row.

def to_messages(row: Any, where: str, fmt: str = "auto") -> list[dict]:
    """The row's conversation as user/assistant messages, or BadSample saying what is wrong.

    Answers lose zero-width characters. The conversation may end with a user turn (the caller
    removes it), but must hold an answer.
    """
    if not isinstance(row, Mapping):
        raise BadSample("malformed_json", where, "<line>", f"a row must be a JSON object, got {type(row).__name__}")
    if fmt == "auto":
        fmt = "sharegpt" if "messages" not in row and "conversations" in row else "messages"
    field, role_key, content_key = (("conversations", "from", "value") if fmt == "sharegpt"
                                    else ("messages", "role", "content"))
    turns = row.get(field)
    if not isinstance(turns, list) or not turns:
        found = "missing" if turns is None else f"{type(turns).__name__} {turns!r}"[:80]
        raise BadSample("missing_messages", where, field, f"expected a non-empty list of turns, got {found}")
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, Mapping):
            raise BadSample("missing_messages", where, f"{field}[{i}]", "a turn must be an object")
        role = turn.get(role_key)
        role = SHAREGPT_ROLES.get(role) if fmt == "sharegpt" and isinstance(role, str) else role
        if role not in ROLES:
            expected = sorted(SHAREGPT_ROLES) if fmt == "sharegpt" else list(ROLES)
            raise BadSample("unknown_role", where, f"{field}[{i}].{role_key}",
                            f"unknown role {turn.get(role_key)!r}, expected one of {expected}")
        content = turn.get(content_key)
        if not isinstance(content, str):
            raise BadSample("empty_content", where, f"{field}[{i}].{content_key}",
                            "missing content" if content is None
                            else f"content must be a string, got {type(content).__name__}")
        if role == "assistant":
            content = remove_zero_width(content)
        if not content.strip():
            raise BadSample("empty_content", where, f"{field}[{i}].{content_key}", "empty content")
        messages.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in messages):
        raise BadSample("no_assistant_turn", where, field, "no assistant turn: nothing to learn from")
    for i, message in enumerate(messages):
        if message["role"] != ROLES[i % 2]:
            raise BadSample("bad_turn_order", where, f"{field}[{i}].{role_key}",
                            f"turns must alternate user/assistant from a user turn; turn {i} should be "
                            f"{ROLES[i % 2]!r}, got {message['role']!r}")
    return messages


def clean_rows(rows: Iterable[tuple[str, Any]], fmt: str, on_bad_sample: str, stats: Counter) -> Iterator[dict]:
    """Checked, normalised samples; bad rows raise or are counted as `dropped_<reason>`."""
    drop = on_bad_sample == "drop"
    for where, row in rows:
        stats["sequences_in"] += 1
        try:
            if isinstance(row, BadSample):
                raise row
            messages = to_messages(row, where, fmt)
        except BadSample as bad:
            if not drop:
                raise
            stats[f"dropped_{bad.reason}"] += 1
            continue
        if messages[-1]["role"] != "assistant":
            messages.pop()  # a question never answered: no target, and every format ends on an answer
            stats["trailing_user_turns_removed"] += 1
        yield {"messages": messages}


# ---------------------------------------------------------------------------------------------
# Mixing.

def mix_sizes(available: Mapping[str, int], specs: Mapping[str, Any]) -> dict[str, int]:
    """How many samples each source gives to the mix.

    `count: N` takes N samples; `ratio: r` makes the source r of the mixed set; neither takes all.
    With only ratios (summing to 1) the mix is as large as the scarcest source allows; with counts
    (or whole sources) beside ratios, the ratios are shares of the total those fix.
    """
    fixed, ratios = {}, {}
    for name, spec in specs.items():
        if spec.count is not None and spec.ratio is not None:
            raise UserError(f"data.mix.{name}: set count or ratio, not both")
        if spec.count is not None:
            if not 0 <= spec.count <= available[name]:
                raise UserError(f"data.mix.{name}.count={spec.count}, but the source has {available[name]} "
                                 "usable samples")
            fixed[name] = spec.count
        elif spec.ratio is not None:
            if not 0 < spec.ratio <= 1:
                raise UserError(f"data.mix.{name}.ratio={spec.ratio} must lie in (0, 1]")
            ratios[name] = spec.ratio
        else:
            fixed[name] = available[name]
    if not ratios:
        return fixed
    share = sum(ratios.values())
    if fixed:
        if share >= 1:
            raise UserError(f"data.mix: ratios sum to {share:g}, leaving no room for the sources taken whole "
                             f"or by count ({sorted(fixed)})")
        total = sum(fixed.values()) / (1 - share)
    else:
        if not math.isclose(share, 1.0, abs_tol=1e-6):
            raise UserError(f"data.mix: ratios sum to {share:g}; with no count they must sum to 1")
        total = min(available[name] / r for name, r in ratios.items())
    sizes = dict(fixed)
    for name, r in ratios.items():
        sizes[name] = math.floor(r * total + 1e-9)
        if sizes[name] > available[name]:
            raise UserError(f"data.mix.{name}.ratio={r:g} needs {sizes[name]} samples of a mix of {total:.0f}, "
                             f"but the source has {available[name]} usable samples")
    return {name: sizes[name] for name in specs}


def choose(samples: list[dict], size: int, seed: int, name: str) -> list[dict]:
    """`size` of `samples`, chosen by a seed of their own, in their original order."""
    if size >= len(samples):
        return samples
    rng = random.Random(f"{seed}:{name}")
    return [samples[i] for i in sorted(rng.sample(range(len(samples)), size))]
