"""The attention implementation a training run will use on its workers' device, and with packs what
a dense sdpa mask would cost against the samples' own attention.

Attention FLOPs of a packed run (`plan_attention`): flash and flex attention compute each sample's
causal attention, l(l+1)/2 (query, key) pairs per sample of l tokens; sdpa with the dense mask
computes every pair of the row, T^2 (a kernel cannot skip what an arbitrary mask hides). Each pair
costs 4*n_h*d FLOPs per layer forward, x3 with the backward pass.
"""

from __future__ import annotations

import math

from omegaconf import DictConfig

from lw.models import attention_implementation, flash_attention_installed, local_device
from lw.plan.flops import attention_flops_per_pair, causal_pairs, matmul_flops_per_token
from lw.plan.memory import GIB, activation_bytes


def planned_device(cfg: DictConfig) -> str:
    """The device the run trains on: plan.device, else GPU ranks for a launcher that starts workers
    (the paper configs) and this machine's device for launcher=local."""
    device = cfg.plan.get("device")  # a closed choice (cuda | cpu), typed in lw/config.py
    return device or ("cuda" if cfg.launcher.kind != "local" else local_device())


def attention_pairs(pack_sequence_lengths: list[list[int]], micro_batch: int) -> tuple[int, int]:
    """(query, key) pairs of the packs: each sample's causal attention on its own, and one dense mask
    over each padding-free row (the collator joins `micro_batch` packs into one row)."""
    per_sample = causal_pairs(pack_sequence_lengths)
    totals = [sum(pack) for pack in pack_sequence_lengths]
    dense = sum(sum(totals[i:i + micro_batch]) ** 2 for i in range(0, len(totals), micro_batch))
    return per_sample, dense


def plan_attention(cfg: DictConfig, args, hf_config, counts: dict, data: dict,
                   pack_sequence_lengths: list[list[int]] | None) -> dict:
    """The attention implementation the run will use on its device and, with packing, what a dense
    sdpa mask costs against the per-sample cost of the planned packs' length mix."""
    device = planned_device(cfg)
    packing = bool(data["pack_length"])
    requested = cfg.model.attn_implementation or "auto"
    implementation = attention_implementation(cfg.model, device, packing=packing, training=True)
    plan = {"implementation": implementation, "requested": requested, "device": device, "packing": packing}
    assumptions = [f"attention for {device} ranks (plan.device=cuda|cpu plans for the other)"]
    if requested == "auto" and implementation == "flex_attention" and not flash_attention_installed():
        assumptions.append("flash-attn is not installed here: ranks where it is take flash_attention_2, at the "
                           "same per-sample cost")
    if not packing:
        return {**plan, "assumptions": assumptions}

    micro = args.per_device_train_batch_size
    if pack_sequence_lengths is not None:
        per_sample, dense = attention_pairs(pack_sequence_lengths, micro)
        mix = "the tokenized packs"
    else:
        per_sample = round(sum(s.sequences * s.mean_tokens * (s.mean_tokens + 1) / 2 for s in cfg.plan.sources))
        rows = math.ceil(data["packs"] / micro)
        dense = round(rows * (data["tokens"] / rows) ** 2)
        mix = "plan.sources"
        assumptions.append("attention pairs from plan.sources: every sample at its source's mean length, every row "
                           "equally full (a real spread of lengths costs more per sample: sdpa's excess is smaller)")
    flops_per_pair = attention_flops_per_pair(hf_config)
    model_flops = matmul_flops_per_token(hf_config, counts["total"], counts["embedding"]) * data["tokens"]
    per_sample_flops = model_flops + flops_per_pair * per_sample
    row = micro * data["pack_length"]
    a = activation_bytes(cfg, args)
    held = 1 if args.activation_checkpointing else hf_config.num_hidden_layers
    return {**plan, "cost_follows": "samples" if implementation not in ("sdpa", "eager") else "pack",
            "length_mix": mix, "row_tokens": row,
            "per_sample_pairs": per_sample, "dense_pairs": dense,
            "sdpa_over_per_sample_attention_flops": round(dense / per_sample, 3),
            "sdpa_extra_flops_share": round(flops_per_pair * (dense - per_sample) / per_sample_flops, 4),
            "sdpa_mask_bytes": row**2 * (1 + a * held),
            "assumptions": assumptions}


def format_attention(attention: dict) -> str:
    choice = "auto" if attention["requested"] == "auto" else "explicit"
    line = f"{attention['implementation']} ({choice}, on {attention['device']}"
    if not attention["packing"]:
        return line + ", no packing)"
    line += f", packs from {attention['length_mix']}): "
    ratio, extra = f"{attention['sdpa_over_per_sample_attention_flops']:.1f}", attention["sdpa_extra_flops_share"]
    mask = f"{attention['sdpa_mask_bytes'] / GIB:.1f} GiB mask for each {attention['row_tokens']}-token row"
    if attention["cost_follows"] == "samples":
        return line + (f"cost follows the samples; sdpa would need a {mask} and {ratio}x the attention FLOPs "
                       f"(+{extra:.0%} of the run's FLOPs)")
    line += f"a dense mask over each row: {ratio}x the per-sample attention FLOPs (+{extra:.0%} of the run's FLOPs)"
    if attention["implementation"] == "sdpa":
        line += f", a {mask}"
    if attention["device"] == "cuda":
        line += "; model.attn_implementation=auto costs what the samples cost"
    return line
