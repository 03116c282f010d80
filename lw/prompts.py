"""Files of prompts that tasks read (`pairs.prompts`, `agentwrite.instructions`, GRPO's
`data=prompts`): per line a `prompt` field, or a messages (role/content) or ShareGPT (from/value)
conversation whose one user turn is the instruction, and an optional `id`."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from lw.errors import MissingFile, UserError
from lw.jsonl import read_json_objects


def read_prompt_file(path: str | Path, setting: str, requirement: str,
                     check_id: Callable[[object, str], str]) -> list[dict]:
    """{"id", "prompt", "row", "where"} per line, ids unique; a bad line fails naming file, line and field.

    `setting` names the file's setting (for a missing file), `requirement` the message for an empty
    prompt ("field '{field}' must hold ...", {field} being prompt or messages), `check_id(raw id,
    where)` the caller's rule for ids.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingFile(f"{setting}: {path} does not exist")
    rows: list[dict] = []
    first_line: dict[str, str] = {}
    for where, row in read_json_objects(path):
        if "prompt" in row:
            prompt, field = row["prompt"], "prompt"
        elif "messages" in row or "conversations" in row:
            prompt, field = user_turn(row, where), "messages"
        else:
            raise UserError(f"{where}: missing field 'prompt' (or 'messages' with one user turn)")
        if not isinstance(prompt, str) or not prompt.strip():
            raise UserError(f"{where}: {requirement.format(field=field)}")
        pid = check_id(row.get("id", len(rows)), where)
        if pid in first_line:
            raise UserError(f"{where}: duplicate id {pid!r} (first at line {first_line[pid]})")
        first_line[pid] = where.rsplit(":", 1)[1]
        rows.append({"id": pid, "prompt": prompt, "row": row, "where": where})
    if not rows:
        raise UserError(f"{path}: no prompts")
    return rows


def user_turn(row: dict, where: str):
    """The content of the single user turn of a messages or ShareGPT row (checked by the caller)."""
    if "messages" in row:
        turns, role, content, user = row["messages"], "role", "content", ("user",)
    else:
        turns, role, content, user = row["conversations"], "from", "value", ("human", "user")
    if not isinstance(turns, list):
        raise UserError(f"{where}: field 'messages' must be a list of turns")
    users = [t for t in turns if isinstance(t, dict) and t.get(role) in user]
    if len(users) != 1:
        raise UserError(f"{where}: field 'messages' must hold exactly one user turn for the instruction, "
                         f"found {len(users)}")
    return users[0].get(content)
