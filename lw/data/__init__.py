"""Training data: messages-format sources -> length filter -> chat-format tokenization."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator

from datasets import Dataset

from lw.data import toy
from lw.models.chat_format import get_chat_format
from lw.words import count_words

log = logging.getLogger(__name__)


def load_messages(data_cfg, seed: int) -> Iterator[dict]:
    """Messages-format samples from the configured source."""
    if data_cfg.source == "toy":
        spec = data_cfg.toy
        # The cap bounds what the generator writes, so every cap gets the same number of samples:
        # the analog of the paper's filtered sets, without a cap that leaves almost nothing.
        max_words = spec.max_words if data_cfg.max_output_words is None else min(spec.max_words, data_cfg.max_output_words)
        min_words = spec.min_words if data_cfg.min_output_words is None else max(spec.min_words, data_cfg.min_output_words)
        yield from toy.generate(spec.num_samples, min_words, max_words, list(spec.topics), seed,
                                spec.round_lengths)
        return
    raise ValueError(f"unknown data.source {data_cfg.source!r}")


def filter_by_output_words(samples: Iterable[dict], min_words: int | None, max_words: int | None,
                           stats: Counter) -> Iterator[dict]:
    """Keep samples whose every assistant turn has a length in [min_words, max_words]."""
    for sample in samples:
        lengths = [count_words(m["content"]) for m in sample["messages"] if m["role"] == "assistant"]
        if max_words is not None and max(lengths) > max_words:
            stats["dropped_over_max_output_words"] += 1
        elif min_words is not None and min(lengths) < min_words:
            stats["dropped_under_min_output_words"] += 1
        else:
            stats["kept"] += 1
            yield sample


def write_jsonl(rows: Iterable[dict], path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def build_sft_dataset(cfg, tokenizer, run_dir: Path) -> tuple[Dataset, dict]:
    """The tokenized SFT set (input_ids, completion_mask) and its statistics."""
    stats: Counter = Counter()
    samples = filter_by_output_words(load_messages(cfg.data, cfg.seed), cfg.data.min_output_words,
                                     cfg.data.max_output_words, stats)
    messages_path = run_dir / "data" / "train.jsonl"
    write_jsonl(samples, messages_path)
    dataset = Dataset.from_json(str(messages_path))
    chat_format = get_chat_format(cfg.model.chat_format)

    def tokenize(batch):
        ids, masks = zip(*(chat_format.tokenize(tokenizer, m) for m in batch["messages"]))
        return {"input_ids": list(ids), "completion_mask": list(masks)}

    dataset = dataset.map(tokenize, batched=True, remove_columns=dataset.column_names, desc="tokenizing")
    too_long = sum(len(ids) > cfg.data.max_length for ids in dataset["input_ids"])
    if too_long:
        dataset = dataset.filter(lambda ex: len(ex["input_ids"]) <= cfg.data.max_length)
        stats["dropped_over_max_length"] += too_long
        stats["kept"] -= too_long
    log.info("training set: %s", dict(stats))
    return dataset, dict(stats)
