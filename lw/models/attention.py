"""Which attention implementation a model runs with, on which device: resolved and checked in one place."""

from __future__ import annotations

import importlib.util

import torch
from transformers import PreTrainedModel

from lw.errors import UserError


def local_device(use_cpu: bool = False) -> str:
    """The device this process runs a model on: cuda where a GPU is visible (and not turned off)."""
    return "cuda" if torch.cuda.is_available() and not use_cpu else "cpu"


def flash_attention_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def attention_implementation(model_cfg, device: str, *, packing: bool = False, training: bool = False) -> str:
    """The attention implementation a model runs with on `device` (cuda or cpu): the one place that
    resolves `model.attn_implementation: auto` and refuses, in one line, a choice that cannot run.

    A padding-free pack is one row whose position ids restart per sample. sdpa turns that into a
    dense block-diagonal mask over the whole row: memory and compute grow with the pack's length
    squared. flash_attention_2 (varlen kernels) and flex_attention (a block-sparse document mask)
    cost what the samples cost. So auto takes one of them for packed training on a GPU, and sdpa
    elsewhere: flex attention has no backward pass on CPU, and without packing sdpa's causal kernel
    costs no more.
    """
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    choice = model_cfg.attn_implementation or "auto"
    setting = f"model.attn_implementation={choice}"
    if choice == "auto":
        if packing and device == "cuda":
            return "flash_attention_2" if flash_attention_installed() else "flex_attention"
        return "sdpa"
    if choice not in ["eager", *ALL_ATTENTION_FUNCTIONS.valid_keys()] and "/" not in choice:  # "/": a hub kernel
        raise UserError(f"{setting} is not an attention implementation: pick auto, sdpa, flex_attention, "
                        "flash_attention_2 or eager")
    if choice == "flash_attention_2" and device != "cuda":
        raise UserError(f"{setting}: flash attention runs on CUDA GPUs only; pick sdpa (or auto) on {device}")
    if choice == "flash_attention_2" and not flash_attention_installed():
        raise UserError(f"{setting}: the flash-attn package is not installed; install it (pip install flash-attn, "
                        "which builds against CUDA) or pick auto (flex_attention for packed training on a GPU)")
    if choice == "flex_attention" and training and device != "cuda":
        raise UserError(f"{setting}: PyTorch's flex attention has no backward pass on CPU, so it cannot train "
                        "there; pick sdpa (or auto, which takes sdpa on CPU)")
    return choice


def use_attention(model: PreTrainedModel, implementation: str) -> PreTrainedModel:
    """`model` switched to `implementation`, for a model built for generation that is then trained on packs."""
    if model.config._attn_implementation != implementation:
        model.set_attn_implementation(implementation)
    return model
