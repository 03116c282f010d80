"""DPO with an SFT term on the chosen answer (docs/science.md section 5), with TRL's DPOTrainer.

The `dpo` trainer of lw.train.registry. The loss is `trainer.args.loss_type: [sigmoid, sft]`
weighted by `loss_weights: [1.0, λ]`: the DPO loss plus λ times the token-mean NLL of the chosen
answers. It starts from an SFT checkpoint (`trainer.init_from`, or `model.path`).

The reference log-probabilities come, by default, from one pass of the starting model over the
pairs before training (`precompute_ref_log_probs: true`): no second model is kept, and under
ZeRO-3 the pass runs on the same sharded, offloaded parameters. With `false`, TRL loads a
reference model from the same checkpoint and shards it like the policy (ZeRO-3 parameters stay
partitioned and offloaded), so no rank ever holds a full second copy.
"""

from __future__ import annotations

from pathlib import Path

import torch
from trl import DPOConfig, DPOTrainer

from lw.data.preference import build_preference_dataset
from lw.data.settings import max_length_of
from lw.errors import UserError
from lw.models import attention_implementation, local_device
from lw.plan.trainer_plan import TrainerPlan
from lw.run_dir import checkpoint_dir
from lw.train.fit import fit_and_save
from lw.train.registry import trainer_config, trl_args

TOKENIZED = {"prompt_ids", "chosen_ids", "rejected_ids"}
DATA_SOURCES = ("pairs", "mix")  # a mix of pair sources
DATA_HINT = "set data=pairs data.path=FILE (a pairs.jsonl of task=dpo_pairs) or a data.mix of pair sources"


class LwDPOTrainer(DPOTrainer):
    """DPOTrainer on pairs lw has tokenized with the model's own chat format (lw/data/preference.py)."""

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        if TOKENIZED <= set(dataset.column_names):
            return dataset  # already ids, rendered exactly as SFT renders the same conversation
        return super()._prepare_dataset(dataset, processing_class, args, dataset_name)


def training_args(cfg, checkpoint_dir: Path, report_to: str) -> DPOConfig:
    """DPOConfig from `trainer.args`; a bad option or a setting DPO cannot honour fails here, at start."""
    trainer = cfg.trainer
    if trainer.init_from is None and cfg.model.path is None:
        raise UserError("trainer=dpo starts from an SFT model: set trainer.init_from=runs/NAME/model "
                         "(or model.path)")
    trainer_config(cfg)  # a misspelt or mistyped trainer option fails here, at start
    args = trl_args(cfg, DPOConfig, set_by_lw={
        "max_length": "data.max_length (a longer pair is dropped and counted, never truncated)"})
    args.setdefault("use_cpu", not torch.cuda.is_available())
    if not cfg.get("dry_run"):  # a dry run checks against the workers' device instead (lw/plan/)
        attention_implementation(cfg.model, local_device(args["use_cpu"]), training=True)
    try:
        return DPOConfig(output_dir=str(checkpoint_dir), seed=cfg.seed, data_seed=cfg.seed, report_to=report_to,
                         run_name=cfg.run_name, max_length=max_length_of(cfg.data), **args)
    except (TypeError, ValueError) as e:
        raise UserError(f"trainer.args: {e} (options are those of trl.DPOConfig)") from None


def plan(cfg, args, counts: dict, nnodes: int, hf_config=None) -> TrainerPlan:
    """For the dry run: a pair is two sequences (chosen and rejected in one batch), and the reference."""
    if args.precompute_ref_log_probs:
        return TrainerPlan(sequences_per_example=2, full_logits=False,
                           reference="precomputed: one forward pass of the starting model over every pair before "
                                     "training (DeepSpeed inference engine on the same ZeRO-3 shards); no second "
                                     "model in memory")
    # A second ZeRO-3 model, parameters offloaded like the policy's: 16-bit weights on the host, and
    # its largest layer gathered on the GPU during its forward pass.
    return TrainerPlan(sequences_per_example=2, full_logits=False,
                       reference="a reference model loaded from the same checkpoint, ZeRO-3 sharded and offloaded "
                                 "like the policy (no full copy per rank)",
                       gpu_per_rank={"reference_largest_layer": 2 * counts["largest_layer"]},
                       host_per_node={"reference_bf16_params": 2 * counts["total"] / nnodes})


def build_dataset(cfg, tokenizer, run_dir: Path):
    return build_preference_dataset(cfg, tokenizer, run_dir)


def train(cfg, model, tokenizer, dataset, run_dir: Path, report_to: str, callbacks=None) -> Path:
    """Train, resuming from the last checkpoint in run_dir/checkpoints, and save the final model."""
    args = training_args(cfg, checkpoint_dir(run_dir), report_to)
    trainer = LwDPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                           callbacks=callbacks)
    return fit_and_save(trainer, tokenizer, run_dir, cfg.model.chat_format, cfg.model.stop_tokens)
