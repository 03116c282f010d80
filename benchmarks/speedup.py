"""The closing step the concurrency benchmarks share: each run's speedup over the first, printed
and written to benchmarks/results/NAME.json."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def write_speedups(results: dict, name: str, rate: str | None = None, seconds: str | None = None) -> Path:
    """Speedup by a rate (higher is faster) or a time (lower is faster) over the first run."""
    first = results["runs"][0]
    for run in results["runs"]:
        run["speedup_vs_first"] = round(run[rate] / first[rate] if rate else first[seconds] / run[seconds], 1)
    print("speedup:", ", ".join(f"c={r['concurrency']}: {r['speedup_vs_first']}x" for r in results["runs"]))
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {out}")
    return out
