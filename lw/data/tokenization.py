"""Chat-format tokenization of a messages JSONL with `datasets.map`, cached by content.

The cache key hashes the samples file's bytes, the tokenizer's full state, the chat format and the
over-long policy, so a rerun with the same data reuses the tokenized set and any change rebuilds
it. (datasets' own fingerprint of a closure over a tokenizer is not reliable across processes.)
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
from datasets import Dataset, Features, Sequence, Value, load_from_disk
from filelock import FileLock

from lw.errors import UserError
from lw.models.chat_format import ChatFormat

log = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when the tokenized layout or the over-long rules change
FEATURES = Features({"input_ids": Sequence(Value("int32")), "completion_mask": Sequence(Value("int8"))})


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    state = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    extra = json.dumps([type(tokenizer).__name__, tokenizer.bos_token_id, tokenizer.eos_token_id])
    return hashlib.sha256((state + extra).encode()).hexdigest()


def arrow_column(dataset: Dataset, column: str):
    """The column as one pyarrow array, honouring any select/filter done on the dataset."""
    return dataset.with_format("arrow")[:][column].combine_chunks()


def row_lengths(dataset: Dataset, column: str = "input_ids") -> np.ndarray:
    return pc.list_value_length(arrow_column(dataset, column)).to_numpy(zero_copy_only=False)


def row_sums(dataset: Dataset, column: str) -> np.ndarray:
    values = arrow_column(dataset, column)
    parents = pc.list_parent_indices(values).to_numpy(zero_copy_only=False)
    flat = pc.list_flatten(values).to_numpy(zero_copy_only=False)
    return np.bincount(parents, weights=flat, minlength=len(values)).astype(np.int64)


def tokenize_messages(messages_path: Path, chat_format: ChatFormat, tokenizer, max_length: int, overlong: str,
                      cache_dir: str | Path, num_proc: int = 1) -> tuple[Dataset, Counter]:
    """input_ids and completion_mask of every sample, and what happened to over-long ones.

    A sample longer than `max_length` tokens is dropped (`overlong=drop`) or keeps its first
    `max_length` tokens (`truncate`); one left with no target token is dropped either way.
    """
    key = hashlib.sha256(json.dumps({
        "version": CACHE_VERSION, "samples": file_digest(messages_path), "chat_format": chat_format.name,
        "tokenizer": tokenizer_fingerprint(tokenizer), "max_length": max_length, "overlong": overlong,
    }, sort_keys=True).encode()).hexdigest()[:20]
    root = Path(cache_dir).expanduser() / "tokenized"
    target = root / key
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not (target / "lw_stats.json").exists():
            # datasets' intermediate files (the JSON as Arrow, map outputs) live in a work folder
            # that goes once the result is saved: only the tokenized set stays in the cache.
            work, tmp = target.with_name(key + ".work"), target.with_name(key + ".tmp")
            for folder in (work, tmp):
                shutil.rmtree(folder, ignore_errors=True)
            dataset, stats = _tokenize(messages_path, chat_format, tokenizer, max_length, overlong, work, num_proc)
            if len(dataset) == 0:  # nothing to cache (nor to train on: the caller says so)
                shutil.rmtree(work, ignore_errors=True)
                return Dataset.from_dict({"input_ids": [], "completion_mask": []}, features=FEATURES), Counter(stats)
            dataset.save_to_disk(str(tmp))
            (tmp / "lw_stats.json").write_text(json.dumps(stats))
            tmp.rename(target)
            del dataset
            shutil.rmtree(work, ignore_errors=True)
        else:
            log.info("tokenized samples from the cache: %s", target)
    return load_from_disk(str(target)), Counter(json.loads((target / "lw_stats.json").read_text()))


def _tokenize(messages_path: Path, chat_format: ChatFormat, tokenizer, max_length: int, overlong: str,
              work_dir: Path, num_proc: int) -> tuple[Dataset, dict]:
    samples = Dataset.from_json(str(messages_path), cache_dir=str(work_dir))

    def tokenize(batch):
        pairs = chat_format.tokenize_many(tokenizer, batch["messages"])
        return {"input_ids": [ids for ids, _ in pairs], "completion_mask": [mask for _, mask in pairs]}

    dataset = samples.map(tokenize, batched=True, remove_columns=samples.column_names, features=FEATURES,
                          num_proc=num_proc if num_proc > 1 else None, desc="tokenizing")
    stats: Counter = Counter()
    over = row_lengths(dataset) > max_length
    if over.any():
        if overlong == "drop":
            stats["dropped_overlong"] = int(over.sum())
            dataset = dataset.select(np.flatnonzero(~over))
        elif overlong == "truncate":
            def truncate(batch):
                return {k: [row[:max_length] for row in batch[k]] for k in ("input_ids", "completion_mask")}

            dataset = dataset.map(truncate, batched=True, features=FEATURES, desc="truncating over-long samples")
            no_target = row_sums(dataset, "completion_mask") == 0
            stats["truncated_overlong"] = int((over & ~no_target).sum())
            stats["dropped_overlong_no_target"] = int(no_target.sum())
            if no_target.any():
                dataset = dataset.select(np.flatnonzero(~no_target))
        else:
            raise UserError(f"data.overlong must be drop or truncate, got {overlong!r}")
    return (dataset.flatten_indices() if len(dataset) else dataset), dict(stats)
