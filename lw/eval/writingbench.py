"""WritingBench's length-requirement subset (X-PLUG/WritingBench, Apache-2.0; docs/science.md,
"WritingBench's length subset"): its files, its judge's prompts, and its official aggregation.

The subset's queries (`length_subset.jsonl`: index, domain1, domain2, query, five criteria) and the
criteria about the length requirement (`length_subset_C.jsonl`), and the judge's system prompt and
template (`prompt.py`), are read from `eval.<name>.data_dir` when set, else downloaded once at a
pinned commit and checked against their SHA-256. prompt.py is read as data: parsed with `ast`,
never imported or executed.
"""

from __future__ import annotations

import ast
import logging
import os
import re
import statistics
import string
from collections import defaultdict
from pathlib import Path

from lw.errors import MissingFile, UserError
from lw.jsonl import read_json_objects
from lw.words import language_of

log = logging.getLogger(__name__)

KIND = "writingbench_length"
REPO = "X-PLUG/WritingBench"
COMMIT = "ae2d5176449b7b769815482641d35926f26793eb"
FILES = {  # name -> (path in the repository, SHA-256 at COMMIT)
    "length_subset.jsonl": ("benchmark_query/requirement/length/length_subset.jsonl",
                            "5f12e5c85f8298f53045bfe2a37a3a37d5c04e3d6ef33b68b023478444ac85ab"),
    "length_subset_C.jsonl": ("benchmark_query/requirement/length/length_subset_C.jsonl",
                              "c993517a96ec013e1551319fa95ed250fa9fa8fa4870662c75dd16a8fee66521"),
    "prompt.py": ("prompt.py", "c5bf21f28d4b4e54b682236cbe815831f3e362ff9b4f3e8c7c10467c491ecad1"),
}
QUERIES, LENGTH_CRITERIA, PROMPTS = FILES
PLACEHOLDERS = {"query", "response", "criteria"}
# The official judge scores the text after this marker, when a response has one (evaluate_benchmark.py line 12).
THINK_END = "</think>\n\n"


def writingbench_file(bench_cfg, filename: str, cache_dir: str) -> Path:
    """`filename` from `data_dir`, or from the pinned commit (downloaded on first use, SHA-256 checked)."""
    from lw.eval.download import MIRROR_ENV, download

    if bench_cfg.data_dir:
        path = Path(bench_cfg.data_dir).expanduser() / filename
        if not path.is_file():
            raise MissingFile(f"{path} does not exist (eval.{KIND}.data_dir={bench_cfg.data_dir!r} must hold "
                              f"{', '.join(FILES)})")
        return path
    repo_path, sha256 = FILES[filename]
    mirror = os.environ.get(MIRROR_ENV)
    url = (f"{mirror.rstrip('/')}/{filename}" if mirror
           else f"https://raw.githubusercontent.com/{REPO}/{COMMIT}/{repo_path}")
    dest = Path(cache_dir).expanduser() / "benchmarks" / f"writingbench-{COMMIT[:10]}" / filename
    return download(url, dest, sha256, instead=f"or set eval.<name>.data_dir=DIR to a folder holding {filename}")


def _criteria(row: dict, where: str) -> list[dict]:
    checklist = row.get("checklist")
    if not isinstance(checklist, list) or not checklist:
        raise UserError(f"{where}: field 'checklist' must be a non-empty list of criteria")
    names = []
    for criterion in checklist:
        if not isinstance(criterion, dict) or not isinstance(criterion.get("name"), str):
            raise UserError(f"{where}: field 'checklist': every criterion needs a string 'name'")
        if criterion["name"] in names:
            raise UserError(f"{where}: field 'checklist': criterion {criterion['name']!r} appears twice")
        names.append(criterion["name"])
    return checklist


def read_queries(path: Path) -> list[dict]:
    """The subset's queries as benchmark items; a bad line fails naming file, line and field."""
    items, seen = [], set()
    for where, row in read_json_objects(path):
        index, query = row.get("index"), row.get("query")
        if isinstance(index, bool) or not isinstance(index, (int, str)) or str(index) in seen:
            raise UserError(f"{where}: field 'index' must be a unique integer or string, got {index!r}")
        if not isinstance(query, str) or not query.strip():
            raise UserError(f"{where}: field 'query' must be a non-empty string")
        seen.add(str(index))
        items.append({"id": str(index), "prompt": query, "language": language_of(query),
                      "domain1": str(row.get("domain1")), "domain2": str(row.get("domain2")),
                      "criteria": _criteria(row, where)})
    if not items:
        raise UserError(f"{path}: no queries")
    return items


def attach_length_criteria(items: list[dict], path: Path) -> None:
    """Each item's `length_criteria`: the names `length_subset_C.jsonl` lists for its query, each one
    of the query's own criteria."""
    by_id = {item["id"]: item for item in items}
    for where, row in read_json_objects(path):
        item = by_id.get(str(row.get("index")))
        if item is None:
            raise UserError(f"{where}: field 'index' {row.get('index')!r} is not a query of {QUERIES}")
        names = [c["name"] for c in _criteria(row, where)]
        unknown = [n for n in names if n not in {c["name"] for c in item["criteria"]}]
        if unknown:
            raise UserError(f"{where}: field 'checklist': {unknown} are not criteria of query {item['id']} in {QUERIES}")
        item["length_criteria"] = names
    missing = [item["id"] for item in items if "length_criteria" not in item]
    if missing:
        raise UserError(f"{path}: no length criteria for the queries {missing[:5]}{' ...' if len(missing) > 5 else ''}")


def load_writingbench_items(bench_cfg, cache_dir: str) -> list[dict]:
    if bench_cfg.samples_per_prompt != 1:
        raise UserError(f"eval.<name>.samples_per_prompt: {KIND} samples one response per query (official), "
                        f"got {bench_cfg.samples_per_prompt}")
    items = read_queries(writingbench_file(bench_cfg, bench_cfg.file or QUERIES, cache_dir))
    attach_length_criteria(items, writingbench_file(bench_cfg, LENGTH_CRITERIA, cache_dir))
    return items[: bench_cfg.limit] if bench_cfg.limit else items


def read_responses(path: str | Path, items: list[dict]) -> list[dict]:
    """The queries answered in a responses JSONL (the official `{"index", "response"}`, or `id` for
    `index`), each with its response; a bad line fails naming file, line and field."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingFile(f"score.predictions: {path} does not exist")
    by_id, rows, first_line = {item["id"]: item for item in items}, [], {}
    for where, row in read_json_objects(path):
        key = str(row.get("index", row.get("id")))
        if key not in by_id:
            raise UserError(f"{where}: field 'index' {key!r} is not a query of {QUERIES}")
        if key in first_line:
            raise UserError(f"{where}: duplicate index {key} (first at line {first_line[key]})")
        if not isinstance(row.get("response"), str):
            raise UserError(f"{where}: field 'response' must be a string")
        first_line[key] = where.rsplit(":", 1)[1]
        rows.append({**by_id[key], "response": row["response"]})
    if not rows:
        raise UserError(f"{path}: no responses")
    if len(rows) < len(items):
        log.warning("%s answers %d of the %d queries; the others are not scored", path, len(rows), len(items))
    return rows


def _string_value(node: ast.expr) -> str | None:
    """A string literal, or a string literal's `.strip()` (how prompt.py writes its two prompts)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "strip"
            and not node.args and not node.keywords):
        inner = _string_value(node.func.value)
        return inner.strip() if inner is not None else None
    return None


def read_judge_prompts(path: Path) -> tuple[str, str]:
    """(system prompt, template) from the official prompt.py, parsed as data: its assignments of
    `evaluate_system` and `evaluate_prompt` to string literals. The template must take exactly
    {query}, {response} and {criteria}."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not a prompt.py ({err})") from None
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            value = _string_value(node.value)
            if value is not None:
                found[node.targets[0].id] = value
    missing = [name for name in ("evaluate_system", "evaluate_prompt") if name not in found]
    if missing:
        raise UserError(f"{path}: no string literal assigned to {', '.join(missing)}")
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(found["evaluate_prompt"]) if name is not None}
    except ValueError as err:
        raise UserError(f"{path}: evaluate_prompt is not a format string ({err})") from None
    if fields != PLACEHOLDERS:
        raise UserError(f"{path}: evaluate_prompt must have the fields {sorted(PLACEHOLDERS)}, has {sorted(fields)}")
    return found["evaluate_system"], found["evaluate_prompt"]


def judge_prompts(bench_cfg, cache_dir: str) -> tuple[str, str]:
    return read_judge_prompts(writingbench_file(bench_cfg, PROMPTS, cache_dir))


def slug(name: str) -> str:
    """A domain as a metric key: "Academic & Engineering" -> academic_engineering."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "none"


# --- the official aggregation (calculate_scores.py) ------------------------------------------------

def query_scores(row: dict, judgements: dict[str, dict]) -> dict:
    """One query's official scores, from its judgements by criterion name: R, the mean of its
    criteria, and its length criteria's scores (for C); both None unless every criterion scored."""
    scores = {c["name"]: judgements.get(c["name"], {}).get("score") for c in row["criteria"]}
    if any(s is None for s in scores.values()):
        return {"R": None, "C_scores": [], "criterion_scores": scores}
    return {"R": statistics.fmean(scores.values()), "C_scores": [scores[n] for n in row["length_criteria"]],
            "criterion_scores": scores}


def official_scores(scored: list[dict]) -> dict[str, float]:
    """R: the mean of the query means; C: the mean over every listed length criterion's score (not
    of per-query means, calculate_scores.py lines 122-137); both also x10, as the leaderboard shows."""
    complete = [s for s in scored if s["R"] is not None]
    if not complete:
        return {}
    r = statistics.fmean(s["R"] for s in complete)
    c = statistics.fmean(score for s in complete for score in s["C_scores"])
    return {"R": r, "C": c, "R_x10": 10 * r, "C_x10": 10 * c, "queries_scored": len(complete)}


def groups(rows: list[dict], prefix: str) -> list[tuple[str, list[int]]]:
    """(metric prefix, row positions): all, each language, each domain1."""
    by_language, by_domain = defaultdict(list), defaultdict(list)
    for i, row in enumerate(rows):
        by_language[row["language"]].append(i)
        by_domain[slug(row["domain1"])].append(i)
    return ([(prefix, list(range(len(rows))))] + [(f"{prefix}/{k}", v) for k, v in sorted(by_language.items())]
            + [(f"{prefix}/domain1/{k}", v) for k, v in sorted(by_domain.items())])
