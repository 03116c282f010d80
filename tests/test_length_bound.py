"""The length-bound ablation as a real multirun: shared base stage, capped SFT runs, results,
the comparison (lw-compare) and the notebook, on a budget of seconds."""

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from lw.report.analysis import load_sweep, summarize
from lw.report.compare import main as compare_main
from lw.report.compare import wandb_report
from lw.tracking import read_offline_run

from helpers import REPO, run_lw

NOTEBOOK = REPO / "notebooks" / "length_vs_data.ipynb"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("sweep")
    sweep_dir = cwd / "multirun" / "lb"
    result = run_lw("-m", "experiment=smoke_length_bound", f"hydra.sweep.dir={sweep_dir}", cwd=cwd)
    return sweep_dir, result


@pytest.mark.slow
def test_each_cap_is_a_run_with_results(sweep):
    sweep_dir, _ = sweep
    runs = sorted(p.parent.name for p in sweep_dir.glob("*/results.csv"))
    assert runs == ["data.max_output_words-20+experiment-smoke_length_bound+seed-0",
                    "data.max_output_words-40+experiment-smoke_length_bound+seed-0"]
    frame = load_sweep(sweep_dir)
    assert set(frame.columns) >= {"cap", "seed", "required", "produced", "run"}
    assert sorted(frame["cap"].unique()) == [20, 40]
    assert len(frame) == 2 * 4  # 2 runs x (2 lengths x 1 topic x 2 samples)


@pytest.mark.slow
def test_base_stage_is_trained_once_and_shared(sweep):
    sweep_dir, result = sweep
    output = result.stdout + result.stderr
    assert output.count("base stage: trained") == 1 and output.count("base stage: reusing") == 1
    for run_dir in sweep_dir.glob("data.max_output_words-*"):
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert {"base/median_output_words/10", "base/median_output_words/40"} <= set(metrics)


@pytest.mark.slow
def test_the_training_data_respects_each_cap(sweep):
    from lw.words import count_words

    sweep_dir, _ = sweep
    for cap in (20, 40):
        run_dir = next(sweep_dir.glob(f"data.max_output_words-{cap}+*"))
        lengths = [count_words(json.loads(line)["messages"][1]["content"]) for line in open(run_dir / "data/train.jsonl")]
        assert max(lengths) <= cap and min(lengths) >= 10


@pytest.mark.slow
def test_one_wandb_group_per_sweep(sweep):
    """Every run of the sweep is logged under one W&B group, the sweep directory's name."""
    sweep_dir, _ = sweep
    groups = []
    for run_dir in sorted(sweep_dir.glob("data.max_output_words-*")):
        logged = read_offline_run(next((run_dir / "wandb").glob("offline-run-*")))
        groups.append(logged["group"])
        assert "ruler/max_output_words" in logged["summary"]
    assert groups == [sweep_dir.name] * 2


@pytest.mark.slow
def test_each_wandb_run_shows_the_base_model_it_trains_from(sweep):
    """The base stage runs before the W&B run starts, so the logged config names the model trained from."""
    sweep_dir, result = sweep
    output = (result.stdout + result.stderr).splitlines()
    (trained,) = [line.split("base stage: trained ", 1)[1].split(";")[0] for line in output if "base stage: trained " in line]
    (reused,) = [line.split("base stage: reusing ", 1)[1].strip() for line in output if "base stage: reusing " in line]
    assert reused == trained
    model = Path(trained) / "model"  # the base stage's model, in its cache directory
    assert (model / "config.json").exists()
    for run_dir in sorted(sweep_dir.glob("data.max_output_words-*")):
        logged = read_offline_run(next((run_dir / "wandb").glob("offline-run-*")))
        assert logged["config"]["trainer"]["init_from"] == str(model), run_dir.name


@pytest.mark.slow
def test_compare_writes_markdown_and_figure(sweep):
    sweep_dir, _ = sweep
    compare_main([str(sweep_dir)])
    markdown = (sweep_dir / "comparison.md").read_text()
    assert "plateau_words" in markdown and "(20, 'sft', 0)" in markdown and "(40, 'sft', 0)" in markdown
    assert (sweep_dir / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    summary = summarize(load_sweep(sweep_dir))
    assert list(summary["cap"]) == [20, 40]
    assert (summary["max_output_words"] <= 48).all()  # bounded by max_new_tokens


def test_wandb_report_builds_offline():
    report = wandb_report("someone", "lw", "multirun-x", save=False)
    assert report.title == "Length-bound ablation: multirun-x"
    assert report.blocks[1].runsets[0].filters == "Group = 'multirun-x'"


@pytest.mark.slow
def test_notebook_runs_on_the_sweep(sweep, tmp_path):
    sweep_dir, _ = sweep
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    os.environ.update({"LW_SWEEP_DIR": str(sweep_dir), "LW_FIGURE": str(tmp_path / "figure.png")})
    try:
        NotebookClient(notebook, timeout=120, resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    finally:
        os.environ.pop("LW_SWEEP_DIR")
        os.environ.pop("LW_FIGURE")
    outputs = "".join(str(o) for cell in notebook.cells for o in cell.get("outputs", []))
    assert "2 runs, 8 predictions" in outputs and "plateau_words" in outputs
    assert (tmp_path / "figure.png").exists()


def test_notebook_is_committed_without_outputs():
    result = subprocess.run([sys.executable, "-m", "nbstripout", "--verify", str(NOTEBOOK)], capture_output=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_committed_cpu_results_show_the_finding_on_two_seeds():
    """experiments/length_bound/README.md claims the finding from results/cpu; the files must agree."""
    from lw.report.analysis import finding_holds

    summary = summarize(load_sweep(REPO / "experiments" / "length_bound" / "results" / "cpu"))
    assert sorted(summary["cap"].unique()) == [25, 50, 100] and sorted(summary["seed"].unique()) == [0, 1]
    assert finding_holds(summary).all()
    # The README claims the longest single answer stays within 30% of the cap too, not only the plateau.
    assert ((summary["max_output_words"] - summary["cap"]).abs() / summary["cap"] <= 0.3).all()
    assert (summary["tracking_error_within_cap"] <= 0.1).all()
    for _, runs in summary.groupby("seed"):
        assert runs.sort_values("cap")["max_output_words"].is_monotonic_increasing
