"""GPU figures for the paper-scale setup, stage by stage (experiments/gpu_check.sh runs each under a
timeout and keeps going when one fails). Every stage merges its figures into one JSON file.

  train     tokens/s and MFU of the GLM-4-9B architecture (conf/model/glm4_9b.yaml's numbers, random
            weights, no download) under DeepSpeed ZeRO-3 with optimizer and parameter CPU offload
            (conf/deepspeed/*.json, the HF Trainer filling "auto") on one GPU with 32k-token packs,
            bf16, activation checkpointing: what lw's workers run. The offload needs about 18 bytes
            of host RAM per parameter (169 GB at full depth), so the depth is cut to what the host
            holds; width, vocabulary and pack length stay the paper's.
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


def train(args) -> int:
    import deepspeed
    import psutil
    import torch
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    from lw.launch.flops import train_flops_per_token
    from lw.launch.topology import single_process_env
    from lw.models import parameter_counts
    from lw.train.worker import skip_cpu_shm_comm

    cuda = torch.cuda.is_available()
    single_process_env()
    if not cuda:  # as lw's worker: no compiled shared-memory all-reduce on CPU
        skip_cpu_shm_comm()
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    full = glm4_9b_config(args.smoke)
    layers = args.layers or layers_for_host(full, args.host_fraction)
    config = glm4_9b_config(args.smoke, layers)
    counts = parameter_counts(config)
    params, embedding = counts["total"], counts["embedding"]
    full_params = parameter_counts(full)["total"]
    seq_len = 128 if args.smoke else args.seq_len
    ds_config = json.loads((REPO / "conf" / "deepspeed" / f"{args.ds}.json").read_text())
    out_dir = tempfile.mkdtemp(prefix="gpu_check_")
    training_args = TrainingArguments(
        output_dir=out_dir, deepspeed=ds_config, bf16=cuda, use_cpu=not cuda, ddp_backend=None if cuda else "gloo",
        per_device_train_batch_size=1, gradient_accumulation_steps=1, max_steps=args.warmup + args.steps,
        learning_rate=1e-5, lr_scheduler_type="cosine", weight_decay=0.1, adam_beta1=0.9, adam_beta2=0.95,
        gradient_checkpointing=True, logging_steps=1, save_strategy="no", report_to="none",
        remove_unused_columns=False, dataloader_num_workers=0, disable_tqdm=True)
    started = time.time()
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if cuda else torch.float32)  # zero.Init
    build_seconds = time.time() - started

    class RandomPacks(torch.utils.data.Dataset):
        def __len__(self):
            return args.warmup + args.steps

        def __getitem__(self, i):
            ids = torch.randint(0, config.vocab_size, (seq_len,), generator=torch.Generator().manual_seed(i))
            return {"input_ids": ids, "labels": ids.clone()}

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.seconds: list[float] = []

        def on_step_begin(self, *a, **k):
            if cuda:
                torch.cuda.synchronize()
            self.start = time.time()

        def on_step_end(self, *a, **k):
            if cuda:
                torch.cuda.synchronize()
            self.seconds.append(time.time() - self.start)

    timer = StepTimer()
    trainer = Trainer(model=model, args=training_args, train_dataset=RandomPacks(), callbacks=[timer])
    key = f"train_{args.ds}_{seq_len}"
    try:
        trainer.train()
    except torch.cuda.OutOfMemoryError as e:
        record(args.out, key, {"oom": True, "layers": layers, "seq_len": seq_len, "error": str(e)[:300],
                               "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)})
        return 2
    timed = timer.seconds[args.warmup:]
    step = sum(timed) / len(timed)
    tokens_per_s = seq_len / step
    flops = train_flops_per_token(config, params, embedding, seq_len)
    full_flops = train_flops_per_token(full, full_params, embedding, seq_len)
    peak = peak_flops()
    record(args.out, key, {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "deepspeed_config": args.ds, "zero_stage": 3, "offload": "optimizer+parameters to CPU",
        "layers": layers, "full_depth_layers": full.num_hidden_layers, "parameters": params,
        "full_depth_parameters": full_params, "seq_len": seq_len, "micro_batch": 1,
        "model_build_seconds": round(build_seconds, 1), "step_seconds": [round(s, 3) for s in timer.seconds],
        "tokens_per_second": round(tokens_per_s, 1),
        "train_flops_per_token": flops, "mfu": round(flops * tokens_per_s / peak, 4) if peak else None,
        # Compute scales with depth, the optimizer's host work with the parameter count: a range.
        "full_depth_tokens_per_second_if_compute_bound": round(tokens_per_s * flops / full_flops, 1),
        "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "host_rss_gib": round(psutil.Process().memory_info().rss / 2**30, 2),
        "loss": [round(r["loss"], 4) for r in trainer.state.log_history if "loss" in r],
    })
    return 0


def dpo(args) -> int:
    """A few DPO steps of the GLM-4-9B architecture under ZeRO-3 offload, through lw's DPO trainer:
    the reference pass (precomputed on the same sharded model) and the policy steps, timed."""
    import deepspeed
    import torch
    from datasets import Dataset

    from lw.launch.topology import single_process_env
    from lw.models.tiny import tiny_tokenizer
    from lw.train.dpo import LwDPOTrainer
    from lw.train.worker import skip_cpu_shm_comm
    from trl import DPOConfig

    cuda = torch.cuda.is_available()
    single_process_env()
    if not cuda:
        skip_cpu_shm_comm()
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    full = glm4_9b_config(args.smoke)
    layers = args.layers or layers_for_host(full, args.host_fraction)
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
        "device": torch.cuda.get_device_name() if cuda else "cpu", "deepspeed_config": args.ds, "layers": layers,
        "full_depth_layers": full.num_hidden_layers, "pair_tokens": [seq_len, prompt_len + (seq_len - prompt_len) // 2],
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
    from lw.rewards import length_reward
    from lw.train.worker import skip_cpu_shm_comm

    cuda = torch.cuda.is_available()
    single_process_env()
    if not cuda:
        skip_cpu_shm_comm()
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    tokenizer = tiny_tokenizer(tempfile.mkdtemp())
    tokenizer.chat_template = get_chat_format("glm4").jinja
    full = glm4_9b_config(args.smoke)
    layers = args.layers or layers_for_host(full, args.host_fraction)
    config = glm4_9b_config(args.smoke, layers)
    config.vocab_size = len(tokenizer)
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
        "device": torch.cuda.get_device_name() if cuda else "cpu", "deepspeed_config": args.ds, "layers": layers,
        "full_depth_layers": full.num_hidden_layers, "completions_per_step": 8, "max_completion_tokens": new_tokens,
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
    parser.add_argument("--layers", type=int, default=None, help="default: as many as the host RAM holds")
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
