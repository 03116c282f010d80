"""`launcher.deepspeed: auto`: the fastest DeepSpeed config whose estimated GPU memory per rank fits."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from omegaconf import DictConfig

from lw.models import attention_implementation, model_config, parameter_counts
from lw.plan.deepspeed import deepspeed_config_path, plan_deepspeed, planned_world
from lw.plan.memory import GIB, activation_bytes, plan_memory, zero3_gpu_states
from lw.plan.trainer_plan import TrainerPlan, trainer_plan

log = logging.getLogger(__name__)

# Left free on each GPU beyond the estimate: the CUDA context, NCCL's buffers, allocator fragmentation.
HEADROOM_GIB = 4.0
# What `launcher.deepspeed: auto` chooses from, fastest first (measured: conf/deepspeed/README.md).
AUTO_DEEPSPEED = ("zero3", "zero3_offload")


def plan_offload(cfg: DictConfig, args, hf_config, counts: dict, seq_len: int, shape: TrainerPlan, attention: dict,
                 total_steps: int, budget_gib: float) -> dict:
    """Which DeepSpeed config the run uses and why: launcher.deepspeed as given, or for `auto` the
    fastest of AUTO_DEEPSPEED whose estimated GPU memory per rank fits `budget_gib` less headroom."""
    requested = cfg.launcher.deepspeed
    nproc, nnodes = planned_world(cfg.launcher)
    estimates = {}
    for name in AUTO_DEEPSPEED:
        filled = plan_deepspeed(cfg, args, hf_config, nproc * nnodes, total_steps, name)
        memory = plan_memory(cfg, args, hf_config, counts, seq_len, nproc, nnodes, filled, shape, attention)
        estimates[name] = memory["gpu_per_rank_total_gib"]
    limit = budget_gib - HEADROOM_GIB
    fits = estimates["zero3"] <= limit
    if requested != "auto":
        chosen, how = requested, "as set in launcher.deepspeed"
    else:
        chosen = next((n for n in AUTO_DEEPSPEED if estimates[n] <= limit), AUTO_DEEPSPEED[-1])
        how = "launcher.deepspeed=auto: the fastest that fits"
    states = zero3_gpu_states(counts["total"], counts["largest_layer"], nproc * nnodes, False, False)
    reason = (f"without offload a rank needs {estimates['zero3']:.1f} GiB (ZeRO-3 states "
              f"{states['model_states'] / GIB:.1f} GiB at 16 bytes a parameter over {nproc * nnodes} ranks, the rest "
              f"activations and the gathered layer); with parameter+optimizer offload {estimates['zero3_offload']:.1f}"
              f" GiB; {budget_gib:g} GiB per GPU less {HEADROOM_GIB:g} GiB headroom: "
              + ("fits without offload" if fits else "does not fit without offload"))
    return {"requested": requested, "chosen": chosen, "how": how, "fits_without_offload": fits,
            "gpu_per_rank_gib": estimates, "gpu_memory_gib": budget_gib, "headroom_gib": HEADROOM_GIB,
            "reason": reason}


def resolve_deepspeed(cfg: DictConfig, trainer) -> Path:
    """The DeepSpeed config file for the workers: launcher.deepspeed as given, or for `auto` the
    planner's choice at start for `trainer` (the trainer module; no data read: one sequence of the
    planned length). The budget is this machine's GPU when it has one (the driver runs on a node of
    the job), else plan.gpu_memory_gib."""
    if cfg.launcher.deepspeed != "auto":
        return deepspeed_config_path(cfg.launcher.deepspeed)
    import torch

    from lw.data.settings import max_length_of

    args = trainer.training_args(cfg, Path(tempfile.gettempdir()) / "lw-plan", "none")
    hf_config = model_config(cfg)
    counts = parameter_counts(hf_config)
    nproc, nnodes = planned_world(cfg.launcher)
    shape = trainer_plan(trainer, cfg, args, counts, nnodes, hf_config)
    seq_len = shape.tokens_per_sequence or cfg.data.pack_length or max_length_of(cfg.data)
    packing = bool(cfg.data.pack_length)
    held = 1 if args.activation_checkpointing else hf_config.num_hidden_layers
    row = args.per_device_train_batch_size * seq_len
    attention = {"implementation": attention_implementation(cfg.model, "cuda", packing=packing, training=True),
                 "packing": packing, "sdpa_mask_bytes": row**2 * (1 + activation_bytes(cfg, args) * held)}
    budget = torch.cuda.get_device_properties(0).total_memory / GIB if torch.cuda.is_available() \
        else cfg.plan.gpu_memory_gib
    choice = plan_offload(cfg, args, hf_config, counts, seq_len, shape, attention, max(args.max_steps, 1), budget)
    log.info("launcher.deepspeed=auto: %s (%s)", choice["chosen"], choice["reason"])
    return deepspeed_config_path(choice["chosen"])
