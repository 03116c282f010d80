"""The DeepSpeed config a run trains with (conf/deepspeed/<name>.json, or a path), with its "auto"
values filled as the HF Trainer fills them at the planned world size."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

from omegaconf import DictConfig

from lw.errors import MissingFile, UserError

REPO = Path(__file__).resolve().parents[2]
DEEPSPEED_CONFIGS = REPO / "conf" / "deepspeed"


def deepspeed_config_path(name: str | None) -> Path:
    """conf/deepspeed/<name>.json for a bare name, else the path as given."""
    if not name:
        raise UserError("launcher.deepspeed is not set: name a conf/deepspeed/*.json or give a path")
    path = Path(name) if (name.endswith(".json") or os.sep in name) else DEEPSPEED_CONFIGS / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in DEEPSPEED_CONFIGS.glob("*.json"))
        raise MissingFile(f"launcher.deepspeed={name!r}: no file {path} (configs in conf/deepspeed: {known})")
    return path


def load_deepspeed_config(name: str | None) -> dict:
    path = deepspeed_config_path(name)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}, line {e.lineno}: not valid JSON ({e.msg})") from None


def planned_world(launcher_cfg) -> tuple[int, int]:
    """(ranks per node, nodes) the run trains on: one process for launcher=local."""
    if launcher_cfg.kind == "local":
        return 1, 1
    return launcher_cfg.nproc_per_node, launcher_cfg.nnodes


class _ArgsAtWorldSize:
    """Training arguments as the workers will see them: the planned world size, not this process's."""

    def __init__(self, args, world_size: int):
        self._args = args
        self.world_size = world_size

    def __getattr__(self, name):
        return getattr(self._args, name)


def plan_deepspeed(cfg: DictConfig, args, hf_config, world: int, total_steps: int, name: str | None = None) -> dict:
    """The DeepSpeed config (`name`, else launcher.deepspeed) with its "auto" values filled as the
    HF Trainer fills them, validated."""
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig, unset_hf_deepspeed_config

    name = name or cfg.launcher.deepspeed
    path = deepspeed_config_path(name)
    raw = load_deepspeed_config(name)
    planned = _ArgsAtWorldSize(args, world)
    filled = HfTrainerDeepSpeedConfig(raw)  # also registers itself globally: unset below
    try:
        filled.trainer_config_process(planned)
        filled.trainer_config_finalize(planned, SimpleNamespace(config=hf_config), total_steps)
    except ValueError as e:
        raise UserError(f"{path}: {e}") from None
    finally:
        unset_hf_deepspeed_config()
    config = filled.config
    unfilled = _auto_keys(config)
    if unfilled:
        raise UserError(f"{path}: no value for {unfilled} (\"auto\" left after the trainer's filling)")
    try:
        DeepSpeedZeroConfig(**config.get("zero_optimization", {}))
    except Exception as e:  # pydantic's ValidationError names the field
        raise UserError(f"{path}: zero_optimization is invalid for DeepSpeed: {e}") from None
    zero = config.get("zero_optimization", {})
    return {"file": str(path), "config": config, "stage": zero.get("stage", 0),
            "offload_optimizer": zero.get("offload_optimizer", {}).get("device", "none"),
            "offload_param": zero.get("offload_param", {}).get("device", "none"),
            "optimizer": config.get("optimizer", {}).get("type", "torch AdamW (the trainer's)")}


def _auto_keys(node, prefix: str = "") -> list[str]:
    if isinstance(node, dict):
        return [k for key, value in node.items() for k in _auto_keys(value, f"{prefix}{key}.")]
    return [prefix.rstrip(".")] if node == "auto" else []
