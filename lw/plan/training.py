"""`dry_run=true`: what a run would do and need, computed without loading any weights.

The plan composes the config (Hydra did), counts the training data (tokenizing it when the
tokenizer is local, else from the sizes stated in `plan.sources`), works out packs and optimizer
steps, builds the DeepSpeed config as the HF Trainer fills it, estimates GPU memory per rank and
host RAM for the offload, and gives the exact launch command. It prints a summary and writes
RUN_DIR/plan.json.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lw.errors import UserError
from lw.models import model_config, parameter_counts
from lw.plan.attention import format_attention, plan_attention
from lw.plan.deepspeed import plan_deepspeed, planned_world
from lw.plan.flops import attention_flops_per_pair, matmul_flops_per_token, train_flops_per_token
from lw.plan.memory import plan_memory
from lw.plan.offload import plan_offload
from lw.plan.trainer_plan import trainer_plan
from lw.run_dir import plan_file

log = logging.getLogger(__name__)


def dry_run_training(cfg: DictConfig, run_dir: Path, trainer, command: str) -> dict:
    """The training plan (task=train and task=prepare), printed and written to RUN_DIR/plan.json;
    `trainer` is the trainer module, `command` the workers' launch command (lw.launch.driver)."""
    plan = build_plan(cfg, trainer, command)
    return write_plan(plan, format_plan(plan), run_dir)


def write_plan(plan: dict, text: str, run_dir: Path) -> dict:
    run_dir.mkdir(parents=True, exist_ok=True)
    plan_file(run_dir).write_text(json.dumps(plan, indent=2) + "\n")
    print(text)
    print(f"lw: dry run, plan in {plan_file(run_dir).resolve()}")
    return plan


def build_plan(cfg: DictConfig, trainer, command: str) -> dict:
    args = trainer.training_args(cfg, Path(tempfile.gettempdir()) / "lw-plan", "none")
    nproc, nnodes = planned_world(cfg.launcher)
    world = nproc * nnodes
    hf_config = model_config(cfg)
    counts = parameter_counts(hf_config)
    # What the trainer adds to the plan: sequences per training example (a DPO pair is two), training
    # sequences per data row (GRPO: its completions per prompt) and their length, its reference
    # pass, its generation, extra memory.
    shape = trainer_plan(trainer, cfg, args, counts, nnodes, hf_config)
    data = plan_data(cfg, trainer, args, world, shape.sequences_per_row, shape.tokens_per_sequence)
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
                     "command": command},
        "data": data,
        "optimizer": {"learning_rate": args.learning_rate, "lr_scheduler_type": str(args.lr_scheduler_type.value),
                      "warmup_steps": data["warmup_steps"], "weight_decay": args.weight_decay,
                      "adam_betas": [args.adam_beta1, args.adam_beta2], "bf16": args.bf16,
                      "activation_checkpointing": bool(args.activation_checkpointing)},
        "attention": attention,
        "deepspeed": deepspeed,
        "trainer": {"kind": str(cfg.trainer.kind), "sequences_per_example": shape.sequences_per_example,
                    **{k: getattr(shape, k) for k in ("reference", "generation") if getattr(shape, k) is not None}},
        "memory": memory,
        "assumptions": data.pop("assumptions") + attention.pop("assumptions") + memory.pop("assumptions")
        + shape.assumptions,
    }


# ----------------------------------------------------------------------------------------- data

def plan_data(cfg: DictConfig, trainer, args, world: int, sequences_per_row: int = 1,
              tokens_per_sequence: int | None = None) -> dict:
    """Sequences, tokens, packs and optimizer steps; tokenized when the tokenizer is local.

    `sequences_per_row`: training sequences each data row gives (GRPO: its completions per prompt);
    `tokens_per_sequence`: their length, when it is not the data's (GRPO: prompt + completion)."""
    from lw.data.settings import max_length_of  # lw.data imports datasets; a plan from stated sizes needs none

    pack_length = cfg.data.pack_length
    assumptions: list[str] = []
    stats, pack_sequence_lengths = _tokenized_stats(cfg, trainer, assumptions)
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


def _tokenized_stats(cfg: DictConfig, trainer, assumptions: list[str]) -> tuple[dict | None, list[list[int]] | None]:
    """The prepared set's statistics and pack lengths when the tokenizer and data are local, else
    (None, None) with the reason in `assumptions` (plan.sources then states the sizes)."""
    if not _tokenizer_is_local(cfg.model):
        return None, None
    try:
        return _prepared_stats(cfg, trainer)  # lw.data packs exactly as training will
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


def _prepared_stats(cfg: DictConfig, trainer) -> tuple[dict, list[list[int]] | None]:
    """The training set's statistics, and the sequence lengths of each pack when it is packed."""
    from lw.models import build_tokenizer

    tokenizer = build_tokenizer(cfg.model, cfg.cache_dir)
    with tempfile.TemporaryDirectory() as tmp:
        dataset, stats = trainer.build_dataset(cfg, tokenizer, Path(tmp))
    packed = "seq_lengths" in dataset.column_names
    return stats, dataset["seq_lengths"] if packed else None


def plan_flops(hf_config, counts: dict, data: dict, attention: dict) -> dict:
    """Model FLOPs per trained token (lw/plan/flops.py's convention): with packs, attention within
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
