"""The SFT loss step with TRL's fused LM head against full logits: peak tracked memory and time.

One training step's loss, forward and backward, as lw's SFT trainer computes it
(lw.train.sft.forward_nll, then lw.train.loss.weighted_loss with the paper recipe's
pack_sequences_over_30): a padding-free pack of --tokens tokens holding several samples (position
ids restart per sample, as lw's pack collator makes them), GLM-4's vocabulary of 151,552 and a
small GLM backbone (1 layer, hidden 64) so that the output layer and the loss dominate. float32 on
CPU. `plain` projects the full (tokens x vocabulary) logits and takes the cross-entropy of them
(trainer.fused_lm_head=false); `fused` goes through TRL's fused LM head with the outputs TRL's
SFTTrainer asks of it (log-probabilities, entropy, top-1), in tiles of 4,096 tokens x 32,768
vocabulary entries (trainer.fused_lm_head=true, the default).

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/fused_loss.py [--tokens 8192] [--repeats 3]
        writes benchmarks/results/fused_loss.{json,md}; --tokens 1024 --out DIR for a quick check

Peak memory is tracked allocation, not the resident size: torch.profiler with profile_memory=True
records every allocation and free of tensor storage by the CPU allocator during the step (its
"[memory]" events, signed byte counts); the peak of their running sum is the most the step held
at once beyond what existed before it (the model and its inputs). Gradients are dropped between
steps outside the profiled region, so every profiled step allocates them afresh. Time is the wall
time of the same step without the profiler. Each figure is the median of --repeats steps after one
warm-up step; the two paths run in one process, their steps alternating.
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


def build(tokens: int, vocab: int, hidden: int, fused: bool):
    """(model, inputs, labels) of one padding-free pack: samples of tokens/8, /4, /8 and the rest."""
    import torch
    from transformers import GlmConfig, GlmForCausalLM

    config = GlmConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4,
                       max_position_embeddings=max(tokens, 2048), pad_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    model = GlmForCausalLM(config).float().train()
    model.config._attn_implementation = "sdpa"
    if fused:
        from trl.trainer.utils import add_fused_lm_head

        add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))  # as TRL's SFTTrainer does
    lengths = [tokens // 8, tokens // 4, tokens // 8]
    lengths.append(tokens - sum(lengths))
    ids = torch.randint(2, vocab, (1, tokens), generator=torch.Generator().manual_seed(1))
    position_ids = torch.cat([torch.arange(n) for n in lengths])[None]
    labels = ids.clone()
    labels[position_ids < 16] = -100  # each sample's first 16 tokens: its prompt
    return model, {"input_ids": ids, "position_ids": position_ids}, labels


def loss_step(model, inputs, labels, fused: bool) -> float:
    """Forward and backward of lw's SFT loss (the paper recipe's weighting)."""
    from lw.train.loss import weighted_loss
    from lw.train.sft import forward_nll

    nll, _ = forward_nll(model, dict(inputs), labels, fused)
    loss = weighted_loss(nll, labels, weighting="pack_sequences_over_30", eos_token_id=1, eos_weight=1.0,
                         position_ids=inputs["position_ids"])
    loss.backward()
    return loss.item()


def peak_tracked_bytes(step) -> int:
    """The peak of the running sum of the CPU allocator's allocations and frees during `step()`."""
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


def measure(tokens: int, vocab: int, hidden: int, repeats: int) -> dict:
    """Both paths' figures, in this process: the same weights and pack, the paths' steps alternating
    (the profiled ones first, then the timed ones) so that a busy machine slows both alike."""
    import torch

    paths = {"plain": build(tokens, vocab, hidden, False), "fused": build(tokens, vocab, hidden, True)}
    results = {path: {"path": path, "peak_tracked_mib": [], "seconds": []} for path in paths}

    def step(path):
        model, inputs, labels = paths[path]
        model.zero_grad(set_to_none=True)  # outside the profiled region: each step allocates its gradients
        return lambda: loss_step(model, inputs, labels, path == "fused")

    for path in paths:  # warm-up
        results[path]["loss"] = step(path)()
    for _ in range(repeats):
        for path in paths:
            results[path]["peak_tracked_mib"].append(round(peak_tracked_bytes(step(path)) / MIB, 1))
    for _ in range(repeats):
        for path in paths:
            run = step(path)
            start = time.perf_counter()
            run()
            results[path]["seconds"].append(round(time.perf_counter() - start, 3))
    for path, result in results.items():
        result["median_peak_mib"] = statistics.median(result["peak_tracked_mib"])
        result["median_seconds"] = statistics.median(result["seconds"])
        result["output_layer_grad_norm"] = float(paths[path][0].get_output_embeddings().weight.grad.norm())
    return {**results, "threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--vocab", type=int, default=GLM4_VOCAB)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    command = "PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/fused_loss.py " + " ".join(
        argv if argv is not None else sys.argv[1:])
    runs = measure(args.tokens, args.vocab, args.hidden, args.repeats)
    plain, fused = runs["plain"], runs["fused"]
    report = {
        "command": command.strip(), "tokens": args.tokens, "vocab": args.vocab, "hidden": args.hidden,
        "repeats": args.repeats, "machine": f"{platform.machine()}, {os.cpu_count()} cores, {runs['threads']} "
                                             f"thread(s), shared with other jobs (load average "
                                             f"{os.getloadavg()[0]:.1f} at the end)",
        "peak": "torch.profiler profile_memory: peak of the running sum of the CPU allocator's allocations",
        "plain": plain, "fused": fused,
        "peak_ratio_fused_over_plain": round(fused["median_peak_mib"] / plain["median_peak_mib"], 4),
        "time_ratio_fused_over_plain": round(fused["median_seconds"] / plain["median_seconds"], 3),
        "loss_difference": abs(fused["loss"] - plain["loss"]),
        "output_layer_grad_norms": [plain["output_layer_grad_norm"], fused["output_layer_grad_norm"]],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fused_loss.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "fused_loss.md").write_text(markdown(report))
    print(markdown(report))
    return 0


def markdown(report: dict) -> str:
    plain, fused = report["plain"], report["fused"]
    rows = [f"| {name} | {r['median_peak_mib']:,.1f} | {r['median_seconds']:.3f} | {r['loss']:.6f} |"
            for name, r in (("plain (full logits)", plain), ("fused (TRL's fused LM head)", fused))]
    return "\n".join([
        "# SFT loss step: TRL's fused LM head vs full logits (CPU)", "",
        f"One forward + backward of lw's SFT loss (pack_sequences_over_30) on a padding-free pack of "
        f"{report['tokens']:,} tokens (4 samples), vocabulary {report['vocab']:,}, a 1-layer GLM of hidden "
        f"{report['hidden']}, float32; median of {report['repeats']} steps after a warm-up, the paths' steps "
        f"alternating in one process ({report['machine']}). Peak: tracked allocation ({report['peak']}), beyond the model and inputs.",
        "", f"    {report['command']}", "",
        "| path | peak MiB | step s | loss |", "|---|---:|---:|---:|", *rows,
        f"| fused / plain | {report['peak_ratio_fused_over_plain']:.3f} | {report['time_ratio_fused_over_plain']:.2f} "
        f"| difference {report['loss_difference']:.1e} |", ""])


if __name__ == "__main__":
    sys.exit(main())
