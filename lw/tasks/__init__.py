"""What a run does: one module per task, named in TASKS and imported only when its task runs.

A task module exports

    run(cfg, run_dir, tracker, tokenizer) -> dict | None
        the task: its metrics (None on a node that only runs training workers)

and declares what it needs, each optional:

    USES_TORCH = False      it never imports torch, so only Python's and NumPy's generators are
                            seeded (default True: torch's too, through transformers.set_seed)
    NEEDS_TOKENIZER = True  the pipeline builds model.tokenizer and passes it (default: None passed)
    check(cfg, run_dir)     a settings check run at start, before any work and before a dry run
    before_tracking(cfg, tokenizer) -> dict
                            work that must finish before the W&B run starts (train's base stage);
                            its metrics join the run's
    dry_run(cfg, run_dir) -> dict
                            what `dry_run=true` prints and writes; a task without one refuses dry_run=true

A new task: a module here, a line in TASKS, and its settings node in lw/config.py (docs/architecture.md).
"""

from __future__ import annotations

import difflib
import importlib
from types import ModuleType

from lw.errors import UserError

TASKS = {
    "train": "lw.tasks.train",  # prepare data, train, evaluate the trained model
    "prepare": "lw.tasks.prepare",  # prepare (and pack) the training set only
    "eval": "lw.tasks.eval",  # evaluate model.path (checkpoint, hub id or API model) without training
    "score": "lw.tasks.score",  # score an existing predictions file
    "dpo_pairs": "lw.tasks.dpo_pairs",  # sample answers per prompt, score them, write chosen/rejected pairs
    "agentwrite": "lw.tasks.agentwrite",  # outline-then-write long answers with an API model
}


def task_module(name: str) -> ModuleType:
    """The module of task `name`; an unknown name is a user's mistake naming the valid ones."""
    if name not in TASKS:
        close = difflib.get_close_matches(name, TASKS, n=1)
        hint = f"did you mean task={close[0]}? " if close else ""
        raise UserError(f"task={name} is not a task; {hint}valid tasks: {', '.join(TASKS)}")
    return importlib.import_module(TASKS[name])
