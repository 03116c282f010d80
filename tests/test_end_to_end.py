"""`python -m lw` end to end, in a subprocess, as a new user runs it: the CPU miniature on a budget."""

import csv
import json
from statistics import median

import pytest

from lw.tracking import read_offline_run
from lw.words import count_words, length_score

from helpers import run_lw

pytestmark = pytest.mark.slow  # every test here launches lw, ranks or a server


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("smoke")
    result = run_lw("experiment=smoke", cwd=cwd)
    return cwd / "runs" / "experiment-smoke", result


def test_writes_metrics_predictions_and_scatter(smoke_run):
    run_dir, result = smoke_run
    assert f"results in {run_dir.resolve()}" in result.stdout
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["ruler/n"] == 4
    # Six steps of SFT teach the tiny model to answer at about the asked length: on this machine S_l is 34.1
    # (answers of 8 and 27 words to 12, of 13 and 17 to 50); the same run at learning rate 0 scores 0.0.
    assert metrics["ruler/S_l"] >= 20
    assert 0 <= metrics["ruler/max_output_words"] <= 64  # max_new_tokens bounds the words
    # predictions.jsonl is in the order answers finished (continuous batching); results.csv in the benchmark's
    predictions = sorted((json.loads(line) for line in (run_dir / "eval/toy_ruler/predictions.jsonl").open()),
                         key=lambda p: p["id"])
    assert sorted(p["length"] for p in predictions) == [12, 12, 50, 50]
    assert max(count_words(p["response"]) for p in predictions) == metrics["ruler/max_output_words"]
    assert (run_dir / "eval/toy_ruler/length_scatter.png").read_bytes()[:4] == b"\x89PNG"
    rows = sorted(csv.DictReader((run_dir / "results.csv").open()), key=lambda r: r["id"])
    assert [r["required"] for r in rows] == [str(p["length"]) for p in predictions]
    # results.csv and metrics.json agree with the benchmark's counter and S_l, item by item.
    produced = [count_words(p["response"]) for p in predictions]
    assert [int(r["produced"]) for r in rows] == produced and min(produced) > 0
    scores = [length_score(p["length"], n) for p, n in zip(predictions, produced)]
    assert [float(r["S_l"]) for r in rows] == pytest.approx(scores, abs=1e-4)
    assert metrics["ruler/S_l"] == pytest.approx(sum(scores) / 4)
    for length in (12, 50):
        assert metrics[f"ruler/median_output_words/{length}"] == median(
            n for p, n in zip(predictions, produced) if p["length"] == length)
    assert (run_dir / "model" / "config.json").exists()
    assert (run_dir / ".hydra" / "config.yaml").exists()


def test_training_data_has_exact_lengths(smoke_run):
    run_dir, _ = smoke_run
    samples = [json.loads(line) for line in (run_dir / "data/train.jsonl").open()]
    assert len(samples) == 96
    for sample in samples:
        user, assistant = sample["messages"]
        asked = int(user["content"].split("-word")[0].split()[-1]) if "-word" in user["content"] \
            else int(user["content"].split(" in ")[1].split()[0])
        assert count_words(assistant["content"]) == asked <= 60


def test_wandb_offline_run_holds_the_metrics(smoke_run):
    run_dir, result = smoke_run
    assert (result.stdout + result.stderr).count("no WANDB_API_KEY in the environment, logging offline") == 1
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    logged = read_offline_run(runs[0])
    summary = logged["summary"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert summary["ruler/max_output_words"] == metrics["ruler/max_output_words"]
    assert summary["ruler/S_l"] == pytest.approx(metrics["ruler/S_l"])
    assert summary["toy_ruler/length_scatter/_type"] == "image-file"
    assert summary["toy_ruler/predictions/nrows"] == 4
    assert sum("train/loss" in step for step in logged["history"]) == 3  # the trainer's curve, same run
    assert logged["config"]["run_name"] == "experiment-smoke"
    assert logged["config"]["eval"]["toy_ruler"]["lengths"] == [12, 50]


def test_rerun_resumes_from_finished_predictions(smoke_run):
    run_dir, _ = smoke_run
    before = (run_dir / "eval/toy_ruler/predictions.jsonl").read_text()
    result = run_lw("experiment=smoke", "task=eval", f"model.path={run_dir / 'model'}", "logger=none",
                    f"hydra.run.dir={run_dir}", cwd=run_dir.parent.parent)
    assert "4 predictions already done, 0 to go" in result.stdout + result.stderr
    assert (run_dir / "eval/toy_ruler/predictions.jsonl").read_text() == before
