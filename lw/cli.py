"""`lw`: the one entry point. Compose the config, then run the task it names."""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from lw.config import register_configs
from lw.tracking import is_secret_key


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


def refuse_secret_overrides(args: list[str]) -> None:
    """Secrets come from the environment only. Hydra would write an override's value into the run
    name, the run directory's saved config and W&B, so a secret-looking key stops `lw` here,
    before Hydra writes anything."""
    for arg in args:
        key = arg.split("=", 1)[0].lstrip("+~") if "=" in arg and not arg.startswith("-") else ""
        if key and is_secret_key(key.rsplit(".", 1)[-1]):
            sys.exit(f"lw: {key}: secrets are never passed as overrides (they would be written to the run's "
                     f"name, its saved config and W&B). Export the secret as an environment variable and "
                     f"name that variable in the matching *_env setting, e.g. judge.api_key_env=OPENAI_API_KEY.")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def _run(cfg: DictConfig) -> None:
    from lw.pipeline import run  # heavy imports after --help and config errors

    run(cfg)


def main() -> None:
    refuse_secret_overrides(sys.argv[1:])
    _run()
