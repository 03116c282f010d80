"""The tiny CPU model: a tokenizer trained on the fly and a random-init model config.

The default tokenizer (`model.tiny.family: word`) is word-level and gives every number from 0 to
1000 a token of its own, as real tokenizers group digits: a model that reads "150" digit by digit
cannot learn what 150 words means from a few thousand examples (docs/miniature.md).

The family tokenizers are stand-ins for the real chat models' (`glm4_chat`: GLM-4-9B-chat,
`llama3_1_instruct`: Llama-3.1-8B-Instruct): a byte-level BPE, so text decodes back exactly, with
the family's special tokens and a chat template that renders the same strings as the real one
(docs/models.md). Tests and CPU runs of the evaluation use them: `model.tiny.family=glm4_chat`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from filelock import FileLock
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GlmConfig, LlamaConfig, PreTrainedConfig, PreTrainedTokenizerFast

from lw.errors import UserError
from lw.toy_words import vocabulary

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


# GLM-4-9B-chat's template without its tool branches: every turn is <|role|>\n{content} (the real one
# writes <|role|>{metadata}\n{content}, metadata empty for chat, and skips empty turns), after one
# [gMASK]<sop>; the generation prompt is <|assistant|> alone (the model writes the newline).
GLM4_CHAT_TEMPLATE = (
    "[gMASK]<sop>{% for m in messages %}{% if m['content'] %}<|{{ m['role'] }}|>\n{{ m['content'] }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")

# Llama-3.1-Instruct's template without tools: BOS, a system header that always carries the knowledge
# cut-off and the default date (then the system message, if any), each turn trimmed and closed by
# <|eot_id|>, and the assistant's header as the generation prompt.
LLAMA31_INSTRUCT_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] | trim %}"
    "{% set messages = messages[1:] %}{% else %}{% set system = '' %}{% endif %}"
    "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
    "Today Date: 26 Jul 2024\n\n{{ system }}<|eot_id|>"
    "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] | trim }}"
    "<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n"
    "{% endif %}")

# family: (special tokens, bos, eos, pad, chat template)
FAMILIES = {
    "glm4_chat": (["<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>",
                   "<|assistant|>", "<|observation|>"], None, "<|endoftext|>", "<|endoftext|>", GLM4_CHAT_TEMPLATE),
    "llama3_1_instruct": (["<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad_id|>",
                           "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"],
                          "<|begin_of_text|>", "<|eot_id|>", "<|finetune_right_pad_id|>", LLAMA31_INSTRUCT_TEMPLATE),
}


def _train_family_tokenizer(family: str) -> PreTrainedTokenizerFast:
    special, bos, eos, pad, template = FAMILIES[family]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=2000, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(_training_corpus(), trainer=trainer)
    named = {bos, eos, pad}
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=bos, eos_token=eos, pad_token=pad,
        additional_special_tokens=[t for t in special if t not in named], chat_template=template,
        clean_up_tokenization_spaces=False, padding_side="left",
    )


def tiny_tokenizer(cache_dir: str | Path, family: str = "word") -> PreTrainedTokenizerFast:
    """The tiny tokenizer of `family`, trained once per corpus version and cached under `cache_dir`."""
    if family != "word" and family not in FAMILIES:
        raise UserError(f"model.tiny.family={family}: unknown; choose word, {', '.join(FAMILIES)}")
    spec = [SPECIAL_TOKENS] if family == "word" else [family, FAMILIES[family]]
    digest = hashlib.sha256(json.dumps([spec, _training_corpus()]).encode()).hexdigest()[:12]
    kind = "wordlevel" if family == "word" else family
    path = Path(cache_dir).expanduser() / "tokenizers" / f"tiny-{kind}-{digest}"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if not (path / "tokenizer.json").exists():
            tmp = path.with_name(path.name + ".tmp")
            (_train_tokenizer() if family == "word" else _train_family_tokenizer(family)).save_pretrained(tmp)
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
