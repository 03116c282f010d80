"""The DPO miniature's loopback judge (experiments/dpo/judge_server.py): its rule by hand, and its
scores read through lw's real HTTP judge client and the miniature's own judge template."""

import importlib.util
import random

import pytest

from lw.data import toy

from helpers import REPO, compose_lw

SERVER = REPO / "experiments" / "dpo" / "judge_server.py"


@pytest.fixture(scope="module")
def rule():
    spec = importlib.util.spec_from_file_location("judge_server", SERVER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ASK = "Write a 13-word note about rivers."
CLEAN = "the quiet river carries the bank . the old water feeds the stream often ."  # 13 words, 2 sentences


def test_a_clean_on_topic_answer_of_the_asked_length_scores_5_everywhere(rule):
    assert rule.features(ASK, CLEAN) == {"on_topic": 1.0, "well_formed": 1.0, "fresh": 1.0, "clean_end": 1.0,
                                         "length_fit": 1.0}
    assert set(rule.scores(ASK, CLEAN).values()) == {5}


def test_each_feature_sees_its_own_fault(rule):
    f = rule.features
    # Another topic's nouns: one of the four nouns is a river's.
    assert f(ASK, "the quiet river carries the peak . the old summit feeds the ridge often .")["on_topic"] == 0.25
    # A sentence out of the toy grammar ("carries" where a noun belongs), and one cut off with no "."
    assert f(ASK, "the quiet river carries the carries . the old water feeds the stream often .")["well_formed"] == 0.5
    cut = f(ASK, "the quiet river carries the bank . the old water feeds")
    assert (cut["clean_end"], cut["well_formed"]) == (0.0, 0.5)
    # One sentence over and over: 6 distinct 5-grams in 23 (share 0.26, below the floor of 0.5).
    loop = "the river feeds the bank . " * 4 + "the river feeds"
    assert f("Write a 27-word note about rivers.", loop)["fresh"] == 0.0
    # A third of the asked length is 0; half of it is 1 - ln 2 / ln 3.
    assert f("Write a 39-word note about rivers.", CLEAN)["length_fit"] == pytest.approx(0.0, abs=1e-12)
    assert f("Write a 26-word note about rivers.", CLEAN)["length_fit"] == pytest.approx(0.369070, abs=1e-6)
    assert f("Write about rivers.", CLEAN)["length_fit"] == 1.0  # no length asked


def test_scores_round_features_half_up_and_an_empty_answer_gets_ones(rule):
    # Two of four nouns on topic: 1 + 4 x 0.5 = 3; the reading experience is the mean of all five.
    half = "the quiet river carries the peak . the old water feeds the summit often ."
    assert rule.scores(ASK, half)["Relevance"] == 3
    assert rule.scores(ASK, half)["Reading Experience"] == 5  # 1 + 4 x 0.9 = 4.6
    assert set(rule.scores(ASK, "").values()) == {1} == set(rule.scores(ASK, "   ").values())


def test_the_toy_languages_own_text_scores_high_at_every_length(rule):
    """What the SFT data looks like, at its exact lengths, gets 4-5 on every dimension but Accuracy
    and Clarity of the shortest answers, whose last sentence the data cuts to fit."""
    rng = random.Random(0)
    for n in (10, 25, 50, 100, 200, 300):
        ask, answer = toy.make_prompt(rng, "gardens", n), toy.write_answer(rng, "gardens", n)
        s = rule.scores(ask, answer)
        assert min(s["Relevance"], s["Coherence"], s["Breadth and Depth"], s["Reading Experience"]) >= 4, (n, s)
        if n >= 50:
            assert min(s.values()) >= 4, (n, s)


def test_the_judge_answers_through_lws_http_client_and_the_miniatures_template(rule, tmp_path, monkeypatch):
    """Served on loopback and asked by lw's Judge with experiments/dpo/judge.txt (as experiment=dpo_mini
    sets it): the scores are the rule's, the same text twice gets the same scores, and S_q tells a
    clean answer from a cut, repetitive or off-topic one."""
    from lw.eval.judge import longbench_judge
    from lw.eval.scoring import quality_scores
    from lw.testing.openai_server import OpenAIServer

    monkeypatch.chdir(REPO)  # judge.template is a path in the repository
    answers = {"clean": CLEAN, "cut": "the quiet river carries the bank . the old water feeds",
               "loop": "the river feeds the bank . " * 2 + "the river", "off": CLEAN.replace("river", "peak")
               .replace("bank", "ridge").replace("water", "snow").replace("stream", "trail")}
    rows = [{"id": f"{name}-{i}", "prompt": ASK, "response": text} for i in range(2) for name, text in answers.items()]
    pattern = rule.prompt_pattern(rule.TEMPLATE.read_text())
    with OpenAIServer(lambda body, attempt: rule.judge_reply(pattern, body)) as server:
        cfg = compose_lw("experiment=dpo_mini", f"judge.base_url={server.base_url}")
        judgements = longbench_judge(cfg, tmp_path / "judgements.jsonl").judge(rows)
    assert all(j["status"] == "ok" for j in judgements)
    s_q = {}
    for row, j in zip(rows, judgements):
        assert j["scores"] == rule.scores(ASK, row["response"])
        s_q.setdefault(row["id"].split("-")[0], set()).add(quality_scores([j])["S_q"])
    assert all(len(values) == 1 for values in s_q.values())  # deterministic
    s_q = {name: values.pop() for name, values in s_q.items()}
    assert s_q["clean"] == 100
    assert s_q["clean"] > max(s_q["cut"], s_q["loop"], s_q["off"])
    assert len(set(s_q.values())) == 4


def test_a_prompt_of_another_template_is_refused_not_scored(rule):
    pattern = rule.prompt_pattern(rule.TEMPLATE.read_text())
    reply = rule.judge_reply(pattern, {"messages": [{"role": "user", "content": "Rate this: hello"}]})
    assert reply.status == 400


def test_committed_dpo_miniature_s_q_and_pairs_say_what_its_readme_says():
    """experiments/dpo/README.md reports each seed's S_q before and after DPO and its pair counts;
    the committed quality-*.json and pairs_stats-*.json must give them (S_l: tests/test_dpo.py)."""
    import json

    results = REPO / "experiments" / "dpo" / "results" / "cpu"
    readme = (REPO / "experiments" / "dpo" / "README.md").read_text()
    s_q = {run: round(json.loads((results / f"quality-{run}.json").read_text())["longbench_write/S_q"], 2)
           for run in ("sft-seed-0", "dpo-seed-0", "sft-seed-1", "dpo-seed-1")}
    assert s_q == {"sft-seed-0": 97.54, "dpo-seed-0": 96.88, "sft-seed-1": 97.10, "dpo-seed-1": 97.92}
    rows = readme.splitlines()
    for seed in (0, 1):
        stats = json.loads((results / f"pairs_stats-seed-{seed}.json").read_text())
        sft, dpo = s_q[f"sft-seed-{seed}"], s_q[f"dpo-seed-{seed}"]
        assert any(r.startswith(f"| {seed} | {stats['pairs']} |") and f"| {sft:.2f} | {dpo:.2f} | **{dpo - sft:+.2f}** |" in r
                   for r in rows), seed  # the main results table
        counts = (stats["pairs"], stats["tied_by_score"], stats["ties_broken_by_length"], stats["dropped_tie"])
        assert any(r.startswith(f"| {seed} | rule, {stats['samples'] // 78} samples (committed) |")
                   and r.endswith("| {} | {} | {} | {} |".format(*counts)) for r in rows), seed  # the judge's table
        assert stats["prompts"] == stats["pairs"] + stats["dropped_tie"] == 78


def test_committed_grpo_determinism_runs_agree_in_everything_but_time():
    """experiments/grpo/README.md: 8 GRPO steps from one start, run twice with one thread and twice
    with two, gave the same TRL log (rewards, lengths, losses, gradient norms) and the same probe."""
    import json

    runs = REPO / "experiments" / "grpo" / "results" / "determinism"
    timing = ("step_time", "train_runtime", "train_samples_per_second", "train_steps_per_second")
    names = ("1thread-first", "1thread-second", "2threads-first", "2threads-second")
    logs = [[{k: v for k, v in step.items() if k not in timing}
             for step in json.loads((runs / f"train_log-{name}.json").read_text())] for name in names]
    assert len(logs[0]) == 9 and "rewards/length_reward/mean" in logs[0][0]  # 8 logged steps and the summary
    assert all(log == logs[0] for log in logs)
    probes = [(runs / f"results-{name}.csv").read_text() for name in names]
    assert all(probe == probes[0] for probe in probes) and probes[0].count("\n") == 9  # header + 8 answers
