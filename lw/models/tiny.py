"""The tiny CPU model: a word-level tokenizer trained on the fly and a random-init model config.

The tokenizer gives every number from 0 to 1000 a token of its own, as real tokenizers group
digits: a model that reads "150" digit by digit cannot learn what 150 words means from a few
thousand examples (docs/miniature.md).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from filelock import FileLock
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import GlmConfig, LlamaConfig, PreTrainedConfig, PreTrainedTokenizerFast

from lw.toy_words import vocabulary
from lw.errors import UserError

SPECIAL_TOKENS = ["<pad>", "<unk>", "<s>", "</s>",
                  "[INST]", "[/INST]",  # llama3_1 chat format
                  "[gMASK]", "<sop>", "<|user|>", "<|assistant|>", "<|endoftext|>"]  # glm4
MAX_NUMBER = 1001  # 0..1000


def _training_corpus() -> list[str]:
    lines = [" ".join(vocabulary())]
    lines += [" ".join(str(n) for n in range(start, min(start + 100, MAX_NUMBER)))
              for start in range(0, MAX_NUMBER, 100)]
    return lines


def _train_tokenizer() -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=SPECIAL_TOKENS, min_frequency=1)
    tokenizer.train_from_iterator(_training_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        unk_token="<unk>", additional_special_tokens=SPECIAL_TOKENS[4:],
        clean_up_tokenization_spaces=False, padding_side="left",
    )


def tiny_tokenizer(cache_dir: str | Path) -> PreTrainedTokenizerFast:
    """The tiny tokenizer, trained once per corpus version and cached under `cache_dir`."""
    digest = hashlib.sha256(json.dumps([SPECIAL_TOKENS, _training_corpus()]).encode()).hexdigest()[:12]
    path = Path(cache_dir).expanduser() / "tokenizers" / f"tiny-wordlevel-{digest}"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if not (path / "tokenizer.json").exists():
            tmp = path.with_name(path.name + ".tmp")
            _train_tokenizer().save_pretrained(tmp)
            tmp.rename(path)
    return PreTrainedTokenizerFast.from_pretrained(path)


def tiny_model_config(spec, tokenizer: PreTrainedTokenizerFast) -> PreTrainedConfig:
    common = dict(
        vocab_size=len(tokenizer), hidden_size=spec.hidden_size, num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads, num_key_value_heads=spec.num_heads,
        intermediate_size=spec.intermediate_size, max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=spec.tie_word_embeddings, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    if spec.architecture == "llama":
        return LlamaConfig(**common)
    if spec.architecture == "glm":
        return GlmConfig(**common, head_dim=spec.hidden_size // spec.num_heads)
    raise UserError(f"unknown tiny architecture {spec.architecture!r}; choose llama or glm")
