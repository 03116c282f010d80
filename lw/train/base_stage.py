"""The base stage of the CPU miniature: language modelling on documents of every length.

In the paper the model under SFT is a pretrained LLM that has read texts of every length; a tiny
model trained from scratch has not, and cannot write 150 words when asked if it never saw 150
(docs/miniature.md). The base stage gives it that ability once; every capped SFT run then starts from
the same cached base, so what differs between runs is only the SFT data, as in the paper.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import statistics
from pathlib import Path

from datasets import Dataset
from filelock import FileLock
from omegaconf import OmegaConf

from lw.data import toy
from lw.data.packing import PackCollator, pack
from lw.data.settings import max_length_of
from lw.errors import UserError
from lw.eval.generate import HfBackend, generate
from lw.models import build_model
from lw.models.chat_format import get_chat_format
from lw.run_dir import checkpoint_dir, model_dir
from lw.words import count_words

log = logging.getLogger(__name__)


def base_stage_dir(cfg, tokenizer) -> Path:
    """Where the base for this (model, base stage, tokenizer) lives; the key is their content."""
    spec = {"model": OmegaConf.to_container(cfg.model.tiny), "base": OmegaConf.to_container(cfg.trainer.base),
            "vocab": sorted(tokenizer.get_vocab().items()), "max_length": max_length_of(cfg.data)}
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cfg.cache_dir).expanduser() / "base_stage" / digest


def ensure_base_model(cfg, tokenizer) -> Path:
    """The cached base model directory, trained first if this is its first use."""
    if cfg.model.path is not None:
        raise UserError("trainer.base pretrains a tiny model from scratch; model.path must be null")
    directory = base_stage_dir(cfg, tokenizer)
    directory.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(directory) + ".lock"):  # concurrent sweep jobs train it once
        if (model_dir(directory) / "config.json").exists():
            log.info("base stage: reusing %s", directory)
            return model_dir(directory)
        work = directory.with_name(directory.name + ".partial")
        shutil.rmtree(work, ignore_errors=True)
        trained = _train_base(cfg, tokenizer, work)
        probe = probe_base(cfg, tokenizer, trained, work / "probe.jsonl")
        (work / "probe.json").write_text(json.dumps(probe, indent=2) + "\n")
        work.rename(directory)
        log.info("base stage: trained %s; median words by requested length: %s", directory, probe)
    return model_dir(directory)


def _train_base(cfg, tokenizer, work: Path) -> Path:
    from lw.train.sft import LwSFTTrainer, sft_config

    base = cfg.trainer.base
    chat_format = get_chat_format("plain")
    rows = [chat_format.tokenize(tokenizer, doc["messages"])
            for doc in toy.generate_documents(base.num_documents, list(base.lengths), list(base.topics), base.seed)]
    dataset = Dataset.from_dict({"input_ids": [ids for ids, _ in rows], "completion_mask": [m for _, m in rows]})
    collator = None
    if base.pack_length is not None:  # padding-free, and every batch mixes lengths (see length_bound_mini)
        dataset, collator = pack(dataset, base.pack_length), PackCollator(pad_token_id=tokenizer.pad_token_id)
    args = sft_config(cfg, checkpoint_dir(work), "none", args=dict(base.args), seed=base.seed,
                      where="trainer.base.args", pack_length=base.pack_length)
    model = build_model(cfg.model, tokenizer, seed=base.seed, packing=base.pack_length is not None, training=True)
    trainer = LwSFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                           data_collator=collator, eos_loss_weight=base.eos_loss_weight)
    trainer.train()
    saved = model_dir(work)
    trainer.save_model(str(saved))
    tokenizer.save_pretrained(saved)
    shutil.rmtree(checkpoint_dir(work), ignore_errors=True)
    return saved


def probe_base(cfg, tokenizer, model_dir: Path, out_path: Path) -> dict[int, float]:
    """Median words the base writes after a document head asking for each probe length."""
    base = cfg.trainer.base
    items = [{"id": f"{n}-{topic}-{k}", "length": n, "prompt": toy.document_head(topic, n)}
             for n in base.probe_lengths for topic in base.topics[:2] for k in range(4)]
    model = build_model(cfg.model, tokenizer, path=str(model_dir))
    rows = generate(HfBackend(model, tokenizer, "plain", cfg.generation, seed=base.seed), items, out_path)
    return {n: statistics.median(count_words(r["response"]) for r in rows if r["length"] == n)
            for n in base.probe_lengths}
