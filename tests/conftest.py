import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data" / "longwriter"


@pytest.fixture(autouse=True, scope="session")
def _offline_environment(tmp_path_factory):
    """No test reaches the network or writes outside its temporary folders."""
    home = tmp_path_factory.mktemp("home")
    os.environ.update({
        "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        "WANDB_DIR": str(home / "wandb"), "WANDB_CACHE_DIR": str(home / "wandb-cache"),
        "WANDB_CONFIG_DIR": str(home / "wandb-config"), "WANDB_DATA_DIR": str(home / "wandb-data"),
        "HF_HOME": str(home / "hf"), "MPLCONFIGDIR": str(home / "mpl"),
        "LW_CACHE": os.environ.get("LW_TEST_CACHE", str(home / "lw-cache")),
    })
    for key in ("WANDB_API_KEY", "WANDB_MODE", "OPENAI_API_KEY"):
        os.environ.pop(key, None)
    yield


def compose_lw(*overrides: str):
    """The composed config, as `lw` composes it, with ${hydra:...} resolvable."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from lw.cli import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def run_lw(*overrides: str, cwd: Path, timeout: int = 300, check: bool = True) -> subprocess.CompletedProcess:
    """`python -m lw` in a subprocess, as a user runs it."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2"}
    result = subprocess.run([sys.executable, "-m", "lw", *overrides], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"lw {' '.join(overrides)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n"
                             f"{result.stderr[-8000:]}")
    return result
