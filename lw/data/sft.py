"""The SFT set: sources -> checks -> output-length filter -> (mix) -> tokenization -> packing.

Every sample read is accounted for: it is trained on, or dropped for a named reason, and the
counts land in the run's statistics and in `packing_stats.json`. Each drop is logged with its
count and the setting behind it, and drops the config did not ask for stop the run past
data.max_drop_share (lw/data/drops.py).
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

from lw.data import toy
from lw.data.drops import report_drops
from lw.data.settings import check_settings, max_length_of
from lw.data.sources import choose, clean_rows, mix_sizes, read_source
from lw.errors import UserError
from lw.jsonl import write_jsonl
from lw.run_dir import packing_stats_file, train_messages_file
from lw.words import count_words

if TYPE_CHECKING:  # datasets, TRL and torch load when a set is built, not when this module is imported
    from datasets import Dataset

log = logging.getLogger(__name__)



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
            yield sample


def load_samples(data_cfg, seed: int, stats: Counter) -> Iterator[dict]:
    """Checked, length-filtered messages-format samples of the configured source (or mix)."""
    source = data_cfg.source
    words = (data_cfg.min_output_words, data_cfg.max_output_words)
    if source == "toy":
        spec = data_cfg.toy
        # The cap bounds what the generator writes, so every cap gets the same number of samples:
        # the analog of the paper's filtered sets, without a cap that leaves almost nothing.
        max_words = spec.max_words if words[1] is None else min(spec.max_words, words[1])
        min_words = spec.min_words if words[0] is None else max(spec.min_words, words[0])
        samples = toy.generate(spec.num_samples, min_words, max_words, list(spec.topics), seed, spec.round_lengths)
        rows = ((f"toy sample {i}", sample) for i, sample in enumerate(samples))
        yield from filter_by_output_words(clean_rows(rows, "messages", "error", stats), *words, stats)
    elif source == "messages":
        rows = read_source(data_cfg, "data")
        yield from filter_by_output_words(clean_rows(rows, data_cfg.format, data_cfg.on_bad_sample, stats),
                                          *words, stats)
    elif source == "mix":
        if not data_cfg.mix:
            raise UserError("data.source=mix needs data.mix: named sources with a path or hub_id")
        kept = {}
        for name, spec in data_cfg.mix.items():
            rows = read_source(spec, f"data.mix.{name}")
            kept[name] = list(filter_by_output_words(clean_rows(rows, spec.format, data_cfg.on_bad_sample, stats),
                                                     *words, stats))
        sizes = mix_sizes({name: len(samples) for name, samples in kept.items()}, data_cfg.mix)
        for name, samples in kept.items():
            stats[f"mix_{name}_samples"] = sizes[name]
            stats["dropped_not_in_mix"] += len(samples) - sizes[name]
            yield from choose(samples, sizes[name], seed, name)
    else:  # the trainers' DATA_SOURCES refuse other sources at start (lw.train.registry.check_data_source)
        raise UserError(f"data.source={source} holds no conversations: choose toy, messages or mix")


def packing_stats(stats: Counter) -> dict:
    """The keys of packing_stats.json, from a run's statistics."""
    return {
        "sequences_in": stats["sequences_in"],
        "sequences_packed": stats["sequences_packed"],
        "sequences_dropped": {k[len("dropped_"):]: v for k, v in sorted(stats.items())
                              if k.startswith("dropped_") and v},
        **{k: stats[k] for k in ("packs", "real_tokens", "slot_tokens", "efficiency", "seconds")},
    }


def build_sft_dataset(cfg, tokenizer, run_dir: Path) -> tuple[Dataset, dict]:
    """The tokenized SFT set and its statistics; with data.pack_length, packed.

    Unpacked rows hold input_ids and completion_mask; packed rows add seq_lengths. The samples
    go to run_dir/data/train.jsonl and the statistics to run_dir/packing_stats.json.
    """
    from lw.data.packing import pack, packing_summary
    from lw.data.tokenization import row_lengths, row_sums, tokenize_messages
    from lw.models.chat_format import get_chat_format

    start = time.perf_counter()
    data_cfg = cfg.data
    check_settings(data_cfg)
    max_length = max_length_of(data_cfg)
    stats: Counter = Counter()
    messages_path = train_messages_file(run_dir)
    if write_jsonl(load_samples(data_cfg, cfg.seed, stats), messages_path) == 0:
        report_drops(stats, data_cfg)  # when the drops explain it, say which and what to change
        raise UserError(f"no training sample is left after the checks and filters: {dict(stats)}")
    dataset, token_stats = tokenize_messages(
        messages_path, get_chat_format(cfg.model.chat_format), tokenizer, max_length, data_cfg.overlong,
        cfg.cache_dir, data_cfg.num_proc)
    stats.update(token_stats)
    report_drops(stats, data_cfg)  # every drop is counted now: stop here, before packing and training
    if len(dataset) == 0:
        raise UserError(f"no training sample is left after tokenization: {dict(stats)}")
    stats["sequences_packed"] = len(dataset)
    stats["target_tokens"] = int(row_sums(dataset, "completion_mask").sum())
    if data_cfg.pack_length is not None:
        dataset = pack(dataset, data_cfg.pack_length)
        stats.update(packing_summary(row_lengths(dataset), data_cfg.pack_length))
    else:  # each sample is a row of its own, of up to max_length tokens
        stats.update(packing_summary(row_lengths(dataset), max_length))
    stats["seconds"] = round(time.perf_counter() - start, 3)
    packing_stats_file(run_dir).write_text(json.dumps(packing_stats(stats), indent=2) + "\n")
    log.info("training set: %s", dict(stats))
    return dataset, dict(stats)
