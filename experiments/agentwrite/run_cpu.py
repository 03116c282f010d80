"""AgentWrite end to end on 2 CPU cores with nothing from the network: a tiny model served by
`transformers serve` on loopback writes outlines and paragraphs for a few instructions
(`lw task=agentwrite`), the result trains a tiny model (`lw data=jsonl`), and the toy ruler probes
it. The text is nonsense (the served model is the smoke miniature); the pipeline is the point.

    python experiments/agentwrite/run_cpu.py [--work runs/agentwrite_demo] [--lw lw]

Writes experiments/agentwrite/results/cpu/ (the AgentWrite stats, a sample, the SFT run's metrics,
the time of each step).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from lw.testing.hf_serve import transformers_serve  # noqa: E402

# Toy requests in the served model's own vocabulary (its word-level tokenizer knows no other words).
INSTRUCTIONS = [f"Write a {n}-word note about {topic}." for n in (200, 300, 400)
                for topic in ("rivers", "mountains", "trains", "gardens")]


def lw(command: list[str], args) -> float:
    start = time.time()
    print("+", shlex.join(command), flush=True)
    subprocess.run([*shlex.split(args.lw), *command], cwd=REPO, check=True)
    return round(time.time() - start, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "agentwrite_demo")
    parser.add_argument("--lw", default=f"{sys.executable} -m lw")
    parser.add_argument("--out", type=Path, default=REPO / "experiments" / "agentwrite" / "results" / "cpu")
    args = parser.parse_args()
    work, out = args.work.resolve(), args.out.resolve()
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    times = {}
    start = time.time()
    writer = work / "writer"
    if not (writer / "model" / "config.json").exists():
        times["train_the_served_model_s"] = lw(["experiment=smoke", "logger=none", f"hydra.run.dir={writer}"], args)
    instructions = work / "instructions.jsonl"
    instructions.write_text("".join(json.dumps({"id": f"i{i}", "prompt": p}) + "\n" for i, p in enumerate(INSTRUCTIONS)))
    agentwrite = work / "agentwrite"
    serve_start = time.time()
    with transformers_serve(writer / "model", log_path=work / "serve.log") as base_url:
        times["serve_start_s"] = round(time.time() - serve_start, 1)
        # The served model writes no line breaks, numbers or word counts: every outline is one plain
        # line (agentwrite.plain_lines), a step without a count (kept: missing_count=keep).
        times["agentwrite_s"] = lw(["task=agentwrite", f"agentwrite.instructions={instructions}",
                                    "agentwrite.plain_lines=true", "agentwrite.missing_count=keep",
                                    "agentwrite.min_length_ratio=0",
                                    "agentwrite.max_tokens=200", "generation=openai", f"generation.base_url={base_url}",
                                    f"generation.model={writer / 'model'}", "generation.api_key_env=null",
                                    "generation.concurrency=4", "logger=none", f"hydra.run.dir={agentwrite}"], args)
    data = agentwrite / "agentwrite" / "data.jsonl"
    sft = work / "sft"
    times["sft_and_probe_s"] = lw(["data=jsonl", f"data.path={data}", "experiment=smoke", "logger=none",
                                   f"hydra.run.dir={sft}"], args)
    times["total_s"] = round(time.time() - start, 1)
    shutil.copy(agentwrite / "agentwrite" / "stats.json", out / "agentwrite_stats.json")
    shutil.copy(sft / "metrics.json", out / "sft_metrics.json")
    (out / "data_sample.jsonl").write_text(data.read_text().splitlines()[0] + "\n")
    (out / "time.json").write_text(json.dumps(times, indent=2) + "\n")
    print(json.dumps(times, indent=2))


if __name__ == "__main__":
    main()
