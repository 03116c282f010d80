"""Generation backends. Predictions are appended to a JSONL file as they finish, so an
interrupted run loses nothing and a rerun generates only what is missing."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from tqdm import tqdm

from lw.models.chat_format import get_chat_format

log = logging.getLogger(__name__)


def read_done(path: Path) -> dict[str, dict]:
    """Finished predictions by id; a torn last line (a killed run) is ignored."""
    done: dict[str, dict] = {}
    if path.exists():
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                done[row["id"]] = row
    return done


def generate_hf(model, tokenizer, chat_format_name: str, items: list[dict], gen_cfg, out_path: Path,
                seed: int = 0) -> list[dict]:
    """Batched sampling with transformers; returns every item with its `response`."""
    chat_format = get_chat_format(chat_format_name)
    done = read_done(out_path)
    todo = [item for item in items if item["id"] not in done]
    if done:
        log.info("%s: %d predictions already done, %d to go", out_path.name, len(items) - len(todo), len(todo))
    model.eval()
    context = getattr(model.config, "max_position_embeddings", None)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with open(out_path, "a", encoding="utf-8") as out, tqdm(total=len(todo), desc="generating") as bar:
        for start in range(0, len(todo), gen_cfg.batch_size):
            batch = todo[start: start + gen_cfg.batch_size]
            prompts = [chat_format.prompt_ids(tokenizer, item["prompt"]) for item in batch]
            width = max(map(len, prompts))
            max_new = gen_cfg.max_new_tokens if context is None else min(gen_cfg.max_new_tokens, context - width)
            input_ids = torch.full((len(batch), width), tokenizer.pad_token_id)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            for row, ids in enumerate(prompts):  # left padding
                input_ids[row, width - len(ids):] = torch.tensor(ids)
                attention[row, width - len(ids):] = 1
            torch.manual_seed(seed + start)
            with torch.no_grad():
                output = model.generate(
                    input_ids=input_ids.to(model.device), attention_mask=attention.to(model.device),
                    do_sample=gen_cfg.temperature > 0, temperature=gen_cfg.temperature or None,
                    top_p=gen_cfg.top_p, max_new_tokens=max_new, pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
            for item, ids in zip(batch, output[:, width:]):
                row = {**item, "response": tokenizer.decode(ids, skip_special_tokens=True).strip()}
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
                out.flush()
                done[item["id"]] = row
            bar.update(len(batch))
    return [done[item["id"]] for item in items]
