"""Seconds from `lw` starting to its one-line error, for a judge nobody listens at and for one that
refuses the key, at the default judge settings (timeout 120 s, 5 retries, concurrency 16), against
the floor: `lw` composing its config and exiting (`--cfg job`), measured in the same run.

    python benchmarks/fail_fast.py [--items 120] [--repeats 3]

Writes benchmarks/results/fail_fast.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lw.testing.openai_server import OpenAIServer, Reply

RESULTS = Path(__file__).resolve().parent / "results"
TEMPLATE = "Judge this.\n<Instruction>$INST$</Instruction>\n<Response>$RESPONSE$</Response>\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed(args: list[str], cwd: Path) -> tuple[float, int, str]:
    env = {**os.environ, "LW_BENCH_KEY": "sk-benchmark", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline",
           "WANDB_DIR": str(cwd)}
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "lw", *args], cwd=cwd, env=env, capture_output=True, text=True)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    return time.perf_counter() - start, result.returncode, lines[-1] if lines else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=120, help="predictions to judge (LongBench-Write has 120)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="lw-fail-fast-"))
    preds = work / "preds.jsonl"
    preds.write_text("".join(json.dumps({"prompt": f"Write {n} words, item {i}.", "length": n, "response": "word " * n})
                             + "\n" for i, n in enumerate(range(10, 10 + args.items))))
    (work / "judge.txt").write_text(TEMPLATE)

    def score(base_url: str, run: str, logger: str = "none") -> list[str]:
        return ["task=score", f"score.predictions={preds}", "judge=openai", f"judge.base_url={base_url}",
                "judge.model=judge", "judge.api_key_env=LW_BENCH_KEY", f"judge.template={work / 'judge.txt'}",
                f"logger={logger}", f"hydra.run.dir={work / run}", f"cache_dir={work / 'cache'}"]

    refused = f"http://127.0.0.1:{free_port()}/v1"
    cases: dict[str, list[str]] = {
        "floor: lw --cfg job": ["--cfg", "job", "logger=none"],
        "unreachable judge (connection refused)": score(refused, "refused"),
        # The default logger: a W&B run starts (offline without a key) before the task does.
        "unreachable judge, W&B offline (the default logger)": score(refused, "refused_wandb", "wandb"),
    }
    refusing = OpenAIServer(lambda body, attempt: Reply(status=401, body='{"error": {"message": "bad key"}}'))
    with refusing:
        cases["judge answering 401"] = score(refusing.base_url, "401")
        results = {}
        for name, case in cases.items():
            runs = [timed(case, work) for _ in range(args.repeats)]
            results[name] = {"seconds": round(statistics.median(s for s, _, _ in runs), 2),
                             "exit_status": runs[-1][1], "last_line": runs[-1][2][:300]}
        results["judge answering 401"]["requests_sent"] = len(refusing.requests) / args.repeats
    floor = results["floor: lw --cfg job"]["seconds"]
    for result in results.values():
        result["vs_floor"] = round(result["seconds"] / floor, 2)
    for name, result in results.items():
        print(f"{name}: {result['seconds']} s ({result['vs_floor']}x the floor), exit {result['exit_status']}: "
              f"{result['last_line'][:120]}")
    out = RESULTS / "fail_fast.json"
    out.write_text(json.dumps({"command": "python benchmarks/fail_fast.py " + " ".join(sys.argv[1:]),
                               "items": args.items, "cpus": os.cpu_count(), "results": results}, indent=2) + "\n")
    print(f"written {out}")


if __name__ == "__main__":
    main()
