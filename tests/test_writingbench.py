"""WritingBench's length subset: its files, its criteria judge's reply rule, the official
aggregation fixed by a hand-computed case, lw's own length requirement, and the tiny model through
`lw task=eval eval=writingbench_length judge=writingbench` against a loopback judge."""

import csv
import hashlib
import json
import time

import pytest
from omegaconf import OmegaConf

from lw.config import BenchmarkConfig
from lw.errors import MissingFile, UserError
from lw.eval.benchmarks import load_items
from lw.eval.length_requirement import parse_requirement, requirement_score
from lw.eval.writingbench import FILES, judge_prompts, read_judge_prompts
from lw.eval.writingbench_judge import CriteriaJudge, parse_criterion_reply, response_to_judge
from lw.eval.writingbench_score import query_records, writingbench_metrics
from lw.report.compare import main as compare_main
from lw.testing.benchmark_files import write_writingbench_files, writingbench_rows
from lw.testing.openai_server import OpenAIServer, Reply, user_text
from lw.words import length_score

from helpers import compose_lw


def bench(data_dir, **kw):
    return OmegaConf.structured(BenchmarkConfig(kind="writingbench_length", data_dir=str(data_dir), **kw))


# --- the judge's reply rule ----------------------------------------------------------------------

def official(score, reason="concrete"):
    return json.dumps({"score": score, "reason": reason})


@pytest.mark.parametrize("reply, score", [
    (official(7), 7),
    ("```json\n" + official(3) + "\n```", 3),  # the official fence stripping
    ("json" + official(10), 10),
    ("\n```json\n" + official(1) + "\n```\n", 1),  # surrounding whitespace, which the official strip keeps
])
def test_a_reply_is_json_with_an_integer_score_and_a_reason(reply, score):
    assert parse_criterion_reply(reply) == {"score": score, "reason": "concrete"}


@pytest.mark.parametrize("reply, why", [
    (official(11), "integer from 1 to 10, got 11"),
    (official(0), "got 0"),
    (official(7.0), "got 7.0"),  # the official check takes 7.0 (and true) as a score
    (official(True), "got True"),
    (official("7"), "got '7'"),
    (json.dumps({"score": 7}), "'score' and 'reason'"),
    (json.dumps({"score": 7, "reason": 3}), "reason must be a string"),
    ("The response deserves a 7.", "not JSON"),
    ("Sure! ```json\n" + official(7) + "\n``` Hope this helps.", "not JSON"),
])
def test_other_replies_are_unparseable_with_a_reason(reply, why):
    with pytest.raises(ValueError, match=why.replace("(", r"\(")):
        parse_criterion_reply(reply)


def test_a_python_looking_reply_is_never_evaluated(tmp_path):
    """The official script eval()s a reply that is not JSON; this one would create a file."""
    marker = tmp_path / "evaluated"
    reply = "{'score': [__import__('pathlib').Path(%r).touch(), 7][1], 'reason': 'x'}" % str(marker)
    with pytest.raises(ValueError, match="not JSON"):
        parse_criterion_reply(reply)
    assert not marker.exists()


def test_the_judge_reads_the_response_after_the_thinking():
    assert response_to_judge("<think>plan</think>\n\nThe essay.") == "The essay."
    assert response_to_judge("No thinking </think> here.") == "No thinking </think> here."


# --- the files and prompt.py ---------------------------------------------------------------------

def test_queries_carry_their_criteria_and_length_criteria(tmp_path):
    items = load_items(bench(write_writingbench_files(tmp_path)), str(tmp_path / "cache"))
    assert [i["id"] for i in items] == [str(100 + k) for k in range(6)]
    assert [i["language"] for i in items] == ["en", "en", "zh", "en", "zh", "en"]
    assert len(items[0]["criteria"]) == 5 and items[0]["length_criteria"] == ["Length_0"]
    assert items[1]["length_criteria"] == ["Detail_1", "Length_1"]


def test_prompt_py_is_parsed_as_data_and_never_run(tmp_path):
    data = write_writingbench_files(tmp_path / "data")
    system, template = judge_prompts(bench(data), str(tmp_path))
    assert system == "You grade writing." and template.startswith("Grade the Response")
    marker = tmp_path / "ran"
    bad = tmp_path / "prompt.py"
    bad.write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\nevaluate_system = 'x'\n"
                   "evaluate_prompt = ''.join(['{query}', '{response}', '{criteria}'])\n")
    with pytest.raises(UserError, match="no string literal assigned to evaluate_prompt"):
        read_judge_prompts(bad)
    assert not marker.exists()
    bad.write_text("evaluate_system = 'x'\nevaluate_prompt = '{query} {response}'\n")
    with pytest.raises(UserError, match="must have the fields"):
        read_judge_prompts(bad)


def test_official_prompt_py_gives_the_official_prompts(official_writingbench_dir):
    system, template = read_judge_prompts(official_writingbench_dir / "prompt.py")
    assert system.startswith("You are an expert evaluator") and not system.endswith("\n")
    filled = template.format(query="Q", response="R", criteria=str({"name": "N"}))
    assert "** Criteria **\n```{'name': 'N'}```" in filled and "** Response **\n```R```" in filled
    assert '"score": an integer score between 1 to 10' in filled


def test_the_official_files_are_the_pinned_ones(official_writingbench_dir):
    for name, (_, sha256) in FILES.items():
        assert hashlib.sha256((official_writingbench_dir / name).read_bytes()).hexdigest() == sha256, name
    items = load_items(bench(official_writingbench_dir), "/nonexistent")
    assert len(items) == 222 and sum(i["language"] == "en" for i in items) == 124
    assert all(len(i["criteria"]) == 5 for i in items)
    assert sum(len(i["length_criteria"]) for i in items) == 226  # 218 queries list one, 4 list two


def test_lw_parses_a_length_requirement_in_175_of_the_222_official_queries(official_writingbench_dir):
    items = load_items(bench(official_writingbench_dir), "/nonexistent")
    parsed = [parse_requirement(i["prompt"]) for i in items]
    assert sum(p["parsed"] for p in parsed) == 175
    by_id = dict(zip((i["id"] for i in items), parsed))
    assert (by_id["16"]["kind"], by_id["16"]["low"], by_id["16"]["high"]) == ("range", 2000, 2500)
    assert (by_id["297"]["kind"], by_id["297"]["low"]) == ("at_least", 20000)  # 不少于2万字
    assert (by_id["184"]["kind"], by_id["184"]["low"]) == ("at_least", 6000)  # the total, not each section's


@pytest.mark.parametrize("change, message", [
    (lambda d: (d / "length_subset_C.jsonl").unlink(), "length_subset_C.jsonl does not exist"),
    (lambda d: (d / "length_subset_C.jsonl").write_text(
        json.dumps({"index": 100, "checklist": [{"name": "Nope"}]}) + "\n"), r"length_subset_C.jsonl:1: .*'Nope'"),
    (lambda d: (d / "length_subset_C.jsonl").write_text(
        json.dumps({"index": 100, "checklist": [{"name": "Length_0"}]}) + "\n"), "no length criteria for the queries"),
    (lambda d: (d / "length_subset.jsonl").write_text(json.dumps({"index": 1, "query": "q"}) + "\n"),
     r"length_subset.jsonl:1: field 'checklist'"),
])
def test_bad_files_fail_naming_file_line_and_field(tmp_path, change, message):
    data = write_writingbench_files(tmp_path / "data")
    change(data)
    with pytest.raises((UserError, MissingFile), match=message):
        load_items(bench(data), str(tmp_path))


# --- lw's length requirement ---------------------------------------------------------------------

@pytest.mark.parametrize("query, expected", [
    ("Write an essay with a word count requirement of 2000-2500 words.", ("range", 2000, 2500)),
    ("The length should be between 1,000 and 1,500 words.", ("range", 1000, 1500)),
    ("请写一篇文章，不少于3000字。", ("at_least", 3000, None)),
    ("经营方案正文不少于2万字", ("at_least", 20000, None)),
    ("篇幅3000字以上", ("at_least", 3000, None)),
    ("评语500字以内", ("at_most", None, 500)),
    ("The speech should not exceed 1,800 words.", ("at_most", None, 1800)),
    ("写一篇1500字左右的书评", ("about", 1500, 1500)),
    ("Please write a 2500-word briefing.", ("about", 2500, 2500)),
    ("Each section should be around 2000 words, with the total text exceeding 6000 words.", ("at_least", 6000, None)),
    ("字数在2000～2500字之间", ("range", 2000, 2500)),  # a full-width tilde
    ("Write 3 sections and 2000 words in all.", ("about", 2000, 2000)),
    ("写一篇3000字内容丰富的文章", ("about", 3000, 3000)),
])
def test_length_requirements_are_parsed(query, expected):
    found = parse_requirement(query)
    assert found["parsed"] and (found["kind"], found["low"], found["high"]) == expected


@pytest.mark.parametrize("query", [
    "Write a 10-minute speech for the ceremony.",
    "Write a poem of 12-16 lines.",
    "Each slogan should be 15-20 words.",
    "每条评论控制在150-200字。",
    "The article length needs to increase by 300-500 words.",
])
def test_what_is_not_a_whole_response_length_is_not_parsed(query):
    assert not parse_requirement(query)["parsed"]


def test_the_length_score_is_100_inside_and_s_l_against_the_nearer_bound():
    span = {"low": 200, "high": 300}
    assert requirement_score(span, 250) == requirement_score(span, 200) == requirement_score(span, 300) == 100
    assert requirement_score(span, 100) == length_score(200, 100) == 50
    assert requirement_score(span, 600) == length_score(300, 600)
    assert requirement_score({"low": 100, "high": None}, 10 ** 6) == 100
    assert requirement_score({"low": None, "high": 100}, 1) == 100
    assert requirement_score({"low": 100, "high": 100}, 120) == length_score(100, 120)
    assert requirement_score(span, 0) == 0


# --- the official aggregation, by hand ------------------------------------------------------------

def test_the_official_aggregation_by_hand():
    """Three queries' criterion scores -> R and C as calculate_scores.py computes them."""
    rows, c_rows = writingbench_rows()
    rows = [{"id": str(r["index"]), "prompt": r["query"], "response": "word " * 120, "domain1": r["domain1"],
             "domain2": r["domain2"], "criteria": r["checklist"], "language": "zh" if i in (2, 4) else "en",
             "length_criteria": [c["name"] for c in c_rows[i]["checklist"]]} for i, r in enumerate(rows)][:4]
    scores = {0: (8, 6, 7, 9, 5), 1: (4, 4, 6, 8, 3), 2: (10, 9, 9, 7, 2), 3: (5, 5, 5, 5, None)}
    judgements = [{"id": f"{row['id']}#{c['name']}", "status": "ok" if s is not None else "unparseable", "score": s}
                  for row, (k, values) in zip(rows, scores.items()) for c, s in zip(row["criteria"], values)]
    metrics = writingbench_metrics(query_records(rows, judgements), "wb", judgements, skipped=1)
    # Query means 7.0, 5.0, 7.4; query 3 has an unparseable criterion: left out. C lists Length_0,
    # Detail_1 and Length_1, Length_2: (5 + 8 + 3 + 2) / 4 over criteria, not the mean of query means.
    assert metrics["wb/R"] == pytest.approx((7.0 + 5.0 + 7.4) / 3)
    assert metrics["wb/C"] == pytest.approx(18 / 4) and metrics["wb/C_x10"] == pytest.approx(45)
    assert metrics["wb/R_x10"] == pytest.approx(10 * 19.4 / 3)
    assert metrics["wb/en/R"] == pytest.approx(6.0) and metrics["wb/en/C"] == pytest.approx(16 / 3)
    assert metrics["wb/zh/R"] == pytest.approx(7.4) and metrics["wb/zh/C"] == 2
    assert metrics["wb/domain1/literature_arts/R"] == pytest.approx(6.2)
    assert metrics["wb/domain1/education/R"] == 7 and "wb/domain1/finance_business/R" not in metrics
    assert (metrics["wb/queries_scored"], metrics["wb/queries_incomplete"], metrics["wb/judge_unparseable"]) == (3, 1, 1)
    assert metrics["wb/n"] == 4 and metrics["wb/skipped_context"] == 1
    # lw's length of 120 counted words: "120-word" -> 100; 200-300 words -> S_l(200, 120); 不少于150字 ->
    # S_l(150, 120); at least 100 words -> 100.
    assert metrics["wb/lw_length_parsed"] == 4
    assert metrics["wb/lw_S_l"] == pytest.approx((100 + length_score(200, 120) + length_score(150, 120) + 100) / 4)


def test_lw_compare_writes_writingbench_table_beside_longbench(tmp_path):
    rows, c_rows = writingbench_rows()
    rows = [{"id": str(r["index"]), "prompt": r["query"], "response": "word " * 120, "domain1": r["domain1"],
             "domain2": r["domain2"], "criteria": r["checklist"], "language": "zh" if i in (2, 4) else "en",
             "length_criteria": [c["name"] for c in c["checklist"]]} for i, (r, c) in enumerate(zip(rows, c_rows))]
    for run, score in (("sft", 6), ("dpo", 8)):
        judgements = [{"id": f"{row['id']}#{c['name']}", "status": "ok", "score": score}
                      for row in rows for c in row["criteria"]]
        (tmp_path / run).mkdir()
        metrics = writingbench_metrics(query_records(rows, judgements), "writingbench_length", judgements, 0)
        (tmp_path / run / "metrics.json").write_text(json.dumps(metrics))
    compare_main([str(tmp_path), "--benchmark", "writingbench_length"])
    table = (tmp_path / "writingbench_length_table.md").read_text()
    assert "| dpo   |         |    80.0 |    80.0 |" in table and "| sft   |         |    60.0 |    60.0 |" in table
    csv = (tmp_path / "writingbench_length_table.csv").read_text().splitlines()
    assert csv[0].startswith("run,model,R x10,C x10,en R,en C,zh R,zh C,education R,finance_business R,literature_arts R")
    assert csv[0].endswith("lw S_l,lw parsed,scored,skipped") and csv[1].endswith(",5/6,6/6,0")
    with pytest.raises(SystemExit):
        compare_main([str(tmp_path), "--benchmark", "writingbench_format"])  # no run has it: one line, status 2


def test_the_dry_run_plans_generation_and_one_judge_call_per_criterion(tmp_path):
    from lw.plan.eval import build_eval_plan

    data = write_writingbench_files(tmp_path)
    cfg = compose_lw("task=eval", "eval=writingbench_length", f"eval.writingbench_length.data_dir={data}",
                     "sampling=writingbench", "judge=writingbench")
    plan = build_eval_plan(cfg)
    bench = plan["benchmarks"]["writingbench_length"]
    assert (bench["prompts"], bench["languages"]) == (6, {"en": 4, "zh": 2})
    # Words at each parsed requirement's upper bound (the floors at theirs), the poem at the 16,000-token cap.
    rate = dict(cfg.plan.tokens_per_word.llama)
    expected = sum(round(w * rate[lang]) for w, lang in ((120, "en"), (300, "en"), (150, "zh"), (100, "en"), (120, "zh")))
    assert bench["tokens_to_generate"] == expected + 16000
    assert plan["judge"]["calls"] == 30 and plan["judge"]["max_calls"] == 90


# --- end to end through `lw` ----------------------------------------------------------------------

JUDGE_MODEL = "loopback-judge"
SCORES = {"Relevance": 8, "Structure": 6, "Style": 7, "Detail": 5, "Length": 4}


def criterion_of(body) -> str:
    return user_text(body).split("'name': '", 1)[1].split("'", 1)[0]


class ScriptedJudge:
    """Official JSON, and sometimes not: fenced (read), non-JSON once (asked again), a score of 11
    and a Python-looking dict (both unparseable after 3 attempts). Attempts are counted per
    criterion by the script itself, so a new run starts them afresh."""

    def __init__(self):
        self.attempts = {}

    def __call__(self, body, _):
        name = criterion_of(body)
        attempt = self.attempts[name] = self.attempts.get(name, 0) + 1
        if name == "Structure_1":
            return Reply("```json\n" + official(6) + "\n```", delay=0.2)
        if name == "Style_2":
            return Reply("I would give it a nine." if attempt == 1 else official(9), delay=0.2)
        if name == "Detail_3":
            return Reply(official(11), delay=0.2)
        if name == "Relevance_4":
            return Reply("{'score': [__import__('os').getpid(), 8][1], 'reason': 'eval would run this'}", delay=0.2)
        return Reply(official(SCORES[name.split("_")[0]]), delay=0.2)


ATTEMPTS = {"Style_2": 2, "Detail_3": 3, "Relevance_4": 3}  # the requests each criterion takes; others 1


def data_with_a_query_too_long(tmp_path):
    data = write_writingbench_files(tmp_path / "writingbench")
    long_row = {"index": 999, "domain1": "Education", "domain2": "Notes",
                "query": "Write 100 words about this: " + "river " * 2500,
                "checklist": [{"name": "Length_999", "criteria_description": "length"}]}
    for name in ("length_subset.jsonl", "length_subset_C.jsonl"):
        with open(data / name, "a") as f:
            f.write(json.dumps(long_row) + "\n")
    return data


@pytest.mark.slow
def test_the_tiny_model_through_writingbench_killed_mid_judging_then_finished(tmp_path, tiny_model):
    """`lw` SIGKILLed while judging, then the same command again: no judgement cached before the kill
    is asked again, and the run ends with the official scores computed by hand."""
    from lw.eval.judge import cache_key

    from test_kill_resume import Lw, records

    data = data_with_a_query_too_long(tmp_path)
    run_dir = tmp_path / "run"
    script = ScriptedJudge()
    with OpenAIServer(script) as server:
        lw = Lw(["task=eval", f"model.path={tiny_model}", "eval=writingbench_length",
                 f"eval.writingbench_length.data_dir={data}", "sampling=writingbench", "generation.max_new_tokens=16",
                 "judge=writingbench", f"judge.base_url={server.base_url}", f"judge.model={JUDGE_MODEL}",
                 "judge.concurrency=2", "logger=none", f"hydra.run.dir={run_dir}"], tmp_path)
        cache = tmp_path / "cache" / "judge" / f"writingbench-{JUDGE_MODEL}.jsonl"
        _, kept = lw.kill_once(lambda: cache, lines=8)
        cached = {row["key"]: row for row in records(kept)}
        assert 8 <= len(cached) < 30, "the kill did not land midway"
        time.sleep(0.5)  # the server's handlers take in what the killed client had sent
        before, script.attempts = server.count(), {}
        lw.run()
        sent = [r["body"] for r in server.requests]
    after = [cache_key(JUDGE_MODEL, b["messages"][0]["content"] + "\n\n" + b["messages"][1]["content"])
             for b in sent[before:]]
    print(f"writingbench judging: {len(cached)} of 30 cached at the kill; repeated calls after resume: "
          f"{sum(k in cached for k in after)}")
    assert not set(after) & set(cached)
    missing = {criterion_of(b) for b in sent[before:]}
    assert len(missing) == 30 - len(cached) and len(after) == sum(ATTEMPTS.get(n, 1) for n in missing)
    bench_dir = run_dir / "eval" / "writingbench_length"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # Query means 6.0, 6.0, 6.4 (Style_2's second reply, 9), 6.0; queries 103 and 104 have an
    # unparseable criterion (score 11, a Python dict) and are left out. C: 4, (5 + 4), 4, 4 over 5 criteria.
    assert metrics["writingbench_length/R"] == pytest.approx((6 + 6 + 6.4 + 6) / 4)
    assert metrics["writingbench_length/C"] == pytest.approx(21 / 5)
    assert metrics["writingbench_length/R_x10"] == pytest.approx(61)
    assert metrics["writingbench_length/zh/R"] == pytest.approx(6.4)  # query 104 (Chinese) is incomplete
    assert (metrics["writingbench_length/judge_judged"], metrics["writingbench_length/judge_unparseable"],
            metrics["writingbench_length/judge_failed"]) == (28, 2, 0)
    assert metrics["writingbench_length/queries_incomplete"] == 2
    assert metrics["writingbench_length/skipped_context"] == 1 and metrics["writingbench_length/n"] == 6
    assert metrics["writingbench_length/lw_length_parsed"] == 5  # the poem asks for lines
    assert [json.loads(line)["id"] for line in (bench_dir / "skipped.jsonl").open()] == ["999"]
    system, template = judge_prompts(bench(data), str(tmp_path))
    assert all(b["messages"][0] == {"role": "system", "content": system} for b in sent)
    assert {(b["model"], b["temperature"], b["top_p"], b["max_tokens"]) for b in sent} == {(JUDGE_MODEL, 1.0, 0.95, 2048)}
    predictions = {json.loads(line)["id"]: json.loads(line) for line in (bench_dir / "predictions.jsonl").open()}
    first = predictions["100"]
    criterion = first["criteria"][0]
    assert any(b["messages"][1]["content"] == template.format(query=first["prompt"], response=first["response"],
                                                                criteria=str(criterion)) for b in sent)
    judgements = [json.loads(line) for line in (bench_dir / "judgements.jsonl").open()]
    unparseable = {j["criterion"]: j for j in judgements if j["status"] == "unparseable"}
    assert set(unparseable) == {"Detail_3", "Relevance_4"} and all(j["score"] is None for j in unparseable.values())
    parses = [json.loads(line) for line in (bench_dir / "length_requirements.jsonl").open()]
    assert [p["parsed"] for p in parses] == [True] * 5 + [False]
    results = list(csv.DictReader(open(run_dir / "results.csv")))
    assert [float(r["R"]) for r in results if r["R"]] == [6.0, 6.0, 6.4, 6.0]
    assert results[0]["benchmark"] == "writingbench_length" and float(results[0]["C"]) == 4.0
    compare_main([str(tmp_path), "--benchmark", "writingbench_length"])
    (row,) = csv.DictReader(open(tmp_path / "writingbench_length_table.csv"))
    assert float(row["R x10"]) == pytest.approx(61) and row["scored"] == "4/6" and row["skipped"] == "1"


def test_a_changed_file_upstream_ends_lw_with_one_line(tmp_path, file_server, monkeypatch, capsys):
    """The download (to a loopback server standing in for GitHub) checked against the pinned
    SHA-256: a mismatch keeps nothing and ends `lw` as every user error does, one line and status 2."""
    from lw.errors import end_program
    from lw.eval.download import MIRROR_ENV

    url, www, hits = file_server
    write_writingbench_files(www)  # not the pinned files: every SHA-256 differs
    monkeypatch.setenv(MIRROR_ENV, url)
    with pytest.raises(UserError) as caught:
        load_items(OmegaConf.structured(BenchmarkConfig(kind="writingbench_length")), str(tmp_path / "cache"))
    assert hits == ["/length_subset.jsonl"] and not list((tmp_path / "cache").rglob("*.jsonl"))
    with pytest.raises(SystemExit) as exit_status:
        end_program(caught.value, "lw")
    errors = capsys.readouterr().err.splitlines()
    assert exit_status.value.code == 2 and len(errors) == 1
    assert errors[0].startswith("lw: error: ") and "length_subset.jsonl: SHA-256" in errors[0]
    assert "eval.<name>.data_dir=DIR" in errors[0]


def test_task_score_reads_an_official_responses_file(tmp_path):
    """`{"index", "response"}` per line, as the official generate_response.py writes them."""
    from lw.tasks.score import run
    from lw.tracking import Tracker

    data = write_writingbench_files(tmp_path / "data")
    responses = tmp_path / "responses.jsonl"
    responses.write_text("".join(json.dumps({"index": 100 + k, "response": "word " * 120}) + "\n" for k in (0, 1)))
    cfg = compose_lw("task=score", f"score.predictions={responses}", "score.benchmark=writingbench_length",
                     "eval=writingbench_length", f"eval.writingbench_length.data_dir={data}", "logger=none")
    metrics = run(cfg, tmp_path / "run", Tracker())
    assert metrics["writingbench_length/n"] == 2 and "writingbench_length/R" not in metrics  # no judge
    assert metrics["writingbench_length/lw_S_l"] == pytest.approx((100 + length_score(200, 120)) / 2)
    assert len((tmp_path / "run" / "results.csv").read_text().splitlines()) == 3
    responses.write_text(json.dumps({"index": 7, "response": "x"}) + "\n")
    with pytest.raises(UserError, match=r"responses.jsonl:1: field 'index' '7' is not a query"):
        run(cfg, tmp_path / "run", Tracker())


def test_each_benchmark_gets_only_its_own_judge(tmp_path, bench_data_dir, caplog):
    """judge=writingbench judges WritingBench's criteria and leaves LongBench-Write at S_l; the S_q
    judge leaves WritingBench at lw's length score; each says so."""
    from lw.eval.evaluate import benchmark_judge
    from lw.eval.judge import Judge

    data = write_writingbench_files(tmp_path / "data")
    overrides = ["eval=[longbench_write,writingbench_length]", f"eval.longbench_write.data_dir={bench_data_dir}",
                 f"eval.writingbench_length.data_dir={data}", "judge.api_key_env=null"]
    cfg = compose_lw(*overrides, "judge=writingbench")
    assert isinstance(benchmark_judge(cfg, cfg.eval.writingbench_length), CriteriaJudge)
    assert benchmark_judge(cfg, cfg.eval.longbench_write) is None and "S_l only" in caplog.text
    cfg = compose_lw(*overrides, "judge=openai", "judge.model=m")
    judge = benchmark_judge(cfg, cfg.eval.longbench_write)
    assert isinstance(judge, Judge) and not isinstance(judge, CriteriaJudge)
    assert benchmark_judge(cfg, cfg.eval.writingbench_length) is None and "not computed" in caplog.text
