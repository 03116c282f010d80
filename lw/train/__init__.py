"""Training: TRL trainers configured from the Hydra config, one module per trainer kind (registry.py)."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def fit_and_save(trainer, tokenizer, output_dir: Path, chat_format: str) -> Path:
    """Train (resuming from the last checkpoint in the trainer's output_dir) and save the final model
    and tokenizer into output_dir/model, the tokenizer with the chat format as its chat template."""
    from transformers.trainer_utils import get_last_checkpoint

    checkpoints = trainer.args.output_dir
    last = get_last_checkpoint(checkpoints) if Path(checkpoints).is_dir() else None
    if last:
        log.info("resuming from %s", last)
    trainer.train(resume_from_checkpoint=last)
    final = Path(output_dir) / "model"
    trainer.save_model(str(final))  # every rank: ZeRO-3 gathers the shards
    if trainer.is_world_process_zero():
        from lw.models.chat_format import get_chat_format

        template = get_chat_format(chat_format).jinja
        if template:
            tokenizer.chat_template = template
        tokenizer.save_pretrained(final)
    return final
