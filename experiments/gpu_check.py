"""GPU figures for the paper-scale setup, stage by stage (experiments/gpu_check.sh runs each under a
timeout and keeps going when one fails). Every stage merges its figures into one JSON file.

  train     lw's SFT path as the workers run it, on the GLM-4-9B architecture (conf/model/glm4_9b.yaml's
            numbers, random weights, no download; --layers of its 40 on one GPU, `auto`: the most
            whose planned memory, lw/plan/, fits this GPU less the planner's headroom): 32k-token
            packs of a LongWriter-like length mix from lw's packer, lw's pack collator and SFT trainer
            with the paper recipe's loss (pack_sequences_over_30) through TRL's fused LM head,
            `attn_implementation: auto`, bf16, activation checkpointing, under the DeepSpeed config --ds
            (zero3: no offload; zero3_offload: optimizer states and parameters to the host, torch
            AdamW; zero3_offload_cpuadam: the same with DeepSpeed's CPU Adam). It records tokens/s, MFU
            from per-sample FLOPs (lw/plan/flops.py), where each step's time goes (the engine's
            forward, backward and optimizer step, timed apart), and the planner's estimate for the
            run beside its measured peak.
  generate  generation=hf on the full-depth architecture: static batches vs continuous batching on
            LongBench-Write's spread of answer lengths (scaled down, EOS ignored), batch-1 decode
            against the memory-bandwidth bound (a device copy, timed), with and without a static
            cache + torch.compile, peak memory (vLLM too where it is installed).

`--smoke` runs a tiny GLM on CPU: a check of this script on machines without a GPU.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Dense bf16 peak of the chips this runs on (SXM parts; the H200 has the H100's compute).
PEAK_BF16_FLOPS = {"H100": 989.4e12, "H200": 989.4e12, "H800": 989.4e12, "A100": 312e12}
BYTES_PER_PARAM_OFFLOADED = 18  # fp32 master 4 + Adam 8 + fp32 grads 4 + bf16 params 2


def record(path: Path, key: str, value) -> None:
    data = json.loads(path.read_text()) if path.exists() else {}
    data[key] = value
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    print(f"gpu_check: {key} = {json.dumps(value)}", flush=True)


def glm4_9b_config(smoke: bool, layers: int | None = None):
    import yaml
    from transformers import AutoConfig

    arch = yaml.safe_load((REPO / "conf" / "model" / "glm4_9b.yaml").read_text())["arch"]
    if smoke:
        arch.update(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=16, pad_token_id=0, eos_token_id=1)
    if layers:
        arch["num_hidden_layers"] = layers
    config = AutoConfig.for_model(arch.pop("model_type"), **arch)
    config.max_position_embeddings = 131072  # the experiment's config_overrides for 32k packs
    return config


def planned_gib(config, pack_length: int, gpu_gib: float) -> dict:
    """lw's planner (lw/plan/) on this run: GLM-4-9B's paper experiment at `config`'s shapes, one
    GPU of `gpu_gib`, one pack of `pack_length` a step: GiB per rank by DeepSpeed config."""
    import yaml
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from lw.cli import CONFIG_DIR
    from lw.plan.training import build_plan
    from lw.train.registry import trainer_for

    arch = yaml.safe_load((REPO / "conf" / "model" / "glm4_9b.yaml").read_text())["arch"]
    ours = config.to_dict()
    overrides = [f"model.arch.{k}={json.dumps(ours[k])}" for k in arch
                 if k in ours and k != "rope_parameters" and ours[k] != arch[k]]
    overrides += ["experiment=longwriter_glm4_9b", f"data.pack_length={pack_length}", "launcher.nproc_per_node=1",
                  f"plan.gpu_memory_gib={gpu_gib}", "logger=none"]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return build_plan(cfg, trainer_for(cfg), "(gpu check)")["deepspeed"]["choice"]["gpu_per_rank_gib"]


def layers_for_gpu(config, pack_length: int, gpu_gib: float) -> int:
    """The most layers whose planned GPU memory without offload fits `gpu_gib` less the planner's
    headroom (the estimate is linear in the layer count: two plans give it)."""
    import copy

    from lw.plan.offload import HEADROOM_GIB

    one, two = copy.deepcopy(config), copy.deepcopy(config)
    one.num_hidden_layers, two.num_hidden_layers = 1, 2
    first, second = planned_gib(one, pack_length, gpu_gib)["zero3"], planned_gib(two, pack_length, gpu_gib)["zero3"]
    if second <= first:  # a layer below the plan's rounding (SMOKE's tiny GLM): all of them fit
        return config.num_hidden_layers
    fit = 1 + math.floor((gpu_gib - HEADROOM_GIB - first) / (second - first))
    return max(1, min(config.num_hidden_layers, fit))


def layers_for_host(config, host_fraction: float) -> int:
    """The most layers whose offloaded states fit `host_fraction` of the available host RAM."""
    import copy

    import psutil

    one, two = copy.deepcopy(config), copy.deepcopy(config)
    one.num_hidden_layers, two.num_hidden_layers = 1, 2
    from lw.models import parameter_counts

    p1, p2 = parameter_counts(one)["total"], parameter_counts(two)["total"]
    per_layer, rest = p2 - p1, 2 * p1 - p2
    budget = host_fraction * psutil.virtual_memory().available / BYTES_PER_PARAM_OFFLOADED
    return max(1, min(config.num_hidden_layers, math.floor((budget - rest) / per_layer)))


def peak_flops() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def packed_mix(vocab: int, pack_length: int, packs: int):
    """Packs of a LongWriter-like length mix (benchmarks/packed_attention.py's: a few long answers,
    many short chats) through lw's packer, as `data.pack_length` packs the training set."""
    import torch
    from datasets import Dataset

    from benchmarks.packed_attention import length_mix
    from lw.data.packing import pack

    # Twice the samples needed: best fit decreasing leaves the last packs part-filled; the fullest are kept.
    lengths = [n for seed in range(2 * packs) for n in length_mix(pack_length, seed)]
    generator = torch.Generator().manual_seed(0)
    rows = [{"input_ids": torch.randint(0, vocab, (n,), generator=generator).tolist(),
             "completion_mask": [0] * min(64, n // 4) + [1] * (n - min(64, n // 4))} for n in lengths]
    packed = pack(Dataset.from_list(rows), pack_length)
    fill = [sum(lengths) for lengths in packed["seq_lengths"]]
    return packed.select(sorted(range(len(fill)), key=lambda i: -fill[i])[:packs])


def deepspeed_label(ds_config: dict) -> dict:
    """What a DeepSpeed config offloads and which optimizer steps, as the record states it."""
    zero = ds_config["zero_optimization"]
    moved = [what for what, key in (("optimizer states", "offload_optimizer"), ("parameters", "offload_param"))
             if zero.get(key, {}).get("device") == "cpu"]
    optimizer = "torch AdamW" if "optimizer" not in ds_config else (
        "DeepSpeed CPU Adam" if "optimizer states" in moved else "DeepSpeed FusedAdam")
    return {"zero_stage": zero["stage"], "offload": " and ".join(moved) + " to CPU" if moved else "none",
            "optimizer": optimizer + (" on the host CPU" if "optimizer states" in moved else " beside the model")}


class StepBreakdown:
    """Wall time of the DeepSpeed engine's forward, backward and optimizer step in each training step
    (the GPU synchronized around each), and the sample lengths of each forward's packs, read from the
    position ids the pack collator restarts per sample."""

    def __init__(self, cuda: bool):
        self.cuda, self.steps = cuda, []

    def wall(self) -> float:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
        return time.time()

    def install(self, engine) -> None:
        for name in ("forward", "backward", "step"):
            setattr(engine, name, self._timed(name, getattr(engine, name)))

    def _timed(self, name, method):
        import torch

        def timed(*a, **k):
            if name == "forward":
                self.steps.append({"lengths": _sample_lengths(k.get("position_ids"))})
            if self.cuda:
                torch.cuda.synchronize()
            start = time.time()
            result = method(*a, **k)
            if self.cuda:
                torch.cuda.synchronize()
            self.steps[-1][f"{name}_seconds"] = self.steps[-1].get(f"{name}_seconds", 0) + time.time() - start
            return result
        return timed


def _sample_lengths(position_ids) -> list[int]:
    import torch

    starts = torch.nonzero(position_ids[0] == 0).flatten().tolist() + [position_ids.shape[1]]
    return [b - a for a, b in zip(starts, starts[1:])]


def train(args) -> int:
    """lw's SFT path on packs: LongWriter-like 32k packs from lw's packer, lw's pack collator and
    trainer, `attn_implementation: auto`, under the DeepSpeed config --ds; MFU from per-sample FLOPs."""
    import deepspeed
    import psutil
    import torch
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import SFTConfig

    from lw.data.packing import PackCollator
    from lw.launch.topology import single_process_env
    from lw.models import attention_implementation, parameter_counts, use_attention
    from lw.models.tiny import tiny_tokenizer
    from lw.plan.flops import train_flops
    from lw.train.sft import LwSFTTrainer
    from lw.train.worker import skip_cpu_shm_comm

    cuda = torch.cuda.is_available()
    single_process_env()
    if not cuda:  # as lw's worker: no compiled shared-memory all-reduce on CPU
        skip_cpu_shm_comm()
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    ds_config = json.loads((REPO / "conf" / "deepspeed" / f"{args.ds}.json").read_text())
    label = deepspeed_label(ds_config)
    full = glm4_9b_config(args.smoke)
    pack_length = 512 if args.smoke else args.seq_len
    gpu_gib = torch.cuda.get_device_properties(0).total_memory / 2**30 if cuda else 80.0
    layers = layers_for_gpu(full, pack_length, gpu_gib) if args.layers == "auto" else int(args.layers)
    if label["offload"] != "none":  # the offloaded states must fit the host
        layers = min(layers, layers_for_host(full, args.host_fraction))
    config = glm4_9b_config(args.smoke, layers)
    counts = parameter_counts(config)
    planned = planned_gib(config, pack_length, gpu_gib)
    steps = args.warmup + args.steps
    implementation = attention_implementation(SimpleNamespace(attn_implementation="auto"), "cuda" if cuda else "cpu",
                                              packing=True, training=True)
    packs = packed_mix(config.vocab_size, pack_length, steps)
    training_args = SFTConfig(
        output_dir=tempfile.mkdtemp(prefix="gpu_check_"), deepspeed=ds_config, bf16=cuda, use_cpu=not cuda,
        ddp_backend=None if cuda else "gloo", per_device_train_batch_size=1, gradient_accumulation_steps=1,
        max_steps=steps, learning_rate=1e-5, lr_scheduler_type="cosine", weight_decay=0.1, adam_beta1=0.9,
        adam_beta2=0.95, activation_checkpointing=True, logging_steps=1, save_strategy="no", report_to="none",
        dataloader_num_workers=0, disable_tqdm=True, max_length=pack_length, completion_only_loss=True)
    started = time.time()
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if cuda else torch.float32)  # zero.Init
    use_attention(model, implementation)
    build_seconds = time.time() - started
    breakdown = StepBreakdown(cuda)

    class Install(TrainerCallback):
        def on_train_begin(self, *a, **k):
            breakdown.install(trainer.model_wrapped)  # the DeepSpeed engine, made by train()

        def on_step_begin(self, *a, **k):
            self.start = breakdown.wall()

        def on_step_end(self, *a, **k):
            breakdown.steps[-1]["total_seconds"] = breakdown.wall() - self.start

    tokenizer = tiny_tokenizer(tempfile.mkdtemp())
    trainer = LwSFTTrainer(model=model, args=training_args, train_dataset=packs, processing_class=tokenizer,
                           data_collator=PackCollator(pad_token_id=tokenizer.pad_token_id), callbacks=[Install()],
                           loss_weighting="pack_sequences_over_30", fused_lm_head=not args.full_logits)
    key = f"train_{args.ds}_{pack_length}"
    try:
        trainer.train()
    except torch.cuda.OutOfMemoryError as e:
        record(args.out, key, {"oom": True, "layers": layers, "pack_tokens": pack_length, "error": str(e)[:300],
                               "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2), **label,
                               "planned_gpu_gib": planned})
        return 2
    record(args.out, key, {
        "device": torch.cuda.get_device_name() if cuda else "cpu", "deepspeed_config": args.ds, **label,
        "attention_implementation": implementation, "data": "LongWriter-like length mix packed by lw.data.packing, "
        "lw's PackCollator (padding-free, position ids restart per sample), lw's SFT trainer",
        "layers": layers, "layers_chosen": "the most whose planned memory fits this GPU less the planner's headroom"
        if args.layers == "auto" else "as given", "full_depth_layers": full.num_hidden_layers,
        "parameters": counts["total"], "gpu_gib": round(gpu_gib, 1),
        "loss": "pack_sequences_over_30, " + ("full logits" if args.full_logits else "TRL's fused LM head"),
        "planned_gpu_gib": planned.get(args.ds, planned["zero3_offload"]),
        "pack_tokens": pack_length, "micro_batch_packs": 1, "model_build_seconds": round(build_seconds, 1),
        **throughput(breakdown.steps, args.warmup, config, counts, train_flops),
        "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "host_rss_gib": round(psutil.Process().memory_info().rss / 2**30, 2),
        "losses": [round(r["loss"], 4) for r in trainer.state.log_history if "loss" in r],
    })
    return 0


def throughput(steps: list[dict], warmup: int, config, counts: dict, train_flops) -> dict:
    """Tokens/s and MFU over the steps after warm-up, and where their time went."""
    timed = steps[warmup:] or steps
    for s in steps:  # the loss, the trainer's metrics and logging: outside the engine's calls
        s["other_seconds"] = s["total_seconds"] - sum(s.get(f"{p}_seconds", 0) for p in ("forward", "backward", "step"))
    parts = ("forward", "backward", "step", "other")
    seconds = sum(s["total_seconds"] for s in timed)
    tokens = sum(sum(s["lengths"]) for s in timed)
    flops = sum(train_flops(config, counts["total"], counts["embedding"], s["lengths"]) for s in timed)
    peak = peak_flops()
    return {
        "flops_convention": "lw.plan.flops.train_flops: 6 x matmul parameters a token + 12 x layers x heads x "
                            "head_dim x the causal pairs within each sample (not the pack's dense square)",
        "samples_per_pack": [len(s["lengths"]) for s in steps], "real_tokens_per_step": [sum(s["lengths"]) for s in
                                                                                          steps],
        "seconds_per_step": {p: [round(s.get(f"{p}_seconds", 0), 3) for s in steps] for p in parts},
        "share_of_timed_seconds": {p: round(sum(s.get(f"{p}_seconds", 0) for s in timed) / seconds, 3) for p in parts},
        "tokens_per_second": round(tokens / seconds, 1),
        "model_flops_per_token": round(flops / tokens),
        "mfu": round(flops / seconds / peak, 4) if peak else None,
    }


def dpo(args) -> int:
    """A few DPO steps of the GLM-4-9B architecture under ZeRO-3 offload, through lw's DPO trainer:
    the reference pass (precomputed on the same sharded model) and the policy steps, timed."""
    import deepspeed
    import torch
    from datasets import Dataset
    from trl import DPOConfig

    from lw.launch.topology import single_process_env
    from lw.models.tiny import tiny_tokenizer
    from lw.train.dpo import LwDPOTrainer
    from lw.train.worker import skip_cpu_shm_comm

    cuda = torch.cuda.is_available()
    single_process_env()
    if not cuda:
        skip_cpu_shm_comm()
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    full = glm4_9b_config(args.smoke)
    layers = min(int(args.layers), layers_for_host(full, args.host_fraction))
    config = glm4_9b_config(args.smoke, layers)
    seq_len = 128 if args.smoke else args.seq_len
    prompt_len = min(args.prompt_len, seq_len // 4)
    pairs = args.warmup + args.steps
    generator = torch.Generator().manual_seed(0)

    def ids(n):
        return torch.randint(0, config.vocab_size, (n,), generator=generator).tolist()

    data = Dataset.from_dict({"prompt_ids": [ids(prompt_len) for _ in range(pairs)],
                              "chosen_ids": [ids(seq_len - prompt_len) for _ in range(pairs)],
                              "rejected_ids": [ids((seq_len - prompt_len) // 2) for _ in range(pairs)]})
    ds_config = json.loads((REPO / "conf" / "deepspeed" / f"{args.ds}.json").read_text())
    dpo_args = DPOConfig(
        output_dir=tempfile.mkdtemp(prefix="gpu_check_dpo_"), deepspeed=ds_config, bf16=cuda, use_cpu=not cuda,
        ddp_backend=None if cuda else "gloo", per_device_train_batch_size=1, max_steps=pairs, learning_rate=1e-6,
        beta=0.1, loss_type=["sigmoid", "sft"], loss_weights=[1.0, 1.0], precompute_ref_log_probs=True,
        max_length=seq_len, gradient_checkpointing=True, logging_steps=1, save_strategy="no", report_to="none",
        dataloader_num_workers=0, disable_tqdm=True)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if cuda else torch.float32)  # zero.Init
    started = time.time()
    try:
        trainer = LwDPOTrainer(model=model, args=dpo_args, train_dataset=data,
                               processing_class=tiny_tokenizer(tempfile.mkdtemp()))
        reference_seconds = time.time() - started  # the precomputed reference pass runs in __init__
        started = time.time()
        trainer.train()
    except torch.cuda.OutOfMemoryError as e:
        record(args.out, f"dpo_{seq_len}", {"oom": True, "layers": layers, "error": str(e)[:300]})
        return 2
    record(args.out, f"dpo_{seq_len}", {
        "device": torch.cuda.get_device_name() if cuda else "cpu", "deepspeed_config": args.ds,
        **deepspeed_label(ds_config), "layers": layers, "full_depth_layers": full.num_hidden_layers, "pair_tokens": [seq_len, prompt_len + (seq_len - prompt_len) // 2],
        "reference_pass_seconds_per_pair": round(reference_seconds / pairs, 2),
        "train_seconds_per_pair": round((time.time() - started) / pairs, 2),
        "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "rewards_margins": [round(r["rewards/margins"], 4) for r in trainer.state.log_history
                            if "rewards/margins" in r],
    })
    return 0


def grpo(args) -> int:
    """A few GRPO steps of the GLM-4-9B layer shapes under ZeRO-3 offload, through lw's length reward:
    each step samples completions (transformers generate on the gathered ZeRO-3 weights) and trains
    on them. Random weights and the tiny tokenizer's vocabulary (a random model's text needs no
    real vocabulary; the layers keep GLM-4-9B's width), timed per step."""
    import deepspeed
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    from lw.launch.topology import single_process_env
    from lw.models.chat_format import get_chat_format
    from lw.models.tiny import tiny_tokenizer
    from lw.train.rewards import length_reward
    from lw.train.worker import skip_cpu_shm_comm

    cuda = torch.cuda.is_available()
    single_process_env()
    if not cuda:
        skip_cpu_shm_comm()
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    tokenizer = tiny_tokenizer(tempfile.mkdtemp())
    tokenizer.chat_template = get_chat_format("glm4").jinja
    full = glm4_9b_config(args.smoke)
    layers = min(int(args.layers), layers_for_host(full, args.host_fraction))
    config = glm4_9b_config(args.smoke, layers)
    config.vocab_size = len(tokenizer)
    # GLM-4's pad and eos ids lie outside the tiny tokenizer's vocabulary: take the tokenizer's.
    config.pad_token_id, config.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    new_tokens = 32 if args.smoke else args.new_tokens
    steps = args.warmup + args.steps
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": f"Write a {n}-word note about rivers."}],
                               "length": n} for n in [50, 100, 200, 400] * steps])
    ds_config = json.loads((REPO / "conf" / "deepspeed" / f"{args.ds}.json").read_text())
    grpo_args = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="gpu_check_grpo_"), deepspeed=ds_config, bf16=cuda, use_cpu=not cuda,
        ddp_backend=None if cuda else "gloo", per_device_train_batch_size=8, num_generations=4,
        max_completion_length=new_tokens, max_steps=steps, learning_rate=1e-6, gradient_checkpointing=True,
        logging_steps=1, save_strategy="no", report_to="none", dataloader_num_workers=0, disable_tqdm=True)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if cuda else torch.float32)  # zero.Init
    try:
        trainer = GRPOTrainer(model=model, reward_funcs=[length_reward], args=grpo_args, train_dataset=data,
                              processing_class=tokenizer)
        trainer.train()
    except torch.cuda.OutOfMemoryError as e:
        record(args.out, "grpo", {"oom": True, "layers": layers, "error": str(e)[:300]})
        return 2
    logged = [r for r in trainer.state.log_history if "reward" in r]
    record(args.out, "grpo", {
        "device": torch.cuda.get_device_name() if cuda else "cpu", "deepspeed_config": args.ds,
        **deepspeed_label(ds_config), "layers": layers, "full_depth_layers": full.num_hidden_layers,
        "completions_per_step": 8, "max_completion_tokens": new_tokens,
        "step_seconds_after_warmup": [round(r["step_time"], 2) for r in logged[args.warmup:] if "step_time" in r],
        "mean_completion_tokens": [round(r["completions/mean_length"], 1) for r in logged],
        "length_reward": [round(r["reward"], 4) for r in logged],
        "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
    })
    return 0


def generate(args) -> int:
    """generation=hf on the GLM-4-9B architecture (random weights, bf16): static batches vs continuous
    batching on LongBench-Write's spread of lengths (scaled by 1/--gen-scale, EOS ignored), batch-1
    decode against the bound of the measured device copy bandwidth, with and without a static cache +
    torch.compile. benchmarks/generation.py's functions; each figure is recorded as it is measured."""
    import torch
    from transformers import AutoModelForCausalLM

    sys.path.insert(0, str(REPO / "benchmarks"))
    import generation as bench

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    config = glm4_9b_config(args.smoke)
    requests, scale = (24, 2000.0) if args.smoke else (args.gen_requests, args.gen_scale)
    decode_tokens, copy_mib = (6, 64) if args.smoke else (args.decode_tokens, 4096)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if cuda else torch.float32).eval()
    lengths = bench.spread(requests, scale)
    inputs = bench.prompts(requests, config.vocab_size)
    results: dict = {"device": torch.cuda.get_device_name() if cuda else "cpu", "layers": config.num_hidden_layers,
                     "requests": requests, "scale": scale, "answer_tokens": sum(lengths),
                     "longest_answer": max(lengths), "attention": model.config._attn_implementation}

    def measured(key, value):
        results[key] = value
        record(args.out, "generate", results)

    bandwidth = bench.copy_bandwidth(device, copy_mib)
    measured("copy_bandwidth_gb_s", round(bandwidth / 1e9, 1))
    measured("decode_batch1", bench.decode_against_bound(model, decode_tokens, bandwidth))
    pad, eos = config.pad_token_id, config.eos_token_id if isinstance(config.eos_token_id, int) else config.eos_token_id[0]
    measured("continuous", bench.run_continuous(model, inputs, lengths, args.gen_concurrency, pad))
    measured("static", bench.run_static(model, inputs, lengths, args.gen_batch_size, pad, eos))
    measured("continuous_vs_static", round(results["continuous"]["tokens_per_s"] / results["static"]["tokens_per_s"], 2))
    if cuda:  # last: compiling 40 layers may take what is left of the stage's time
        measured("decode_batch1_static_cache_compiled",
                 bench.decode_against_bound(model, decode_tokens, bandwidth, cache_implementation="static"))
    del model
    if cuda:
        torch.cuda.empty_cache()
    if importlib.util.find_spec("vllm") is None:
        measured("vllm", "not installed here: skipped")
    else:
        prompts = {b: torch.tensor([ids[:20] for ids in inputs[:b]]) for b in (1, 8)}
        results.update(_vllm(config, prompts, max(lengths)))
        record(args.out, "generate", results)
    return 0


def _vllm(config, prompts, new_tokens) -> dict:
    """vLLM on the same architecture: dummy (random) weights from the saved config, token ids in."""
    from vllm import LLM, SamplingParams

    model_dir = tempfile.mkdtemp(prefix="gpu_check_vllm_")
    config.save_pretrained(model_dir)
    prompt_len = next(iter(prompts.values())).shape[1]
    llm = LLM(model=model_dir, load_format="dummy", skip_tokenizer_init=True, dtype="bfloat16",
              max_model_len=prompt_len + new_tokens + 16, gpu_memory_utilization=0.85, seed=0)
    params = SamplingParams(max_tokens=new_tokens, temperature=0.5, ignore_eos=True)
    results = {}
    for batch, ids in prompts.items():
        requests = [{"prompt_token_ids": row.tolist()} for row in ids]
        llm.generate(requests[:1], SamplingParams(max_tokens=4, ignore_eos=True))  # warm-up
        start = time.time()
        outputs = llm.generate(requests, params)
        seconds = time.time() - start
        results[f"vllm_batch{batch}_tokens_per_second"] = round(
            sum(len(o.outputs[0].token_ids) for o in outputs) / seconds, 1)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["train", "dpo", "grpo", "generate", "record"])
    parser.add_argument("--out", type=Path, required=True, help="JSON file the figures are merged into")
    parser.add_argument("--smoke", action="store_true", help="a tiny GLM on CPU: checks this script")
    parser.add_argument("--ds", default="zero3_offload", help="conf/deepspeed/<name>.json")
    parser.add_argument("--seq-len", type=int, default=32768)
    parser.add_argument("--layers", default="12", help="of the 40, or auto (train: the most the planner fits on this "
                                                       "GPU); with offload at most what the host holds")
    parser.add_argument("--full-logits", action="store_true", help="train: the loss from full logits, not fused")
    parser.add_argument("--host-fraction", type=float, default=0.5, help="of the available host RAM, for states")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--prompt-len", type=int, default=1024)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--gen-requests", type=int, default=120, help="generate: LongBench-Write's 120 prompts")
    parser.add_argument("--gen-scale", type=float, default=200, help="generate: required lengths / this")
    parser.add_argument("--gen-batch-size", type=int, default=16, help="generate: static batches")
    parser.add_argument("--gen-concurrency", type=int, default=128, help="generate: continuous, at most together")
    parser.add_argument("--decode-tokens", type=int, default=64, help="generate: batch-1 decode length")
    parser.add_argument("--key", help="record: the key")
    parser.add_argument("--value", help="record: a JSON value")
    args = parser.parse_args(argv)
    if args.stage == "record":
        record(args.out, args.key, json.loads(args.value))
        return 0
    return {"train": train, "dpo": dpo, "grpo": grpo, "generate": generate}[args.stage](args)


if __name__ == "__main__":
    sys.exit(main())
