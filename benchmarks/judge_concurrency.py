"""Judging 120 responses against a loopback OpenAI-compatible server that answers after 200 ms:
wall time at judge.concurrency 16 vs 1 (the judge's target: >= 10x faster at 16).

    python benchmarks/judge_concurrency.py [--delay 0.2] [--concurrency 1 16] [--data-dir DIR]

The prompts and the judge template come from --data-dir (default $LW_BENCH_DIR: a folder with the
official longbench_write.jsonl and judge.txt); without one, benchmark-shaped ones are generated
(lw.testing.benchmark_files: 120 prompts, the same counts and lengths, the same placeholders).

Writes benchmarks/results/judge_concurrency.json. The cache is off, so every run sends all requests.
The server runs in its own process (as a remote server would), so it does not share the client's GIL;
one warm-up request first keeps one-time costs (imports, first connection) out of the timings.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from omegaconf import OmegaConf  # noqa: E402
from speedup import write_speedups  # noqa: E402

from lw.config import JudgeConfig  # noqa: E402
from lw.eval.judge import Judge  # noqa: E402
from lw.testing.benchmark_files import JUDGE_TEMPLATE, longbench_write_rows  # noqa: E402
from lw.testing.openai_server import Reply, judge_json, spawned_server  # noqa: E402


def fixed_reply(delay: float, body: dict, attempt: int) -> Reply:
    return Reply(judge_json(4), delay=delay)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--data-dir", type=Path, default=os.environ.get("LW_BENCH_DIR") or None,
                        help="folder with longbench_write.jsonl and judge.txt (default: $LW_BENCH_DIR, "
                             "else benchmark-shaped prompts generated here)")
    args = parser.parse_args()
    if args.data_dir:
        items = [json.loads(line) for line in (args.data_dir / "longbench_write.jsonl").open()]
        template = (args.data_dir / "judge.txt").read_text()
    else:
        items, template = longbench_write_rows(), JUDGE_TEMPLATE
    rows = [{"id": str(i), "prompt": r["prompt"], "response": f"response {i} " + "word " * 50} for i, r in enumerate(items)]
    results = {"n": len(rows), "server_delay_s": args.delay, "cpus": os.cpu_count(), "prompts": str(args.data_dir
               or "generated (lw.testing.benchmark_files)"), "runs": []}
    with spawned_server(partial(fixed_reply, args.delay)) as base_url:
        warm = OmegaConf.structured(JudgeConfig(kind="openai", base_url=base_url, model="bench", cache=False))
        Judge(warm, template, None).judge(rows[:1])
        for concurrency in args.concurrency:
            cfg = OmegaConf.structured(JudgeConfig(kind="openai", base_url=base_url, model="bench",
                                                   concurrency=concurrency, cache=False))
            start = time.perf_counter()
            judgements = Judge(cfg, template, None).judge(rows)
            wall = time.perf_counter() - start
            assert all(j["status"] == "ok" for j in judgements)
            results["runs"].append({"concurrency": concurrency, "wall_s": round(wall, 2),
                                    "requests_per_s": round(len(rows) / wall, 2)})
            print(f"concurrency {concurrency:3d}: {wall:6.2f} s  ({len(rows) / wall:.1f} judgements/s)")
    write_speedups(results, "judge_concurrency", seconds="wall_s")


if __name__ == "__main__":
    main()
