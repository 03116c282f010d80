"""`lw`: the one entry point. Compose the config, then run the task it names."""

from __future__ import annotations

import hashlib
import os
import re
import sys
from pathlib import Path

import hydra
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from lw.config import NAMES_FILE, SAME_RESULTS, marked_settings, register_configs
from lw.errors import EXIT_INCOMPLETE, Incomplete, UserMistake, end_program, fail, one_line
from lw.launch.topology import node_suffix
from lw.run_dir import INCOMPLETE_MARK, incomplete_mark
from lw.tracking import is_secret_key

# Settings that name a file or folder (marked in lw/config.py): their value enters run names by its last component.
PATH_SETTINGS = {key.rsplit(".", 1)[-1] for key in marked_settings(NAMES_FILE)}
# Names our own runs give their outputs: a path ending in one keeps the folder above it (runs/NAME/model).
GENERIC_NAMES = {"model", "checkpoints", "data", "final"}


def short_path(value: str) -> str:
    parts = [part for part in value.replace("\\", "/").split("/") if part not in ("", ".")]
    if len(parts) >= 2 and parts[-1] in GENERIC_NAMES:
        return f"{parts[-2]}_{parts[-1]}"
    return parts[-1] if parts else value


def run_name(overrides, excluded=(), task: str = "train") -> str:
    """A directory-safe run name from the overrides that change results ("default" without any).

    `excluded` are the settings that do not (hydra.job.config.override_dirname.exclude_keys); a
    task other than train leads the name, so task=eval and task=dpo_pairs of one model do not share
    a directory; a path setting enters by its last component (data.path=/a/b/long.jsonl: long.jsonl).
    """
    if isinstance(overrides, str):  # Hydra's override_dirname, already joined
        items = [overrides] if overrides else []
    else:
        items = []
        for override in overrides:
            key, sep, value = str(override).partition("=")
            key = key.lstrip("+~")
            if not sep or key in excluded or key.startswith("hydra."):
                continue
            if key.rsplit(".", 1)[-1] in PATH_SETTINGS or ("/" in value and "://" not in value):
                value = short_path(value)
            items.append(f"{key}-{value}")
    task = str(task)
    joined = "+".join(([task] if task and task != "train" else []) + sorted(items))
    name = re.sub(r"[^A-Za-z0-9._+-]+", "_", joined).strip("_") or "default"
    if len(name) > 120:  # keep paths short; the hash keeps distinct runs distinct
        name = name[:100] + "-" + hashlib.sha1(name.encode()).hexdigest()[:10]
    return name


def task_lines() -> str:
    """`lw --help`'s list of tasks, from each task's declaration (imports every task module)."""
    from lw.tasks.registry import task_lines

    return task_lines()


OmegaConf.register_new_resolver("lw_run_name", run_name, replace=True)
# hydra.job.config.override_dirname.exclude_keys: the settings lw/config.py marks as not changing results.
OmegaConf.register_new_resolver("lw_same_results", lambda: marked_settings(SAME_RESULTS), replace=True)
OmegaConf.register_new_resolver("lw_task_lines", task_lines, replace=True)
# Hydra's .hydra/ and log file, apart for each node's driver of a multi-node job (one run directory).
OmegaConf.register_new_resolver("lw_node_suffix", node_suffix, replace=True)
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
            raise UserMistake(f"{key}: secrets are never passed as overrides (they would be written to the run's "
                              f"name, its saved config and W&B); export the secret as an environment variable and "
                              f"name that variable in the matching *_env setting, e.g. judge.api_key_env=OPENAI_API_KEY")


_full_error = False  # the user asked for tracebacks (HYDRA_FULL_ERROR=1); set by main()
_incomplete_jobs: list[str] = []  # a multirun's jobs that ended incomplete: the sweep goes on, lw exits 3
# In an incomplete job's run directory: its one line. Jobs may run in other processes (hydra/launcher=
# submitit_local or submitit_slurm), so the sweep's own process learns of them from these files.


class SweepOutcomes(Callback):
    """After a multirun, in the process that launched it: the jobs that ended incomplete, by name."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        marks = sorted(Path(str(config.hydra.sweep.dir)).glob(f"*/{INCOMPLETE_MARK}"))
        _incomplete_jobs[:] = [mark.read_text().split("\t", 1)[0] for mark in marks]


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def _run(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from lw.pipeline import run  # heavy imports after --help and config errors

    # main() set HYDRA_FULL_ERROR so that Hydra hands composition errors to it; the run's child
    # processes (training workers) must not inherit that, so it is unset while the task runs.
    saved = os.environ.pop("HYDRA_FULL_ERROR", None)
    mark = incomplete_mark(HydraConfig.get().runtime.output_dir)
    mark.unlink(missing_ok=True)  # an earlier attempt's
    try:
        run(cfg)
    except Incomplete as err:
        from hydra.types import RunMode

        if HydraConfig.get().mode != RunMode.MULTIRUN:
            end_run(err, _full_error)
        # One job's failed items (a flaky server) need not stop the other jobs of a sweep.
        print(f"lw: incomplete: {cfg.run_name}: {one_line(err)}", file=sys.stderr)
        mark.write_text(f"{cfg.run_name}\t{one_line(err)}\n")
    except Exception as err:  # noqa: BLE001 (sorted by end_run: one line for the user's, a traceback for bugs)
        # Ended here, as SystemExit, Hydra adds no "Error executing job" line of its own.
        end_run(err, _full_error)
    finally:
        if saved is not None:
            os.environ["HYDRA_FULL_ERROR"] = saved


def hydra_message(err: BaseException) -> str:
    """One line from a Hydra composition error: its message and its OmegaConf cause, without the
    config search path."""
    text = str(err).split("Config search path:")[0]
    cause = err.__cause__
    if cause is not None and str(cause).strip():
        text = f"{text.strip()}: {str(cause).splitlines()[0]}"
    head, _, options = text.partition("Available options in")
    if options:  # "model/nope" not found: the options on one line
        group, _, names = options.partition(":")
        head = f"{head.strip()}; available options in{group}: {', '.join(names.split())}"
    return one_line(head).replace(".;", ";")


def end_run(err: Exception, full_error: bool) -> None:
    """Exit with the status that says what happened: 3 for an incomplete run, 2 and one line for a
    user's mistake (Hydra's composition errors among them), 1 and the traceback for a bug (every
    traceback with HYDRA_FULL_ERROR=1)."""
    from hydra.errors import HydraException
    from omegaconf.errors import MissingMandatoryValue

    if isinstance(err, Incomplete):
        print(f"lw: incomplete: {one_line(err)}", file=sys.stderr)
        sys.exit(EXIT_INCOMPLETE)
    if isinstance(err, (HydraException, MissingMandatoryValue)) and not full_error:
        fail(hydra_message(err) if isinstance(err, HydraException) else str(err))
    end_program(err, "lw", full_error)


def main() -> None:
    """`lw`: a user's mistake ends in one line and exit status 2, an incomplete run in exit status 3,
    a bug in its traceback (exit status 1); HYDRA_FULL_ERROR=1 shows the traceback of every error."""
    global _full_error
    full_error = _full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises composition errors instead of printing its report
    try:
        refuse_secret_overrides(sys.argv[1:])
        _run()
        if _incomplete_jobs:
            raise Incomplete(f"{len(_incomplete_jobs)} job(s) of the sweep have items still failed "
                             f"({', '.join(_incomplete_jobs)}): what finished is kept, and the same command "
                             f"again does only the rest")
    except Exception as err:  # noqa: BLE001 (composition errors; the task's own end in _run)
        end_run(err, full_error)
    finally:
        if not full_error:
            os.environ.pop("HYDRA_FULL_ERROR", None)
