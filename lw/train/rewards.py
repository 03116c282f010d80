"""The rewards of trainer=grpo (docs/science.md section 6), as TRL reward functions: each takes the
batch's `prompts`, `completions` and the dataset's other columns (`length`), and returns one float
per completion, or None where it does not apply (TRL leaves those out of the weighted sum).

- length:     S_l / 100, the benchmark's own length score against the prompt's required length
              (trainer.reward.length_kind=s_l), or max(0, 1 - |log(produced/required)| / log 3), symmetric in
              the ratio (trainer.reward.length_kind=log_ratio)
- quality:    S_q / 100 from the LLM judge (any OpenAI-compatible endpoint; concurrent, cached)
- repetition: TRL's n-gram repetition penalty, in [-1, 0]
- overlong:   TRL's soft punishment of completions that run into max_completion_length, in [-1, 0]

`trainer.reward.<name>` is each one's weight (0 leaves it out); TRL combines them by
`trainer.args.multi_objective_aggregation`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Callable

from lw.errors import UserError
from lw.words import count_words, length_score

REWARDS = ("length", "quality", "repetition", "overlong")


class LengthKind(StrEnum):
    """`trainer.reward.length_kind`: how the length reward reads produced against required."""

    s_l = "s_l"  # S_l / 100
    log_ratio = "log_ratio"  # max(0, 1 - |log(produced/required)| / log 3), 0 at 3x and at a third alike


@dataclass
class RewardConfig:
    """`trainer.reward` of trainer=grpo: each reward's weight (0 leaves it out). TRL sums the weighted
    rewards (trainer.args.multi_objective_aggregation) into each completion's reward."""

    length: float = 1.0  # S_l / 100 against the prompt's required length (its `length`, else parsed from it)
    length_kind: LengthKind = LengthKind.s_l
    quality: float = 0.0  # S_q / 100 from the judge (judge=openai)
    repetition: float = 0.0  # TRL's n-gram repetition penalty, in [-1, 0]
    repetition_ngram: int = 3
    overlong: float = 0.0  # TRL's soft punishment of completions reaching max_completion_length, in [-1, 0]
    overlong_buffer: int = 0  # tokens before max_completion_length where it starts (0: a tenth of it)


def text_of(turns) -> str:
    """A prompt's or completion's text: the last turn's content of a conversation, or the string."""
    if isinstance(turns, list):
        return turns[-1]["content"] if turns else ""
    return turns


def length_reward(completions: list, length: list[int | None], **kwargs) -> list[float | None]:
    """S_l / 100 of each completion against its prompt's required length; None where it names none."""
    return [None if n is None else length_score(int(n), count_words(text_of(c))) / 100
            for c, n in zip(completions, length)]


def log_ratio_reward(required: int | float, produced: int | float) -> float:
    """1 at the required length, falling linearly in |log(produced / required)| to 0 at 3x and at a
    third alike (S_l gives a third 0 and 3x 0.33); 0 when empty."""
    if produced <= 0:
        return 0.0
    return max(0.0, 1.0 - abs(math.log(produced / required)) / math.log(3))


def length_log_ratio_reward(completions: list, length: list[int | None], **kwargs) -> list[float | None]:
    """`log_ratio_reward` of each completion against its prompt's required length; None where it names none."""
    return [None if n is None else log_ratio_reward(int(n), count_words(text_of(c)))
            for c, n in zip(completions, length)]


def quality_reward(judge) -> Callable:
    """S_q / 100 of each completion by `judge` (lw.eval.judge.Judge); None where the judge's reply had
    no scores or its request failed (counted in the judge's log, never scored as 0)."""
    from lw.eval.judge import OK
    from lw.eval.scoring import quality_scores

    def quality(prompts: list, completions: list, **kwargs) -> list[float | None]:
        rows = [{"id": str(i), "prompt": text_of(p), "response": text_of(c)}
                for i, (p, c) in enumerate(zip(prompts, completions))]
        return [quality_scores([j])["S_q"] / 100 if j["status"] == OK else None for j in judge.judge(rows)]

    quality.__name__ = "quality_reward"
    return quality


def length_function(kind: LengthKind) -> Callable:
    """The length reward of trainer.reward.length_kind."""
    return length_reward if kind == LengthKind.s_l else length_log_ratio_reward


def reward_functions(reward_cfg, max_completion_length: int, judge=None) -> tuple[list[Callable], list[float]]:
    """The reward functions with a non-zero weight, and their weights (for GRPOConfig.reward_weights)."""
    from trl.rewards import get_repetition_penalty_reward, get_soft_overlong_punishment

    funcs, weights = [], []
    for name in REWARDS:
        weight = float(reward_cfg[name])
        if weight == 0:
            continue
        if name == "length":
            func = length_function(reward_cfg.length_kind)
        elif name == "quality":
            if judge is None:
                raise UserError("trainer.reward.quality needs the judge: set judge=openai (judge.base_url, "
                                "judge.model), or trainer.reward.quality=0")
            func = quality_reward(judge)
        elif name == "repetition":
            func = get_repetition_penalty_reward(ngram_size=reward_cfg.repetition_ngram)
        else:
            buffer = reward_cfg.overlong_buffer or max(1, max_completion_length // 10)
            if not 0 < buffer < max_completion_length:
                raise UserError(f"trainer.reward.overlong_buffer={buffer} must lie in (0, max_completion_length="
                                f"{max_completion_length})")
            func = get_soft_overlong_punishment(max_completion_length, buffer)
        funcs.append(func)
        weights.append(weight)
    if not funcs:
        raise UserError("trainer=grpo needs a reward: give trainer.reward.length (or trainer.reward.quality, ...) "
                        "a non-zero weight")
    return funcs, weights
