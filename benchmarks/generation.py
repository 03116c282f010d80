"""generation=hf: static batches vs continuous batching on a LongBench-Write-like spread of answer
lengths, and batch-1 decode speed against the memory-bandwidth bound measured in the same run.

    PYTHONPATH=. python benchmarks/generation.py [--requests 120] [--scale 64] [--threads 1]

The spread: LongBench-Write's 120 prompts ask for [0,500) words (26 prompts), [500,2000) (36),
[2000,4000) (31) and [4000,20000] (27). Each request gets a length drawn uniformly in its bucket,
converted at 1.3 tokens a word and divided by --scale (CPU: 64, so 100 to ~400 tokens instead of
130 to 26,000), and is made to write exactly that many tokens (EOS ignored), so both modes do the
same useful work. Static: batches of --batch-size requests in benchmark order, each running until
its longest member is done (what `generation.batching=static` does when answers end at EOS); only the
requests' own tokens count. Continuous: lw.eval.continuous with each request's own max_new_tokens,
at most --concurrency requests decoded together. Both sample at temperature 0.5 (the paper's).

Batch-1 decode: a larger model (--decode-*) writes --decode-tokens tokens after a short prompt with
`generate`; tokens/s is taken between a 1-token and an N-token run, so prefill is excluded. The bound
is the copy bandwidth (a --copy-mib buffer copied, bytes read + written per second) divided by the
bytes a decode step reads: every weight except the input embedding (one row of it is read).

Writes benchmarks/results/generation.{md,json}. experiments/gpu_check.py reuses these functions on
a GPU with the GLM-4-9B architecture.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from lw.config import GenerationConfig, ModelConfig, TinyModelConfig  # noqa: E402
from lw.eval.continuous import Memory, Request, generate_continuous  # noqa: E402
from lw.eval.generate import hf_generation_config  # noqa: E402

BUCKETS = [((0, 500), 26), ((500, 2000), 36), ((2000, 4000), 31), ((4000, 20000), 27)]  # LongBench-Write
TOKENS_PER_WORD = 1.3
TEMPERATURE = 0.5


def spread(requests: int, scale: float, seed: int = 0) -> list[int]:
    """`requests` answer lengths in tokens with LongBench-Write's bucket proportions, in a shuffled order."""
    generator = torch.Generator().manual_seed(seed)
    total = sum(n for _, n in BUCKETS)
    lengths = []
    for (low, high), n in BUCKETS:
        count = round(n * requests / total)
        words = low + (high - low) * torch.rand(count, generator=generator)
        lengths += [max(1, math.ceil(w * TOKENS_PER_WORD / scale)) for w in words.tolist()]
    lengths = lengths[:requests] + [lengths[-1]] * (requests - len(lengths))
    return [lengths[i] for i in torch.randperm(len(lengths), generator=generator).tolist()]


def prompts(count: int, vocab_size: int, seed: int = 1) -> list[list[int]]:
    """Prompts of 20 to 60 random tokens (LongBench-Write's are short instructions)."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(100, vocab_size - 100, (int(n),), generator=generator).tolist()
            for n in torch.randint(20, 61, (count,), generator=generator)]


class PeakMemory:
    """Peak memory above the level at entry: the accelerator's allocator, or the process RSS on CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            import psutil

            self.process, self.stop = psutil.Process(), threading.Event()
            self.base = self.peak = self.process.memory_info().rss
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self):
        while not self.stop.wait(0.01):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self.stop.set()
            self.thread.join()
        self.gib = round((self.peak - self.base) / 2 ** 30, 3)


def _sampling(stop_ids: list[int], pad_id: int, **extra):
    cfg = OmegaConf.structured(GenerationConfig(temperature=TEMPERATURE, top_p=1.0))
    config = hf_generation_config(cfg, stop_ids, pad_id)
    config.update(**extra)
    return config


def run_static(model, inputs: list[list[int]], lengths: list[int], batch_size: int, pad_id: int, eos_id: int) -> dict:
    """Batches in order, each to its longest member's length (min_new_tokens: no early EOS)."""
    device = model.device
    with PeakMemory(device) as memory:
        start = time.perf_counter()
        for first in range(0, len(inputs), batch_size):
            batch, need = inputs[first: first + batch_size], max(lengths[first: first + batch_size])
            width = max(map(len, batch))
            ids = torch.full((len(batch), width), pad_id)
            mask = torch.zeros_like(ids)
            for row, prompt in enumerate(batch):
                ids[row, width - len(prompt):], mask[row, width - len(prompt):] = torch.tensor(prompt), 1
            config = _sampling([eos_id], pad_id, max_new_tokens=need, min_new_tokens=need)
            with torch.no_grad():
                model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config)
        _sync(device)
        seconds = time.perf_counter() - start
    return _figures(sum(lengths), seconds, memory.gib, batch_size=batch_size)


def run_continuous(model, inputs: list[list[int]], lengths: list[int], concurrency: int, pad_id: int,
                   block_size: int = 256, max_batch_tokens: int = 1024, memory_fraction: float = 0.8) -> dict:
    requests = [Request(f"r{i}", ids, n, seed=i) for i, (ids, n) in enumerate(zip(inputs, lengths))]
    produced = []
    memory_bound = Memory(concurrency=concurrency, block_size=block_size, max_batch_tokens=max_batch_tokens,
                          fraction=memory_fraction)
    with PeakMemory(model.device) as memory:
        start = time.perf_counter()
        failed = generate_continuous(model, requests, _sampling([], pad_id), memory_bound, 0,
                                     lambda request, ids: produced.append(len(ids)))
        _sync(model.device)
        seconds = time.perf_counter() - start
    if failed or sum(produced) != sum(lengths):
        raise RuntimeError(f"continuous: {len(failed)} failed, {sum(produced)} of {sum(lengths)} tokens")
    return _figures(sum(produced), seconds, memory.gib, concurrency=concurrency)


def _figures(tokens: int, seconds: float, peak_gib: float, **extra) -> dict:
    return {**extra, "tokens": tokens, "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1),
            "peak_memory_gib": peak_gib}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def copy_bandwidth(device: torch.device, mib: int, repeats: int = 5) -> float:
    """Bytes read + written per second copying a `mib` MiB buffer (best of `repeats`)."""
    source = torch.ones(mib * 2 ** 20 // 4, dtype=torch.float32, device=device)
    target = torch.empty_like(source)
    seconds = []
    for _ in range(repeats + 1):
        _sync(device)
        start = time.perf_counter()
        target.copy_(source)
        _sync(device)
        seconds.append(time.perf_counter() - start)
    del source, target
    return 2 * mib * 2 ** 20 / min(seconds[1:])  # the first copy also touches the pages


def bytes_per_decode_step(model) -> int:
    """What one decode step reads: every weight, but only one row of an untied input embedding."""
    embedding = model.get_input_embeddings().weight
    total = sum(p.numel() * p.element_size() for p in model.parameters())  # tied weights once
    tied = model.get_output_embeddings() is not None and model.get_output_embeddings().weight is embedding
    return total if tied else total - embedding.numel() * embedding.element_size()


def decode_rate(model, tokens: int, prompt_len: int = 16, **generate_kwargs) -> float:
    """Batch-1 decode tokens/s of `generate`, prefill excluded: (N - 1) / (t(N) - t(1))."""
    ids = torch.randint(100, model.config.vocab_size - 100, (1, prompt_len), generator=torch.Generator().manual_seed(0))
    ids = ids.to(model.device)

    def timed(n: int) -> float:
        _sync(model.device)
        start = time.perf_counter()
        with torch.no_grad():
            model.generate(ids, do_sample=False, max_new_tokens=n, min_new_tokens=n,
                           pad_token_id=model.config.pad_token_id, **generate_kwargs)
        _sync(model.device)
        return time.perf_counter() - start

    timed(1), timed(tokens)  # warm-up, and compilation where asked (a static cache's shape follows the length)
    return (tokens - 1) / (timed(tokens) - timed(1))


def decode_against_bound(model, tokens: int, bandwidth: float, **generate_kwargs) -> dict:
    step_bytes = bytes_per_decode_step(model)
    bound = bandwidth / step_bytes
    rate = decode_rate(model, tokens, **generate_kwargs)
    return {"tokens_per_s": round(rate, 2), "bound_tokens_per_s": round(bound, 2),
            "fraction_of_bound": round(rate / bound, 3), "bytes_per_step": step_bytes}


def build_tiny(hidden: int, layers: int, heads: int, intermediate: int, tied: bool):
    from lw.models import build_model, build_tokenizer

    cfg = OmegaConf.structured(ModelConfig(name="tiny", chat_format="llama3_1", dtype="float32", tiny=TinyModelConfig(
        hidden_size=hidden, num_layers=layers, num_heads=heads, intermediate_size=intermediate,
        tie_word_embeddings=tied)))
    tokenizer = build_tokenizer(cfg, os.environ.get("LW_CACHE", str(Path.home() / ".cache" / "lw")))
    return build_model(cfg, tokenizer, seed=0).eval(), tokenizer


def markdown(results: dict) -> str:
    s, c, d = results["static"], results["continuous"], results["decode_batch1"]
    lines = [
        "# generation=hf: static batches vs continuous batching", "",
        f"{results['device']}, torch threads {results['torch_threads']}, {results['note']}", "",
        f"{results['requests']} requests, LongBench-Write's spread of required lengths scaled by 1/{results['scale']} "
        f"({min(results['lengths'])} to {max(results['lengths'])} tokens, {sum(results['lengths'])} in all), "
        f"EOS ignored, temperature {TEMPERATURE}; model: {results['model']}.", "",
        "| mode | batch / concurrency | tokens/s | seconds per evaluation | peak memory GiB | vs static |",
        "|---|---|---|---|---|---|",
        f"| static | {s['batch_size']} | {s['tokens_per_s']} | {s['seconds']} | {s['peak_memory_gib']} | 1.00 |",
        f"| continuous | {c['concurrency']} | {c['tokens_per_s']} | {c['seconds']} | {c['peak_memory_gib']} | "
        f"{results['continuous_vs_static']:.2f} |", "",
        f"Batch-1 decode ({results['decode_model']}): {d['tokens_per_s']} tokens/s against a bound of "
        f"{d['bound_tokens_per_s']} tokens/s ({d['bytes_per_step'] / 1e6:.0f} MB read per step at the measured copy "
        f"bandwidth of {results['copy_bandwidth_gb_s']} GB/s): {100 * d['fraction_of_bound']:.0f}% of the bound.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=120)
    parser.add_argument("--scale", type=float, default=64, help="divide the required lengths by this")
    parser.add_argument("--batch-size", type=int, default=16, help="static batches (generation.batch_size)")
    parser.add_argument("--concurrency", type=int, default=32, help="continuous: requests decoded together")
    parser.add_argument("--decode-tokens", type=int, default=24)
    parser.add_argument("--decode-hidden", type=int, default=1024)
    parser.add_argument("--decode-layers", type=int, default=8)
    parser.add_argument("--copy-mib", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (more than the free cores: slower)")
    parser.add_argument("--note", default="machine shared with other jobs: figures are indicative")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    device = torch.device("cpu")
    torch.set_num_threads(args.threads)
    model, tokenizer = build_tiny(64, 2, 4, 256, tied=True)
    lengths = spread(args.requests, args.scale)
    inputs = prompts(args.requests, model.config.vocab_size)
    results = {"device": "cpu", "torch_threads": torch.get_num_threads(), "note": args.note,
               "requests": args.requests, "scale": args.scale, "lengths": lengths,
               "model": "lw's tiny llama (2 layers, hidden 64), float32"}
    pad = tokenizer.pad_token_id
    results["static"] = run_static(model, inputs, lengths, args.batch_size, pad, tokenizer.eos_token_id)
    print("static", results["static"], flush=True)
    results["continuous"] = run_continuous(model, inputs, lengths, args.concurrency, pad)
    print("continuous", results["continuous"], flush=True)
    results["continuous_vs_static"] = round(results["continuous"]["tokens_per_s"] / results["static"]["tokens_per_s"], 2)
    bandwidth = copy_bandwidth(device, args.copy_mib)
    results["copy_bandwidth_gb_s"] = round(bandwidth / 1e9, 2)
    decode_model, _ = build_tiny(args.decode_hidden, args.decode_layers, 16, int(2.75 * args.decode_hidden), tied=False)
    results["decode_model"] = (f"llama, {args.decode_layers} layers, hidden {args.decode_hidden}, float32, "
                               f"{sum(p.numel() for p in decode_model.parameters()) / 1e6:.0f}M parameters")
    results["decode_batch1"] = decode_against_bound(decode_model, args.decode_tokens, bandwidth)
    print("decode", results["decode_batch1"], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "generation.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "generation.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
