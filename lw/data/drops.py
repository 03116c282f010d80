"""What the data steps dropped or cut, said out loud: a warning per reason, a stop past
data.max_drop_share, and the table task=prepare prints.

A drop the config asks for (an output-length cap, a mix's counts) is the experiment itself. Any
other drop (too long for data.max_length, a broken or empty row, no target left) changes the data
behind the user's back, and it is rarely random: a length limit removes exactly the long answers.
"""

from __future__ import annotations

import logging
from typing import Mapping

from lw.data.settings import max_length_of
from lw.errors import UserError

log = logging.getLogger(__name__)

# Drops the config asks for: reported, never counted toward data.max_drop_share.
ASKED = {
    "over_max_output_words": "have an answer over data.max_output_words={max_output_words} words",
    "under_min_output_words": "have an answer under data.min_output_words={min_output_words} words",
    "not_in_mix": "were left out by the counts or ratios of data.mix",
}

# Every other drop: what the samples are, and what to change to keep them.
UNASKED = {
    "overlong": ("longer than data.max_length={max_length} tokens (data.overlong=drop)",
                 "raise {longer} or set data.overlong=truncate"),
    "overlong_no_target": ("left with no answer token within data.max_length={max_length} tokens "
                           "(data.overlong=truncate)", "raise {longer}"),
    "over_max_length": ("longer than data.max_length={max_length} tokens, prompt and the longer answer "
                        "(pairs are never truncated)", "raise {longer}"),
    "no_length": ("without a required length, and there is no quality reward to score them "
                  "(trainer.reward.quality=0)", "give them a `length` field, or set trainer.reward.quality with judge=openai"),
}
BAD = ("bad ({reason}, data.on_bad_sample=drop)",
       "fix them in the source (data.on_bad_sample=error names the file, line and field)")

TRUNCATED = ("data: {count} are longer than data.max_length={max_length} tokens and were cut to it "
             "(data.overlong=truncate): their answers lose their end and EOS; raise {longer} or set "
             "data.overlong=drop")


def setting_to_raise(data_cfg) -> str:
    """What to raise for longer samples: max_length cannot pass pack_length, and null follows it."""
    if data_cfg.pack_length is None or max_length_of(data_cfg) < data_cfg.pack_length:
        return "data.max_length"
    if data_cfg.max_length is None:
        return "data.pack_length (data.max_length follows it)"
    return "data.max_length and data.pack_length"


def percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.3g}%"


def samples_read(stats: Mapping) -> tuple[int, str]:
    """How many samples (preference pairs, GRPO prompts) the run read, and what it calls them."""
    if "pairs_in" in stats:
        return stats["pairs_in"], "pairs"
    if "prompts_in" in stats:
        return stats["prompts_in"], "prompts"
    return stats.get("sequences_in", 0), "samples"


def dropped_by_reason(stats: Mapping) -> dict[str, int]:
    return {key[len("dropped_"):]: n for key, n in sorted(stats.items()) if key.startswith("dropped_") and n}


def report_drops(stats: Mapping, data_cfg) -> None:
    """Log every drop and truncation with its count, share and setting; raise UserError when the
    drops the config did not ask for exceed data.max_drop_share of the samples read."""
    total, unit = samples_read(stats)
    if not total:
        return
    settings = {"max_length": max_length_of(data_cfg), "max_output_words": data_cfg.max_output_words,
                "min_output_words": data_cfg.min_output_words, "longer": setting_to_raise(data_cfg)}
    unasked = []
    for reason, n in dropped_by_reason(stats).items():
        count = f"{n:,} of {total:,} {unit} ({percent(n, total)})"
        if reason in ASKED:
            log.info("data: %s %s and were dropped, as asked", count, ASKED[reason].format(**settings))
            continue
        what, fix = UNASKED.get(reason, BAD)
        what, fix = what.format(reason=reason, **settings), fix.format(**settings)
        log.warning("data: %s are %s and were dropped; %s", count, what, fix)
        unasked.append((n, what, fix))
    if stats.get("truncated_overlong"):
        n = stats["truncated_overlong"]
        log.warning(TRUNCATED.format(count=f"{n:,} of {total:,} {unit} ({percent(n, total)})", **settings))
    dropped = sum(n for n, _, _ in unasked)
    if dropped / total > data_cfg.max_drop_share:
        reasons = "; ".join(f"{n:,} {what}: {fix}" for n, what, fix in unasked)
        raise UserError(f"data: {dropped:,} of {total:,} {unit} ({percent(dropped, total)}) were dropped, more than "
                        f"data.max_drop_share={data_cfg.max_drop_share:g}: {reasons}; "
                        "set data.max_drop_share=1 to go on")


def drop_table(stats: Mapping) -> str:
    """What the data steps kept and dropped, by reason, as a plain-text table of counts and shares."""
    total, unit = samples_read(stats)
    rows = [("read", total), ("kept", stats.get("sequences_packed", 0))]
    rows += [(f"dropped: {reason}" + (" (asked for)" if reason in ASKED else ""), n)
             for reason, n in dropped_by_reason(stats).items()]
    if stats.get("truncated_overlong"):
        rows.append(("kept, cut to data.max_length", stats["truncated_overlong"]))
    width = max(len(label) for label, _ in rows)
    counts = [f"{n:,}" for _, n in rows]
    count_width = max(map(len, counts + [unit]))
    lines = [f"{'data':<{width}}  {unit:>{count_width}}  {'share':>6}"]
    lines += [f"{label:<{width}}  {count:>{count_width}}  {percent(n, total) if total else '-':>6}"
              for (label, n), count in zip(rows, counts)]
    return "\n".join(lines)
