"""The one table of tasks (name -> module), what a task module declares (`Task`), and the lookup.

A task module exports `TASK = Task(...)`: its `run` and what it needs, each field typed here; the
pipeline (lw/pipeline.py) calls nothing else. Modules are imported only when their task runs (or
when `lw --help` lists them), so `score` and `agentwrite` never import torch.

A new task: a module in lw/tasks/ with its TASK, a line in TASKS, and, when it has settings of its
own, their dataclass in lw/config.py (docs/architecture.md, "Adding a task").
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from lw.errors import UserError

TASKS = {
    "train": "lw.tasks.train",
    "prepare": "lw.tasks.prepare",
    "eval": "lw.tasks.eval",
    "score": "lw.tasks.score",
    "dpo_pairs": "lw.tasks.dpo_pairs",
    "agentwrite": "lw.tasks.agentwrite",
}


@dataclass(frozen=True)
class Task:
    """What a task is to the pipeline, declared once in its module as `TASK`."""

    # run(cfg, run_dir, tracker, tokenizer) -> flat metrics (metrics.json, the W&B summary); None on
    # a node that only runs training workers. Raise lw.errors.UserError for a user's mistake,
    # Incomplete for items failed after their retries.
    run: Callable[..., Optional[dict]]
    summary: str  # one line for `lw --help`: what it does and what it needs
    # It never imports torch: only Python's and NumPy's generators are seeded, so a bad URL fails in seconds.
    uses_torch: bool = True
    needs_tokenizer: bool = False  # the pipeline builds model's tokenizer and passes it (else None)
    # check(cfg, run_dir): the settings, checked at start, before any work, a dry run or W&B.
    check: Optional[Callable[[Any, Path], None]] = None
    # before_tracking(cfg, tokenizer) -> metrics: work that must finish before the W&B run starts.
    before_tracking: Optional[Callable[[Any, Any], dict]] = None
    # dry_run(cfg, run_dir) -> plan: what dry_run=true prints and writes; None refuses dry_run=true.
    dry_run: Optional[Callable[[Any, Path], dict]] = None


def task_of(name: str) -> Task:
    """The declaration of task `name`; an unknown name is a user's mistake naming the valid ones."""
    if name not in TASKS:
        close = difflib.get_close_matches(name, TASKS, n=1)
        hint = f"did you mean task={close[0]}? " if close else ""
        raise UserError(f"task={name} is not a task; {hint}valid tasks: {', '.join(TASKS)}")
    task = getattr(importlib.import_module(TASKS[name]), "TASK", None)
    if not isinstance(task, Task):
        raise TypeError(f"{TASKS[name]} declares no TASK = lw.tasks.registry.Task(...)")
    return task


def task_lines() -> str:
    """The tasks and their summaries, for `lw --help` (imports every task module)."""
    return "\n".join(f"  task={name}: {task_of(name).summary}" for name in TASKS)
