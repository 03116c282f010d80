"""The SFT loss step with TRL's fused LM head against full logits: peak memory and time.

One training step's loss, forward and backward, as lw's SFT trainer computes it
(lw.train.sft.forward_nll, then lw.train.loss.weighted_loss with the paper recipe's
pack_sequences_over_30) on a pack of --tokens tokens holding 4 samples (the loss sees their
boundaries through the position ids, as lw's pack collator makes them; the backbone reads the row
as one causal sequence, since attention is not what is measured here), GLM-4's vocabulary of
151,552 and a one-layer GLM backbone. `plain` projects the full (tokens x vocabulary) logits and
takes the cross-entropy of them (trainer.fused_lm_head=false); `fused` goes through TRL's fused LM
head with the outputs TRL's SFTTrainer asks of it (log-probabilities, entropy, top-1), in tiles of
4,096 tokens x 32,768 vocabulary entries (trainer.fused_lm_head=true, the default).

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/fused_loss.py [--tokens 8192] [--repeats 3]
        CPU, float32, hidden 64 (the output layer and the loss dominate); writes
        benchmarks/results/fused_loss.{json,md}. --tokens 1024 --out DIR for a quick check.
    python benchmarks/fused_loss.py --gpu --out DIR
        GPU (experiments/gpu_check.sh): bf16, one layer of GLM-4-9B's shapes
        (conf/model/glm4_9b.yaml), packs of 16k and 32k tokens; a path that runs out of memory is
        recorded so.

Peak memory is what the step holds at once beyond the model and its inputs. On CPU it is tracked
allocation, not the resident size: torch.profiler with profile_memory=True records every
allocation and free of tensor storage by the CPU allocator during the step (its "[memory]" events,
signed byte counts), and the peak of their running sum is taken. On GPU:
torch.cuda.max_memory_allocated over the step less what was allocated before it. Gradients are
dropped between steps outside the measured region, so every step allocates them afresh. Time is the
wall time of the step without the profiler. Each figure is the median of --repeats steps after one
warm-up step; both paths run in one process, their steps alternating, so that a busy machine slows
both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

RESULTS = REPO / "benchmarks" / "results"
GLM4_VOCAB = 151552
MIB = 2**20
PATHS = ("plain", "fused")


def backbone_config(vocab: int, hidden: int, tokens: int, gpu: bool):
    """One GLM layer: GLM-4-9B's shapes on the GPU, a narrow one of hidden `hidden` on the CPU."""
    from transformers import AutoConfig

    if gpu:
        import yaml

        arch = yaml.safe_load((REPO / "conf" / "model" / "glm4_9b.yaml").read_text())["arch"]
        arch.update(num_hidden_layers=1, vocab_size=vocab, max_position_embeddings=max(tokens, 131072))
        return AutoConfig.for_model(arch.pop("model_type"), **arch)
    return AutoConfig.for_model("glm", vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                                num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                                head_dim=hidden // 4, max_position_embeddings=max(tokens, 2048), pad_token_id=0,
                                eos_token_id=1)


def build(config, tokens: int, fused: bool, device: str):
    """(model, inputs, labels, position ids) of one pack: samples of tokens/8, /4, /8 and the rest,
    each beginning with a 16-token prompt."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if device == "cuda" else torch.float32)
    model.train()
    model.config._attn_implementation = "sdpa"
    if fused:
        from trl.trainer.utils import add_fused_lm_head

        add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))  # as TRL's SFTTrainer does
    lengths = [tokens // 8, tokens // 4, tokens // 8]
    lengths.append(tokens - sum(lengths))
    ids = torch.randint(2, config.vocab_size, (1, tokens), generator=torch.Generator().manual_seed(1)).to(device)
    position_ids = torch.cat([torch.arange(n) for n in lengths])[None].to(device)
    labels = ids.clone()
    labels[position_ids < 16] = -100
    return model, {"input_ids": ids}, labels, position_ids


def loss_step(model, inputs, labels, position_ids, fused: bool) -> float:
    """Forward and backward of lw's SFT loss (the paper recipe's weighting)."""
    from lw.train.loss import weighted_loss
    from lw.train.sft import forward_nll

    nll, _ = forward_nll(model, dict(inputs), labels, fused)
    loss = weighted_loss(nll, labels, weighting="pack_sequences_over_30", eos_token_id=1, eos_weight=1.0,
                         position_ids=position_ids)
    loss.backward()
    return loss.item()


def peak_bytes(step, device: str) -> int:
    """What `step()` holds at its peak beyond what existed before it."""
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
              and str(e.device_type()).endswith("CPU")]
    held = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        held += event.nbytes()
        peak = max(peak, held)
    return peak


def timed(step, device: str) -> float:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    step()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(config, tokens: int, repeats: int, device: str) -> dict:
    """Both paths' figures, their steps alternating (the memory-measured ones first, then the timed)."""
    import torch

    built = {path: build(config, tokens, path == "fused", device) for path in PATHS}
    results = {path: {"path": path, "peak_mib": [], "seconds": []} for path in PATHS}

    def step(path):
        model, inputs, labels, position_ids = built[path]
        model.zero_grad(set_to_none=True)  # outside the measured region: each step allocates its gradients
        return lambda: loss_step(model, inputs, labels, position_ids, path == "fused")

    def attempt(path, what):
        if results[path].get("oom"):
            return None
        try:
            return what()
        except torch.cuda.OutOfMemoryError as e:
            results[path]["oom"] = str(e)[:200]
            built[path][0].zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            return None

    for path in PATHS:  # warm-up
        results[path]["loss"] = attempt(path, lambda: step(path)())
    for _ in range(repeats):
        for path in PATHS:
            peak = attempt(path, lambda: peak_bytes(step(path), device))
            if peak is not None:
                results[path]["peak_mib"].append(round(peak / MIB, 1))
    for _ in range(repeats):
        for path in PATHS:
            seconds = attempt(path, lambda: timed(step(path), device))
            if seconds is not None:
                results[path]["seconds"].append(round(seconds, 4))
    for path, result in results.items():
        if not result.get("oom"):
            result["median_peak_mib"] = statistics.median(result["peak_mib"])
            result["median_seconds"] = statistics.median(result["seconds"])
    plain, fused = results["plain"], results["fused"]
    report = {"tokens": tokens, "plain": plain, "fused": fused}
    if "median_peak_mib" in plain and "median_peak_mib" in fused:
        report.update(peak_ratio_fused_over_plain=round(fused["median_peak_mib"] / plain["median_peak_mib"], 4),
                      time_ratio_fused_over_plain=round(fused["median_seconds"] / plain["median_seconds"], 3),
                      loss_difference=abs(fused["loss"] - plain["loss"]))
    built.clear()  # the models and their gradients go before the next size
    if device == "cuda":
        torch.cuda.empty_cache()
    return report


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=None, help="8192 on CPU; 16384 32768 with --gpu")
    parser.add_argument("--vocab", type=int, default=GLM4_VOCAB)
    parser.add_argument("--hidden", type=int, default=64, help="CPU only; the GPU takes GLM-4-9B's")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    device = "cuda" if args.gpu else "cpu"
    sizes = args.tokens or ([16384, 32768] if args.gpu else [8192])
    command = "PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/fused_loss.py " + " ".join(
        argv if argv is not None else sys.argv[1:])
    runs = []
    for tokens in sizes:
        config = backbone_config(args.vocab, args.hidden, tokens, args.gpu)
        runs.append(measure(config, tokens, args.repeats, device))
        print(json.dumps(runs[-1]), flush=True)
    report = {
        "command": command.strip(), "vocab": args.vocab, "hidden": config.hidden_size, "repeats": args.repeats,
        "device": torch.cuda.get_device_name() if args.gpu else
        f"CPU ({platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} thread(s), shared with other "
        f"jobs: load average {os.getloadavg()[0]:.1f} at the end)",
        "dtype": "bfloat16" if args.gpu else "float32",
        "peak": "torch.cuda.max_memory_allocated over the step" if args.gpu else
        "torch.profiler profile_memory: peak of the running sum of the CPU allocator's allocations and frees",
        "runs": runs,
    }
    name = "fused_loss_gpu" if args.gpu else "fused_loss"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{name}.md").write_text(markdown(report))
    print(markdown(report))
    return 0


def _cell(result: dict) -> str:
    if result.get("oom"):
        return "out of memory | - | -"
    return f"{result['median_peak_mib']:,.1f} | {result['median_seconds']:.3f} | {result['loss']:.6f}"


def markdown(report: dict) -> str:
    rows = []
    for run in report["runs"]:
        rows += [f"| {run['tokens']:,} | plain (full logits) | {_cell(run['plain'])} |",
                 f"| {run['tokens']:,} | fused (TRL's fused LM head) | {_cell(run['fused'])} |"]
        if "peak_ratio_fused_over_plain" in run:
            rows.append(f"| {run['tokens']:,} | fused / plain | {run['peak_ratio_fused_over_plain']:.3f} | "
                        f"{run['time_ratio_fused_over_plain']:.2f} | difference {run['loss_difference']:.1e} |")
    return "\n".join([
        "# SFT loss step: TRL's fused LM head vs full logits", "",
        f"One forward + backward of lw's SFT loss (pack_sequences_over_30) on a pack of 4 samples, vocabulary "
        f"{report['vocab']:,}, a one-layer GLM of hidden {report['hidden']}, {report['dtype']}, on "
        f"{report['device']}; median of {report['repeats']} steps after a warm-up, the paths' steps alternating in "
        f"one process. Peak: beyond the model and inputs ({report['peak']}).",
        "", f"    {report['command']}", "",
        "| tokens | path | peak MiB | step s | loss |", "|---:|---|---:|---:|---:|", *rows, ""])


if __name__ == "__main__":
    sys.exit(main())
