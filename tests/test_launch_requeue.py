"""SLURM's preemption and requeue without a cluster: Hydra's submitit launcher with submitit's local
executor (hydra/launcher=submitit_local) runs each job in its own process, as submitit_slurm does on
a node, and simulates SLURM's requeue: SIGUSR2 to the job calls the launcher's checkpoint(), and the
job is started again with the same arguments. What needs srun (a requeue by the scheduler itself,
SLURM_RESTART_COUNT, several nodes) is not simulated: docs/engineering.md, "SLURM"."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from lw.testing.openai_server import OpenAIServer, Reply, judge_json, user_text
from lw.train.worker import FAULT_ACTION_ENV, FAULT_RANK_ENV, FAULT_STEP_ENV

from helpers import run_lw

pytestmark = pytest.mark.slow  # every test here launches lw, ranks or a server


def test_a_preempted_job_checkpoints_is_requeued_and_resumes(tmp_path):
    sweep = tmp_path / "sweep"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
           # Rank 0 holds its step after the step-2 checkpoint until the job is preempted, so that the
           # preemption always comes mid-run.
           FAULT_STEP_ENV: "2", FAULT_RANK_ENV: "0", FAULT_ACTION_ENV: "stall"}
    lw = subprocess.Popen(
        [sys.executable, "-m", "lw", "-m", "hydra/launcher=submitit_local", "launcher=deepspeed",
         "launcher.nproc_per_node=1", "experiment=smoke", "trainer.args.max_steps=4", "trainer.args.save_strategy=steps",
         "+trainer.args.save_steps=2", "eval.toy_ruler.samples_per_prompt=1", "logger=none", f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not any("stalls after checkpoint 2" in p.read_text() for p in sweep.glob(".submitit/*/*_log.out")):
        assert lw.poll() is None and time.time() < deadline, lw.communicate()[0][-4000:]
        time.sleep(0.2)
    # The job's own process (submitit's task, which runs the driver), as SLURM signals it.
    (job,) = [p for p in psutil.Process(lw.pid).children(recursive=True) if "submitit.core._submit" in " ".join(p.cmdline())]
    job.send_signal(signal.SIGUSR2)
    output = lw.communicate(timeout=400)[0]
    assert lw.returncode == 0, output[-4000:]
    (run_dir,) = [p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")]
    logs = "".join(p.read_text() for p in sweep.glob(".submitit/*/*_log.*"))
    # The workers saved a checkpoint at the end of the step they were in (3), not at a save step.
    assert "preempted: checkpoint-3 saved; exiting to be requeued" in logs
    assert "Requeued job" in logs
    assert f"resuming from {run_dir / 'checkpoints' / 'checkpoint-3'}" in logs
    trained = [json.loads(line) for line in (run_dir / "launch" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in trained if "loss" in r] == [2, 4]
    assert json.loads((run_dir / "metrics.json").read_text())["ruler/n"] == 2
    assert (run_dir / "model" / "model.safetensors").exists()


def predictions(path: Path, topic: str) -> Path:
    rows = [{"prompt": f"Write {10 * (i + 1)} words about {topic}, item {i}.", "type": "note", "length": 10 * (i + 1),
             "response": " ".join(["water"] * (10 * (i + 1)))} for i in range(6)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_sweep_under_submitit_names_its_incomplete_job_and_keeps_the_others(tmp_path, bench_data_dir):
    """The jobs run in submitit's processes, not lw's: the incomplete one is still named, exit status 3."""
    lakes, rivers = predictions(tmp_path / "lakes.jsonl", "lakes"), predictions(tmp_path / "rivers.jsonl", "rivers")

    def flaky(body, attempt):
        return Reply(status=500) if "lakes, item 2." in user_text(body) else Reply(judge_json(4))

    with OpenAIServer(flaky) as server:
        result = run_lw("-m", "hydra/launcher=submitit_local", f"score.predictions={lakes},{rivers}", "task=score",
                        "judge=openai", f"judge.base_url={server.base_url}", "judge.model=loopback-judge",
                        "judge.api_key_env=null", "judge.retries=0", "eval=longbench_write",
                        f"eval.longbench_write.data_dir={bench_data_dir}", "logger=none",
                        f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path, check=False)
    assert result.returncode == 3, result.stderr[-3000:]
    last = [line for line in result.stderr.splitlines() if line.strip()][-1]
    (lakes_job,) = [p.parent.name for p in (tmp_path / "sweep").glob("*/lw_incomplete.txt")]
    assert last.startswith(f"lw: incomplete: 1 job(s) of the sweep have items still failed ({lakes_job})")
    metrics = {p.parent.name: json.loads(p.read_text()) for p in (tmp_path / "sweep").glob("*/metrics.json")}
    assert len(metrics) == 2 and metrics[lakes_job]["longbench_write/judge_failed"] == 1
    assert sum(m["longbench_write/judge_failed"] for m in metrics.values()) == 1
