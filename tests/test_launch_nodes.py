"""Two nodes on one machine, as the README tells users to run them without SLURM: two `python -m lw`
processes with launcher.nnodes=2, node_rank 0 and 1, master_addr 127.0.0.1 and one port, in one
shared run directory (the case docs/engineering.md, "Several nodes", recommends). A tiny model on
one gloo rank per node under ZeRO-3 with CPU offload, 4 steps, a checkpoint every 2.

Then the same job with node 1 lost after its step-2 checkpoint (its driver and its workers
SIGKILLed): node 0 ends in one line with exit status 3, and both commands again resume from the
checkpoint to the unbroken run's final loss."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from lw.launch.topology import free_port
from lw.tracking import read_offline_run
from lw.train.worker import FAULT_ACTION_ENV, FAULT_RANK_ENV, FAULT_STEP_ENV

pytestmark = pytest.mark.slow  # every test here launches lw, ranks or a server

OVERRIDES = ["launcher=deepspeed", "launcher.nnodes=2", "launcher.nproc_per_node=1", "launcher.master_addr=127.0.0.1",
             "experiment=smoke", "trainer.args.max_steps=4", "trainer.args.save_strategy=steps",
             "+trainer.args.save_steps=2", "eval.toy_ruler.samples_per_prompt=1"]


class Node:
    """One node's driver, `python -m lw ... launcher.node_rank=R`, in its own process group."""

    def __init__(self, rank: int, port: int, cwd: Path, env: dict | None = None):
        self.rank = rank
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lw", *OVERRIDES, f"launcher.node_rank={rank}", f"launcher.master_port={port}"],
            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.readers = [threading.Thread(target=self._read, args=(s, out), daemon=True)
                        for s, out in ((self.proc.stdout, self.stdout), (self.proc.stderr, self.stderr))]
        for reader in self.readers:
            reader.start()

    @staticmethod
    def _read(stream, out):
        for line in stream:
            out.append(line)

    def output(self) -> str:
        return "".join(self.stdout) + "".join(self.stderr)

    def wait(self, timeout: float = 400) -> int:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        for reader in self.readers:
            reader.join(timeout=10)
        return code

    def kill(self) -> None:
        """SIGKILL the driver and its workers' process group, as a node that goes down."""
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        groups = {os.getpgid(p.pid) for p in children if p.is_running()} | {self.proc.pid}
        for group in groups:
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass


def run_job(cwd: Path, env: dict | None = None) -> tuple[Node, Node]:
    port = free_port()
    nodes = Node(1, port, cwd, env), Node(0, port, cwd, env)  # node 1 first: it waits for node 0
    for node in nodes:
        node.wait()
    return nodes


def run_dir_in(cwd: Path) -> Path:
    (run_dir,) = (cwd / "runs").iterdir()  # node_rank and the port stay out of the run's name
    return run_dir


def final_loss(run_dir: Path) -> float:
    logs = [json.loads(line) for line in (run_dir / "launch" / "train_log.jsonl").read_text().splitlines()]
    return [r for r in logs if "loss" in r][-1]["loss"]


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("two_nodes")
    node1, node0 = run_job(cwd)
    return run_dir_in(cwd), node0, node1


def test_two_nodes_train_in_one_run_directory_and_node_0_evaluates(unbroken):
    run_dir, node0, node1 = unbroken
    assert node0.proc.returncode == 0, node0.output()[-4000:]
    assert node1.proc.returncode == 0, node1.output()[-4000:]
    assert f"lw: node 1 of 2: training done; node 0 evaluates and logs in {run_dir}" in node1.output()
    assert f"lw: done, results in {run_dir}" in node0.output() and "lw: done" not in node1.output()
    # One world of 2 ranks, one per node, ZeRO-3; each node's launch files and logs apart.
    for launch in (run_dir / "launch", run_dir / "launch" / "node1"):
        assert "ZeRO stage 3, world size 2" in (launch / "workers.log").read_text() or launch.name == "node1"
        assert "--node-rank" in (launch / "command.sh").read_text()
    assert "--node-rank 1" in (run_dir / "launch" / "node1" / "command.sh").read_text()
    assert "node_rank: 1" in (run_dir / "launch" / "node1" / "config.yaml").read_text()
    assert "node_rank: 0" in (run_dir / "launch" / "config.yaml").read_text()
    assert (run_dir / ".hydra").is_dir() and (run_dir / ".hydra-node1").is_dir()
    assert (run_dir / "lw.log").exists() and (run_dir / "lw-node1.log").exists()
    # Only global rank 0 saved the model; both ranks' ZeRO shards are in the one checkpoint folder.
    assert (run_dir / "model" / "model.safetensors").exists()
    shards = sorted(p.name for p in (run_dir / "checkpoints" / "checkpoint-4" / "global_step4").iterdir())
    assert shards == [f"zero_pp_rank_{r}_mp_rank_00_{k}_states.pt" for r in (0, 1) for k in ("model", "optim")]
    # Node 0 evaluated and holds the only W&B run.
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["ruler/n"] == 2 and "data/packs" in metrics
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    logged = [h["train/global_step"] for h in read_offline_run(offline)["history"] if "train/loss" in h]
    assert logged == [2, 4]


def test_a_node_that_sees_other_data_stops_the_job_in_one_line(tmp_path):
    """Node 1 with its own run directory holding a stale prepared set (a disk that is not shared)."""
    (tmp_path / "node0").mkdir()
    (tmp_path / "node1").mkdir()
    port = free_port()
    node1 = Node(1, port, tmp_path / "node1")
    while not (tmp_path / "node1" / "runs").is_dir():
        time.sleep(0.1)
    stale = run_dir_in(tmp_path / "node1") / "data" / "tokenized"
    stale.mkdir(parents=True)
    (stale / "dataset_info.json").write_text("{}")
    node0 = Node(0, port, tmp_path / "node0")
    assert node1.wait() == 2 and node0.wait() == 2
    for node in (node0, node1):
        line = node.stderr[-1]
        assert line.startswith("lw: error: node 1 sees other prepared data in ") and "shared folder" in line, \
            node.output()[-3000:]


@pytest.fixture(scope="module")
def lost_node(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("lost_node")
    port = free_port()
    fault = {FAULT_STEP_ENV: "2", FAULT_RANK_ENV: "1", FAULT_ACTION_ENV: "wait"}
    node1, node0 = Node(1, port, cwd, fault), Node(0, port, cwd, fault)
    deadline = time.time() + 400
    while "waits after checkpoint 2" not in node1.output():
        assert node1.proc.poll() is None and time.time() < deadline, node1.output()[-4000:]
        time.sleep(0.2)
    node1.kill()
    killed = time.time()
    code = node0.wait()
    seconds = time.time() - killed  # reported, never asserted (docs/engineering.md gives the figure)
    print(f"node 0 ended {seconds:.1f} s after node 1 was killed")
    node1.wait()
    run_dir = run_dir_in(cwd)
    after_kill = sorted(p.name for p in (run_dir / "checkpoints").glob("checkpoint-*")) + \
        [p.name for p in run_dir.glob("model")]
    resumed = run_job(cwd)
    return run_dir, code, node0, after_kill, resumed


def test_a_lost_node_ends_node_0_in_one_line_with_exit_status_3(lost_node):
    run_dir, code, node0, after_kill, _ = lost_node
    assert code == 3, node0.output()[-4000:]
    line = node0.stderr[-1]
    assert line.startswith("lw: incomplete: node 0 of 2 lost node 1 during training (rank 0: "), node0.output()[-4000:]
    assert f"the last checkpoint, {run_dir / 'checkpoints' / 'checkpoint-2'}, is kept" in line
    assert "rerun the same command on every node to resume" in line
    assert after_kill == ["checkpoint-2"]  # and no model


def test_both_commands_again_resume_to_the_unbroken_runs_final_loss(lost_node, unbroken):
    run_dir, _, _, _, (node1, node0) = lost_node
    assert node0.proc.returncode == 0 and node1.proc.returncode == 0, node0.output()[-4000:] + node1.output()[-3000:]
    assert f"resuming from {run_dir / 'checkpoints' / 'checkpoint-2'}" in node0.output()
    logs = [json.loads(line) for line in (run_dir / "launch" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs if "loss" in r] == [2, 4]  # step 2 before the loss, step 4 after resuming
    # The trainer restores the data order, the schedule and each rank's RNG state from the checkpoint;
    # what may differ is the order of float sums in the reloaded optimizer state (see the docs).
    print(f"final loss: resumed {final_loss(run_dir)!r}, unbroken {final_loss(unbroken[0])!r}")
    assert final_loss(run_dir) == pytest.approx(final_loss(unbroken[0]), rel=1e-4)
