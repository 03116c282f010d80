"""The toy language of the CPU miniature: every word its data can contain.

A module of its own so that the tiny tokenizer (lw/models/tiny.py), which is trained on this
vocabulary, and the toy data (lw/data/toy.py), which writes in it, need not import each other.
"""

PROMPT_TEMPLATES = (
    "Write a {n}-word note about {topic}.",
    "Write about {topic} in {n} words.",
    "Please write a {n}-word passage on {topic}.",
)

TOPIC_NOUNS = {
    "rivers": ["river", "water", "bank", "stream", "delta", "current", "bridge", "valley"],
    "mountains": ["mountain", "peak", "ridge", "snow", "trail", "summit", "rock", "slope"],
    "cities": ["city", "street", "tower", "market", "square", "crowd", "harbor", "district"],
    "forests": ["forest", "tree", "leaf", "root", "path", "moss", "branch", "deer"],
    "oceans": ["ocean", "wave", "tide", "shore", "reef", "whale", "storm", "sand"],
    "music": ["song", "melody", "rhythm", "drum", "choir", "violin", "chord", "voice"],
    "gardens": ["garden", "flower", "seed", "soil", "rose", "gardener", "fence", "bee"],
    "trains": ["train", "station", "track", "engine", "carriage", "platform", "signal", "ticket"],
}
ADJECTIVES = ["quiet", "old", "bright", "long", "small", "green", "cold", "busy", "deep", "gentle"]
VERBS = ["carries", "shapes", "follows", "holds", "meets", "crosses", "feeds", "shelters", "wakes"]
ADVERBS = ["slowly", "often", "softly", "always", "early", "far", "again", "together"]
LINKS = ["and", "while", "because", "so", "but"]


def vocabulary() -> list[str]:
    """Every word and symbol the toy data can contain (the tiny tokenizer's training corpus)."""
    words = {w for nouns in TOPIC_NOUNS.values() for w in nouns}
    words |= set(TOPIC_NOUNS) | set(ADJECTIVES) | set(VERBS) | set(ADVERBS) | set(LINKS)
    words |= {"the", "a", ".", ",", "-", ":", "topic", "length", "Write", "write", "Please", "note", "about", "in", "words",
              "word", "passage", "on", "an"}
    return sorted(words)
