"""task=score and task=eval through the real entry point (`python -m lw`), on benchmark-shaped files."""

import csv
import json
import re

import pytest

from lw.eval.benchmarks import SUBSETS
from lw.eval.evaluate import read_predictions, score_benchmark
from lw.tasks.score import run as run_score
from lw.testing.openai_server import OpenAIServer, Reply, judge_json, user_text
from lw.tracking import Tracker, read_offline_run
from lw.words import language_of, length_score

from helpers import compose_lw, run_lw

KEY = "sk-test-judge-key-never-on-disk"


def write_predictions(path, data_dir):
    """Predictions for the benchmark's 120 prompts: every third exact, every third twice too long, every third empty."""
    rows = [json.loads(line) for line in (data_dir / "longbench_write.jsonl").open()]
    for i, row in enumerate(rows):
        produced = [row["length"], 2 * row["length"], 0][i % 3]
        word = "字" if language_of(row["prompt"]) == "zh" else "word "
        row["response"] = (word * produced).strip()
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return rows


def judge_script(body, attempt):
    """Scores derived from the response's length, so the expected S_q is computable; some replies garbled."""
    response = user_text(body).split("<Response>")[1].split("</Response>")[0].strip()
    if not response:
        return Reply("An empty response cannot be judged.")  # unparseable, three times
    return Reply("```json\n" + judge_json(5 if "word" in response else 3) + "\n```")


@pytest.mark.slow
def test_score_task_writes_the_papers_metrics(tmp_path, monkeypatch, bench_data_dir):
    predictions = write_predictions(tmp_path / "preds.jsonl", bench_data_dir)
    run_dir = tmp_path / "scored"
    monkeypatch.setenv("LW_TEST_JUDGE_KEY", KEY)
    with OpenAIServer(judge_script) as server:
        overrides = ("task=score", f"score.predictions={tmp_path / 'preds.jsonl'}", f"hydra.run.dir={run_dir}",
                     "eval=longbench_write", f"eval.longbench_write.data_dir={bench_data_dir}", "judge=openai", f"judge.base_url={server.base_url}",
                     "judge.model=loopback-judge", "judge.api_key_env=LW_TEST_JUDGE_KEY", "logger=wandb")
        run_lw(*overrides, cwd=tmp_path)
        sent = server.count()
        assert sent == 80 + 40 * 3  # empty responses asked three times (judge.attempts=3)

        metrics = json.loads((run_dir / "metrics.json").read_text())
        s_l = [length_score(r["length"], [r["length"], 2 * r["length"], 0][i % 3]) for i, r in enumerate(predictions)]
        assert metrics["longbench_write/S_l"] == pytest.approx(sum(s_l) / 120)
        assert metrics["longbench_write/n"] == 120
        for name, low, high in SUBSETS:
            in_subset = [s for s, r in zip(s_l, predictions) if low <= r["length"] < high]
            assert metrics[f"longbench_write/{name}/S_l"] == pytest.approx(sum(in_subset) / len(in_subset))
        scores = [(5 if language_of(r["prompt"]) == "en" else 3) for i, r in enumerate(predictions) if i % 3 != 2]
        s_q = (sum(scores) / len(scores) - 1) * 25
        assert metrics["longbench_write/S_q"] == pytest.approx(s_q)
        assert metrics["longbench_write/S"] == pytest.approx((sum(s_l) / 120 + s_q) / 2)
        assert metrics["longbench_write/judge_unparseable"] == 40
        assert metrics["longbench_write/judge_judged"] == 80
        assert metrics["longbench_write/quality/Relevance"] == pytest.approx(s_q)

        judgements = [json.loads(line) for line in (run_dir / "eval/longbench_write/judgements.jsonl").open()]
        assert len(judgements) == 120 and judgements[2]["status"] == "unparseable" and judgements[2]["scores"] is None
        rows = list(csv.DictReader((run_dir / "results.csv").open()))
        assert len(rows) == 120 and rows[1]["produced"] == str(2 * predictions[1]["length"])
        assert (run_dir / "eval/longbench_write/length_scatter.png").read_bytes()[:4] == b"\x89PNG"
        summary = read_offline_run(next((run_dir / "wandb").glob("offline-run-*")))["summary"]
        assert summary["longbench_write/S"] == pytest.approx(metrics["longbench_write/S"])
        assert summary["longbench_write/predictions/nrows"] == 120
        assert summary["longbench_write/length_scatter/_type"] == "image-file"

        # The same command again: the 40 unparseable judgements are asked again (3 tries each, as
        # judge.retry_unparseable is on by default); with it off, everything comes from the cache.
        run_lw(*overrides[:-1], "logger=none", cwd=tmp_path)
        assert server.count() - sent == 40 * 3
        sent = server.count()
        run_lw(*overrides[:-1], "logger=none", "judge.retry_unparseable=false", cwd=tmp_path)
        assert server.count() == sent
        assert json.loads((run_dir / "metrics.json").read_text())["longbench_write/S"] == metrics["longbench_write/S"]
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


def test_score_without_judge_or_eval_config(tmp_path, bench_data_dir):
    write_predictions(tmp_path / "preds.jsonl", bench_data_dir)
    cfg = compose_lw("task=score", f"score.predictions={tmp_path / 'preds.jsonl'}")
    assert "longbench_write" not in cfg.eval  # the benchmark kind is enough to score lengths
    metrics = run_score(cfg, tmp_path / "out", Tracker())
    assert {k for k in metrics if k.endswith("/S_l")} == {
        "longbench_write/S_l", "longbench_write/0-500/S_l", "longbench_write/500-2000/S_l",
        "longbench_write/2000-4000/S_l", "longbench_write/4000-20000/S_l"}
    assert not any("S_q" in k or "judge" in k for k in metrics)
    assert not (tmp_path / "out/eval/longbench_write/judgements.jsonl").exists()
    assert len((tmp_path / "out/results.csv").read_text().splitlines()) == 121


@pytest.mark.parametrize("lines, message", [
    (['{"prompt": "b", "length": "ten", "response": "x"}'], "preds.jsonl:2: field 'length' must be a positive integer"),
    (['{"prompt": "b", "length": 10}'], "preds.jsonl:2: missing field 'response'"),
    (['{"prompt": "b", "length": 10, "response": null}'], "preds.jsonl:2: missing field 'response'"),
    (['{"prompt": "b", "length": 10, "response": 5}'], "preds.jsonl:2: field 'response' must be a string"),
    (['{"prompt": "a", "length": 10, "response": "y"}'], "preds.jsonl:2: duplicate prompt (first at line 1)"),
    (['', '{"prompt": "b", "length": 10, "response": "y"'], "preds.jsonl:3: not valid JSON"),
])
def test_bad_predictions_name_file_line_and_field(tmp_path, lines, message):
    path = tmp_path / "preds.jsonl"
    path.write_text("\n".join(['{"prompt": "a", "length": 10, "response": "x"}', *lines]) + "\n")
    with pytest.raises(ValueError) as err:
        read_predictions(path)
    assert message in str(err.value)


def test_empty_responses_score_zero(tmp_path):
    path = tmp_path / "preds.jsonl"
    path.write_text('{"prompt": "a", "length": 10, "response": ""}\n{"prompt": "b", "length": 10, "response": " "}\n')
    rows = read_predictions(path)
    metrics, _ = score_benchmark("b", compose_lw("eval=longbench_write").eval.longbench_write, rows,
                                 tmp_path / "b", Tracker())
    assert metrics["b/S_l"] == 0 and metrics["b/n"] == 2


@pytest.mark.slow
def test_eval_task_on_an_api_model_both_benchmarks(tmp_path, bench_data_dir, monkeypatch):
    def writer(body, attempt):
        text = user_text(body)
        n = int(re.search(r"(\d+)", text).group(1)) if re.search(r"\d+", text) else 300
        return Reply(" ".join(["word"] * min(n, 2000)), status=500 if attempt == 1 and "Roman" in text else 200)

    api_key = "sk-test-api-model-key-kept-off-disk"
    monkeypatch.setenv("LW_TEST_API_KEY", api_key)
    with OpenAIServer(writer) as server:
        run_lw("task=eval", "eval=[longbench_write,longwrite_ruler]", f"eval.longbench_write.data_dir={bench_data_dir}",
               f"eval.longwrite_ruler.data_dir={bench_data_dir}", "eval.longbench_write.limit=10",
               "generation=openai", f"generation.base_url={server.base_url}", "generation.model=api-model",
               "generation.api_key_env=LW_TEST_API_KEY", "hydra.run.dir=out", "logger=wandb", cwd=tmp_path)
        assert server.count() == 10 + 48 + 6  # six Roman Empire prompts answered 500 once
        assert {r["headers"]["authorization"] for r in server.requests} == {f"Bearer {api_key}"}
    metrics = json.loads((tmp_path / "out/metrics.json").read_text())
    assert metrics["ruler/max_output_words"] == 2000
    assert metrics["ruler/en/n"] == 24 and metrics["ruler/zh/n"] == 24
    assert metrics["longbench_write/n"] == 10
    predictions = (tmp_path / "out/eval/longwrite_ruler/predictions.jsonl").read_text().splitlines()
    assert len(predictions) == 48
    assert {r["benchmark"] for r in csv.DictReader((tmp_path / "out/results.csv").open())} == {
        "longbench_write", "longwrite_ruler"}
    # The key the run used is in no file of the run (saved config, logs, predictions, the W&B run's files).
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert any(p.name.endswith(".wandb") for p in files) and any(p.name == "config.yaml" for p in files)
    for path in files:
        assert api_key.encode() not in path.read_bytes(), path
    logged = read_offline_run(next((tmp_path / "out/wandb").glob("offline-run-*")))
    assert logged["config"]["generation"]["api_key_env"] == "LW_TEST_API_KEY"
    assert api_key not in json.dumps(logged)
