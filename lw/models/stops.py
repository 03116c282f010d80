"""Where generation stops: the one place that turns a model's end-of-turn tokens into token ids.

A chat model ends its turn with more than its tokenizer's EOS: GLM-4 chat checkpoints write
`<|user|>` (or `<|observation|>`) where the next turn would begin, Llama-3.1-Instruct writes
`<|eot_id|>`. Stopping on the EOS alone lets such a model write on to max_new_tokens. The stop set
is the union of the ids the checkpoint's generation_config lists, the tokenizer's EOS, the chat
format's end-of-turn tokens the tokenizer has, and `model.stop_tokens`, which must all exist.
"""

from __future__ import annotations

from typing import Iterable

from lw.errors import UserError


def token_id(tokenizer, token: str) -> int | None:
    """`token`'s id if the tokenizer has it as one token, else None."""
    vocab = tokenizer.get_vocab()
    if token in vocab:
        return vocab[token]
    get_command = getattr(tokenizer, "get_command", None)  # THUDM's ChatGLM4Tokenizer keeps its specials apart
    if get_command is not None:
        try:
            return int(get_command(token))
        except (AssertionError, KeyError, TypeError, ValueError):
            return None
    return None


def _ids(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


def stop_token_ids(tokenizer, stop_tokens: Iterable[str] = (), chat_format=None, generation_config=None) -> list[int]:
    """The sorted ids generation stops on; a configured stop token the tokenizer lacks is the user's mistake."""
    ids = set(_ids(getattr(generation_config, "eos_token_id", None))) | set(_ids(tokenizer.eos_token_id))
    for token in getattr(chat_format, "stop_tokens", ()):
        found = token_id(tokenizer, token)
        if found is not None:  # the tiny word-level tokenizer has no <|observation|>, and needs none
            ids.add(found)
    for token in stop_tokens:
        found = token_id(tokenizer, token)
        if found is None:
            raise UserError(f"model.stop_tokens: {token!r} is not a token of the tokenizer of "
                            f"{tokenizer.name_or_path or 'this model'!r}; list only the model's own end-of-turn "
                            f"tokens (e.g. <|user|> for GLM-4 chat, <|eot_id|> for Llama-3.1-Instruct)")
        ids.add(found)
    return sorted(ids)


def strip_end_of_turn(text: str, markers: Iterable[str]) -> str:
    """`text` without the end-of-turn markers (and white space) it ends with."""
    markers = [m for m in markers if m]
    text = text.strip()
    while True:
        marker = next((m for m in markers if text.endswith(m)), None)
        if marker is None:
            return text
        text = text[: -len(marker)].rstrip()
