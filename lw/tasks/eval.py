"""task=eval: evaluate model.path (a checkpoint, a hub id, or an API model) without training."""

from __future__ import annotations

from pathlib import Path

from lw.errors import UserError
from lw.tasks.registry import Task


def check(cfg, run_dir: Path) -> None:
    if cfg.model.path is None and cfg.generation.backend != "openai":
        raise UserError("task=eval needs model.path (a checkpoint directory or hub id), "
                        "or generation=openai with generation.model")


def run(cfg, run_dir: Path, tracker, tokenizer=None) -> dict:
    from lw.eval.evaluate import evaluate

    return evaluate(cfg, cfg.model.path, run_dir, tracker)


def dry_run(cfg, run_dir: Path) -> dict:
    from lw.plan.eval import dry_run_eval  # nothing trained: no training plan

    return dry_run_eval(cfg, run_dir)


TASK = Task(run=run, summary="evaluate model.path (a checkpoint, hub id, or an API model with generation=openai) "
                             "without training", check=check, dry_run=dry_run)
