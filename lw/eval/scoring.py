"""Length metrics of a set of predictions, as flat keys for W&B and metrics.json."""

from __future__ import annotations

import statistics
from collections import defaultdict

from lw.words import count_words, length_score


def score_lengths(rows: list[dict]) -> list[dict]:
    """Each row with `produced` (words, recomputed from the text) and its `S_l`."""
    scored = []
    for row in rows:
        produced = count_words(row["response"])
        scored.append({**row, "produced": produced, "S_l": length_score(row["length"], produced)})
    return scored


def ruler_metrics(rows: list[dict], prefix: str) -> dict[str, float]:
    """Produced vs required length: the maximum output length, S_l, and medians per required length."""
    metrics: dict[str, float] = {
        f"{prefix}/max_output_words": max(r["produced"] for r in rows),
        f"{prefix}/S_l": statistics.fmean(r["S_l"] for r in rows),
        f"{prefix}/n": len(rows),
    }
    by_length: dict[int, list[int]] = defaultdict(list)
    by_language: dict[str, list[int]] = defaultdict(list)
    for r in rows:
        by_length[r["length"]].append(r["produced"])
        if "language" in r:
            by_language[r["language"]].append(r["produced"])
    for length, produced in sorted(by_length.items()):
        metrics[f"{prefix}/median_output_words/{length}"] = statistics.median(produced)
    if len(by_language) > 1:
        for language, produced in sorted(by_language.items()):
            metrics[f"{prefix}/{language}/max_output_words"] = max(produced)
    return metrics
