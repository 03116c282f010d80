"""trainer=grpo: the reward functions on hand-computed cases, GRPO on the tiny model through the
entry point (its mean reward rises on a reward it can learn in a few steps), and the settings that
fail at start."""

import json
import math

import pytest
from omegaconf import OmegaConf

from lw.config import JudgeConfig
from lw.errors import UserError
from lw.eval.judge import Judge
from lw.testing.openai_server import OpenAIServer, Reply, judge_json, user_text
from lw.tracking import read_offline_run
from lw.train.grpo import completion_budget, prompt_rows, training_args
from lw.train.rewards import (
    RewardConfig,
    length_log_ratio_reward,
    length_reward,
    log_ratio_reward,
    quality_reward,
    reward_functions,
    text_of,
)

from helpers import compose_lw, run_lw


def said(text):
    return [{"role": "assistant", "content": text}]


def test_length_reward_is_s_l_over_100_by_hand():
    completions = [said(" ".join(["word"] * n)) for n in (100, 150, 50, 0, 400)] + ["字" * 30, said("a b c")]
    rewards = length_reward(completions, length=[100, 100, 100, 100, 100, 30, None])
    # S_l: 1 - (150/100 - 1)/3 over the length, 1 - (100/50 - 1)/2 under it, 0 when empty or past 4x.
    assert rewards[:6] == pytest.approx([1.0, 1 - 0.5 / 3, 0.5, 0.0, 0.0, 1.0])
    assert rewards[6] is None  # no required length: left out of the weighted sum
    assert text_of("plain") == "plain" and text_of(said("turn")) == "turn" and text_of([]) == ""


def test_log_ratio_length_reward_by_hand():
    """max(0, 1 - |ln(produced/required)| / ln 3): twice and half the length alike, 0 at 3x and a third."""
    half = 1 - math.log(2) / math.log(3)  # 0.3691
    completions = [said(" ".join(["word"] * n)) for n in (100, 200, 50, 150, 100, 300, 33, 0, 400)]
    completions += ["字" * 60, "字" * 10, said("a b c")]
    rewards = length_log_ratio_reward(completions, length=[100, 100, 100, 100, 150, 100, 100, 100, 100, 30, 30, None])
    assert rewards[:11] == pytest.approx([1.0, half, half, 1 - math.log(1.5) / math.log(3),
                                          1 - math.log(1.5) / math.log(3), 0.0, 0.0, 0.0, 0.0, half, 0.0], abs=1e-12)
    assert rewards[1] == pytest.approx(0.369070, abs=1e-6) and rewards[3] == pytest.approx(0.630930, abs=1e-6)
    assert rewards[11] is None
    # S_l / 100 at the same lengths: 3x keeps a third, a third gets nothing; here both get 0.
    assert length_reward([said(" ".join(["word"] * 300)), said(" ".join(["word"] * 34))], [100, 100]) == \
        pytest.approx([1 / 3, 0.0], abs=0.03)
    assert log_ratio_reward(100, 300) == pytest.approx(0.0, abs=1e-12) and log_ratio_reward(100, 0) == 0.0


@pytest.mark.slow
def test_quality_reward_is_s_q_over_100_from_the_judge(tmp_path):
    def judge(body, attempt):
        text = user_text(body)
        return Reply("no scores") if "GARBLED" in text else Reply(judge_json(5 if "good" in text else 2))

    with OpenAIServer(judge) as server:
        cfg = OmegaConf.structured(JudgeConfig(kind="openai", base_url=server.base_url, model="j", attempts=1,
                                               api_key_env=None, timeout=5))
        quality = quality_reward(Judge(cfg, "Judge $INST$ then $RESPONSE$", tmp_path / "judge.jsonl"))
        prompts = [[{"role": "user", "content": "Write 10 words."}]] * 3
        rewards = quality(prompts, [said("good text"), said("poor text"), said("GARBLED")])
        assert rewards == [pytest.approx(1.0), pytest.approx(0.25), None]  # (score - 1) * 25 / 100
        asked = len(server.requests)
        assert quality(prompts[:1], [said("good text")]) == [pytest.approx(1.0)]
        assert len(server.requests) == asked  # cached
    assert quality.__name__ == "quality_reward"


def test_reward_functions_take_the_weights_and_leave_out_zeros():
    cfg = OmegaConf.structured(RewardConfig(length=1.0, repetition=0.5, overlong=0.25))
    funcs, weights = reward_functions(cfg, max_completion_length=100)
    assert [f.__name__ for f in funcs][0] == "length_reward" and weights == [1.0, 0.5, 0.25]
    repetition, overlong = funcs[1], funcs[2]
    # Three trigrams of 5 5 5 5 5, one distinct: 2/3 of them repeat, times the -1 maximum and the weight
    # applied by TRL, not here.
    assert repetition(completion_ids=[[1, 2, 3, 4], [5, 5, 5, 5, 5]]) == pytest.approx([0.0, -2 / 3])
    # The soft overlong punishment: 0 up to max - buffer (90 tokens), -1 at the maximum.
    assert overlong(completion_ids=[[0] * 80, [0] * 100]) == pytest.approx([0.0, -1.0])
    with pytest.raises(UserError, match="reward.quality needs the judge"):
        reward_functions(OmegaConf.structured(RewardConfig(quality=1.0)), 100)
    with pytest.raises(UserError, match="needs a reward"):
        reward_functions(OmegaConf.structured(RewardConfig(length=0.0)), 100)
    # Under 10 completion tokens the default buffer is one token, never 0 (which the check refuses).
    (overlong,), _ = reward_functions(OmegaConf.structured(RewardConfig(length=0.0, overlong=1.0)), 8)
    assert overlong(completion_ids=[[0] * 7, [0] * 8]) == pytest.approx([0.0, -1.0])
    (length,), _ = reward_functions(OmegaConf.structured(RewardConfig(length_kind="log_ratio")), 100)
    assert length is length_log_ratio_reward and length.__name__ == "length_log_ratio_reward"


def test_prompts_come_with_their_required_lengths(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "Write a story.", "length": 300}\n{"prompt": "Write a 2000-word essay."}\n'
                    '{"prompt": "Write something."}\n')
    rows, counts = prompt_rows(compose_lw("trainer=grpo", "data=prompts", f"data.path={path}"))
    assert [r["length"] for r in rows] == [300, 2000, None]
    assert counts == {"length_from_field": 1, "length_from_text": 1, "length_unknown": 1}
    with pytest.raises(FileNotFoundError, match=r"data.path: .*none.jsonl does not exist"):
        prompt_rows(compose_lw("trainer=grpo", "data=prompts", f"data.path={tmp_path / 'none.jsonl'}"))
    toy_rows, _ = prompt_rows(compose_lw("experiment=grpo_mini"))
    lengths = [r["length"] for r in toy_rows]
    assert len(toy_rows) == 2000 and min(lengths) == 10 and max(lengths) == 200  # not capped at the SFT's 50


def test_prompts_without_a_length_and_no_judge_are_dropped_and_counted(tmp_path):
    from lw.models import build_tokenizer
    from lw.train.grpo import build_dataset

    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "Write a 30-word note."}\n{"prompt": "Write something."}\n')
    cfg = compose_lw("trainer=grpo", "data=prompts", f"data.path={path}", "trainer.init_from=x")
    with pytest.raises(UserError, match=r"1 of 2 prompts \(50%\) were dropped.*without a required length"):
        build_dataset(cfg, None, tmp_path / "run")
    cfg = compose_lw("trainer=grpo", "data=prompts", f"data.path={path}", "trainer.init_from=x", "data.max_drop_share=1")
    dataset, stats = build_dataset(cfg, build_tokenizer(cfg.model, cfg.cache_dir), tmp_path / "run")
    assert dataset["length"] == [30] and stats["dropped_no_length"] == 1 and stats["prompts_in"] == 2
    # With the judge's S_q as a reward, a prompt without a length is rewarded by quality alone: kept.
    cfg = compose_lw("trainer=grpo", "data=prompts", f"data.path={path}", "trainer.init_from=x",
                     "trainer.reward.quality=1.0")
    dataset, stats = build_dataset(cfg, build_tokenizer(cfg.model, cfg.cache_dir), tmp_path / "run2")
    assert dataset["length"] == [30, None] and stats["prompts_trained"] == 2 and "dropped_no_length" not in stats


def test_max_completion_length_follows_the_longest_required_length():
    from datasets import Dataset

    class WordTokenizer:
        def encode(self, text, add_special_tokens=True):
            return text.split() + (["<s>"] if add_special_tokens else [])

    rows = [{"prompt": [{"role": "user", "content": "Write about rivers in 10 words"}], "length": 10},
            {"prompt": [{"role": "user", "content": "Write about rivers in 400 words"}], "length": 400}]
    # One token per word (the numbers are tokens, not words: 12 tokens, 10 words), a margin of 1.5, 8 more.
    assert completion_budget(Dataset.from_list(rows), WordTokenizer(), context=None) == 400 * 12 // 10 * 3 // 2 + 8
    assert completion_budget(Dataset.from_list(rows), WordTokenizer(), context=300) == 300 - 7 - 16


@pytest.mark.parametrize("override, message", [
    ("trainer.init_from=null", "trainer=grpo starts from a trained model"),
    ("trainer.args.reward_weights=[1.0]", "set the weights as trainer.reward.length"),
    ("trainer.args.num_generations=3", "trainer.args:"),
    ("trainer.reward.length_kind=linear", r"trainer.reward.length_kind: Invalid value 'linear', expected one of "
                                         r"\[s_l, log_ratio\]"),
])
def test_bad_grpo_settings_fail_at_start(override, message):
    cfg = compose_lw("trainer=grpo", "trainer.init_from=runs/x/model", override)
    with pytest.raises(UserError, match=message):
        training_args(cfg, "unused", "none")


def test_one_grpo_step_keeps_the_users_completion_length_and_weighs_the_rewards(tmp_path, tiny_model):
    """trainer.args.max_completion_length as the user set it (not the computed budget, 19 tokens
    here), and trainer.reward.* handed to TRL as its reward_weights: the logged reward is the weighted sum."""
    from lw.models import build_model, build_tokenizer
    from lw.train.registry import trainer_for

    cfg = compose_lw("trainer=grpo", f"trainer.init_from={tiny_model}", "trainer.args.max_steps=1",
                     "trainer.args.logging_steps=1", "trainer.args.per_device_train_batch_size=8",
                     "trainer.args.num_generations=4", "trainer.args.max_completion_length=12",
                     "trainer.reward.length=2.0", "trainer.reward.repetition=0.5", "data.toy.num_samples=8", "data.toy.min_words=5",
                     "data.toy.max_words=5", "data.toy.round_lengths=false")
    tokenizer = build_tokenizer(cfg.model, cfg.cache_dir)
    trainer = trainer_for(cfg)
    dataset, _ = trainer.build_dataset(cfg, tokenizer, tmp_path)
    model = build_model(cfg.model, tokenizer, path=str(tiny_model), training=True)
    trainer.train(cfg, model, tokenizer, dataset, tmp_path, "none")
    (step,) = [h for h in json.loads((tmp_path / "train_log.json").read_text()) if "reward" in h]
    assert step["completions/max_length"] <= 12
    length, repetition = step["rewards/length_reward/mean"], step["rewards/repetition_penalty_reward/mean"]
    assert length > 0
    assert step["reward"] == pytest.approx(2.0 * length + 0.5 * repetition, abs=1e-5)


@pytest.mark.slow
def test_grpo_raises_the_mean_reward_on_the_tiny_model(tmp_path, tiny_model):
    # Requests of 5 words and room for 24 tokens: the random model writes too much, and learns to
    # write less within a few steps.
    run_dir = tmp_path / "run"
    run_lw("trainer=grpo", f"trainer.init_from={tiny_model}", "trainer.args.max_steps=20", "trainer.args.logging_steps=2",
           "trainer.args.learning_rate=1e-2", "+trainer.args.max_completion_length=24",
           "trainer.args.per_device_train_batch_size=32", "data.toy.min_words=5", "data.toy.max_words=5",
           "data.toy.round_lengths=false", "data.toy.num_samples=64", "eval.toy_ruler.lengths=[12]",
           "eval.toy_ruler.samples_per_prompt=1", "generation.max_new_tokens=16", f"hydra.run.dir={run_dir}",
           cwd=tmp_path)
    history = [h for h in json.loads((run_dir / "train_log.json").read_text()) if "reward" in h]
    rewards = [h["rewards/length_reward/mean"] for h in history]
    assert len(rewards) == 10
    print("mean length reward by logged step:", [round(r, 3) for r in rewards])
    assert sum(rewards[-3:]) / 3 > rewards[0] + 0.15
    assert (run_dir / "reward_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert (run_dir / "model" / "chat_template.jinja").exists()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["data/prompts_trained"] == 64 and "ruler/S_l" in metrics
    assert open(run_dir / "results.csv").readline().startswith("run,trainer") and ",grpo," in (run_dir / "results.csv").read_text()
    logged = read_offline_run(next((run_dir / "wandb").glob("offline-run-*")))
    assert logged["config"]["trainer"]["kind"] == "grpo" and logged["config"]["trainer"]["reward"]["length"] == 1.0
    assert logged["summary"]["train/rewards/length_reward/mean"] == pytest.approx(rewards[-1], abs=1e-6)


def test_committed_grpo_miniature_results_say_what_its_readme_says():
    """experiments/grpo/README.md reports these plateaus and S_l values for the default length reward
    (results/cpu) and beside them for trainer.reward.length_kind=log_ratio (results/cpu_log_ratio, the table
    of the two rewards); the committed results must give them."""
    from lw.report.analysis import load_sweep, summarize

    from helpers import REPO

    def found(folder):
        summary = summarize(load_sweep(REPO / "experiments" / "grpo" / "results" / folder))
        return {(r.trainer, r.cap, r.seed): (r.plateau_words, r.max_output_words, round(r.S_l, 1))
                for r in summary.itertuples()}

    starts = {("sft", 50, 0): (50, 50, 56.6), ("sft", 50, 1): (49, 50, 57.0),
              ("sft", 100, 0): (107.5, 122, 90.3), ("sft", 100, 1): (107, 125, 90.2)}
    s_l, log_ratio = found("cpu"), found("cpu_log_ratio")
    assert s_l == {**starts, ("grpo", 50, 0): (109, 143, 76.1), ("grpo", 50, 1): (114, 117, 80.3)}
    assert log_ratio == {**starts, ("grpo", 50, 0): (202, 212, 71.4), ("grpo", 50, 1): (164, 165, 77.1)}
    for runs in (s_l, log_ratio):
        assert all(runs[("grpo", 50, seed)][0] > 1.3 * 50 for seed in (0, 1))  # the hypothesis, as reported
    readme = (REPO / "experiments" / "grpo" / "README.md").read_text()
    for plateau, _, score in s_l.values():
        assert f"| {plateau:g} |" in readme and f"| {score} |" in readme
    rows = [line for line in readme.splitlines() if line.startswith(("| none (SFT cap-50", "| `s_l`", "| `log_ratio`"))]
    for (trainer, cap, seed), label in [(("sft", 50, 0), "none"), (("sft", 50, 1), "none"), (("grpo", 50, 0), "`s_l`"),
                                        (("grpo", 50, 1), "`s_l`")]:
        plateau, longest, score = s_l[(trainer, cap, seed)]
        assert any(r.startswith(f"| {label}") and f"| {seed} | {plateau:g} | {longest:g} |" in r and r.endswith(f"| {score} |")
                   for r in rows), (label, seed)
    for seed in (0, 1):
        plateau, longest, score = log_ratio[("grpo", 50, seed)]
        assert any(r.startswith("| `log_ratio`") and f"| {seed} | {plateau:g} | {longest:g} |" in r
                   and r.endswith(f"| {score} |") for r in rows), seed


@pytest.mark.slow
def test_grpo_under_deepspeed_zero3_on_two_cpu_ranks(tmp_path, tiny_model):
    """The same launcher as SFT and DPO: two ZeRO-3 ranks (gloo), then the driver's evaluation."""
    run_dir = tmp_path / "run"
    run_lw("trainer=grpo", f"trainer.init_from={tiny_model}", "launcher=deepspeed", "launcher.nproc_per_node=2",
           "launcher.deepspeed=zero3_offload", "trainer.args.max_steps=3", "trainer.args.logging_steps=1",
           "trainer.args.per_device_train_batch_size=8", "+trainer.args.max_completion_length=16",
           "data.toy.max_words=10", "data.toy.num_samples=32", "eval.toy_ruler.lengths=[12]",
           "eval.toy_ruler.samples_per_prompt=1", "generation.max_new_tokens=16", "logger=none",
           f"hydra.run.dir={run_dir}", cwd=tmp_path, timeout=600)
    logged = [json.loads(line) for line in (run_dir / "launch" / "train_log.jsonl").open()]
    assert [r["step"] for r in logged if "rewards/length_reward/mean" in r] == [1, 2, 3]
    assert (run_dir / "model" / "model.safetensors").exists() and (run_dir / "reward_curve.png").exists()
    assert json.loads((run_dir / "metrics.json").read_text())["ruler/n"] == 2
