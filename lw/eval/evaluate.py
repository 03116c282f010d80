"""A run's evaluation (`evaluate`: generate on every configured benchmark, score, results.csv), shared
by task=train and task=eval, and one benchmark's predictions -> scores (length, judge) -> files in
the run directory and W&B (`score_benchmark`, also task=score's)."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

from lw.errors import Incomplete, MissingFile, UserError
from lw.eval.benchmarks import parse_length, subset_of
from lw.eval.judge import DIMENSIONS, judge_for
from lw.eval.plots import length_scatter
from lw.eval.scoring import longbench_metrics, ruler_metrics, score_lengths
from lw.eval.writingbench import KIND as WRITINGBENCH
from lw.eval.writingbench_judge import writingbench_judge
from lw.jsonl import read_json_objects
from lw.run_dir import eval_dir, judgements_file, length_scatter_file, predictions_file, results_file
from lw.words import language_of

log = logging.getLogger(__name__)

RULER_KINDS = ("toy_ruler", "longwrite_ruler")
TABLE_COLUMNS = ["id", "prompt", "type", "language", "subset", "required", "produced", "S_l", "response"]


def metric_prefix(kind: str, name: str) -> str:
    # Ruler-style probes report under ruler/, so CPU runs and paper runs share W&B panels.
    return "ruler" if kind in RULER_KINDS else name


def benchmark_judge(cfg, bench_cfg):
    """The judge of one benchmark: WritingBench's criteria judge for its length subset, else
    LongBench-Write's quality judge (lw.eval.judge.judge_for); None where neither applies."""
    return writingbench_judge(cfg, bench_cfg) if bench_cfg.kind == WRITINGBENCH else judge_for(cfg, bench_cfg)


def score_benchmark(name: str, bench_cfg, rows: list[dict], bench_dir: Path, tracker, judge=None,
                    title: str = "", skipped: int = 0) -> tuple[dict, list[dict]]:
    """Metrics (flat keys) and scored rows; writes judgements.jsonl and the scatter under bench_dir.
    `skipped`: the items set aside as longer than the model's context (WritingBench)."""
    if bench_cfg.kind == WRITINGBENCH:
        from lw.eval.writingbench_score import score_writingbench

        return score_writingbench(name, rows, bench_dir, tracker, judge, skipped)
    prefix = metric_prefix(bench_cfg.kind, name)
    rows = [{**r, "required": r["length"]} for r in score_lengths(rows)]
    bench_dir.mkdir(parents=True, exist_ok=True)
    columns = list(TABLE_COLUMNS)
    if bench_cfg.kind == "longbench_write":
        judgements = judge.judge(rows) if judge else None
        metrics = longbench_metrics(rows, prefix, judgements)
        if judgements is not None:
            with open(judgements_file(bench_dir), "w", encoding="utf-8") as f:
                for row, j in zip(rows, judgements):
                    f.write(json.dumps({"prompt": row["prompt"], **j}, ensure_ascii=False) + "\n")
            for row, j in zip(rows, judgements):
                row["judge_status"] = j["status"]
                row.update(j["scores"] or {})
            columns += ["judge_status", *DIMENSIONS]
            if metrics[f"{prefix}/judge_unparseable"] or metrics[f"{prefix}/judge_failed"]:
                log.warning("%s: %d unparseable and %d failed judgements are left out of S_q (see %s)", name,
                            metrics[f"{prefix}/judge_unparseable"], metrics[f"{prefix}/judge_failed"],
                            judgements_file(bench_dir))
    elif bench_cfg.kind in RULER_KINDS:
        metrics = ruler_metrics(rows, prefix)
    else:
        raise UserError(f"unknown benchmark kind {bench_cfg.kind!r}")
    scatter = length_scatter(rows, length_scatter_file(bench_dir), f"{title}: {name}" if title else name)
    tracker.log(metrics)
    tracker.image(f"{name}/length_scatter", scatter)
    tracker.table(f"{name}/predictions", rows, columns)
    return metrics, rows


def read_predictions(path: str | Path) -> list[dict]:
    """A predictions JSONL (prompt, length, response; type and id optional), validated line by line.

    Lengths are recomputed from the text later, so a `produced` field in the file is ignored.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise MissingFile(f"score.predictions: {path} does not exist")
    rows: list[dict] = []
    first_line: dict[str, str] = {}  # key -> its first line number
    for where, row in read_json_objects(path):
        for field in ("prompt", "length", "response"):
            if field not in row or row[field] is None:
                raise UserError(f"{where}: missing field {field!r}")
        for field in ("prompt", "response"):
            if not isinstance(row[field], str):
                raise UserError(f"{where}: field {field!r} must be a string, got {type(row[field]).__name__}")
        key = str(row["id"]) if "id" in row else row["prompt"]
        if key in first_line:
            raise UserError(f"{where}: duplicate {'id' if 'id' in row else 'prompt'} "
                             f"(first at line {first_line[key]}): {key[:60]!r}")
        first_line[key] = where.rsplit(":", 1)[1]
        rows.append({"id": str(row.get("id", len(rows))), "prompt": row["prompt"],
                     "length": parse_length(row["length"], where), "type": row.get("type"),
                     "response": row["response"], "language": language_of(row["prompt"])})
        rows[-1]["subset"] = subset_of(rows[-1]["length"])
    if not rows:
        raise UserError(f"{path}: no predictions")
    empty = sum(1 for r in rows if not r["response"].strip())
    if empty:
        log.warning("%s: %d empty responses (they score S_l = 0)", path, empty)
    return rows


# --- a run's evaluation: shared by task=train (the trained model) and task=eval ----------------------

# The columns of results.csv, one row per scored item (lw/report/analysis.py reads them). R and C:
# WritingBench's per-query scores (1-10; blank for other benchmarks), whose S_l is lw's length score
# against the query's parsed requirement (blank where none parsed).
RESULT_COLUMNS = ("run", "trainer", "benchmark", "id", "cap", "seed", "required", "produced", "S_l", "R", "C")


def evaluate(cfg, model_path: str | None, run_dir: Path, tracker, trainer: str = "none") -> dict:
    """Generate on every configured benchmark (resumable), score, and write files under run_dir.

    A benchmark whose generations or judgements failed after their retries keeps what finished and
    is reported in the metrics (generation_failed, judge_failed); the run then ends Incomplete.
    `trainer` names what trained the model in results.csv ("none" for a model evaluated as it is).
    """
    from lw.eval.benchmarks import load_items
    from lw.eval.generate import GenerationFailed, build_backend, generate

    benchmarks = {name: (bench_cfg, load_items(bench_cfg, cfg.cache_dir), benchmark_judge(cfg, bench_cfg))
                  for name, bench_cfg in cfg.eval.items()}  # bad files or judge settings fail before the model loads
    backend = build_backend(cfg, model_path)
    metrics: dict = {}
    results, problems = [], []
    for name, (bench_cfg, items, judge) in benchmarks.items():
        bench_dir = eval_dir(run_dir, name)
        prefix = metric_prefix(bench_cfg.kind, name)
        skipped = []
        if bench_cfg.kind == WRITINGBENCH:
            from lw.eval.writingbench_score import drop_overlong

            items, skipped = drop_overlong(backend, items, bench_dir)
        try:
            rows = generate(backend, items, predictions_file(bench_dir))
        except GenerationFailed as err:  # not scored: a score of part of a benchmark would mislead
            metrics.update({f"{prefix}/generation_failed": err.failed, f"{prefix}/n": err.total})
            problems.append(f"{name}: {err}")
            continue
        bench_metrics, rows = score_benchmark(name, bench_cfg, rows, bench_dir, tracker, judge, cfg.run_name,
                                              len(skipped))
        metrics.update(bench_metrics)
        results += result_rows(cfg, name, rows, trainer)
        problems += judge_problems(name, prefix, bench_metrics, bench_dir)
    write_results(run_dir, results)
    if problems:
        raise Incomplete("; ".join(problems), metrics)
    return metrics


def judge_problems(name: str, prefix: str, metrics: dict, bench_dir: Path) -> list[str]:
    failed = metrics.get(f"{prefix}/judge_failed", 0)
    if not failed:
        return []
    asked = sum(metrics.get(f"{prefix}/judge_{k}", 0) for k in ("judged", "unparseable", "failed"))
    return [f"{name}: {failed} of {asked or metrics[f'{prefix}/n']} judge requests failed after their retries (see "
            f"{judgements_file(bench_dir)}), the scores leave them out; finished judgements are cached: rerun the "
            f"same command to ask only for the rest"]


def result_rows(cfg, name: str, rows: list[dict], trainer: str = "none") -> list[dict]:
    """results.csv's rows of one benchmark: one per scored item."""
    return [{"run": cfg.run_name, "trainer": trainer, "benchmark": name, "id": r["id"], "cap": cfg.data.max_output_words,
             "seed": cfg.seed, "required": r["length"], "produced": r["produced"],
             "S_l": None if r["S_l"] is None else round(r["S_l"], 4), "R": r.get("R"), "C": r.get("C")}
            for r in rows]


def write_results(run_dir: Path, results: list[dict]) -> None:
    with open(results_file(run_dir), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RESULT_COLUMNS)
        writer.writeheader()
        writer.writerows(results)
