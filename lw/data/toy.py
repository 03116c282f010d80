"""Toy long-writing data for the CPU miniature.

Each sample asks for an N-word note about a topic; its answer has exactly N words by the
benchmark's counter, so a capped toy set is a faithful analog of the paper's length-capped SFT
data. Samples use LongWriter-6k's messages format.
"""

from __future__ import annotations

import random
from typing import Iterator

from lw.errors import UserError
from lw.toy_words import ADJECTIVES, ADVERBS, LINKS, PROMPT_TEMPLATES, TOPIC_NOUNS, VERBS
from lw.words import count_words

# Round numbers, as people (and real SFT data) ask for lengths; docs/miniature.md found that a tiny
# model learns length control from these and not from uniform lengths.
ROUND_LENGTHS = (10, 12, 15, 20, 25, 30, 40, 50, 60, 75, 100, 120, 150, 200, 250, 300, 400, 500, 600,
                 750, 800, 1000)


def topics() -> list[str]:
    return list(TOPIC_NOUNS)


def _sentence(rng: random.Random, nouns: list[str]) -> list[str]:
    words = ["the", rng.choice(ADJECTIVES), rng.choice(nouns), rng.choice(VERBS), "the",
             rng.choice(nouns)]
    if rng.random() < 0.5:
        words.append(rng.choice(ADVERBS))
    if rng.random() < 0.3:
        words += [rng.choice(LINKS), "the", rng.choice(nouns), rng.choice(VERBS), rng.choice(ADVERBS)]
    return words


def write_answer(rng: random.Random, topic: str, n_words: int) -> str:
    """A text of exactly `n_words` words about `topic`: sentences cut to fit."""
    nouns = TOPIC_NOUNS[topic]
    sentences: list[list[str]] = []
    remaining = n_words
    while remaining > 0:
        sentence = _sentence(rng, nouns)[:remaining]
        sentences.append(sentence)
        remaining -= len(sentence)
    text = " ".join(" ".join(s) + " ." for s in sentences)
    assert count_words(text) == n_words, (text, n_words)
    return text


def make_prompt(rng: random.Random, topic: str, n_words: int) -> str:
    return rng.choice(PROMPT_TEMPLATES).format(n=n_words, topic=topic)


def requested_lengths(min_words: int, max_words: int, round_lengths: bool) -> list[int]:
    if round_lengths:
        lengths = [n for n in ROUND_LENGTHS if min_words <= n <= max_words]
        if not lengths:
            raise UserError(f"no round length lies in [{min_words}, {max_words}]")
        return lengths
    return list(range(min_words, max_words + 1))


def generate(num_samples: int, min_words: int, max_words: int, topic_names: list[str], seed: int,
             round_lengths: bool = True) -> Iterator[dict]:
    """`num_samples` messages-format samples with requested lengths in [min_words, max_words]."""
    unknown = sorted(set(topic_names) - set(TOPIC_NOUNS))
    if unknown:
        raise UserError(f"unknown toy topics {unknown}; choose from {topics()}")
    rng = random.Random(seed)
    lengths = requested_lengths(min_words, max_words, round_lengths)
    for _ in range(num_samples):
        topic = rng.choice(topic_names)
        n = rng.choice(lengths)
        yield {"messages": [
            {"role": "user", "content": make_prompt(rng, topic, n)},
            {"role": "assistant", "content": write_answer(rng, topic, n)},
        ]}


def document_head(topic: str, n_words: int) -> str:
    return f"topic : {topic} . length : {n_words} words ."


def generate_documents(num_documents: int, lengths: list[int], topic_names: list[str], seed: int) -> Iterator[dict]:
    """Documents that state their own length, over the whole length range: pretraining data for a
    base model that can write any length before SFT caps it, as a pretrained LLM can (docs/science.md
    section 1). Each is a head (the "user" turn) and a body, for the `plain` chat format."""
    rng = random.Random(seed)
    for _ in range(num_documents):
        topic, n = rng.choice(topic_names), rng.choice(lengths)
        yield {"messages": [{"role": "user", "content": document_head(topic, n)},
                            {"role": "assistant", "content": write_answer(rng, topic, n)}]}
