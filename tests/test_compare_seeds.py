"""lw-compare over seeds: a 3-seed sweep of SFT runs, DPO runs from each seed's own SFT run and the
task=score runs of their probes, laid out as experiments/dpo/run_cpu.sh lays them out (results.csv,
metrics.json and the .hydra/config.yaml lw composes); the mean, sd and Student's t interval checked
against numbers worked out by hand."""

import json
import shutil

import pandas as pd
import pytest
from omegaconf import OmegaConf, open_dict

from lw.report.compare import main as compare_main
from lw.report.compare import wandb_report, write_comparison
from lw.report.seeds import detected_pairs, load_runs

from helpers import compose_lw
from test_compare_errors import compare_error

HEADER = "run,trainer,benchmark,id,cap,seed,required,produced,S_l\n"
SFT = "data.max_output_words-100+experiment-length_bound_mini+seed-{seed}"
DPO = "data.path-pairs.jsonl+experiment-dpo_mini+judge-none+seed-{seed}+trainer.init_from-sft-seed-{seed}_model"
# Per seed 0, 1, 2: S_l of the SFT and the DPO probe, S_q of their task=score runs.
S_L = {"sft": (80.0, 84.0, 86.0), "dpo": (82.0, 83.0, 90.0)}
S_Q = {"sft": (90.0, 92.0, 94.0), "dpo": (91.0, 95.0, 94.0)}
T_975_2 = 4.303  # Student's t, 0.975 quantile, 2 degrees of freedom (any printed table)


def save_config(run_dir, config, **settings):
    """The run's .hydra/config.yaml as Hydra writes it (the composed config without its hydra node),
    with `settings` ({"trainer.init_from": ...}) as its overrides would have set them."""
    config = config.copy()
    with open_dict(config):
        del config["hydra"]
        for key, value in settings.items():
            OmegaConf.update(config, key, value)
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(config, run_dir / ".hydra" / "config.yaml")


def write_probe(run_dir, name: str, trainer: str, seed: int, s_l: float):
    run_dir.mkdir(parents=True)
    rows = [f"{name},{trainer},toy_ruler,{n}-rivers-0,100,{seed},{n},{n + seed},{s_l}\n" for n in (50, 100)]
    (run_dir / "results.csv").write_text(HEADER + "".join(rows))
    (run_dir / "metrics.json").write_text(json.dumps({"ruler/S_l": s_l, "ruler/max_output_words": 100 + seed}))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """The DPO miniature's layout over seeds 0-2, as run_cpu.sh leaves it under its WORK directory,
    compared once (lw-compare)."""
    work = tmp_path_factory.mktemp("seeds") / "dpo_mini"
    configs = {"sft": compose_lw("experiment=length_bound_mini", "data.max_output_words=100"),
               "dpo": compose_lw("experiment=dpo_mini", "judge=none"),
               "score": compose_lw("experiment=dpo_mini", "task=score", "score.benchmark=longbench_write")}
    for seed in range(3):
        sft, dpo = work / f"sft-seed-{seed}", work / f"dpo-seed-{seed}"
        write_probe(sft, SFT.format(seed=seed), "sft", seed, S_L["sft"][seed])
        save_config(sft, configs["sft"], seed=seed)
        write_probe(dpo, DPO.format(seed=seed), "dpo", seed, S_L["dpo"][seed])
        save_config(dpo, configs["dpo"], seed=seed, **{"trainer.init_from": f"{sft}/model",
                                                       "data.path": f"{work}/pairs-seed-{seed}/pairs.jsonl"})
        for trainer, run in (("sft", sft), ("dpo", dpo)):
            quality = work / f"quality-{run.name}"
            save_config(quality, configs["score"], **{"score.predictions": f"{run}/eval/toy_ruler/predictions.jsonl"})
            (quality / "metrics.json").write_text(json.dumps({"longbench_write/S_q": S_Q[trainer][seed],
                                                              "longbench_write/S": 0.0}))
    return work, write_comparison(work, "toy_ruler")[2]


def read_csv(path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=False, na_values=[""])


def rows(frame: pd.DataFrame, **where) -> pd.DataFrame:
    for column, value in where.items():
        frame = frame[frame[column] == value]
    return frame


def test_three_seeds_give_n_mean_sd_and_the_t_interval(sweep):
    work, _ = sweep
    table = read_csv(work / "comparison.csv")
    sft = rows(table, kind="seeds", trainer="sft", metric="S_l").iloc[0]
    # By hand: 80, 84, 86 -> mean 83.333, sd sqrt((3.333^2 + 0.667^2 + 2.667^2) / 2) = 3.0551,
    # half-width 4.303 x 3.0551 / sqrt(3) = 7.590
    assert sft["group"] == "data.max_output_words-100+experiment-length_bound_mini" and sft["seeds"] == "0,1,2"
    assert (sft["n"], sft["mean"], sft["sd"]) == (3, pytest.approx(83.3333, abs=1e-4), pytest.approx(3.0551, abs=1e-4))
    assert (sft["ci95_low"], sft["ci95_high"]) == (pytest.approx(75.743, abs=2e-3), pytest.approx(90.924, abs=2e-3))
    assert T_975_2 * 3.0551 / 3 ** 0.5 == pytest.approx(sft["ci95_high"] - sft["mean"], abs=1e-3)
    # S_q reaches each run from the task=score run whose config names its predictions.
    s_q = rows(table, kind="seeds", trainer="dpo", metric="S_q").iloc[0]
    assert (s_q["n"], s_q["mean"]) == (3, pytest.approx(280 / 3))
    markdown = (work / "comparison.md").read_text()
    assert "## Seeds" in markdown and "t(0.975, 1) = 12.71" in markdown and "![seeds](comparison_seeds.png)" in markdown
    assert (work / "comparison_seeds.png").read_bytes()[:4] == b"\x89PNG"


def test_dpo_runs_pair_with_their_own_sft_start_from_the_configs(sweep):
    work, _ = sweep
    table = read_csv(work / "comparison.csv")
    s_l = rows(table, kind="paired_change", metric="S_l").iloc[0]
    # By hand: changes +2, -1, +4 -> mean 1.6667, sd sqrt((0.333^2 + 2.667^2 + 2.333^2) / 2) = 2.5166,
    # half-width 4.303 x 2.5166 / sqrt(3) = 6.252
    assert s_l["start"].endswith("experiment-length_bound_mini") and s_l["group"].endswith("sft-seed-*_model")
    assert (s_l["n"], s_l["mean"], s_l["sd"]) == (3, pytest.approx(1.6667, abs=1e-4), pytest.approx(2.5166, abs=1e-4))
    assert (s_l["ci95_low"], s_l["ci95_high"]) == (pytest.approx(-4.585, abs=2e-3), pytest.approx(7.919, abs=2e-3))
    s_q = rows(table, kind="paired_change", metric="S_q").iloc[0]
    # By hand: changes +1, +3, 0 -> mean 1.3333, sd 1.5275, half-width 4.303 x 1.5275 / sqrt(3) = 3.795
    assert (s_q["mean"], s_q["ci95_high"]) == (pytest.approx(1.3333, abs=1e-4), pytest.approx(5.128, abs=2e-3))
    markdown = (work / "comparison.md").read_text()
    assert "## Paired by seed" in markdown and "### Per seed" in markdown


def copy_results(work, into, runs):
    """Results copied out of their runs, as experiments/*/results/ keep them: no .hydra/ config."""
    for run in runs:
        (into / run).mkdir()
        shutil.copy(work / run / "results.csv", into / run)


def test_paired_by_seed_without_configs_gives_the_same_changes(sweep, tmp_path, capsys):
    work, _ = sweep
    copy_results(work, tmp_path, [f"{trainer}-seed-{seed}" for trainer in ("sft", "dpo") for seed in range(3)])
    assert detected_pairs(load_runs(tmp_path, "toy_ruler")) == []  # nothing says they pair
    compare_main([str(tmp_path), "--paired"])
    assert capsys.readouterr().out.startswith("lw-compare: wrote ")
    table = read_csv(tmp_path / "comparison.csv")
    assert rows(table, kind="paired_change", metric="S_l")["mean"].tolist() == [pytest.approx(5 / 3)]


def test_the_wandb_report_carries_the_seed_tables(sweep):
    _, seeds = sweep
    report = wandb_report("someone", "lw", "dpo_mini", save=False, seeds=seeds)
    assert report.blocks[-1].text == seeds and "ci95_high" in seeds and "Paired by seed" in seeds


def test_paired_on_runs_that_do_not_pair_is_one_line(sweep, tmp_path, capsys):
    work, _ = sweep
    copy_results(work, tmp_path, ["sft-seed-0", "sft-seed-1", "sft-seed-2", "dpo-seed-0", "dpo-seed-1"])
    line = compare_error(capsys, tmp_path, "--paired")
    assert line == ("lw-compare: error: --paired: data.max_output_words-100+experiment-length_bound_mini has seeds "
                    "0,1,2 but data.path-pairs.jsonl+experiment-dpo_mini+judge-none+trainer.init_from-sft-seed-*_model "
                    "has 0,1; each seed needs one run in each group: add the missing runs or remove the unpaired ones "
                    f"from {tmp_path}")
    shutil.rmtree(tmp_path / "dpo-seed-1")
    shutil.rmtree(tmp_path / "dpo-seed-0")
    line = compare_error(capsys, tmp_path, "--paired")
    assert line.startswith("lw-compare: error: --paired: the runs under ") and "form 1 group(s)" in line
    assert not (tmp_path / "comparison.md").exists()  # nothing written for a comparison that cannot be made
