"""`lw`: the one entry point. Compose the config, then run the task it names."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from lw.config import register_configs


def run_name(override_dirname: str) -> str:
    """A directory-safe run name from the overrides that change results ("default" without any)."""
    name = re.sub(r"[^A-Za-z0-9._+-]+", "_", override_dirname).strip("_") or "default"
    if len(name) > 120:  # keep paths short; the hash keeps distinct runs distinct
        name = name[:100] + "-" + hashlib.sha1(name.encode()).hexdigest()[:10]
    return name


OmegaConf.register_new_resolver("lw_run_name", run_name, replace=True)
register_configs()

# An absolute path: Hydra would read a relative one as a Python package under `python -m lw`.
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> None:
    from lw.pipeline import run  # heavy imports after --help and config errors

    run(cfg)
