"""The table of bad inputs and faults in docs/engineering.md, row by row: what the user sees and what
is kept. Every row goes through the real entry point (`python -m lw`) or the real HTTP client
against a real loopback server. (Torn last lines after SIGKILL: tests/test_kill_resume.py.)"""

import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lw import llm
from lw.testing.openai_server import OpenAIServer, Reply, judge_json, user_text

from helpers import run_lw

KEY = "sk-bad-inputs-test-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def user_error(result) -> str:
    """The one line of a user's mistake: exit status 2, no traceback, `lw: error: ...` last."""
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr and "Error executing job" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("lw: error: "), result.stderr[-3000:]
    assert sum(line.startswith("lw: error") for line in lines) == 1
    return lines[-1]


def predictions(path: Path, n: int = 6, **changes) -> Path:
    rows = [{"prompt": f"Write {10 * (i + 1)} words about rivers, item {i}.", "type": "note", "length": 10 * (i + 1),
             "response": " ".join(["river"] * (10 * (i + 1)))} for i in range(n)]
    for i, row in changes.items():
        rows[int(i.strip("_"))] = row
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture
def score_args(tmp_path, bench_data_dir):
    """task=score with the loopback judge: the command line but the judge's URL."""
    def args(base_url, *more, preds=None):
        preds = preds or predictions(tmp_path / "preds.jsonl")
        return ("task=score", f"score.predictions={preds}", "judge=openai", f"judge.base_url={base_url}",
                "judge.model=loopback-judge", "judge.api_key_env=LW_BAD_INPUTS_KEY", "judge.timeout=5",
                "eval=longbench_write", f"eval.longbench_write.data_dir={bench_data_dir}", "logger=none",
                f"hydra.run.dir={tmp_path / 'run'}", f"cache_dir={tmp_path / 'cache'}", *more)
    return args


def run(*overrides, cwd, env=None, **kw):
    return run_lw(*overrides, cwd=cwd, check=False, env={"LW_BAD_INPUTS_KEY": KEY, **(env or {})}, **kw)


def judge_ok(body, attempt):
    return Reply(judge_json(4))


# --- files -----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_malformed_jsonl_line_is_named_by_file_and_line(tmp_path, score_args):
    preds = predictions(tmp_path / "preds.jsonl", _2='{"prompt": "Write", "length": 5,')
    line = user_error(run(*score_args("http://127.0.0.1:9/v1", preds=preds), cwd=tmp_path))
    assert f"{preds}:3: not valid JSON" in line
    assert not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.slow
def test_a_missing_field_is_named_with_its_line(tmp_path, score_args):
    preds = predictions(tmp_path / "preds.jsonl", _1={"prompt": "Write 20 words.", "length": 20})
    line = user_error(run(*score_args("http://127.0.0.1:9/v1", preds=preds), cwd=tmp_path))
    assert line == f"lw: error: {preds}:2: missing field 'response'"


@pytest.mark.slow
def test_an_empty_response_is_scored_zero_and_said(tmp_path, score_args):
    preds = predictions(tmp_path / "preds.jsonl", n=3, _0={"prompt": "Write 10 words.", "length": 10, "response": ""})
    result = run(*score_args("http://127.0.0.1:9/v1", preds=preds)[:2], "logger=none",
                 f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "1 empty responses (they score S_l = 0)" in result.stdout + result.stderr
    rows = (tmp_path / "run" / "results.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[1].endswith(",10,0,0.0,,")  # kept, and scored 0 (no R, C: not WritingBench)


@pytest.mark.slow
def test_an_empty_instruction_is_named(tmp_path):
    instructions = tmp_path / "instructions.jsonl"
    instructions.write_text('{"prompt": "Write a story."}\n{"prompt": "  "}\n')
    line = user_error(run("task=agentwrite", f"agentwrite.instructions={instructions}", "generation=openai",
                          "generation.base_url=http://127.0.0.1:9/v1", "generation.model=m",
                          "generation.api_key_env=null", "logger=none", cwd=tmp_path))
    assert f"{instructions}:2: field 'prompt' must hold a non-empty instruction" in line


@pytest.mark.slow
def test_a_benchmark_download_that_fails_says_what_to_do(tmp_path, score_args):
    # No data_dir and an empty cache: the judge template must be downloaded, from a mirror nobody serves.
    mirror = f"http://127.0.0.1:{free_port()}/longwriter"
    args = [a for a in score_args("http://127.0.0.1:9/v1") if not a.startswith("eval.")]
    start = time.perf_counter()
    line = user_error(run(*args, cwd=tmp_path, env={"LW_BENCHMARK_URL": mirror}))
    assert time.perf_counter() - start < 30
    assert f"could not download {mirror}/judge.txt" in line
    assert str(tmp_path / "cache" / "benchmarks") in line  # where it would be cached
    assert "eval.longbench_write.data_dir=DIR" in line and "judge.template=FILE" in line


@pytest.mark.slow
def test_offline_with_a_warm_cache_everything_runs(tmp_path, score_args, bench_data_dir):
    from lw.eval.benchmarks import OFFICIAL_COMMIT

    cache = tmp_path / "cache" / "benchmarks" / f"longwriter-{OFFICIAL_COMMIT[:10]}"
    cache.mkdir(parents=True)
    (cache / "judge.txt").write_bytes((bench_data_dir / "judge.txt").read_bytes())
    args = [a for a in score_args("URL") if not a.startswith("eval.")]
    with OpenAIServer(judge_ok) as server:
        args = [a.replace("URL", server.base_url) for a in args]
        result = run(*args, cwd=tmp_path, env={"LW_BENCHMARK_URL": f"http://127.0.0.1:{free_port()}"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["longbench_write/judge_judged"] == 6


@pytest.mark.slow
def test_an_unknown_hub_id_offline_names_the_cache_and_the_local_alternative(tmp_path):
    line = user_error(run("task=eval", "model.path=nobody/no-such-model", "logger=none", cwd=tmp_path,
                          env={"HF_HUB_OFFLINE": "1"}))
    assert "model.path=nobody/no-such-model: could not load it from the Hugging Face hub" in line
    assert "hub cache is" in line and "set model.path to a local checkpoint directory" in line
    line = user_error(run("task=eval", f"model.path={tmp_path / 'runs/x/model'}", "logger=none", cwd=tmp_path))
    assert "no such directory" in line


@pytest.mark.slow
def test_a_full_disk_on_append_stops_in_one_line_and_keeps_what_was_written(tmp_path):
    limit = 64 * 1024  # bytes any one file may hold: predictions.jsonl outgrows it, config and logs do not

    def limit_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    def long_answer(body, attempt):
        return Reply(" ".join(["river"] * 800))  # 4.8 kB per prediction

    with OpenAIServer(long_answer) as server:
        overrides = ("task=eval", "generation=openai", f"generation.base_url={server.base_url}", "generation.model=m",
                     "generation.api_key_env=null", "generation.concurrency=1", "eval=toy_ruler", "logger=none",
                     "eval.toy_ruler.samples_per_prompt=4", f"hydra.run.dir={tmp_path / 'run'}")
        result = subprocess.run([sys.executable, "-m", "lw", *overrides], cwd=tmp_path, capture_output=True,
                                text=True, timeout=300, preexec_fn=limit_files,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    line = user_error(result)
    out = tmp_path / "run" / "eval" / "toy_ruler" / "predictions.jsonl"
    assert f"cannot write {out}: File too large" in line and "rerun the same command" in line
    kept = out.read_bytes()
    assert 0 < kept.count(b"\n") < len(server.requests)  # the records written before are kept...
    assert len(kept) <= limit


# --- settings --------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("override, expected", [
    ("seed=abc", "lw: error: Error merging override seed=abc: Value 'abc' of type 'str' could not be converted to Integer"),
    ("task=nope", "lw: error: task=nope is not a task; valid tasks: train, prepare, eval, score, dpo_pairs, agentwrite"),
    ("task=scor", "lw: error: task=scor is not a task; did you mean task=score? valid tasks: train, prepare"),
    ("model=nope", "lw: error: In 'config': Could not find 'model/nope'; available options in 'model': glm4_9b, "
                   "glm4_9b_chat, llama3_1_8b, llama3_1_8b_instruct, longwriter_glm4_9b, longwriter_llama3_1_8b, tiny"),
    ("sampling=nope", "lw: error: In 'config': Could not find 'sampling/nope'; available options in 'sampling': lw, "
                      "official, official_glm4, official_llama3_1, official_vllm"),
    ("sed=1", "lw: error: Could not override 'sed'; To append to your config use +sed=1: Key 'sed' not in 'LwConfig'"),
    ("judge.api_key=sk-secret-value", "lw: error: judge.api_key: secrets are never passed as overrides"),
    ("data.max_drop_share=2", "lw: error: data.max_drop_share"),
    ("trainer.kind=ppo", "lw: error: trainer.kind=ppo is not a trainer: the trainers are sft, dpo, grpo"),
    ("trainer.eos_los_weight=2", "lw: error: trainer.eos_los_weight is not an option of trainer=sft; did you mean "
                                 "eos_loss_weight"),
    ("trainer.args.output_dir=x", "lw: error: trainer.args.output_dir: lw sets it; set hydra.run.dir"),
    ("data=pairs", "lw: error: trainer=sft trains on data.source toy or messages or mix, not pairs: give it conversations"),
    ("logger.on_unreachable=retry", "lw: error: Error merging override logger.on_unreachable=retry: Invalid value "
                                    "'retry', expected one of [offline, fail]"),
])
def test_a_bad_setting_is_one_line(tmp_path, override, expected):
    line = user_error(run(override, "logger=none", cwd=tmp_path))
    assert line.startswith(expected), line
    if "secret" in override:
        assert not (tmp_path / "runs").exists()  # refused before Hydra writes anything


@pytest.mark.slow
@pytest.mark.parametrize("task", ["score", "dpo_pairs", "agentwrite"])
def test_dry_run_of_a_task_without_one_is_refused_before_any_work(tmp_path, task):
    result = run(f"task={task}", "dry_run=true", "logger=none", "hydra.run.dir=run", cwd=tmp_path)
    line = user_error(result)
    assert line.startswith(f"lw: error: task={task} has no dry run (dry_run=true plans train, prepare and eval)"), line
    assert "training plan" not in result.stdout.lower() and not (tmp_path / "run" / "plan.json").exists()


def test_no_task_declaration_imports_torch():
    """A mistyped judge or server URL of score or agentwrite must fail in seconds, not after torch's
    imports; and `lw --help`, which reads every task's declaration, stays quick."""
    code = ("import sys, lw.cli, lw.pipeline, lw.tasks; "
            "[lw.tasks.task_of(t) for t in lw.tasks.TASKS]; import lw.eval.judge; "
            "print(sorted(m for m in ('torch', 'transformers', 'trl', 'datasets') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.slow
@pytest.mark.parametrize("overrides, expected", [
    (("task=score", "score.predictions=nope.jsonl"), "lw: error: score.predictions: nope.jsonl does not exist"),
    (("task=agentwrite", "agentwrite.instructions=nope.jsonl", "generation=openai", "generation.model=m",
      "generation.api_key_env=null"), "lw: error: agentwrite.instructions: nope.jsonl does not exist"),
])
def test_a_missing_file_is_a_users_mistake_in_one_line(tmp_path, overrides, expected):
    line = user_error(run(*overrides, "logger=none", cwd=tmp_path))
    assert line == expected


@pytest.mark.slow
def test_hydra_full_error_shows_the_traceback_of_a_users_mistake(tmp_path):
    result = run("task=score", "logger=none", cwd=tmp_path, env={"HYDRA_FULL_ERROR": "1"})
    assert result.returncode != 0 and "Traceback" in result.stderr
    assert "task=score needs score.predictions=FILE" in result.stderr


def test_a_bug_keeps_its_traceback_and_exit_status_1(capsys):
    from lw.cli import end_run

    with pytest.raises(SystemExit) as ended:
        try:
            {}["a bug"]
        except KeyError as err:
            end_run(err, full_error=False)
    err = capsys.readouterr().err
    assert ended.value.code == 1 and "Traceback" in err and "KeyError: 'a bug'" in err and "lw: error" not in err


@pytest.mark.slow
def test_a_missing_api_key_is_named(tmp_path, score_args):
    args = [a for a in score_args("http://127.0.0.1:9/v1") if "api_key_env" not in a]
    line = user_error(run(*args, cwd=tmp_path, env={"OPENAI_API_KEY": ""}))
    assert line == ("lw: error: judge.api_key_env names OPENAI_API_KEY, which is not set in the environment; "
                    "export it, or set judge.api_key_env=null for a server without keys")


# --- servers ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_an_unreachable_judge_fails_in_seconds(tmp_path, score_args):
    url = f"http://127.0.0.1:{free_port()}/v1"
    start = time.perf_counter()
    line = user_error(run(*score_args(url), cwd=tmp_path))
    seconds = time.perf_counter() - start
    print(f"unreachable judge: one-line error after {seconds:.1f} s")
    assert f"judge: {url}/chat/completions: connection refused by 127.0.0.1:" in line
    assert "start the server or fix judge.base_url" in line
    assert not (tmp_path / "run" / "metrics.json").exists()  # nothing reported as done


@pytest.mark.slow
@pytest.mark.parametrize("status, hint", [
    (401, "the server refused the key in $LW_BAD_INPUTS_KEY (judge.api_key_env)"),
    (404, "check judge.base_url (OpenAI-compatible servers answer under /v1"),
    (400, "check judge.model (the name the server serves)"),
])
def test_a_status_no_retry_can_fix_stops_at_once(tmp_path, score_args, status, hint):
    def refuse(body, attempt):
        return Reply(status=status, body=json.dumps({"error": {"message": f"refused for test ({status})"}}))

    with OpenAIServer(refuse) as server:
        line = user_error(run(*score_args(server.base_url), "judge.concurrency=2", cwd=tmp_path))
        assert len(server.requests) <= 2  # the requests in flight, none retried
    assert f"HTTP {status}: refused for test ({status})" in line and hint in line
    assert "rerun the same command" not in line


@pytest.mark.slow
@pytest.mark.parametrize("status", [400, 422])
def test_a_400_or_422_after_the_server_has_answered_fails_that_request_only(tmp_path, score_args, status):
    """Before any answer a 400 or 422 means the model name or a setting is wrong for every request;
    once the server has answered, it is about that one request (a prompt over the context, say)."""
    def refuse_the_last(body, attempt):
        if "item 5." in user_text(body):
            return Reply(status=status, body=json.dumps({"error": {"message": "this prompt is too long"}}))
        return Reply(judge_json(4))

    with OpenAIServer(refuse_the_last) as server:
        result = run(*score_args(server.base_url), "judge.concurrency=1", cwd=tmp_path)
        assert len(server.requests) == 6  # not retried
        assert "item 5." in user_text(server.requests[-1]["body"])  # after five answers
    assert result.returncode == 3, result.stderr[-3000:]
    last = [line for line in result.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("lw: incomplete: longbench_write: 1 of 6 judge requests failed")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["longbench_write/judge_failed"] == 1 and metrics["longbench_write/judge_judged"] == 5


@pytest.mark.slow
def test_a_base_url_without_v1_against_transformers_serve_says_to_add_it(tmp_path, score_args, tiny_model):
    from lw.testing.hf_serve import transformers_serve

    with transformers_serve(tiny_model) as base_url:
        line = user_error(run(*score_args(base_url.removesuffix("/v1")), "judge.api_key_env=null", cwd=tmp_path))
    assert "HTTP 404" in line and "check judge.base_url (OpenAI-compatible servers answer under /v1" in line


@pytest.mark.slow
def test_a_judge_failing_for_some_items_keeps_the_rest_and_exits_3(tmp_path, score_args):
    broken = {"on": True}

    def flaky(body, attempt):
        if broken["on"] and "item 2." in user_text(body):
            return Reply(status=500)
        return Reply(judge_json(4))

    with OpenAIServer(flaky) as server:
        args = score_args(server.base_url, "judge.retries=1")
        result = run(*args, cwd=tmp_path)
        assert result.returncode == 3, result.stderr[-3000:]
        last = [line for line in result.stderr.splitlines() if line.strip()][-1]
        assert last.startswith("lw: incomplete: longbench_write: 1 of 6 judge requests failed")
        assert "rerun the same command" in last and "lw: done" not in result.stdout
        metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
        assert metrics["longbench_write/judge_failed"] == 1 and metrics["longbench_write/judge_judged"] == 5
        assert len(server.requests) == 5 + 2  # the broken one: first try and one retry

        broken["on"] = False  # the server is fixed: the rerun asks only for the failed judgement
        before = len(server.requests)
        result = run(*args, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        assert len(server.requests) - before == 1 and "item 2." in user_text(server.requests[-1]["body"])


@pytest.mark.slow
def test_a_sweep_goes_on_past_a_job_with_failed_items_and_exits_3(tmp_path, bench_data_dir):
    lakes = predictions(tmp_path / "lakes.jsonl")
    lakes.write_text(lakes.read_text().replace("rivers", "lakes"))
    rivers = predictions(tmp_path / "rivers.jsonl")

    def flaky(body, attempt):
        return Reply(status=500) if "lakes, item 2." in user_text(body) else Reply(judge_json(4))

    with OpenAIServer(flaky) as server:
        result = run("-m", f"score.predictions={lakes},{rivers}", "task=score", "judge=openai",
                     f"judge.base_url={server.base_url}", "judge.model=loopback-judge", "judge.api_key_env=null",
                     "judge.retries=0", "eval=longbench_write", f"eval.longbench_write.data_dir={bench_data_dir}",
                     "logger=none", f"hydra.sweep.dir={tmp_path / 'sweep'}", f"cache_dir={tmp_path / 'cache'}",
                     cwd=tmp_path)
    assert result.returncode == 3, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("lw: incomplete")]
    assert len(lines) == 2 and ": longbench_write: 1 of 6 judge requests failed" in lines[0]
    assert lines[1].startswith("lw: incomplete: 1 job(s) of the sweep have items still failed")
    metrics = [json.loads(m.read_text()) for m in (tmp_path / "sweep").glob("*/metrics.json")]
    assert sorted(m["longbench_write/judge_failed"] for m in metrics) == [0, 1]  # both jobs ran


# --- the HTTP client on its own: retries that make a flaky server usable ------------------------------

def ask(server, prompts, timeout=5.0, retries=3):
    endpoint = llm.Endpoint(server.base_url, None, timeout, retries, "judge")
    results, errors = {}, {}

    async def work(client, prompt):
        return await llm.chat(client, endpoint, "m", prompt)

    llm.run_bounded(prompts, work, 4, results.__setitem__, errors.__setitem__)
    return results, errors


@pytest.mark.slow
def test_429_with_retry_after_is_honoured():
    def limited(body, attempt):
        return Reply(status=429, headers={"Retry-After": "1"}) if attempt == 1 else Reply("fine")

    with OpenAIServer(limited) as server:
        start = time.perf_counter()
        results, errors = ask(server, ["a", "b"])
        took = time.perf_counter() - start
        asked = [user_text(r["body"]) for r in server.requests]
    assert results == {"a": "fine", "b": "fine"} and not errors
    assert sorted(asked) == ["a", "a", "b", "b"]
    assert took >= 0.95  # waited the server's 1 s, not the 0.5 s first backoff


@pytest.mark.slow
def test_500_is_retried_with_backoff_then_fails_for_that_item_only():
    def broken(body, attempt):
        return Reply(status=500, body='{"error": {"message": "boom"}}') if "bad" in user_text(body) else Reply("fine")

    with OpenAIServer(broken) as server:
        start = time.perf_counter()
        results, errors = ask(server, ["good", "bad"], retries=2)
        took = time.perf_counter() - start
    assert results == {"good": "fine"}
    assert "HTTP 500: boom (after 2 retries; judge.retries)" in str(errors["bad"])
    assert took >= 0.5 * 0.75 + 1.0 * 0.75  # the backoff waits, jittered
    assert sum("bad" in user_text(r["body"]) for r in server.requests) == 3


@pytest.mark.slow
def test_a_timeout_is_said_and_retried():
    def slow_once(body, attempt):
        return Reply("late", delay=1.5) if attempt == 1 else Reply("fine")

    with OpenAIServer(slow_once) as server:
        results, errors = ask(server, ["a"], timeout=0.5, retries=1)
        assert results == {"a": "fine"} and len(server.requests) == 2
        results, errors = ask(server, ["b"], timeout=0.5, retries=0)  # b's first try is slow: no retry left
    assert "no answer within 0.5 s (judge.timeout)" in str(errors["b"])


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["drop", "cut"])
def test_a_connection_dropped_before_or_mid_body_is_retried(fault):
    def faulty(body, attempt):
        return Reply("x" * 5000, **{fault: True}) if attempt == 1 else Reply("fine")

    with OpenAIServer(faulty) as server:
        results, errors = ask(server, ["a", "b"], retries=1)
        assert results == {"a": "fine", "b": "fine"} and not errors
        results, errors = ask(server, ["c"], retries=0)
    assert "the connection dropped before the answer was complete" in str(errors["c"])


@pytest.mark.slow
def test_a_server_that_stops_midway_is_given_up_on_not_waited_for(monkeypatch):
    monkeypatch.setattr(llm, "GIVE_UP_AFTER", 1.0)
    server = OpenAIServer(lambda body, attempt: Reply("fine", delay=0.05))
    with server:
        endpoint = llm.Endpoint(server.base_url, None, 5.0, 8, "judge")
        prompts = [f"p{i}" for i in range(40)]
        results, errors = {}, {}

        async def work(client, prompt):
            if prompt == "p8":
                server.httpd.shutdown()
                server.httpd.server_close()  # nothing listens any more: connections are refused
            return await llm.chat(client, endpoint, "m", prompt)

        start = time.perf_counter()
        llm.run_bounded(prompts, work, 4, results.__setitem__, errors.__setitem__)
        took = time.perf_counter() - start
    assert len(results) >= 4 and len(results) + len(errors) == 40
    assert took < 8  # 8 retries each with backoff would take minutes
    assert any("not sent, the server has refused every connection" in str(e) for e in errors.values())
