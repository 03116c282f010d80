"""Supervised fine-tuning with TRL's SFTTrainer on the project's own tokenized data.

The `sft` trainer of lw.train.registry: training_args, build_dataset and train.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from trl import SFTConfig, SFTTrainer

from lw.config import TrainerConfig
from lw.data import build_sft_dataset, max_length_of
from lw.data.packing import PackCollator
from lw.errors import UserError
from lw.models import attention_implementation, local_device, use_attention
from lw.plan.trainer_plan import TrainerPlan
from lw.run_dir import checkpoint_dir
from lw.train.fit import fit_and_save
from lw.train.loss import LossWeighting, count_items, token_nll, weighted_loss
from lw.train.registry import trainer_config, trl_args


@dataclass
class SFTTrainerConfig(TrainerConfig):
    """trainer=sft: the common options and the loss's (lw/train/loss.py)."""

    # Weight of each answer's end-of-sequence token in the loss: a tiny model learns when to stop from it.
    eos_loss_weight: float = 1.0
    loss_weighting: LossWeighting = LossWeighting.token_mean
    # The NLL from TRL's fused LM head (log-probabilities in tiles, no tokens x vocabulary logits);
    # false: from the full logits, the old path, kept for comparison (lw/train/loss.py).
    fused_lm_head: bool = True


CONFIG = SFTTrainerConfig
DATA_SOURCES = ("toy", "messages", "mix")
DATA_HINT = ("give it conversations (data=jsonl data.path=FILE, a data.mix of them, or data=toy); "
             "preference pairs train with trainer=dpo, prompts alone with trainer=grpo")


class LwSFTTrainer(SFTTrainer):
    """SFTTrainer with a choice of loss weighting (lw/train/loss.py) and a heavier EOS token.

    The global batch's item count (tokens, sequences or packs) is `num_items_in_batch`, so the
    Trainer's own gradient-accumulation and data-parallel bookkeeping stays exact for every
    weighting; with token_mean and no EOS weight the loss equals TRL's own. The per-token NLL comes
    from TRL's fused LM head (which SFTTrainer installs on the model), or with `fused_lm_head=False`
    from the full logits.
    """

    def __init__(self, *args, eos_loss_weight: float = 1.0, loss_weighting: str = "token_mean",
                 fused_lm_head: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.eos_loss_weight = eos_loss_weight
        self.loss_weighting = loss_weighting
        self.fused_lm_head = fused_lm_head
        if fused_lm_head:
            check_fused_head(self.model)

    @property
    def loss_is_scaled_for_ga(self) -> bool | None:
        # Sequence and pack means always divide by the global item count counted below; token_mean
        # follows the Trainer's own rule (scaled when the model takes num_items_in_batch).
        return True if self.loss_weighting != "token_mean" else None

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device):
        if self.loss_weighting == "token_mean" or not batch_samples or "labels" not in batch_samples[0]:
            return super()._get_num_items_in_batch(batch_samples, device)
        count = sum(count_items(b["labels"], self.loss_weighting, b.get("position_ids"), b.get("pack_ids"))
                    for b in batch_samples).to(device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            count = self.accelerator.gather(count).sum()
        return count

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        pack_ids = inputs.pop("pack_ids", None)
        labels = inputs.pop("labels")
        nll, outputs = forward_nll(model, inputs, labels, self.fused_lm_head)
        if self.fused_lm_head:
            self._log_token_metrics(outputs)
        loss = weighted_loss(nll, labels, weighting=self.loss_weighting,
                             eos_token_id=self.processing_class.eos_token_id, eos_weight=self.eos_loss_weight,
                             num_items_in_batch=num_items_in_batch, position_ids=inputs.get("position_ids"),
                             pack_ids=pack_ids)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            # The denominator counts every rank's items and DDP averages gradients over ranks.
            loss = loss * self.accelerator.num_processes
        if return_outputs and self.fused_lm_head:  # evaluation asking for logits: as TRL, one more forward
            with torch.no_grad():
                outputs = model(**inputs, use_cache=False)
        return (loss, outputs) if return_outputs else loss

    def _log_token_metrics(self, outputs) -> None:
        """TRL's `entropy` and `mean_token_accuracy`, from the fields its fused head computes anyway."""
        mode = "train" if self.model.training else "eval"
        valid = self.accelerator.gather_for_metrics(outputs.label_mask.sum()).sum()
        for name, per_token in (("entropy", outputs.entropy), ("mean_token_accuracy", outputs.is_top1)):
            if per_token is not None:
                total = self.accelerator.gather_for_metrics(per_token.detach().float().sum()).sum()
                self._metrics[mode][name].append((total / valid).item() if valid > 0 else 0.0)


def forward_nll(model, inputs: dict, labels: torch.Tensor, fused_lm_head: bool):
    """(each position's NLL of its next label [batch, time - 1], the model's outputs): through TRL's
    fused LM head (installed by `trl.trainer.utils.add_fused_lm_head`, as SFTTrainer does), or
    from the full logits."""
    # use_cache=False: a cache would let packed sequences see each other
    if fused_lm_head:
        outputs = model(**inputs, labels=labels, use_cache=False, fused_lm_head=True)
        return -outputs.log_probs, outputs  # zero where there is no target
    outputs = model(**inputs, use_cache=False)
    return token_nll(outputs.logits, labels), outputs


def check_fused_head(model) -> None:
    """Refuse, at start, a model whose output layer TRL's fused LM head cannot take.

    The fused head multiplies the backbone's last hidden states by `get_output_embeddings().weight`
    (gathering it under ZeRO-3; a head tied to the input embeddings is the same parameter) and
    applies the logit scalings and soft-capping it reads from the config (`final_logit_softcapping`,
    `logit_scale`, `logits_scaling`, ...). So the model's logits must be exactly its `lm_head`, a
    linear layer: a head with more in it (BERT-style dense + norm before the projection, whose
    `get_output_embeddings` is only the last linear layer), a custom module or none would be
    silently wrong or fail."""
    head = model.get_output_embeddings()
    if isinstance(head, torch.nn.Linear) and head is getattr(model, "lm_head", None):
        return
    what = ("no output layer" if head is None else
            f"an output layer ({type(getattr(model, 'lm_head', head)).__name__}) that is more than the linear "
            f"projection {type(head).__name__}")
    raise UserError(f"trainer.fused_lm_head=true: {type(model).__name__} has {what}, which TRL's fused LM head "
                    f"cannot take (it needs the logits to be lm_head, an nn.Linear); set "
                    f"trainer.fused_lm_head=false (full logits: much more memory at long lengths)")


def sft_config(cfg, checkpoint_dir: Path, report_to: str, args: dict | None = None, seed: int | None = None,
               where: str = "trainer.args", pack_length: int | None = None) -> SFTConfig:
    """SFTConfig from `trainer.args` (or `args`); an unknown or mistyped option fails here, at start.

    With data.pack_length the rows are packs made by lw.data (TRL's own packing, which packs
    each batch of 1,000 samples on its own and truncates silently, stays off).
    """
    args = trl_args(cfg, SFTConfig, args, where,
                    {"max_length": "data.max_length (data.pack_length when packing)"})
    args.setdefault("use_cpu", not torch.cuda.is_available())
    seed = cfg.seed if seed is None else seed
    pack_length = pack_length or cfg.data.get("pack_length")
    if pack_length is not None and (args.get("packing") or args.get("padding_free")):
        raise UserError(f"{where}.packing/padding_free: set data.pack_length instead; lw packs the data itself")
    max_length = pack_length if pack_length is not None else max_length_of(cfg.data)
    if not cfg.get("dry_run"):  # a dry run checks against the workers' device instead (lw/plan/)
        attention_implementation(cfg.model, local_device(args["use_cpu"]), packing=pack_length is not None,
                                 training=True)
    try:
        return SFTConfig(output_dir=str(checkpoint_dir), seed=seed, data_seed=seed, report_to=report_to,
                         run_name=cfg.run_name,  # the W&B config holds both; they must agree
                         max_length=max_length, completion_only_loss=True, **args)
    except TypeError as e:
        raise UserError(f"{where}: {e} (options are those of trl.SFTConfig)") from None


def training_args(cfg, checkpoint_dir: Path, report_to: str) -> SFTConfig:
    trainer_config(cfg)  # a misspelt or mistyped trainer option fails here, at start
    return sft_config(cfg, checkpoint_dir, report_to)


def plan(cfg, args, counts: dict, nnodes: int, hf_config=None) -> TrainerPlan:
    """For the dry run: the loss's memory is the fused LM head's, or the full logits' with
    trainer.fused_lm_head=false."""
    return TrainerPlan(full_logits=not trainer_config(cfg).fused_lm_head)


def build_dataset(cfg, tokenizer, run_dir: Path):
    """The tokenized (and, with data.pack_length, packed) SFT set and its statistics."""
    return build_sft_dataset(cfg, tokenizer, run_dir)


def build_trainer(cfg, model, tokenizer, dataset, run_dir: Path, report_to: str, callbacks=None) -> LwSFTTrainer:
    """The trainer; a packed dataset (rows with seq_lengths) gets the padding-free pack collator."""
    args = training_args(cfg, checkpoint_dir(run_dir), report_to)
    packed = "seq_lengths" in dataset.column_names
    collator = PackCollator(pad_token_id=tokenizer.pad_token_id) if packed else None
    # The pipeline builds the model as for generation; packs may want another implementation.
    use_attention(model, attention_implementation(cfg.model, local_device(args.use_cpu), packing=packed,
                                                  training=True))
    options = trainer_config(cfg)
    return LwSFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                        data_collator=collator, eos_loss_weight=options.eos_loss_weight,
                        loss_weighting=options.loss_weighting, fused_lm_head=options.fused_lm_head,
                        callbacks=callbacks)


def train(cfg, model, tokenizer, dataset, run_dir: Path, report_to: str, callbacks=None) -> Path:
    """Train, resuming from the last checkpoint in run_dir/checkpoints, and save the final model."""
    trainer = build_trainer(cfg, model, tokenizer, dataset, run_dir, report_to, callbacks)
    return fit_and_save(trainer, tokenizer, run_dir, cfg.model.chat_format, cfg.model.stop_tokens)
