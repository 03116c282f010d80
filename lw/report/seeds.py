"""Seeds in a sweep: runs that differ only in `seed` as one group, each metric's n, mean, standard
deviation and 95% confidence interval, and the per-seed differences of runs that pair by seed (a DPO
or GRPO run and its own SFT start).

The interval is Student's t: mean +- t(0.975, n - 1) * sd / sqrt(n). Studies here have 2-5 seeds,
where the normal quantile (1.96) would be far too narrow (t(0.975, 4) = 2.78); t is exact when the
per-seed values are normal, which no handful of seeds can check, and carries on a paired design
unchanged (the differences are the sample). With n = 2, t(0.975, 1) = 12.71: the half-width is
6.35 times the gap between the two seeds, so an interval from 2 seeds says almost nothing. A
group of one run has no interval.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd

from lw.errors import UserError, one_line
from lw.report.analysis import load_sweep, summarize, trainer_order
from lw.run_dir import HYDRA_CONFIG, hydra_config, metrics_file

LEVEL = 0.95
# Per-run metrics, in the tables' order: summarize's columns, then a task=score run's scores.
METRICS = ("S_l", "S_q", "S", "max_output_words", "plateau_words", "tracking_error_within_cap")
SCORES = ("S_q", "S")
STATS = ("n", "mean", "sd", "ci95_low", "ci95_high")


def t_interval(values) -> dict:
    """n, mean, sample standard deviation and the Student's t 95% interval of the mean (NaN below n = 2)."""
    from scipy.stats import t

    values = pd.Series(values, dtype=float).dropna()
    n = len(values)
    mean = values.mean() if n else math.nan
    sd = values.std(ddof=1) if n > 1 else math.nan
    half = t.ppf((1 + LEVEL) / 2, n - 1) * sd / math.sqrt(n) if n > 1 else math.nan
    return {"n": n, "mean": mean, "sd": sd, "ci95_low": mean - half, "ci95_high": mean + half}


def group_name(run: str, seed: int) -> str:
    """The run's name without its seed. lw names a run by the overrides that change results
    (lw.cli.run_name), so runs that differ only in seed share this; a path to the seed's own upstream
    run (trainer.init_from=runs/sft-seed-0/model) names the seed too, and reads seed-* here."""
    own_seed = re.compile(rf"(?<![A-Za-z0-9])seed-{seed}(?![0-9])")
    items = [own_seed.sub("seed-*", item) for item in str(run).split("+") if item != f"seed-{seed}"]
    return "+".join(items) or "default"


def read_config(run_dir: Path):
    """The run's .hydra/config.yaml, or None where the run directory holds none (a copied result)."""
    from omegaconf import OmegaConf

    path = hydra_config(run_dir)
    if not path.is_file():
        return None
    try:
        return OmegaConf.load(path)
    except Exception as err:  # yaml's and OmegaConf's errors alike: the file is not a run's config
        raise UserError(f"{path}: not a run's config ({one_line(err)}); remove it or rerun that run") from None


def read_metrics(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not a metrics.json ({one_line(err)}); remove it from the sweep or "
                        "rerun that run's evaluation") from None


def load_runs(sweep_dir: Path, benchmark: str) -> pd.DataFrame:
    """One row per run directory: summarize's columns, the directory, its seed group, and the S_q
    and S of a task=score run that scored its predictions."""
    frame = load_sweep(sweep_dir, benchmark)
    runs = pd.concat([summarize(rows).assign(run_dir=run_dir) for run_dir, rows in frame.groupby("run_dir")],
                     ignore_index=True)
    runs["group"] = [group_name(run, seed) for run, seed in zip(runs["run"], runs["seed"])]
    runs = runs.sort_values(["trainer", "group", "seed"], key=trainer_order).reset_index(drop=True)
    return attach_scores(runs, Path(sweep_dir))


def attach_scores(runs: pd.DataFrame, sweep_dir: Path) -> pd.DataFrame:
    """A task=score run's config names the predictions it scored (score.predictions), a file under
    the scored run's directory: its S_q and S become that run's."""
    index = {Path(run_dir).name: i for i, run_dir in runs["run_dir"].items()}
    for config_path in sorted(sweep_dir.glob(f"**/{HYDRA_CONFIG}")):
        scorer = config_path.parent.parent
        config = read_config(scorer)
        if config.get("task") != "score" or not metrics_file(scorer).is_file():
            continue
        scored = [index[part] for part in Path(str(config.score.predictions)).parts if part in index]
        if scored:
            metrics = read_metrics(metrics_file(scorer))
            for score in SCORES:
                runs.loc[scored[-1], score] = metrics.get(f"{config.score.benchmark}/{score}", math.nan)
    return runs


def seed_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per seed group and metric: n, mean, sd and the 95% interval, and which seeds."""
    rows = []
    for group, members in runs.groupby("group", sort=False):
        for metric in (m for m in METRICS if m in runs and members[m].notna().any()):
            rows.append({"group": group, "trainer": members["trainer"].iloc[0], "metric": metric,
                         **t_interval(members[metric]), "seeds": _seeds(members["seed"])})
    return pd.DataFrame(rows)


def _seeds(seeds: pd.Series) -> str:
    return ",".join(str(s) for s in sorted(seeds))


def detected_pairs(runs: pd.DataFrame) -> list[tuple[int, int]]:
    """(start, derived) rows: a run whose config's trainer.init_from lies under another run of the
    sweep (a DPO run from runs/sft-seed-0/model pairs with the run in sft-seed-0)."""
    index = {Path(run_dir).name: i for i, run_dir in runs["run_dir"].items()}
    pairs = []
    for derived, run_dir in runs["run_dir"].items():
        config = read_config(Path(run_dir))
        start = (config.get("trainer") or {}).get("init_from") if config is not None else None
        parts = Path(str(start)).parts if start else ()
        starts = [index[part] for part in parts if part in index and index[part] != derived]
        if starts:
            pairs.append((starts[-1], derived))
    return pairs


def pairs_by_seed(runs: pd.DataFrame, sweep_dir: Path) -> list[tuple[int, int]]:
    """`--paired` where no run's config names its start: the sweep's two seed groups, matched by seed,
    the earlier trainer of a study (SFT before DPO) as the start."""
    groups = list(dict.fromkeys(runs["group"]))
    if len(groups) != 2:
        raise UserError(f"--paired: the runs under {sweep_dir} form {len(groups)} group(s) of runs that differ only "
                        f"in seed ({'; '.join(groups)}) and no run's trainer.init_from names another run there; "
                        "pairing by seed needs exactly two groups: give a directory with only those runs")
    start, derived = (runs[runs["group"] == group] for group in groups)
    if sorted(start["seed"]) != sorted(derived["seed"]) or start["seed"].duplicated().any():
        raise UserError(f"--paired: {groups[0]} has seeds {_seeds(start['seed'])} but {groups[1]} has "
                        f"{_seeds(derived['seed'])}; each seed needs one run in each group: add the missing runs or "
                        f"remove the unpaired ones from {sweep_dir}")
    derived_of = dict(zip(derived["seed"], derived.index))
    return [(i, derived_of[seed]) for i, seed in start["seed"].items()]


def paired_changes(runs: pd.DataFrame, pairs: list[tuple[int, int]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per pair and metric the change (derived - start); per start group, derived group and metric
    the changes' n, mean, sd and 95% interval."""
    rows = []
    for start, derived in pairs:
        before, after = runs.loc[start], runs.loc[derived]
        for metric in (m for m in METRICS if m in runs and pd.notna(before[m]) and pd.notna(after[m])):
            rows.append({"start": before["group"], "derived": after["group"], "seed": after["seed"],
                         "metric": metric, "start_value": before[metric], "derived_value": after[metric],
                         "change": after[metric] - before[metric]})
    per_seed = pd.DataFrame(rows, columns=["start", "derived", "seed", "metric", "start_value", "derived_value",
                                           "change"])
    summary = [{"start": start, "derived": derived, "metric": metric, **t_interval(changes["change"]),
                "seeds": _seeds(changes["seed"])}
               for (start, derived, metric), changes in per_seed.groupby(["start", "derived", "metric"], sort=False)]
    return per_seed, pd.DataFrame(summary)


def seeds_markdown(table: pd.DataFrame, per_seed: pd.DataFrame, changes: pd.DataFrame) -> str:
    """comparison.md's sections on seeds: each group's statistics, then each pairing's changes."""
    text = ("\n## Seeds\n\n"
            "Runs that differ only in `seed` form a group. Per metric: n seeds, the mean, the sample standard "
            "deviation and the 95% confidence interval of the mean by Student's t (mean +- t(0.975, n - 1) x sd / "
            "sqrt(n)): right for a few seeds, where the normal quantile would be too narrow, if the per-seed values "
            "are roughly normal. With n = 2, t(0.975, 1) = 12.71 makes the half-width 6.35 times the gap between "
            "the two seeds: such an interval says almost nothing. n = 1 has none.\n\n"
            + table.to_markdown(index=False, floatfmt=".4g") + "\n")
    if changes.empty:
        return text
    text += ("\n## Paired by seed\n\n"
             "Each derived run against its own start (its config's trainer.init_from, or `--paired`: the same "
             "seed in the other group); change = derived - start, and the changes' mean with its Student's t 95% "
             "interval (the pairing removes what the seeds share).\n\n"
             + changes.to_markdown(index=False, floatfmt=".4g")
             + "\n\n### Per seed\n\n" + per_seed.to_markdown(index=False, floatfmt=".4g") + "\n")
    return text


def seeds_csv(table: pd.DataFrame, changes: pd.DataFrame) -> pd.DataFrame:
    """comparison.csv: one row per group and metric (kind seeds), then per pairing and metric (kind paired_change)."""
    groups = table.assign(kind="seeds")
    paired = changes.rename(columns={"derived": "group"}).assign(kind="paired_change") if len(changes) else None
    columns = ["kind", "group", "start", "trainer", "metric", *STATS, "seeds"]
    return pd.concat([groups, paired], ignore_index=True).reindex(columns=columns)


def plot_seeds(table: pd.DataFrame, changes: pd.DataFrame, path: Path) -> Path:
    """Each group's mean with its 95% interval as error bars, one panel per metric (S_l, S_q, the
    maximum output); below them each pairing's mean change with its interval."""
    import matplotlib.pyplot as plt

    metrics = [m for m in ("S_l", "S_q", "max_output_words") if m in set(table["metric"])]
    rows = 2 if len(changes) else 1
    fig, axes = plt.subplots(rows, len(metrics), figsize=(4.5 * len(metrics), 3.5 * rows), squeeze=False)
    for column, metric in enumerate(metrics):
        _error_bars(axes[0][column], table[table["metric"] == metric], "group", metric)
        if rows == 2:
            axis = axes[1][column]
            _error_bars(axis, changes[changes["metric"] == metric], "derived", f"change in {metric}")
            axis.axhline(0, color="k", lw=1, ls="--")
    fig.suptitle("mean over seeds with its 95% interval (Student's t)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _error_bars(axis, rows: pd.DataFrame, label: str, ylabel: str) -> None:
    half = (rows["ci95_high"] - rows["mean"]).fillna(0)
    x = range(len(rows))
    axis.errorbar(x, rows["mean"], yerr=half, fmt="o", capsize=4)
    trainers = rows["trainer"] if "trainer" in rows else [""] * len(rows)
    names = [f"{trainer} {_short(name)}\nn={n}" for trainer, name, n in zip(trainers, rows[label], rows["n"])]
    axis.set_xticks(list(x), names, fontsize=7)
    axis.set_ylabel(ylabel)


def _short(name: str, width: int = 28) -> str:
    return name if len(name) <= width else "..." + name[-(width - 3):]
