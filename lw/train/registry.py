"""Trainer kinds and the module that trains each: the one place that knows which trainers exist.

The pipeline, the distributed worker and the dry-run planner ask this registry for the trainer
of `trainer.kind` and call only what every trainer module provides:

    training_args(cfg, checkpoint_dir, report_to) -> transformers.TrainingArguments
        its TRL config, built from `trainer.args`; a bad option fails here, at start
    build_dataset(cfg, tokenizer, run_dir) -> (datasets.Dataset, stats)
        the training set, and flat statistics about it (logged as data/<key>)
    train(cfg, model, tokenizer, dataset, run_dir, report_to, callbacks=None) -> Path
        train (resuming from run_dir/checkpoints) and save the final model into run_dir/model

Adding a trainer: a module in lw/train/ with these three functions, a `TrainerKind` member in
lw/config.py, a `conf/trainer/<name>.yaml` and one line in TRAINERS (docs/architecture.md).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Protocol

from lw.config import TrainerKind

TRAINERS: dict[TrainerKind, str] = {
    TrainerKind.sft: "lw.train.sft",
    TrainerKind.dpo: "lw.train.dpo",
    TrainerKind.grpo: "lw.train.grpo",
}


@dataclass
class TrainerPlan:
    """What a trainer adds to a dry run (lw/plan.py); a trainer without a `plan` hook gets the defaults."""

    sequences_per_example: int = 1  # training sequences per example in a batch (a DPO pair: chosen and rejected)
    sequences_per_row: int = 1  # training sequences each data row gives (GRPO: its completions per prompt)
    tokens_per_sequence: Optional[int] = None  # their length, when it is not the data's (GRPO: prompt + completion)
    full_logits: bool = True  # whether (tokens x vocabulary) logits are held for the loss
    reference: Optional[str] = None  # how the reference log-probabilities are had, for a trainer that has one
    generation: Optional[str] = None  # how it generates, for a trainer that samples while training
    gpu_per_rank: dict[str, float] = field(default_factory=dict)  # extra GPU bytes per rank, by name
    host_per_node: dict[str, float] = field(default_factory=dict)  # extra host bytes per node, by name
    assumptions: list[str] = field(default_factory=list)


class Trainer(Protocol):
    def training_args(self, cfg, checkpoint_dir: Path, report_to: str): ...

    def build_dataset(self, cfg, tokenizer, run_dir: Path): ...

    def train(self, cfg, model, tokenizer, dataset, run_dir: Path, report_to: str, callbacks=None) -> Path: ...

    # Optional: plan(cfg, args, counts, nnodes, hf_config) -> TrainerPlan, what it adds to a dry run (lw/plan.py).


def trainer_for(cfg) -> Trainer:
    """The trainer module of `cfg.trainer.kind` (imported on first use: each pulls in its TRL trainer)."""
    kind = TrainerKind(getattr(cfg.trainer.kind, "value", cfg.trainer.kind))
    return importlib.import_module(TRAINERS[kind])  # type: ignore[return-value]


def trainer_plan(trainer: Trainer, cfg, args, counts: dict, nnodes: int, hf_config=None) -> TrainerPlan:
    """The trainer's own dry-run figures, or the defaults when it has no `plan` hook."""
    hook = getattr(trainer, "plan", None)
    return hook(cfg, args, counts, nnodes, hf_config) if hook else TrainerPlan()
