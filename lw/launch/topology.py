"""Where the workers run: nodes, this node's rank, the rendezvous address, the world size.

From the config for `launcher=deepspeed`; from the allocation for `launcher=slurm`, where every
node's driver must reach the same answer without talking to the others.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from lw.errors import UserError

EXIT_PREEMPTED = 75  # a worker's exit status after its preemption checkpoint (EX_TEMPFAIL: try again)


@dataclass(frozen=True)
class Topology:
    nnodes: int
    node_rank: int
    nproc_per_node: int
    master_addr: str
    master_port: int

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def single_process_env() -> None:
    """Without a launcher, DeepSpeed looks for MPI; one process is rank 0 of a world of 1."""
    if "RANK" in os.environ:
        return
    os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())})


def node_suffix(kind: str, node_rank) -> str:
    """"" on node 0, "-nodeR" elsewhere: keeps Hydra's .hydra/ and log file apart per node's driver.
    Under SLURM the node rank is the allocation's (SLURM_NODEID), known before composition ends."""
    rank = int(os.environ.get("SLURM_NODEID", 0)) if kind == "slurm" else int(node_rank)
    return "" if rank == 0 else f"-node{rank}"


def slurm_port(job_id: str) -> int:
    """A port every node of a job derives alike: distinct jobs sharing a node rarely collide."""
    digits = "".join(c for c in job_id if c.isdigit()) or "0"
    return 20000 + int(digits) % 20000


def topology(launcher_cfg) -> Topology:
    kind = launcher_cfg.kind
    if launcher_cfg.nproc_per_node < 1:
        raise UserError(f"launcher.nproc_per_node must be >= 1, got {launcher_cfg.nproc_per_node}")
    if kind == "slurm":
        return _slurm_topology(launcher_cfg)
    if kind != "deepspeed":
        raise UserError(f"launcher.kind={kind!r} starts no workers (choose deepspeed or slurm)")
    nnodes, node_rank = launcher_cfg.nnodes, launcher_cfg.node_rank
    if not 0 <= node_rank < nnodes:
        raise UserError(f"launcher.node_rank={node_rank} is outside [0, launcher.nnodes={nnodes})")
    port = launcher_cfg.master_port
    if port is None:
        if nnodes > 1:
            raise UserError("launcher.nnodes > 1 needs a fixed launcher.master_port that every node uses")
        port = free_port()
    return Topology(nnodes, node_rank, launcher_cfg.nproc_per_node, launcher_cfg.master_addr, int(port))


def _slurm_topology(launcher_cfg) -> Topology:
    if "SLURM_JOB_ID" not in os.environ:
        raise UserError(
            "launcher=slurm runs inside a SLURM allocation: submit with `lw -m launcher=slurm ...` "
            "(Hydra's submitit launcher), or run `srun --ntasks-per-node=1 lw launcher=slurm ...` in one")
    from submitit.slurm.slurm import SlurmJobEnvironment

    job = SlurmJobEnvironment()  # SLURM_JOB_NUM_NODES, SLURM_NODEID, SLURM_JOB_NODELIST (expanded)
    nnodes, node_rank, hosts, job_id = job.num_nodes, job.node, job.hostnames, job.job_id
    if nnodes != launcher_cfg.nnodes:
        raise UserError(f"the allocation has {nnodes} nodes but launcher.nnodes={launcher_cfg.nnodes}")
    port = launcher_cfg.master_port or slurm_port(job_id)
    return Topology(nnodes, node_rank, launcher_cfg.nproc_per_node, hosts[0], int(port))
