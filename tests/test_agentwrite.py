"""task=agentwrite: the outline parser, the prompts, the filters, server faults, bad input, and the task
end to end through `python -m lw`, killed with SIGKILL and resumed."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from lw.data.outline import Step, clean_paragraph, parse_outline
from lw.errors import Incomplete
from lw.jsonl import read_resumable
from lw.tasks.agentwrite import TASK as AGENTWRITE
from lw.tasks.agentwrite import (
    Dropped,
    answer_drop,
    count_drop,
    count_written,
    new_stats,
    outline_drop,
    outline_prompt,
    read_instructions,
    sha256,
    write_prompt,
)
from lw.testing.openai_server import OpenAIServer, Reply, user_text
from lw.tracking import Tracker

from helpers import compose_lw, run_lw, run_task

# --- the outline parser ------------------------------------------------------------------------------

PLANS = [
    ("official format",
     "Paragraph 1 - Main Point: Introduce the river and its 1990s floods - Word Count: 400 words\n"
     "Paragraph 2 - Main Point: The rebuilding of the town - Word Count: 1,200 words",
     [(400, "Introduce the river and its 1990s floods"), (1200, "The rebuilding of the town")]),
    ("numbered, counts in brackets, triple newline",
     "1. Opening scene at the harbour (300 words)\n2. The storm arrives (500 words)\n\n\n3. Aftermath (200 words)\n",
     [(300, "Opening scene at the harbour"), (500, "The storm arrives"), (200, "Aftermath")]),
    ("Chinese",
     "第1段 - 主要内容：介绍长城的历史 - 字数：400字\n\n第2段 - 主要内容：描写长城的风景 - 字数：约600字",
     [(400, "介绍长城的历史"), (600, "描写长城的风景")]),
    ("Chinese numbering 1、 and full-width brackets",
     "1、引言（约300字）\n2、正文（800字）", [(300, "引言"), (800, "正文")]),
    ("bullets after a preamble",
     "Here is the plan:\n- Intro to tea, 300 words\n* Growing regions - 400 words\n• Brewing - Word Count: 250",
     [(300, "Intro to tea"), (400, "Growing regions"), (250, "Brewing")]),
    ("numbering variants and a total line",
     "1) History (300 words)\n(2) Present - 400 words\nStep 3: Future - Word Count: 500 words\nTotal: 1200 words",
     [(300, "History"), (400, "Present"), (500, "Future")]),
    ("label on its own line, fields below",
     "Paragraph 1\n- Main Point: Intro\n- Word Count: 300 words\n\nParagraph 2\n- Main Point: Body\n- Word Count: 700 words",
     [(300, "Intro"), (700, "Body")]),
    ("a line without a count",
     "Paragraph 1 - Main Point: Intro\nParagraph 2 - Main Point: Body - Word Count: 500 words",
     [(None, "Intro"), (500, "Body")]),
    ("bold labels and a range (upper end)",
     "**Paragraph 1** - Main Point: Intro - Word Count: 300-400 words", [(400, "Intro")]),
    ("a titled plan: the title's count is no step",
     "Plan for the essay (900 words):\n1. Rivers - 400 words\n2. Lakes - 500 words", [(400, "Rivers"), (500, "Lakes")]),
    ("unnumbered lines with counts", "Intro: why tea matters, 300 words\nHistory of tea, 500 words\nThanks for asking!",
     [(300, "Intro: why tea matters"), (500, "History of tea")]),
    ("a count inside the point: the last one is the step's",
     "1. The 300-word limit of early telegrams (400 words)\n2. Letters (250 words)",
     [(400, "The 300-word limit of early telegrams"), (250, "Letters")]),
    ("a refusal: no plan line", "I cannot help with that.", []),
    ("empty", "\n\n\n", []),
    ("broken: a separator row and markdown",
     "---\nParagraph 1 - Main Point: A - Word Count: 200 words\n---\nParagraph 2 - Main Point: B - Word Count: 250 words",
     [(200, "A"), (250, "B")]),
]


@pytest.mark.parametrize("name, text, expected", PLANS, ids=[p[0] for p in PLANS])
def test_parse_outline(name, text, expected):
    steps = parse_outline(text)
    assert [(s.words, s.point) for s in steps] == expected
    assert all(s.text.strip() for s in steps)  # no empty steps


@pytest.mark.parametrize("text, clean", [
    ("Paragraph 3: The river rose.", "The river rose."),
    ("Paragraph 3 - The river rose.", "The river rose."),
    ("第三段\n长城很长。", "长城很长。"),
    ("第3段：长城很长。", "长城很长。"),
    ("**Paragraph 2**\n\nText here.", "Text here."),
    ("Paragraph 1 - Main Point: X - Word Count: 300 words\nThe real text.", "The real text."),
    ("Paragraphs are nice.", "Paragraphs are nice."),
    ("Paragraph 2:", ""),
])
def test_step_labels_are_stripped(text, clean):
    assert clean_paragraph(text) == clean


def test_prompts_hold_instruction_outline_text_and_step():
    inst, plan = "Write about rivers.", "Paragraph 1 - Main Point: A - Word Count: 200 words\nParagraph 2 - Main Point: B"
    p = outline_prompt(inst)
    assert inst in p and "Word Count" in p and "$" not in p
    assert "字数" in outline_prompt("写一篇文章")
    step = Step(text="Paragraph 2 - Main Point: B", point="B", words=None)
    w = write_prompt(inst, plan, ["First paragraph.", "Second one."], step)
    assert inst in w and plan in w and "First paragraph.\n\nSecond one." in w and w.count(step.text) >= 2
    assert "nothing yet" in write_prompt(inst, plan, [], step)
    custom = write_prompt(inst, "plan with $STEP$ inside", [], step, template="$INST$|$PLAN$|$TEXT$|$STEP$")
    assert custom.endswith("|Paragraph 2 - Main Point: B") and "plan with $STEP$ inside" in custom


# --- a scripted writer --------------------------------------------------------------------------------

def is_plan(text):
    return "needs a plan" in text or "写作计划之前" in text or "需要先做一份写作计划" in text


def plan_of(n, words=20, zh=False):
    if zh:
        return "\n".join(f"第{i}段 - 主要内容：第{i}部分 - 字数：{words}字" for i in range(1, n + 1))
    return "\n\n".join(f"Paragraph {i} - Main Point: part {i} - Word Count: {words} words" for i in range(1, n + 1))


def current_step(text):
    """The step line of a write prompt (the line after its 'Write the next paragraph' sentence)."""
    marker = "Write the next paragraph only" if "Write the next paragraph only" in text else "现在只写下一段"
    return text.split(marker, 1)[1].split("\n")[1]


def paragraph_for(text):
    step = current_step(text)
    number = int(re.search(r"(?:Paragraph |第)(\d+)", step).group(1))
    words = int(re.search(r"(\d+)\s*(?:words|字)", step).group(1)) if re.search(r"\d+\s*(?:words|字)", step) else 10
    return f"Paragraph {number}: " + " ".join(["word"] * words)


def writer(body, attempt):
    """Plans of N lines (N from 'STEPS=N' in the instruction, default 3) and paragraphs of the asked count."""
    text = user_text(body)
    if is_plan(text):
        n = int(re.search(r"STEPS=(\d+)", text).group(1)) if "STEPS=" in text else 3
        return Reply(plan_of(n, zh="长城" in text))
    return Reply(paragraph_for(text))


def instructions_file(tmp_path, rows, name="instructions.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def cfg_for(server, path, *overrides):
    return compose_lw("task=agentwrite", f"agentwrite.instructions={path}", "generation=openai",
                      f"generation.base_url={server.base_url}", "generation.model=m", "generation.api_key_env=null",
                      "generation.retries=2", "generation.timeout=5", *overrides)


# --- the task through `python -m lw` --------------------------------------------------------------------

@pytest.mark.slow
def test_agentwrite_end_to_end(tmp_path):
    path = instructions_file(tmp_path, [
        {"id": "rivers", "prompt": "Write about rivers. STEPS=3"},
        {"prompt": "Write about tea. STEPS=2"},
        {"messages": [{"role": "user", "content": "写一篇介绍长城的文章。STEPS=2"}, {"role": "assistant", "content": "x"}]},
    ])
    run_dir = tmp_path / "run"
    with OpenAIServer(writer) as server:
        result = run_lw("task=agentwrite", f"agentwrite.instructions={path}", "generation=openai",
                        f"generation.base_url={server.base_url}", "generation.model=m", "generation.api_key_env=null",
                        "agentwrite.price_input_per_million=2.5", "agentwrite.price_output_per_million=10",
                        f"hydra.run.dir={run_dir}", "logger=none", cwd=tmp_path)
        requests = list(server.requests)
    assert len(requests) == 3 + 3 + 2 + 2
    body = requests[0]["body"]
    assert body["max_tokens"] == 4096 and body["temperature"] == 1.0 and body["model"] == "m"
    assert "authorization" not in requests[0]["headers"]

    data = read_jsonl(run_dir / "agentwrite/data.jsonl")
    assert sorted(r["id"] for r in data) == ["1", "2", "rivers"]
    by_id = {r["id"]: r for r in data}
    rivers = by_id["rivers"]["messages"]
    assert rivers[0] == {"role": "user", "content": "Write about rivers. STEPS=3"} and rivers[1]["role"] == "assistant"
    assert rivers[1]["content"] == "\n\n".join([" ".join(["word"] * 20)] * 3)  # labels stripped
    assert "字数" in user_text(next(r["body"] for r in requests if "长城" in user_text(r["body"])))  # Chinese prompt
    from collections import Counter

    from lw.data.sources import clean_rows
    from lw.data.sources import read_jsonl as read_training_rows

    trainable = list(clean_rows(read_training_rows(run_dir / "agentwrite/data.jsonl"), "auto", "error", Counter()))
    assert len(trainable) == 3  # what `data=jsonl data.path=...` reads, every row accepted

    steps = read_jsonl(run_dir / "agentwrite/steps.jsonl")
    assert len(steps) == 10 and {s["key"] for s in steps} >= {"rivers:0", "rivers:3", "2:2"}
    for s in steps:
        assert set(s) == {"key", "instruction_id", "step", "prompt_sha256", "text", "usage", "seconds"}
        assert s["usage"]["prompt_tokens"] > 0 and s["usage"]["completion_tokens"] > 0
    # The write prompts: instruction, whole plan, text so far, the current step.
    asked = {sha256(user_text(r["body"])): user_text(r["body"]) for r in requests}
    plan = next(s["text"] for s in steps if s["key"] == "rivers:0")
    third = asked[next(s["prompt_sha256"] for s in steps if s["key"] == "rivers:3")]
    assert "Write about rivers. STEPS=3" in third and plan.strip() in third
    assert "\n\n".join([" ".join(["word"] * 20)] * 2) in third and current_step(third).startswith("Paragraph 3 -")

    stats = json.loads((run_dir / "agentwrite/stats.json").read_text())
    assert stats["instructions"] == stats["written"] == stats["finished"] == 3
    assert all(stats[f"dropped_{r}"] == 0 for r in ("failed_step", "too_short", "unparseable_outline"))
    assert stats["tokens_in"] == sum(s["usage"]["prompt_tokens"] for s in steps)
    assert stats["tokens_out"] == sum(s["usage"]["completion_tokens"] for s in steps)
    assert stats["estimated_cost"] == pytest.approx(stats["tokens_in"] * 2.5e-6 + stats["tokens_out"] * 1e-5, abs=1e-6)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["agentwrite/written"] == 3 and metrics["agentwrite/tokens_out"] == stats["tokens_out"]
    assert "agentwrite" in result.stderr  # the progress bar


@pytest.mark.slow
def test_killed_with_sigkill_and_resumed(tmp_path):
    """A SIGKILL mid-run, then the same command: no finished call is asked again, no instruction twice."""
    path = instructions_file(tmp_path, [{"id": f"q{i}", "prompt": f"Write about topic {i}. STEPS=4"} for i in range(5)])
    run_dir = tmp_path / "run"

    def slow(body, attempt):
        reply = writer(body, attempt)
        reply.delay = 0.3
        return reply

    command = [sys.executable, "-m", "lw", "task=agentwrite", f"agentwrite.instructions={path}", "generation=openai",
               "generation.model=m", "generation.api_key_env=null", "generation.concurrency=2",
               f"hydra.run.dir={run_dir}", "logger=none"]
    steps_path = run_dir / "agentwrite/steps.jsonl"
    with OpenAIServer(slow) as server:
        command.insert(6, f"generation.base_url={server.base_url}")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and process.poll() is None:
            if server.count() >= 7 and steps_path.exists() and len(steps_path.read_text().splitlines()) >= 5:
                break
            time.sleep(0.05)
        assert process.poll() is None, "the run ended before it could be killed"
        process.send_signal(signal.SIGKILL)
        process.wait()
        # As if the kill had landed while a line was being written.
        with open(steps_path, "a") as f:
            f.write('{"key": "q4:0", "instruction_id": "q4", "step": 0, "prompt_sha')
        finished = [json.loads(line) for line in steps_path.read_text().splitlines()[:-1]]
        before = server.count()
        assert 5 <= len(finished) < 25
        run_lw(*command[3:], cwd=tmp_path)
        again = [sha256(user_text(r["body"])) for r in server.requests[before:]]
    assert not {s["prompt_sha256"] for s in finished} & set(again)  # no finished call asked again
    assert len(again) == 25 - len(finished)
    data = read_jsonl(run_dir / "agentwrite/data.jsonl")
    assert sorted(r["id"] for r in data) == [f"q{i}" for i in range(5)]  # each once
    steps = read_jsonl(steps_path)
    assert len(steps) == len({s["key"] for s in steps}) == 25
    stats = json.loads((run_dir / "agentwrite/stats.json").read_text())
    assert stats["written"] == 5 and stats["calls"] == 25 - len(finished) and stats["calls_reused"] >= 1

    with OpenAIServer(writer) as server:  # a third run: nothing left to ask
        run_lw(*[c if not c.startswith("generation.base_url=") else f"generation.base_url={server.base_url}"
                 for c in command[3:]], cwd=tmp_path)
        assert server.count() == 0
    assert len(read_jsonl(run_dir / "agentwrite/data.jsonl")) == 5


# --- filters and faults, in process ------------------------------------------------------------------------

def filtering_writer(body, attempt):
    text = user_text(body)
    if is_plan(text):
        if "UNPARSEABLE" in text:
            return Reply("Sorry, I would rather write the whole essay at once.")
        if "NOCOUNT" in text:
            return Reply("Paragraph 1 - Main Point: a\nParagraph 2 - Main Point: b - Word Count: 20 words")
        return Reply(plan_of(5 if "MANY" in text else 2))
    if "SHORT" in text:
        return Reply("Too short.")
    if "EMPTY" in text and "Paragraph 2 -" in current_step(text):
        return Reply("Paragraph 2:")
    return Reply(paragraph_for(text))


FILTERED = [{"id": "ok", "prompt": "Write well."}, {"id": "many", "prompt": "Write MANY."},
            {"id": "short", "prompt": "Write SHORT."}, {"id": "empty", "prompt": "Write EMPTY."},
            {"id": "nocount", "prompt": "Write NOCOUNT."}, {"id": "unparseable", "prompt": "Write UNPARSEABLE."}]


@pytest.mark.slow
def test_filters_keep(tmp_path):
    path = instructions_file(tmp_path, FILTERED)
    with OpenAIServer(filtering_writer) as server:
        metrics = run_task(AGENTWRITE, cfg_for(server, path, "agentwrite.max_steps=3"), tmp_path / "run", Tracker())
    ids = [r["id"] for r in read_jsonl(tmp_path / "run/agentwrite/data.jsonl")]
    assert sorted(ids) == ["nocount", "ok"]
    m = {k.split("/", 1)[1]: v for k, v in metrics.items()}
    assert (m["dropped_too_many_steps"], m["dropped_too_short"], m["dropped_empty_paragraph"],
            m["dropped_unparseable_outline"], m["dropped_missing_count"], m["dropped_failed_step"]) == (1, 1, 1, 1, 0, 0)
    assert m["outline_lines_without_count"] == 1 and m["written"] == 2 and m["finished"] == 6
    stats = json.loads((tmp_path / "run/agentwrite/stats.json").read_text())
    assert {d["id"]: d["reason"] for d in stats["drops"]} == {
        "many": "too_many_steps", "short": "too_short", "empty": "empty_paragraph", "unparseable": "unparseable_outline"}


@pytest.mark.slow
def test_filters_drop_missing_count_and_skip_empty(tmp_path):
    path = instructions_file(tmp_path, FILTERED)
    with OpenAIServer(filtering_writer) as server:
        metrics = run_task(AGENTWRITE, cfg_for(server, path, "agentwrite.missing_count=drop", "agentwrite.empty_paragraph=skip",
                                         "agentwrite.min_length_ratio=0.4"), tmp_path / "run", Tracker())
    data = {r["id"]: r for r in read_jsonl(tmp_path / "run/agentwrite/data.jsonl")}
    assert sorted(data) == ["empty", "many", "ok"]
    assert data["empty"]["messages"][1]["content"] == " ".join(["word"] * 20)  # the empty paragraph skipped
    assert metrics["agentwrite/dropped_missing_count"] == 1 and metrics["agentwrite/outline_lines_without_count"] == 1
    assert metrics["agentwrite/dropped_empty_paragraph"] == 0


@pytest.mark.slow
def test_server_faults_are_retried_or_counted(tmp_path):
    seen = {}  # (instruction marker, step prompt) -> request times

    def faulty(body, attempt):
        text = user_text(body)
        marker = re.search(r"Topic (\w+)", text).group(1)
        seen.setdefault(text, []).append(time.time())
        plan = is_plan(text)
        if marker == "RATELIMIT" and plan and attempt == 1:
            return Reply(status=429, headers={"Retry-After": "1"})
        if marker == "FLAKY" and not plan and attempt == 1:
            return Reply(status=500)
        if marker == "SLOW" and not plan and attempt == 1:
            return Reply(paragraph_for(text), delay=2.0)  # past generation.timeout=1
        if marker == "DROPPED" and plan and attempt == 1:
            return Reply(drop=True)
        if marker == "MALFORMED" and plan:
            return Reply("{'plan': None")
        if marker == "DEAD" and not plan and "Paragraph 2 -" in current_step(text):
            return Reply(status=503)
        return writer(body, attempt)

    markers = ["RATELIMIT", "FLAKY", "SLOW", "DROPPED", "MALFORMED", "DEAD"]
    path = instructions_file(tmp_path, [{"id": m.lower(), "prompt": f"Topic {m} STEPS=2"} for m in markers])
    with OpenAIServer(faulty) as server:
        # The run is not done while an instruction failed: it ends Incomplete, with its metrics.
        with pytest.raises(Incomplete, match=r"1 of 6 instructions had a call that failed .*HTTP 503") as ended:
            run_task(AGENTWRITE, cfg_for(server, path, "generation.timeout=1", "generation.concurrency=6"),
                           tmp_path / "run", Tracker())
        metrics = ended.value.metrics
    ids = sorted(r["id"] for r in read_jsonl(tmp_path / "run/agentwrite/data.jsonl"))
    assert ids == ["dropped", "flaky", "ratelimit", "slow"]
    m = {k.split("/", 1)[1]: v for k, v in metrics.items()}
    assert m["dropped_failed_step"] == 1 and m["dropped_unparseable_outline"] == 1 and m["written"] == 4
    assert m["finished"] == 5  # all but the one whose call failed for good
    ratelimited = next(times for text, times in seen.items() if "RATELIMIT" in text and is_plan(text))
    assert len(ratelimited) == 2 and ratelimited[1] - ratelimited[0] >= 0.95  # Retry-After: 1 honoured
    dead = [times for text, times in seen.items() if "DEAD" in text and not is_plan(text)]
    assert sorted(len(t) for t in dead) == [1, 3]  # paragraph 2 asked 1 + generation.retries times
    steps = read_jsonl(tmp_path / "run/agentwrite/steps.jsonl")
    assert sorted(s["key"] for s in steps if s["instruction_id"] == "dead") == ["dead:0", "dead:1"]  # no failure text
    stats = json.loads((tmp_path / "run/agentwrite/stats.json").read_text())
    dead_drop = next(d for d in stats["drops"] if d["id"] == "dead")
    assert dead_drop["reason"] == "failed_step" and "HTTP 503" in dead_drop["detail"]


# --- bad input and settings --------------------------------------------------------------------------------

@pytest.mark.parametrize("line, message", [
    ('{"text": "Write"}', "instructions.jsonl:2: missing field 'prompt'"),
    ('{"prompt": "  "}', "instructions.jsonl:2: field 'prompt' must hold a non-empty instruction"),
    ('{"prompt": 3}', "instructions.jsonl:2: field 'prompt' must hold a non-empty instruction"),
    ('{"messages": [{"role": "user", "content": ""}]}', "instructions.jsonl:2: field 'messages' must hold a non-empty"),
    ('{"prompt": "b", "id": "a"}', "instructions.jsonl:2: duplicate id 'a' (first at line 1)"),
    ('{"prompt": "b", "id": "a:1"}', "instructions.jsonl:2: field 'id' must be"),
    ('{"prompt": "b"', "instructions.jsonl:2: not valid JSON"),
])
def test_bad_instructions_name_file_line_and_field(tmp_path, line, message):
    path = tmp_path / "instructions.jsonl"
    path.write_text('{"id": "a", "prompt": "Write"}\n' + line + "\n")
    with pytest.raises(ValueError) as err:
        read_instructions(path)
    assert message in str(err.value)


@pytest.mark.slow
def test_an_outline_of_one_step_under_max_steps_1_is_written(tmp_path):
    path = instructions_file(tmp_path, [{"id": "one", "prompt": "Write a short note STEPS=1."}])
    with OpenAIServer(writer) as server:
        metrics = run_task(AGENTWRITE, cfg_for(server, path, "agentwrite.max_steps=1"), tmp_path / "run", Tracker())
    (row,) = read_jsonl(tmp_path / "run/agentwrite/data.jsonl")
    assert row["id"] == "one" and row["messages"][1]["content"] == " ".join(["word"] * 20)
    assert metrics["agentwrite/written"] == 1


@pytest.mark.slow
def test_bad_settings_fail_before_any_call(tmp_path):
    path = instructions_file(tmp_path, [{"prompt": "Write"}])
    bad_prompt = tmp_path / "write.txt"
    bad_prompt.write_text("Write $STEP$ for $INST$")
    with OpenAIServer(writer) as server:
        for overrides, message in [
            ([f"agentwrite.write_prompt={bad_prompt}"], "lacks the placeholder(s) $PLAN$ $TEXT$"),
            (["agentwrite.max_steps=0"], "agentwrite.max_steps must be at least 1"),
            (["generation.backend=hf"], "task=agentwrite calls an OpenAI-compatible server"),
        ]:
            with pytest.raises(ValueError, match=re.escape(message)):
                run_task(AGENTWRITE, cfg_for(server, path, *overrides), tmp_path / "run", Tracker())
        cfg = cfg_for(server, path)
        cfg.agentwrite.instructions = str(tmp_path / "none.jsonl")
        with pytest.raises(FileNotFoundError, match="agentwrite.instructions: .*none.jsonl does not exist"):
            run_task(AGENTWRITE, cfg, tmp_path / "run", Tracker())
        assert server.count() == 0
    bad = instructions_file(tmp_path, [{"prompt": "Write"}, {"prompt": ""}], name="bad.jsonl")
    result = run_lw("task=agentwrite", f"agentwrite.instructions={bad}", "generation=openai", "generation.model=m",
                    "generation.base_url=http://127.0.0.1:9/v1", "generation.api_key_env=null", "logger=none",
                    f"hydra.run.dir={tmp_path / 'run2'}", cwd=tmp_path, check=False)
    assert result.returncode != 0 and "bad.jsonl:2: field 'prompt' must hold a non-empty instruction" in result.stderr


@pytest.mark.slow
def test_a_changed_prompt_is_asked_again_and_an_unchanged_one_is_reused(tmp_path):
    path = instructions_file(tmp_path, [{"id": "a", "prompt": "Write SHORT. STEPS=2"}])
    run_dir = tmp_path / "run"
    with OpenAIServer(filtering_writer) as server:
        first = run_task(AGENTWRITE, cfg_for(server, path), run_dir, Tracker())
        assert server.count() == 3 and first["agentwrite/dropped_too_short"] == 1
        again = run_task(AGENTWRITE, cfg_for(server, path), run_dir, Tracker())  # the same prompts: every call reused
        assert server.count() == 3 and again["agentwrite/calls_reused"] == 3 and again["agentwrite/dropped_too_short"] == 1
    custom = tmp_path / "write.txt"
    custom.write_text("Instruction: $INST$\nPlan:\n$PLAN$\nSo far:\n$TEXT$\nWrite the next paragraph only, this step:\n$STEP$\n")
    with OpenAIServer(writer) as server:
        metrics = run_task(AGENTWRITE, cfg_for(server, path, f"agentwrite.write_prompt={custom}"), run_dir, Tracker())
        asked = [user_text(r["body"]) for r in server.requests]
    assert len(asked) == 2 and all(a.startswith("Instruction: Write SHORT.") for a in asked)  # the plan reused
    assert metrics["agentwrite/written"] == 1 and metrics["agentwrite/calls_reused"] == 1
    steps = read_jsonl(run_dir / "agentwrite/steps.jsonl")
    assert len(steps) == 5 and len(read_resumable(run_dir / "agentwrite/steps.jsonl", key="key")) == 3  # the last wins


def test_plain_lines_take_an_unnumbered_outline_line_by_line():
    plan = "the river and its bank\nthe bridge over the stream"
    assert parse_outline(plan) == []
    assert [s.point for s in parse_outline(plan, plain_lines=True)] == ["the river and its bank", "the bridge over the stream"]
    assert all(s.words is None for s in parse_outline(plan, plain_lines=True))
    numbered = "1. the river (200 words)\nsome remark"
    assert parse_outline(numbered, plain_lines=True) == parse_outline(numbered)  # a numbered plan is read as one


# --- the filters and the drop accounting, without a server --------------------------------------------

def steps_of(*words):
    return [Step(text=f"Paragraph {i} - Main Point: p{i}", point=f"p{i}", words=w) for i, w in enumerate(words, 1)]


@pytest.mark.parametrize("steps, max_steps, missing_count, reason", [
    (steps_of(), 50, "keep", "unparseable_outline"),
    (steps_of(100, 100, 100), 2, "keep", "too_many_steps"),
    (steps_of(100, 100), 2, "keep", None),  # exactly max_steps is written
    (steps_of(100, None), 50, "drop", "missing_count"),
    (steps_of(100, None), 50, "keep", None),
    (steps_of(None, None, None), 2, "drop", "too_many_steps"),  # too many is said before a missing count
])
def test_outline_filter(steps, max_steps, missing_count, reason):
    dropped = outline_drop(steps, "the outline", max_steps, missing_count)
    assert (dropped.reason if dropped else None) == reason


@pytest.mark.parametrize("paragraphs, words, ratio, reason", [
    ([], (10,), 0.5, "too_short"),  # every paragraph skipped: nothing to write out
    (["one two three four"], (10,), 0.5, "too_short"),  # 4 words < 0.5 x 10
    (["one two three four five"], (10,), 0.5, None),  # exactly half is enough
    (["one", "two"], (None, None), 0.5, None),  # no counts in the outline: any answer passes
    (["一二三"], (3,), 1.0, None),  # Chinese characters count as words
])
def test_answer_filter(paragraphs, words, ratio, reason):
    dropped = answer_drop(paragraphs, steps_of(*words), ratio)
    assert (dropped.reason if dropped else None) == reason


def test_drop_accounting():
    stats, failures = new_stats(4), []
    count_written(stats)
    count_drop(stats, failures, "a", Dropped("too_short", "3 words < 0.5 x the outline's 10"))
    count_drop(stats, failures, "b", Dropped("failed_step", "step 2: HTTP 500 " + "x" * 600))
    assert (stats["written"], stats["finished"], stats["dropped_too_short"], stats["dropped_failed_step"]) == (1, 2, 1, 1)
    # a failed call leaves its instruction unfinished: the rerun asks again
    assert [f["id"] for f in failures] == ["a", "b"] and failures[1]["reason"] == "failed_step"
    assert len(failures[1]["detail"]) == 500
    assert stats["instructions"] == 4 and stats["outline_lines_without_count"] == 0


def test_a_mixed_prompt_gets_the_chinese_outline_prompt():
    """Any CJK character makes an instruction Chinese (lw.words.language_of, the benchmark's split)."""
    assert "字数" in outline_prompt("Write about the 长城 in 800 words")
    assert "Word Count" in outline_prompt("Write about the Great Wall in 800 words")
