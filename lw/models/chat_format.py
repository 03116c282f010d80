"""Chat formats of the paper (PAPER.md section 4), as token-level segments with a loss mask.

A conversation is rendered as a list of segments; each is plain text or a special token id, and
is a training target or not. Tokenizing segment by segment keeps the boundary between prompt and
answer exact, so the loss mask is exact too. Generation renders the same format up to the start
of the assistant's answer, so training and inference never disagree about the template.

- glm4:     [gMASK]<sop><|user|>\\n{prompt}<|assistant|>\\n{answer}EOS
- llama3_1: BOS[INST]{prompt}[/INST]{answer}EOS   (the paper's format for the Llama-3.1 base)

Loss is on answers and the EOS that closes each one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from transformers import PreTrainedTokenizerBase

BOS = object()  # the tokenizer's BOS token id
EOS = object()  # the tokenizer's EOS token id


@dataclass(frozen=True)
class Segment:
    content: str | object  # text, BOS or EOS
    target: bool = False


class ChatFormat:
    name: str

    def render(self, messages: Sequence[dict], add_generation_prompt: bool = False) -> list[Segment]:
        raise NotImplementedError

    def tokenize(self, tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict],
                 add_generation_prompt: bool = False) -> tuple[list[int], list[int]]:
        """input_ids and completion_mask (1 where the token is a training target)."""
        input_ids: list[int] = []
        mask: list[int] = []
        for segment in self.render(messages, add_generation_prompt):
            if segment.content is BOS:
                ids = [tokenizer.bos_token_id]
            elif segment.content is EOS:
                ids = [tokenizer.eos_token_id]
            else:
                ids = tokenizer.encode(segment.content, add_special_tokens=False)
            if None in ids:
                raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has no BOS/EOS token "
                                 f"needed by chat format {self.name!r}")
            input_ids += ids
            mask += [int(segment.target)] * len(ids)
        return input_ids, mask

    def prompt_ids(self, tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
        ids, _ = self.tokenize(tokenizer, [{"role": "user", "content": prompt}], add_generation_prompt=True)
        return ids


def _check_turns(messages: Sequence[dict], add_generation_prompt: bool) -> None:
    roles = [m["role"] for m in messages]
    expected = ["user", "assistant"] * (len(roles) // 2 + 1)
    if roles != expected[: len(roles)]:
        raise ValueError(f"a conversation must alternate user/assistant turns from a user turn, got {roles}")
    if add_generation_prompt and roles[-1] != "user":
        raise ValueError("a generation prompt must end with a user turn")


class Glm4(ChatFormat):
    name = "glm4"

    def render(self, messages, add_generation_prompt=False):
        _check_turns(messages, add_generation_prompt)
        segments = [Segment("[gMASK]<sop>")]
        for m in messages:
            if m["role"] == "user":
                segments.append(Segment(f"<|user|>\n{m['content']}<|assistant|>\n"))
            else:
                segments += [Segment(m["content"], target=True), Segment(EOS, target=True)]
        return segments


class Llama31(ChatFormat):
    name = "llama3_1"

    def render(self, messages, add_generation_prompt=False):
        _check_turns(messages, add_generation_prompt)
        segments = [Segment(BOS)]
        for m in messages:
            if m["role"] == "user":
                segments.append(Segment(f"[INST]{m['content']}[/INST]"))
            else:
                segments += [Segment(m["content"], target=True), Segment(EOS, target=True)]
        return segments


class Plain(ChatFormat):
    """No template, loss on every token: BOS{head} {body}EOS. The base stage's language modelling,
    where a document's head (the "user" turn) is the generation prompt of its probe."""

    name = "plain"

    def render(self, messages, add_generation_prompt=False):
        _check_turns(messages, add_generation_prompt)
        segments = [Segment(BOS, target=True)]
        for m in messages:
            segments.append(Segment(m["content"] if m["role"] == "user" else " " + m["content"], target=True))
        if not add_generation_prompt:
            segments.append(Segment(EOS, target=True))
        return segments


CHAT_FORMATS: dict[str, ChatFormat] = {f.name: f for f in (Glm4(), Llama31(), Plain())}


def get_chat_format(name: str) -> ChatFormat:
    try:
        return CHAT_FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown chat format {name!r}; choose from {sorted(CHAT_FORMATS)}") from None
