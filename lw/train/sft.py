"""Supervised fine-tuning with TRL's SFTTrainer on the project's own tokenized data."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers.trainer_utils import get_last_checkpoint
from trl import SFTConfig, SFTTrainer

from lw.train.loss import weighted_lm_loss

log = logging.getLogger(__name__)


class LwSFTTrainer(SFTTrainer):
    """SFTTrainer whose loss can weigh the EOS token more than the others."""

    def __init__(self, *args, eos_loss_weight: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.eos_loss_weight = eos_loss_weight

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.eos_loss_weight == 1.0:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs.pop("labels")
        outputs = model(**inputs, use_cache=False)
        loss = weighted_lm_loss(outputs.logits, labels, self.processing_class.eos_token_id,
                                self.eos_loss_weight, num_items_in_batch)
        return (loss, outputs) if return_outputs else loss


def sft_config(cfg, output_dir: Path, report_to: str, args: dict | None = None, seed: int | None = None,
               where: str = "trainer.args") -> SFTConfig:
    """SFTConfig from `trainer.args` (or `args`); an unknown or mistyped option fails here, at start."""
    args = dict(cfg.trainer.args if args is None else args)
    args.setdefault("use_cpu", not torch.cuda.is_available())
    seed = cfg.seed if seed is None else seed
    try:
        return SFTConfig(output_dir=str(output_dir), seed=seed, data_seed=seed, report_to=report_to,
                         run_name=cfg.run_name,  # the W&B config holds both; they must agree
                         max_length=cfg.data.max_length, completion_only_loss=True, **args)
    except TypeError as e:
        raise ValueError(f"{where}: {e} (options are those of trl.SFTConfig)") from None


def train_sft(cfg, model, tokenizer, dataset, output_dir: Path, report_to: str) -> Path:
    """Train, resuming from the last checkpoint in `output_dir`, and save the final model."""
    args = sft_config(cfg, output_dir / "checkpoints", report_to)
    trainer = LwSFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                           eos_loss_weight=cfg.trainer.eos_loss_weight)
    last = get_last_checkpoint(args.output_dir) if Path(args.output_dir).is_dir() else None
    if last:
        log.info("resuming from %s", last)
    trainer.train(resume_from_checkpoint=last)
    final = output_dir / "model"
    trainer.save_model(str(final))
    tokenizer.save_pretrained(final)
    return final
