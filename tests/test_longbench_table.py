"""experiment=longbench_write_table: the eval-only multirun, its dry run, and lw-compare's paper-layout table."""

import csv
import json

import pandas as pd
import pytest

from lw.plan.eval import OFFICIAL_LONGBENCH_WRITE, build_eval_plan
from lw.report.analysis import TABLE_GROUPS, longbench_table
from lw.report.compare import main as compare_main
from lw.report.paper_results import PAPER_NAME, REPORTED
from lw.testing.openai_server import OpenAIServer, Reply, judge_json, user_text
from lw.words import language_of

from helpers import compose_lw, run_lw, save_tiny_checkpoint

KEY = "sk-test-table-judge-key"
LIMIT = 4


def judge_by_length(body, attempt):
    """Scores from the answer's length in characters (so S_q is no constant), fenced as the official judge reads."""
    response = user_text(body).split("<Response>")[1].split("</Response>")[0].strip()
    return Reply("```json\n" + judge_json(1 + len(response) % 5) + "\n```")


@pytest.mark.slow
def test_table_multirun_of_two_models_with_the_judge_then_lw_compare(tmp_path, bench_data_dir):
    short = save_tiny_checkpoint(tmp_path / "short" / "model")
    long = save_tiny_checkpoint(tmp_path / "long" / "model", min_new_tokens=12)
    sweep = tmp_path / "sweep"
    with OpenAIServer(judge_by_length) as server:
        run_lw("-m", "experiment=longbench_write_table", "model=tiny", f"model.path={short},{long}",
               "generation=hf", "generation.max_new_tokens=12", f"eval.longbench_write.limit={LIMIT}",
               f"eval.longbench_write.data_dir={bench_data_dir}", f"judge.base_url={server.base_url}",
               "judge.model=loopback-judge", "judge.api_key_env=LW_TEST_JUDGE_KEY", "logger=none",
               f"hydra.sweep.dir={sweep}", cwd=tmp_path, env={"LW_TEST_JUDGE_KEY": KEY})
        assert {r["body"]["max_tokens"] for r in server.requests} == {1024}  # the official judge's settings
    runs = sorted(p.parent for p in sweep.glob("*/metrics.json"))
    assert len(runs) == 2 and all(r.name.startswith("eval+") for r in runs)  # one run directory per model
    assert not any((r / "model").exists() or (r / "checkpoints").exists() for r in runs)  # nothing trained

    compare_main([str(sweep), "--benchmark", "longbench_write"])
    rows = list(csv.DictReader((sweep / "longbench_write_table.csv").open()))
    subsets = [label for _, label in TABLE_GROUPS[1:]]
    assert list(rows[0]) == ["model", "source", "S", "S_l", "S_q"] + [f"{s} {m}" for s in subsets
                                                                      for m in ("S", "S_l", "S_q")] + ["judged"]
    assert [r["source"] for r in rows] == ["lw", "lw"]  # model=tiny: the paper has no row for it
    assert sorted(r["model"] for r in rows) == sorted(f"tiny ({r.name})" for r in runs)  # one config, told apart
    for row in rows:
        metrics = json.loads((sweep / row["model"][len("tiny ("):-1] / "metrics.json").read_text())
        s_l, s_q = float(row["S_l"]), float(row["S_q"])
        assert float(row["S"]) == pytest.approx((s_l + s_q) / 2)
        assert (s_l, s_q) == pytest.approx((metrics["longbench_write/S_l"], metrics["longbench_write/S_q"]))
        assert float(row["[0,500) S_l"]) == pytest.approx(metrics.get("longbench_write/0-500/S_l", float("nan")),
                                                          nan_ok=True)
        assert row["judged"] == f"{LIMIT}/{LIMIT}"
    markdown = (sweep / "longbench_write_table.md").read_text()
    assert "| model" in markdown and "[4000,20000] S_q" in markdown and "nan" not in markdown


def test_the_table_puts_the_papers_numbers_under_each_released_model_and_leaves_the_rest_blank():
    frame = pd.DataFrame([{"run": "r1", "model": "glm4_9b_chat", "model_path": None, "n": 120, "judged": 118,
                           **{(s, m): 50.0 for s, _ in TABLE_GROUPS for m in ("S", "S_l", "S_q")}}])
    table = longbench_table(frame)
    assert table["source"].tolist() == ["lw", "paper"] and table["model"].tolist() == ["glm4_9b_chat", "GLM-4-9B-chat"]
    assert table.loc[1, "S"] == REPORTED["GLM-4-9B-chat"][("overall", "S")] == 68.3
    assert pd.isna(table.loc[1, "S_l"]) and pd.isna(table.loc[1, "[0,500) S"])
    assert table.loc[0, "judged"] == "118/120"
    # Every model the sweep names maps to a paper name; the released GLM model is the paper's DPO one.
    sweep = compose_lw("experiment=longbench_write_table").hydra.sweeper.params.model.split(",")
    assert set(sweep) == set(PAPER_NAME) and PAPER_NAME["longwriter_glm4_9b"] == "LongWriter-9B-DPO"


@pytest.mark.slow
def test_dry_run_plans_the_evaluation_not_a_training(tmp_path, bench_data_dir):
    result = run_lw("experiment=longbench_write_table", "model=tiny", "dry_run=true", "logger=none",
                    f"eval.longbench_write.data_dir={bench_data_dir}", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                    cwd=tmp_path)
    assert "evaluation plan" in result.stdout and "nothing trained" not in result.stdout
    assert "steps" not in result.stdout and "GPU/rank" not in result.stdout
    plan = json.loads(next((tmp_path / "sweep").glob("*/plan.json")).read_text())
    items = [json.loads(line) for line in (bench_data_dir / "longbench_write.jsonl").open()]
    rates = {"en": 1.3, "zh": 1.0}  # plan.tokens_per_word.llama (the tiny model is a Llama)
    expected = sum(min(32768, round(i["length"] * rates[language_of(i["prompt"])])) for i in items)
    bench = plan["benchmarks"]["longbench_write"]
    assert (bench["prompts"], bench["counted"], bench["tokens_to_generate"]) == (120, "read", expected)
    judge = plan["judge"]
    assert (judge["calls"], judge["max_calls"], judge["rules"]["max_tokens"]) == (120, 600, 1024)
    cost = (judge["input_tokens"] * 5.0 + judge["output_tokens"] * 15.0) / 1e6
    assert judge["cost_usd"] == pytest.approx(cost, abs=0.01) and judge["output_tokens"] == 120 * 600
    assert plan["sweep"]["params"]["model"].startswith("longwriter_glm4_9b,")


def test_offline_plan_without_the_benchmark_file_uses_the_official_counts(tmp_path):
    cfg = compose_lw("experiment=longbench_write_table", "model=tiny", "task=eval", f"cache_dir={tmp_path}",
                     "eval.longbench_write.limit=60")
    plan = build_eval_plan(cfg)
    bench = plan["benchmarks"]["longbench_write"]
    official = OFFICIAL_LONGBENCH_WRITE
    assert bench["counted"] == "official counts" and bench["prompts"] == 60
    assert bench["tokens_to_generate"] == round(0.5 * (official["en"]["required_words"] * 1.3
                                                       + official["zh"]["required_words"] * 1.0))
    assert any("not local" in a for a in plan["assumptions"])
