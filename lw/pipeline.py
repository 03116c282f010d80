"""A run: (prepare data -> train) -> generate on the benchmarks -> score -> log -> files.

Every task writes into the Hydra run directory; the same directory resumes what a killed run
had finished (checkpoints, predictions).
"""

from __future__ import annotations

import csv
import json
import logging
import time
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from tqdm.contrib.logging import logging_redirect_tqdm

from lw.agentwrite import run_agentwrite
from lw.config import Task, option_name
from lw.errors import EXIT_DONE, EXIT_INCOMPLETE, Incomplete, UserError
from lw.eval.benchmarks import load_items
from lw.pairs import run_dpo_pairs
from lw.tracking import Tracker, start_tracker
from lw.train.registry import trainer_for

log = logging.getLogger(__name__)

RESULT_COLUMNS = ["run", "trainer", "benchmark", "id", "cap", "seed", "required", "produced", "S_l"]


def run(cfg: DictConfig) -> dict:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    seed_everything(cfg.seed, torch=cfg.task not in (Task.score, Task.agentwrite))
    if cfg.task == Task.train:
        # A bad trainer option fails here, before any data or weights are touched.
        trainer_for(cfg).training_args(cfg, run_dir / "checkpoints", "none")
    if cfg.dry_run:
        from lw.plan import dry_run

        return dry_run(cfg, run_dir)

    group = Path(hydra_cfg.sweep.dir).name if hydra_cfg.mode == RunMode.MULTIRUN else cfg.run_name
    from lw.launch.driver import is_first_node

    first_node = is_first_node(cfg.launcher)
    tokenizer = None
    if cfg.task in (Task.prepare, Task.train):
        from lw.models import build_tokenizer

        tokenizer = build_tokenizer(cfg.model, cfg.cache_dir)
    metrics: dict = {}
    if cfg.task == Task.train and cfg.trainer.base is not None:
        # Before the W&B run starts, so that its config shows the init_from the run trains from.
        metrics.update(resolve_base_stage(cfg, tokenizer))
    config = OmegaConf.to_container(cfg, resolve=True)
    # Off node 0 of a multi-node job the driver only runs its node's workers: no W&B run.
    tracker = start_tracker(cfg.logger, config, run_dir, cfg.run_name, group) if first_node else Tracker()
    exit_code = 1
    start = time.time()
    try:
        # Log lines go through tqdm, so they never tear a progress bar.
        with logging_redirect_tqdm():
            task_metrics = TASKS[Task(cfg.task)](cfg, run_dir, tracker, tokenizer)
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
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    log.info("results in %s", run_dir.resolve())


def seed_everything(seed: int, torch: bool) -> None:
    """Python's, NumPy's and (for the tasks that run a model) torch's generators. Scoring and
    AgentWrite never import torch, so a mistyped judge URL fails in seconds, not after the imports."""
    if torch:
        from transformers import set_seed

        set_seed(seed)
    else:
        import random

        import numpy

        random.seed(seed)
        numpy.random.seed(seed)


def resolve_base_stage(cfg: DictConfig, tokenizer) -> dict:
    """Train (or reuse) the cached base stage and start this run from it; the base's probe figures."""
    from lw.train.base_stage import ensure_base_model

    base = ensure_base_model(cfg, tokenizer)
    cfg.trainer.init_from = str(base)  # distributed workers read it from the saved config
    probe = json.loads((base.parent / "probe.json").read_text())
    return {f"base/median_output_words/{n}": words for n, words in probe.items()}


def run_prepare(cfg: DictConfig, run_dir: Path, tracker: Tracker, tokenizer) -> dict:
    """task=prepare: the training set (tokenized, packed) and its statistics, no training."""
    from lw.data.drops import drop_table

    _, stats = trainer_for(cfg).build_dataset(cfg, tokenizer, run_dir)
    print(drop_table(stats))
    return {f"data/{k}": v for k, v in stats.items()}


def run_train(cfg: DictConfig, run_dir: Path, tracker: Tracker, tokenizer) -> dict | None:
    """task=train: train, then evaluate the trained model (None on nodes other than 0)."""
    metrics: dict = {}
    if cfg.launcher.kind != "local":  # workers in child processes
        from lw.launch.driver import launch_training

        model_dir = launch_training(cfg, tokenizer, run_dir, tracker, metrics)
        if model_dir is None:
            return None
    else:
        trainer = trainer_for(cfg)
        check_judges(cfg)
        dataset, stats = trainer.build_dataset(cfg, tokenizer, run_dir)
        metrics.update({f"data/{k}": v for k, v in stats.items()})
        from lw.models import build_model

        model = build_model(cfg.model, tokenizer, path=cfg.trainer.init_from, seed=cfg.seed)
        model_dir = trainer.train(cfg, model, tokenizer, dataset, run_dir, tracker.report_to)
    metrics.update(evaluate(cfg, str(model_dir), run_dir, tracker))
    return metrics


def run_eval(cfg: DictConfig, run_dir: Path, tracker: Tracker, tokenizer) -> dict:
    """task=eval: evaluate model.path (or an API model) without training."""
    if cfg.model.path is None and cfg.generation.backend != "openai":
        raise UserError("task=eval needs model.path (a checkpoint directory or hub id), "
                        "or generation=openai with generation.model")
    return evaluate(cfg, cfg.model.path, run_dir, tracker)


def check_judges(cfg: DictConfig) -> None:
    """Before training: the benchmarks' files, the judge's template and key must be there (they fail
    here); a judge server that is not up yet only gets a warning, as it may start before evaluation."""
    from lw.eval.run import judge_for
    from lw.llm import ServerUnusable

    for bench_cfg in cfg.eval.values():
        load_items(bench_cfg, cfg.cache_dir)
        judge = judge_for(cfg, bench_cfg)
        if judge is not None:
            try:
                judge.endpoint.check_reachable()
            except ServerUnusable as err:
                log.warning("%s; training goes on, but the judge must be up when evaluation starts", err)


def evaluate(cfg: DictConfig, model_path: str | None, run_dir: Path, tracker: Tracker) -> dict:
    """Generate on every configured benchmark (resumable), score, and write files under run_dir.

    A benchmark whose generations or judgements failed after their retries keeps what finished and
    is reported in the metrics (generation_failed, judge_failed); the run then ends Incomplete.
    """
    from lw.eval.generate import GenerationFailed, build_backend, generate
    from lw.eval.run import judge_for, metric_prefix, score_benchmark

    benchmarks = {name: (bench_cfg, load_items(bench_cfg, cfg.cache_dir), judge_for(cfg, bench_cfg))
                  for name, bench_cfg in cfg.eval.items()}  # bad files or judge settings fail before the model loads
    backend = build_backend(cfg, model_path)
    metrics: dict = {}
    results, problems = [], []
    for name, (bench_cfg, items, judge) in benchmarks.items():
        bench_dir = run_dir / "eval" / name
        prefix = metric_prefix(bench_cfg.kind, name)
        try:
            rows = generate(backend, items, bench_dir / "predictions.jsonl")
        except GenerationFailed as err:  # not scored: a score of part of a benchmark would mislead
            metrics.update({f"{prefix}/generation_failed": err.failed, f"{prefix}/n": err.total})
            problems.append(f"{name}: {err}")
            continue
        bench_metrics, rows = score_benchmark(name, bench_cfg, rows, bench_dir, tracker, judge, cfg.run_name)
        metrics.update(bench_metrics)
        results += _result_rows(cfg, name, rows)
        problems += judge_problems(name, prefix, bench_metrics, bench_dir)
    _write_results(run_dir, results)
    if problems:
        raise Incomplete("; ".join(problems), metrics)
    return metrics


def judge_problems(name: str, prefix: str, metrics: dict, bench_dir: Path) -> list[str]:
    failed = metrics.get(f"{prefix}/judge_failed", 0)
    if not failed:
        return []
    return [f"{name}: {failed} of {metrics[f'{prefix}/n']} judge requests failed after their retries (see "
            f"{bench_dir / 'judgements.jsonl'}), S_q leaves them out; finished judgements are cached: rerun the "
            f"same command to ask only for the rest"]


def run_score(cfg: DictConfig, run_dir: Path, tracker: Tracker, tokenizer=None) -> dict:
    """task=score: score.predictions (a JSONL of prompt, type, length, response) without any model."""
    from lw.config import BenchmarkConfig
    from lw.eval.run import judge_for, metric_prefix, read_predictions, score_benchmark

    if not cfg.score.predictions:
        raise UserError("task=score needs score.predictions=FILE (a JSONL of prompt, type, length, response)")
    name = cfg.score.benchmark
    bench_cfg = cfg.eval[name] if name in cfg.eval else OmegaConf.structured(BenchmarkConfig(kind=name))
    rows = read_predictions(cfg.score.predictions)
    metrics, rows = score_benchmark(name, bench_cfg, rows, run_dir / "eval" / name, tracker,
                                    judge_for(cfg, bench_cfg), cfg.run_name)
    _write_results(run_dir, _result_rows(cfg, name, rows))
    problems = judge_problems(name, metric_prefix(bench_cfg.kind, name), metrics, run_dir / "eval" / name)
    if problems:
        raise Incomplete("; ".join(problems), metrics)
    return metrics


def _result_rows(cfg: DictConfig, name: str, rows: list[dict]) -> list[dict]:
    trainer = option_name(cfg.trainer.kind) if cfg.task == Task.train else "none"
    return [{"run": cfg.run_name, "trainer": trainer, "benchmark": name, "id": r["id"], "cap": cfg.data.max_output_words,
             "seed": cfg.seed, "required": r["length"], "produced": r["produced"], "S_l": round(r["S_l"], 4)}
            for r in rows]


def _write_results(run_dir: Path, results: list[dict]) -> None:
    with open(run_dir / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RESULT_COLUMNS)
        writer.writeheader()
        writer.writerows(results)


# Every task is one function (cfg, run_dir, tracker, tokenizer) -> metrics, or None on a node
# that only runs workers. An unknown task fails when the config is composed (Task is an enum).
TASKS = {
    Task.train: run_train,
    Task.prepare: run_prepare,
    Task.eval: run_eval,
    Task.score: run_score,
    Task.dpo_pairs: run_dpo_pairs,
    Task.agentwrite: run_agentwrite,
}
