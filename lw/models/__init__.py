"""Models and tokenizers: the real hub models and the tiny CPU stand-in, one code path."""

from __future__ import annotations


import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from lw.models.chat_format import get_chat_format  # noqa: F401  (re-exported)
from lw.models.tiny import tiny_model_config, tiny_tokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"model.dtype must be one of {sorted(DTYPES)}, got {name!r}") from None


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
            raise ValueError("model.path is null and model.tiny is not set: nothing to build")
        torch.manual_seed(seed)
        config = tiny_model_config(model_cfg.tiny, tokenizer)
        return AutoModelForCausalLM.from_config(config, dtype=dtype, **kwargs)
    config = AutoConfig.from_pretrained(path, trust_remote_code=model_cfg.trust_remote_code)
    for key, value in model_cfg.config_overrides.items():
        setattr(config, key, value)
    return AutoModelForCausalLM.from_pretrained(path, config=config, dtype=dtype,
                                                trust_remote_code=model_cfg.trust_remote_code, **kwargs)
