"""A distributed training worker: `python -m lw.train.worker RUN_DIR`, one process per rank.

Started by the driver (lw.launch.driver) under torchrun or accelerate, never by hand through
Hydra: it loads the config its node's driver resolved (RUN_DIR/launch/config.yaml, on node R > 0
RUN_DIR/launch/nodeR/config.yaml) and the data node 0's driver prepared (RUN_DIR/data/tokenized,
checked to be the same bytes on every node), trains with DeepSpeed, checkpoints into
RUN_DIR/checkpoints (resuming from the last one) and saves the model into RUN_DIR/model.
Rank 0 appends the trainer's logs to RUN_DIR/launch/train_log.jsonl for the driver to forward.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import signal
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch.distributed.elastic.multiprocessing.errors import record
from transformers import TrainerCallback

from lw.errors import MissingFile, UserError, UserMistake, one_line
from lw.launch.topology import EXIT_PREEMPTED
from lw.run_dir import checkpoint_dir, launch_config_file, launch_deepspeed_file, tokenized_dir, train_log

log = logging.getLogger("lw.train.worker")

# Fault injection for the resume tests: the named rank exits with code 3 right after the
# checkpoint of this step is complete on every rank, as a crashed or preempted job would; with
# LW_FAULT_ACTION=wait it stops there instead until it is killed (a node lost mid-run).
FAULT_STEP_ENV = "LW_FAULT_AFTER_CHECKPOINT_STEP"
FAULT_RANK_ENV = "LW_FAULT_RANK"
FAULT_ACTION_ENV = "LW_FAULT_ACTION"


def node_rank() -> int:
    """This worker's node (torchrun and accelerate give every worker its node as GROUP_RANK)."""
    return int(os.environ.get("GROUP_RANK", "0"))


def load_run_config(run_dir: Path) -> DictConfig:
    """The driver's resolved config, checked against the typed schema again."""
    from lw.config import lw_schema

    path = launch_config_file(run_dir, node_rank())
    if not path.exists():
        raise MissingFile(f"{path} does not exist: the driver (`lw launcher=deepspeed ...`) writes it")
    return OmegaConf.merge(lw_schema(), OmegaConf.load(path))


def skip_cpu_shm_comm() -> None:
    """Keep DeepSpeed from compiling its shared-memory all-reduce on CPU-only machines.

    On the CPU accelerator DeepSpeed builds `deepspeed_shm_comm` (minutes on 2 cores) when the
    process group starts, only to speed up CPU all-reduce; gloo does that job for CPU runs. The op
    is skipped when DeepSpeed's compatibility table says no, and that table is one dict that
    DeepSpeed reads before building (edits to it persist, deepspeed/ops/__init__.py).
    """
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def distributed_cfg(cfg: DictConfig, run_dir: Path, backend: str) -> DictConfig:
    """The config with the trainer arguments that DeepSpeed training needs."""
    cfg = copy.deepcopy(cfg)
    args = cfg.trainer.args
    args.deepspeed = str(launch_deepspeed_file(run_dir, node_rank()))
    args.setdefault("ddp_backend", backend)
    args.ddp_timeout = cfg.launcher.collective_timeout_s
    if not torch.cuda.is_available():
        # Without it accelerate and DeepSpeed disagree on the world size (docs/engineering.md).
        args.setdefault("use_cpu", True)
    return cfg


class TrainLogFile(TrainerCallback):
    """Rank 0 appends every trainer log to a JSONL file that the driver forwards to W&B."""

    def __init__(self, path: Path):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": state.global_step, **logs}) + "\n")


class CheckpointOnPreemption(TrainerCallback):
    """SIGUSR2 (SLURM's warning before a time limit or a preemption, forwarded by the driver): every
    rank saves a checkpoint at the end of the step it is in and exits with EXIT_PREEMPTED, without
    saving a final model; the driver then has the job requeued, and the requeued run resumes from it.
    The ranks agree on the step by a one-number all-reduce per step, as the signal may reach them
    at different steps (a checkpoint is a collective)."""

    def __init__(self):
        self.signalled = False
        self.stopping = False
        signal.signal(signal.SIGUSR2, self._handle)

    def _handle(self, signum, frame):
        self.signalled = True

    def on_step_end(self, args, state, control, **kwargs):
        flag = torch.tensor([1.0 if self.signalled else 0.0], device=args.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if flag.item() > 0:
            self.stopping = control.should_save = control.should_training_stop = True

    def on_save(self, args, state, control, **kwargs):
        if self.stopping:
            torch.distributed.barrier()  # every rank is done writing the checkpoint
            print(f"preempted: checkpoint-{state.global_step} saved; exiting to be requeued", flush=True)
            sys.exit(EXIT_PREEMPTED)


class FaultAfterCheckpoint(TrainerCallback):
    def __init__(self, step: int, rank: int, preemption: CheckpointOnPreemption):
        self.step, self.rank, self.preemption = step, rank, preemption

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            torch.distributed.barrier()  # every rank is done writing the checkpoint
            if int(os.environ["RANK"]) == self.rank:
                action = os.environ.get(FAULT_ACTION_ENV, "exit")
                print(f"fault injection: rank {self.rank} {action}s after checkpoint {self.step}", flush=True)
                # "stall": hold this step until the job is preempted (SIGUSR2), so it always comes mid-run.
                while action == "wait" or (action == "stall" and not self.preemption.signalled):
                    time.sleep(0.1)
                if action == "exit":
                    os._exit(3)


def callbacks(run_dir: Path) -> list[TrainerCallback]:
    preemption = CheckpointOnPreemption()
    found: list[TrainerCallback] = [TrainLogFile(train_log(run_dir)), preemption]  # rank 0's
    if os.environ.get(FAULT_STEP_ENV):
        found.append(FaultAfterCheckpoint(int(os.environ[FAULT_STEP_ENV]), int(os.environ.get(FAULT_RANK_ENV, "0")),
                                          preemption))
    return found


def train(run_dir: Path) -> Path:
    import deepspeed
    from datasets import load_from_disk
    from transformers import set_seed

    from lw.launch.topology import single_process_env
    from lw.models import build_model, build_tokenizer
    from lw.train.registry import trainer_for

    cfg = load_run_config(run_dir)
    single_process_env()
    backend = cfg.launcher.backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))  # before anything allocates on cuda:0
    else:
        skip_cpu_shm_comm()
    # The process group must exist before the model is built under ZeRO-3 (zero.Init partitions
    # parameters as they are created); without it the world size is wrong (docs/engineering.md).
    # A collective that waits longer than launcher.collective_timeout_s fails the rank (gloo's and
    # NCCL's default is 30 minutes): how long a node that vanished silently can hang the others.
    deepspeed.init_distributed(dist_backend=backend, timeout=timedelta(seconds=cfg.launcher.collective_timeout_s))
    set_seed(cfg.seed)
    cfg = distributed_cfg(cfg, run_dir, backend)
    trainer = trainer_for(cfg)
    # Arguments first, alive while the model is built: their DeepSpeed config is what makes
    # from_pretrained/from_config build the model under zero.Init.
    args = trainer.training_args(cfg, checkpoint_dir(run_dir), "none")
    tokenizer = build_tokenizer(cfg.model, cfg.cache_dir)
    dataset = load_from_disk(str(check_same_data(tokenized_dir(run_dir))))
    # Built with the attention implementation for training on this rank's device (packs on a GPU:
    # one whose cost follows the samples), not the driver's.
    model = build_model(cfg.model, tokenizer, path=cfg.trainer.init_from, seed=cfg.seed, cache_dir=cfg.cache_dir,
                        packing="seq_lengths" in dataset.column_names, training=True)
    # Workers report to nothing: the driver holds the W&B run and forwards rank 0's logs.
    log.info("ZeRO stage %s, world size %d", args.hf_deepspeed_config.get_value("zero_optimization.stage"),
             args.world_size)
    return trainer.train(cfg, model, tokenizer, dataset, run_dir, "none", callbacks=callbacks(run_dir))


def data_digest(path: Path) -> str:
    """SHA-256 over the prepared dataset's files (names and bytes)."""
    if not (path / "dataset_info.json").exists():
        raise MissingFile(f"node {os.environ.get('GROUP_RANK', '0')} finds no prepared data in {path}: node 0's driver "
                          f"writes it there, and every node must see node 0's run directory (one shared folder at "
                          f"the same path on every node; docs/engineering.md, \"Several nodes\")")
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def check_same_data(path: Path) -> Path:
    """Every node trains on node 0's data: each node's first rank hashes what it sees, and a node
    whose bytes differ (a stale copy on a disk that is not shared) stops every rank in one line."""
    mine = (os.environ.get("GROUP_RANK", "0"), data_digest(path)) if os.environ.get("LOCAL_RANK", "0") == "0" else None
    seen = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(seen, mine)
    digests = dict(item for item in seen if item is not None)
    reference = digests.get("0")
    for node, digest in sorted(digests.items()):
        if digest != reference:
            raise UserError(f"node {node} sees other prepared data in {path} than node 0 (sha256 {digest[:12]} vs "
                            f"{reference[:12]}): every node must use node 0's run directory (one shared folder at the "
                            f"same path on every node; docs/engineering.md, \"Several nodes\")")
    return path


@record  # a failing rank's traceback goes into torchrun's failure summary
def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise SystemExit("usage: python -m lw.train.worker RUN_DIR")
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(level=logging.INFO if rank == "0" else logging.WARNING,
                        format=f"%(asctime)s rank{rank} %(name)s: %(message)s")
    try:
        model_dir = train(Path(argv[0]).resolve())
    except UserMistake as err:  # the driver turns this line into its own `lw: error: ...` (exit status 2)
        print(f"lw: error: {one_line(err)}", file=sys.stderr, flush=True)
        sys.exit(2)
    log.info("model saved in %s", model_dir)


if __name__ == "__main__":
    main()
