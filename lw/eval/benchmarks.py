"""Benchmark items: each is {"id", "prompt", "length", "language"} plus optional fields ("type", "subset").

LongBench-Write and LongWrite-Ruler come from the official LongWriter repository: read from
`eval.<name>.data_dir` when set, else downloaded once into the cache at a pinned commit and checked
against their SHA-256, so every run scores against the same files.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from lw.data import toy
from lw.errors import MissingFile, UserError
from lw.eval.download import MIRROR_ENV, download
from lw.jsonl import read_json_objects
from lw.words import language_of, parse_length

log = logging.getLogger(__name__)

OFFICIAL_REPO = "THUDM/LongWriter"
OFFICIAL_COMMIT = "ca6ccd4dec16696d1b8c449b12901c88d4cbf442"
OFFICIAL_FILES = {  # name -> SHA-256 at OFFICIAL_COMMIT, under evaluation/
    "longbench_write.jsonl": "1f6e99497cc24d65894d65e014062f398ba946ebdd254b7f8b339e48d3ab5779",
    "longbench_write_en.jsonl": "87800927761f340e48899e4df5d47fb7211ad4936a63420dbfa979660414259f",
    "longwrite_ruler.jsonl": "a1d4ebf0df0fa1600567691d11c9a52de3037c4a372970ed2e8f52f2889e0a62",
    "judge.txt": "2c423ce88a0eb6a61482f427997a3c03c4bc11fe861102895dcac45926ae1d57",
}
DEFAULT_FILES = {"longbench_write": "longbench_write.jsonl", "longwrite_ruler": "longwrite_ruler.jsonl"}
JUDGE_TEMPLATE = "judge.txt"

# LongBench-Write's subsets by required length l (docs/science.md section 2); the last one is closed.
SUBSETS = (("0-500", 0, 500), ("500-2000", 500, 2000), ("2000-4000", 2000, 4000), ("4000-20000", 4000, 20001))

def subset_of(length: int) -> str | None:
    for name, low, high in SUBSETS:
        if low <= length < high:
            return name
    return None


def official_url(filename: str) -> str:
    mirror = os.environ.get(MIRROR_ENV)
    if mirror:
        return f"{mirror.rstrip('/')}/{filename}"
    return f"https://raw.githubusercontent.com/{OFFICIAL_REPO}/{OFFICIAL_COMMIT}/evaluation/{filename}"


def benchmark_file(bench_cfg, filename: str, cache_dir: str) -> Path:
    """`filename` from `data_dir`, or from the official repository (downloaded on first use)."""
    if bench_cfg.data_dir:
        path = Path(bench_cfg.data_dir).expanduser() / filename
        if not path.exists():
            raise MissingFile(f"{path} does not exist (eval data_dir={bench_cfg.data_dir!r})")
        return path
    if filename not in OFFICIAL_FILES:
        raise UserError(f"{filename!r} is not a file of the official repository "
                         f"({sorted(OFFICIAL_FILES)}); set data_dir to read it from a local folder")
    dest = Path(cache_dir).expanduser() / "benchmarks" / f"longwriter-{OFFICIAL_COMMIT[:10]}" / filename
    return download(official_url(filename), dest, OFFICIAL_FILES[filename],
                    instead=f"or set eval.{bench_cfg.kind}.data_dir=DIR to a folder holding {filename}"
                    + (" (or judge.template=FILE)" if filename == JUDGE_TEMPLATE else ""))


def read_benchmark_jsonl(path: Path) -> list[dict]:
    """Validated items of a LongBench-Write-format file; any bad line fails naming file, line and field."""
    items: list[dict] = []
    first_line: dict[str, str] = {}  # key -> its first line number
    for where, row in read_json_objects(path):
        prompt, length = row.get("prompt"), row.get("length")
        for field, value in (("prompt", prompt), ("length", length)):
            if value is None:
                raise UserError(f"{where}: missing field {field!r}")
        if not isinstance(prompt, str) or not prompt.strip():
            raise UserError(f"{where}: field 'prompt' must be a non-empty string")
        length = parse_length(length, where)
        if prompt in first_line:
            raise UserError(f"{where}: duplicate prompt (first at line {first_line[prompt]}): {prompt[:60]!r}")
        first_line[prompt] = where.rsplit(":", 1)[1]
        items.append({"id": str(len(items)), "prompt": prompt, "length": length,
                      "type": row.get("type"), "language": language_of(prompt)})
    if not items:
        raise UserError(f"{path}: no items")
    return items


def toy_ruler_items(bench_cfg) -> list[dict]:
    """The toy analog of LongWrite-Ruler: each requested length x topic x sample."""
    items = []
    for length in bench_cfg.lengths:
        for topic in bench_cfg.topics:
            for k in range(bench_cfg.samples_per_prompt):
                items.append({"id": f"{length}-{topic}-{k}", "length": int(length), "language": "en",
                              "prompt": toy.PROMPT_TEMPLATES[0].format(n=length, topic=topic)})
    return items


def load_items(bench_cfg, cache_dir: str | None = None) -> list[dict]:
    if bench_cfg.kind == "toy_ruler":
        items = toy_ruler_items(bench_cfg)
    elif bench_cfg.kind == "writingbench_length":
        from lw.eval.writingbench import load_writingbench_items

        return load_writingbench_items(bench_cfg, cache_dir)
    elif bench_cfg.kind in DEFAULT_FILES:
        if cache_dir is None:
            raise UserError(f"benchmark {bench_cfg.kind} needs a cache_dir or data_dir")
        path = benchmark_file(bench_cfg, bench_cfg.file or DEFAULT_FILES[bench_cfg.kind], cache_dir)
        items = read_benchmark_jsonl(path)
        if bench_cfg.kind == "longbench_write":
            for item in items:
                item["subset"] = subset_of(item["length"])
        items = [{**item, "id": f"{item['id']}-{k}"} if bench_cfg.samples_per_prompt > 1 else item
                 for item in items for k in range(bench_cfg.samples_per_prompt)]
    else:
        raise UserError(f"unknown benchmark kind {bench_cfg.kind!r}; "
                         f"choose toy_ruler, {', '.join(DEFAULT_FILES)}, writingbench_length")
    return items[: bench_cfg.limit] if bench_cfg.limit else items


def judge_template(bench_cfg, cache_dir: str) -> str:
    """The benchmark's own judge prompt, with its $INST$ and $RESPONSE$ placeholders."""
    path = benchmark_file(bench_cfg, JUDGE_TEMPLATE, cache_dir)
    text = path.read_text(encoding="utf-8")
    for placeholder in ("$INST$", "$RESPONSE$"):
        if text.count(placeholder) != 1:
            raise UserError(f"{path}: the judge template needs exactly one {placeholder}")
    return text
