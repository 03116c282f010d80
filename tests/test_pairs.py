"""task=dpo_pairs: required lengths, pair selection by hand, bad prompts, and the task end to end."""

import hashlib
import json
import math
import re

import pytest
from omegaconf import OmegaConf

from lw.data.preference import best_is_shared, closeness, combine, select_pair
from lw.data.prompts import read_prompts, required_length, resolve_lengths
from lw.eval.judge import DIMENSIONS
from lw.tasks.dpo_pairs import TASK as DPO_PAIRS
from lw.tasks.dpo_pairs import select_pairs
from lw.testing.openai_server import OpenAIServer, Reply, judge_json, user_text
from lw.tracking import Tracker
from lw.words import count_words, length_score

from helpers import compose_lw, run_lw, run_task

# --- the required length from the instruction ------------------------------------------------------

@pytest.mark.parametrize("text, length", [
    ("Write a 5000-word essay on the history of rivers.", 5000),
    ("Write about 800 words on tea.", 800),
    ("Describe your hometown in 1,200 words.", 1200),
    ("Write a story of at least 300 words.", 300),
    ("10000 words on the Roman Empire", 10000),
    ("Write a 1.5k words blog post", 1500),
    ("The essay should have a word count of 500.", 500),
    ("Write 800-1000 words about cats", 1000),  # a range: its upper end, as LongBench-Write states them
    ("Write a 2000-word essay with a 100 to 200 word summary", 2000),  # the first mention wins
    ("不少于3000字", 3000),
    ("写一篇5000字的文章，介绍长城", 5000),
    ("介绍你的家乡，字数不少于2000", 2000),
    ("约800字，描写秋天", 800),
    ("写一篇1000字", 1000),
    ("字数要求100至200字。", 200),
    ("写一篇三千字的散文", 3000),
    ("写一篇一万五千字的小说", 15000),
    ("写一篇1.5万字的报告", 15000),
    ("写一篇３０００字的作文", 3000),  # full-width digits
    ("写一篇300词的英语作文", 300),
    ("Write a poem", None),
    ("Write about the year 2000", None),
    ("Write 3 paragraphs about rivers", None),
    ("写一首诗", None),
    ("描写一个十字路口", None),  # a numeral before 字 that is not a length
])
def test_required_length(text, length):
    assert required_length(text) == length


def test_required_length_agrees_with_longbench_write(official_bench_dir):
    """The benchmark states each prompt's length: the parser finds it in the text for almost all."""
    rows = [json.loads(line) for line in (official_bench_dir / "longbench_write.jsonl").open()]
    found = [required_length(r["prompt"]) for r in rows]
    assert sum(f == r["length"] for f, r in zip(found, rows)) >= 110
    assert sum(f is None for f in found) <= 6


# --- scores and selection by hand ------------------------------------------------------------------

def test_rules_combine_length_and_quality():
    assert combine("mean", 60.0, 80.0) == 70.0
    assert combine("length", 60.0, 80.0) == 60.0
    assert combine("quality", 60.0, 80.0) == 80.0
    assert combine("length", 60.0, None) == 60.0  # rule=length needs no judge
    assert combine("mean", 60.0, None) is None  # a failed judgement fails the sample
    assert combine("mean", None, 80.0) == 80.0  # no required length: S_q alone, whatever the rule
    assert combine("length", None, 80.0) == 80.0
    assert combine("length", None, None) is None


def test_best_is_chosen_and_rejected_is_drawn_reproducibly():
    scores = [40.0, 90.0, 10.0, 55.0]
    chosen, rejected, reason = select_pair(scores, seed=0, prompt_id="p1")
    assert reason is None and chosen == 1 and rejected in (0, 2, 3)
    assert select_pair(scores, 0, "p1") == (chosen, rejected, None)  # the same seed and prompt: the same draw
    draws = {select_pair(scores, seed, "p1")[1] for seed in range(20)}
    assert draws == {0, 2, 3}  # other seeds draw others, never the chosen one
    assert {select_pair(scores, 0, f"p{i}")[1] for i in range(20)} == {0, 2, 3}  # and other prompts


def test_failed_samples_are_never_chosen_or_rejected():
    for seed in range(10):
        assert select_pair([None, 70.0, None, 20.0], seed, "p") == (1, 3, None)


def test_dropped_pairs():
    assert select_pair([None, None, None, None], 0, "p") == (None, None, "failed")
    assert select_pair([None, 80.0, None, None], 0, "p") == (None, None, "failed")
    # A shared best: the first is chosen, the rejected drawn from the worse samples only.
    assert {select_pair([80.0, 20.0, 80.0, 10.0], seed, "p") for seed in range(20)} == {(0, 1, None), (0, 3, None)}
    assert select_pair([50.0, 50.0], 0, "p") == (None, None, "tie")  # nothing worse to reject
    # float noise is no difference: 0 and 1 share the best, so 1 is never the rejected one
    assert {select_pair([0.1 + 0.2, 0.3, 0.0], seed, "p") for seed in range(10)} == {(0, 2, None)}
    assert select_pair([0.1 + 0.2, 0.3], 0, "p") == (None, None, "tie")
    # min_margin: the drawn rejected must be further below than this
    chosen, rejected, _ = select_pair([60.0, 58.0, 10.0], 0, "p")
    margin = [60.0, 58.0, 10.0][chosen] - [60.0, 58.0, 10.0][rejected]
    assert select_pair([60.0, 58.0, 10.0], 0, "p", min_margin=margin) == (None, None, "margin")
    assert select_pair([60.0, 58.0, 10.0], 0, "p", min_margin=margin - 0.5)[2] is None


def test_closeness_is_symmetric_in_the_log_ratio():
    assert closeness(100, 100) == 0.0
    assert closeness(100, 200) == pytest.approx(-math.log(2)) == closeness(100, 50)
    assert closeness(300, 10) < closeness(300, 90) < closeness(300, 100)  # all S_l = 0: nearer ranks higher
    assert closeness(100, 500) < closeness(100, 450)  # and past 4x, where S_l is 0 too
    assert closeness(100, 0) == -math.inf


def test_a_shared_best_is_broken_by_closeness():
    """Every sample under a third of the length scores S_l = 0: the nearest is chosen, not a dropped tie."""
    produced = [10, 90, 40, 60]  # of 300 words asked
    scores = [length_score(300, n) for n in produced]
    assert scores == [0.0] * 4 and best_is_shared(scores)
    near = [closeness(300, n) for n in produced]
    assert select_pair(scores, 0, "p") == (None, None, "tie")  # without the tie-break, as before
    for seed in range(10):
        chosen, rejected, reason = select_pair(scores, seed, "p", near=near)
        assert reason is None and chosen == 1 and rejected in (0, 2, 3)
    assert {select_pair(scores, seed, "p", near=near)[1] for seed in range(20)} == {0, 2, 3}
    # Only the shared best is reordered: a unique best stays chosen however far it is.
    assert select_pair([70.0, 40.0, 40.0], 0, "p", near=[-2.0, -0.1, -0.5])[0] == 0
    # Equally near and equally scored: the first is chosen and a less near one rejected; with none
    # less near, a tie; an empty (-inf) sample among them too.
    assert select_pair([0.0, 0.0, 0.0], 0, "p", near=[-1.0, -1.0, -3.0]) == (0, 2, None)
    assert select_pair([0.0, 0.0, 0.0], 0, "p", near=[-1.0, -1.0, -1.0]) == (None, None, "tie")
    assert select_pair([0.0, 0.0], 0, "p", near=[-math.inf, -math.inf]) == (None, None, "tie")
    # A rejected equal in score but less near has no score margin: dropped only when one is asked for.
    assert select_pair([0.0, 0.0], 0, "p", near=[-0.5, -1.0]) == (0, 1, None)
    assert select_pair([0.0, 0.0], 0, "p", min_margin=1.0, near=[-0.5, -1.0]) == (None, None, "margin")
    assert select_pair([50.0, 50.0, 10.0], 0, "p", min_margin=45.0, near=[-0.5, -1.0, -2.0])[2] is not None
    assert not best_is_shared([80.0, 20.0, None]) and not best_is_shared([None, 5.0]) and best_is_shared([5.0, 5.0])


# --- prompts files ---------------------------------------------------------------------------------

def test_prompts_plain_and_messages(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join([
        json.dumps({"prompt": "Write 50 words", "length": 60}),
        json.dumps({"id": "x", "prompt": "Write a poem"}),
        "",
        json.dumps({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                                 {"role": "assistant", "content": "Hello"}]}),
        json.dumps({"conversations": [{"from": "human", "value": "写一篇文章"}, {"from": "gpt", "value": "好"}]}),
    ]) + "\n")
    assert read_prompts(path) == [
        {"id": "0", "prompt": "Write 50 words", "length": 60}, {"id": "x", "prompt": "Write a poem", "length": None},
        {"id": "2", "prompt": "Hi", "length": None}, {"id": "3", "prompt": "写一篇文章", "length": None}]


@pytest.mark.parametrize("line, message", [
    ('{"text": "Write"}', "prompts.jsonl:2: missing field 'prompt'"),
    ('{"prompt": "  "}', "prompts.jsonl:2: field 'prompt' must be a non-empty string"),
    ('{"prompt": 5}', "prompts.jsonl:2: field 'prompt' must be a non-empty string"),
    ('{"prompt": "b", "length": "long"}', "prompts.jsonl:2: field 'length' must be a positive integer"),
    ('{"prompt": "b", "id": "a"}', "prompts.jsonl:2: duplicate id 'a' (first at line 1)"),
    ('{"prompt": "b", "id": "b#1"}', "prompts.jsonl:2: field 'id' must not contain '#'"),
    ('{"messages": [{"role": "user", "content": "x"}, {"role": "user", "content": "y"}]}',
     "prompts.jsonl:2: field 'messages' must hold exactly one user turn"),
    ('{"messages": [{"role": "user", "content": ""}]}', "prompts.jsonl:2: field 'prompt' must be a non-empty"),
    ('["prompt"]', "prompts.jsonl:2: expected a JSON object"),
    ('{"prompt": "b"', "prompts.jsonl:2: not valid JSON"),
])
def test_bad_prompts_name_file_line_and_field(tmp_path, line, message):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"id": "a", "prompt": "Write"}\n' + line + "\n")
    with pytest.raises(ValueError) as err:
        read_prompts(path)
    assert message in str(err.value)


# --- checks at start and the task in process on an API model ---------------------------------------

def prompts_file(tmp_path, rows):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("overrides, message", [
    (["pairs.rule=mean"], "pairs.rule=mean needs the quality judge"),
    (["pairs.rule=quality"], "pairs.rule=quality needs the quality judge"),
    (["pairs.rule=length", "pairs.samples=1"], "pairs.samples must be at least 2"),
    (["pairs.rule=length", "generation.temperature=0"], "generation.temperature must be > 0"),
    (["pairs.rule=length", "generation=hf"], "task=dpo_pairs needs model.path"),
])
def test_bad_settings_fail_before_any_sampling(tmp_path, overrides, message):
    cfg = compose_lw("task=dpo_pairs", "generation=openai", "generation.model=m",
                     f"pairs.prompts={prompts_file(tmp_path, [{'prompt': 'Write 10 words'}])}", *overrides)
    with pytest.raises(ValueError, match=re.escape(message)):
        run_task(DPO_PAIRS, cfg, tmp_path / "run", Tracker())
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_length_rule_without_judge_on_an_api_model(tmp_path):
    """rule=length, judge=none: samples ranked by S_l; a prompt naming no length is not sampled."""
    answers = {}  # (prompt, sample number) -> words: the server answers each request with a new length

    def writer(body, attempt):
        prompt = user_text(body)
        k = sum(1 for p, _ in answers if p == prompt)
        answers[prompt, k] = [5, 20, 40, 80][k % 4]
        return Reply(" ".join(["word"] * answers[prompt, k]))

    path = prompts_file(tmp_path, [{"id": "a", "prompt": "Write 20 words on tea"},
                                   {"id": "b", "prompt": "Write about rivers", "length": 40},
                                   {"id": "c", "prompt": "Write a poem"}])
    with OpenAIServer(writer) as server:
        cfg = compose_lw("task=dpo_pairs", f"pairs.prompts={path}", "pairs.rule=length", "generation=openai",
                         f"generation.base_url={server.base_url}", "generation.model=m", "generation.api_key_env=null",
                         "generation.concurrency=1")
        metrics = run_task(DPO_PAIRS, cfg, tmp_path / "run", Tracker())
        assert server.count() == 8  # 2 prompts x 4 samples; "c" was not sampled
    pairs = [json.loads(line) for line in (tmp_path / "run/pairs.jsonl").open()]
    assert [p["id"] for p in pairs] == ["a", "b"]
    for pair, length in zip(pairs, (20, 40)):
        assert count_words(pair["chosen"]) == length and pair["required_length"] == length
        assert pair["scores"][pair["chosen_index"]]["S_l"] == 100.0
        assert all(s["S_q"] is None for s in pair["scores"])
        rejected = pair["scores"][pair["rejected_index"]]
        assert rejected["score"] == round(length_score(length, count_words(pair["rejected"])), 4) < 100
        assert "by S_l=100.0" in pair["reason"] and "among 3 others" in pair["reason"]
    assert [p["length_source"] for p in pairs] == ["text", "field"]
    assert metrics["pairs/pairs"] == 2 and metrics["pairs/dropped_no_length"] == 1
    assert metrics["pairs/length_from_text"] == metrics["pairs/length_from_field"] == metrics["pairs/length_unknown"] == 1
    assert metrics["pairs/mean_chosen_score"] == 100.0


def run_scripted_pairs(tmp_path, prompts, words, *overrides):
    """task=dpo_pairs against a loopback server whose k-th answer to a prompt has words[key][k] words,
    the key being the first of `words` found in the prompt; returns the task's metrics."""
    asked: dict[str, int] = {}

    def writer(body, attempt):
        key = next(k for k in words if k in user_text(body))
        asked[key] = asked.get(key, -1) + 1
        return Reply(" ".join(["word"] * words[key][asked[key]]))

    path = prompts_file(tmp_path, prompts)
    with OpenAIServer(writer) as server:
        cfg = compose_lw("task=dpo_pairs", f"pairs.prompts={path}", "pairs.rule=length", *overrides,
                         "generation=openai", f"generation.base_url={server.base_url}", "generation.model=m",
                         "generation.api_key_env=null", "generation.concurrency=1")
        return run_task(DPO_PAIRS, cfg, tmp_path / "run", Tracker())


@pytest.mark.slow
def test_long_prompts_whose_samples_all_fall_short_still_give_pairs(tmp_path):
    """Every sample under a third of the asked length scores S_l = 0: the nearest is chosen and the
    tie counted as broken, where it used to be dropped."""
    metrics = run_scripted_pairs(tmp_path, [{"id": "a", "prompt": "Write 300 words on tea"},
                                            {"id": "b", "prompt": "Write 100 words on rivers"}],
                                 {"tea": [5, 60, 20, 40], "rivers": [10, 30, 300, 500]})  # of 300 and 100 asked
    pairs = {p["id"]: p for p in (json.loads(line) for line in (tmp_path / "run/pairs.jsonl").open())}
    assert count_words(pairs["a"]["chosen"]) == 60 and count_words(pairs["a"]["rejected"]) in (5, 20, 40)
    assert "by S_l=0.0 (a shared best, the nearest to the length)" in pairs["a"]["reason"]
    # b's best is unique (S_l 33 at 3x): chosen by S_l, though 30 words are nearer in log ratio.
    assert count_words(pairs["b"]["chosen"]) == 300 and "shared" not in pairs["b"]["reason"]
    assert metrics["pairs/tied_by_score"] == 1 and metrics["pairs/ties_broken_by_length"] == 1
    assert metrics["pairs/pairs"] == 2 and metrics["pairs/dropped_tie"] == 0


@pytest.mark.slow
def test_an_empty_answer_is_a_failed_sample_never_a_rejected_one(tmp_path):
    """rule=length scores an empty answer S_l = 0, which would make it the easiest rejected answer of
    all; it is a failed sample instead, so a prompt left with one answer gives no pair."""
    metrics = run_scripted_pairs(tmp_path, [{"id": "a", "prompt": "Write 20 words on tea"},
                                            {"id": "b", "prompt": "Write 20 words on rivers"}],
                                 {"tea": [0, 0, 20], "rivers": [0, 20, 10]}, "pairs.samples=3")
    assert metrics["pairs/samples_failed"] == 3 and metrics["pairs/dropped_failed"] == 1
    (pair,) = [json.loads(line) for line in (tmp_path / "run/pairs.jsonl").open()]
    assert pair["id"] == "b" and count_words(pair["chosen"]) == 20 and count_words(pair["rejected"]) == 10
    assert pair["scores"][0] == {"k": 0, "produced": 0, "S_l": 0.0, "S_q": None, "score": None, "judge_status": None}
    assert "best of 2 by S_l" in pair["reason"] and "among 1 others" in pair["reason"]


@pytest.mark.slow
def test_prompts_default_to_the_first_eval_benchmark(tmp_path, bench_data_dir):
    with OpenAIServer(lambda body, attempt: Reply(" ".join(["word"] * (len(user_text(body)) % 7 * 50 + 10)))) as server:
        cfg = compose_lw("task=dpo_pairs", "eval=longbench_write", f"eval.longbench_write.data_dir={bench_data_dir}",
                         "eval.longbench_write.limit=6", "eval.longbench_write.samples_per_prompt=2",  # 3 prompts, each once
                         "pairs.rule=length", "pairs.samples=2", "generation=openai",
                         f"generation.base_url={server.base_url}", "generation.model=m", "generation.api_key_env=null")
        metrics = run_task(DPO_PAIRS, cfg, tmp_path / "run", Tracker())
    assert metrics["pairs/prompts"] == 3 and metrics["pairs/length_from_field"] == 3
    samples = [json.loads(line)["id"] for line in (tmp_path / "run/pairs/samples.jsonl").open()]
    assert sorted(samples) == [f"longbench_write-{i}#{k}" for i in range(3) for k in range(2)]
    assert metrics["pairs/dropped_tie"] == 3  # every prompt's two answers are equally long
    assert metrics["pairs/tied_by_score"] == 3 and metrics["pairs/ties_broken_by_length"] == 0  # and equally near


# --- end to end through `python -m lw` on the tiny model, judged on loopback -----------------------

def judge_by_hash(body, attempt):
    """Scores that differ from response to response (a hash of it), so that samples rank; a prompt
    marked GARBLED is never judged parseably."""
    text = user_text(body)
    if "GARBLED" in text:
        return Reply("No scores today.")
    response = text.split("<Response>")[1].split("</Response>")[0].strip()
    digest = hashlib.sha256(response.encode()).digest()
    return Reply(judge_json({d: 1 + digest[i] % 5 for i, d in enumerate(DIMENSIONS)}))


@pytest.mark.slow
def test_dpo_pairs_task_end_to_end_and_resumed(tmp_path, tiny_model, bench_data_dir):
    path = prompts_file(tmp_path, [
        {"id": "field", "prompt": "Write about rivers and lakes", "length": 20},
        {"id": "en", "prompt": "Write about mountains in 25 words"},
        {"id": "zh", "prompt": "写一篇30字的短文"},
        {"id": "none", "prompt": "Write a poem about the sea"},
        {"id": "bad", "prompt": "Write 20 words GARBLED"},
    ])
    run_dir = tmp_path / "pairs_run"
    with OpenAIServer(judge_by_hash) as server:
        overrides = ("task=dpo_pairs", f"model.path={tiny_model}", f"pairs.prompts={path}", "pairs.samples=3",
                     "judge=openai", f"judge.base_url={server.base_url}", "judge.api_key_env=null",
                     "judge.model=loopback-judge", "judge.attempts=1", "eval=longbench_write",
                     f"eval.longbench_write.data_dir={bench_data_dir}", "generation.max_new_tokens=32",
                     f"hydra.run.dir={run_dir}", "logger=none")
        run_lw(*overrides, cwd=tmp_path)
        sent = server.count()
        samples = (run_dir / "pairs/samples.jsonl").read_text().splitlines()
        assert len(samples) == 15
        assert sorted(json.loads(s)["id"] for s in samples)[:3] == ["bad#0", "bad#1", "bad#2"]
        nonempty = sum(1 for s in samples if json.loads(s)["response"].strip())
        assert 0 < sent <= nonempty  # empty answers are never judged; equal answers judged once

        stats = json.loads((run_dir / "pairs_stats.json").read_text())
        assert stats["prompts"] == 5 and stats["samples"] == 15
        assert (stats["length_from_field"], stats["length_from_text"], stats["length_unknown"]) == (1, 3, 1)
        assert stats["dropped_failed"] >= 1  # "bad": every judgement unparseable
        assert stats["pairs"] + stats["dropped_failed"] + stats["dropped_tie"] + stats["dropped_margin"] == 5
        assert stats["pairs"] >= 1
        pairs = [json.loads(line) for line in (run_dir / "pairs.jsonl").open()]
        assert len(pairs) == stats["pairs"] and "bad" not in {p["id"] for p in pairs}
        required = {"field": 20, "en": 25, "zh": 30, "none": None}
        rows = {json.loads(s)["id"]: json.loads(s) for s in samples}
        for pair in pairs:
            assert set(pair) == {"id", "prompt", "chosen", "rejected", "required_length", "length_source", "scores",
                                 "chosen_index", "rejected_index", "reason"}
            assert pair["required_length"] == required[pair["id"]]
            assert pair["chosen"] == rows[f"{pair['id']}#{pair['chosen_index']}"]["response"]
            assert pair["rejected"] == rows[f"{pair['id']}#{pair['rejected_index']}"]["response"]
            scores = [s["score"] for s in pair["scores"]]
            assert scores[pair["chosen_index"]] == max(s for s in scores if s is not None)
            assert scores[pair["chosen_index"]] > scores[pair["rejected_index"]]
            for s in pair["scores"]:
                if s["score"] is not None and pair["required_length"] is not None:
                    assert s["score"] == pytest.approx((s["S_l"] + s["S_q"]) / 2, abs=1e-3)
            if pair["required_length"] is None:
                assert all(s["S_l"] is None for s in pair["scores"]) and "S_q (no required length)" in pair["reason"]
        assert (run_dir / "pairs_scores.png").read_bytes()[:4] == b"\x89PNG"
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["pairs/pairs"] == stats["pairs"] and metrics["pairs/length_unknown"] == 1
        first = (run_dir / "pairs.jsonl").read_text()

        # The same command again: nothing sampled; only the unparseable judgements (all of "bad") are
        # asked again (judge.retry_unparseable), and still fail to parse: the same pairs.
        garbled = sum(1 for r in server.requests if "GARBLED" in user_text(r["body"]))
        run_lw(*overrides, cwd=tmp_path)
        assert server.count() - sent == garbled > 0
        assert all("GARBLED" in user_text(r["body"]) for r in server.requests[sent:])
        sent = server.count()
        run_lw(*overrides, "judge.retry_unparseable=false", cwd=tmp_path)
        assert server.count() == sent
        assert len((run_dir / "pairs/samples.jsonl").read_text().splitlines()) == 15
        assert (run_dir / "pairs.jsonl").read_text() == first


# --- lengths, selection and drop accounting, without a server -----------------------------------------

def test_resolve_lengths_counts_each_source():
    prompts = [{"id": "a", "prompt": "Write 300 words", "length": 500}, {"id": "b", "prompt": "写一篇800字的文章", "length": None},
               {"id": "c", "prompt": "Write a poem", "length": None}]
    sources, counts = resolve_lengths(prompts)
    assert counts == {"length_from_field": 1, "length_from_text": 1, "length_unknown": 1}
    assert [(q["length"], source) for q, source in zip(prompts, sources)] == [(500, "field"), (800, "text"), (None, "unknown")]


def pairs_settings(rule="length", min_margin=0.0):
    return OmegaConf.create({"samples": 3, "rule": rule, "min_margin": min_margin})


def samples_of(pid, *words):
    return {f"{pid}#{k}": {"id": f"{pid}#{k}", "response": " ".join(["word"] * n)} for k, n in enumerate(words)}


def test_select_pairs_counts_pairs_and_drops():
    prompts = [{"id": "good", "prompt": "p", "length": 100, "source": "field"},
               {"id": "empty", "prompt": "p", "length": 100, "source": "field"},
               {"id": "tie", "prompt": "p", "length": 100, "source": "text"}]
    by_id = {**samples_of("good", 100, 50, 400), **samples_of("empty", 100, 0, 0), **samples_of("tie", 10, 30, 500)}
    selection = select_pairs(prompts, by_id, {}, pairs_settings(), seed=0)
    # good: its 100 words are chosen; empty: two empty answers leave one scored sample (failed);
    # tie: 10, 30 and 500 words all score S_l = 0, and 30 is the nearest to 100: the tie is broken
    assert [r["id"] for r in selection.records] == ["good", "tie"]
    assert selection.drops == {"failed": 1, "tie": 0, "margin": 0}
    assert (selection.samples_failed, selection.tied_by_score, selection.ties_broken) == (2, 1, 1)
    stats = selection.stats()
    assert stats["pairs"] == 2 and stats["dropped_failed"] == 1 and stats["ties_broken_by_length"] == 1
    assert stats["mean_margin"] == stats["mean_chosen_score"] - stats["mean_rejected_score"] > 0
    assert selection.records[1]["chosen_index"] == 1


def test_an_equally_good_best_keeps_its_prompt_when_a_worse_sample_exists():
    """Two samples of the same length share the best score and nearness: the first is chosen and the
    worse one rejected (a kept tie, not broken by length); with no worse sample the prompt is a tie."""
    prompts = [{"id": "twins", "prompt": "p", "length": 100, "source": "field"},
               {"id": "all_same", "prompt": "p", "length": 100, "source": "field"}]
    by_id = {**samples_of("twins", 90, 90, 40), **samples_of("all_same", 90, 90, 90)}
    selection = select_pairs(prompts, by_id, {}, pairs_settings(), seed=0)
    assert [(r["id"], r["chosen_index"], r["rejected_index"]) for r in selection.records] == [("twins", 0, 2)]
    assert "(a shared best, the first of 2 equally good); rejected" in selection.records[0]["reason"]
    assert selection.records[0]["reason"].endswith("drawn among 1 others")
    assert selection.drops == {"failed": 0, "tie": 1, "margin": 0}
    assert (selection.tied_by_score, selection.ties_broken) == (2, 0)


def test_select_pairs_margin_and_no_pairs():
    prompts = [{"id": "close", "prompt": "p", "length": 100, "source": "field"}]
    by_id = samples_of("close", 100, 99, 98)
    selection = select_pairs(prompts, by_id, {}, pairs_settings(min_margin=5.0), seed=0)
    assert selection.records == [] and selection.drops["margin"] == 1
    assert "mean_margin" not in selection.stats()
