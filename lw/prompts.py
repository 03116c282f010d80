"""The instruction of a prompt row, shared by the files of prompts that tasks read
(`pairs.prompts`, `agentwrite.instructions`): a `prompt` field, or a messages (role/content) or
ShareGPT (from/value) conversation whose one user turn is the instruction."""

from __future__ import annotations

from lw.errors import UserError


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
