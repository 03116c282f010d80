"""Training a built TRL trainer to its end and saving what every trainer kind saves."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def resume_point(trainer) -> str | None:
    """The newest complete checkpoint in the trainer's output_dir (None: start from step 0). Global
    rank 0 moves torn ones aside (lw.train.checkpoints) while the other ranks wait, so every rank
    then finds the same one."""
    import torch.distributed as dist
    from transformers.trainer_utils import get_last_checkpoint

    from lw.train.checkpoints import resume_checkpoint

    folder = Path(trainer.args.output_dir)
    if trainer.is_world_process_zero():
        resume_checkpoint(folder, trainer.args.world_size, trainer.is_deepspeed_enabled)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    return get_last_checkpoint(str(folder)) if folder.is_dir() else None


def fit_and_save(trainer, tokenizer, run_dir: Path, chat_format: str, stop_tokens=()) -> Path:
    """Train (resuming from the last checkpoint in the trainer's args.output_dir, the run's
    checkpoint_dir) and save the final model and tokenizer into run_dir/model, the tokenizer with the
    chat format as its chat template and the generation config with every end-of-turn id
    (lw.models.stops), so a server that reads them (`vllm serve`, `transformers serve`) renders and
    stops as lw does."""
    from lw.models.chat_format import get_chat_format
    from lw.models.stops import stop_token_ids
    from lw.run_dir import model_dir
    from lw.train.checkpoints import kill_inside_save

    last = resume_point(trainer)
    if last:
        log.info("resuming from %s", last)
    kill_inside_save(trainer)  # a test's fault injection, when the environment names one
    stops = stop_token_ids(tokenizer, stop_tokens, get_chat_format(chat_format), trainer.model.generation_config)
    trainer.train(resume_from_checkpoint=last)
    trainer.model.generation_config.eos_token_id = stops
    final = model_dir(run_dir)
    trainer.save_model(str(final))  # every rank: ZeRO-3 gathers the shards
    if trainer.is_world_process_zero():
        template = get_chat_format(chat_format).jinja
        if template:
            tokenizer.chat_template = template
        tokenizer.save_pretrained(final)
    return final
