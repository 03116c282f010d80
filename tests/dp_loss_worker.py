"""One data-parallel rank of test_loss.py's two-rank check; run under `torchrun --nproc_per_node 2`.

  dp_loss_worker.py DATA.jsonl CACHE_DIR OUT_DIR WEIGHTING:EOS_WEIGHT [WEIGHTING:EOS_WEIGHT ...]

For each weighting, with TRL's fused LM head (tiles forced small) and with full logits: the real
trainer (DDP over gloo, gradient accumulation 2) takes one optimizer step's worth of micro-batches.
The rank saves its micro-batches, the item count the Trainer used, the losses it returned and the
gradients after DDP's all-reduce, for the test to check by hand and fused against full logits.
"""

import os
import sys
from pathlib import Path

import torch

import lw
from lw.data import build_sft_dataset
from lw.models import build_model
from lw.models.tiny import tiny_tokenizer
from lw.train.sft import build_trainer

from test_loss import packed_config, small_tiles


def main(data: str, cache: str, out: str, *settings: str) -> None:
    tokenizer = tiny_tokenizer(cache)
    rank = int(os.environ["RANK"])  # set by torchrun
    small_tiles()
    for setting, fused in ((s, f) for s in settings for f in (True, False)):
        weighting, eos_weight = setting.split(":")
        cfg = packed_config(data, cache, weighting, eos_weight)
        cfg.trainer.fused_lm_head = fused
        path = "fused" if fused else "logits"
        run_dir = Path(out) / setting / path / f"rank{rank}"
        run_dir.mkdir(parents=True)
        model = build_model(cfg.model, tokenizer, seed=0)
        trainer = build_trainer(cfg, model, tokenizer, build_sft_dataset(cfg, tokenizer, run_dir)[0], run_dir, "none")
        assert (trainer.args.process_index, trainer.args.world_size) == (rank, 2)
        wrapped = trainer.accelerator.prepare(trainer.model)  # DDP: backward all-reduces gradients
        batches, num_items = trainer.get_batch_samples(iter(trainer.get_train_dataloader()), 2, torch.device("cpu"))
        losses = [trainer.training_step(wrapped, batch, num_items).item() for batch in batches]
        grads = {name: p.grad.clone() for name, p in trainer.model.named_parameters() if p.grad is not None}
        torch.save({"batches": batches, "num_items": int(num_items), "losses": losses, "grads": grads,
                    "lw": str(Path(lw.__file__).resolve())},  # the lw under test, not another installed one
                   Path(out) / f"{setting}-{path}-rank{rank}.pt")


if __name__ == "__main__":
    main(*sys.argv[1:])
