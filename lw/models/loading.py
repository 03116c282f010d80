"""Loading models and tokenizers: the real hub models and the tiny CPU stand-in, one code path."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from lw.errors import UserError
from lw.models.attention import attention_implementation, local_device
from lw.models.chatglm import glm_config, is_chatglm, native_checkpoint, read_config
from lw.models.pretrained import load_pretrained
from lw.models.tiny import tiny_model_config, tiny_tokenizer

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
        return tiny_tokenizer(cache_dir, model_cfg.tiny.family if model_cfg.tiny is not None else "word")
    path = native_checkpoint(path, cache_dir, weights=False)  # a remote-code GLM-4's converted tokenizer
    tokenizer = load_pretrained(lambda: AutoTokenizer.from_pretrained(path, trust_remote_code=model_cfg.trust_remote_code),
                                path, remote_code=model_cfg.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # generation pads on the left; training collators pad themselves
    return tokenizer


def build_model(model_cfg, tokenizer, path: str | None = None, seed: int = 0, packing: bool = False,
                training: bool = False, cache_dir: str | None = None) -> PreTrainedModel:
    """Load `path` (or model.path), or build the tiny model with random weights from `seed`, with the
    attention implementation for this device and use (`packing`: trained on padding-free packs). A
    remote-code GLM-4 checkpoint is converted once into `cache_dir` (lw.models.chatglm) and loaded natively."""
    path = path or model_cfg.path
    dtype = _dtype(model_cfg.dtype)
    kwargs = {"attn_implementation": attention_implementation(model_cfg, local_device(), packing=packing,
                                                              training=training)}
    if path is None:
        if model_cfg.tiny is None:
            raise UserError("model.path is null and model.tiny is not set: nothing to build")
        torch.manual_seed(seed)
        config = tiny_model_config(model_cfg.tiny, tokenizer)
        return AutoModelForCausalLM.from_config(config, dtype=dtype, **kwargs)
    if cache_dir is not None:
        path = native_checkpoint(path, cache_dir)
    remote = model_cfg.trust_remote_code
    config = load_pretrained(lambda: AutoConfig.from_pretrained(path, trust_remote_code=remote), path, remote_code=remote)
    config = apply_config_overrides(config, model_cfg)
    return load_pretrained(lambda: AutoModelForCausalLM.from_pretrained(
        path, config=config, dtype=dtype, trust_remote_code=remote, **kwargs), path, remote_code=remote)


def checkpoint_config(path: str, trust_remote_code: bool = False):
    """The transformers config of a local checkpoint, without weights; a remote-code GLM-4's as the
    GlmConfig it converts to (for the dry run)."""
    raw = Path(path) / "config.json"
    if raw.is_file() and is_chatglm(read_config(Path(path))):
        return glm_config(read_config(Path(path)), path)
    return load_pretrained(lambda: AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code), path)


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


def model_config(cfg: DictConfig):
    """The model's transformers config, from the tiny spec, a local checkpoint or `model.arch`, without
    loading weights (the planner's model)."""
    model_cfg = cfg.model
    if model_cfg.path is None:
        config = tiny_model_config(model_cfg.tiny, build_tokenizer(model_cfg, cfg.cache_dir))
    elif Path(model_cfg.path).is_dir():  # a remote-code GLM-4 checkpoint's config as the GlmConfig it loads as
        config = checkpoint_config(model_cfg.path, trust_remote_code=model_cfg.trust_remote_code)
    elif model_cfg.arch:
        arch = OmegaConf.to_container(model_cfg.arch, resolve=True)
        config = AutoConfig.for_model(arch.pop("model_type"), **arch)
    else:
        raise UserError(f"model.path={model_cfg.path!r} is not a local directory and model.arch is empty: add the "
                         f"hub config's architecture to conf/model/{model_cfg.name}.yaml (model.arch) to plan offline")
    return apply_config_overrides(config, model_cfg)
