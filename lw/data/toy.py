"""Toy long-writing data for the CPU miniature.

Each sample asks for an N-word note about a topic; its answer has exactly N words by the
benchmark's counter, so a capped toy set is a faithful analog of the paper's length-capped SFT
data. Samples use LongWriter-6k's messages format.
"""

from __future__ import annotations

import random
from typing import Iterator

from lw.words import count_words

# Round numbers, as people (and real SFT data) ask for lengths; MINIATURE.md found that a tiny
# model learns length control from these and not from uniform lengths.
ROUND_LENGTHS = (10, 12, 15, 20, 25, 30, 40, 50, 60, 75, 100, 120, 150, 200, 250, 300, 400, 500, 600,
                 750, 800, 1000)

PROMPT_TEMPLATES = (
    "Write a {n}-word note about {topic}.",
    "Write about {topic} in {n} words.",
    "Please write a {n}-word passage on {topic}.",
)

_TOPIC_NOUNS = {
    "rivers": ["river", "water", "bank", "stream", "delta", "current", "bridge", "valley"],
    "mountains": ["mountain", "peak", "ridge", "snow", "trail", "summit", "rock", "slope"],
    "cities": ["city", "street", "tower", "market", "square", "crowd", "harbor", "district"],
    "forests": ["forest", "tree", "leaf", "root", "path", "moss", "branch", "deer"],
    "oceans": ["ocean", "wave", "tide", "shore", "reef", "whale", "storm", "sand"],
    "music": ["song", "melody", "rhythm", "drum", "choir", "violin", "chord", "voice"],
    "gardens": ["garden", "flower", "seed", "soil", "rose", "gardener", "fence", "bee"],
    "trains": ["train", "station", "track", "engine", "carriage", "platform", "signal", "ticket"],
}
_ADJECTIVES = ["quiet", "old", "bright", "long", "small", "green", "cold", "busy", "deep", "gentle"]
_VERBS = ["carries", "shapes", "follows", "holds", "meets", "crosses", "feeds", "shelters", "wakes"]
_ADVERBS = ["slowly", "often", "softly", "always", "early", "far", "again", "together"]
_LINKS = ["and", "while", "because", "so", "but"]


def topics() -> list[str]:
    return list(_TOPIC_NOUNS)


def vocabulary() -> list[str]:
    """Every word and symbol the toy data can contain (the tiny tokenizer's training corpus)."""
    words = {w for nouns in _TOPIC_NOUNS.values() for w in nouns}
    words |= set(_TOPIC_NOUNS) | set(_ADJECTIVES) | set(_VERBS) | set(_ADVERBS) | set(_LINKS)
    words |= {"the", "a", ".", ",", "-", ":", "topic", "length", "Write", "write", "Please", "note", "about", "in", "words",
              "word", "passage", "on", "an"}
    return sorted(words)


def _sentence(rng: random.Random, nouns: list[str]) -> list[str]:
    words = ["the", rng.choice(_ADJECTIVES), rng.choice(nouns), rng.choice(_VERBS), "the",
             rng.choice(nouns)]
    if rng.random() < 0.5:
        words.append(rng.choice(_ADVERBS))
    if rng.random() < 0.3:
        words += [rng.choice(_LINKS), "the", rng.choice(nouns), rng.choice(_VERBS), rng.choice(_ADVERBS)]
    return words


def write_answer(rng: random.Random, topic: str, n_words: int) -> str:
    """A text of exactly `n_words` words about `topic`: sentences cut to fit."""
    nouns = _TOPIC_NOUNS[topic]
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
            raise ValueError(f"no round length lies in [{min_words}, {max_words}]")
        return lengths
    return list(range(min_words, max_words + 1))


def generate(num_samples: int, min_words: int, max_words: int, topic_names: list[str], seed: int,
             round_lengths: bool = True) -> Iterator[dict]:
    """`num_samples` messages-format samples with requested lengths in [min_words, max_words]."""
    unknown = sorted(set(topic_names) - set(_TOPIC_NOUNS))
    if unknown:
        raise ValueError(f"unknown toy topics {unknown}; choose from {topics()}")
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
    base model that can write any length before SFT caps it, as a pretrained LLM can (PAPER.md
    section 1). Each is a head (the "user" turn) and a body, for the `plain` chat format."""
    rng = random.Random(seed)
    for _ in range(num_documents):
        topic, n = rng.choice(topic_names), rng.choice(lengths)
        yield {"messages": [{"role": "user", "content": document_head(topic, n)},
                            {"role": "assistant", "content": write_answer(rng, topic, n)}]}
