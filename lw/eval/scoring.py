"""Scores of a set of predictions, as flat keys for W&B and metrics.json (docs/science.md section 2).

- S_l: per item, then the mean over all items (not of subset means) and per LongBench-Write subset.
- S_q: each judge dimension's mean over the parseable judgements, mapped by (mean - 1) * 25; S_q
  is the mean of the six. Unparseable and failed judgements are counted, never scored; so are the
  judgements the other choice of `judge.scores` or `judge.extraction` would have read otherwise
  (`judge_non_integer`, `judge_extraction_differs`).
- S = (S_l + S_q) / 2.
"""

from __future__ import annotations

import statistics
from collections import defaultdict

from lw.eval.benchmarks import SUBSETS, subset_of
from lw.eval.judge import DIFFERENCES, DIMENSIONS, FAILED, OK, UNPARSEABLE
from lw.words import count_words, length_score


def score_lengths(rows: list[dict]) -> list[dict]:
    """Each row with `produced` (words, recomputed from the text) and its `S_l`."""
    scored = []
    for row in rows:
        produced = count_words(row["response"])
        scored.append({**row, "produced": produced, "S_l": length_score(row["length"], produced)})
    return scored


def ruler_metrics(rows: list[dict], prefix: str) -> dict[str, float]:
    """Produced vs required length: the maximum output length, S_l, and medians per required length,
    overall and per language."""
    metrics: dict[str, float] = {
        f"{prefix}/max_output_words": max(r["produced"] for r in rows),
        f"{prefix}/S_l": statistics.fmean(r["S_l"] for r in rows),
        f"{prefix}/n": len(rows),
    }
    by_length: dict[int, list[int]] = defaultdict(list)
    for r in rows:
        by_length[r["length"]].append(r["produced"])
    for length, produced in sorted(by_length.items()):
        metrics[f"{prefix}/median_output_words/{length}"] = statistics.median(produced)
    by_language: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if "language" in r:
            by_language[r["language"]].append(r)
    if len(by_language) > 1:
        for language, group in sorted(by_language.items()):
            metrics[f"{prefix}/{language}/max_output_words"] = max(r["produced"] for r in group)
            metrics[f"{prefix}/{language}/S_l"] = statistics.fmean(r["S_l"] for r in group)
            metrics[f"{prefix}/{language}/n"] = len(group)
            lengths: dict[int, list[int]] = defaultdict(list)
            for r in group:
                lengths[r["length"]].append(r["produced"])
            for length, produced in sorted(lengths.items()):
                metrics[f"{prefix}/{language}/median_output_words/{length}"] = statistics.median(produced)
    return metrics


def quality_scores(judgements: list[dict]) -> dict[str, float] | None:
    """Per-dimension scores on 0-100 and S_q from the parseable judgements; None without any."""
    scored = [j["scores"] for j in judgements if j["status"] == OK]
    if not scored:
        return None
    dims = {d: (statistics.fmean(s[d] for s in scored) - 1) * 25 for d in DIMENSIONS}
    return {**dims, "S_q": statistics.fmean(dims.values())}


def longbench_metrics(rows: list[dict], prefix: str, judgements: list[dict] | None = None) -> dict[str, float]:
    """S_l overall and per subset; with judgements also S_q, S, the six dimensions and the judge's counts."""
    by_subset: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_subset[subset_of(r["length"])].append(r)
    groups = [(prefix, rows)] + [(f"{prefix}/{name}", by_subset[name]) for name, _, _ in SUBSETS if by_subset[name]]
    judged = {j["id"]: j for j in judgements or []}
    metrics: dict[str, float] = {f"{prefix}/max_output_words": max(r["produced"] for r in rows)}
    for key, group in groups:
        metrics[f"{key}/n"] = len(group)
        metrics[f"{key}/S_l"] = statistics.fmean(r["S_l"] for r in group)
        if judgements is None:
            continue
        quality = quality_scores([judged[r["id"]] for r in group])
        if quality is None:
            continue
        metrics[f"{key}/S_q"] = quality["S_q"]
        metrics[f"{key}/S"] = (metrics[f"{key}/S_l"] + quality["S_q"]) / 2
        if key == prefix:
            metrics.update({f"{prefix}/quality/{d}": quality[d] for d in DIMENSIONS})
    if judgements is not None:
        statuses = [judged[r["id"]]["status"] for r in rows]
        metrics[f"{prefix}/judge_judged"] = statuses.count(OK)
        metrics[f"{prefix}/judge_unparseable"] = statuses.count(UNPARSEABLE)
        metrics[f"{prefix}/judge_failed"] = statuses.count(FAILED)
        for difference in DIFFERENCES:
            metrics[f"{prefix}/judge_{difference}"] = sum(bool(judged[r["id"]].get(difference)) for r in rows)
    return metrics

