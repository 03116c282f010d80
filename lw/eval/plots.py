"""Figures a person would rather look at than read."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def length_scatter(rows: list[dict], path: Path, title: str) -> Path:
    """Required vs produced length, log-log, with the y = x line; one colour per prompt language."""
    required = [r["length"] for r in rows]
    produced = [max(r["produced"], 1) for r in rows]  # log axes: an empty output is drawn at 1
    fig, ax = plt.subplots(figsize=(5, 5))
    languages = sorted({r.get("language") or "" for r in rows})
    for language in languages:
        points = [(x, y) for x, y, r in zip(required, produced, rows) if (r.get("language") or "") == language]
        ax.scatter(*zip(*points), s=14, alpha=0.6, label=language if len(languages) > 1 else None)
    low = min(required + produced)
    high = max(required + produced)
    ax.plot([low, high], [low, high], "k--", lw=1, label="y = x")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("required length (words)")
    ax.set_ylabel("produced length (words)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
