"""Loading models and tokenizers: the real hub models and the tiny CPU stand-in, one code path."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, TypeVar

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers import __version__ as transformers_version

from lw.errors import UserError
from lw.models.attention import attention_implementation, local_device
from lw.models.chatglm import glm_config, is_chatglm, native_checkpoint, read_config
from lw.models.tiny import tiny_model_config, tiny_tokenizer

T = TypeVar("T")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# What a checkpoint directory holds: (what, file patterns any of which is it).
CHECKPOINT_FILES = {"config.json": ["config.json"], "weights": ["*.safetensors", "*.bin"],
                    "tokenizer": ["tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json"]}


def _dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise UserError(f"model.dtype must be one of {sorted(DTYPES)}, got {name!r}") from None


def load_pretrained(load: Callable[[], T], path: str, setting: str = "model.path", remote_code: bool = False) -> T:
    """`load()`, a from_pretrained of `path` (a local checkpoint or a hub id), with a failure as one
    line: a local directory's missing file, what transformers could not do with a complete checkpoint,
    or for a hub id where the hub cache is and the local alternative. `remote_code`: the load runs the
    checkpoint's own code (trust_remote_code), whose failures of any kind are the checkpoint's."""
    from huggingface_hub import constants

    try:
        return load()
    except Exception as err:  # noqa: BLE001 (not found, offline, gated, a malformed id, an unloadable checkpoint)
        if not isinstance(err, (OSError, ValueError)) and not remote_code:
            raise
        reason = first_line(err) if isinstance(err, (OSError, ValueError)) else f"{type(err).__name__}: {first_line(err)}"
        if remote_code and not isinstance(err, OSError):
            raise UserError(f"{setting}={path}: its remote code (model.trust_remote_code=true) failed under "
                            f"transformers {transformers_version}: {reason}; it was written for another "
                            f"transformers (remote-code GLM-4 loads natively without it: docs/models.md)") from None
        local = Path(path).expanduser()
        if local.exists() or path.startswith((".", "/", "~")) or path.count("/") > 1:
            raise UserError(f"{setting}={path}: {_local_failure(local, reason)}") from None
        raise UserError(f"{setting}={path}: could not load it from the Hugging Face hub "
                        f"({reason}); the hub cache is {constants.HF_HUB_CACHE}: offline, fill "
                        f"it on a machine online (`hf download {path}`) or set {setting} to a local "
                        f"checkpoint directory") from None


def first_line(err: BaseException, limit: int = 300) -> str:
    """The error's first line, shortened at a word boundary (never mid-word) when longer than `limit`."""
    lines = str(err).strip().splitlines()
    line = lines[0] if lines else type(err).__name__
    if len(line) <= limit:
        return line
    return line[:limit].rsplit(" ", 1)[0] + " ..."


def _local_failure(local: Path, reason: str) -> str:
    """Why a local directory did not load: a file it lacks, else what transformers said."""
    if not local.is_dir():
        return "no such directory; set it to a checkpoint directory (config.json, weights, tokenizer) or a hub id"
    missing = [what for what, patterns in CHECKPOINT_FILES.items()
               if not any(next(local.glob(p), None) for p in patterns)]
    if missing:
        return (f"not a complete checkpoint: no {' and no '.join(missing)} in it ({reason}); set it to a "
                f"checkpoint directory (config.json, weights, tokenizer) or a hub id")
    config = local / "config.json"
    remote = "auto_map" in config.read_text() if config.is_file() else False
    return (f"transformers {transformers_version} cannot load this checkpoint: {reason}"
            + (f"; it is remote code (config.json's auto_map): model.trust_remote_code=true runs it where it was "
               f"written for transformers {transformers_version}; remote-code GLM-4 loads natively without it "
               f"(docs/models.md)" if remote else ""))


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
