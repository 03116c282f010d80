"""Models and tokenizers: the real hub models and the tiny CPU stand-in, one code path."""

from __future__ import annotations


import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from lw.models.tiny import tiny_model_config, tiny_tokenizer
from lw.errors import UserError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise UserError(f"model.dtype must be one of {sorted(DTYPES)}, got {name!r}") from None


def build_tokenizer(model_cfg, cache_dir: str, path: str | None = None):
    """The tokenizer of `path` (a checkpoint) or of the configured model."""
    path = path or model_cfg.path
    if path is None:
        return tiny_tokenizer(cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=model_cfg.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # generation pads on the left; training collators pad themselves
    return tokenizer


def build_model(model_cfg, tokenizer, path: str | None = None, seed: int = 0) -> PreTrainedModel:
    """Load `path` (or model.path), or build the tiny model with random weights from `seed`."""
    path = path or model_cfg.path
    dtype = _dtype(model_cfg.dtype)
    kwargs = {}
    if model_cfg.attn_implementation:
        kwargs["attn_implementation"] = model_cfg.attn_implementation
    if path is None:
        if model_cfg.tiny is None:
            raise UserError("model.path is null and model.tiny is not set: nothing to build")
        torch.manual_seed(seed)
        config = tiny_model_config(model_cfg.tiny, tokenizer)
        return AutoModelForCausalLM.from_config(config, dtype=dtype, **kwargs)
    config = apply_config_overrides(AutoConfig.from_pretrained(path, trust_remote_code=model_cfg.trust_remote_code),
                                    model_cfg)
    return AutoModelForCausalLM.from_pretrained(path, config=config, dtype=dtype,
                                                trust_remote_code=model_cfg.trust_remote_code, **kwargs)


def apply_config_overrides(config, model_cfg):
    """The transformers config with `model.config_overrides` set on it (GLM-4's seq_length for 32k packs)."""
    for key, value in model_cfg.config_overrides.items():
        setattr(config, key, value)
    return config


def parameter_counts(hf_config) -> dict:
    """Parameters of the model built on the meta device: exact counts, no memory, no weights."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config)
    total = sum(p.numel() for p in model.parameters())  # shared (tied) parameters once
    largest = max(sum(p.numel() for p in module.parameters(recurse=False)) for module in model.modules())
    embedding = model.get_input_embeddings().weight.numel()
    return {"total": total, "largest_layer": largest, "embedding": embedding}
