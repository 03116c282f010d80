"""A tiny checkpoint in the format of THUDM's remote-code GLM-4 checkpoints, for tests: config.json
with `model_type: chatglm` and GLM-4's fields, weights under the remote model's names, a tiktoken-format
`tokenizer.model` and the tokenizer_config.json that points at ChatGLM4Tokenizer. No remote code: the
.py files the `auto_map` names are absent (lw never runs them).

The tokenizer.model is derived from a small byte-level BPE trained on the fly: the 256 bytes get ranks
0-255 in byte order, then each merge's result the next rank, as tiktoken's ranks are made.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers.convert_slow_tokenizer import bytes_to_unicode

from lw.models.glm4_tokenizer import SPECIAL_TOKENS

CORPUS = ["Write a 12-word note about rivers. The river runs to the sea, and the sea runs to the sky.",
          "写一篇关于河流的短文。河流奔向大海。", "one two three four five six seven eight nine ten words",
          "Hello, world! It's 2024: numbers 1234567 and spaces   and\nnew lines\n\n."]


def tiktoken_ranks(vocab_size: int = 600) -> dict[bytes, int]:
    """Ranks of a byte-level BPE trained on CORPUS: bytes first, then merges in their order."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(CORPUS * 4, trainer=trainer)
    to_byte = {char: byte for byte, char in bytes_to_unicode().items()}
    ranks = {bytes([b]): b for b in range(256)}
    for left, right in json.loads(tokenizer.to_str())["model"]["merges"]:
        token = bytes(to_byte[c] for c in left + right)
        ranks.setdefault(token, len(ranks))
    return ranks


def remote_glm4_config(vocab: int, **fields) -> dict:
    """config.json of a tiny GLM-4 in THUDM's format (the fields of glm-4-9b-chat's, smaller)."""
    config = {
        "_name_or_path": "THUDM/glm-4-9b-chat", "model_type": "chatglm", "architectures": ["ChatGLMModel"],
        "auto_map": {"AutoConfig": "configuration_chatglm.ChatGLMConfig",
                     "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
                     "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration"},
        "add_bias_linear": False, "add_qkv_bias": True, "apply_query_key_layer_scaling": True,
        "apply_residual_connection_post_layernorm": False, "attention_dropout": 0.0,
        "attention_softmax_in_fp32": True, "bias_dropout_fusion": True, "ffn_hidden_size": 48,
        "fp32_residual_connection": False, "hidden_dropout": 0.0, "hidden_size": 32, "kv_channels": 8,
        "layernorm_epsilon": 1.5625e-07, "multi_query_attention": True, "multi_query_group_num": 2,
        "num_attention_heads": 4, "num_hidden_layers": 2, "num_layers": 2, "rope_ratio": 500,
        "original_rope": True, "padded_vocab_size": vocab, "post_layer_norm": True, "rmsnorm": True,
        "seq_length": 1024, "use_cache": True, "torch_dtype": "float32", "tie_word_embeddings": False,
    }
    return {**config, **fields}


def remote_glm4_weights(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under the remote model's names (transformer.encoder.layers.N...)."""
    generator = torch.Generator().manual_seed(seed)
    h, heads, groups, d = (config["hidden_size"], config["num_attention_heads"], config["multi_query_group_num"],
                           config["kv_channels"])

    def rand(*shape):
        return torch.randn(*shape, generator=generator) * 0.2

    weights = {"transformer.embedding.word_embeddings.weight": rand(config["padded_vocab_size"], h),
               "transformer.encoder.final_layernorm.weight": 1 + rand(h),
               "transformer.output_layer.weight": rand(config["padded_vocab_size"], h),
               "transformer.rotary_pos_emb.inv_freq": torch.ones(d // 4)}
    for i in range(config["num_layers"]):
        layer = f"transformer.encoder.layers.{i}."
        weights.update({
            layer + "input_layernorm.weight": 1 + rand(h), layer + "post_attention_layernorm.weight": 1 + rand(h),
            layer + "self_attention.query_key_value.weight": rand((heads + 2 * groups) * d, h),
            layer + "self_attention.query_key_value.bias": rand((heads + 2 * groups) * d),
            layer + "self_attention.dense.weight": rand(h, heads * d),
            layer + "mlp.dense_h_to_4h.weight": rand(2 * config["ffn_hidden_size"], h),
            layer + "mlp.dense_4h_to_h.weight": rand(h, config["ffn_hidden_size"])})
    return weights


def write_remote_glm4(path: Path, seed: int = 0, weights: dict | None = None, **config_fields) -> Path:
    """A complete tiny remote-format GLM-4 checkpoint in `path`; `config_fields` change config.json."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    ranks = tiktoken_ranks()
    vocab = -(-(len(ranks) + len(SPECIAL_TOKENS)) // 32) * 32  # padded, as padded_vocab_size is
    specials = {token: len(ranks) + i for i, token in enumerate(SPECIAL_TOKENS)}
    config = remote_glm4_config(vocab, eos_token_id=[specials[t] for t in ("<|endoftext|>", "<|user|>",
                                                                           "<|observation|>")],
                                pad_token_id=specials["<|endoftext|>"])
    config.update(config_fields)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    (path / "tokenizer.model").write_text("".join(f"{base64.b64encode(t).decode()} {r}\n" for t, r in ranks.items()))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLM4Tokenizer", None]},
        "tokenizer_class": "ChatGLM4Tokenizer", "padding_side": "left", "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>", "clean_up_tokenization_spaces": False}, indent=2))
    (path / "generation_config.json").write_text(json.dumps({
        "eos_token_id": config["eos_token_id"], "pad_token_id": config["pad_token_id"], "do_sample": True,
        "temperature": 0.8, "top_p": 0.8, "max_length": 1024}, indent=2))
    save_file(weights if weights is not None else remote_glm4_weights(config, seed), path / "model.safetensors",
              metadata={"format": "pt"})
    return path
