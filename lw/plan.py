"""`dry_run=true`: what a run would do and need, computed without loading any weights.

The plan composes the config (Hydra did), counts the training data (tokenizing it when the
tokenizer is local, else from the sizes stated in `plan.sources`), works out packs and optimizer
steps, builds the DeepSpeed config as the HF Trainer fills it, estimates GPU memory per rank and
host RAM for the offload, and gives the exact launch command. It prints a summary and writes
RUN_DIR/plan.json.

Memory model (per rank; P parameters, L layers, hidden h, FFN width I, n_h query and n_kv
key/value heads of width d, vocabulary V, m sequences of s tokens per micro-batch, a bytes per
activation element: 2 in bf16, 4 in fp32):
- model states: DeepSpeed's own ZeRO-3 estimator (`estimate_zero3_model_states_mem_needs`):
  with parameters and optimizer offloaded the GPU holds the largest layer's 16-bit parameters and
  gradients (4 bytes per parameter of that layer); the host holds 18 bytes per parameter (fp32
  master weights 4, Adam moments 8, fp32 gradients 4, 16-bit parameters 2) x 1.5 for buffers.
- communication buffers: 2 bytes x (prefetch bucket + 2 x reduce bucket).
- activations with activation checkpointing: each layer keeps its input, L*m*s*h*a, and the
  layer being recomputed holds its activations and their gradients, 2*m*s*(4h + 2*n_h*d +
  2*n_kv*d + 4I)*a. Without checkpointing every layer holds its activations: L times the latter/2.
- logits and loss: m*s*V*(a + 8): the logits, their fp32 copy for the loss and the fp32
  log-softmax kept for the backward pass. At 32k tokens and a 150k vocabulary this is the largest
  single term.
- attention scores: none with sdpa/flash/flex attention; m*n_h*s^2*a with eager attention.
- attention mask (sdpa on padding-free packs): transformers turns the restarting position ids of a
  row of T = m*s tokens into a dense boolean mask, T^2 bytes, and SDPA converts it to an additive
  mask of T^2*a bytes that each layer keeps for its backward pass (one layer at a time with
  activation checkpointing, L without).

Attention FLOPs of a packed run (`plan_attention`): flash and flex attention compute each sample's
causal attention, l(l+1)/2 (query, key) pairs per sample of l tokens; sdpa with the dense mask
computes every pair of the row, T^2 (a kernel cannot skip what an arbitrary mask hides). Each pair
costs 4*n_h*d FLOPs per layer forward, x3 with the backward pass.
"""

from __future__ import annotations

import json
import logging
import math
import shlex
import tempfile
from pathlib import Path
from types import SimpleNamespace

from omegaconf import DictConfig, OmegaConf

from lw.launch.flops import attention_flops_per_pair, causal_pairs, matmul_flops_per_token, train_flops_per_token
from lw.models import (apply_config_overrides, attention_implementation, checkpoint_config, flash_attention_installed,
                       local_device, parameter_counts)
from lw.train.registry import TrainerPlan, trainer_for, trainer_plan
from lw.errors import UserError
from lw.config import option_name

log = logging.getLogger(__name__)

GIB = 1024**3


def dry_run_training(cfg: DictConfig, run_dir: Path) -> dict:
    """The training plan (task=train and task=prepare), printed and written to RUN_DIR/plan.json."""
    plan = build_plan(cfg, run_dir)
    return write_plan(plan, format_plan(plan), run_dir)


def dry_run_eval(cfg: DictConfig, run_dir: Path) -> dict:
    """task=eval's plan: nothing is trained, so no training plan (lw/plan_eval.py)."""
    from lw.plan_eval import build_eval_plan, format_eval_plan

    plan = build_eval_plan(cfg)
    return write_plan(plan, format_eval_plan(plan), run_dir)


def write_plan(plan: dict, text: str, run_dir: Path) -> dict:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "plan.json").write_text(json.dumps(plan, indent=2) + "\n")
    print(text)
    print(f"lw: dry run, plan in {(run_dir / 'plan.json').resolve()}")
    return plan


def build_plan(cfg: DictConfig, run_dir: Path) -> dict:
    trainer = trainer_for(cfg)
    args = trainer.training_args(cfg, Path(tempfile.gettempdir()) / "lw-plan", "none")
    nproc, nnodes = _world(cfg.launcher)
    world = nproc * nnodes
    hf_config = model_config(cfg)
    counts = parameter_counts(hf_config)
    # What the trainer adds to the plan: sequences per training example (a DPO pair is two), training
    # sequences per data row (GRPO: its completions per prompt) and their length, its reference
    # pass, its generation, extra memory.
    shape = trainer_plan(trainer, cfg, args, counts, nnodes, hf_config)
    data = plan_data(cfg, args, world, shape.sequences_per_row, shape.tokens_per_sequence)
    attention = plan_attention(cfg, args, hf_config, counts, data, data.pop("pack_sequence_lengths"))
    deepspeed = None
    if cfg.launcher.kind != "local":
        choice = plan_offload(cfg, args, hf_config, counts, data["tokens_per_sequence"], shape, attention,
                              data["total_steps"], cfg.plan.gpu_memory_gib)
        deepspeed = {**plan_deepspeed(cfg, args, hf_config, world, data["total_steps"], choice["chosen"]),
                     "choice": choice}
    memory = plan_memory(cfg, args, hf_config, counts, data["tokens_per_sequence"], nproc, nnodes, deepspeed,
                         shape, attention)
    return {
        "run_name": cfg.run_name,
        "task": str(cfg.task),
        "model": {"name": cfg.model.name, "path": cfg.model.path, "model_type": hf_config.model_type,
                  "parameters": counts["total"], "largest_layer_parameters": counts["largest_layer"],
                  "layers": hf_config.num_hidden_layers, "hidden_size": hf_config.hidden_size,
                  "vocab_size": hf_config.vocab_size,
                  "max_position_embeddings": getattr(hf_config, "max_position_embeddings", None),
                  "config_overrides": OmegaConf.to_container(cfg.model.config_overrides, resolve=True),
                  **plan_flops(hf_config, counts, data, attention)},
        "launcher": {"kind": cfg.launcher.kind, "nnodes": nnodes, "nproc_per_node": nproc, "world_size": world,
                     "command": launch_command(cfg, run_dir)},
        "data": data,
        "optimizer": {"learning_rate": args.learning_rate, "lr_scheduler_type": str(args.lr_scheduler_type.value),
                      "warmup_steps": data["warmup_steps"], "weight_decay": args.weight_decay,
                      "adam_betas": [args.adam_beta1, args.adam_beta2], "bf16": args.bf16,
                      "activation_checkpointing": bool(args.activation_checkpointing)},
        "attention": attention,
        "deepspeed": deepspeed,
        "trainer": {"kind": option_name(cfg.trainer.kind), "sequences_per_example": shape.sequences_per_example,
                    **{k: getattr(shape, k) for k in ("reference", "generation") if getattr(shape, k) is not None}},
        "memory": memory,
        "assumptions": data.pop("assumptions") + attention.pop("assumptions") + memory.pop("assumptions")
        + shape.assumptions,
    }


def _world(launcher_cfg) -> tuple[int, int]:
    if launcher_cfg.kind == "local":
        return 1, 1
    return launcher_cfg.nproc_per_node, launcher_cfg.nnodes


# ---------------------------------------------------------------------------------------- model

def model_config(cfg: DictConfig):
    """The model's transformers config, from the tiny spec, a local checkpoint or `model.arch`."""
    from transformers import AutoConfig

    model_cfg = cfg.model
    if model_cfg.path is None:
        from lw.models import build_tokenizer
        from lw.models.tiny import tiny_model_config

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


# ----------------------------------------------------------------------------------------- data

def plan_data(cfg: DictConfig, args, world: int, sequences_per_row: int = 1,
              tokens_per_sequence: int | None = None) -> dict:
    """Sequences, tokens, packs and optimizer steps; tokenized when the tokenizer is local.

    `sequences_per_row`: training sequences each data row gives (GRPO: its completions per prompt);
    `tokens_per_sequence`: their length, when it is not the data's (GRPO: prompt + completion)."""
    from lw.data.settings import max_length_of  # lw.data imports datasets; a plan from stated sizes needs none

    pack_length = cfg.data.pack_length
    assumptions: list[str] = []
    stats, pack_sequence_lengths = _tokenized_stats(cfg, assumptions)
    if stats is not None:
        sequences, tokens, how = stats["sequences_packed"], stats["real_tokens"], "tokenized"
        sources = [{"name": cfg.data.name, "sequences": sequences, "tokens": tokens, "filter": stats}]
        packs = stats["packs"] if pack_length else None
    else:
        sources, packs = _assumed_sources(cfg, assumptions), None
        sequences = sum(s["sequences"] for s in sources)
        tokens = sum(s["tokens"] for s in sources)
        how = "assumed"
        if pack_length:
            packs = math.ceil(tokens / (pack_length * cfg.plan.packing_efficiency))
            assumptions.append(f"packs = tokens / (pack_length x packing efficiency {cfg.plan.packing_efficiency})")
    micro, accumulation = args.per_device_train_batch_size, args.gradient_accumulation_steps
    steps_per_epoch, total_steps, epochs = _optimizer_steps(
        args, packs if pack_length else sequences * sequences_per_row, world)
    tokens_per_sequence = tokens_per_sequence or pack_length or max_length_of(cfg.data)
    return {
        "counted": how,
        "sources": sources,
        "sequences": sequences,
        "tokens": tokens,
        "pack_length": pack_length,
        "packs": packs,
        "packing_efficiency": round(tokens / (packs * pack_length), 4) if packs else None,
        "tokens_per_sequence": tokens_per_sequence,
        "global_batch": micro * accumulation * world,
        "tokens_per_step": micro * accumulation * world * tokens_per_sequence,
        "steps_per_epoch": steps_per_epoch,
        "epochs": round(epochs, 3),
        "total_steps": total_steps,
        "warmup_steps": args.get_warmup_steps(total_steps),
        "assumptions": assumptions,
        "pack_sequence_lengths": pack_sequence_lengths,  # for plan_attention, not the plan file
    }


def _tokenized_stats(cfg: DictConfig, assumptions: list[str]) -> tuple[dict | None, list[list[int]] | None]:
    """The prepared set's statistics and pack lengths when the tokenizer and data are local, else
    (None, None) with the reason in `assumptions` (plan.sources then states the sizes)."""
    if not _tokenizer_is_local(cfg.model):
        return None, None
    try:
        return _prepared_stats(cfg)  # lw.data packs exactly as training will
    except FileNotFoundError as e:
        if not cfg.plan.sources:
            raise
        assumptions.append(f"the training data is not there yet ({e})")
        return None, None


def _assumed_sources(cfg: DictConfig, assumptions: list[str]) -> list[dict]:
    """The training sources as plan.sources states them, for data the plan cannot count."""
    if not cfg.plan.sources:
        raise UserError(f"dry run: the tokenizer of model.path={cfg.model.path!r} is not local, so the data "
                         "cannot be counted: state its size in plan.sources (name, sequences, mean_tokens)")
    assumptions.append("data sizes from plan.sources (not counted): " + ", ".join(
        f"{s.name} {s.sequences} sequences x {s.mean_tokens:g} tokens" for s in cfg.plan.sources))
    return [{"name": s.name, "sequences": s.sequences, "tokens": round(s.sequences * s.mean_tokens)}
            for s in cfg.plan.sources]


def _optimizer_steps(args, units: int, world: int) -> tuple[int, int, float]:
    """(steps per epoch, total steps, epochs) for `units` training rows over `world` ranks."""
    # As the HF Trainer counts: each rank gets ceil(units / world) examples in ceil(. / micro)
    # batches; an optimizer step takes `accumulation` of them, the last one of an epoch fewer.
    batches_per_rank = math.ceil(math.ceil(units / world) / args.per_device_train_batch_size)
    steps_per_epoch = max(math.ceil(batches_per_rank / args.gradient_accumulation_steps), 1)
    if args.max_steps > 0:
        return steps_per_epoch, args.max_steps, args.max_steps / steps_per_epoch
    return steps_per_epoch, math.ceil(args.num_train_epochs * steps_per_epoch), float(args.num_train_epochs)


def _tokenizer_is_local(model_cfg) -> bool:
    return model_cfg.path is None or Path(model_cfg.path).is_dir()


def _prepared_stats(cfg: DictConfig) -> tuple[dict, list[list[int]] | None]:
    """The training set's statistics, and the sequence lengths of each pack when it is packed."""
    from lw.models import build_tokenizer

    tokenizer = build_tokenizer(cfg.model, cfg.cache_dir)
    with tempfile.TemporaryDirectory() as tmp:
        dataset, stats = trainer_for(cfg).build_dataset(cfg, tokenizer, Path(tmp))
    packed = "seq_lengths" in dataset.column_names
    return stats, dataset["seq_lengths"] if packed else None


# ------------------------------------------------------------------------------------ attention

def planned_device(cfg: DictConfig) -> str:
    """The device the run trains on: plan.device, else GPU ranks for a launcher that starts workers
    (the paper configs) and this machine's device for launcher=local."""
    device = cfg.plan.get("device")
    if device is not None and device not in ("cuda", "cpu"):
        raise UserError(f"plan.device={device} must be cuda, cpu or null")
    return device or ("cuda" if cfg.launcher.kind != "local" else local_device())


def _activation_bytes(cfg: DictConfig, args) -> int:
    return 2 if bool(args.bf16) or cfg.model.dtype in ("bfloat16", "float16") else 4


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
    a = _activation_bytes(cfg, args)
    held = 1 if args.activation_checkpointing else hf_config.num_hidden_layers
    return {**plan, "cost_follows": "samples" if implementation not in ("sdpa", "eager") else "pack",
            "length_mix": mix, "row_tokens": row,
            "per_sample_pairs": per_sample, "dense_pairs": dense,
            "sdpa_over_per_sample_attention_flops": round(dense / per_sample, 3),
            "sdpa_extra_flops_share": round(flops_per_pair * (dense - per_sample) / per_sample_flops, 4),
            "sdpa_mask_bytes": row**2 * (1 + a * held),
            "assumptions": assumptions}


def plan_flops(hf_config, counts: dict, data: dict, attention: dict) -> dict:
    """Model FLOPs per trained token (lw/launch/flops.py's convention): with packs, attention within
    each sample of the planned length mix, not over the pack; without, a sequence of full length."""
    matmul = matmul_flops_per_token(hf_config, counts["total"], counts["embedding"])
    if "per_sample_pairs" in attention:
        per_token = matmul + attention_flops_per_pair(hf_config) * attention["per_sample_pairs"] / data["tokens"]
        basis = f"attention within each sample of {attention['length_mix']}"
    else:
        per_token = train_flops_per_token(hf_config, counts["total"], counts["embedding"], data["tokens_per_sequence"])
        basis = f"one sample of {data['tokens_per_sequence']} tokens per sequence (an upper bound)"
    return {"train_flops_per_token": per_token, "train_flops_basis": basis,
            "matmul_flops_per_token": matmul}


# ------------------------------------------------------------------------------------ deepspeed

class _ArgsAtWorldSize:
    """Training arguments as the workers will see them: the planned world size, not this process's."""

    def __init__(self, args, world_size: int):
        self._args = args
        self.world_size = world_size

    def __getattr__(self, name):
        return getattr(self._args, name)


def plan_deepspeed(cfg: DictConfig, args, hf_config, world: int, total_steps: int, name: str | None = None) -> dict:
    """The DeepSpeed config (`name`, else launcher.deepspeed) with its "auto" values filled as the
    HF Trainer fills them, validated."""
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig, unset_hf_deepspeed_config

    from lw.launch.driver import deepspeed_config_path, load_deepspeed_config

    name = name or cfg.launcher.deepspeed
    path = deepspeed_config_path(name)
    raw = load_deepspeed_config(name)
    planned = _ArgsAtWorldSize(args, world)
    filled = HfTrainerDeepSpeedConfig(raw)  # also registers itself globally: unset below
    try:
        filled.trainer_config_process(planned)
        filled.trainer_config_finalize(planned, SimpleNamespace(config=hf_config), total_steps)
    except ValueError as e:
        raise UserError(f"{path}: {e}") from None
    finally:
        unset_hf_deepspeed_config()
    config = filled.config
    unfilled = _auto_keys(config)
    if unfilled:
        raise UserError(f"{path}: no value for {unfilled} (\"auto\" left after the trainer's filling)")
    try:
        DeepSpeedZeroConfig(**config.get("zero_optimization", {}))
    except Exception as e:  # pydantic's ValidationError names the field
        raise UserError(f"{path}: zero_optimization is invalid for DeepSpeed: {e}") from None
    zero = config.get("zero_optimization", {})
    return {"file": str(path), "config": config, "stage": zero.get("stage", 0),
            "offload_optimizer": zero.get("offload_optimizer", {}).get("device", "none"),
            "offload_param": zero.get("offload_param", {}).get("device", "none"),
            "optimizer": config.get("optimizer", {}).get("type", "torch AdamW (the trainer's)")}


def _auto_keys(node, prefix: str = "") -> list[str]:
    if isinstance(node, dict):
        return [k for key, value in node.items() for k in _auto_keys(value, f"{prefix}{key}.")]
    return [prefix.rstrip(".")] if node == "auto" else []


# --------------------------------------------------------------------------------------- memory

def plan_memory(cfg: DictConfig, args, hf_config, counts: dict, seq_len: int, nproc: int, nnodes: int,
                deepspeed: dict | None, shape: TrainerPlan, attention: dict | None = None) -> dict:
    """GPU memory per rank and host memory per node: model states, activations, the trainer's extras."""
    a = _activation_bytes(cfg, args)
    activations = activation_memory(args, hf_config, a, args.per_device_train_batch_size * shape.sequences_per_example,
                                    seq_len, shape.full_logits, attention or {})
    assumptions = ["GPU and host memory are estimates (see lw/plan.py); allow a few GiB for the CUDA "
                   "context and fragmentation"]
    if not shape.full_logits:
        assumptions.append("the trainer projects the LM head in tiles over answer positions only (TRL's fused LM "
                           "head): no (tokens x vocabulary) logits are held")
    gpu, host_per_node = model_state_memory(cfg, counts, nproc, nnodes, deepspeed, assumptions)
    gpu.update({f"activations_{k}": v for k, v in activations.items()})
    gpu.update(shape.gpu_per_rank)
    trainer_host = dict(shape.host_per_node)
    if "reference_bf16_params" in trainer_host and deepspeed is not None and deepspeed["offload_param"] != "cpu":
        # A reference model sharded like the policy: without parameter offload its 16-bit shards stay
        # on the GPUs, one world's share per rank.
        gpu["reference_params_partition"] = trainer_host.pop("reference_bf16_params") * nnodes / (nproc * nnodes)
    host_per_node.update(trainer_host)
    total = sum(gpu.values())
    budget = cfg.plan.gpu_memory_gib
    return {
        "bytes_per_activation": a,
        "gpu_per_rank_gib": {k: round(v / GIB, 3) for k, v in gpu.items()},
        "gpu_per_rank_total_gib": round(total / GIB, 2),
        "gpu_memory_gib": budget,
        "fits_gpu": total / GIB <= budget,
        "host_per_node_gib": {k: round(v / GIB, 2) for k, v in host_per_node.items()},
        "assumptions": assumptions,
    }


def activation_memory(args, hf_config, a: int, m: int, seq_len: int, full_logits: bool, attention: dict) -> dict:
    """Activation bytes per rank by part, for m sequences of seq_len tokens (the model in lw/plan.py's docstring)."""
    h, layers, ffn = hf_config.hidden_size, hf_config.num_hidden_layers, hf_config.intermediate_size
    heads = hf_config.num_attention_heads
    kv_heads = getattr(hf_config, "num_key_value_heads", None) or heads
    d = getattr(hf_config, "head_dim", None) or h // heads
    layer_width = 4 * h + 2 * heads * d + 2 * kv_heads * d + 4 * ffn
    if args.activation_checkpointing:
        activations = {"layer_inputs": layers * m * seq_len * h * a, "recomputed_layer": 2 * m * seq_len * layer_width * a}
    else:
        activations = {"all_layers": layers * m * seq_len * layer_width * a, "recomputed_layer": m * seq_len * layer_width * a}
    activations["logits_and_loss"] = m * seq_len * hf_config.vocab_size * (a + 8) if full_logits else 0
    implementation = attention.get("implementation")
    activations["attention_scores"] = m * heads * seq_len**2 * a if implementation == "eager" else 0
    if implementation == "sdpa" and attention.get("packing"):
        activations["attention_mask"] = attention["sdpa_mask_bytes"]
    return activations


def model_state_memory(cfg: DictConfig, counts: dict, nproc: int, nnodes: int, deepspeed: dict | None,
                       assumptions: list[str]) -> tuple[dict, dict]:
    """(GPU bytes per rank, host bytes per node) of weights, gradients and optimizer states."""
    params, largest = counts["total"], counts["largest_layer"]
    gpu: dict[str, float] = {}
    host_per_node: dict[str, float] = {}
    if deepspeed is None or deepspeed["stage"] != 3:
        # One process, no sharding: weights, gradients and two Adam moments in the model's dtype.
        gpu["model_states"] = 4 * params * (2 if cfg.model.dtype in ("bfloat16", "float16") else 4)
        assumptions.append("no DeepSpeed: weights, gradients and Adam moments all on the device")
        return gpu, host_per_node
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    offload_opt = deepspeed["offload_optimizer"] == "cpu"
    offload_param = deepspeed["offload_param"] == "cpu"
    cpu_mem, _, _ = estimate_zero3_model_states_mem_needs(
        params, largest, num_gpus_per_node=nproc, num_nodes=nnodes, cpu_offload=offload_opt,
        cpu_offload_params=offload_param, zero_init=True, additional_buffer_factor=1.5)
    zero = deepspeed["config"]["zero_optimization"]
    gpu.update(zero3_gpu_states(params, largest, nproc * nnodes, offload_opt, offload_param))
    gpu["communication_buffers"] = 2 * (zero.get("stage3_prefetch_bucket_size", 0)
                                        + 2 * zero.get("reduce_bucket_size", 0))
    host_per_node["model_states_deepspeed_estimate"] = cpu_mem
    if offload_opt:
        share = params / nnodes  # the node's ranks hold this many parameters' states together
        host_per_node.update({"fp32_master_params": 4 * share, "adam_moments": 8 * share,
                              "fp32_gradients": 4 * share, "bf16_params": 2 * share if offload_param else 0})
    return gpu, host_per_node


# -------------------------------------------------------------------------------------- offload

# Left free on each GPU beyond the estimate: the CUDA context, NCCL's buffers, allocator fragmentation.
HEADROOM_GIB = 4.0
# What `launcher.deepspeed: auto` chooses from, fastest first (measured: conf/deepspeed/README.md).
AUTO_DEEPSPEED = ("zero3", "zero3_offload")


def zero3_gpu_states(params: int, largest: int, world: int, offload_optimizer: bool, offload_param: bool) -> dict:
    """Bytes per rank of ZeRO-3's model states on the GPU, as DeepSpeed allocates them with bf16
    (grad_accum_dtype = the model's dtype): each rank's partition of P/world parameters keeps its
    16-bit parameters (2 bytes), its 16-bit gradient partition (2), its fp32 master copy (4) and
    Adam's two fp32 moments (8): 16 bytes a parameter without offload. The optimizer offload moves
    all but the 16-bit parameters to the host, the parameter offload those too. The layer being
    computed is gathered whole: its 16-bit parameters and gradients, 4 bytes a parameter.
    (DeepSpeed's estimator counts 18 without offload: the step's fp32 gradient of a sub-group,
    which exists only after the backward pass has freed the activations.)"""
    share = params / world
    per_param = 0 if offload_param else 2
    if not offload_optimizer:
        per_param += 2 + 4 + 8
    return {"model_states": per_param * share, "gathered_layer": 4 * largest}


def plan_offload(cfg: DictConfig, args, hf_config, counts: dict, seq_len: int, shape: TrainerPlan, attention: dict,
                 total_steps: int, budget_gib: float) -> dict:
    """Which DeepSpeed config the run uses and why: launcher.deepspeed as given, or for `auto` the
    fastest of AUTO_DEEPSPEED whose estimated GPU memory per rank fits `budget_gib` less headroom."""
    requested = cfg.launcher.deepspeed
    nproc, nnodes = _world(cfg.launcher)
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


def resolve_deepspeed(cfg: DictConfig) -> str:
    """launcher.deepspeed for the workers: as given, or for `auto` the planner's choice at start (no
    data read: one sequence of the planned length). The budget is this machine's GPU when it has
    one (the driver runs on a node of the job), else plan.gpu_memory_gib."""
    if cfg.launcher.deepspeed != "auto":
        return cfg.launcher.deepspeed
    import torch

    from lw.data.settings import max_length_of

    trainer = trainer_for(cfg)
    args = trainer.training_args(cfg, Path(tempfile.gettempdir()) / "lw-plan", "none")
    hf_config = model_config(cfg)
    counts = parameter_counts(hf_config)
    nproc, nnodes = _world(cfg.launcher)
    shape = trainer_plan(trainer, cfg, args, counts, nnodes, hf_config)
    seq_len = shape.tokens_per_sequence or cfg.data.pack_length or max_length_of(cfg.data)
    packing = bool(cfg.data.pack_length)
    held = 1 if args.activation_checkpointing else hf_config.num_hidden_layers
    row = args.per_device_train_batch_size * seq_len
    attention = {"implementation": attention_implementation(cfg.model, "cuda", packing=packing, training=True),
                 "packing": packing, "sdpa_mask_bytes": row**2 * (1 + _activation_bytes(cfg, args) * held)}
    budget = torch.cuda.get_device_properties(0).total_memory / GIB if torch.cuda.is_available() \
        else cfg.plan.gpu_memory_gib
    choice = plan_offload(cfg, args, hf_config, counts, seq_len, shape, attention, max(args.max_steps, 1), budget)
    log.info("launcher.deepspeed=auto: %s (%s)", choice["chosen"], choice["reason"])
    return choice["chosen"]


# --------------------------------------------------------------------------------------- launch

def launch_command(cfg: DictConfig, run_dir: Path) -> str:
    """The exact worker command (a free port is picked now; the run picks its own)."""
    from lw.launch.driver import worker_command
    from lw.launch.topology import Topology, topology

    run_dir = run_dir.resolve()
    if cfg.launcher.kind == "local":
        return "(in process: the driver trains itself)"
    if cfg.launcher.kind == "slurm":
        # Known only inside the allocation; each node's driver fills these from SLURM's environment.
        topo = Topology(cfg.launcher.nnodes, "$SLURM_NODEID", cfg.launcher.nproc_per_node,  # type: ignore[arg-type]
                        "<first host of $SLURM_JOB_NODELIST>",
                        cfg.launcher.master_port or "<20000 + $SLURM_JOB_ID % 20000>")  # type: ignore[arg-type]
    else:
        topo = topology(cfg.launcher)
    return shlex.join(worker_command(cfg.launcher, topo, run_dir))


# ---------------------------------------------------------------------------------------- print

def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n:,}"


def format_plan(plan: dict) -> str:
    model, data, launcher, memory = plan["model"], plan["data"], plan["launcher"], plan["memory"]
    lines = [
        f"plan for {plan['run_name']} (dry run: no weights loaded, nothing trained)",
        f"  model      {model['name']} ({model['model_type']}): {_count(model['parameters'])} parameters, "
        f"{model['layers']} layers, hidden {model['hidden_size']}, vocab {model['vocab_size']}, "
        f"max positions {model['max_position_embeddings']}",
        f"  launcher   {launcher['kind']}: {launcher['nnodes']} node(s) x {launcher['nproc_per_node']} = world "
        f"{launcher['world_size']}",
        f"  data       {data['sequences']} sequences, {data['tokens']} tokens ({data['counted']})"
        + (f", {data['packs']} packs of {data['pack_length']} (efficiency {data['packing_efficiency']})"
           if data["packs"] else ""),
        f"  steps      {data['steps_per_epoch']} per epoch x {data['epochs']} epochs = {data['total_steps']} "
        f"(global batch {data['global_batch']}, {data['tokens_per_step']} token slots per step, "
        f"warmup {data['warmup_steps']})",
    ]
    lines.append(f"  attention  {format_attention(plan['attention'])}")
    if plan["deepspeed"]:
        ds = plan["deepspeed"]
        lines.append(f"  deepspeed  ZeRO-{ds['stage']}, optimizer offload {ds['offload_optimizer']}, parameter "
                     f"offload {ds['offload_param']}, optimizer {ds['optimizer']} ({ds['file']})")
        choice = ds["choice"]
        lines.append(f"  offload    {choice['chosen']} ({choice['how']}): {choice['reason']}")
    if plan["trainer"].get("generation"):
        lines.append(f"  generation {plan['trainer']['generation']}")
    if plan["trainer"].get("reference"):
        lines.append(f"  reference  {plan['trainer']['reference']}")
    lines.append(f"  GPU/rank   {memory['gpu_per_rank_total_gib']} GiB estimated of {memory['gpu_memory_gib']} GiB: "
                 + ", ".join(f"{k} {v}" for k, v in memory["gpu_per_rank_gib"].items()))
    if not memory["fits_gpu"]:
        lines.append("  WARNING    the estimate exceeds plan.gpu_memory_gib: lower the pack length or micro-batch")
    if memory["host_per_node_gib"]:
        lines.append("  host/node  " + ", ".join(f"{k} {v} GiB" for k, v in memory["host_per_node_gib"].items()))
    lines.append(f"  command    {launcher['command']}")
    lines += [f"  assumed    {a}" for a in plan["assumptions"]]
    return "\n".join(lines)


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
