"""Reinforcement learning on rewards such as the length score (docs/science.md section 6), with TRL's
GRPOTrainer: the `grpo` trainer of lw.train.registry.

Each step samples `num_generations` completions per prompt from the policy, scores them with the
rewards of `trainer.reward.*` (lw/train/rewards.py) and moves the policy towards the better ones of each group.
The prompts are writing instructions with a required length: the toy requests of `data=toy`
(lengths data.toy.min_words-max_words, not filtered by data.max_output_words, which only labels the
run with its starting model's cap), a JSONL of prompts (`data=prompts data.path=FILE`: `prompt`
and an optional `length`, as task=dpo_pairs reads them), or the user turns of a messages source
(LongWriter-6k's instructions). A prompt without a `length` gets the one its text asks for.

Generation inside training is TRL's: transformers `generate` by default (CPU, one GPU), vLLM with
`trainer.args.use_vllm: true` and `vllm_mode: colocate` or `server` on GPUs. Prompts are rendered by
the model's chat format, set as the tokenizer's chat template (the one saved with every model).
`max_completion_length` follows the longest required length unless trainer.args sets it: TRL's
default of 512 tokens would cap every long answer.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from lw.config import TrainerConfig
from lw.errors import UserError
from lw.models import attention_implementation, local_device
from lw.models.chat_format import get_chat_format
from lw.plan.trainer_plan import TrainerPlan
from lw.run_dir import checkpoint_dir, data_dir, grpo_log_file, reward_curve_file, train_prompts_file
from lw.train.fit import fit_and_save
from lw.train.registry import trainer_config, trl_args
from lw.train.rewards import RewardConfig
from lw.words import count_words

log = logging.getLogger(__name__)

GIB = 1024**3
# Completion tokens per required word, over what the prompts' own text takes: room to write a
# little more than asked, as S_l rewards up to the required length and then falls.
COMPLETION_MARGIN = 1.5


@dataclass
class GRPOTrainerConfig(TrainerConfig):
    """trainer=grpo: the common options and the rewards' weights (trainer.reward.length, ...)."""

    reward: RewardConfig = field(default_factory=RewardConfig)


CONFIG = GRPOTrainerConfig
DATA_SOURCES = ("toy", "prompts", "messages", "mix")  # of messages sources: their user turns are the prompts
DATA_HINT = ("it samples its own answers to prompts: set data=prompts data.path=FILE, data=toy, or a messages "
             "source whose user turns are the prompts")


def training_args(cfg, checkpoint_dir: Path, report_to: str) -> GRPOConfig:
    """GRPOConfig from `trainer.args`; a bad option or a setting GRPO cannot honour fails here, at start."""
    trainer = cfg.trainer
    if trainer.init_from is None and cfg.model.path is None:
        raise UserError("trainer=grpo starts from a trained model: set trainer.init_from=runs/NAME/model "
                        "(or model.path: a base or SFT checkpoint)")
    if cfg.data.pack_length is not None:
        raise UserError("trainer=grpo trains on its own completions, one per row: set data.pack_length=null")
    trainer_config(cfg)  # a misspelt or mistyped trainer option (trainer.reward.length_kind=x) fails here, at start
    args = trl_args(cfg, GRPOConfig, set_by_lw={
        "reward_weights": "the weights as trainer.reward.length, trainer.reward.quality, ..."})
    args.setdefault("use_cpu", not torch.cuda.is_available())
    if not cfg.get("dry_run"):  # a dry run checks against the workers' device instead (lw/plan/)
        attention_implementation(cfg.model, local_device(args["use_cpu"]), training=True)
    try:
        return GRPOConfig(output_dir=str(checkpoint_dir), seed=cfg.seed, data_seed=cfg.seed, report_to=report_to,
                          run_name=cfg.run_name, **args)
    except (TypeError, ValueError) as e:
        raise UserError(f"trainer.args: {e} (options are those of trl.GRPOConfig)") from None


def prompt_rows(cfg) -> tuple[list[dict], Counter]:
    """{"id", "prompt", "length"} per prompt of the configured source, and counts of where the lengths came from."""
    from lw.data.prompts import read_prompts, resolve_lengths

    data_cfg = cfg.data
    source = data_cfg.source
    if source == "toy":
        from lw.data import toy

        spec = data_cfg.toy
        rng = random.Random(cfg.seed)
        lengths = toy.requested_lengths(spec.min_words, spec.max_words, spec.round_lengths)
        rows = [{"id": f"toy-{i}", "prompt": toy.make_prompt(rng, rng.choice(list(spec.topics)), n), "length": n}
                for i, n in enumerate(rng.choice(lengths) for _ in range(spec.num_samples))]
    elif source == "prompts":
        if not data_cfg.path:
            raise UserError("data=prompts needs data.path=FILE: a JSONL of {\"prompt\": ..., \"length\": N}")
        rows = read_prompts(data_cfg.path, "data.path")
    elif source in ("messages", "mix"):
        from omegaconf import OmegaConf

        from lw.data import load_samples

        # The answers are not trained on: the output-length caps must not choose the prompts.
        uncapped = OmegaConf.merge(data_cfg, {"max_output_words": None, "min_output_words": None})
        rows = [{"id": f"{source}-{i}", "prompt": next(m["content"] for m in s["messages"] if m["role"] == "user"),
                 "length": None} for i, s in enumerate(load_samples(uncapped, cfg.seed, Counter()))]
    else:
        raise UserError(f"trainer=grpo cannot take its prompts from data.source={source}")
    _, counts = resolve_lengths(rows)
    return rows, Counter({stat: n for stat, n in counts.items() if n})


def build_dataset(cfg, tokenizer, run_dir: Path):
    """The prompts as one-turn conversations with their required `length`, and statistics about them.

    Without a judge a prompt that names no length cannot be rewarded: it is dropped and counted
    (the run stops when that is more than data.max_drop_share of the prompts).
    """
    from lw.data.drops import report_drops

    rows, counts = prompt_rows(cfg)
    stats = {"prompts_in": len(rows), **counts}
    if float(trainer_config(cfg).reward.quality) == 0:
        kept = [row for row in rows if row["length"] is not None]
        stats["dropped_no_length"] = len(rows) - len(kept)
        report_drops(stats, cfg.data)
        rows = kept
    if not rows:
        raise UserError("trainer=grpo: no prompt is left to train on")
    stats["prompts_trained"] = stats["sequences_packed"] = len(rows)
    stats["real_tokens"] = sum(len(tokenizer.encode(row["prompt"])) for row in rows)  # the prompts'
    stats["max_required_length"] = max((row["length"] or 0) for row in rows)
    dataset = Dataset.from_list([{"id": str(r["id"]), "prompt": [{"role": "user", "content": r["prompt"]}],
                                  "length": r["length"]} for r in rows])
    data_dir(run_dir).mkdir(parents=True, exist_ok=True)
    train_prompts_file(run_dir).write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    log.info("grpo prompts: %s", stats)
    return dataset, stats


def completion_budget(dataset, tokenizer, context: int | None) -> int:
    """Completion tokens for the longest required length: that many words at the prompts' own tokens
    per word, with a margin, within the model's context."""
    prompts = [row["prompt"][-1]["content"] for row in dataset]
    words = sum(count_words(p) for p in prompts)
    tokens = sum(len(tokenizer.encode(p, add_special_tokens=False)) for p in prompts)
    longest = max(n for n in dataset["length"] if n is not None) if any(dataset["length"]) else 512
    budget = math.ceil(longest * tokens / max(words, 1) * COMPLETION_MARGIN) + 8
    if context:
        longest_prompt = max(len(tokenizer.encode(p)) for p in prompts) + 16
        budget = min(budget, context - longest_prompt)
    return budget


# Prompt tokens the dry run allows for, beside the completion (prompts are not truncated).
PLAN_PROMPT_TOKENS = 1024


def plan(cfg, args, counts: dict, nnodes: int, hf_config=None) -> TrainerPlan:
    """For the dry run: each prompt gives num_generations training sequences of prompt + completion
    tokens; generation holds the gathered weights (or vLLM's share of the GPU) and a KV cache."""
    assumptions = []
    if "max_completion_length" not in cfg.trainer.args:
        assumptions.append(f"max_completion_length follows the prompts' longest required length at run time; "
                           f"planned at TRL's {args.max_completion_length} tokens (set "
                           f"trainer.args.max_completion_length to plan the real one)")
    sequence = PLAN_PROMPT_TOKENS + args.max_completion_length
    assumptions.append(f"a GRPO sequence is a prompt of up to {PLAN_PROMPT_TOKENS} tokens and its completion of "
                       f"up to {args.max_completion_length}; generation and the training pass do not overlap, "
                       f"so adding their memory overstates the peak")
    gpu: dict[str, float] = {}
    if hf_config is not None:
        layers, heads = hf_config.num_hidden_layers, hf_config.num_attention_heads
        kv_heads = getattr(hf_config, "num_key_value_heads", None) or heads
        head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads
        per_token = 2 * layers * kv_heads * head_dim * 2  # keys and values, 16-bit
        batch = args.generation_batch_size // max(args.world_size, 1) if args.generation_batch_size else \
            args.per_device_train_batch_size * args.steps_per_generation
        if args.use_vllm and args.vllm_mode == "colocate":
            gpu["generation_vllm_share"] = args.vllm_gpu_memory_utilization * cfg.plan.gpu_memory_gib * GIB
        elif not args.use_vllm:
            gpu["generation_kv_cache"] = per_token * sequence * batch
            if args.ds3_gather_for_generation:
                gpu["generation_gathered_bf16_weights"] = 2 * counts["total"]
    how = f"vLLM ({args.vllm_mode})" if args.use_vllm else "transformers generate"
    # TRL 1.16 scores the completion tokens through its fused LM head (GRPOTrainer.__init__ installs
    # it; _get_per_token_logps_and_entropies calls it): tiles, no full logits.
    shape = TrainerPlan(sequences_per_row=args.num_generations, tokens_per_sequence=sequence, full_logits=False,
                        gpu_per_rank=gpu, assumptions=assumptions,
                        generation=f"{args.num_generations} completions per prompt of up to "
                                   f"{args.max_completion_length} tokens, by {how}")
    if args.beta == 0:
        shape.reference = "none (beta = 0: no KL term, no reference model)"
        return shape
    shape.reference = "a reference model from the same checkpoint, ZeRO-3 sharded and offloaded like the policy"
    gpu["reference_largest_layer"] = 2 * counts["largest_layer"]
    shape.host_per_node = {"reference_bf16_params": 2 * counts["total"] / nnodes}
    return shape


def train(cfg, model, tokenizer, dataset, run_dir: Path, report_to: str, callbacks=None) -> Path:
    """Train, resuming from the last checkpoint in run_dir/checkpoints, and save the final model."""
    from lw.eval.judge import longbench_judge
    from lw.train.rewards import reward_functions

    args = training_args(cfg, checkpoint_dir(run_dir), report_to)
    if "max_completion_length" not in cfg.trainer.args:
        args.max_completion_length = completion_budget(dataset, tokenizer,
                                                       getattr(model.config, "max_position_embeddings", None))
        log.info("grpo: max_completion_length=%d tokens for required lengths up to %d words",
                 args.max_completion_length, max(n for n in dataset["length"] if n is not None))
    template = get_chat_format(cfg.model.chat_format).jinja
    if not template:
        raise UserError(f"trainer=grpo renders prompts with the chat format's template; {cfg.model.chat_format} "
                        f"has none: choose model.chat_format=llama3_1 or glm4")
    tokenizer.chat_template = template
    rewards = trainer_config(cfg).reward
    judge = longbench_judge(cfg) if float(rewards.quality) != 0 else None
    funcs, weights = reward_functions(rewards, args.max_completion_length, judge)
    args.reward_weights = weights
    trainer = GRPOTrainer(model=model, reward_funcs=funcs, args=args, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=callbacks)
    final = fit_and_save(trainer, tokenizer, run_dir, cfg.model.chat_format, cfg.model.stop_tokens)
    if trainer.is_world_process_zero():
        history = trainer.state.log_history
        grpo_log_file(run_dir).write_text(json.dumps(history, indent=1) + "\n")
        reward_curve(history, reward_curve_file(run_dir), cfg.run_name)
    return final


def reward_curve(history: list[dict], path: Path, title: str) -> Path | None:
    """Mean reward (and each reward's mean) per logged step."""
    points = [h for h in history if "reward" in h and "step" in h]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    steps = [h["step"] for h in points]
    rewards = [h["reward"] for h in points]
    ax.plot(steps, rewards, label="reward (weighted sum)", lw=1, alpha=0.5)
    # Each step sees a few prompts, whose required lengths move the mean: the trend is the average.
    window = max(1, len(rewards) // 6)
    trend = [sum(rewards[max(0, i - window + 1): i + 1]) / len(rewards[max(0, i - window + 1): i + 1])
             for i in range(len(rewards))]
    ax.plot(steps, trend, label=f"reward, mean of the last {window} logged steps", lw=2)
    components = sorted({k for h in points for k in h if k.startswith("rewards/") and k.endswith("/mean")})
    if len(components) > 1:
        for key in components:
            ax.plot(steps, [h.get(key) for h in points], label=key.split("/")[1], lw=1, alpha=0.7)
    ax.set_xlabel("step")
    ax.set_ylabel("mean reward")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
