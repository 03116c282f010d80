"""Distributed training launched from the Hydra job (driver.py, topology.py), the dry-run planner
(plan.py) and model FLOPs (flops.py). Nothing is imported here, so the light modules stay light
(experiments/gpu_check.py imports flops.py where omegaconf and Hydra are not installed)."""
