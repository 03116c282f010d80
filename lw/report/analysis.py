"""Length-vs-data analysis of a sweep: the tables and figures of the length-bound ablation.

A sweep directory holds one run directory per job, each with `results.csv` (one row per prompt:
run, trainer, benchmark, id, cap, seed, required, produced, S_l). A DPO run reports the cap of the
SFT data its starting model saw, so SFT and DPO at one cap sit side by side. Used by `lw-compare`, the notebook and
experiments/length_bound/.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import matplotlib.ticker

from lw.errors import MissingFile, UserError, one_line
from lw.eval.evaluate import RESULT_COLUMNS
from lw.run_dir import METRICS, RESULTS, hydra_config

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

# The columns of results.csv the tables need: all but `trainer`, `id`, `R` and `C` (absent in runs
# written before them).
NEEDED_COLUMNS = tuple(column for column in RESULT_COLUMNS if column not in ("trainer", "id", "R", "C"))


def read_results(path: Path) -> pd.DataFrame:
    """One run's results.csv; a file that is not one is the user's to fix, named in one line."""
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not a results.csv ({one_line(err)}); remove it from the sweep or rerun "
                        "that run's evaluation") from None
    missing = [column for column in NEEDED_COLUMNS if column not in frame]
    if missing:
        raise UserError(f"{path}: a results.csv needs the column(s) {', '.join(missing)}; remove it from the sweep "
                        "or rerun that run's evaluation")
    return frame


def load_sweep(sweep_dir: str | Path, benchmark: str | None = None) -> pd.DataFrame:
    """Every run's results.csv under `sweep_dir`, one frame; `run_dir` says whose."""
    paths = sorted(Path(sweep_dir).glob(f"**/{RESULTS}"))
    if not paths:
        raise MissingFile(f"no results.csv under {sweep_dir}")
    frame = pd.concat([read_results(p).assign(run_dir=str(p.parent)) for p in paths], ignore_index=True)
    if benchmark is not None:
        if benchmark not in set(frame["benchmark"]):
            raise UserError(f"no results.csv under {sweep_dir} has benchmark {benchmark} (it has "
                            f"{', '.join(sorted(map(str, set(frame['benchmark']))))}); pick one of those with --benchmark")
        frame = frame[frame["benchmark"] == benchmark]
    frame["cap"] = frame["cap"].fillna(-1).astype(int)  # -1: uncapped
    if "trainer" not in frame:
        frame["trainer"] = UNNAMED_TRAINER
    frame["trainer"] = frame["trainer"].fillna(UNNAMED_TRAINER)
    return frame


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per run: its cap and seed, the maximum output length, the plateau (the largest
    median output over requested lengths) and how closely outputs track requests within the cap."""
    rows = []
    for (run, trainer, cap, seed), group in frame.groupby(["run", "trainer", "cap", "seed"]):
        medians = group.groupby("required")["produced"].median()
        within = group[group["required"] <= cap] if cap > 0 else group
        error = ((within["produced"] - within["required"]).abs() / within["required"]).median()
        rows.append({"run": run, "trainer": trainer, "cap": cap, "seed": seed, "max_output_words": int(group["produced"].max()),
                     "plateau_words": float(medians.max()), "tracking_error_within_cap": float(error),
                     "S_l": float(group["S_l"].mean())})
    return pd.DataFrame(rows).sort_values(["cap", "trainer", "seed"], key=trainer_order).reset_index(drop=True)


def trainer_order(column: pd.Series) -> pd.Series:
    """Trainers in the order a study chains them (SFT, then DPO), others after."""
    from lw.train.registry import TRAINERS

    order = {kind: i for i, kind in enumerate(TRAINERS)}
    return column.map(order).fillna(len(order)) if column.name == "trainer" else column


# results.csv files written before runs named their trainer came from SFT runs.
UNNAMED_TRAINER = "sft"
LINE_STYLES = ("o-", "s--", "^-.", "d:")
MARKERS = (("o", "x"), ("s", "+"), ("^", "1"), ("d", "2"))


def median_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Median produced words: one row per (cap, trainer, seed), one column per requested length."""
    index = ["cap", "trainer", "seed"]
    table = frame.pivot_table(index=index, columns="required", values="produced", aggfunc="median")
    table["max"] = frame.groupby(index)["produced"].max()
    return table


def plot_length_vs_data(frame: pd.DataFrame, path: str | Path, title: str = "length-bound ablation") -> Path:
    """Left: median produced vs required length per cap (log-log, y = x). Right: maximum output
    length vs cap, each seed a point, with y = x."""
    summary = summarize(frame)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    trainers = sorted(frame["trainer"].unique(), key=lambda t: trainer_order(pd.Series([t], name="trainer"))[0])
    style = {t: i % len(LINE_STYLES) for i, t in enumerate(trainers)}
    caps = sorted(frame["cap"].unique())
    colors = plt.cm.viridis([i / max(len(caps) - 1, 1) for i in range(len(caps))])
    for cap, color in zip(caps, colors):
        for (trainer, seed), group in frame[frame["cap"] == cap].groupby(["trainer", "seed"]):
            medians = group.groupby("required")["produced"].median().clip(lower=1)
            name = f"cap {cap if cap > 0 else 'none'}" + (f" {trainer}" if frame["trainer"].nunique() > 1 else "")
            left.plot(medians.index, medians.values, LINE_STYLES[style[trainer]], color=color, alpha=0.8,
                      label=name if seed == frame["seed"].min() else None)
    required = sorted(frame["required"].unique())
    left.plot(required, required, "k--", lw=1, label="y = x")
    left.set(xscale="log", yscale="log", xlabel="required length (words)", ylabel="median produced length (words)")
    for axis in (left.xaxis, left.yaxis):  # the requested lengths as plain numbers
        axis.set_major_locator(matplotlib.ticker.FixedLocator(required))
        axis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    left.legend(fontsize=8)
    capped = summary[summary["cap"] > 0]
    for trainer, runs in capped.groupby("trainer"):
        suffix = f" ({trainer})" if capped["trainer"].nunique() > 1 else ""
        right.scatter(runs["cap"], runs["max_output_words"], label="max output length" + suffix,
                      marker=MARKERS[style[trainer]][0])
        right.scatter(runs["cap"], runs["plateau_words"], label="plateau (max median)" + suffix,
                      marker=MARKERS[style[trainer]][1])
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
            "run": run.name, "trainer": run.config.get("trainer", {}).get("kind", "sft"), "benchmark": benchmark,
            "id": rows["id"],
            "cap": run.config.get("data", {}).get("max_output_words"), "seed": run.config.get("seed"),
            "required": rows["length"], "produced": rows["produced"], "S_l": rows["S_l"]}))
    if not frames:
        raise LookupError(f"no run of group {group!r} in {project!r} logged {benchmark}/predictions")
    frame = pd.concat(frames, ignore_index=True)
    frame["cap"] = frame["cap"].fillna(-1).astype(int)
    return frame


# ------------------------------------------------------------------ LongBench-Write, the paper's table

# The paper's column groups: overall, then each length subset (lw.eval.benchmarks.SUBSETS) in its notation.
TABLE_GROUPS = (("overall", "overall"), ("0-500", "[0,500)"), ("500-2000", "[500,2000)"),
                ("2000-4000", "[2000,4000)"), ("4000-20000", "[4000,20000]"))
TABLE_METRICS = ("S", "S_l", "S_q")


def runs_with_metric(sweep_dir: str | Path, key: str):
    """(run directory, its metrics.json, its model config or {}) for every run under `sweep_dir` whose
    metrics hold `key`; a metrics.json that does not parse is one line naming it."""
    from omegaconf import OmegaConf

    for metrics_path in sorted(Path(sweep_dir).glob(f"**/{METRICS}")):
        try:
            metrics = json.loads(metrics_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise UserError(f"{metrics_path}: not a metrics.json ({one_line(err)}); remove it from the sweep or "
                            "rerun that run's evaluation") from None
        if key in metrics:
            config_path = hydra_config(metrics_path.parent)
            yield metrics_path.parent, metrics, OmegaConf.load(config_path).model if config_path.is_file() else {}


def load_longbench_runs(sweep_dir: str | Path, benchmark: str = "longbench_write") -> pd.DataFrame:
    """One row per run directory under `sweep_dir` with `benchmark`'s scores in metrics.json: the
    run, its model (config name and path), and S, S_l, S_q overall and per subset (NaN where absent)."""
    rows = []
    for run_dir, metrics, model in runs_with_metric(sweep_dir, f"{benchmark}/S_l"):
        row = {"run": run_dir.name, "model": model.get("name"), "model_path": model.get("path")}
        for subset, _ in TABLE_GROUPS:
            prefix = benchmark if subset == "overall" else f"{benchmark}/{subset}"
            row.update({(subset, m): metrics.get(f"{prefix}/{m}", float("nan")) for m in TABLE_METRICS})
        row["n"] = metrics.get(f"{benchmark}/n")
        row["judged"] = metrics.get(f"{benchmark}/judge_judged")
        rows.append(row)
    if not rows:
        raise MissingFile(f"no run under {sweep_dir} has {benchmark} scores (metrics.json with {benchmark}/S_l)")
    return pd.DataFrame(rows)


def longbench_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The paper's layout: one row per run, and under it the paper's reported numbers for that
    model where lw.report.paper_results has them (blank cells where it has none)."""
    from lw.report.paper_results import reported

    columns = [(s, m) for s, _ in TABLE_GROUPS for m in TABLE_METRICS]
    rows = []
    for _, run in frame.iterrows():
        label = run["model"] if frame["model"].tolist().count(run["model"]) == 1 else f"{run['model']} ({run['run']})"
        rows.append({"model": label, "source": "lw", **{c: run[c] for c in columns},
                     "judged": _judged(run)})
        paper = reported(run["model"])
        if paper:
            name, numbers = paper
            rows.append({"model": name, "source": "paper", **{c: numbers.get(c, float("nan")) for c in columns},
                         "judged": ""})
    table = pd.DataFrame(rows)
    table.columns = [c if isinstance(c, str) else f"{dict(TABLE_GROUPS)[c[0]]} {c[1]}".replace("overall ", "")
                     for c in table.columns]
    return table


def _judged(run) -> str:
    if pd.isna(run.get("judged")) or pd.isna(run.get("n")):
        return ""
    return f"{int(run['judged'])}/{int(run['n'])}"


# ------------------------------------------------------------------ WritingBench's length subset

WRITINGBENCH_SCORES = (("", "R"), ("", "C"), ("en/", "R"), ("en/", "C"), ("zh/", "R"), ("zh/", "C"))


def load_writingbench_runs(sweep_dir: str | Path, benchmark: str = "writingbench_length") -> pd.DataFrame:
    """One row per run directory under `sweep_dir` with `benchmark`'s metrics: the official R and C
    (x10, as the leaderboard shows them) overall, per language and per domain1, and lw's length score."""
    rows = []
    for run_dir, metrics, model in runs_with_metric(sweep_dir, f"{benchmark}/lw_length_parse_rate"):
        row = {"run": run_dir.name, "model": model.get("name"),
               **{f"{group}{score}": metrics.get(f"{benchmark}/{group}{score}_x10")
                                                   for group, score in WRITINGBENCH_SCORES}}
        domains = sorted({key.split("/")[2] for key in metrics if key.startswith(f"{benchmark}/domain1/")})
        row.update({f"{d} R": metrics.get(f"{benchmark}/domain1/{d}/R_x10") for d in domains})
        row.update({"lw S_l": metrics.get(f"{benchmark}/lw_S_l"),
                    "lw parsed": f"{metrics[f'{benchmark}/lw_length_parsed']}/{metrics[f'{benchmark}/n']}",
                    "scored": f"{metrics.get(f'{benchmark}/queries_scored', 0)}/{metrics[f'{benchmark}/n']}",
                    "skipped": metrics.get(f"{benchmark}/skipped_context", 0)})
        rows.append(row)
    if not rows:
        raise MissingFile(f"no run under {sweep_dir} has {benchmark} scores (metrics.json with "
                          f"{benchmark}/lw_length_parse_rate)")
    frame = pd.DataFrame(rows)
    return frame.rename(columns={"R": "R x10", "C": "C x10", "en/R": "en R", "en/C": "en C", "zh/R": "zh R", "zh/C": "zh C"})
