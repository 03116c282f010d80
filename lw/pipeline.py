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
from transformers import set_seed

from lw.config import Task
from lw.data import build_sft_dataset
from lw.eval.benchmarks import load_items
from lw.eval.generate import generate_hf
from lw.eval.plots import length_scatter
from lw.eval.scoring import ruler_metrics, score_lengths
from lw.models import build_model, build_tokenizer
from lw.tracking import Tracker, start_tracker

log = logging.getLogger(__name__)

RESULT_COLUMNS = ["run", "benchmark", "id", "cap", "seed", "required", "produced", "S_l"]


def run(cfg: DictConfig) -> dict:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    set_seed(cfg.seed)
    if cfg.task == Task.train:
        from lw.train.sft import sft_config

        sft_config(cfg, run_dir / "checkpoints", "none")  # fail on a bad trainer option before any work
    if cfg.dry_run:
        log.info("dry run: the config composes and validates; nothing trained or evaluated")
        return {}

    group = Path(hydra_cfg.sweep.dir).name if hydra_cfg.mode == RunMode.MULTIRUN else cfg.run_name
    config = OmegaConf.to_container(cfg, resolve=True)
    tracker = start_tracker(cfg.logger, config, run_dir, cfg.run_name, group)
    exit_code = 1
    try:
        start = time.time()
        metrics: dict = {}
        tokenizer = build_tokenizer(cfg.model, cfg.cache_dir)
        if cfg.task == Task.prepare:
            _, stats = build_sft_dataset(cfg, tokenizer, run_dir)
            metrics.update({f"data/{k}": v for k, v in stats.items()})
        elif cfg.task == Task.train:
            model_dir = train(cfg, tokenizer, run_dir, tracker, metrics)
            metrics.update(evaluate(cfg, str(model_dir), run_dir, tracker))
        elif cfg.task == Task.eval:
            if cfg.model.path is None:
                raise ValueError("task=eval needs model.path (a checkpoint directory or hub id)")
            metrics.update(evaluate(cfg, cfg.model.path, run_dir, tracker))
        else:
            raise ValueError(f"task={cfg.task.value} is not implemented yet")
        metrics["time/total_seconds"] = round(time.time() - start, 1)
        tracker.summary(metrics)
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        log.info("results in %s", run_dir.resolve())
        print(f"lw: done, results in {run_dir.resolve()}")
        exit_code = 0
        return metrics
    finally:
        tracker.finish(exit_code)


def train(cfg: DictConfig, tokenizer, run_dir: Path, tracker: Tracker, metrics: dict) -> Path:
    """Train and return the final model's directory; facts about the data and the base stage go
    into `metrics`."""
    from lw.train.sft import train_sft

    init_from = cfg.trainer.init_from
    if cfg.trainer.base is not None:
        from lw.train.base_stage import ensure_base_model

        init_from = str(ensure_base_model(cfg, tokenizer))
        probe = json.loads((Path(init_from).parent / "probe.json").read_text())
        metrics.update({f"base/median_output_words/{n}": words for n, words in probe.items()})
    dataset, stats = build_sft_dataset(cfg, tokenizer, run_dir)
    metrics.update({f"data/{k}": v for k, v in stats.items()})
    model = build_model(cfg.model, tokenizer, path=init_from, seed=cfg.seed)
    return train_sft(cfg, model, tokenizer, dataset, run_dir, tracker.report_to)


def evaluate(cfg: DictConfig, model_path: str, run_dir: Path, tracker: Tracker) -> dict:
    """Generate on every configured benchmark, score, and write files under run_dir."""
    tokenizer = build_tokenizer(cfg.model, cfg.cache_dir, path=model_path)
    model = build_model(cfg.model, tokenizer, path=model_path)
    metrics: dict = {}
    results = []
    for name, bench_cfg in cfg.eval.items():
        items = load_items(bench_cfg)
        bench_dir = run_dir / "eval" / name
        rows = generate_hf(model, tokenizer, cfg.model.chat_format, items, cfg.generation,
                           bench_dir / "predictions.jsonl", seed=cfg.seed)
        rows = score_lengths(rows)
        bench_metrics = ruler_metrics(rows, prefix=_metric_prefix(bench_cfg.kind, name))
        metrics.update(bench_metrics)
        scatter = length_scatter(rows, bench_dir / "length_scatter.png", f"{cfg.run_name}: {name}")
        tracker.log(bench_metrics)
        tracker.image(f"{name}/length_scatter", scatter)
        tracker.table(f"{name}/predictions", rows, ["id", "prompt", "length", "produced", "S_l", "response"])
        results += [{"run": cfg.run_name, "benchmark": name, "id": r["id"], "cap": cfg.data.max_output_words,
                     "seed": cfg.seed, "required": r["length"], "produced": r["produced"],
                     "S_l": round(r["S_l"], 4)} for r in rows]
    with open(run_dir / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RESULT_COLUMNS)
        writer.writeheader()
        writer.writerows(results)
    return metrics


def _metric_prefix(kind: str, name: str) -> str:
    # The toy probe reports under ruler/, so CPU runs and paper runs share W&B panels.
    return "ruler" if kind in ("toy_ruler", "longwrite_ruler") else name
