"""Preference pairs for DPO: sources -> checks -> (mix) -> the project's chat format -> token ids.

A pair is a prompt (a string, or a conversation ending with a user turn) and two answers, chosen
and rejected (strings, or conversations whose last assistant turn is the answer, as in binarized
hub sets). Each pair is rendered with the model's own chat format (lw/models/chat_format.py), so
the tokens DPO trains on for `prompt + chosen` are exactly the SFT tokenization of the same
conversation, EOS included; TRL would otherwise render conversations with the hub's chat template
(no stop token after a GLM-4 answer) and add EOS only to string data.

A pair longer than data.max_length is dropped and counted, never truncated: a truncated long
answer would teach the model to stop early, the opposite of what LongWriter's DPO is for. Drops
are logged, and past data.max_drop_share of the pairs read they stop the run (lw/data/drops.py).

The pair rule of task=dpo_pairs (docs/science.md section 5) is here too: how one prompt's scored
samples give a chosen and a rejected answer (`combine`, `closeness`, `best_samples`, `select_pair`).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping

from lw.data.drops import report_drops
from lw.data.settings import check_settings, max_length_of
from lw.data.sources import BadSample, choose, mix_sizes, read_source, remove_zero_width, to_messages
from lw.errors import UserError
from lw.jsonl import write_jsonl
from lw.run_dir import train_pairs_file

if TYPE_CHECKING:  # datasets loads only where pairs are built: task=dpo_pairs needs the pair rule alone
    from datasets import Dataset

log = logging.getLogger(__name__)

PAIR_FIELDS = ("prompt", "chosen", "rejected")
RULE_NAMES = {"mean": "mean(S_l,S_q)", "length": "S_l", "quality": "S_q"}  # pairs.rule, as a score's name
_TIE = 1e-9  # scores this close are equal (float noise of the means)


def _answer(value: Any, where: str, field: str) -> str:
    """An answer's text: a string, or the last assistant turn of a conversation."""
    if isinstance(value, list):
        turns = [t for t in value if isinstance(t, Mapping) and t.get("role") == "assistant"]
        if not turns:
            raise BadSample("no_assistant_turn", where, field, "a conversation without an assistant turn")
        value = turns[-1].get("content")
    if not isinstance(value, str):
        raise BadSample("empty_content", where, field,
                        f"expected a string or a conversation, got {type(value).__name__}")
    value = remove_zero_width(value)
    if not value.strip():
        raise BadSample("empty_content", where, field, "empty answer")
    return value


def _prompt(value: Any, where: str) -> list[dict]:
    """The prompt as user/assistant turns ending with a user turn."""
    if isinstance(value, str):
        if not value.strip():
            raise BadSample("empty_content", where, "prompt", "empty prompt")
        return [{"role": "user", "content": value}]
    if isinstance(value, list) and value and isinstance(value[-1], Mapping) and value[-1].get("role") == "user":
        # to_messages checks roles, contents and turn order of a conversation that holds an answer.
        return to_messages({"messages": [*value, {"role": "assistant", "content": "-"}]}, where)[:-1]
    raise BadSample("missing_field", where, "prompt", "expected a string or a conversation ending with a user turn")


def to_pair(row: Any, where: str) -> dict:
    """{"prompt": [turns], "chosen": str, "rejected": str}, or BadSample naming where and which field."""
    if not isinstance(row, Mapping):
        raise BadSample("malformed_json", where, "<line>", f"a row must be a JSON object, got {type(row).__name__}")
    for field in PAIR_FIELDS:
        if field not in row:
            raise BadSample("missing_field", where, field, f"missing; a preference pair has {list(PAIR_FIELDS)}")
    prompt = _prompt(row["prompt"], where)
    chosen, rejected = _answer(row["chosen"], where, "chosen"), _answer(row["rejected"], where, "rejected")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def clean_pairs(rows: Iterable[tuple[str, Any]], on_bad_sample: str, stats: Counter) -> Iterator[dict]:
    drop = on_bad_sample == "drop"
    for where, row in rows:
        stats["pairs_in"] += 1
        try:
            if isinstance(row, BadSample):
                raise row
            yield to_pair(row, where)
        except BadSample as bad:
            if not drop:
                raise
            stats[f"dropped_{bad.reason}"] += 1


def load_pairs(data_cfg, seed: int, stats: Counter) -> Iterator[dict]:
    """Checked pairs of data.path / data.hub_id (source=pairs), or of every source of data.mix."""
    source = data_cfg.source
    if source == "pairs":
        yield from clean_pairs(read_source(data_cfg, "data"), data_cfg.on_bad_sample, stats)
    elif source == "mix":
        if not data_cfg.mix:
            raise UserError("data.source=mix needs data.mix: named pair sources with a path or hub_id")
        kept = {name: list(clean_pairs(read_source(spec, f"data.mix.{name}"), data_cfg.on_bad_sample, stats))
                for name, spec in data_cfg.mix.items()}
        sizes = mix_sizes({name: len(pairs) for name, pairs in kept.items()}, data_cfg.mix)
        for name, pairs in kept.items():
            stats[f"mix_{name}_pairs"] = sizes[name]
            stats["dropped_not_in_mix"] += len(pairs) - sizes[name]
            yield from choose(pairs, sizes[name], seed, name)
    else:  # trainer=dpo's DATA_SOURCES refuse other sources at start (lw.train.registry.check_data_source)
        raise UserError(f"data.source={source} holds no preference pairs: choose pairs or a mix of pair sources")


def tokenize_pairs(pairs: list[dict], chat_format_name: str, tokenizer) -> list[dict]:
    """prompt_ids, chosen_ids and rejected_ids of each pair: the answers' ids end with EOS."""
    from lw.models.chat_format import get_chat_format  # transformers: only where pairs are tokenized

    chat_format = get_chat_format(chat_format_name)
    prompts = chat_format.tokenize_many(tokenizer, [p["prompt"] for p in pairs], add_generation_prompt=True)
    full = chat_format.tokenize_many(tokenizer, [p["prompt"] + [{"role": "assistant", "content": p[answer]}]
                                                 for p in pairs for answer in ("chosen", "rejected")])
    rows = []
    for i, (prompt_ids, _) in enumerate(prompts):
        row = {"prompt_ids": prompt_ids}
        for answer, (ids, mask) in zip(("chosen", "rejected"), full[2 * i: 2 * i + 2]):
            # Segment-wise tokenization makes the prompt an exact prefix, and the answer its targets.
            assert ids[:len(prompt_ids)] == prompt_ids and not any(mask[:len(prompt_ids)]), pairs[i]
            row[f"{answer}_ids"] = ids[len(prompt_ids):]
        rows.append(row)
    return rows


def build_preference_dataset(cfg, tokenizer, run_dir: Path) -> tuple[Dataset, dict]:
    """The tokenized pairs (prompt_ids, chosen_ids, rejected_ids) and their statistics; the checked
    pairs go to run_dir/data/pairs.jsonl."""
    from datasets import Dataset

    start = time.perf_counter()
    check_settings(cfg.data)
    stats: Counter = Counter()
    pairs = list(load_pairs(cfg.data, cfg.seed, stats))
    write_jsonl(pairs, train_pairs_file(run_dir))
    rows = tokenize_pairs(pairs, cfg.model.chat_format, tokenizer)
    max_length = max_length_of(cfg.data)
    fits = [r for r in rows if len(r["prompt_ids"]) + max(len(r["chosen_ids"]), len(r["rejected_ids"])) <= max_length]
    stats["dropped_over_max_length"] = len(rows) - len(fits)
    report_drops(stats, cfg.data)  # before any training: the pairs left may not be the ones meant
    if not fits:
        raise UserError(f"no preference pair is left after the checks and data.max_length={max_length}: {dict(stats)}")
    stats["pairs"] = len(fits)
    stats["sequences_packed"] = len(fits)  # the planner's unit: one training example
    lengths = [len(r["prompt_ids"]) * 2 + len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in fits]
    stats["real_tokens"] = sum(lengths)
    stats["longest_pair_tokens"] = max(len(r["prompt_ids"]) + max(len(r["chosen_ids"]), len(r["rejected_ids"]))
                                       for r in fits)
    stats["seconds"] = round(time.perf_counter() - start, 3)
    dataset = Dataset.from_dict({key: [r[key] for r in fits] for key in ("prompt_ids", "chosen_ids", "rejected_ids")})
    log.info("preference pairs: %s", dict(stats))
    return dataset, {k: v for k, v in stats.items() if v or not k.startswith("dropped_")}


# --- the pair rule of task=dpo_pairs ---------------------------------------------------------------

def combine(rule: str, s_l: float | None, s_q: float | None) -> float | None:
    """One sample's score under `rule`; None when a score the rule needs is missing. Without a
    required length S_l is None and every rule falls back to S_q."""
    if s_l is None or rule == "quality":
        return s_q
    if rule == "length":
        return s_l
    return None if s_q is None else (s_l + s_q) / 2


def closeness(required: int | float, produced: int | float) -> float:
    """How near a sample came to its required length: -|log(produced / required)|, 0 at the length,
    the same for twice and half of it; -inf for an empty one. It breaks ties of the score: S_l is 0 for
    every sample under a third (or over 4x) of the length, and this still ranks them."""
    return -abs(math.log(produced / required)) if produced > 0 else -math.inf


def best_is_shared(scores: list[float | None]) -> bool:
    """Whether two or more scored samples share the best score (a tie before any tie-break)."""
    return sum(s is not None for s in scores) > 1 and len(best_samples(scores)) > 1


def best_samples(scores: list[float | None], near: list[float] | None = None) -> list[int]:
    """The indices of the best scored samples: those sharing the best score, and of those the
    nearest to the required length (`near`: each sample's closeness; None: no tie-break)."""
    scored = [i for i, s in enumerate(scores) if s is not None]
    top = max(scores[i] for i in scored)
    tied = [i for i in scored if abs(scores[i] - top) <= _TIE]
    if len(tied) > 1 and near is not None:
        nearest = max(near[i] for i in tied)
        tied = [i for i in tied if near[i] >= nearest - _TIE]
    return tied


def select_pair(scores: list[float | None], seed: int, prompt_id: str, min_margin: float = 0.0,
                near: list[float] | None = None):
    """(chosen index, rejected index, None) or (None, None, drop reason) for one prompt's samples.

    chosen: the best sample (best_samples); where several stay equally good, the first of them, as
    the samples are drawn alike. rejected: drawn among the other scored samples, those equally good
    excepted, with random.Random(f"{seed}:{prompt_id}"). Dropped: fewer than two scored samples
    ("failed"), no sample worse than the best ("tie"), or chosen and rejected no more than min_margin
    apart in score ("margin"; a rejected equal in score but less near passes only with min_margin 0).
    """
    scored = [i for i, s in enumerate(scores) if s is not None]
    if len(scored) < 2:
        return None, None, "failed"
    best = best_samples(scores, near)
    others = [i for i in scored if i not in best]
    if not others:
        return None, None, "tie"
    rejected = random.Random(f"{seed}:{prompt_id}").choice(others)
    gap = scores[best[0]] - scores[rejected]
    if (gap <= _TIE and min_margin > 0) or _TIE < gap <= min_margin:
        return None, None, "margin"
    return best[0], rejected, None
