"""Batched vs one-by-one generation with the hf backend on the tiny model: generated tokens per second.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/generation.py [--prompts 32] [--max-new-tokens 128]

Runs the real driver (lw.eval.generate.generate) into a temporary predictions file per batch size and
writes benchmarks/results/generation.json. The random-init tiny model rarely stops early, so each
response is about max_new_tokens long; tokens are counted by re-encoding the responses.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from lw.config import BenchmarkConfig, GenerationConfig, ModelConfig, TinyModelConfig  # noqa: E402
from lw.eval.benchmarks import load_items  # noqa: E402
from lw.eval.generate import HfBackend, generate  # noqa: E402
from lw.models import build_model, build_tokenizer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    args = parser.parse_args()
    cache = os.environ.get("LW_CACHE", str(Path.home() / ".cache" / "lw"))
    model_cfg = OmegaConf.structured(ModelConfig(name="tiny", chat_format="llama3_1", dtype="float32",
                                                 tiny=TinyModelConfig()))
    tokenizer = build_tokenizer(model_cfg, cache)
    model = build_model(model_cfg, tokenizer, seed=0)
    bench = OmegaConf.structured(BenchmarkConfig(kind="toy_ruler", lengths=[12, 25, 50, 75, 100, 150, 200, 400],
                                                 topics=["rivers", "music"], samples_per_prompt=2))
    items = load_items(bench)[: args.prompts]
    results = {"prompts": len(items), "max_new_tokens": args.max_new_tokens, "torch_threads": torch.get_num_threads(),
               "device": "cpu", "runs": []}
    for batch_size in args.batch_sizes:
        gen_cfg = OmegaConf.structured(GenerationConfig(max_new_tokens=args.max_new_tokens, batch_size=batch_size))
        backend = HfBackend(model, tokenizer, model_cfg.chat_format, gen_cfg, seed=0)
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            rows = generate(backend, items, Path(tmp) / "predictions.jsonl")
            wall = time.perf_counter() - start
        tokens = sum(len(tokenizer.encode(r["response"], add_special_tokens=False)) for r in rows)
        results["runs"].append({"batch_size": batch_size, "wall_s": round(wall, 2), "tokens": tokens,
                                "tokens_per_s": round(tokens / wall, 1)})
        print(f"batch_size {batch_size:3d}: {tokens} tokens in {wall:6.2f} s = {tokens / wall:8.1f} tokens/s")
    out = REPO / "benchmarks" / "results" / "generation.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {out}")


if __name__ == "__main__":
    main()
