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

A new task: a module here, a line in TASKS (registry.py), and its settings node in lw/config.py (docs/architecture.md).
"""

from lw.tasks.registry import TASKS, task_module

__all__ = ["TASKS", "task_module"]
