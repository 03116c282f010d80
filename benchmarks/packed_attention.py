"""Packed attention: time and peak memory per attention implementation on padding-free packs.

Each pack holds a LongWriter-like length mix, as best fit decreasing fills packs from it: a few long
samples (an eighth to a half of the pack each, about half the pack together) and many short ones
(20 to 2,000 tokens, log-uniform) filling the rest. The collator joins the pack into one row whose
position ids restart per sample, as training runs it. sdpa then attends through a dense mask over the
row; flex_attention (a block-sparse document mask) and flash_attention_2 (varlen kernels) cost what
the samples cost. Ratios are against sdpa measured in the same run.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/packed_attention.py
        CPU: a 2-layer Llama of hidden 256, forward only (flex attention has no backward on CPU),
        packs of 4k, 8k and 16k tokens; writes benchmarks/results/packed_attention.{json,md}
    python benchmarks/packed_attention.py --gpu --out DIR
        GPU (experiments/gpu_check.sh): GLM-4-9B's layers (conf/model/glm4_9b.yaml; 2 of its 40, and
        a vocabulary of 8,192 so that the LM head does not hide the attention), bf16, forward and
        backward at 32k; flash_attention_2 only where flash-attn is installed

Each implementation runs in a process of its own, so a compile, a crash or running out of memory
stays there. Peak memory is what one step adds over the model and its inputs: on GPU
torch.cuda.max_memory_allocated; on CPU the process's peak resident size (VmHWM, reset through
/proc/self/clear_refs), with glibc told to map every allocation above 128 KiB on its own so that
freed tensors leave the resident size.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

RESULTS = REPO / "benchmarks" / "results"
MMAP_THRESHOLD = str(128 * 1024)


def length_mix(pack_length: int, seed: int) -> list[int]:
    """Sample lengths filling one pack exactly: long samples first (as best fit decreasing places
    them), then short ones; the last short sample is cut to what is left."""
    rng = random.Random(f"{seed}:{pack_length}")
    lengths: list[int] = []
    while sum(lengths) < pack_length // 2:
        lengths.append(rng.randint(pack_length // 8, pack_length // 2))
    left = pack_length - sum(lengths)
    while left > 0:
        n = min(left, int(round(20 * 100 ** rng.random())))
        lengths.append(n)
        left -= n
    return lengths


def model_config(gpu: bool, layers: int, vocab: int):
    import yaml
    from transformers import AutoConfig, LlamaConfig

    if not gpu:
        return LlamaConfig(vocab_size=vocab, hidden_size=256, intermediate_size=1024, num_hidden_layers=layers,
                           num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=32768)
    arch = yaml.safe_load((REPO / "conf" / "model" / "glm4_9b.yaml").read_text())["arch"]
    arch.update(num_hidden_layers=layers, vocab_size=vocab, pad_token_id=0, eos_token_id=1)
    config = AutoConfig.for_model(arch.pop("model_type"), **arch)
    config.max_position_embeddings = 131072  # the experiment's config_overrides for 32k packs
    return config


def packed_batch(lengths: list[int], vocab: int, seed: int) -> dict:
    """One pack as lw's PackCollator (TRL's padding-free collator) gives it to the model, built with
    torch alone: the GPU image has no datasets or trl (tests/test_attention.py checks it is the same)."""
    import torch

    ids = torch.randint(2, vocab, (1, sum(lengths)), generator=torch.Generator().manual_seed(seed))
    position_ids = torch.cat([torch.arange(n) for n in lengths])[None]
    labels = ids.masked_fill(position_ids == 0, -100)  # no sample learns from the one before it
    cu_seq_lens = torch.tensor([0, *lengths]).cumsum(0).to(torch.int32)
    return {"input_ids": ids, "labels": labels, "position_ids": position_ids,
            "cu_seq_lens_q": cu_seq_lens, "cu_seq_lens_k": cu_seq_lens,
            "max_length_q": max(lengths), "max_length_k": max(lengths)}


def resident_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def measure(implementation: str, args) -> list[dict]:
    """One implementation over every pack length (run in a child process)."""
    import torch
    from transformers import AutoModelForCausalLM

    from lw.train.loss import lm_loss

    device = "cuda" if args.gpu else "cpu"
    dtype = torch.bfloat16 if args.gpu else torch.float32
    torch.manual_seed(0)
    config = model_config(args.gpu, args.layers, args.vocab)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=implementation)
    model.train(args.gpu)  # dropout is 0: train() only matters for the backward pass
    rows = []
    for pack_length in args.lengths:
        lengths = length_mix(pack_length, args.seed)
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v
                 for k, v in packed_batch(lengths, config.vocab_size, args.seed).items()}
        inputs = {k: v for k, v in batch.items() if k != "labels"}

        def step() -> float:
            with torch.set_grad_enabled(args.gpu):
                logits = model(**inputs, use_cache=False).logits
                loss = lm_loss(logits, batch["labels"], position_ids=batch["position_ids"])
                if args.gpu:
                    loss.backward()
                    model.zero_grad(set_to_none=True)
            return loss.item()

        row = {"implementation": implementation, "pack_tokens": pack_length, "samples": len(lengths),
               "longest": max(lengths), "per_sample_share_of_dense_pairs":
                   round(sum(n * (n + 1) / 2 for n in lengths) / pack_length**2, 4)}
        try:
            start = time.perf_counter()
            step()  # warm-up: flex attention compiles its kernels for this shape here
            row["first_step_s"] = round(time.perf_counter() - start, 3)
            seconds = []
            for _ in range(args.repeats):
                if args.gpu:
                    torch.cuda.synchronize()
                start = time.perf_counter()
                row["loss"] = round(step(), 5)
                if args.gpu:
                    torch.cuda.synchronize()
                seconds.append(time.perf_counter() - start)
            row["step_s"] = round(min(seconds), 4)  # the least disturbed by other work on a shared machine
            gc.collect()
            if args.gpu:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                step()
                row["peak_mib"] = round((torch.cuda.max_memory_allocated() - base) / 2**20, 1)
            else:
                base = resident_kib("VmRSS")
                Path("/proc/self/clear_refs").write_text("5")  # resets the peak resident size
                step()
                row["peak_mib"] = round((resident_kib("VmHWM") - base) / 1024, 1)
        except torch.cuda.OutOfMemoryError as e:
            row["error"] = f"out of memory: {str(e).splitlines()[0][:200]}"
            torch.cuda.empty_cache()
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def implementations(gpu: bool) -> list[str]:
    """sdpa first: the ratios are against it."""
    import importlib.util

    found = ["sdpa", "flex_attention"]
    if gpu and importlib.util.find_spec("flash_attn") is not None:
        found.append("flash_attention_2")
    return found


def run_child(implementation: str, args, argv: list[str]) -> list[dict]:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    start = time.perf_counter()
    result = subprocess.run([sys.executable, __file__, *argv, "--child", implementation], env=env,
                            capture_output=True, text=True, timeout=args.child_timeout)
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    print(f"{implementation}: {time.perf_counter() - start:.0f} s, exit {result.returncode}", flush=True)
    if result.returncode != 0:
        error = (result.stderr.strip().splitlines() or ["no output"])[-1][:300]
        done = {row["pack_tokens"] for row in rows}
        rows += [{"implementation": implementation, "pack_tokens": n, "error": error}
                 for n in args.lengths if n not in done]
    return rows


def with_ratios(rows: list[dict]) -> list[dict]:
    sdpa = {row["pack_tokens"]: row for row in rows if row["implementation"] == "sdpa" and "error" not in row}
    for row in rows:
        base = sdpa.get(row["pack_tokens"])
        if base and "error" not in row:
            row["time_vs_sdpa"] = round(row["step_s"] / base["step_s"], 3)
            row["memory_vs_sdpa"] = round(row["peak_mib"] / base["peak_mib"], 3) if base["peak_mib"] > 0 else None
            row["loss_matches_sdpa"] = abs(row["loss"] - base["loss"]) <= 1e-3 * max(1.0, abs(base["loss"]))
    return rows


def markdown(results: dict, command: str) -> str:
    what = "forward and backward" if results["gpu"] else "forward"
    lines = [
        "# Packed attention benchmark", "", f"`{command}`", "",
        f"{results['model']}, {what}, one padding-free pack per step; {results['device']}; the fastest of "
        f"{results['repeats']} steps after a warm-up (which compiles flex attention's kernels: `first step`); "
        f"load average at the end {results['load_average_at_end']} (other work on the machine slows steps at random).",
        "Ratios are against sdpa in the same run; `per-sample share` is the samples' causal (query, key) pairs "
        "over the pack's dense pairs (what flex and flash attention compute, against sdpa's mask).", "",
        "| pack tokens | samples (longest) | per-sample share | implementation | step s | time vs sdpa | "
        "peak MiB | memory vs sdpa | first step s | loss = sdpa's |",
        "|---:|---:|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in sorted(results["rows"], key=lambda r: (r["pack_tokens"], r["implementation"] != "sdpa")):
        if "error" in row:
            lines.append(f"| {row['pack_tokens']} | | | {row['implementation']} | {row['error']} | | | | | |")
            continue
        lines.append(
            f"| {row['pack_tokens']} | {row['samples']} ({row['longest']}) | {row['per_sample_share_of_dense_pairs']} "
            f"| {row['implementation']} | {row['step_s']} | {row.get('time_vs_sdpa', '')} | {row['peak_mib']} | "
            f"{row.get('memory_vs_sdpa') or ''} | {row['first_step_s']} | {row.get('loss_matches_sdpa', '')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="GLM-4-9B layers, bf16, forward and backward, on CUDA")
    parser.add_argument("--lengths", type=int, nargs="+", help="pack lengths (CPU: 4096 8192 16384; GPU: 32768)")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=None, help="CPU: 2048; GPU: 8192")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child-timeout", type=int, default=900, help="seconds per implementation")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for packed_attention.{json,md}")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.lengths = args.lengths or ([32768] if args.gpu else [4096, 8192, 16384])
    args.vocab = args.vocab or (8192 if args.gpu else 2048)
    if args.child:
        measure(args.child, args)
        return
    import torch

    if args.gpu and not torch.cuda.is_available():
        raise SystemExit("--gpu: no CUDA device here")
    argv = sys.argv[1:]
    config = model_config(args.gpu, args.layers, args.vocab)
    rows: list[dict] = []
    for implementation in implementations(args.gpu):
        rows += run_child(implementation, args, argv)
        text = write_results(rows, config, args, argv)  # after each: a stage cut short keeps what finished
    print(text)
    print(f"written to {args.out / 'packed_attention.md'} and .json")


def write_results(rows: list[dict], config, args, argv: list[str]) -> str:
    import torch

    results = {
        "gpu": args.gpu,
        "device": torch.cuda.get_device_name() if args.gpu else
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
        "model": (f"{config.model_type}, {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
                  f"{config.num_attention_heads} heads ({config.num_key_value_heads} key/value) of "
                  f"{getattr(config, 'head_dim', None) or config.hidden_size // config.num_attention_heads}, "
                  f"vocabulary {config.vocab_size}, {'bf16' if args.gpu else 'fp32'}"),
        "torch": torch.__version__, "repeats": args.repeats, "lengths": args.lengths,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],  # other work on the machine skews times
        "rows": with_ratios(rows),
    }
    command = "python benchmarks/packed_attention.py " + " ".join(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "packed_attention.json").write_text(json.dumps(results, indent=2) + "\n")
    text = markdown(results, command.strip())
    (args.out / "packed_attention.md").write_text(text)
    return text


if __name__ == "__main__":
    main()
