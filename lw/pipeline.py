"""A run: the task that `task` names (lw/tasks/), between its start and its files.

The pipeline is control only: it looks the task up, seeds, checks, hands a dry run over, builds
the tokenizer the task needs, starts the W&B run, runs the task and writes metrics.json. What a
task needs it declares in its module's `TASK` (lw/tasks/registry.py). Every task writes into the
Hydra run directory; the same directory resumes what a killed run had finished.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from tqdm.contrib.logging import logging_redirect_tqdm

from lw.errors import EXIT_DONE, EXIT_INCOMPLETE, Incomplete, UserError
from lw.run_dir import metrics_file
from lw.tasks.registry import Task, task_of
from lw.tracking import Tracker, check_logger, start_tracker

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    task = task_of(cfg.task)
    check_logger(cfg.logger)
    if cfg.dry_run and task.dry_run is None:
        raise UserError(f"task={cfg.task} has no dry run (dry_run=true plans train, prepare and eval): "
                        f"set dry_run=false, or use one of those tasks")
    seed_everything(cfg.seed, torch=task.uses_torch)
    if task.check is not None:
        task.check(cfg, run_dir)
    if cfg.dry_run:
        return task.dry_run(cfg, run_dir)

    group = Path(hydra_cfg.sweep.dir).name if hydra_cfg.mode == RunMode.MULTIRUN else cfg.run_name
    from lw.launch.driver import is_first_node

    first_node = is_first_node(cfg.launcher)
    tokenizer = None
    if task.needs_tokenizer:
        from lw.models import build_tokenizer

        tokenizer = build_tokenizer(cfg.model, cfg.cache_dir)
    metrics: dict = task.before_tracking(cfg, tokenizer) if task.before_tracking is not None else {}
    config = OmegaConf.to_container(cfg, resolve=True)
    # Off node 0 of a multi-node job the driver only runs its node's workers: no W&B run.
    tracker = start_tracker(cfg.logger, config, run_dir, cfg.run_name, group) if first_node else Tracker()
    return run_tracked(task, cfg, run_dir, tracker, tokenizer, metrics)


def run_tracked(task: Task, cfg: DictConfig, run_dir: Path, tracker: Tracker, tokenizer, metrics: dict) -> dict:
    """The task, its metrics written and the W&B run finished with the status that says how it ended."""
    exit_code = 1
    start = time.time()
    try:
        # Log lines go through tqdm, so they never tear a progress bar.
        with logging_redirect_tqdm():
            task_metrics = task.run(cfg, run_dir, tracker, tokenizer)
        if task_metrics is None:  # another node's driver: node 0 evaluates and logs
            exit_code = EXIT_DONE
            return {}
        metrics.update(task_metrics)
        write_metrics(metrics, start, run_dir, tracker)
        print(f"lw: done, results in {run_dir.resolve()}")
        exit_code = EXIT_DONE
        return metrics
    except Incomplete as err:
        # What finished is on disk; the metrics say how much failed, and the run is not "done".
        metrics.update(err.metrics)
        write_metrics(metrics, start, run_dir, tracker)
        exit_code = EXIT_INCOMPLETE
        raise
    finally:
        tracker.finish(exit_code)


def write_metrics(metrics: dict, start: float, run_dir: Path, tracker: Tracker) -> None:
    metrics["time/total_seconds"] = round(time.time() - start, 1)
    tracker.summary(metrics)
    metrics_file(run_dir).write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    log.info("results in %s", run_dir.resolve())


def seed_everything(seed: int, torch: bool) -> None:
    """Python's, NumPy's and (for the tasks that run a model) torch's generators. The tasks that never
    import torch (Task.uses_torch false) seed without it, so a mistyped URL fails in seconds."""
    if torch:
        from transformers import set_seed

        set_seed(seed)
    else:
        import random

        import numpy

        random.seed(seed)
        numpy.random.seed(seed)
