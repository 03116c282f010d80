"""Distributed training launched from the Hydra job (the driver), and the dry-run planner."""

from lw.launch.driver import WorkerFailure, is_first_node, launch_training  # noqa: F401
