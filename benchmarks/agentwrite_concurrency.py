"""AgentWrite instructions finished per minute at concurrency 16 vs 1: `lw task=agentwrite` against a
loopback OpenAI-compatible server that answers every call (outlines and paragraphs) after a fixed delay.

Each of 32 instructions is an outline call and 3 paragraph calls, in order (128 calls in all). The time
is the task's own (`time/total_seconds` in metrics.json), so start-up and imports stay out of it.
    python benchmarks/agentwrite_concurrency.py [--delay 0.2] [--concurrency 1 16]
"""

from __future__ import annotations

import argparse
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

from lw.testing.openai_server import Reply, spawned_server, user_text  # noqa: E402

PLAN = "\n".join(f"Paragraph {i} - Main Point: part {i} of the story - Word Count: 200 words" for i in (1, 2, 3))


def answer(delay: float, body: dict, attempt: int) -> Reply:
    text = user_text(body)
    # A write call carries the outline it follows; an outline call does not.
    if "Main Point: part 1 of the story" in text:
        return Reply(" ".join(["word"] * 200), delay=delay)
    return Reply(PLAN, delay=delay)


def run(base_url: str, concurrency: int, work: Path, instructions: Path) -> dict:
    run_dir = work / f"c{concurrency}"
    env = {**os.environ, "LW_CACHE": str(work / "cache"), "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", "lw", "task=agentwrite", "logger=none", f"agentwrite.instructions={instructions}",
                    "generation=openai", f"generation.base_url={base_url}", "generation.model=bench",
                    "generation.api_key_env=null", f"generation.concurrency={concurrency}",
                    f"hydra.run.dir={run_dir}"], cwd=work, env=env, check=True, capture_output=True, text=True)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    seconds, written = metrics["time/total_seconds"], metrics["agentwrite/written"]
    return {"concurrency": concurrency, "task_seconds": seconds, "instructions_written": written,
            "instructions_per_minute": round(written / seconds * 60, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--instructions", type=int, default=32)
    args = parser.parse_args()
    results = {"server_delay_s": args.delay, "instructions": args.instructions, "calls_per_instruction": 4,
               "cpus": os.cpu_count(), "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        instructions = work / "instructions.jsonl"
        instructions.write_text("".join(json.dumps({"prompt": f"Write a 600-word story about river {i}."}) + "\n"
                                        for i in range(args.instructions)))
        for concurrency in args.concurrency:
            with spawned_server(partial(answer, args.delay)) as base_url:
                results["runs"].append(run(base_url, concurrency, work, instructions))
            print(results["runs"][-1], flush=True)
    write_speedups(results, "agentwrite_concurrency", rate="instructions_per_minute")


if __name__ == "__main__":
    main()
