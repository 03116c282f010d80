"""The driver side of distributed training (Hydra is the driver, not the worker: docs/architecture.md).

A Hydra job prepares the data, writes what the workers need into RUN_DIR/launch/, starts
`python -m lw.train.worker RUN_DIR` under torchrun (or accelerate) as a child process group,
streams the workers' output, forwards rank 0's training log to the driver's W&B run, and raises
with the failing rank's exit code and the tail of its log when any rank fails. The caller then
evaluates the saved model in the driver's process.

RUN_DIR/launch/ holds
    config.yaml      the resolved config the workers load (.hydra/config.yaml keeps Hydra's
                     interpolations, which resolve only inside Hydra)
    deepspeed.json   the DeepSpeed config as given, or the planner's choice for launcher.deepspeed=auto
                     ("auto" values inside it are filled by the trainer)
    command.sh       the exact launch command, re-runnable by hand
    workers.log      every rank's output, prefixed with its local rank ("[default1]:")
    ranks/           one folder per rank attempt, written by torchrun (stdout.log, stderr.log)
    train_log.jsonl  rank 0's trainer logs (loss, learning rate, ...), one JSON line per logging step
On node R > 0 of a multi-node job the same files but train_log.jsonl are in RUN_DIR/launch/nodeR/
(every node's driver runs in the one shared run directory: docs/engineering.md, "Several nodes").
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from collections import defaultdict, deque
from pathlib import Path
from typing import Callable

from omegaconf import OmegaConf

from lw.errors import Incomplete, UserError, one_line
from lw.launch.topology import EXIT_PREEMPTED, Topology, topology
from lw.run_dir import (
    checkpoint_dir,
    launch_command_file,
    launch_config_file,
    launch_deepspeed_file,
    launch_dir,
    model_dir,
    ranks_dir,
    tokenized_dir,
    train_log,
    workers_log,
)
from lw.tracking import redact

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
WORKER_MODULE = "lw.train.worker"
# torchrun's --tee prefixes each line with the role and local rank: "[default1]:...". A rank's
# unfinished line (a progress bar) can run into another's, so prefixes are found anywhere.
_RANK_PREFIX = re.compile(r"\[[A-Za-z_]+?(\d+)\]:")
# torchrun's summary of a failed run names the rank that failed first and its exit code, and
# lists the others (a rank whose peer died fails too, and may be "first observed" under load).
_ROOT_CAUSE = re.compile(r"Root Cause \(first observed failure\):.*?rank\s*:\s*(\d+)\s*\(local_rank:\s*(\d+)\)"
                         r".*?exitcode\s*:\s*(-?\d+)", re.S)
_FAILED_RANK = re.compile(r"rank\s*:\s*(\d+)\s*\(local_rank:\s*(\d+)\)\s*\n\s*exitcode\s*:\s*(-?\d+)")
# What a rank says when a peer on another node is gone: its connections closed (a killed process,
# a rebooted node) or a collective ran past launcher.collective_timeout_s (a silent network).
_PEER_LOST = re.compile(r"Connection closed by peer|Connection reset by peer|Broken pipe|Socket Timeout|"
                        r"Timed out waiting|timed out after|collective operation timeout|NCCL communicator was aborted|"
                        r"remote process exited", re.I)
_WORKER_USER_ERROR = re.compile(r"lw: error: (.+)")


class WorkerFailure(RuntimeError):
    """A rank exited with an error; the message names it, its exit code and its last lines."""

    def __init__(self, message: str, rank: int | None, exit_code: int, lines: str = "",
                 exit_codes: tuple[int, ...] = ()):
        super().__init__(message)
        self.rank = rank
        self.exit_code = exit_code
        self.lines = lines  # the failed ranks' last lines
        self.exit_codes = exit_codes or (exit_code,)  # of every rank that failed on its own
        self.preemption: Preemption | None = None


class Preempted(Incomplete):
    """The job was preempted (SIGUSR2) and its workers saved a checkpoint: rerun to resume (exit status 3)."""


class NodeLost(Incomplete):
    """Another node of the job went away mid-run: this node's ranks lost their peers. Incomplete
    (exit status 3): the checkpoints are kept, and the same command on every node resumes."""


def worker_command(launcher_cfg, topo: Topology, run_dir: Path) -> list[str]:
    """The command that starts this node's workers (argv)."""
    ranks = str(ranks_dir(run_dir, topo.node_rank))
    if launcher_cfg.runner == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run",
                "--nnodes", str(topo.nnodes), "--nproc-per-node", str(topo.nproc_per_node),
                "--node-rank", str(topo.node_rank), "--master-addr", topo.master_addr,
                "--master-port", str(topo.master_port), "--log-dir", ranks, "--tee", "3",
                "-m", WORKER_MODULE, str(run_dir)]
    if launcher_cfg.runner == "accelerate":
        # --multi_gpu selects accelerate's torchrun path (also on CPU, where --cpu would start one
        # process); DeepSpeed comes from the trainer's `deepspeed` argument, as under torchrun.
        return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                "--num_processes", str(topo.world_size), "--num_machines", str(topo.nnodes),
                "--machine_rank", str(topo.node_rank), "--main_process_ip", topo.master_addr,
                "--main_process_port", str(topo.master_port), "--mixed_precision", "no",
                "--dynamo_backend", "no", "--log_dir", ranks, "--tee", "3",
                "-m", WORKER_MODULE, str(run_dir)]
    raise UserError(f"launcher.runner must be torchrun or accelerate, got {launcher_cfg.runner!r}")


def worker_env(cfg, base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env["PYTHONUNBUFFERED"] = "1"
    # The workers import this checkout of lw, whatever their working directory.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    # DeepSpeed compiles its ops (cpu_adam, ...) on first use; one cache per machine, not per run.
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path(cfg.cache_dir).expanduser() / "torch_extensions"))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)  # the launcher sets these per worker
    return env


def write_launch_files(cfg, run_dir: Path, command: list[str], deepspeed: Path, node_rank: int = 0) -> None:
    """Everything this node's workers read, written atomically into the node's launch directory:
    `deepspeed` is the DeepSpeed config file the caller chose (lw.plan.offload.resolve_deepspeed)."""
    launch_dir(run_dir, node_rank).mkdir(parents=True, exist_ok=True)
    # Secrets (an API key read from the environment) never reach the disk; workers need none.
    resolved = redact(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    _write_atomic(launch_config_file(run_dir, node_rank), OmegaConf.to_yaml(OmegaConf.create(resolved)))
    _write_atomic(launch_deepspeed_file(run_dir, node_rank), Path(deepspeed).read_text())
    _write_atomic(launch_command_file(run_dir, node_rank), "#!/usr/bin/env bash\n" + shlex.join(command) + "\n")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class TrainLogForwarder:
    """Forwards rank 0's trainer logs (RUN_DIR/launch/train_log.jsonl) to the driver's tracker.

    One process holds the W&B run (the driver): the workers report to nothing, so a run never
    has two writers and offline runs need no resuming. Keys are named as the HF W&B callback
    names them (train/loss, train/global_step), so local and distributed runs share panels.
    """

    def __init__(self, path: Path, tracker):
        self.path = path
        self.tracker = tracker
        self.offset = path.stat().st_size if path.exists() else 0  # a rerun forwards only its own logs

    def poll(self) -> None:
        if not self.path.exists():
            return
        from transformers.integrations.integration_utils import rewrite_logs

        with open(self.path, encoding="utf-8") as f:
            f.seek(self.offset)
            while True:
                line = f.readline()
                if not line.endswith("\n"):  # not yet complete: read it next time
                    break
                self.offset = f.tell()
                record = json.loads(line)
                step = record.pop("step")
                self.tracker.log({**rewrite_logs(record), "train/global_step": step})


def run_workers(command: list[str], env: dict[str, str], log_path: Path, tail_lines: int = 40,
                on_poll: Callable[[], None] | None = None, poll_seconds: float = 1.0) -> None:
    """Run the launcher as a child process group, stream its output, raise if any rank fails."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    tails: dict[int, deque] = defaultdict(lambda: deque(maxlen=tail_lines))
    last: deque = deque(maxlen=400)
    log.info("starting workers: %s", shlex.join(command))
    with open(log_path, "a", encoding="utf-8") as log_file:
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace", bufsize=1, start_new_session=True)
        reader = threading.Thread(target=_pump, args=(proc.stdout, log_file, tails, last), daemon=True)
        reader.start()
        previous = _terminate_on_sigterm()
        preemption = Preemption(proc)
        try:
            while True:
                try:
                    returncode = proc.wait(timeout=poll_seconds)
                    break
                except subprocess.TimeoutExpired:
                    if on_poll:
                        on_poll()
        except BaseException:
            _stop(proc)  # Ctrl-C, SIGTERM, a failing poll: never leave workers running
            raise
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            preemption.restore()
            reader.join(timeout=30)
        if on_poll:
            on_poll()
    if returncode != 0:
        failure = _failure(returncode, "".join(last), tails, log_path)
        failure.preemption = preemption
        raise failure


class Preemption:
    """SIGUSR2 while the workers run: SLURM's warning before a time limit or a preemption
    (`--signal=USR2@SECONDS`; submitit asks for it). The driver passes it to the workers, which save
    a checkpoint at the end of their step and exit (lw.train.worker.CheckpointOnPreemption); then the
    handler that was there before (submitit's: requeue the job) runs, or without one the run ends
    incomplete. SIGUSR2 goes to the workers only: it would end torchrun itself."""

    def __init__(self, proc: subprocess.Popen):
        self.proc, self.signum = proc, None
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGUSR2, self._forward)

    def _forward(self, signum, frame) -> None:
        import psutil

        self.signum = signum
        log.warning("preempted (%s): the workers checkpoint at the end of their step", signal.Signals(signum).name)
        try:
            workers = psutil.Process(self.proc.pid).children()
        except psutil.NoSuchProcess:
            return
        for worker in workers:
            try:
                worker.send_signal(signum)
            except psutil.NoSuchProcess:
                pass

    def restore(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGUSR2, self.previous)

    def hand_over(self) -> None:
        """Run the handler that was there before (submitit's requeue), now that a checkpoint is saved."""
        if self.signum is not None and callable(self.previous):
            self.previous(self.signum, None)


def _pump(stream, log_file, tails, last) -> None:
    for line in stream:
        sys.stdout.write(line)
        sys.stdout.flush()
        log_file.write(line)
        log_file.flush()
        last.append(line)
        starts = list(_RANK_PREFIX.finditer(line))
        for i, match in enumerate(starts):
            end = starts[i + 1].start() if i + 1 < len(starts) else len(line)
            tails[int(match.group(1))].append(line[match.start():end].rstrip("\n") + "\n")


def _terminate_on_sigterm():
    """Turn SIGTERM (scancel, a timeout) into an exception, so the workers are stopped too. A handler
    that is already there is kept: submitit's logs and ignores the SIGTERM that SLURM sends before
    its SIGUSR2 on a preemption, which must reach the workers for their checkpoint (Preemption)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) not in (
            signal.SIG_DFL, None):
        return None

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    return signal.signal(signal.SIGTERM, handler)


def _stop(proc: subprocess.Popen, grace_seconds: float = 30) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def _failure(returncode: int, output: str, tails: dict[int, deque], log_path: Path) -> WorkerFailure:
    match = _ROOT_CAUSE.search(output)
    if not match:
        tail = "".join(list(output.splitlines(keepends=True))[-40:])
        return WorkerFailure(f"the worker launcher exited with code {returncode}; its last lines:\n{tail}\n"
                             f"all output: {log_path}", None, returncode)
    rank, local_rank, code = (int(g) for g in match.groups())
    why = f" ({signal.Signals(-code).name})" if code < 0 and -code in signal.Signals._value2member_map_ else ""
    lines = "".join(tails.get(local_rank, [])) or "(no lines from it on this node)\n"
    # Ranks that failed on their own (torchrun's SIGTERM to the survivors is not a failure).
    others = sorted({(int(r), int(lr), int(c)) for r, lr, c in _FAILED_RANK.findall(output)
                     if int(r) != rank and int(c) > 0})
    also = "".join(f"; also failed: rank {r} (local rank {lr}) with exit code {c}" for r, lr, c in others)
    for _, other_local, _ in others:  # the real error may be in a rank that torchrun saw second
        lines += "".join(tails.get(other_local, []))
    return WorkerFailure(f"worker rank {rank} (local rank {local_rank}) failed with exit code {code}{why}{also}; "
                         f"the last lines of the failed ranks' logs:\n{lines}all output: {log_path}", rank, code,
                         lines, (code, *(c for _, _, c in others)))


def launch_training(cfg, trainer, deepspeed: Path, tokenizer, run_dir: Path, tracker, metrics: dict) -> Path | None:
    """Train on nproc_per_node x nnodes workers; the saved model's directory (None off node 0).
    The caller hands over the trainer module (it builds the training set here; each worker looks it
    up again) and the DeepSpeed config file. The training set's statistics go into `metrics` (as
    data/<key>), as in a local run."""
    topo = topology(cfg.launcher)
    log.info("workers: %d node(s) x %d, this is node %d, rendezvous %s:%d", topo.nnodes, topo.nproc_per_node,
             topo.node_rank, topo.master_addr, topo.master_port)
    if topo.node_rank == 0:
        # One process prepares the data; the workers on every node load it from the run directory
        # (on other nodes they start only once node 0's launcher is up, after this) and check
        # that they all loaded the same bytes (lw.train.worker.check_same_data).
        metrics.update(prepare_data(cfg, trainer, tokenizer, run_dir))
    command = worker_command(cfg.launcher, topo, run_dir)
    write_launch_files(cfg, run_dir, command, deepspeed, topo.node_rank)
    forwarder = TrainLogForwarder(train_log(run_dir), tracker)
    try:
        run_workers(command, worker_env(cfg), workers_log(run_dir, topo.node_rank),
                    cfg.launcher.log_tail_lines, on_poll=forwarder.poll if topo.node_rank == 0 else None)
    except WorkerFailure as failure:
        raise explain_failure(failure, topo, run_dir) from None
    if topo.node_rank != 0:
        print(f"lw: node {topo.node_rank} of {topo.nnodes}: training done; node 0 evaluates and logs in {run_dir}")
        return None
    saved = model_dir(run_dir)
    if not (saved / "config.json").exists():
        raise RuntimeError(f"the workers exited cleanly but saved no model in {saved}")
    return saved


def prepare_data(cfg, trainer, tokenizer, run_dir: Path) -> dict:
    """The tokenized training set in RUN_DIR/data/tokenized, for every node's workers; its statistics."""
    dataset, stats = trainer.build_dataset(cfg, tokenizer, run_dir)
    tokenized = tokenized_dir(run_dir)
    if tokenized.exists():
        shutil.rmtree(tokenized)
    dataset.save_to_disk(str(tokenized))
    return {f"data/{k}": v for k, v in stats.items()}


def explain_failure(failure: WorkerFailure, topo: Topology, run_dir: Path) -> Exception:
    """What the driver raises for failed workers: a worker's own one-line error (exit status 2),
    a lost node (3: the checkpoints are kept and the same commands resume), or the failure itself."""
    if set(failure.exit_codes) == {EXIT_PREEMPTED}:
        if failure.preemption is not None:
            failure.preemption.hand_over()  # under submitit: requeued, and this process ends here
        return Preempted(f"node {topo.node_rank} of {topo.nnodes}: preempted (SIGUSR2), {last_checkpoint(run_dir)}; "
                         f"rerun the same command to resume from it")
    user = _WORKER_USER_ERROR.search(failure.lines)
    if user and 2 in failure.exit_codes:
        return UserError(user.group(1).strip())
    # Ranks that lost a peer end with a Python error (exit code 1); a rank of this node that was
    # killed (-9) or crashed by itself is this node's own failure, not another node's loss.
    if topo.nnodes > 1 and set(failure.exit_codes) == {1} and _PEER_LOST.search(failure.lines):
        others = [r for r in range(topo.nnodes) if r != topo.node_rank]
        lost = f"node {others[0]}" if len(others) == 1 else f"one of nodes {', '.join(map(str, others))}"
        found = _PEER_LOST.search(failure.lines)
        line_end = failure.lines.find("\n", found.start())
        why = one_line(failure.lines[found.start():line_end if line_end >= 0 else None]).split(". ")[0][:200]
        return NodeLost(f"node {topo.node_rank} of {topo.nnodes} lost {lost} during training (rank {failure.rank}: "
                        f"{why}); {last_checkpoint(run_dir)}; rerun the same command on every node to resume "
                        f"(this node's log: {workers_log(run_dir, topo.node_rank)})")
    return failure


def last_checkpoint(run_dir: Path) -> str:
    from transformers.trainer_utils import get_last_checkpoint

    checkpoints = checkpoint_dir(run_dir)
    found = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    return f"the last checkpoint, {found}, is kept" if found else "no checkpoint was saved yet"


def launch_command(cfg, run_dir: Path) -> str:
    """The exact worker command, for the dry run's plan (a free port is picked now; the run picks its own)."""
    run_dir = run_dir.resolve()
    if cfg.launcher.kind == "local":
        return "(in process: the driver trains itself)"
    if cfg.launcher.kind == "slurm":
        # Known only inside the allocation; each node's driver fills these from SLURM's environment.
        topo = Topology(cfg.launcher.nnodes, "$SLURM_NODEID", cfg.launcher.nproc_per_node,  # type: ignore[arg-type]
                        "<first host of $SLURM_JOB_NODELIST>",
                        cfg.launcher.master_port or "<20000 + $SLURM_JOB_ID % 20000>")  # type: ignore[arg-type]
    else:
        topo = topology(cfg.launcher)
    return shlex.join(worker_command(cfg.launcher, topo, run_dir))


def is_first_node(launcher_cfg) -> bool:
    """Whether this driver evaluates and logs (node 0 of a multi-node job); checked before any work."""
    if launcher_cfg.kind == "slurm":
        return topology(launcher_cfg).node_rank == 0  # fails clearly outside an allocation
    if launcher_cfg.kind == "deepspeed":
        return launcher_cfg.node_rank == 0
    if launcher_cfg.kind != "local":
        raise UserError(f"unknown launcher.kind {launcher_cfg.kind!r}; choose local, deepspeed or slurm")
    return True
