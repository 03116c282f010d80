"""Helpers the tests share: the composed config, `python -m lw` as a user runs it, a tiny
checkpoint, where the official benchmark files are. Fixtures and hooks stay in conftest.py;
tests import these with `from helpers import ...` (pytest puts tests/ on sys.path)."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Where the official benchmark files may be, in order, read when the tests are collected, before
# conftest's session fixture replaces LW_CACHE: $LW_BENCH_DIR, ../shared beside the repository
# (developers and CI), and the user's own download cache (where `lw` puts them on first use,
# lw.eval.benchmarks.benchmark_file).
_USER_BENCH_DIR = os.environ.get("LW_BENCH_DIR") or None
_USER_WRITINGBENCH_DIR = os.environ.get("LW_WRITINGBENCH_DIR") or None  # WritingBench's length subset, likewise
_USER_CACHE = Path(os.environ.get("LW_CACHE") or Path.home() / ".cache" / "lw").expanduser()


def official_dirs() -> list[Path]:
    from lw.eval.benchmarks import OFFICIAL_COMMIT

    dirs = [REPO.parent / "shared" / "data" / "longwriter", _USER_CACHE / "benchmarks" / f"longwriter-{OFFICIAL_COMMIT[:10]}"]
    return ([Path(_USER_BENCH_DIR).expanduser()] if _USER_BENCH_DIR else []) + dirs


def find_official_dir() -> Path | None:
    """The first of official_dirs() holding every official file, or None."""
    from lw.eval.benchmarks import OFFICIAL_FILES

    return next((d for d in official_dirs() if all((d / n).is_file() for n in OFFICIAL_FILES)), None)


def writingbench_dirs() -> list[Path]:
    from lw.eval.writingbench import COMMIT

    dirs = [REPO.parent / "shared" / "data" / "writingbench", _USER_CACHE / "benchmarks" / f"writingbench-{COMMIT[:10]}"]
    return ([Path(_USER_WRITINGBENCH_DIR).expanduser()] if _USER_WRITINGBENCH_DIR else []) + dirs


def find_writingbench_dir() -> Path | None:
    """The first of writingbench_dirs() holding WritingBench's length-subset files, or None."""
    from lw.eval.writingbench import FILES

    return next((d for d in writingbench_dirs() if all((d / n).is_file() for n in FILES)), None)


def compose_lw(*overrides: str):
    """The composed config, as `lw` composes it, with ${hydra:...} resolvable."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from lw.cli import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def run_lw(*overrides: str, cwd: Path, timeout: int = 300, check: bool = True,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m lw` in a subprocess, as a user runs it; `env` adds to the test's environment."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2", **(env or {})}
    result = subprocess.run([sys.executable, "-m", "lw", *overrides], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"lw {' '.join(overrides)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n"
                             f"{result.stderr[-8000:]}")
    return result


def run_task(task, cfg, run_dir: Path, tracker, tokenizer=None):
    """A task's settings check, then its run, as lw/pipeline.py calls them (without W&B or metrics.json)."""
    if task.check is not None:
        task.check(cfg, run_dir)
    return task.run(cfg, run_dir, tracker, tokenizer)


def save_tiny_checkpoint(path: Path, **generation) -> Path:
    """A random-init tiny model and its tokenizer saved as a checkpoint (what model.path points at
    after SFT); `generation` sets its generation_config (e.g. min_new_tokens)."""
    from lw.models import build_model, build_tokenizer

    cfg = compose_lw()
    tokenizer = build_tokenizer(cfg.model, cfg.cache_dir)
    model = build_model(cfg.model, tokenizer, seed=0)
    for key, value in generation.items():
        setattr(model.generation_config, key, value)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def training_plan(cfg, run_dir: Path) -> dict:
    """The plan task=train's dry run builds, from the trainer and launch command it hands the planner."""
    from lw.launch.driver import launch_command
    from lw.plan.training import build_plan
    from lw.train.registry import trainer_for

    return build_plan(cfg, trainer_for(cfg), launch_command(cfg, run_dir))
