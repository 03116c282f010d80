"""task=train: prepare the data, train, then evaluate the trained model."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from lw.tasks.registry import Task

log = logging.getLogger(__name__)


def check(cfg, run_dir: Path) -> None:
    """A bad trainer option, or a data source the trainer does not train on, fails here, before any
    data or weights are touched."""
    from lw.run_dir import checkpoint_dir
    from lw.train.registry import check_data_source, trainer_for

    check_data_source(cfg)
    trainer_for(cfg).training_args(cfg, checkpoint_dir(run_dir), "none")


def before_tracking(cfg, tokenizer) -> dict:
    """The base stage, trained (or reused) before the W&B run starts, so that its config shows the
    init_from the run trains from; the base's probe figures."""
    if cfg.trainer.base is None:
        return {}
    from lw.train.base_stage import ensure_base_model

    base = ensure_base_model(cfg, tokenizer)
    cfg.trainer.init_from = str(base)  # distributed workers read it from the saved config
    probe = json.loads((base.parent / "probe.json").read_text())
    return {f"base/median_output_words/{n}": words for n, words in probe.items()}


def run(cfg, run_dir: Path, tracker, tokenizer) -> dict | None:
    """Train, then evaluate the trained model (None on nodes other than 0)."""
    from lw.eval.evaluate import evaluate

    metrics: dict = {}
    if cfg.launcher.kind != "local":  # workers in child processes
        from lw.launch.driver import launch_training
        from lw.plan.offload import resolve_deepspeed
        from lw.train.registry import trainer_for

        trainer = trainer_for(cfg)
        model_dir = launch_training(cfg, trainer, resolve_deepspeed(cfg, trainer), tokenizer, run_dir, tracker,
                                    metrics)
        if model_dir is None:
            return None
    else:
        model_dir = train_here(cfg, run_dir, tracker, tokenizer, metrics)
    metrics.update(evaluate(cfg, str(model_dir), run_dir, tracker, trainer=str(cfg.trainer.kind)))
    return metrics


def train_here(cfg, run_dir: Path, tracker, tokenizer, metrics: dict) -> Path:
    """launcher=local: train in this process; the data's statistics go into `metrics`."""
    from lw.models import build_model
    from lw.train.registry import trainer_for

    trainer = trainer_for(cfg)
    check_judges(cfg)
    dataset, stats = trainer.build_dataset(cfg, tokenizer, run_dir)
    metrics.update({f"data/{k}": v for k, v in stats.items()})
    model = build_model(cfg.model, tokenizer, path=cfg.trainer.init_from, seed=cfg.seed, cache_dir=cfg.cache_dir)
    return trainer.train(cfg, model, tokenizer, dataset, run_dir, tracker.report_to)


def check_judges(cfg) -> None:
    """Before training: the benchmarks' files, the judge's template and key must be there (they fail
    here); a judge server that is not up yet only gets a warning, as it may start before evaluation."""
    from lw.eval.benchmarks import load_items
    from lw.eval.evaluate import benchmark_judge
    from lw.llm import ServerUnusable

    for bench_cfg in cfg.eval.values():
        load_items(bench_cfg, cfg.cache_dir)
        judge = benchmark_judge(cfg, bench_cfg)
        if judge is not None:
            try:
                judge.endpoint.check_reachable()
            except ServerUnusable as err:
                log.warning("%s; training goes on, but the judge must be up when evaluation starts", err)


def dry_run(cfg, run_dir: Path) -> dict:
    """The training plan for the trainer and launch command this run would use (lw/plan/training.py)."""
    from lw.launch.driver import launch_command
    from lw.plan.training import dry_run_training
    from lw.train.registry import trainer_for

    return dry_run_training(cfg, run_dir, trainer_for(cfg), launch_command(cfg, run_dir))


TASK = Task(run=run, summary="data, training, then evaluation of the trained model (the default)",
            needs_tokenizer=True, check=check, before_tracking=before_tracking, dry_run=dry_run)
