"""Length-vs-data analysis of a sweep: the tables and figures of the length-bound ablation.

A sweep directory holds one run directory per job, each with `results.csv` (one row per prompt:
run, benchmark, id, cap, seed, required, produced, S_l). Used by `lw-compare`, the notebook and
experiments/length_bound/.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def load_sweep(sweep_dir: str | Path, benchmark: str | None = None) -> pd.DataFrame:
    """Every run's results.csv under `sweep_dir`, one frame."""
    paths = sorted(Path(sweep_dir).glob("**/results.csv"))
    if not paths:
        raise FileNotFoundError(f"no results.csv under {sweep_dir}")
    frame = pd.concat([pd.read_csv(p) for p in paths], ignore_index=True)
    if benchmark is not None:
        frame = frame[frame["benchmark"] == benchmark]
    frame["cap"] = frame["cap"].fillna(-1).astype(int)  # -1: uncapped
    return frame


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per run: its cap and seed, the maximum output length, the plateau (the largest
    median output over requested lengths) and how closely outputs track requests within the cap."""
    rows = []
    for (run, cap, seed), group in frame.groupby(["run", "cap", "seed"]):
        medians = group.groupby("required")["produced"].median()
        within = group[group["required"] <= cap] if cap > 0 else group
        error = ((within["produced"] - within["required"]).abs() / within["required"]).median()
        rows.append({"run": run, "cap": cap, "seed": seed, "max_output_words": int(group["produced"].max()),
                     "plateau_words": float(medians.max()), "tracking_error_within_cap": float(error),
                     "S_l": float(group["S_l"].mean())})
    return pd.DataFrame(rows).sort_values(["cap", "seed"]).reset_index(drop=True)


def median_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Median produced words: one row per (cap, seed), one column per requested length."""
    table = frame.pivot_table(index=["cap", "seed"], columns="required", values="produced", aggfunc="median")
    table["max"] = frame.groupby(["cap", "seed"])["produced"].max()
    return table


def plot_length_vs_data(frame: pd.DataFrame, path: str | Path, title: str = "length-bound ablation") -> Path:
    """Left: median produced vs required length per cap (log-log, y = x). Right: maximum output
    length vs cap, each seed a point, with y = x."""
    summary = summarize(frame)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    caps = sorted(frame["cap"].unique())
    colors = plt.cm.viridis([i / max(len(caps) - 1, 1) for i in range(len(caps))])
    for cap, color in zip(caps, colors):
        for seed, group in frame[frame["cap"] == cap].groupby("seed"):
            medians = group.groupby("required")["produced"].median().clip(lower=1)
            left.plot(medians.index, medians.values, "o-", color=color, alpha=0.8,
                      label=f"cap {cap if cap > 0 else 'none'}" if seed == frame["seed"].min() else None)
    required = sorted(frame["required"].unique())
    left.plot(required, required, "k--", lw=1, label="y = x")
    left.set(xscale="log", yscale="log", xlabel="required length (words)", ylabel="median produced length (words)")
    for axis in (left.xaxis, left.yaxis):  # the requested lengths as plain numbers
        axis.set_major_locator(matplotlib.ticker.FixedLocator(required))
        axis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    left.legend(fontsize=8)
    capped = summary[summary["cap"] > 0]
    right.scatter(capped["cap"], capped["max_output_words"], label="max output length", marker="o")
    right.scatter(capped["cap"], capped["plateau_words"], label="plateau (max median)", marker="x")
    if len(capped):
        ends = [capped["cap"].min(), capped["cap"].max()]
        right.plot(ends, ends, "k--", lw=1, label="y = cap")
    right.set(xlabel="longest output in SFT data (words)", ylabel="output length (words)")
    right.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def finding_holds(summary: pd.DataFrame, tolerance: float = 0.3) -> pd.Series:
    """Per run: does the longest output stay within +-tolerance of the cap? (The paper's finding.)"""
    capped = summary[summary["cap"] > 0]
    return ((capped["plateau_words"] - capped["cap"]).abs() / capped["cap"] <= tolerance).rename("within_tolerance")


def load_wandb_group(project: str, group: str, entity: str | None = None, benchmark: str = "toy_ruler") -> pd.DataFrame:
    """The same frame as `load_sweep`, from the W&B runs of one group (online only): each run's
    predictions table, with its cap and seed from the run's config."""
    import json
    import tempfile

    import wandb

    api = wandb.Api()
    frames = []
    for run in api.runs(f"{entity}/{project}" if entity else project, filters={"group": group}):
        table = run.summary.get(f"{benchmark}/predictions")
        if not table:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            data = json.loads(Path(run.file(table["path"]).download(root=tmp).name).read_text())
        rows = pd.DataFrame(data["data"], columns=data["columns"])
        frames.append(pd.DataFrame({
            "run": run.name, "benchmark": benchmark, "id": rows["id"],
            "cap": run.config.get("data", {}).get("max_output_words"), "seed": run.config.get("seed"),
            "required": rows["length"], "produced": rows["produced"], "S_l": rows["S_l"]}))
    if not frames:
        raise LookupError(f"no run of group {group!r} in {project!r} logged {benchmark}/predictions")
    frame = pd.concat(frames, ignore_index=True)
    frame["cap"] = frame["cap"].fillna(-1).astype(int)
    return frame
