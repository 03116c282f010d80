"""Preference pairs per minute at concurrency 16 vs 1: `lw task=dpo_pairs` with generation=openai and
judge=openai against one loopback OpenAI-compatible server answering every call after a fixed delay.

Each run samples k=4 answers for 32 prompts and judges every one (256 calls). The time is the task's
own (`time/total_seconds` in metrics.json), so interpreter start-up and imports stay out of it.
    python benchmarks/pairs_concurrency.py [--delay 0.2] [--concurrency 1 16]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from speedup import write_speedups  # noqa: E402

from lw.eval.judge import DIMENSIONS  # noqa: E402
from lw.testing.openai_server import Reply, judge_json, spawned_server, user_text  # noqa: E402

JUDGE_TEMPLATE = "Judge this answer.\n[Instruction]\n$INST$\n[Answer]\n$RESPONSE$\nReply with JSON scores.\n"


def answer(delay: float, body: dict, attempt: int) -> Reply:
    text = user_text(body)
    digest = hashlib.sha256(text.encode()).digest()
    if text.startswith("Judge this answer."):
        return Reply(judge_json({d: 1 + digest[i] % 5 for i, d in enumerate(DIMENSIONS)}), delay=delay)
    # The k samples of one prompt are identical requests: the server's attempt count tells them apart.
    return Reply(" ".join(["word"] * (20 + (digest[0] + 37 * attempt) % 200)), delay=delay)


def run(base_url: str, concurrency: int, work: Path, prompts: Path, data_dir: Path) -> dict:
    run_dir = work / f"c{concurrency}"
    env = {**os.environ, "LW_CACHE": str(work / "cache"), "WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", "lw", "task=dpo_pairs", "logger=none", "eval=longbench_write",
                    f"eval.longbench_write.data_dir={data_dir}", f"pairs.prompts={prompts}",
                    "generation=openai", f"generation.base_url={base_url}", "generation.model=bench",
                    "generation.api_key_env=null", f"generation.concurrency={concurrency}",
                    "judge=openai", f"judge.base_url={base_url}", "judge.model=bench", "judge.api_key_env=null",
                    f"judge.concurrency={concurrency}", f"hydra.run.dir={run_dir}"],
                   cwd=work, env=env, check=True, capture_output=True, text=True)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    seconds = metrics["time/total_seconds"]
    return {"concurrency": concurrency, "task_seconds": seconds, "pairs": metrics["pairs/pairs"],
            "pairs_per_minute": round(metrics["pairs/pairs"] / seconds * 60, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--prompts", type=int, default=32)
    args = parser.parse_args()
    results = {"server_delay_s": args.delay, "prompts": args.prompts, "samples_per_prompt": 4,
               "cpus": os.cpu_count(), "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prompts = work / "prompts.jsonl"
        prompts.write_text("".join(json.dumps({"prompt": f"Write a {100 + 50 * i}-word story about river {i}."})
                                   + "\n" for i in range(args.prompts)))
        data_dir = work / "bench"
        data_dir.mkdir()
        (data_dir / "judge.txt").write_text(JUDGE_TEMPLATE)
        for concurrency in args.concurrency:
            with spawned_server(partial(answer, args.delay)) as base_url:  # a fresh server: every run gets the same answers
                results["runs"].append(run(base_url, concurrency, work, prompts, data_dir))
            print(results["runs"][-1], flush=True)
    write_speedups(results, "pairs_concurrency", rate="pairs_per_minute")


if __name__ == "__main__":
    main()
