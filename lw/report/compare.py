"""`lw-compare SWEEP_DIR`: compare the runs of a sweep.

The length-bound ablation (the default, --benchmark toy_ruler or any ruler): offline it writes
SWEEP_DIR/comparison.md (tables) and SWEEP_DIR/comparison.png (length vs data). With
--wandb-report it also builds a W&B report of the sweep's group (needs the wandb-workspaces
package and a login); --dry-run builds it without saving.

Seeds (lw/report/seeds.py): runs that differ only in `seed` form a group; comparison.md,
SWEEP_DIR/comparison.csv, SWEEP_DIR/comparison_seeds.png (error bars) and the W&B report give each
metric's n, mean, standard deviation and 95% interval (Student's t). A run whose trainer.init_from
is another run of the sweep (DPO from its seed's SFT run) pairs with it: the per-seed changes and
their mean with its interval. --paired pairs the sweep's two groups by seed where no config says so.

WritingBench's length subset (--benchmark writingbench_length): SWEEP_DIR/writingbench_length_table.md
and .csv beside it, the official R and C x10 overall, per language and per domain1, and lw's own length score.

LongBench-Write (--benchmark longbench_write or longbench_write_en, e.g. after
`lw experiment=longbench_write_table`): SWEEP_DIR/<benchmark>_table.md and .csv, the paper's
layout (S, S_l, S_q overall and per length subset, one row per run) with the paper's reported
numbers under each model that has them (lw/report/paper_results.py).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import NoReturn

from lw.errors import UserError, fail, one_line_errors
from lw.report.analysis import (
    finding_holds,
    load_longbench_runs,
    load_sweep,
    load_writingbench_runs,
    longbench_table,
    median_table,
    plot_length_vs_data,
    summarize,
)
from lw.report.seeds import (
    detected_pairs,
    load_runs,
    paired_changes,
    pairs_by_seed,
    plot_seeds,
    seed_table,
    seeds_csv,
    seeds_markdown,
)


def write_comparison(sweep_dir: Path, benchmark: str, out_dir: Path | None = None,
                     paired: bool = False) -> tuple[Path, Path, str]:
    """comparison.md, .png and .csv (and comparison_seeds.png where seeds repeat or runs pair); the
    markdown on seeds is returned for the W&B report."""
    out_dir = out_dir or sweep_dir
    seeds = write_seed_comparison(sweep_dir, benchmark, out_dir, paired)
    frame = load_sweep(sweep_dir, benchmark)
    summary = summarize(frame)
    summary["within_30pct_of_cap"] = finding_holds(summary)
    figure = plot_length_vs_data(frame, out_dir / "comparison.png", f"{sweep_dir.name}: {benchmark}")
    markdown = out_dir / "comparison.md"
    markdown.write_text(
        f"# {sweep_dir.name}: {benchmark}\n\n"
        "## Per run\n\n"
        "`plateau_words` is the largest median output over requested lengths; "
        "`tracking_error_within_cap` the median of |produced - required| / required over requests up to the cap.\n\n"
        + summary.to_markdown(index=False, floatfmt=".3g")
        + "\n\n## Median words produced by requested length\n\n"
        + median_table(frame).to_markdown(floatfmt=".0f") + "\n\n"
        f"![length vs data]({figure.name})\n"
        + seeds
    )
    return markdown, figure, seeds


def write_seed_comparison(sweep_dir: Path, benchmark: str, out_dir: Path, paired: bool) -> str:
    """comparison.csv, and where a group has two seeds or more or runs pair, the figure and the
    markdown on seeds (empty otherwise)."""
    runs = load_runs(sweep_dir, benchmark)
    pairs = detected_pairs(runs) or (pairs_by_seed(runs, sweep_dir) if paired else [])
    table = seed_table(runs)
    per_seed, changes = paired_changes(runs, pairs)
    seeds_csv(table, changes).to_csv(out_dir / "comparison.csv", index=False)
    if not pairs and table["n"].max() < 2:
        return ""
    figure = plot_seeds(table, changes, out_dir / "comparison_seeds.png")
    return seeds_markdown(table, per_seed, changes) + f"\n![seeds]({figure.name})\n"


def write_longbench_table(sweep_dir: Path, benchmark: str = "longbench_write") -> tuple[Path, Path]:
    """SWEEP_DIR/<benchmark>_table.md and .csv: the paper's table for the sweep's runs."""
    from lw.report.paper_results import SOURCE

    table = longbench_table(load_longbench_runs(sweep_dir, benchmark))
    csv_path = sweep_dir / f"{benchmark}_table.csv"
    table.to_csv(csv_path, index=False)
    markdown = sweep_dir / f"{benchmark}_table.md"
    markdown.write_text(
        f"# {sweep_dir.name}: {benchmark}\n\n"
        "S = (S_l + S_q) / 2; S_l the length score, S_q the judge's quality score (docs/science.md section 2). "
        f"Rows marked paper: the paper's reported numbers ({SOURCE}; lw/report/paper_results.py), blank where "
        "no source was at hand. `judged`: judgements scored / answers (the rest failed or never parsed).\n\n"
        + table.astype(object).where(table.notna(), None).to_markdown(index=False, floatfmt=".1f", missingval="")
        + "\n")
    return markdown, csv_path


def write_writingbench_table(sweep_dir: Path, benchmark: str = "writingbench_length") -> tuple[Path, Path]:
    """SWEEP_DIR/<benchmark>_table.md and .csv: WritingBench's scores of the sweep's runs, one row per run."""
    table = load_writingbench_runs(sweep_dir, benchmark)
    csv_path = sweep_dir / f"{benchmark}_table.csv"
    table.to_csv(csv_path, index=False)
    markdown = sweep_dir / f"{benchmark}_table.md"
    markdown.write_text(
        f"# {sweep_dir.name}: {benchmark}\n\n"
        "WritingBench's official scores x10, as its leaderboard shows them (docs/science.md, \"WritingBench's length "
        "subset\"): R the mean of the query means, C the mean of the length criteria; overall, per language and "
        "per domain1 (R). `scored`: queries with every criterion judged / queries generated (the rest are left out); "
        "`skipped`: queries longer than the model's context. `lw S_l` is lw's own length score against the length "
        "parsed from each query (`lw parsed` of them), not the benchmark's.\n\n"
        + table.astype(object).where(table.notna(), None).to_markdown(index=False, floatfmt=".1f", missingval="")
        + "\n")
    return markdown, csv_path


def wandb_report(entity: str | None, project: str, group: str, save: bool, seeds: str = ""):
    """A W&B report comparing the runs of one group (one sweep); `seeds` the comparison's markdown
    on seeds (W&B's own bands are min-max, sd or standard error, not a t interval)."""
    try:
        import wandb_workspaces.reports.v2 as wr
    except ImportError:
        raise UserError("--wandb-report needs the wandb-workspaces package: pip install -e '.[report]'") from None

    runset = wr.Runset(entity=entity or "", project=project, name=group, filters=f"Group = '{group}'")
    cap = wr.Config("data.max_output_words")
    report = wr.Report(
        project=project, entity=entity or "", title=f"Length-bound ablation: {group}",
        description="Does the longest output follow the longest outputs in the SFT data? (LongWriter, section 2)",
        blocks=[
            wr.H1("Maximum output length vs the SFT data's cap"),
            wr.PanelGrid(runsets=[runset], panels=[
                wr.ScatterPlot(title="max output length vs cap", x=cap, y=wr.SummaryMetric("ruler/max_output_words")),
                wr.BarPlot(title="max output length by cap", metrics=[wr.SummaryMetric("ruler/max_output_words")],
                           groupby=cap, groupby_aggfunc="mean", groupby_rangefunc="minmax"),
                wr.BarPlot(title="S_l by cap", metrics=[wr.SummaryMetric("ruler/S_l")], groupby=cap,
                           groupby_aggfunc="mean", groupby_rangefunc="minmax"),
                wr.LinePlot(title="training loss", x="train/global_step", y=["train/loss"]),
            ]),
            *([wr.MarkdownBlock(text=seeds)] if seeds else []),
        ],
    )
    if save:
        report.save()
    return report


class OneLineParser(argparse.ArgumentParser):
    """Bad arguments end in one line, as every other user's mistake does (lw.errors.fail)."""

    def error(self, message: str) -> NoReturn:
        fail(f"{message}; see {self.prog} --help", self.prog)


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(prog="lw-compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", type=Path, help="a multirun directory (multirun/<time>)")
    parser.add_argument("--benchmark", default="toy_ruler",
                        help="benchmark name in results.csv; longbench_write(_en): the paper's table; "
                             "writingbench_length: WritingBench's table")
    parser.add_argument("--wandb-report", action="store_true", help="also build a W&B report of the group")
    parser.add_argument("--project", default="lw")
    parser.add_argument("--entity", default=os.environ.get("WANDB_ENTITY"))
    parser.add_argument("--group", help="W&B group (default: the sweep directory's name)")
    parser.add_argument("--dry-run", action="store_true", help="build the report without saving it")
    parser.add_argument("--paired", action="store_true",
                        help="pair the sweep's two seed groups by seed (start: the earlier trainer, e.g. SFT before "
                             "DPO) where no run's trainer.init_from names its start")
    args = parser.parse_args(argv)
    with one_line_errors(parser.prog):
        compare(args)


def compare(args: argparse.Namespace) -> None:
    """lw-compare's work, on its parsed arguments."""
    if not args.sweep_dir.is_dir():
        raise UserError(f"{args.sweep_dir}: no such directory; give lw-compare a sweep's directory (multirun/<time>)")
    if args.benchmark.startswith("writingbench"):
        markdown, csv_path = write_writingbench_table(args.sweep_dir, args.benchmark)
        print(f"lw-compare: wrote {markdown} and {csv_path}")
        return
    if args.benchmark.startswith("longbench_write"):
        markdown, csv_path = write_longbench_table(args.sweep_dir, args.benchmark)
        print(f"lw-compare: wrote {markdown} and {csv_path}")
        return
    markdown, figure, seeds = write_comparison(args.sweep_dir, args.benchmark, paired=args.paired)
    print(f"lw-compare: wrote {markdown}, {figure} and {args.sweep_dir / 'comparison.csv'}")
    if args.wandb_report:
        report = wandb_report(args.entity, args.project, args.group or args.sweep_dir.name, save=not args.dry_run,
                              seeds=seeds)
        print(f"lw-compare: W&B report {'built' if args.dry_run else 'saved'}: {report.title}"
              + ("" if args.dry_run else f" {report.url}"))


if __name__ == "__main__":
    main()
