"""The driver's parts: worker commands, topology (SLURM included), a failing rank, stopping workers,
the DeepSpeed config, and the slurm launcher refusing to run where there is no cluster."""

import json
import os
import sys
import textwrap
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf, open_dict

from lw.errors import UserError
from lw.launch.driver import (
    NodeLost,
    Preempted,
    TrainLogForwarder,
    WorkerFailure,
    explain_failure,
    is_first_node,
    run_workers,
    worker_command,
    write_launch_files,
)
from lw.launch.topology import EXIT_PREEMPTED, Topology, slurm_port, topology
from lw.plan.deepspeed import deepspeed_config_path, load_deepspeed_config
from lw.tracking import Tracker

from helpers import compose_lw, run_lw


def launcher(**overrides):
    base = dict(kind="deepspeed", runner="torchrun", nproc_per_node=2, nnodes=1, node_rank=0,
                master_addr="127.0.0.1", master_port=None, backend=None, deepspeed="zero3_offload",
                log_tail_lines=40)
    return OmegaConf.create({**base, **overrides})


def test_torchrun_command_names_the_topology_and_the_worker(tmp_path):
    topo = Topology(nnodes=2, node_rank=1, nproc_per_node=8, master_addr="node07", master_port=29555)
    command = worker_command(launcher(), topo, tmp_path)
    assert command[:3] == [sys.executable, "-m", "torch.distributed.run"]
    flags = dict(zip(command[3:-3:2], command[4:-3:2]))
    assert flags == {"--nnodes": "2", "--nproc-per-node": "8", "--node-rank": "1", "--master-addr": "node07",
                     "--master-port": "29555", "--log-dir": str(tmp_path / "launch" / "node1" / "ranks"), "--tee": "3"}
    assert command[-3:] == ["-m", "lw.train.worker", str(tmp_path)]


def test_accelerate_command_counts_processes_over_all_nodes(tmp_path):
    topo = Topology(nnodes=2, node_rank=0, nproc_per_node=8, master_addr="node07", master_port=29555)
    command = worker_command(launcher(runner="accelerate"), topo, tmp_path)
    assert command[1:3] == ["-m", "accelerate.commands.launch"] and "--multi_gpu" in command
    assert command[command.index("--num_processes") + 1] == "16"
    assert command[command.index("--num_machines") + 1] == "2"
    assert command[-3:] == ["-m", "lw.train.worker", str(tmp_path)]
    with pytest.raises(ValueError, match="torchrun or accelerate"):
        worker_command(launcher(runner="mpirun"), topo, tmp_path)


def test_topology_picks_a_free_port_on_one_node_and_demands_one_on_several():
    topo = topology(launcher())
    assert topo.world_size == 2 and 1024 < topo.master_port < 65536
    assert topology(launcher(master_port=29501)).master_port == 29501
    with pytest.raises(ValueError, match="master_port"):
        topology(launcher(nnodes=2, node_rank=1))
    with pytest.raises(ValueError, match="node_rank=2"):
        topology(launcher(nnodes=2, node_rank=2, master_port=29501))


def test_slurm_topology_comes_from_the_allocation(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "123456")
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "3")
    monkeypatch.setenv("SLURM_NODEID", "2")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[07-08],cpu3")
    topo = topology(launcher(kind="slurm", nnodes=3, nproc_per_node=8))
    assert topo == Topology(nnodes=3, node_rank=2, nproc_per_node=8, master_addr="gpu07",
                            master_port=slurm_port("123456"))
    assert 20000 <= topo.master_port < 40000
    with pytest.raises(UserError, match="3 nodes but launcher.nnodes=2"):
        topology(launcher(kind="slurm", nnodes=2))


def test_slurm_outside_an_allocation_fails_before_any_work(monkeypatch):
    # pipeline.run asks is_first_node before it starts a tracker, prepares data or trains.
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with pytest.raises(UserError, match="launcher=slurm runs inside a SLURM allocation"):
        is_first_node(launcher(kind="slurm"))
    assert is_first_node(launcher(node_rank=0)) and not is_first_node(launcher(nnodes=2, node_rank=1))
    with pytest.raises(ValueError, match="unknown launcher.kind 'kubernetes'"):
        is_first_node(launcher(kind="kubernetes"))


@pytest.mark.slow
def test_slurm_sweep_composes_and_refuses_to_submit_without_a_cluster(tmp_path):
    cfg = compose_lw("launcher=slurm", "launcher.nnodes=2", "experiment=longwriter_glm4_9b")
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert OmegaConf.select(cfg, "hydra.launcher.nodes") == 2  # one knob: launcher.nnodes
    assert OmegaConf.select(cfg, "hydra.launcher.gpus_per_node") == 8
    assert cfg.hydra.launcher.tasks_per_node == 1 and cfg.launcher.kind == "slurm"
    assert cfg.launcher.deepspeed == "auto"  # the experiment's choice survives
    result = run_lw("-m", "launcher=slurm", "experiment=smoke", "logger=none", cwd=tmp_path, check=False)
    assert result.returncode != 0
    assert 'Could not detect "srun"' in result.stderr
    assert not list(tmp_path.rglob("train.jsonl")) and not list(tmp_path.rglob("model"))


FAILING_RANK = textwrap.dedent("""
    import os, sys, time
    rank = int(os.environ["RANK"])
    print(f"rank {rank} working", flush=True)
    if rank == 1:
        print("rank 1: something broke", flush=True)
        sys.exit(7)
    time.sleep(60)
""")

SLEEPING_RANKS = textwrap.dedent("""
    import os, sys, time
    with open(os.path.join(sys.argv[1], os.environ["RANK"]), "w") as f:
        f.write(str(os.getpid()))
    time.sleep(120)
""")


def _torchrun(script: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
            "--master-port", str(topology(launcher()).master_port), "--tee", "3", str(script), *args]


@pytest.mark.slow
def test_a_failing_rank_fails_the_driver_with_its_exit_code_and_log(tmp_path):
    script = tmp_path / "fail.py"
    script.write_text(FAILING_RANK)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    start = time.time()
    with pytest.raises(WorkerFailure) as failure:
        run_workers(_torchrun(script), env, tmp_path / "workers.log")
    assert time.time() - start < 50  # rank 0 was stopped, not waited for
    assert failure.value.rank == 1 and failure.value.exit_code == 7
    message = str(failure.value)
    assert "worker rank 1 (local rank 1) failed with exit code 7" in message
    assert "rank 1: something broke" in message and "rank 0 working" not in message
    assert "rank 1: something broke" in (tmp_path / "workers.log").read_text()


@pytest.mark.slow
def test_an_interrupted_driver_stops_every_worker(tmp_path):
    script = tmp_path / "sleep.py"
    script.write_text(SLEEPING_RANKS)
    pids = tmp_path / "pids"
    pids.mkdir()

    def interrupt_once_both_ranks_run():
        if len(list(pids.iterdir())) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_workers(_torchrun(script, str(pids)), {**os.environ}, tmp_path / "workers.log",
                    on_poll=interrupt_once_both_ranks_run, poll_seconds=0.2)
    for pid_file in pids.iterdir():
        pid = int(pid_file.read_text())
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


class RecordingTracker(Tracker):
    def __init__(self):
        self.logged = []

    def log(self, metrics):
        self.logged.append(metrics)


def test_train_log_forwarder_sends_complete_new_lines_once(tmp_path):
    path = tmp_path / "train_log.jsonl"
    path.write_text(json.dumps({"step": 2, "loss": 9.0}) + "\n")  # an earlier attempt's log
    tracker = RecordingTracker()
    forwarder = TrainLogForwarder(path, tracker)
    with open(path, "a") as f:
        f.write(json.dumps({"step": 4, "loss": 3.5, "learning_rate": 1e-5}) + "\n")
        f.write('{"step": 6, "lo')  # being written
    forwarder.poll()
    assert tracker.logged == [{"train/loss": 3.5, "train/learning_rate": 1e-5, "train/global_step": 4}]
    with open(path, "a") as f:
        f.write('ss": 3.0}\n')
    forwarder.poll()
    forwarder.poll()
    assert tracker.logged[1:] == [{"train/loss": 3.0, "train/global_step": 6}]


def test_deepspeed_configs_are_zero3_with_both_offloads_and_an_integer_prefetch_bucket():
    for name in ("zero3_offload", "zero3_offload_cpuadam"):
        config = load_deepspeed_config(name)
        zero = config["zero_optimization"]
        assert zero["stage"] == 3
        assert zero["offload_optimizer"]["device"] == zero["offload_param"]["device"] == "cpu"
        # "auto" here is filled with 0.9 * hidden**2 by older transformers, a fraction DeepSpeed refuses.
        assert isinstance(zero["stage3_prefetch_bucket_size"], int)
        assert config["bf16"]["enabled"] == "auto" and config["train_batch_size"] == "auto"
    assert "optimizer" not in load_deepspeed_config("zero3_offload")  # torch AdamW: nothing to compile
    assert load_deepspeed_config("zero3_offload")["zero_force_ds_cpu_optimizer"] is False


def test_deepspeed_rejects_the_fractional_prefetch_bucket_that_auto_used_to_give():
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    with pytest.raises(Exception, match="fractional"):
        DeepSpeedZeroConfig(stage=3, stage3_prefetch_bucket_size=0.9 * 4096 * 4096)


def test_unknown_deepspeed_config_lists_the_known_ones(tmp_path):
    with pytest.raises(FileNotFoundError, match="zero3_offload"):
        deepspeed_config_path("zero2")
    broken = tmp_path / "broken.json"
    broken.write_text('{\n  "zero_optimization": {,\n}')
    with pytest.raises(ValueError, match=r"broken.json, line 2"):
        load_deepspeed_config(str(broken))


def test_workers_get_the_resolved_config_without_secrets(tmp_path, monkeypatch):
    from lw.train.worker import load_run_config

    monkeypatch.setenv("LW_TEST_TOKEN", "sekrit-value")  # a key read from the environment, as keys are
    cfg = compose_lw("experiment=smoke", "launcher=deepspeed")
    with open_dict(cfg):
        del cfg["hydra"]  # a job's config has no hydra node
        cfg.trainer.args.hub_token = "${oc.env:LW_TEST_TOKEN}"
    write_launch_files(cfg, tmp_path, ["python", "-m", "lw.train.worker", str(tmp_path)],
                       deepspeed_config_path(cfg.launcher.deepspeed))
    text = (tmp_path / "launch" / "config.yaml").read_text()
    assert "sekrit-value" not in text and "hub_token: <redacted>" in text and "${" not in text
    loaded = load_run_config(tmp_path)
    assert loaded.task == "train" and loaded.run_name == cfg.run_name
    assert loaded.trainer.args.max_steps == 6 and loaded.launcher.deepspeed == "zero3_offload"
    assert json.loads((tmp_path / "launch" / "deepspeed.json").read_text())["zero_optimization"]["stage"] == 3
    assert (tmp_path / "launch" / "command.sh").read_text().endswith(f"lw.train.worker {tmp_path}\n")


@pytest.mark.parametrize("gpu_gib, offload", [(80, False), (24, True)])
def test_workers_get_the_planners_deepspeed_config_for_auto(tmp_path, gpu_gib, offload):
    """launcher.deepspeed=auto: the caller's choice (the planner's), which the driver writes: ZeRO-3
    without offload where the plan fits the GPUs (Llama-3.1-8B, 32k packs, 8 x 80 GiB),
    parameter+optimizer offload where it does not."""
    from lw.plan.offload import resolve_deepspeed
    from lw.train.registry import trainer_for

    cfg = compose_lw("experiment=longwriter_llama3_1_8b", f"plan.gpu_memory_gib={gpu_gib}")
    with open_dict(cfg):
        del cfg["hydra"]
    assert cfg.launcher.deepspeed == "auto"
    write_launch_files(cfg, tmp_path, ["python", "-m", "lw.train.worker", str(tmp_path)],
                       resolve_deepspeed(cfg, trainer_for(cfg)))
    zero = json.loads((tmp_path / "launch" / "deepspeed.json").read_text())["zero_optimization"]
    assert zero["stage"] == 3 and ("offload_param" in zero) == ("offload_optimizer" in zero) == offload


def test_a_rank_of_this_node_killed_by_signal_9_is_this_nodes_failure_not_another_node_lost(tmp_path):
    """The OOM killer takes rank 2 on node 1; its local peer then loses its connections (exit code 1):
    this node's own failure, with its exit codes and lines, never 'lost node 0' (which would send the
    user to look for a dead node)."""
    lines = ("[default0]:RuntimeError: [../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer "
             "[127.0.0.1]:29500\n")
    failure = WorkerFailure("worker rank 2 (local rank 0) failed with exit code -9 (SIGKILL)", 2, -9, lines, (-9, 1))
    topo = Topology(nnodes=2, node_rank=1, nproc_per_node=2, master_addr="node0", master_port=29500)
    assert explain_failure(failure, topo, tmp_path) is failure
    # The same lines with every rank ended by its lost peer are another node's loss.
    lost = WorkerFailure("worker rank 2 (local rank 0) failed with exit code 1", 2, 1, lines, (1, 1))
    assert isinstance(explain_failure(lost, topo, tmp_path), NodeLost)


def test_a_failure_with_one_rank_preempted_and_another_crashed_is_a_crash_not_a_preemption(tmp_path):
    """Handled as a preemption, a crashing job would exit 75 and be requeued again and again."""
    topo = Topology(nnodes=1, node_rank=0, nproc_per_node=2, master_addr="127.0.0.1", master_port=29500)
    crashed = WorkerFailure("worker rank 1 (local rank 1) failed with exit code 1", 1, 1,
                            "[default1]:ValueError: a bug\n", (1, EXIT_PREEMPTED))
    assert explain_failure(crashed, topo, tmp_path) is crashed
    preempted = WorkerFailure("worker rank 0 (local rank 0) failed with exit code 75", 0, EXIT_PREEMPTED, "",
                              (EXIT_PREEMPTED, EXIT_PREEMPTED))
    assert isinstance(explain_failure(preempted, topo, tmp_path), Preempted)
