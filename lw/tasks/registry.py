"""The one table of tasks (name -> module) and its lookup; lw/tasks/__init__.py says what a task
module provides."""

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
