"""What a run does: one module per task, each declaring `TASK` (lw/tasks/registry.py)."""

from lw.tasks.registry import TASKS, Task, task_of

__all__ = ["TASKS", "Task", "task_of"]
