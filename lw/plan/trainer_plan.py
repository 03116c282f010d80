"""What a trainer adds to a dry run: its `plan` hook's answer, or the defaults for a trainer without one."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class TrainerPlan:
    """What a trainer adds to a dry run (lw/plan/); a trainer without a `plan` hook gets the defaults."""

    sequences_per_example: int = 1  # training sequences per example in a batch (a DPO pair: chosen and rejected)
    sequences_per_row: int = 1  # training sequences each data row gives (GRPO: its completions per prompt)
    tokens_per_sequence: Optional[int] = None  # their length, when it is not the data's (GRPO: prompt + completion)
    full_logits: bool = True  # whether (tokens x vocabulary) logits are held for the loss
    reference: Optional[str] = None  # how the reference log-probabilities are had, for a trainer that has one
    generation: Optional[str] = None  # how it generates, for a trainer that samples while training
    gpu_per_rank: dict[str, float] = field(default_factory=dict)  # extra GPU bytes per rank, by name
    host_per_node: dict[str, float] = field(default_factory=dict)  # extra host bytes per node, by name
    assumptions: list[str] = field(default_factory=list)


def trainer_plan(trainer, cfg, args, counts: dict, nnodes: int, hf_config=None) -> TrainerPlan:
    """The trainer's own dry-run figures, or the defaults when it has no `plan` hook."""
    hook = getattr(trainer, "plan", None)
    return hook(cfg, args, counts, nnodes, hf_config) if hook else TrainerPlan()
