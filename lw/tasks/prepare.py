"""task=prepare: the training set (tokenized, packed) and its statistics, no training."""

from __future__ import annotations

from pathlib import Path

from lw.tasks.registry import Task


def check(cfg, run_dir: Path) -> None:
    """A data source the trainer does not train on fails before the data is read."""
    from lw.train.registry import check_data_source

    check_data_source(cfg)


def run(cfg, run_dir: Path, tracker, tokenizer) -> dict:
    from lw.data.drops import drop_table
    from lw.train.registry import trainer_for

    _, stats = trainer_for(cfg).build_dataset(cfg, tokenizer, run_dir)
    print(drop_table(stats))
    return {f"data/{k}": v for k, v in stats.items()}


def dry_run(cfg, run_dir: Path) -> dict:
    from lw.tasks.train import dry_run  # the same plan as task=train's

    return dry_run(cfg, run_dir)


TASK = Task(run=run, summary="the training set only (tokenized, packed) and its statistics, no training",
            needs_tokenizer=True, check=check, dry_run=dry_run)
