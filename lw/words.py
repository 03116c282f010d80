"""The benchmark's word counter, length score and language rule, as LongWriter's own code has them,
and the one reader of a required length (`parse_length`).

Both are the yardstick for every length in this project (data filters included), so results
compare with the paper. The counter's quirks are kept on purpose:
- a Latin word touching a digit, an underscore or a CJK character is not a word (no \\b there);
- an apostrophe splits a word ("don't" is two words);
- digits alone are never words.
"""

from __future__ import annotations

import re

from lw.errors import UserError

_CJK = re.compile(r"[\u4e00-\u9fff]")
_ENGLISH_WORD = re.compile(r"\b[a-zA-Z]+\b")


def count_words(text: str) -> int:
    """CJK characters plus English words, as the official LongBench-Write scorer counts them."""
    return len(_CJK.findall(text)) + len(_ENGLISH_WORD.findall(text))


def language_of(text: str) -> str:
    """"zh" when the text holds any CJK character (the counter's own range), else "en".

    The official code names no language rule: its English half is a file of its own
    (evaluation/longbench_write_en.jsonl). This rule reproduces that split for 119 of the 120
    prompts; "more CJK characters than Latin letters" gets 118 (docs/science.md, "The language of a prompt").
    """
    return "zh" if _CJK.search(text) else "en"


def length_score(required: int | float, produced: int | float) -> float:
    """S_l for one item: 100 at the required length, falling linearly on either side.

    Overshooting by 3x the requirement or undershooting to a third both score 0. An empty
    output scores 0 (the official script divides by zero there).
    """
    if required <= 0:
        raise ValueError(f"required length must be positive, got {required}")
    if produced <= 0:
        return 0.0
    if produced > required:
        return 100.0 * max(0.0, 1.0 - (produced / required - 1.0) / 3.0)
    return 100.0 * max(0.0, 1.0 - (required / produced - 1.0) / 2.0)


def parse_length(value, where: str) -> int:
    """A required length: a positive integer (an integral float or numeric string is accepted)."""
    if isinstance(value, bool):
        raise UserError(f"{where}: field 'length' must be a positive integer, got {value!r}")
    if isinstance(value, str) and re.fullmatch(r"\s*\d+\s*", value):
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or value <= 0:
        raise UserError(f"{where}: field 'length' must be a positive integer, got {value!r}")
    return value
