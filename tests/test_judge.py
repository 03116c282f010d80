"""The quality judge end to end against a real OpenAI-compatible HTTP server on loopback."""

import json
import re
import statistics
import threading
import time

import pytest
from omegaconf import OmegaConf

from lw.config import JudgeConfig
from lw.errors import UserError
from lw.eval.judge import DIMENSIONS, Judge, Unparseable, cache_key, differences, judge_prompt, parse_judgement
from lw.testing.openai_server import OpenAIServer, Reply, judge_json, user_text

from helpers import compose_lw


@pytest.fixture(scope="module")
def template(bench_data_dir):
    """A judge template of the benchmark's shape: $INST$ and $RESPONSE$ once each, six JSON scores asked for."""
    return (bench_data_dir / "judge.txt").read_text()


KEY = "sk-test-not-a-real-key-0123456789"


# --- parsing: what judges really answer -------------------------------------------------------------

def test_parses_plain_fenced_and_surrounded_json():
    reply = judge_json({d: i % 5 + 1 for i, d in enumerate(DIMENSIONS)})
    expected = {d: i % 5 + 1 for i, d in enumerate(DIMENSIONS)}
    assert parse_judgement(reply) == expected
    assert parse_judgement(f"Sure.\n```json\n{reply}\n```\nHope it helps.") == expected
    assert parse_judgement(f"My analysis: {{bad}} then {reply} done") == expected
    single = reply.replace('"', "'")
    assert parse_judgement(single) == expected
    assert parse_judgement(reply.replace(": 1,", ': "1",')) == expected
    # Unescaped quotes in the free text break the JSON; the six scores are still unambiguous.
    broken = reply.replace('"fine"', '"a "fine" essay {mostly}"')
    assert parse_judgement(broken) == expected


@pytest.mark.parametrize("reply, problem", [
    ("The response is good, 4/5 overall.", "no JSON object"),
    (judge_json(4).replace(', "Clarity": 4', ""), "no score for Clarity"),
    (judge_json(4).replace('"Coherence": 4', '"Coherence": 6'), "Coherence=6"),
    (judge_json(4).replace('"Coherence": 4', '"Coherence": 0'), "Coherence=0"),
    (judge_json(4).replace('"Coherence": 4', '"Coherence": 3.5'), "Coherence=3.5"),
    (judge_json(4).replace('"Coherence": 4', '"Coherence": true'), "Coherence=True"),
    (judge_json(4).replace('"Coherence": 4', '"Coherence": "good"'), "Coherence='good'"),
    ('```json\n{"Analysis": "cut off", "Relevance": 4, "Accur', "no JSON object"),
    (judge_json(4).replace('"fine"', '"a "fine" one"').replace('"Clarity": 4', '"Clarity": 7'), "no JSON object"),
    (judge_json(4).replace('"fine"', '"said "Relevance": 2, then"'), "no JSON object"),
])
def test_unparseable_replies_are_rejected_with_a_reason(reply, problem):
    with pytest.raises(Unparseable, match=problem.replace("(", r"\(").replace(".", r"\.")):
        parse_judgement(reply)


def test_template_is_filled_in_one_pass(template):
    filled = judge_prompt(template, "Write $RESPONSE$ now", "I wrote $INST$")
    assert "Write $RESPONSE$ now" in filled and "I wrote $INST$" in filled
    assert filled.count("$INST$") == 1 and filled.count("$RESPONSE$") == 1


def test_the_official_template_asks_for_the_six_scores_around_the_response(official_bench_dir):
    official = (official_bench_dir / "judge.txt").read_text()
    filled = judge_prompt(official, "Write a poem", "Roses are red")
    assert "<User Request>\n\nWrite a poem\n\n</User Request>" in filled
    assert "<Response>\n\nRoses are red\n\n</Response>" in filled
    asked = filled.rsplit("JSON format:", 1)[1]
    assert all(f'"{d}": ...' in asked for d in DIMENSIONS)


# --- end to end against the server ------------------------------------------------------------------

def scripted(body, attempt):
    """Behaviour chosen by a marker in the judged response, per attempt of the same request."""
    text = user_text(body)
    if "MARK-429" in text and attempt == 1:
        return Reply(status=429)
    if "MARK-500" in text and attempt == 1:
        return Reply(status=500)
    if "MARK-SLOW" in text and attempt == 1:
        return Reply(judge_json(1), delay=3)  # past the client's timeout: retried, this reply never read
    if "MARK-DOWN" in text:
        return Reply(status=503)
    if "MARK-GARBLED" in text:
        return Reply("I would rate it highly but cannot give numbers.")
    if "MARK-SECOND" in text and attempt == 1:
        return Reply("{'Relevance': 'high'}")
    if "MARK-FENCED" in text:
        return Reply("Analysis first.\n```json\n" + judge_json(2) + "\n```")
    return Reply(judge_json(4))


def judge_cfg(server, **kw):
    defaults = dict(kind="openai", base_url=server.base_url, model="judge-x", api_key_env="LW_TEST_JUDGE_KEY",
                    timeout=1.0, retries=2, concurrency=4)
    return OmegaConf.structured(JudgeConfig(**{**defaults, **kw}))


def rows_with(*markers):
    return [{"id": str(i), "prompt": f"Write {i}", "response": f"answer {m}"} for i, m in enumerate(markers)]


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv("LW_TEST_JUDGE_KEY", KEY)


@pytest.mark.slow
def test_judge_end_to_end_with_errors_retries_and_malformed_replies(tmp_path, key, template):
    rows = rows_with("ok", "MARK-429", "MARK-500", "MARK-SLOW", "MARK-GARBLED", "MARK-SECOND", "MARK-FENCED",
                     "MARK-DOWN")
    cache = tmp_path / "judge.jsonl"
    with OpenAIServer(scripted) as server:
        judgements = Judge(judge_cfg(server), template, cache).judge(rows)
        by_marker = {row["response"].split()[-1]: j for row, j in zip(rows, judgements)}
        assert [j["id"] for j in judgements] == [r["id"] for r in rows]
        for marker in ("ok", "MARK-429", "MARK-500", "MARK-SLOW"):
            assert by_marker[marker]["status"] == "ok" and by_marker[marker]["scores"]["Relevance"] == 4, marker
        assert by_marker["MARK-FENCED"]["scores"] == {d: 2 for d in DIMENSIONS}
        assert by_marker["MARK-SECOND"]["status"] == "ok" and by_marker["MARK-SECOND"]["attempts"] == 2
        garbled = by_marker["MARK-GARBLED"]
        assert garbled["status"] == "unparseable" and garbled["scores"] is None  # never a default score
        assert garbled["attempts"] == 3 and "cannot give numbers" in garbled["reply"]
        assert by_marker["MARK-DOWN"]["status"] == "failed" and "503" in by_marker["MARK-DOWN"]["error"]

        sent = [r for r in server.requests]
        assert all(r["headers"]["authorization"] == f"Bearer {KEY}" for r in sent)
        assert {r["body"]["model"] for r in sent} == {"judge-x"}
        assert {r["body"]["temperature"] for r in sent} == {0.5}
        first = next(r for r in sent if "answer ok" in user_text(r["body"]))
        assert user_text(first["body"]) == judge_prompt(template, "Write 0", "answer ok")
        down = [r for r in sent if "MARK-DOWN" in user_text(r["body"])]
        assert len(down) == 3  # the first try and judge.retries=2 retries

        # With judge.retry_unparseable=false a rerun sends only what failed in transport (3 tries);
        # parsed and unparseable judgements come from the cache.
        before = server.count()
        again = Judge(judge_cfg(server, retry_unparseable=False), template, cache).judge(rows)
        assert server.count() - before == 3
        assert [j["status"] for j in again] == [j["status"] for j in judgements]
        # By default the unparseable one is asked again too (3 more tries), the parsed ones never.
        before = server.count()
        again = Judge(judge_cfg(server), template, cache).judge(rows)
        asked = [m for r in server.requests[before:] for m in ("MARK-DOWN", "MARK-GARBLED") if m in user_text(r["body"])]
        assert sorted(asked) == ["MARK-DOWN"] * 3 + ["MARK-GARBLED"] * 3, asked
        assert [j["status"] for j in again] == [j["status"] for j in judgements]
    assert KEY not in cache.read_text()


@pytest.mark.slow
def test_concurrency_is_bounded_and_used(tmp_path, key, template):
    in_flight, peak, lock = [0], [0], threading.Lock()

    def slow(body, attempt):
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        time.sleep(0.15)
        with lock:
            in_flight[0] -= 1
        return Reply(judge_json(3))

    with OpenAIServer(slow) as server:
        judgements = Judge(judge_cfg(server, concurrency=3), template, None).judge(rows_with(*range(12)))
    assert [j["status"] for j in judgements] == ["ok"] * 12
    assert peak[0] == 3


@pytest.mark.slow
def test_resumes_from_a_cache_with_a_torn_last_line(tmp_path, key, template):
    rows = rows_with(*range(6))
    cache = tmp_path / "judge.jsonl"
    with OpenAIServer(scripted) as server:
        Judge(judge_cfg(server), template, cache).judge(rows[:4])
        lines = cache.read_text().splitlines(keepends=True)
        assert len(lines) == 4
        cache.write_text("".join(lines[:3]) + lines[3][:40])  # killed while writing the 4th
        keys = {cache_key("judge-x", judge_prompt(template, r["prompt"], r["response"])): r["id"] for r in rows}
        torn = keys[json.loads(lines[3])["key"]]
        before = server.count()
        judgements = Judge(judge_cfg(server), template, cache).judge(rows)
        judged = [re.search(r"answer (\d+)", user_text(r["body"])).group(1) for r in server.requests[before:]]
        assert sorted(judged) == sorted([torn, "4", "5"])  # the torn one and the two new ones
    assert [j["status"] for j in judgements] == ["ok"] * 6
    assert [json.loads(line)["status"] for line in cache.read_text().splitlines()] == ["ok"] * 6


@pytest.mark.slow
def test_missing_key_fails_before_any_request(monkeypatch, template):
    monkeypatch.delenv("LW_TEST_JUDGE_KEY", raising=False)
    with OpenAIServer(scripted) as server:
        with pytest.raises(ValueError, match="judge.api_key_env names LW_TEST_JUDGE_KEY, which is not set"):
            Judge(judge_cfg(server), template, None)
        assert server.count() == 0


def test_judge_config_names_the_key_variable_never_the_key():
    cfg = compose_lw("judge=openai")
    assert cfg.judge.api_key_env == "OPENAI_API_KEY" and cfg.judge.temperature == 0.5
    assert cfg.judge.model == "gpt-4o-2024-05-13"
    assert compose_lw().judge.kind == "none"
    cfg = compose_lw("judge=openai", "judge.concurrency=32", "judge.base_url=http://127.0.0.1:9/v1")
    assert cfg.hydra.job.override_dirname == "judge.base_url-http://127.0.0.1:9/v1+judge-openai"


# --- the official judge's reading (judge=openai_official) and what it changes ------------------------

def test_numeric_scores_take_what_float_takes_and_official_extraction_reads_only_its_block():
    half = judge_json(4).replace('"Coherence": 4', '"Coherence": 3.5')
    assert parse_judgement(half, scores="numeric")["Coherence"] == 3.5
    assert parse_judgement(judge_json(4).replace('"Clarity": 4', '"Clarity": "6"'), scores="numeric")["Clarity"] == 6
    for bad in ('"good"', '"NaN"', "null"):
        with pytest.raises(Unparseable, match="finite numbers"):
            parse_judgement(judge_json(4).replace('"Coherence": 4', f'"Coherence": {bad}'), scores="numeric")
    fenced = "Analysis.\n```json\n" + judge_json(2) + "\n```"
    assert parse_judgement(fenced, extraction="official") == {d: 2 for d in DIMENSIONS}
    assert parse_judgement(judge_json(3).replace(", ", ",\n"), extraction="official") == {d: 3 for d in DIMENSIONS}
    for text in (f"My scores: {judge_json(2)}", judge_json(2).replace('"', "'"), "```json " + judge_json(2) + "```"):
        assert parse_judgement(text)  # lw's lenient reader takes them
        with pytest.raises(Unparseable, match="official extraction"):
            parse_judgement(text, extraction="official")
    flags = differences(half, "integer", "lenient")
    assert flags == {"non_integer": True, "extraction_differs": False}
    assert differences(f"Scores: {judge_json(2)}", "numeric", "official") == {"non_integer": False,
                                                                              "extraction_differs": True}


def test_official_extraction_reads_a_line_break_inside_a_string_value_as_the_official_script_does():
    """evaluation/eval_quality.py removes every line break before json.loads, so a reply whose free
    text breaks a line inside its string parses there; lw's official mode counts it too."""
    broken = judge_json(3, analysis="clear and kept,NEWLINEwith a second line").replace("NEWLINE", "\n")
    assert "\n" in broken
    for reply in (broken, "Scores:\n```json\n" + broken + "\n```"):
        assert parse_judgement(reply, extraction="official") == {d: 3 for d in DIMENSIONS}


def official_script(body, attempt):
    """Replies by marker: non-integer scores, non-integer then integer, prose then JSON, never JSON."""
    text = user_text(body)
    if "MARK-FIRST-HALF" in text:
        return Reply(judge_json(4).replace('"Coherence": 4', '"Coherence": 4.5') if attempt == 1 else judge_json(2))
    if "MARK-HALF" in text:
        return Reply(judge_json(4).replace('"Coherence": 4', '"Coherence": 3.5'))
    if "MARK-PROSE" in text:
        return Reply("Here you go: " + judge_json(5) if attempt < 3 else judge_json(1))
    if "MARK-GARBLED" in text:
        return Reply("I would rate it highly but cannot give numbers.")
    return Reply(judge_json(3))


@pytest.mark.slow
def test_official_preset_sends_max_tokens_honours_attempts_and_counts_what_its_rules_change(tmp_path, key, template):
    from lw.eval.scoring import longbench_metrics, score_lengths

    rows = rows_with("ok", "MARK-HALF", "MARK-FIRST-HALF", "MARK-PROSE", "MARK-GARBLED")
    with OpenAIServer(official_script) as server:
        preset = compose_lw("judge=openai_official", f"judge.base_url={server.base_url}", "judge.model=judge-x",
                            "judge.api_key_env=LW_TEST_JUDGE_KEY", "judge.timeout=5").judge
        assert (preset.max_tokens, preset.attempts, preset.scores, preset.extraction) == (1024, 5, "numeric", "official")
        official = {j["id"]: j for j in Judge(preset, template, None).judge(rows)}
        assert {r["body"]["max_tokens"] for r in server.requests} == {1024}
        asked = {m: sum(f"answer {m}" in user_text(r["body"]) for r in server.requests) for m in
                 ("ok", "MARK-HALF", "MARK-FIRST-HALF", "MARK-PROSE", "MARK-GARBLED")}
        assert asked == {"ok": 1, "MARK-HALF": 1, "MARK-FIRST-HALF": 1, "MARK-PROSE": 3, "MARK-GARBLED": 5}
        assert official["1"]["scores"]["Coherence"] == 3.5 and official["1"]["non_integer"]
        assert official["2"]["scores"]["Coherence"] == 4.5 and official["2"]["non_integer"]
        assert official["3"]["scores"] == {d: 1 for d in DIMENSIONS} and official["3"]["extraction_differs"]
        assert official["4"]["status"] == "unparseable" and official["4"]["attempts"] == 5  # counted, not dropped

    with OpenAIServer(official_script) as server:  # attempts counted afresh
        lw_rules = {j["id"]: j for j in Judge(judge_cfg(server, attempts=2), template, None).judge(rows)}
        assert all("max_tokens" not in r["body"] for r in server.requests)  # null: not sent
        assert lw_rules["1"]["status"] == "unparseable" and lw_rules["1"]["attempts"] == 2 and lw_rules["1"]["non_integer"]
        assert lw_rules["2"]["scores"] == {d: 2 for d in DIMENSIONS} and lw_rules["2"]["non_integer"]
        assert lw_rules["3"]["scores"] == {d: 5 for d in DIMENSIONS} and lw_rules["3"]["extraction_differs"]
        assert not lw_rules["0"]["non_integer"] and not lw_rules["0"]["extraction_differs"]

    scored = score_lengths([{**r, "length": 100} for r in rows])
    metrics = longbench_metrics(scored, "lbw", list(official.values()))
    assert (metrics["lbw/judge_judged"], metrics["lbw/judge_unparseable"]) == (4, 1)
    assert (metrics["lbw/judge_non_integer"], metrics["lbw/judge_extraction_differs"]) == (2, 1)
    coherence = (statistics.fmean([3, 3.5, 4.5, 1]) - 1) * 25
    assert metrics["lbw/quality/Coherence"] == pytest.approx(coherence)


@pytest.mark.slow
def test_a_cached_judgement_is_reread_under_the_current_rules(tmp_path, key, template):
    rows = rows_with("MARK-HALF")
    cache = tmp_path / "judge.jsonl"
    with OpenAIServer(official_script) as server:
        numeric = Judge(judge_cfg(server, scores="numeric"), template, cache).judge(rows)
        assert numeric[0]["status"] == "ok" and server.count() == 1
        # The integer rule refuses the cached 3.5 and asks again rather than scoring it.
        integer = Judge(judge_cfg(server, attempts=1, retry_unparseable=False), template, cache).judge(rows)
        assert integer[0]["status"] == "unparseable" and integer[0]["non_integer"]
        assert server.count() == 1  # read again from the cache, not asked: retry_unparseable is off
        Judge(judge_cfg(server, attempts=1), template, cache).judge(rows)
        assert server.count() == 2


@pytest.mark.slow
@pytest.mark.parametrize("setting, value", [("attempts", 0), ("max_tokens", 0)])
def test_bad_judge_settings_are_refused_naming_the_setting(key, template, setting, value):
    # judge.scores and judge.extraction are closed choices, refused when the config is composed
    # (test_config.py::test_a_closed_choice_fails_at_compose_listing_its_choices).
    with OpenAIServer(official_script) as server:
        with pytest.raises(UserError, match=f"judge.{setting}"):
            Judge(judge_cfg(server, **{setting: value}), template, None)
