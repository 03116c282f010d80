"""task=score: score.predictions (a JSONL of prompt, type, length, response; for WritingBench its
official responses file of index and response) without any model."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from lw.errors import Incomplete, UserError
from lw.run_dir import eval_dir
from lw.tasks.registry import Task


def check(cfg, run_dir: Path) -> None:
    if not cfg.score.predictions:
        raise UserError("task=score needs score.predictions=FILE (a JSONL of prompt, type, length, response)")


def run(cfg, run_dir: Path, tracker, tokenizer=None) -> dict:
    from lw.config import BenchmarkConfig
    from lw.eval.evaluate import (
        benchmark_judge,
        judge_problems,
        metric_prefix,
        read_predictions,
        result_rows,
        score_benchmark,
        write_results,
    )

    name = cfg.score.benchmark
    bench_cfg = cfg.eval[name] if name in cfg.eval else OmegaConf.structured(BenchmarkConfig(kind=name))
    if bench_cfg.kind == "writingbench_length":  # its official responses file: {"index", "response"}
        from lw.eval.benchmarks import load_items
        from lw.eval.writingbench import read_responses

        rows = read_responses(cfg.score.predictions, load_items(bench_cfg, cfg.cache_dir))
    else:
        rows = read_predictions(cfg.score.predictions)
    metrics, rows = score_benchmark(name, bench_cfg, rows, eval_dir(run_dir, name), tracker,
                                    benchmark_judge(cfg, bench_cfg), cfg.run_name)
    write_results(run_dir, result_rows(cfg, name, rows))
    problems = judge_problems(name, metric_prefix(bench_cfg.kind, name), metrics, eval_dir(run_dir, name))
    if problems:
        raise Incomplete("; ".join(problems), metrics)
    return metrics


# No model runs: torch is never imported, so a mistyped judge URL fails in seconds, not after the imports.
TASK = Task(run=run, summary="score an existing predictions file, no model: score.predictions=FILE",
            uses_torch=False, check=check)
