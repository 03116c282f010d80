"""trainer=dpo: preference pairs rendered with the project's chat formats, TRL's DPOTrainer with an
SFT term, bad pairs named, and a margin that rises on a toy preference set."""

import json
import random

import pytest
from transformers import TrainerCallback

from lw.data.preference import build_preference_dataset, tokenize_pairs
from lw.models import build_model
from lw.models.chat_format import get_chat_format
from lw.models.tiny import tiny_tokenizer
from lw.toy_words import TOPIC_NOUNS

from helpers import compose_lw

PROMPT = "Write a 12-word note about rivers."
CHOSEN = "the quiet river carries the bank . the old stream meets the delta ."
REJECTED = "the river ."


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return tiny_tokenizer(tmp_path_factory.mktemp("cache"))


def write_pairs(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def dpo_cfg(path, *overrides):
    return compose_lw("trainer=dpo", "data=pairs", f"data.path={path}", "trainer.init_from=unused", *overrides)


@pytest.mark.parametrize("name", ["glm4", "llama3_1"])
def test_dpo_trains_on_the_sft_tokens_of_the_same_conversation(name, tokenizer, tmp_path):
    """The ids (and loss mask) TRL's collator builds for prompt + chosen equal the SFT tokenization of
    the same conversation: EOS after the answer, one BOS, loss on the answer only."""
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    sft_ids, sft_mask = get_chat_format(name).tokenize(
        tokenizer, [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": CHOSEN}])
    (row,) = tokenize_pairs([{"prompt": [{"role": "user", "content": PROMPT}], "chosen": CHOSEN,
                              "rejected": REJECTED}], name, tokenizer)
    batch = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id)([row])
    chosen_ids = batch["input_ids"][0][batch["attention_mask"][0].bool()].tolist()
    chosen_mask = batch["completion_mask"][0][batch["attention_mask"][0].bool()].tolist()
    assert chosen_ids == sft_ids and chosen_mask == sft_mask
    assert chosen_ids[-1] == tokenizer.eos_token_id and chosen_ids.count(tokenizer.bos_token_id) <= 1
    assert chosen_ids.count(tokenizer.eos_token_id) == 1
    rejected_ids, _ = get_chat_format(name).tokenize(
        tokenizer, [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": REJECTED}])
    assert batch["input_ids"][1][batch["attention_mask"][1].bool()].tolist() == rejected_ids


def test_hub_style_conversations_are_read_as_their_last_answer(tokenizer, tmp_path):
    path = write_pairs(tmp_path / "pairs.jsonl", [{
        "prompt": PROMPT,
        "chosen": [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": CHOSEN}],
        "rejected": [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": REJECTED}]}])
    dataset, stats = build_preference_dataset(dpo_cfg(path), tokenizer, tmp_path / "run")
    assert stats["pairs"] == 1 and len(dataset) == 1
    assert json.loads((tmp_path / "run" / "data" / "pairs.jsonl").read_text())["chosen"] == CHOSEN


@pytest.mark.parametrize("row, field", [
    ({"prompt": PROMPT, "chosen": CHOSEN}, "rejected"),
    ({"prompt": PROMPT, "chosen": "  ", "rejected": REJECTED}, "chosen"),
    ({"prompt": "", "chosen": CHOSEN, "rejected": REJECTED}, "prompt"),
    ({"chosen": CHOSEN, "rejected": REJECTED}, "prompt"),
])
def test_a_bad_pair_is_named_by_file_line_and_field(row, field, tokenizer, tmp_path):
    good = {"prompt": PROMPT, "chosen": CHOSEN, "rejected": REJECTED}
    path = write_pairs(tmp_path / "pairs.jsonl", [good, row])
    with pytest.raises(ValueError, match=rf"pairs.jsonl:2: field '{field}'"):
        build_preference_dataset(dpo_cfg(path), tokenizer, tmp_path / "run")
    # One pair of two dropped is far over data.max_drop_share: allowed here, the count is the point.
    _, stats = build_preference_dataset(dpo_cfg(path, "data.on_bad_sample=drop", "data.max_drop_share=1"), tokenizer,
                                        tmp_path / "run2")
    assert stats["pairs"] == 1 and stats["pairs_in"] == 2
    assert sum(v for k, v in stats.items() if k.startswith("dropped_")) == 1


def test_a_pair_longer_than_max_length_is_dropped_and_counted_never_truncated(tokenizer, tmp_path):
    long = " ".join(["the river"] * 40)
    path = write_pairs(tmp_path / "pairs.jsonl", [{"prompt": PROMPT, "chosen": CHOSEN, "rejected": REJECTED},
                                                  {"prompt": PROMPT, "chosen": long, "rejected": REJECTED}])
    cfg = dpo_cfg(path, "data.max_length=40", "data.max_drop_share=1")  # 1 of 2 dropped: allowed here
    dataset, stats = build_preference_dataset(cfg, tokenizer, tmp_path / "run")
    assert stats["dropped_over_max_length"] == 1 and len(dataset) == 1
    assert max(len(r["prompt_ids"]) + len(r["chosen_ids"]) for r in dataset) <= 40


def test_max_length_holds_the_longer_answer_and_keeps_a_pair_of_exactly_max_length(tokenizer, tmp_path):
    """A pair's length is its prompt and the longer of its answers: a long *rejected* answer is as
    truncated by TRL as a long chosen one, so it drops the pair too; exactly data.max_length fits."""
    long = " ".join(["the river"] * 40)
    path = write_pairs(tmp_path / "pairs.jsonl", [{"prompt": PROMPT, "chosen": CHOSEN, "rejected": REJECTED},
                                                  {"prompt": PROMPT, "chosen": REJECTED, "rejected": long}])
    cfg = dpo_cfg(path)
    (row,) = tokenize_pairs([{"prompt": [{"role": "user", "content": PROMPT}], "chosen": CHOSEN,
                              "rejected": REJECTED}], cfg.model.chat_format, tokenizer)
    exact = len(row["prompt_ids"]) + len(row["chosen_ids"])
    assert len(row["chosen_ids"]) > len(row["rejected_ids"])
    dataset, stats = build_preference_dataset(dpo_cfg(path, f"data.max_length={exact}", "data.max_drop_share=1"),
                                              tokenizer, tmp_path / "run")
    assert stats["pairs"] == 1 and stats["dropped_over_max_length"] == 1
    assert dataset[0]["chosen_ids"] == row["chosen_ids"] and stats["longest_pair_tokens"] == exact
    # The planner's tokens: a pair is two sequences, each with the prompt.
    assert stats["real_tokens"] == 2 * len(row["prompt_ids"]) + len(row["chosen_ids"]) + len(row["rejected_ids"])
    with pytest.raises(ValueError, match=f"no preference pair is left .* data.max_length={exact - 1}"):
        build_preference_dataset(dpo_cfg(path, f"data.max_length={exact - 1}", "data.max_drop_share=1"),
                                 tokenizer, tmp_path / "run2")


def test_dpo_options_are_validated_at_start(tmp_path):
    from lw.train.registry import trainer_for

    path = write_pairs(tmp_path / "pairs.jsonl", [])
    args = trainer_for(dpo_cfg(path)).training_args(dpo_cfg(path), tmp_path, "none")
    assert args.loss_type == ["sigmoid", "sft"] and args.loss_weights == [1.0, 1.0]
    assert args.max_length == 1024 and args.precompute_ref_log_probs
    with pytest.raises(ValueError, match="trl.DPOConfig"):
        trainer_for(dpo_cfg(path)).training_args(dpo_cfg(path, "trainer.args.betta=0.2"), tmp_path, "none")
    with pytest.raises(ValueError, match="data.max_length"):
        trainer_for(dpo_cfg(path)).training_args(dpo_cfg(path, "trainer.args.max_length=99"), tmp_path, "none")
    with pytest.raises(ValueError, match="trainer.init_from"):
        trainer_for(dpo_cfg(path)).training_args(dpo_cfg(path, "trainer.init_from=null"), tmp_path, "none")
    with pytest.raises(ValueError, match="loss_weighting"):
        trainer_for(dpo_cfg(path)).training_args(dpo_cfg(path, "trainer.loss_weighting=sequence_mean"), tmp_path,
                                                 "none")


def toy_preferences(n: int, seed: int) -> list[dict]:
    """Chosen answers have the asked length; rejected ones stop at a third of it."""
    from lw.data import toy

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        topic, words = rng.choice(sorted(TOPIC_NOUNS)), rng.choice([12, 15, 20, 25, 30])
        rows.append({"prompt": toy.make_prompt(rng, topic, words), "chosen": toy.write_answer(rng, topic, words),
                     "rejected": toy.write_answer(rng, topic, words // 3)})
    return rows


@pytest.mark.slow
def test_reward_margin_rises_on_a_toy_preference_set(tokenizer, tmp_path):
    from lw.train.registry import trainer_for

    path = write_pairs(tmp_path / "pairs.jsonl", toy_preferences(64, seed=0))
    cfg = dpo_cfg(path, "trainer.args.max_steps=24", "trainer.args.per_device_train_batch_size=8",
                  "trainer.args.logging_steps=4", "trainer.args.learning_rate=3e-3")
    start = tmp_path / "start"
    build_model(cfg.model, tokenizer, seed=0).save_pretrained(start)  # the "SFT" checkpoint DPO starts from
    tokenizer.save_pretrained(start)
    cfg.trainer.init_from = str(start)
    trainer = trainer_for(cfg)
    dataset, _ = trainer.build_dataset(cfg, tokenizer, tmp_path / "run")
    model = build_model(cfg.model, tokenizer, path=str(start))
    logged = LogRecorder()
    final = trainer.train(cfg, model, tokenizer, dataset, tmp_path / "run", "none", callbacks=[logged])
    logs = [h for h in logged.logs if "rewards/margins" in h]
    assert len(logs) == 6
    assert logs[-1]["rewards/margins"] > logs[0]["rewards/margins"] + 0.5
    assert logs[-1]["rewards/accuracies"] >= 0.9
    assert {"rewards/chosen", "rewards/rejected", "logps/chosen"} <= set(logs[-1])
    assert (final / "model.safetensors").exists()


@pytest.fixture(scope="module")
def one_batch(tokenizer, tmp_path_factory):
    """Four toy pairs, one batch of them, and the tiny "SFT" model DPO starts from."""
    tmp = tmp_path_factory.mktemp("one_batch")
    path = write_pairs(tmp / "pairs.jsonl", toy_preferences(4, seed=1))
    start = tmp / "start"
    cfg = dpo_cfg(path)
    build_model(cfg.model, tokenizer, seed=0).save_pretrained(start)
    tokenizer.save_pretrained(start)
    return path, start


def first_step_loss(one_batch, tokenizer, tmp_path, loss_type, loss_weights) -> tuple[float, float]:
    """The logged loss of one DPO step (learning rate 0) on the whole batch, and the token-mean NLL of
    its chosen answers computed here by hand from the starting model."""
    import torch

    from lw.train.registry import trainer_for

    path, start = one_batch
    cfg = dpo_cfg(path, "trainer.args.max_steps=1", "trainer.args.learning_rate=0", "trainer.args.logging_steps=1",
                  "trainer.args.per_device_train_batch_size=4", f"trainer.init_from={start}")
    cfg.trainer.args.loss_type, cfg.trainer.args.loss_weights = list(loss_type), list(loss_weights)
    trainer = trainer_for(cfg)
    dataset, _ = trainer.build_dataset(cfg, tokenizer, tmp_path / "run")
    model = build_model(cfg.model, tokenizer, path=str(start))
    logged = LogRecorder()
    trainer.train(cfg, model, tokenizer, dataset, tmp_path / "run", "none", callbacks=[logged])
    (loss,) = [h["loss"] for h in logged.logs if "loss" in h]
    reference = build_model(cfg.model, tokenizer, path=str(start)).eval()
    nll, tokens = 0.0, 0
    with torch.no_grad():
        for row in dataset:
            ids = torch.tensor([row["prompt_ids"] + row["chosen_ids"]])
            logps = reference(input_ids=ids, use_cache=False).logits[0, :-1].float().log_softmax(-1)
            targets = ids[0, 1:]
            answer = slice(len(row["prompt_ids"]) - 1, None)
            nll -= logps[answer].gather(-1, targets[answer, None]).sum().item()
            tokens += len(row["chosen_ids"])
    return loss, nll / tokens


@pytest.mark.parametrize("experiment", [None, "longwriter_glm4_9b_dpo", "longwriter_llama3_1_8b_dpo"])
def test_the_sft_term_adds_lambda_times_the_chosen_nll_to_the_loss(experiment, one_batch, tokenizer, tmp_path):
    """A real DPOTrainer step with the loss of conf/trainer/dpo.yaml or of a paper experiment: at the
    first step the policy is its own reference, so the DPO term is log 2, and the SFT term adds λ
    times the token-mean NLL of the chosen answers; with λ = 0 (the slip) the loss is log 2 alone."""
    import math

    args = compose_lw(*([f"experiment={experiment}"] if experiment else ["trainer=dpo"])).trainer.args
    assert list(args.loss_type) == ["sigmoid", "sft"]
    lam = args.loss_weights[1]
    loss, nll = first_step_loss(one_batch, tokenizer, tmp_path, args.loss_type, args.loss_weights)
    assert lam > 0 and nll > 1
    assert loss == pytest.approx(math.log(2) + lam * nll, abs=2e-3)
    without, _ = first_step_loss(one_batch, tokenizer, tmp_path / "lambda0", ["sigmoid", "sft"], [1.0, 0.0])
    assert without == pytest.approx(math.log(2), abs=1e-4)


class LogRecorder(TrainerCallback):
    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs or {}))


@pytest.mark.parametrize("name, parameters", [("longwriter_glm4_9b_dpo", 9.40e9), ("longwriter_llama3_1_8b_dpo", 8.03e9)])
def test_paper_dpo_plans_offline(name, parameters, tmp_path):
    from helpers import training_plan

    plan = training_plan(compose_lw(f"experiment={name}"), tmp_path)
    assert plan["model"]["parameters"] == pytest.approx(parameters, rel=0.01)
    assert plan["trainer"]["kind"] == "dpo" and plan["trainer"]["sequences_per_example"] == 2
    assert plan["trainer"]["reference"].startswith("precomputed")
    # No full logits (TRL's fused LM head): even two 32k sequences a pair fit 8 x 80 GiB without offload.
    assert plan["launcher"]["world_size"] == 8 and plan["deepspeed"]["choice"]["chosen"] == "zero3"
    assert plan["deepspeed"]["offload_param"] == "none"
    assert plan["data"]["sequences"] == 54000 and plan["data"]["total_steps"] > 0
    gpu = plan["memory"]["gpu_per_rank_gib"]  # TRL's fused LM head: a tile and the head's fp32 gradients
    assert "activations_logits_and_loss" not in gpu and 0 < gpu["activations_fused_lm_head"] < 5
    assert plan["memory"]["fits_gpu"]
    loaded = training_plan(compose_lw(f"experiment={name}", "trainer.args.precompute_ref_log_probs=false"), tmp_path)
    # The reference model is sharded like the policy: its 16-bit shards on the GPUs without offload,
    # on the host with it.
    gpu = loaded["memory"]["gpu_per_rank_gib"]
    assert gpu["reference_params_partition"] == pytest.approx(2 * parameters / 8 / 2**30, rel=0.01)
    assert loaded["memory"]["gpu_per_rank_total_gib"] > plan["memory"]["gpu_per_rank_total_gib"]
    offloaded = training_plan(compose_lw(f"experiment={name}", "trainer.args.precompute_ref_log_probs=false",
                                      "launcher.deepspeed=zero3_offload"), tmp_path)
    host = offloaded["memory"]["host_per_node_gib"]
    assert host["reference_bf16_params"] == pytest.approx(2 * parameters / 2**30, rel=0.01)
    assert "reference_params_partition" not in offloaded["memory"]["gpu_per_rank_gib"]
    # Each node's host holds the 16-bit reference shards of its own ranks: half of it on each of two nodes.
    two = training_plan(compose_lw(f"experiment={name}", "trainer.args.precompute_ref_log_probs=false",
                                "launcher.nnodes=2", "launcher.master_port=29500",
                                "launcher.deepspeed=zero3_offload"), tmp_path)
    assert two["memory"]["host_per_node_gib"]["reference_bf16_params"] == pytest.approx(parameters / 2**30, rel=0.01)


def test_committed_dpo_miniature_results_say_what_its_readme_says():
    """experiments/dpo/README.md reports these S_l values; the committed results must give them."""
    from lw.report.analysis import load_sweep, summarize

    from helpers import REPO

    summary = summarize(load_sweep(REPO / "experiments" / "dpo" / "results" / "cpu"))
    s_l = {(r.trainer, r.seed): round(r.S_l, 2) for r in summary.itertuples()}
    assert s_l == {("sft", 0): 90.25, ("sft", 1): 90.18, ("dpo", 0): 89.91, ("dpo", 1): 92.78}
    readme = (REPO / "experiments" / "dpo" / "README.md").read_text()
    for value in s_l.values():
        assert f"{value:.2f}" in readme


def test_committed_five_seed_dpo_miniature_says_what_its_readme_says():
    """experiments/dpo/README.md's 5-seed table and mean changes with their intervals are what
    lw-compare's pairing gives on results/cpu_5seeds (each DPO run with the SFT run its config names)."""
    import json

    from lw.report.seeds import detected_pairs, load_runs, paired_changes

    from helpers import REPO

    results = REPO / "experiments" / "dpo" / "results" / "cpu_5seeds"
    runs = load_runs(results, "toy_ruler")
    per_seed, changes = paired_changes(runs, detected_pairs(runs))
    rows = (REPO / "experiments" / "dpo" / "README.md").read_text().splitlines()
    for seed in range(5):
        pairs = json.loads((results / f"pairs_stats-seed-{seed}.json").read_text())["pairs"]
        s_l, s_q = (per_seed[(per_seed["seed"] == seed) & (per_seed["metric"] == m)].iloc[0] for m in ("S_l", "S_q"))
        assert any(r.startswith(f"| {seed} | {pairs} | {s_l.start_value:.2f} | {s_l.derived_value:.2f} | {s_l.change:+.2f} "
                                f"| {s_q.start_value:.2f} | {s_q.derived_value:.2f} |") for r in rows), seed
    means = {m: changes[changes["metric"] == m].iloc[0] for m in ("S_l", "S_q")}
    assert (means["S_l"]["n"], means["S_q"]["n"]) == (5, 5)
    mean_row = next(r for r in rows if r.startswith("| **mean change (95% CI)** |"))
    for change in means.values():
        assert f"**{change['mean']:+.2f} ({change['ci95_low']:+.2f}, {change['ci95_high']:+.2f})**" in mean_row


def test_long_pairs_mix_with_a_general_set_by_count(tokenizer, tmp_path):
    """The paper mixed its long-writing pairs with general chat pairs: here a local stand-in for a
    binarized hub set (conversations as answers), taken by count, the long pairs whole."""
    long = write_pairs(tmp_path / "long.jsonl", toy_preferences(6, seed=2))
    general = write_pairs(tmp_path / "general.jsonl", [
        {"prompt": f"Write about trains in {n} words.",
         "chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "the old train ."}],
         "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "the train ."}]}
        for n in range(10, 30)])
    cfg = compose_lw("trainer=dpo", "data=pairs_mix", f"data.mix.long.path={long}", "data.mix.general.hub_id=null",
                     f"data.mix.general.path={general}", "data.mix.general.count=5", "trainer.init_from=unused")
    dataset, stats = build_preference_dataset(cfg, tokenizer, tmp_path / "run")
    assert (stats["mix_long_pairs"], stats["mix_general_pairs"], stats["dropped_not_in_mix"]) == (6, 5, 15)
    assert len(dataset) == 11 == stats["pairs"]
